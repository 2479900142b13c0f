"""The shared transport: sends an :class:`OutboundRequest` and returns the :class:`Response`.

One aiohttp client session for every lane (connection pooling across integrations; each
lane's own concurrency limit is the delivery engine's). ``file://`` URLs with method
``APPEND`` append the body to a local file and fsync it, off the event loop. Failures that may
pass (connection refused or reset, timeouts, a full disk) raise :class:`TransportError`.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiohttp
from yarl import URL

from gateway.integrations.base import (
    OutboundRequest,
    Outcome,
    OutcomeKind,
    Response,
)

_ERROR_BODY_CHARS = 300


class TransportError(Exception):
    """The request got no answer (connection, timeout, local I/O); worth retrying."""

    permanent = False  # True for a refused destination (destinations.DestinationRefused)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds: to connect, to wait for the answer (between reads), for the whole request."""

    connect: float = 5.0
    read: float = 30.0
    total: float | None = None


class Transport:
    """Sends outbound requests. Create on the event loop; :meth:`close` when done."""

    def __init__(self, *, user_agent: str = "gateway") -> None:
        self._session: aiohttp.ClientSession | None = None
        self._user_agent = user_agent
        self._file_locks: dict[str, asyncio.Lock] = {}

    def client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            from gateway.integrations.destinations import GuardedConnector

            # limit=0: no pool-wide cap (lanes limit themselves); keep-alive per host. Every
            # connection is checked against the destination policy (destinations.py).
            connector = GuardedConnector(limit=0, limit_per_host=0)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"User-Agent": self._user_agent},
                # Outbound URLs are already encoded by the builders; do not re-quote them.
                requote_redirect_url=False,
                auto_decompress=True,
            )
        return self._session

    async def close(self) -> None:
        """Close pooled connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(
        self, request: OutboundRequest, timeouts: Timeouts, *, verify_tls: bool = True
    ) -> Response:
        """Send one request; raise :class:`TransportError` when no answer came."""
        if request.url.startswith("file:"):
            return await self._append(request)
        timeout = aiohttp.ClientTimeout(
            total=timeouts.total, sock_connect=timeouts.connect, sock_read=timeouts.read
        )
        ssl_arg: ssl.SSLContext | bool = bool(verify_tls)
        try:
            async with self.client().request(
                request.method,
                URL(request.url, encoded=True),
                headers=request.headers,
                data=request.body,
                timeout=timeout,
                ssl=ssl_arg,
                allow_redirects=False,
            ) as resp:
                body = await resp.read()
                return Response(resp.status, resp.headers, body)
        except TimeoutError:
            raise TransportError(
                f"timed out (connect {timeouts.connect}s, read {timeouts.read}s)"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise TransportError(f"cannot connect: {exc.os_error or exc}") from None
        except aiohttp.ServerDisconnectedError:
            raise TransportError("the server closed the connection without an answer") from None
        except aiohttp.ClientPayloadError as exc:
            raise TransportError(f"the answer was cut off: {exc}") from None
        except aiohttp.ClientError as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from None
        except OSError as exc:
            raise TransportError(f"connection failed: {exc}") from None

    async def _append(self, request: OutboundRequest) -> Response:
        if request.method != "APPEND":
            raise TransportError(f"file URLs take APPEND, not {request.method}")
        path = unquote(urlsplit(request.url).path)
        lock = self._file_locks.setdefault(path, asyncio.Lock())
        async with lock:  # one writer a file, so lines of two batches never interleave
            try:
                await asyncio.to_thread(_append_fsync, Path(path), request.body)
            except OSError as exc:
                raise TransportError(f"cannot append to {path}: {exc.strerror or exc}") from None
        return Response(200, {}, b"")


def _append_fsync(path: Path, body: bytes) -> None:
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


def error_text(response: Response) -> str:
    """``HTTP 422: <start of the body>``, for a delivery's last error."""
    text = response.body[:_ERROR_BODY_CHARS].decode("utf-8", "replace").strip()
    more = "..." if len(response.body) > _ERROR_BODY_CHARS else ""
    return f"HTTP {response.status}" + (f": {text}{more}" if text else "")


def outcomes_by_status(
    request: OutboundRequest, response: Response, retry_after: float | None = None
) -> list[Outcome]:
    """Every delivery of the request judged by the status: 2xx delivered; 408, 425, 429 and
    5xx retry (after ``retry_after`` when the server gave one); any other status permanent."""
    from gateway.delivery.policy import is_retryable_status

    status = response.status
    if 200 <= status < 300:
        kind, error = OutcomeKind.DELIVERED, None
    elif is_retryable_status(status):
        kind, error = OutcomeKind.RETRY, error_text(response)
    else:
        kind, error = OutcomeKind.PERMANENT, error_text(response)
    return [Outcome(d, kind, status, error, retry_after) for d in request.delivery_ids]
