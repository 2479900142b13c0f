"""The shared transport: sends an :class:`OutboundRequest` over HTTP and returns the
:class:`Response`.

One aiohttp client session for every lane (connection pooling across integrations; each
lane's own concurrency limit is the delivery engine's). Failures that may pass (connection
refused or reset, timeouts) raise :class:`TransportError`. Types whose requests are not HTTP
requests to send as they are bring their own send step (:class:`gateway.integrations.base.Sender`),
which gets a :class:`SendContext`: this transport bound to the lane's settings.
"""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass

import aiohttp
from yarl import URL

from gateway.integrations.base import (
    OutboundRequest,
    Outcome,
    OutcomeKind,
    Response,
    TransportError,
)
from gateway.integrations.destinations import GuardedConnector

_ERROR_BODY_CHARS = 300
#: Answers that say "try again later"; with every 5xx they retry, other non-2xx are permanent.
RETRY_STATUSES = frozenset({408, 425, 429})


def is_retryable_status(status: int) -> bool:
    """408, 425, 429 and every 5xx retry; other non-2xx answers are permanent."""
    return status in RETRY_STATUSES or status >= 500


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds: to connect, to wait for the answer (between reads), for the whole request."""

    connect: float = 5.0
    read: float = 30.0
    total: float | None = None


@functools.lru_cache(maxsize=256)
def _client_timeout(timeouts: Timeouts) -> aiohttp.ClientTimeout:
    # Made once per distinct lane setting, not per request (ClientTimeout is frozen).
    return aiohttp.ClientTimeout(
        total=timeouts.total, sock_connect=timeouts.connect, sock_read=timeouts.read
    )


class Transport:
    """Sends outbound requests. Create on the event loop; :meth:`close` when done."""

    def __init__(self, *, user_agent: str = "gateway") -> None:
        self._session: aiohttp.ClientSession | None = None
        self._user_agent = user_agent

    def client(self) -> aiohttp.ClientSession:
        """The pooled session (created on first use): the one place outbound connections of
        every integration are made."""
        if self._session is None or self._session.closed:
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
        timeout = _client_timeout(timeouts)
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


@dataclass(frozen=True, slots=True)
class SendContext:
    """What a type's send step works with (:class:`gateway.integrations.base.Sender`): the
    shared transport and the lane's timeouts and TLS setting."""

    transport: Transport
    timeouts: Timeouts = Timeouts()
    verify_tls: bool = True

    @property
    def session(self) -> aiohttp.ClientSession:
        """The pooled session, for calls that are not an :class:`OutboundRequest` (a token
        endpoint's form post, a streamed upload); pass ``timeout`` from :attr:`timeouts`."""
        return self.transport.client()

    async def http(self, request: OutboundRequest) -> Response:
        """Send ``request`` over HTTP with the lane's timeouts and TLS setting (what the
        engine does for types without a send step); raises :class:`TransportError`."""
        return await self.transport.send(request, self.timeouts, verify_tls=self.verify_tls)


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
    status = response.status
    if 200 <= status < 300:
        kind, error = OutcomeKind.DELIVERED, None
    elif is_retryable_status(status):
        kind, error = OutcomeKind.RETRY, error_text(response)
    else:
        kind, error = OutcomeKind.PERMANENT, error_text(response)
    return [Outcome(d, kind, status, error, retry_after) for d in request.delivery_ids]
