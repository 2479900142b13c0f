"""The delivery engine: claims due deliveries, hands them to their lanes, sends, records.

The dispatcher claims due deliveries from the store under a lease (oldest due first) and routes
each to its lane. A lane that cannot take a delivery now (paused, breaker open, held by the
integration's rate limit, or already holding as much as it can send within the lease) gives it
straight back to the store, due again when the lane expects to be ready: a blocked lane never
holds the claim path, and deliveries of other lanes flow past it.

Each attempt (attempt.py) maps the records through the mapping in force now, builds the
requests with the type's builder, sends them with the type's send step (the shared HTTP
transport unless the type has its own), reads the answers into per-delivery outcomes, and
records every attempt with its mapping version in one store transaction.
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
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from gateway import logs
from gateway.appkeys import ENGINE as ENGINE  # its key moved there; importers keep working
from gateway.delivery.attempt import Attempts, EngineHooks
from gateway.delivery.breaker import BreakerState
from gateway.delivery.lane import Lane, LaneConfig, monotonic_to_wall
from gateway.delivery.rollup import Rollups
from gateway.ids import time_id
from gateway.integrations.oauth2 import TokenCache
from gateway.integrations.transport import Transport
from gateway.mapping.loader import MappingRegistry
from gateway.mapping.model import CompiledIntegration
from gateway.store.base import (
    ClaimedDelivery,
    Store,
    StoreError,
)

#: A paused lane's deliveries are put off this long; resuming brings them back at once.
PAUSE_DEFER = 3600.0
#: Seconds between sweeps for parked ordered deliveries that head their key (a safety net:
#: settling a key's head brings its next delivery back at once).
UNPARK_SWEEP = 10.0


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """How the engine claims work (``GATEWAY_DELIVERY_*`` settings)."""

    lease_seconds: float = 60.0
    poll_interval: float = 1.0
    max_in_flight: int = 10000  # deliveries claimed and not yet finished, all lanes
    claim_batch: int = 500
    shutdown_grace: float = 10.0


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
        self._tasks: set[asyncio.Task[Any]] = set()  # attempts and chores, awaited on stop
        self._in_hand = 0  # deliveries claimed and not finished: queued or being sent
        self._paused: set[tuple[str, str]] = set()
        self._paused_checked = 0.0
        self._swept = 0.0
        self.attempts = Attempts(
            store=store,
            mappings=mappings,
            transport=self.transport,
            tokens=self.tokens,
            hooks=self.hooks,
            owner=self.owner,
            engine=self,
            rng=self._rng,
            clock=clock,
        )
        self.rollups = Rollups(
            store,
            mappings,
            self.owner,
            send=lambda reports: self._spawn(self._route(reports, rollups=False)),
            notify=self.notify,
            clock=clock,
        )

    # -- life -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Start claiming. Deliveries leased by a process that died are claimed at once on a
        store where only one process delivers (SQLite: its leases are stale by definition),
        elsewhere once their lease expires (at most ``lease_seconds`` after the crash)."""
        if self.store.single_deliverer:
            released = await self.store.release_foreign_leases(self.owner, self._clock())
            if released:
                logs.log("delivery_stale_leases_released", owner=self.owner, released=released)
        self._paused = await self.store.paused_lanes()
        self._paused_checked = time.monotonic()
        self._dispatcher = asyncio.create_task(self._dispatch_loop(), name="delivery-dispatcher")
        self._spawn(self.rollups.run(lambda: self._stopping))
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
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=self.settings.shutdown_grace)
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
            # A process that does not deliver (GATEWAY_DELIVERY=false) still answers the
            # admin API about lanes; it must not start sending on them.
            if self._dispatcher is not None and not self._stopping:
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

    # -- what attempts report (attempt.EngineSide) ----------------------------------------
    def finished(self, count: int) -> None:
        """``count`` claimed deliveries finished their attempt."""
        self._in_hand -= count

    def recovered(self, lane: Lane) -> None:
        """The lane's breaker closed: bring what it put off forward."""
        self._spawn(self._recovered(lane))

    def heads_freed(self) -> None:
        """Ordered deliveries settled, so their keys' next records are claimable (per-key
        ordering: a claim only takes the head of each key). Claim at once when the engine is
        running low on work; while it holds plenty, the next claim (when it runs low, or at
        the poll) takes them: a claim per settled delivery would cost a store transaction each
        and starve the sending."""
        if self._in_hand <= max(self.settings.claim_batch // 4, 1):
            self._wake.set()

    # -- dispatcher -----------------------------------------------------------------------
    async def _dispatch_loop(self) -> None:
        s = self.settings
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), s.poll_interval)
            self._wake.clear()
            try:
                await self._refresh_paused()
                await self._sweep_parked()
                while not self._stopping:
                    # A running count: summing over every lane on each claim cost O(lanes)
                    # per commit wake-up, with 10,000 groups a hot loop of its own.
                    room = s.max_in_flight - self._in_hand
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

    async def _sweep_parked(self) -> None:
        # Per-key ordering: a parked delivery whose key's head settled in a process that died
        # before bringing it back, or in a race between processes, is found here.
        now = time.monotonic()
        if now - self._swept < UNPARK_SWEEP:
            return
        self._swept = now
        if await self.store.unpark_heads(self._clock()):
            self._wake.set()

    async def _route(self, claimed: list[ClaimedDelivery], *, rollups: bool = True) -> None:
        """Queue each claimed delivery on its lane, or give it back for later. Records of a
        rollup lane go into their buckets instead (its reports come back with ``rollups``
        off)."""
        if rollups:
            claimed, rolled = self.rollups.split(claimed)
            if rolled:
                self._spawn(self.rollups.absorb(rolled))
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
                # The estimate can be far off; an idle lane calls these back (_lane_step).
                lane.overflow_until = max(lane.overflow_until, float(round(at)))
            if at is None:
                lane.queue.append((c, now))
                self._in_hand += 1
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
    def _integration(self, group_key: str, name: str) -> CompiledIntegration | None:
        mapping = self.mappings.get(group_key)
        return mapping.integration(name) if mapping is not None else None

    async def _give_back(self, lane: Lane, at: float) -> None:
        ids = [c.delivery.id for c, _ in lane.queue]
        lane.queue.clear()
        self._in_hand -= len(ids)
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
            if lane.overflow_until > self._clock() and not lane.paused:
                # The lane ran dry before the deliveries it had no room for came due: they
                # are due now (only those it put off; retries further out keep their time).
                until, lane.overflow_until = lane.overflow_until, 0.0
                await self.store.reschedule_lane(
                    lane.group_key,
                    lane.integration,
                    at=self._clock(),
                    only_earlier=False,
                    before=until + 1.0,  # given back rounded to whole seconds
                )
                self.notify()
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
        if not lane.queue:
            slots.release()
            return
        now = time.monotonic()  # one instant for both: a probe claimed is a probe returned
        probe = lane.breaker.state(now) == BreakerState.HALF_OPEN
        if not lane.breaker.allow(now):
            slots.release()
            return
        batch = self._take_batch(lane)
        if not batch:
            slots.release()
            if probe:
                lane.breaker.probe_returned()
            return
        lane.sending += len(batch)
        task = asyncio.create_task(self.attempts.run(lane, batch, slots, probe=probe))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
                self._in_hand -= 1
            else:
                batch.append(c)
        if expiring:
            self._spawn(self.store.release_deliveries(self.owner, expiring, self._clock()))
        return batch

    async def _recovered(self, lane: Lane) -> None:
        # What the breaker put off (to its last opening's end, plus up to a second of
        # jitter) is due now; retries that a server asked to wait longer keep their time.
        put_off_until = monotonic_to_wall(lane.breaker.open_until) + 1.0
        await self.store.reschedule_lane(
            lane.group_key,
            lane.integration,
            at=self._clock(),
            only_earlier=False,
            before=put_off_until + 0.001,
        )
        self.notify()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
