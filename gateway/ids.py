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
_last = [0, 0]  # the last id made with the clock: [milliseconds, random part]
_RANDOM_TOP = 1 << 80


def time_id(now_ms: int | None = None) -> str:
    """32 hex digits: the time in milliseconds (12 digits) then 80 random bits (20 digits).

    Made with the clock (no ``now_ms``), ids of one process are strictly increasing: within a
    millisecond (or if the clock steps back) the next id is the last one plus one. Per-key
    ordering breaks ties of equal receive times by id, so the records of one batch keep their
    order.
    """
    # Ids need uniqueness, not secrecy (reading a record needs a key allowed on its group);
    # os.urandom is a system call per id, which showed in ingest profiles.
    if now_ms is not None:
        return f"{now_ms:012x}{random.getrandbits(80):020x}"
    ms = int(time.time() * 1000)
    last = _last
    if ms > last[0]:
        # Room below the top for increments within this millisecond.
        last[0], last[1] = ms, random.getrandbits(79)
    else:
        ms = last[0]
        last[1] += 1
        if last[1] >= _RANDOM_TOP:
            ms = last[0] = ms + 1
            last[1] = random.getrandbits(79)
    return f"{ms:012x}{last[1]:020x}"


def record_id() -> str:
    """A new record id, ``rec_`` and a time id."""
    return "rec_" + time_id()


def delivery_id() -> str:
    """A new delivery id, ``dlv_`` and a time id; also the integration's idempotency key."""
    return "dlv_" + time_id()
