"""The ``file`` type: append mapped records to a local NDJSON file (local use and the demo).

Its own send step writes the file: the shared HTTP transport knows nothing of files. The built
request describes the append (method ``APPEND``, a ``file://`` URL, the lines as body), which
is what ``gateway preview`` shows; sending appends the body and fsyncs the file before the
deliveries count as delivered.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import orjson

from gateway.integrations.base import (
    Action,
    IntegrationType,
    OutboundRequest,
    Param,
    Response,
    TokenProvider,
    register,
)
from gateway.integrations.transport import SendContext, TransportError

if TYPE_CHECKING:
    from gateway.mapping.model import CompiledIntegration


def build(
    integration: CompiledIntegration,
    batch: list[tuple[str, dict[str, Any]]],
    *,
    now: float | None = None,
    tokens: TokenProvider | None = None,
) -> list[OutboundRequest]:
    """One append of the batch's NDJSON lines: method ``APPEND``, url ``file://<absolute
    path>`` (a relative path is taken from the gateway's working directory), the lines as
    body. :func:`send` writes and fsyncs; building touches no file."""
    path = os.path.abspath(os.path.expanduser(str(integration.connection.value["path"])))
    body = b"".join(orjson.dumps(fields) + b"\n" for _, fields in batch)
    return [
        OutboundRequest(
            "APPEND",
            Path(path).as_uri(),
            {"Content-Type": "application/x-ndjson"},
            body,
            [d for d, _ in batch],
        )
    ]


# One writer a file at a time, so the lines of two batches (two entries appending to the same
# file) never interleave. Thread locks: the writes run in worker threads, and the locks must
# not belong to one event loop.
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(path: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(path, threading.Lock())


async def send(
    integration: CompiledIntegration, request: OutboundRequest, ctx: SendContext
) -> Response:
    """Append the request's body to its file and fsync it (and a directory it created), off
    the event loop; a 200 once the lines are on disk. A full disk or a permission error
    raises :class:`TransportError`: retried like a network error."""
    if request.method != "APPEND" or not request.url.startswith("file:"):
        raise TransportError(
            f"the file type appends to file: URLs, not {request.method} {request.url}"
        )
    path = unquote(urlsplit(request.url).path)
    try:
        await asyncio.to_thread(_append_fsync, Path(path), request.body)
    except OSError as exc:
        raise TransportError(f"cannot append to {path}: {exc.strerror or exc}") from None
    return Response(200, {}, b"")


def _append_fsync(path: Path, body: bytes) -> None:
    with _lock(str(path)):
        new_dir = not path.parent.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            view = memoryview(body)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if new_dir:
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)


FILE = register(
    IntegrationType(
        name="file",
        description="Appends each mapped record as one JSON line to a local file (NDJSON).",
        connection=(
            Param(
                "path",
                description="File to append to; created with its directory if missing.",
                required=True,
                example="./var/deliveries.ndjson",
            ),
        ),
        actions=(
            Action(
                "append",
                "Append the mapped fields as one JSON object per line; fsync per batch.",
                open_fields=True,
            ),
        ),
        default_options={"batch_size": 100, "concurrency": 1},
        build=build,
        send=send,
    )
)
