"""An integration endpoint that deduplicates by ``Idempotency-Key``, and can be taken down.

What a well-behaved downstream system does with at-least-once delivery: the first request with
a given key is processed, a repeat is acknowledged and ignored. The receiver counts both, so a
test can assert that every record arrived (once, after deduplication) and see how many repeats
the gateway sent.

Three states, switchable at any time from the test:

- ``up``: answers 200;
- ``failing``: answers ``fail_status`` (503) to everything, processing nothing;
- ``down``: the listening socket is closed (new connections are refused) and requests on
  connections already open are dropped without an answer, as when a host goes away.
  :meth:`bring_up` listens again on the same port.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
from typing import Any

import orjson


class DedupReceiver:
    """Use as a context manager; ``url`` is its base URL (the port stays the same)."""

    def __init__(self, fail_status: int = 503) -> None:
        self.fail_status = fail_status
        self.state = "up"
        self.lock = threading.Lock()
        self.first: dict[str, list[Any]] = {}  # Idempotency-Key -> records of its first 2xx
        self.repeats = 0  # 2xx answers to a key already processed
        self.refused = 0  # requests answered fail_status or dropped
        self.requests = 0
        self.port = 0
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> DedupReceiver:
        self._listen()
        return self

    def __exit__(self, *exc: object) -> None:
        self.state = "down"
        self._close()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                key = self.headers.get("Idempotency-Key") or ""
                with outer.lock:
                    outer.requests += 1
                    state = outer.state
                    if state == "up":
                        if key in outer.first:
                            outer.repeats += 1
                        else:
                            parsed = orjson.loads(body)
                            outer.first[key] = parsed if isinstance(parsed, list) else [parsed]
                    else:
                        outer.refused += 1
                if state == "down":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                status = 200 if state == "up" else outer.fail_status
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def _listen(self) -> None:
        # The port of the first start is reused (SO_REUSEADDR), so the gateway's configured URL
        # stays right across an outage.
        deadline = time.monotonic() + 10
        while True:
            try:
                server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        server.daemon_threads = True
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def _close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def fail(self) -> None:
        """Answer ``fail_status`` to everything from now on."""
        self.state = "failing"

    def go_down(self) -> None:
        """Stop listening and drop requests on open connections."""
        self.state = "down"
        self._close()

    def bring_up(self) -> None:
        """Listen again (if down) and process requests."""
        if self._server is None:
            self._listen()
        self.state = "up"

    def tags(self) -> dict[str, set[str]]:
        """Idempotency keys that delivered each record tag (after deduplication)."""
        with self.lock:
            out: dict[str, set[str]] = {}
            for key, records in self.first.items():
                for rec in records:
                    out.setdefault(rec["tag"], set()).add(key)
            return out

    def wait_for_tags(self, tags: set[str], within: float) -> dict[str, set[str]]:
        """:meth:`tags` once every one of ``tags`` arrived, or when the time is up."""
        deadline = time.monotonic() + within
        while True:
            got = self.tags()
            if tags <= got.keys() or time.monotonic() > deadline:
                return got
            time.sleep(0.1)
