"""The delivery engine: claims due deliveries, hands them to their lanes, sends, records.

The dispatcher claims due deliveries from the store under a lease (oldest due first) and routes
each to its lane. A lane that cannot take a delivery now (paused, breaker open, held by the
integration's rate limit, or already holding as much as it can send within the lease) gives it
straight back to the store, due again when the lane expects to be ready: a blocked lane never
holds the claim path, and deliveries of other lanes flow past it.

Each attempt maps the records through the mapping in force now, builds the requests with the
type's builder, sends them through the shared transport, reads the answers into per-delivery
outcomes, and records every attempt with its mapping version in one store transaction.
Delivery is at least once: a crash between sending and recording means the lease expires and
the delivery is sent again, with the same idempotency key.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from gateway import logs
from gateway.delivery import policy
from gateway.delivery.breaker import BreakerState
from gateway.delivery.lane import Lane, LaneConfig, monotonic_to_wall
from gateway.ids import time_id
from gateway.integrations.base import (
    BuildErrors,
    OutboundRequest,
    Outcome,
    OutcomeKind,
    Response,
)
from gateway.integrations.oauth2 import TokenCache, TokenError
from gateway.integrations.transport import Transport, TransportError, outcomes_by_status
from gateway.mapping.errors import MappingError
from gateway.mapping.loader import MappingRegistry
from gateway.store.base import (
    Attempt,
    ClaimedDelivery,
    DeliveryState,
    DeliveryUpdate,
    Store,
    StoreError,
)

#: A paused lane's deliveries are put off this long; resuming brings them back at once.
PAUSE_DEFER = 3600.0


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """How the engine claims work (``GATEWAY_DELIVERY_*`` settings)."""

    lease_seconds: float = 60.0
    poll_interval: float = 1.0
    max_in_flight: int = 10000  # deliveries claimed and not yet finished, all lanes
    claim_batch: int = 500
    shutdown_grace: float = 10.0


class EngineHooks:
    """What the engine reports as it works; the metrics module implements it."""

    def attempt(self, lane: Lane, outcomes: list[Outcome], seconds: float) -> None:
        """One request finished (or failed to be made) with these outcomes."""

    def breaker_changed(self, lane: Lane, state: BreakerState) -> None:
        """A lane's breaker is now in ``state``."""


@dataclass(slots=True)
class _Item:
    claimed: ClaimedDelivery
    fields: dict[str, Any] | None = None
    outcome: Outcome | None = None


class DeliveryEngine:
    """Gets every pending delivery to its integration. ``start`` on the event loop."""

    def __init__(
        self,
        store: Store,
        mappings: MappingRegistry,
        settings: EngineSettings | None = None,
        *,
        transport: Transport | None = None,
        hooks: EngineHooks | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.mappings = mappings
        self.settings = settings or EngineSettings()
        self.transport = transport or Transport()
        self.tokens = TokenCache()
        self.hooks = hooks or EngineHooks()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{time_id()[-8:]}"
        self.lanes: dict[tuple[str, str], Lane] = {}
        self._rng = rng or random.Random()
        self._clock = clock
        self._wake = asyncio.Event()
        self._stopping = False
        self._dispatcher: asyncio.Task[None] | None = None
        self._attempts: set[asyncio.Task[Any]] = set()
        self._paused: set[tuple[str, str]] = set()
        self._paused_checked = 0.0
        self._warned_tls: set[tuple[str, str]] = set()

    # -- life -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Start claiming. Deliveries leased by a process that died are claimed once their
        lease expires (at most ``lease_seconds`` after the crash)."""
        self._paused = await self.store.paused_lanes()
        self._paused_checked = time.monotonic()
        self._dispatcher = asyncio.create_task(self._dispatch_loop(), name="delivery-dispatcher")
        logs.log("delivery_started", owner=self.owner, lease_seconds=self.settings.lease_seconds)

    async def stop(self) -> None:
        """Stop claiming, let requests in flight finish (up to the grace), give queued
        deliveries back to the store due now, and close connections."""
        self._stopping = True
        self._wake.set()
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
        for lane in self.lanes.values():
            if lane.task is not None:
                lane.task.cancel()
        for lane in self.lanes.values():
            if lane.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await lane.task
        if self._attempts:
            _, late = await asyncio.wait(set(self._attempts), timeout=self.settings.shutdown_grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        queued = [c.delivery.id for lane in self.lanes.values() for c, _ in lane.queue]
        for lane in self.lanes.values():
            lane.queue.clear()
        if queued:
            with contextlib.suppress(StoreError):
                await self.store.release_deliveries(self.owner, queued, self._clock())
        await self.transport.close()
        logs.log("delivery_stopped", owner=self.owner, released=len(queued))

    def notify(self, _records: int = 0) -> None:
        """New records were committed: claim now rather than at the next poll."""
        self._wake.set()

    # -- control --------------------------------------------------------------------------
    def lane(self, group_key: str, integration: str) -> Lane:
        """The lane of (group, integration), created (and started) on first use."""
        key = (group_key, integration)
        lane = self.lanes.get(key)
        if lane is None:
            compiled = self._integration(group_key, integration)
            lane = Lane(
                group_key, integration, LaneConfig.of(compiled) if compiled else LaneConfig()
            )
            lane.type_name = compiled.type.name if compiled else ""
            lane.paused = key in self._paused
            self.lanes[key] = lane
            if not self._stopping:
                lane.task = asyncio.create_task(self._lane_loop(lane), name=f"lane {key}")
        return lane

    async def pause(self, group_key: str, integration: str) -> bool:
        """Stop sending on a lane (kept across restarts); True when it was running."""
        changed = await self.store.set_lane_paused(group_key, integration, True, self._clock())
        self._paused.add((group_key, integration))
        lane = self.lane(group_key, integration)
        lane.paused = True
        lane.wake.set()
        await self.store.reschedule_lane(
            group_key, integration, at=self._clock() + PAUSE_DEFER, only_earlier=True
        )
        logs.log("lane_paused", group=group_key, integration=integration)
        return changed

    async def resume(self, group_key: str, integration: str) -> bool:
        """Send again on a paused lane: every pending delivery of it is due now."""
        changed = await self.store.set_lane_paused(group_key, integration, False, self._clock())
        self._paused.discard((group_key, integration))
        lane = self.lane(group_key, integration)
        lane.paused = False
        await self.store.reschedule_lane(
            group_key, integration, at=self._clock(), only_earlier=False
        )
        logs.log("lane_resumed", group=group_key, integration=integration)
        self.notify()
        return changed

    def status(self) -> list[dict[str, Any]]:
        """Every lane this process knows, as the admin API shows it."""
        now = time.monotonic()
        return [self.lanes[k].status(now) for k in sorted(self.lanes)]

    # -- dispatcher -----------------------------------------------------------------------
    def _held(self) -> int:
        return sum(lane.held() for lane in self.lanes.values())

    async def _dispatch_loop(self) -> None:
        s = self.settings
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), s.poll_interval)
            self._wake.clear()
            try:
                await self._refresh_paused()
                while not self._stopping:
                    room = s.max_in_flight - self._held()
                    if room <= 0:
                        break
                    limit = min(s.claim_batch, room)
                    claimed = await self.store.claim_deliveries(
                        self.owner, limit=limit, lease_seconds=s.lease_seconds, now=self._clock()
                    )
                    if claimed:
                        await self._route(claimed)
                    if len(claimed) < limit:
                        break
            except StoreError as exc:
                logs.log("delivery_claim_failed", "warning", error=str(exc))
                await asyncio.sleep(s.poll_interval)
            except Exception as exc:  # a bug must not stop delivery for good
                logs.log("delivery_dispatch_error", "error", error=repr(exc))
                await asyncio.sleep(s.poll_interval)

    async def _refresh_paused(self) -> None:
        # Another process (or the CLI through another gateway) may pause a lane.
        now = time.monotonic()
        if now - self._paused_checked < 5.0:
            return
        self._paused_checked = now
        self._paused = await self.store.paused_lanes()
        for key, lane in self.lanes.items():
            lane.paused = key in self._paused

    async def _route(self, claimed: list[ClaimedDelivery]) -> None:
        """Queue each claimed delivery on its lane, or give it back for later."""
        now = time.monotonic()
        wall = self._clock()
        later: dict[float, list[str]] = {}
        overflow: dict[tuple[str, str], int] = {}
        for c in claimed:
            lane = self.lane(c.delivery.group_key, c.delivery.integration)
            at = self._not_before(lane, now, wall)
            if at is None and lane.held() >= lane.capacity(self.settings.lease_seconds, now):
                # Spread what the lane cannot hold over the time it needs to get there, so
                # the deliveries come due about as fast as the lane sends.
                n = overflow[lane.key] = overflow.get(lane.key, 0) + 1
                wait = (lane.held() + n) / max(lane.throughput(now), 0.1)
                at = wall + min(max(0.5, wait), self.settings.lease_seconds / 2)
            if at is None:
                lane.queue.append((c, now))
                lane.wake.set()
            else:
                later.setdefault(float(round(at)), []).append(c.delivery.id)
        for at, ids in later.items():
            await self.store.release_deliveries(self.owner, ids, at)

    def _not_before(self, lane: Lane, now: float, wall: float) -> float | None:
        """None when the lane can send now; else the wall time to offer it again."""
        if lane.paused:
            return wall + PAUSE_DEFER
        blocked = lane.blocked_until(now)
        if blocked is not None:
            return monotonic_to_wall(blocked) + self._rng.uniform(0, 1)
        return None

    # -- lanes ----------------------------------------------------------------------------
    def _integration(self, group_key: str, name: str) -> Any:
        mapping = self.mappings.get(group_key)
        return mapping.integration(name) if mapping is not None else None

    async def _give_back(self, lane: Lane, at: float) -> None:
        ids = [c.delivery.id for c, _ in lane.queue]
        lane.queue.clear()
        if ids:
            await self.store.release_deliveries(self.owner, ids, at)

    async def _lane_loop(self, lane: Lane) -> None:
        while not self._stopping:
            try:
                await self._lane_step(lane)
            except asyncio.CancelledError:
                raise
            except StoreError as exc:
                logs.log(
                    "lane_store_error",
                    "warning",
                    group=lane.group_key,
                    integration=lane.integration,
                    error=str(exc),
                )
                await asyncio.sleep(1.0)
            except Exception as exc:  # a bug must not stop the lane for good
                logs.log(
                    "lane_error",
                    "error",
                    group=lane.group_key,
                    integration=lane.integration,
                    error=repr(exc),
                )
                await asyncio.sleep(1.0)

    async def _lane_step(self, lane: Lane) -> None:
        if not lane.queue:
            lane.wake.clear()
            await lane.wake.wait()
            return
        now = time.monotonic()
        if lane.paused:
            await self._give_back(lane, self._clock() + PAUSE_DEFER)
            return
        if lane.breaker.state(now) == BreakerState.OPEN:
            at = monotonic_to_wall(lane.breaker.open_until)
            await self._give_back(lane, at)
            # Put the lane's whole due backlog off too, instead of claiming it to give back.
            await self.store.reschedule_lane(
                lane.group_key, lane.integration, at=at, only_earlier=True
            )
            return
        if lane.hold_until > now:
            wait = lane.hold_until - now
            if wait > 5.0:
                await self._give_back(lane, monotonic_to_wall(lane.hold_until))
            else:
                await asyncio.sleep(wait)
            return
        if lane.breaker.state(now) == BreakerState.HALF_OPEN and lane.breaker.probing:
            lane.probe_done.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lane.probe_done.wait(), lane.config.longest_request + 1)
            return
        cfg = lane.config
        if cfg.batch_wait > 0 and len(lane.queue) < cfg.batch_size:
            waited = now - lane.queue[0][1]
            if waited < cfg.batch_wait:
                lane.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lane.wake.wait(), cfg.batch_wait - waited)
                if (
                    len(lane.queue) < cfg.batch_size
                    and time.monotonic() - lane.queue[0][1] < cfg.batch_wait
                ):
                    return
        if lane.bucket is not None:
            decision = lane.bucket.take()
            if not decision.allowed:
                await asyncio.sleep((1.0 - lane.bucket.tokens) / lane.bucket.rate)
                return
        await lane.slots.acquire()
        slots = lane.slots
        if not lane.queue or not lane.breaker.allow():
            slots.release()
            return
        batch = self._take_batch(lane)
        if not batch:
            slots.release()
            return
        lane.sending += len(batch)
        task = asyncio.create_task(self._attempt(lane, batch, slots))
        self._attempts.add(task)
        task.add_done_callback(self._attempts.discard)

    def _take_batch(self, lane: Lane) -> list[ClaimedDelivery]:
        """Up to a batch from the queue, without deliveries whose lease would run out while
        the request is in flight (they go back to the store, due now)."""
        # With a lease shorter than the longest request, settle for half the lease.
        margin = min(lane.config.longest_request + 5.0, self.settings.lease_seconds / 2)
        deadline = self._clock() + margin
        batch: list[ClaimedDelivery] = []
        expiring: list[str] = []
        while lane.queue and len(batch) < lane.config.batch_size:
            c, _ = lane.queue.popleft()
            if (c.delivery.lease_expires_at or 0) < deadline:
                expiring.append(c.delivery.id)
            else:
                batch.append(c)
        if expiring:
            self._spawn(self.store.release_deliveries(self.owner, expiring, self._clock()))
        return batch

    # -- one attempt ----------------------------------------------------------------------
    async def _attempt(
        self, lane: Lane, batch: list[ClaimedDelivery], slots: asyncio.Semaphore
    ) -> None:
        started = self._clock()
        t0 = time.perf_counter()
        probe = lane.breaker.state() == BreakerState.HALF_OPEN
        version: str | None = None
        items = [_Item(c) for c in batch]
        try:
            mapping = self.mappings.get(lane.group_key)
            integration = mapping.integration(lane.integration) if mapping else None
            if mapping is not None:
                version = mapping.version
            if integration is None:
                why = (
                    f"group {lane.group_key!r} has no mapping file"
                    if mapping is None
                    else f"integration {lane.integration!r} is not in the mapping of group "
                    f"{lane.group_key!r} (version {mapping.version})"
                )
                self._settle(items, OutcomeKind.PERMANENT, why)
            elif not integration.enabled:
                self._settle(
                    items,
                    OutcomeKind.PERMANENT,
                    f"integration {lane.integration!r} is disabled in mapping version "
                    f"{mapping.version}; replay after enabling it",
                )
            else:
                lane.reconfigure(LaneConfig.of(integration))
                lane.type_name = integration.type.name
                await self._send(lane, integration, items)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logs.log(
                "delivery_attempt_error",
                "error",
                group=lane.group_key,
                integration=lane.integration,
                error=repr(exc),
            )
            self._settle(items, OutcomeKind.RETRY, f"internal error: {exc!r}")
        finally:
            slots.release()
            lane.sending -= len(batch)
            if probe:
                lane.probe_done.set()
        duration_ms = (time.perf_counter() - t0) * 1000
        await self._record(lane, items, started, duration_ms, version)

    @staticmethod
    def _settle(
        items: list[_Item], kind: OutcomeKind, error: str | None, status: int | None = None
    ) -> None:
        for it in items:
            if it.outcome is None:
                it.outcome = Outcome(it.claimed.delivery.id, kind, status, error)

    async def _send(self, lane: Lane, integration: Any, items: list[_Item]) -> None:
        for it in items:
            try:
                it.fields = integration.map(orjson.loads(it.claimed.data_json))
            except MappingError as exc:
                it.outcome = Outcome(
                    it.claimed.delivery.id, OutcomeKind.PERMANENT, None, f"mapping error: {exc}"
                )
        build = integration.type.build
        if build is None:
            self._settle(
                items,
                OutcomeKind.PERMANENT,
                f"integration type {integration.type.name!r} cannot send yet",
            )
            return
        if TokenCache.needs_token(integration):
            try:
                await self.tokens.ensure(integration, self.transport.client())
            except TokenError as exc:
                kind = OutcomeKind.PERMANENT if exc.permanent else OutcomeKind.RETRY
                self._settle(items, kind, str(exc))
                lane.breaker.record(exc.permanent)
                return
        requests = self._build(integration, [it for it in items if it.outcome is None])
        if not requests:
            return
        if lane.config.verify_tls is False and lane.key not in self._warned_tls:
            self._warned_tls.add(lane.key)
            logs.log(
                "tls_verification_off",
                "warning",
                group=lane.group_key,
                integration=lane.integration,
            )
        by_id = {it.claimed.delivery.id: it for it in items}
        await asyncio.gather(*(self._send_one(lane, integration, r, by_id) for r in requests))

    def _build(self, integration: Any, items: list[_Item]) -> list[OutboundRequest]:
        """The requests for the items; records the builder refuses become permanent."""
        build = integration.type.build
        live = items
        while live:
            batch = [(it.claimed.delivery.id, it.fields or {}) for it in live]
            try:
                return build(integration, batch, tokens=self.tokens.get)
            except BuildErrors as exc:
                for it in live:
                    err = exc.errors.get(it.claimed.delivery.id)
                    if err is not None:
                        it.outcome = Outcome(
                            it.claimed.delivery.id,
                            OutcomeKind.PERMANENT,
                            None,
                            f"mapping error: {err}",
                        )
                live = [it for it in live if it.outcome is None]
            except (ValueError, KeyError, TypeError) as exc:
                self._settle(live, OutcomeKind.PERMANENT, f"cannot build the request: {exc}")
                return []
        return []

    async def _send_one(
        self, lane: Lane, integration: Any, request: OutboundRequest, by_id: dict[str, _Item]
    ) -> None:
        t0 = time.perf_counter()
        lane.counters.requests += 1
        response = await self._exchange(lane, request)
        if (
            isinstance(response, Response)
            and response.status == 401
            and TokenCache.needs_token(integration)
        ):
            # The token may have been revoked or expired early: one fresh token, one retry.
            self.tokens.invalidate(integration)
            try:
                await self.tokens.ensure(integration, self.transport.client())
                ids = set(request.delivery_ids)
                again = self._build(integration, [by_id[d] for d in request.delivery_ids])
                request = next(r for r in again if set(r.delivery_ids) <= ids)
                response = await self._exchange(lane, request)
            except TokenError as exc:
                response = TransportError(str(exc))
        outcomes = self._read(integration, request, response)
        for o in outcomes:
            it = by_id.get(o.delivery_id)
            if it is not None and it.outcome is None:
                it.outcome = o
        self._judge_lane(lane, response)
        self.hooks.attempt(lane, outcomes, time.perf_counter() - t0)

    async def _exchange(self, lane: Lane, request: OutboundRequest) -> Response | TransportError:
        try:
            return await self.transport.send(
                request, lane.config.timeouts, verify_tls=lane.config.verify_tls
            )
        except TransportError as exc:
            return exc

    def _read(
        self, integration: Any, request: OutboundRequest, response: Response | TransportError
    ) -> list[Outcome]:
        if isinstance(response, TransportError):
            return [
                Outcome(d, OutcomeKind.RETRY, None, str(response)) for d in request.delivery_ids
            ]
        server_wait = policy.wait_from_headers(response.headers, self._clock())
        by_status = outcomes_by_status(request, response, server_wait)
        read = integration.type.read
        if read is None:
            return by_status
        try:
            read_out = {o.delivery_id: o for o in read(request, response)}
        except Exception as exc:  # a reader bug or a body it cannot parse
            return [
                Outcome(
                    d,
                    OutcomeKind.RETRY,
                    response.status,
                    f"cannot read the answer (HTTP {response.status}): {exc}",
                )
                for d in request.delivery_ids
            ]
        return [read_out.get(o.delivery_id, o) for o in by_status]

    def _judge_lane(self, lane: Lane, response: Response | TransportError) -> None:
        """Feed the breaker; obey the integration's own rate limit for the whole lane."""
        now = time.monotonic()
        before = lane.breaker.state(now)
        if isinstance(response, TransportError):
            ok = False
        else:
            ok = not (response.status >= 500 or response.status == 408)
            if response.status == 429:
                wait = policy.wait_from_headers(response.headers, self._clock())
                if wait is None:
                    wait = policy.backoff(
                        lane.breaker.consecutive + 1, lane.config.retry, self._rng
                    )
                lane.hold_until = max(lane.hold_until, now + wait)
        lane.breaker.record(ok, now)
        after = lane.breaker.state(now)
        if after != before:
            logs.log(
                "breaker_" + str(after),
                "warning" if after == BreakerState.OPEN else "info",
                group=lane.group_key,
                integration=lane.integration,
            )
            self.hooks.breaker_changed(lane, after)
            if after == BreakerState.CLOSED:
                # Back: what waited out the outage (deferred, or in backoff) is due now, and
                # the request times measured during the outage no longer say anything.
                lane.forget_history()
                self._spawn(self._recovered(lane))

    async def _recovered(self, lane: Lane) -> None:
        await self.store.reschedule_lane(
            lane.group_key, lane.integration, at=self._clock(), only_earlier=False
        )
        self.notify()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._attempts.add(task)
        task.add_done_callback(self._attempts.discard)

    # -- bookkeeping ----------------------------------------------------------------------
    async def _record(
        self,
        lane: Lane,
        items: list[_Item],
        started: float,
        duration_ms: float,
        version: str | None,
    ) -> None:
        now = self._clock()
        updates = []
        c = lane.counters
        for it in items:
            d = it.claimed.delivery
            o = it.outcome or Outcome(d.id, OutcomeKind.RETRY, None, "no answer was read")
            attempts = d.attempts + 1
            attempt = Attempt(d.id, started, duration_ms, o.status, o.error, version)
            if o.kind == OutcomeKind.DELIVERED:
                state, at, error = DeliveryState.DELIVERED, now, None
                c.delivered += 1
                c.last_success_at = now
            else:
                at = None
                error = o.error
                if o.kind == OutcomeKind.RETRY:
                    at = policy.next_attempt(
                        attempts,
                        lane.config.retry,
                        now,
                        it.claimed.received_at,
                        o.retry_after,
                        self._rng,
                    )
                    if at is None:
                        error = f"gave up after {attempts} attempts: {o.error}"
                if at is None:
                    state, at = DeliveryState.DEAD, now
                    c.dead += 1
                else:
                    state = DeliveryState.PENDING
                    c.retried += 1
                c.last_error, c.last_error_at = error, now
            updates.append(DeliveryUpdate(d.id, self.owner, state, at, error, o.status, attempt))
        lane.finished(duration_ms / 1000)
        for delay in (0.0, 0.5, 2.0, 5.0):
            await asyncio.sleep(delay)
            try:
                await self.store.update_deliveries(updates)
                return
            except StoreError as exc:
                logs.log("delivery_record_failed", "warning", error=str(exc), retry_in=delay)
        # The leases run out and the deliveries are sent again: at least once, never lost.
        logs.log("delivery_record_lost", "error", deliveries=len(updates))


#: The application's engine (``request.app[ENGINE]``).
ENGINE = web.AppKey("engine", DeliveryEngine)
