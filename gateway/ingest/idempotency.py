"""Idempotency: ``Idempotency-Key`` headers and replays of signed requests.

Two kinds of entries share the store's idempotency table, both per access key:

- ``idem:<key>`` from the ``Idempotency-Key`` header, kept ``GATEWAY_IDEMPOTENCY_TTL``
  (24 h); the same key with a different request is a conflict (409);
- ``sig:<signature>``, the SigV4 signature of every accepted write, kept for twice the clock
  skew (the longest a signature can be valid), so an exact replay of a signed request is
  answered with the first answer instead of being stored twice.
"""

from __future__ import annotations

import hashlib
import time

from aiohttp import web

from gateway.errors import ApiError
from gateway.store.base import IdempotencyEntry, Store

MAX_KEY_LENGTH = 255
REPLAY_HEADER = "Idempotent-Replayed"


def request_hash(method: str, path: str, body: bytes) -> str:
    """What identifies a request for conflict detection: method, path and body."""
    h = hashlib.sha256(method.encode())
    h.update(b"\n" + path.encode() + b"\n")
    h.update(body)
    return h.hexdigest()


def header_key(request: web.Request) -> str | None:
    """The request's ``Idempotency-Key`` as a store key, validated; None when absent."""
    value = request.headers.get("Idempotency-Key")
    if value is None:
        return None
    if not value or len(value) > MAX_KEY_LENGTH or not value.isprintable():
        raise ApiError(
            400,
            "INVALID_IDEMPOTENCY_KEY",
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters",
        )
    return "idem:" + value


def replay_response(entry: IdempotencyEntry, req_hash: str) -> web.Response:
    """The stored answer, or 409 when the key was used for a different request."""
    if entry.request_hash != req_hash:
        raise ApiError(
            409,
            "IDEMPOTENCY_CONFLICT",
            "This Idempotency-Key was already used with a different request; use a new key "
            "for a new request",
        )
    return web.Response(
        body=entry.response,
        status=entry.status,
        content_type="application/json",
        headers={REPLAY_HEADER: "true"},
    )


async def find_replay(
    store: Store, access_key_id: str, keys: list[str], req_hash: str
) -> web.Response | None:
    """The earlier answer for any of ``keys``, if one is stored."""
    now = time.time()
    for key in keys:
        entry = await store.get_idempotency(access_key_id, key, now)
        if entry is not None:
            return replay_response(entry, req_hash)
    return None


def entries(
    access_key_id: str,
    keys: list[tuple[str, float]],
    req_hash: str,
    status: int,
    response: bytes,
) -> list[IdempotencyEntry]:
    """Entries that remember ``response`` under each ``(key, ttl)``."""
    now = time.time()
    return [
        IdempotencyEntry(access_key_id, key, req_hash, status, response, now, now + ttl)
        for key, ttl in keys
    ]
