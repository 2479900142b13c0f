"""Structured logs: one JSON object per line on stdout.

One line per request (record id, access key id, group, status, latency) and one per notable
event. Never a secret, a signature or record data: callers pass only the fields named here.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import orjson

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_threshold = 20


def set_level(level: str) -> None:
    """Drop events below ``level`` (debug, info, warning, error)."""
    global _threshold
    _threshold = _LEVELS[level]


def log(event: str, level: str = "info", **fields: Any) -> None:
    """Write one event line: ``{"ts", "level", "event", ...fields}``."""
    if _LEVELS[level] < _threshold:
        return
    line = {"ts": round(time.time(), 3), "level": level, "event": event}
    line.update(fields)
    sys.stdout.buffer.write(orjson.dumps(line, default=str) + b"\n")
    if _LEVELS[level] >= 30:
        sys.stdout.flush()


def flush() -> None:
    """Flush buffered lines (on shutdown, and periodically by the server)."""
    sys.stdout.flush()
