"""Authenticating an aiohttp request: SigV4 verification against the key ring.

In two steps, so that a request is refused before its body costs memory or time:
:func:`authenticate_head` checks everything the headers carry (structure, dates, scope, that
the key exists and is not revoked, and the signature itself when a signed
``x-amz-content-sha256`` declares the payload hash); :func:`authenticate_body` finishes with the
body read (its hash, and the signature when it could not be checked before).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiohttp import web

from gateway import logs
from gateway.auth.keys import ActiveKey, KeyRing
from gateway.auth.sigv4 import ParsedAuth, SigV4Error, SigV4Request, SigV4Verifier
from gateway.errors import ApiError


@dataclass(frozen=True, slots=True)
class Principal:
    """Who sent an authenticated request, and the signature that proved it."""

    key: ActiveKey
    signature: str

    @property
    def access_key_id(self) -> str:
        """The caller's access key id."""
        return self.key.access_key_id


@dataclass(slots=True)
class Claimant:
    """A request whose headers passed :func:`authenticate_head`; its body is not read yet."""

    sreq: SigV4Request
    auth: ParsedAuth
    key: ActiveKey
    # True once the signature is verified (over the declared payload hash): the sender holds
    # the secret, so its body may cost more than an anonymous one.
    verified: bool


def sigv4_request(request: web.Request, body: bytes) -> SigV4Request:
    """The raw request as the verifier reads it: path still encoded, headers as sent."""
    path, _, query = request.raw_path.partition("?")
    headers = list(request.headers.items())
    return SigV4Request(request.method, path, query, headers, body)


def _api_error(exc: SigV4Error) -> ApiError:
    return ApiError(exc.status, exc.code, exc.message, extra=exc.extra)


async def authenticate_head(
    verifier: SigV4Verifier, keys: KeyRing, request: web.Request
) -> Claimant:
    """Check the request's credentials from its headers alone; raise :class:`ApiError` (401,
    or 400 for a refused payload hash) when they fail."""
    sreq = sigv4_request(request, b"")
    try:
        auth = verifier.parse_head(sreq, time.time())
        # A cached key is used without suspending the request (no await on the hot path).
        hit = keys.cached(auth.access_key_id)
        key = hit[0] if hit is not None else await keys.get(auth.access_key_id)
        if key is None:
            raise ApiError(
                401,
                "INVALID_CLIENT_TOKEN_ID",
                "The security token included in the request is invalid.",
            )
        if key.revoked:
            raise ApiError(
                401, "ACCESS_KEY_REVOKED", f"The access key {key.access_key_id} has been revoked."
            )
        declared = verifier.signed_content_sha256(auth)
        if declared is not None:
            verifier.verify(
                sreq, auth, key.secret, payload_hash=declared, signing_keys=key.signing_keys
            )
    except SigV4Error as exc:
        raise _api_error(exc) from None
    return Claimant(sreq, auth, key, declared is not None)


def authenticate_body(
    verifier: SigV4Verifier, claimant: Claimant, request: web.Request, body: bytes
) -> Principal:
    """Finish :func:`authenticate_head` with the body as received (before any decompression:
    a signer signs the bytes it sends)."""
    sreq = claimant.sreq
    sreq.body = body
    try:
        verifier.check_payload(claimant.auth, body)
        if not claimant.verified:
            key = claimant.key
            verifier.verify(sreq, claimant.auth, key.secret, signing_keys=key.signing_keys)
    except SigV4Error as exc:
        raise _api_error(exc) from None
    logs.info(request).access_key_id = claimant.key.access_key_id
    return Principal(claimant.key, claimant.auth.signature)


async def authenticate(
    verifier: SigV4Verifier, keys: KeyRing, request: web.Request, body: bytes
) -> Principal:
    """Verify the request's SigV4 signature over ``body``; raise :class:`ApiError` (401) when
    it fails. Both steps at once, for a body already read."""
    claimant = await authenticate_head(verifier, keys, request)
    return authenticate_body(verifier, claimant, request, body)
