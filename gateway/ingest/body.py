"""Reading a producer's request body: capped, timed out, counted against a process-wide budget,
and decompressed (after authentication, with a cap) when it came gzip-encoded.

Why: the body is the one part of a request a client controls in size and in time. A body that
never finishes must not hold a connection and its buffer until the idle timeout; many bodies
at once must not add up to more memory than the operator allowed; a few KB of gzip must not
become megabytes before anyone knows who sent them.
"""

from __future__ import annotations

import asyncio
import zlib
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gateway import logs
from gateway.errors import ApiError

# Content-Encoding values accepted, and the zlib window bits that decode each.
_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class ClientGone(ApiError):
    """The client closed the connection before its body was complete. Not a server fault: the
    request log shows status 499 (nginx's "client closed request"), the answer reaches no one."""

    def __init__(self) -> None:
        super().__init__(
            499, "CLIENT_DISCONNECTED", "the client closed the connection during the upload"
        )


class BodyBudget:
    """Bytes of request bodies held in memory by all requests of this process together.

    Single-threaded (the event loop's), so plain integers suffice.
    """

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> None:
        """Reserve ``n`` bytes, or raise 503 OVERLOADED when they would exceed the budget."""
        if self.used + n > self.limit:
            raise ApiError(
                503,
                "OVERLOADED",
                "The gateway holds too many request bodies at once; retry shortly",
                headers={"Retry-After": "1"},
            )
        self.used += n

    def give(self, n: int) -> None:
        """Return ``n`` reserved bytes."""
        self.used -= n


@dataclass(slots=True)
class Held:
    """What one request has reserved in the budget; :meth:`release` once it is answered."""

    budget: BodyBudget
    size: int = 0

    def take(self, n: int) -> None:
        """Reserve ``n`` more bytes for this request."""
        self.budget.take(n)
        self.size += n

    def release(self) -> None:
        """Give everything back (idempotent)."""
        self.budget.give(self.size)
        self.size = 0


def content_encoding(request: web.Request) -> int | None:
    """The zlib window bits for the request's Content-Encoding, None for none/identity; raise
    415 for any other encoding (checked before the body is read)."""
    value = request.headers.get("Content-Encoding")
    if value is None:
        return None
    enc = value.strip().lower()
    if enc in ("", "identity"):
        return None
    wbits = _ENCODINGS.get(enc)
    if wbits is None:
        raise ApiError(
            415,
            "UNSUPPORTED_CONTENT_ENCODING",
            "Content-Encoding must be gzip, deflate or identity (absent); "
            f"{enc[:40]!r} is not supported",
        )
    return wbits


def too_large(limit: int, what: str = "request body") -> ApiError:
    """413 PAYLOAD_TOO_LARGE for a body over ``limit`` bytes."""
    return ApiError(413, "PAYLOAD_TOO_LARGE", f"{what} is over the limit of {limit} bytes")


async def read_body(request: web.Request, limit: int, held: Held, time_limit: float) -> bytes:
    """The body as sent (still encoded): at most ``limit`` bytes (413 before reading when the
    Content-Length says more), complete within ``time_limit`` seconds (408), counted in ``held``
    (503 when the budget is spent). A client that disconnects raises :class:`ClientGone`."""
    length = request.content_length
    if length is not None:
        if length > limit:
            raise ApiError(
                413,
                "PAYLOAD_TOO_LARGE",
                f"request body is {length} bytes; at most {limit} allowed",
            )
        held.take(length)
    content = request.content
    if length == 0:
        return b""
    chunks: list[bytes] = []
    size = 0
    try:
        if content.is_eof():
            # The common case: the whole body came with the headers; no timer needed.
            while chunk := content.read_nowait():
                chunks.append(chunk)
                size += len(chunk)
            if size > limit:
                raise too_large(limit)
            if length is None:
                held.take(size)
        else:
            async with asyncio.timeout(time_limit):
                while chunk := await content.readany():
                    size += len(chunk)
                    if size > limit:
                        raise too_large(limit)
                    if length is None:  # chunked: reserve as it comes
                        held.take(len(chunk))
                    chunks.append(chunk)
    except TimeoutError:
        _close_after_answer(request)
        raise ApiError(
            408,
            "REQUEST_TIMEOUT",
            f"the request body did not arrive within {time_limit:g} s",
            headers={"Connection": "close"},
        ) from None
    except ConnectionError:
        logs.log("client_disconnected", path=request.path, received=size)
        raise ClientGone() from None
    except HttpProcessingError:
        _close_after_answer(request)
        raise ApiError(
            400, "INVALID_REQUEST", "the request body does not match its HTTP framing"
        ) from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _close_after_answer(request: web.Request) -> None:
    # The rest of the body may still trickle in: stop parsing the connection and close it once
    # the answer is written (aiohttp discards what arrives meanwhile).
    protocol = request.protocol
    if protocol is not None:
        protocol.close()


def decode(body: bytes, wbits: int, limit: int, held: Held) -> bytes:
    """Decompress ``body`` to at most ``limit`` bytes (413 beyond; 400 when it is not valid
    gzip/deflate). Concatenated gzip members are decoded as one stream, as gzip(1) does."""
    parts: list[bytes] = []
    size = 0
    data = body
    while True:
        d = zlib.decompressobj(wbits)
        try:
            out = d.decompress(data, limit + 1 - size)
        except zlib.error:
            raise _malformed() from None
        size += len(out)
        if size > limit:
            raise too_large(limit, "the decompressed request body")
        parts.append(out)
        if not d.eof:
            raise _malformed()
        data = d.unused_data
        if not data or wbits == zlib.MAX_WBITS:
            break
    held.take(size)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _malformed() -> ApiError:
    return ApiError(
        400,
        "MALFORMED_CONTENT_ENCODING",
        "the request body is not valid for its Content-Encoding (truncated or corrupt)",
    )
