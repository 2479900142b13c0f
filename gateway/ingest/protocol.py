"""The HTTP connection layer: errors aiohttp's parser raises, answered in the error envelope.

A request aiohttp cannot parse (two Content-Lengths, Content-Length with chunked, a header or
request line over 8,190 bytes, a bad method, garbage after a body) never reaches the
application or its middleware: aiohttp answers it itself, in text/plain, quoting the offending
request bytes back. :func:`install` makes the application's server use
:class:`EnvelopeRequestHandler` instead, which answers the documented JSON envelope, quotes no
input, logs one line, and closes the connection (the byte stream can no longer be trusted).

:data:`HANDLER_ARGS` are the connection settings the application is created with: aiohttp's
automatic body decompression is off, so a gzip body is decompressed only after its sender is
authenticated, with a cap (gateway.ingest.body), and ``br`` gets the envelope instead of
aiohttp's "Please install Brotli".
"""

from __future__ import annotations

import re
import traceback
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from gateway import logs
from gateway.errors import ApiError

HANDLER_ARGS: dict[str, Any] = {"auto_decompress": False}

# llhttp's reasons ("Duplicate Content-Length", "Invalid method encountered", ...) are fixed
# texts; what follows them quotes the request. Only a reason of this shape is passed on.
_SAFE_REASON = re.compile(r"[A-Za-z][A-Za-z0-9 '\-]{2,79}")
_GENERIC = "the request is not valid HTTP/1.1"


def describe(status: int, exc: BaseException | None) -> ApiError:
    """The envelope error for a connection-level failure, with no request bytes in it."""
    if isinstance(exc, LineTooLong):
        return ApiError(
            431,
            "REQUEST_HEADER_FIELDS_TOO_LARGE",
            "the request line or a header field is longer than 8190 bytes",
        )
    if isinstance(exc, HttpProcessingError) or status == 400:
        reason = ""
        if isinstance(exc, BadHttpMessage):
            reason = exc.message.split(":\n", 1)[0].strip()
        if not _SAFE_REASON.fullmatch(reason):
            reason = _GENERIC
        return ApiError(400, "INVALID_REQUEST", f"{reason} (malformed HTTP request)")
    if status == 504:
        return ApiError(503, "UNAVAILABLE", "the request took too long to handle")
    return ApiError(500, "INTERNAL_ERROR", "internal error; the event is logged")


class EnvelopeRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering its own errors in the gateway's envelope."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Answer an error aiohttp raised outside the application (parser errors, a handler
        that crashed past the middleware): the envelope, and the connection closed."""
        err = describe(status, exc)
        if err.status == 500:
            logs.log(
                "internal_error",
                "error",
                error=repr(exc),
                traceback="".join(traceback.format_exception(exc, limit=20)) if exc else None,
            )
        else:
            logs.log(
                "http_error",
                status=err.status,
                code=err.code,
                reason=type(exc).__name__ if exc else None,
            )
        if request.writer.output_size > 0:
            # Part of an answer is out: the connection is broken, as aiohttp's own does.
            raise ConnectionError("an answer was already being sent")
        response = err.response()
        response.force_close()
        return response


class _EnvelopeServer(Server):
    """aiohttp's Server, making :class:`EnvelopeRequestHandler` connections."""

    def __call__(self) -> RequestHandler:
        return EnvelopeRequestHandler(self, loop=self._loop, **self._kwargs)


def install(app: web.Application) -> None:
    """Make every server built for ``app`` (``web.run_app``, ``AppRunner``, the test server)
    answer connection-level errors with the envelope."""
    make_handler = app._make_handler

    def make_envelope_handler(**kwargs: Any) -> Server:
        server = make_handler(**kwargs)
        # Same state, one overridden method: aiohttp builds the Server, this picks its class.
        server.__class__ = _EnvelopeServer
        return server

    app._make_handler = make_envelope_handler  # type: ignore[method-assign]
