"""Structured logs: one JSON object per line on stdout.

One line per request (record id, access key id, group, status, latency) and one per notable
event. Never a secret, a signature or record data: callers pass only the fields named here.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_threshold = 20
_common: dict[str, Any] = {}  # fields on every line of this process (a worker's number)


def set_level(level: str) -> None:
    """Drop events below ``level`` (debug, info, warning, error)."""
    global _threshold
    _threshold = _LEVELS[level]


def log(event: str, level: str = "info", **fields: Any) -> None:
    """Write one event line: ``{"ts", "level", "event", ...fields}``."""
    if _LEVELS[level] < _threshold:
        return
    line = {"ts": round(time.time(), 3), "level": level, "event": event, **_common}
    line.update(fields)
    sys.stdout.buffer.write(orjson.dumps(line, default=str) + b"\n")
    if _LEVELS[level] >= 30:
        sys.stdout.flush()


def set_common_fields(**fields: Any) -> None:
    """Add ``fields`` to every line this process writes from now on."""
    _common.update(fields)


def flush() -> None:
    """Flush buffered lines (on shutdown, and periodically by the server)."""
    sys.stdout.flush()


@dataclass(slots=True)
class RequestInfo:
    """What handlers learn about a request, for its log line and response headers."""

    access_key_id: str | None = None
    group_key: str | None = None
    record_id: str | None = None
    records: int | None = None
    headers: dict[str, str] = field(default_factory=dict)  # added to every answer


REQUEST_INFO = web.RequestKey("request_info", RequestInfo)


def info(request: web.Request) -> RequestInfo:
    """The request's :class:`RequestInfo`, made on first use."""
    try:
        # Not request.get(): Mapping.get through the ABC costs several times a plain lookup,
        # and the request path asks for its info four times.
        return request[REQUEST_INFO]
    except KeyError:
        found = request[REQUEST_INFO] = RequestInfo()
        return found
