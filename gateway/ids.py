"""Identifiers: time-ordered record and delivery ids (ULID layout, Crockford base32)."""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid(now_ms: int | None = None) -> str:
    """A 26-character ULID: 48-bit millisecond time then 80 random bits.

    Sorting ids sorts by creation time, which keeps primary-key inserts append-only and makes
    them usable as pagination cursors.
    """
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    out = []
    for _ in range(26):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def record_id() -> str:
    """A new record id, ``rec_`` and a ULID."""
    return "rec_" + ulid()


def delivery_id() -> str:
    """A new delivery id, ``dlv_`` and a ULID; also the integration's idempotency key."""
    return "dlv_" + ulid()
