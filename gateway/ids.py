"""Identifiers: time-ordered record and delivery ids, and the shape of a group key.

An id is 48 bits of milliseconds since the epoch and 80 random bits, as 32 hexadecimal digits:
ids sort by creation time, so primary-key inserts append and ids serve as pagination cursors.
"""

from __future__ import annotations

import random
import re
import time

#: A group key: what producers send, mapping files are named after and admin URLs carry.
GROUP_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def time_id(now_ms: int | None = None) -> str:
    """32 hex digits: the time in milliseconds (12 digits) then 80 random bits (20 digits)."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    # Ids need uniqueness, not secrecy (reading a record needs a key allowed on its group);
    # os.urandom is a system call per id, which showed in ingest profiles.
    return f"{ms:012x}{random.getrandbits(80):020x}"


def record_id() -> str:
    """A new record id, ``rec_`` and a time id."""
    return "rec_" + time_id()


def delivery_id() -> str:
    """A new delivery id, ``dlv_`` and a time id; also the integration's idempotency key."""
    return "dlv_" + time_id()
