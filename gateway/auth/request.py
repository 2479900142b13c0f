"""Authenticating an aiohttp request: SigV4 verification against the key ring."""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiohttp import web

from gateway import logs
from gateway.auth.keys import ActiveKey, KeyRing
from gateway.auth.sigv4 import SigV4Error, SigV4Request, SigV4Verifier
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


def sigv4_request(request: web.Request, body: bytes) -> SigV4Request:
    """The raw request as the verifier reads it: path still encoded, headers as sent."""
    path, _, query = request.raw_path.partition("?")
    headers = list(request.headers.items())
    return SigV4Request(request.method, path, query, headers, body)


async def authenticate(
    verifier: SigV4Verifier, keys: KeyRing, request: web.Request, body: bytes
) -> Principal:
    """Verify the request's SigV4 signature; raise :class:`ApiError` (401) when it fails."""
    sreq = sigv4_request(request, body)
    try:
        auth = verifier.parse(sreq, time.time())
        key = await keys.get(auth.access_key_id)
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
        verifier.verify(sreq, auth, key.secret)
    except SigV4Error as exc:
        raise ApiError(exc.status, exc.code, exc.message, extra=exc.extra) from None
    logs.info(request).access_key_id = key.access_key_id
    return Principal(key, auth.signature)
