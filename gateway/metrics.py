"""Prometheus metrics: ``GET /metrics`` in the exposition format.

Every application has its own :class:`~prometheus_client.CollectorRegistry` (never the
process-wide default one), so tests can build many applications in one process.

Where each metric comes from:

- ingest: the ``on_commit`` callback of the producer API (records committed) and the error
  middleware (refused ``/v1/`` requests, by error code);
- delivery: :class:`MetricsHooks`, the engine's hooks (attempts, outcomes, breaker changes);
- lanes: a snapshot of ``store.lane_stats()``, refreshed by the ``/metrics`` handler at most
  every :attr:`Metrics.lane_stats_interval` seconds (the query is async, collectors are not);
- store: the store's writer thread reports each write transaction's duration through
  ``on_commit_seconds``; the pending-writes gauge reads ``store.pending_writes()``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from gateway import logs
from gateway.appkeys import METRICS
from gateway.delivery.attempt import EngineHooks
from gateway.delivery.breaker import STATE_VALUES, BreakerState
from gateway.delivery.lane import Lane
from gateway.integrations.base import Outcome
from gateway.mapping.loader import MappingRegistry
from gateway.store.base import LaneStats, Store, StoreError

if TYPE_CHECKING:
    from gateway.delivery.engine import DeliveryEngine

#: Outbound requests: from a local receiver (milliseconds) to a slow SaaS API (the timeout).
ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Store write transactions: an fsync is around a millisecond on a good disk.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

LANE_LABELS = ("group", "integration")


class MetricsHooks(EngineHooks):
    """The delivery engine's reports, as metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics
        # Labelled children, resolved once: labels() validates and joins its values under a
        # lock on every call, which cost more than the observation itself once per request.
        # These metrics never remove a child, so a cached one stays the exported one.
        self._attempt_seconds: dict[str, Histogram] = {}
        self._deliveries: dict[tuple[str, str, str], Counter] = {}

    def attempt(self, lane: Lane, outcomes: list[Outcome], seconds: float) -> None:
        type_name = lane.type_name or "unknown"
        child = self._attempt_seconds.get(type_name)
        if child is None:
            child = self._attempt_seconds[type_name] = self.m.attempt_seconds.labels(type_name)
        child.observe(seconds)

    def settled(self, lane: Lane, delivered: int, retry: int, dead: int) -> None:
        for outcome, n in (("delivered", delivered), ("retry", retry), ("dead", dead)):
            if n:
                key = (lane.group_key, lane.integration, outcome)
                child = self._deliveries.get(key)
                if child is None:
                    child = self._deliveries[key] = self.m.deliveries.labels(*key)
                child.inc(n)

    def breaker_changed(self, lane: Lane, state: BreakerState) -> None:
        m = self.m
        m.breaker_state.labels(lane.group_key, lane.integration).set(STATE_VALUES[state])
        if state == BreakerState.OPEN:
            m.breaker_opened.labels(lane.group_key, lane.integration).inc()


class LaneCollector(Collector):
    """Backlog, age of the oldest pending delivery and dead deliveries per lane, from the
    last snapshot of ``store.lane_stats()``. A lane that had a backlog once stays at 0 after
    it drained (a series that vanishes reads as "no data", not as "empty"), until its group
    or integration leaves the mappings."""

    def __init__(self, mappings: MappingRegistry) -> None:
        self.mappings = mappings
        self.snapshot: list[LaneStats] = []
        self._seen: set[tuple[str, str]] = set()

    def update(self, stats: list[LaneStats]) -> None:
        self.snapshot = stats
        self._seen |= {(s.group_key, s.integration) for s in stats}

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "gateway_lane_backlog",
                "Pending deliveries of the lane (due or not).",
                labels=LANE_LABELS,
            ),
            GaugeMetricFamily(
                "gateway_lane_oldest_pending_seconds",
                "Age of the lane's oldest pending delivery (0 when none).",
                labels=LANE_LABELS,
            ),
            GaugeMetricFamily(
                "gateway_lane_dead",
                "Dead deliveries of the lane, waiting for a replay.",
                labels=LANE_LABELS,
            ),
        )

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        backlog, oldest, dead = self._families()
        now = time.time()
        by_key = {(s.group_key, s.integration): s for s in self.snapshot}
        for key in sorted(self._seen):
            s = by_key.get(key)
            if s is None and not self._live(key):
                self._seen.discard(key)
                continue
            labels = list(key)
            backlog.add_metric(labels, s.pending if s else 0)
            age = now - s.oldest_pending_at if s and s.oldest_pending_at is not None else 0.0
            oldest.add_metric(labels, max(0.0, age))
            dead.add_metric(labels, s.dead if s else 0)
        return [backlog, oldest, dead]

    def _live(self, key: tuple[str, str]) -> bool:
        mapping = self.mappings.get(key[0])
        return mapping is not None and mapping.integration(key[1]) is not None


class Metrics:
    """The application's metrics and their registry."""

    def __init__(
        self, store: Store, mappings: MappingRegistry, *, lane_stats_interval: float = 5.0
    ) -> None:
        self.store = store
        self.mappings = mappings
        self.engine: DeliveryEngine | None = None  # set once the engine exists
        self.lane_stats_interval = lane_stats_interval
        self.registry = r = CollectorRegistry()
        self.accepted = Counter(
            "gateway_records_accepted", "Records committed to the store by ingest.", registry=r
        )
        self.refused = Counter(
            "gateway_requests_refused",
            "Producer API requests refused, by error code.",
            ["reason"],
            registry=r,
        )
        self.deliveries = Counter(
            "gateway_deliveries",
            "Deliveries by the outcome of an attempt (delivered, retry, dead).",
            ["group", "integration", "outcome"],
            registry=r,
        )
        self.attempt_seconds = Histogram(
            "gateway_delivery_attempt_seconds",
            "Duration of outbound requests, by integration type.",
            ["type"],
            buckets=ATTEMPT_BUCKETS,
            registry=r,
        )
        self.breaker_state = Gauge(
            "gateway_breaker_state",
            "Circuit breaker of the lane: 0 closed, 1 half-open, 2 open.",
            LANE_LABELS,
            registry=r,
        )
        self.breaker_opened = Counter(
            "gateway_breaker_opened", "Times the lane's breaker opened.", LANE_LABELS, registry=r
        )
        self.commit_seconds = Histogram(
            "gateway_store_commit_seconds",
            "Duration of the store's write transactions (BEGIN to COMMIT).",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.pending_writes = Gauge(
            "gateway_store_pending_writes", "Records waiting for a store commit.", registry=r
        )
        self.pending_writes.set_function(store.pending_writes)
        self.mapping_groups = Gauge(
            "gateway_mapping_groups", "Groups with a live mapping.", registry=r
        )
        self.mapping_groups.set_function(lambda: len(mappings))
        self.lanes = LaneCollector(mappings)
        r.register(self.lanes)
        self.hooks = MetricsHooks(self)
        # Backends that time their write transactions take an observer (see SQLiteStore).
        if hasattr(store, "on_commit_seconds"):
            store.on_commit_seconds = self.commit_seconds.observe
        self._lane_stats_at = float("-inf")
        self._refreshing = asyncio.Lock()

    def records_committed(self, n: int) -> None:
        """``Ingest.on_commit``: ``n`` records were committed."""
        self.accepted.inc(n)

    def request_refused(self, code: str) -> None:
        """A producer request was refused with error ``code``."""
        self.refused.labels(code).inc()

    async def refresh(self) -> None:
        """Bring what collectors cannot fetch themselves up to date (before generating)."""
        self._sync_breakers()
        async with self._refreshing:
            now = time.monotonic()
            if now - self._lane_stats_at < self.lane_stats_interval:
                return
            try:
                stats = await self.store.lane_stats(time.time())
            except StoreError as exc:
                # Keep the last snapshot; the store's own trouble shows in /readyz.
                logs.log("metrics_lane_stats_failed", "warning", error=str(exc))
                return
            self._lane_stats_at = time.monotonic()
            self.lanes.update(stats)

    def _sync_breakers(self) -> None:
        # An open breaker turns half-open when asked after its cooldown, which the engine
        # does not report; reading each lane's state here keeps the gauge true.
        if self.engine is None:
            return
        now = time.monotonic()
        for lane in list(self.engine.lanes.values()):
            value = STATE_VALUES[lane.breaker.state(now)]
            self.breaker_state.labels(lane.group_key, lane.integration).set(value)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition (Prometheus text, or OpenMetrics when ``accept`` asks) and its
        content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def calls_both(
    first: Callable[[int], None], second: Callable[[int], None]
) -> Callable[[int], None]:
    """One ``on_commit`` callback calling two."""

    def both(n: int) -> None:
        first(n)
        second(n)

    return both


async def metrics_handler(request: web.Request) -> web.Response:
    """``GET /metrics``: unauthenticated, like ``/healthz``; do not expose it publicly."""
    m = request.config_dict[METRICS]
    await m.refresh()
    body, content_type = m.render(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})
