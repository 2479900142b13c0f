"""A real local HTTP server that integrations deliver to, scripted per test.

``Receiver`` records every request (method, path, headers, body, arrival time) and answers
with what the test's ``answer`` function returns: a status, headers and body, a delay, or
``"reset"`` to drop the connection without an answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass(slots=True)
class Received:
    """One request as the receiver saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic()

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass(slots=True)
class Answer:
    """What to answer: ``status``, ``headers``, ``body``; ``delay`` seconds first; ``reset``
    closes the connection instead."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b'{"ok":true}'
    delay: float = 0.0
    reset: bool = False


class Receiver:
    """Start with ``await Receiver().start()``; ``url`` is its base URL."""

    def __init__(self, answer: Callable[[Received], Answer] | None = None) -> None:
        self.answer = answer or (lambda r: Answer())
        self.requests: list[Received] = []  # answered ones
        self.seen: list[Received] = []  # every request, answered or not
        self.arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Receiver:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        got = Received(
            request.method,
            request.path_qs,
            dict(request.headers),
            await request.read(),
            time.monotonic(),
        )
        self.seen.append(got)
        a = self.answer(got)
        if a.delay:
            await asyncio.sleep(a.delay)
        if a.reset:
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        self.requests.append(got)
        async with self.arrived:
            self.arrived.notify_all()
        return web.Response(status=a.status, headers=a.headers, body=a.body)

    async def wait_for(self, n: int, within: float = 10.0) -> list[Received]:
        """Wait until ``n`` requests have been answered; fail after ``within`` seconds."""
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.requests) >= n), within)
        return self.requests


class ThreadedReceiver:
    """The same idea for tests that are not async (a real gateway process): a threading HTTP
    server answering ``status`` (changeable at any time), after ``delay`` seconds, recording
    each request's JSON body and headers."""

    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        import http.server
        import threading

        self.status = status
        self.delay = delay
        self.bodies: list[Any] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if outer.delay:
                    time.sleep(outer.delay)
                status = outer.status
                if 200 <= status < 300:
                    with outer.lock:
                        outer.bodies.append(orjson.loads(body))
                        outer.headers.append(dict(self.headers))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ThreadedReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
