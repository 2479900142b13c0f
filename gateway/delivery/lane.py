"""A lane: the deliveries of one (group, integration), with its own limits.

Each lane has its own queue of claimed deliveries, concurrency limit, token bucket, batch size
and wait, circuit breaker, and a hold set by the integration's own rate-limit answers. A lane
that is slow, failing or limited only ever holds its own deliveries, so it never delays
another lane.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.delivery.breaker import BreakerState, CircuitBreaker
from gateway.ingest.ratelimit import TokenBucket
from gateway.integrations.transport import SendContext, Timeouts, Transport
from gateway.mapping.options import BreakerOptions, DeliveryOptions, RetryOptions
from gateway.store.base import ClaimedDelivery

if TYPE_CHECKING:
    from gateway.mapping.model import CompiledIntegration

#: The most claimed deliveries one lane holds (queued or in flight).
MAX_HELD = 5000


@dataclass(frozen=True, slots=True)
class LaneConfig:
    """A lane's limits: the entry's ``options`` over its type's defaults."""

    batch_size: int = 1
    batch_wait: float = 0.0
    concurrency: int = 4
    rate_limit: float | None = None  # requests per second
    timeouts: Timeouts = field(default_factory=Timeouts)
    verify_tls: bool = True
    retry: RetryOptions = field(default_factory=lambda: RetryOptions.model_validate({}))
    breaker: BreakerOptions = field(default_factory=lambda: BreakerOptions.model_validate({}))

    @classmethod
    def of(cls, integration: CompiledIntegration) -> LaneConfig:
        """The config of a compiled integration entry."""
        opts: DeliveryOptions = integration.options
        defaults = integration.type.default_options
        conn = integration.connection.value

        def pick(name: str, fallback: Any) -> Any:
            value = getattr(opts, name)
            return value if value is not None else defaults.get(name, fallback)

        read = float(conn.get("read_timeout") or 30)
        return cls(
            batch_size=int(pick("batch_size", 1)),
            batch_wait=float(pick("batch_wait", 0.0)),
            concurrency=int(pick("concurrency", 4)),
            rate_limit=pick("rate_limit", None),
            timeouts=Timeouts(
                connect=float(conn.get("connect_timeout") or 5),
                read=read,
                total=opts.timeout,
            ),
            verify_tls=not bool(conn.get("insecure_skip_tls_verify")),
            retry=opts.retry,
            breaker=opts.breaker,
        )

    @property
    def longest_request(self) -> float:
        """An upper bound of one request's time, for lease checks."""
        t = self.timeouts
        return t.total if t.total is not None else t.connect + t.read


@dataclass(slots=True)
class LaneCounters:
    """What a lane did since the process started (status, metrics)."""

    delivered: int = 0
    retried: int = 0
    dead: int = 0
    requests: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    last_success_at: float | None = None


class Lane:
    """One (group, integration) lane. The engine feeds it; :meth:`run` sends."""

    def __init__(self, group_key: str, integration: str, config: LaneConfig) -> None:
        self.group_key = group_key
        self.integration = integration
        self.config = config
        self.queue: collections.deque[tuple[ClaimedDelivery, float]] = collections.deque()
        self.breaker = CircuitBreaker(config.breaker)
        self.bucket = self._bucket(config)
        self.sending = 0  # deliveries in requests in flight
        self.requests_in_flight = 0
        self.hold_until = 0.0  # monotonic: the integration asked for a pause (429)
        self.paused = False
        self.counters = LaneCounters()
        self.type_name = ""
        self.wake = asyncio.Event()
        self.slots = asyncio.Semaphore(config.concurrency)
        self.probe_done = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.request_seconds: float | None = None  # moving average of attempts
        self.overflow_until = 0.0  # wall: latest time overflow deliveries were put off to
        # The compiled entry ``config`` was derived from: an attempt derives it again only
        # when the mapping in force gives another entry (a reload), not once per request.
        self.config_of: object | None = None
        self._send_context: SendContext | None = None

    def send_context(self, transport: Transport) -> SendContext:
        """The shared transport bound to the lane's timeouts and TLS setting (made again
        when the config or the transport changed)."""
        ctx = self._send_context
        c = self.config
        if (
            ctx is None
            or ctx.transport is not transport
            or ctx.timeouts is not c.timeouts
            or ctx.verify_tls != c.verify_tls
        ):
            ctx = self._send_context = SendContext(transport, c.timeouts, c.verify_tls)
        return ctx

    @property
    def key(self) -> tuple[str, str]:
        """(group, integration)."""
        return (self.group_key, self.integration)

    @staticmethod
    def _bucket(config: LaneConfig) -> TokenBucket | None:
        if config.rate_limit is None:
            return None
        # A burst of one second's worth (at least one request) keeps the rate smooth.
        return TokenBucket(config.rate_limit, max(1, int(config.rate_limit)))

    def reconfigure(self, config: LaneConfig) -> None:
        """Take a new config after a mapping change; breaker state and queue stay."""
        if config == self.config:
            return
        if config.concurrency != self.config.concurrency:
            # Slots already taken are given back to the old semaphore and forgotten.
            self.slots = asyncio.Semaphore(config.concurrency)
        if config.rate_limit != self.config.rate_limit:
            self.bucket = self._bucket(config)
        self.breaker.options = config.breaker
        self.config = config

    # -- capacity -------------------------------------------------------------------------
    def capacity(self, lease_seconds: float, now: float) -> int:
        """How many claimed deliveries the lane may hold: enough to keep its requests busy,
        few enough to send them all well inside the lease."""
        c = self.config
        busy = c.batch_size * c.concurrency * 2
        return max(busy, min(int(self.throughput(now) * lease_seconds / 4), MAX_HELD))

    def held(self) -> int:
        """Deliveries queued or in flight."""
        return len(self.queue) + self.sending

    def throughput(self, now: float) -> float:
        """Deliveries a second the lane can send when busy: its connections over the usual
        request time (a guess of 50 ms until measured), capped by its rate limit. Measured
        per request, not per second, so an idle or recovering lane is not underestimated."""
        c = self.config
        seconds = self.request_seconds if self.request_seconds is not None else 0.05
        rate = c.batch_size * c.concurrency / max(seconds, 0.001)
        return min(rate, c.rate_limit * c.batch_size) if c.rate_limit else rate

    def forget_history(self) -> None:
        """Drop the measured request time (after an outage it says nothing of the future)."""
        self.request_seconds = None

    def finished(self, seconds: float) -> None:
        """Count one attempt's duration into the usual request time (a moving average)."""
        if self.request_seconds is None:
            self.request_seconds = seconds
        else:
            self.request_seconds += 0.2 * (seconds - self.request_seconds)

    def blocked_until(self, now: float) -> float | None:
        """Monotonic time before which nothing will be sent, or None when it can send."""
        if self.breaker.state(now) == BreakerState.OPEN:
            return self.breaker.open_until
        if self.hold_until > now:
            return self.hold_until
        return None

    def status(self, now: float) -> dict[str, Any]:
        """The lane at a glance, as the admin API shows it."""
        state = self.breaker.state(now)
        c = self.counters
        return {
            "group_key": self.group_key,
            "integration": self.integration,
            "type": self.type_name,
            "paused": self.paused,
            "breaker": str(state),
            "breaker_retry_in": round(self.breaker.wait(now), 3) or None,
            "held_until_in": round(self.hold_until - now, 3) if self.hold_until > now else None,
            "queued": len(self.queue),
            "in_flight": self.sending,
            "delivered": c.delivered,
            "retried": c.retried,
            "dead": c.dead,
            "requests": c.requests,
            "last_error": c.last_error,
            "last_error_at": c.last_error_at,
            "last_success_at": c.last_success_at,
        }


def monotonic_to_wall(t: float) -> float:
    """A monotonic deadline as wall-clock epoch seconds (for the store)."""
    return time.time() + (t - time.monotonic())
