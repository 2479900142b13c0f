"""One attempt of a lane: map, build, send, read the answers, record the outcomes.

Every record of the batch is mapped through the mapping in force now (so a fixed mapping
re-maps replayed deliveries), built into requests by its type's builder, sent by the type's
send step (the shared HTTP transport unless the type has its own), and read into one outcome
per delivery (per entry where the integration answers per entry). The outcomes feed the lane's
breaker and rate-limit hold, and are recorded with the attempt's mapping version in one store
transaction.

:class:`Attempts` is a part of the engine with its own state; what it needs of the engine
itself is :class:`EngineSide`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import orjson

from gateway import logs
from gateway.delivery import policy
from gateway.delivery.breaker import BreakerState
from gateway.delivery.lane import Lane, LaneConfig
from gateway.integrations import destinations, redact
from gateway.integrations.base import (
    BuildErrors,
    BuildUnavailable,
    LinkedBuilder,
    OutboundRequest,
    Outcome,
    OutcomeKind,
    RecordContext,
    Response,
    TransportError,
)
from gateway.integrations.oauth2 import TokenCache, TokenError
from gateway.integrations.transport import (
    Transport,
    outcomes_by_status,
)
from gateway.mapping.errors import MappingError
from gateway.mapping.loader import MappingRegistry
from gateway.mapping.model import CompiledIntegration
from gateway.store.base import (
    Attempt,
    ClaimedDelivery,
    DeliveryState,
    DeliveryUpdate,
    LinkWrite,
    Store,
    StoreError,
)


def link_scope(integration: CompiledIntegration) -> str:
    """Whose links an entry reads and writes: its own (its name) unless its ``link_scope``
    setting names another entry of the group (an ``expire`` entry sharing the links of the
    entry that created the licences)."""
    scope = integration.settings.value.get("link_scope")
    return str(scope) if scope else integration.name


class EngineHooks:
    """What the engine reports as it works; the metrics module implements it."""

    def attempt(self, lane: Lane, outcomes: list[Outcome], seconds: float) -> None:
        """One request finished (or failed to be made) with these outcomes."""

    def settled(self, lane: Lane, delivered: int, retry: int, dead: int) -> None:
        """An attempt's deliveries as recorded: delivered, to be retried, dead (permanent
        failures and retries run out), whether or not a request was sent."""

    def breaker_changed(self, lane: Lane, state: BreakerState) -> None:
        """A lane's breaker is now in ``state``."""


@dataclass(slots=True)
class _Item:
    claimed: ClaimedDelivery
    fields: dict[str, Any] | None = None
    outcome: Outcome | None = None
    context: RecordContext | None = None  # for types that declare link_key


class EngineSide(Protocol):
    """What an attempt needs of the engine that runs it."""

    def finished(self, count: int) -> None:
        """``count`` claimed deliveries are out of the engine's hands (their outcomes are
        about to be recorded): room to claim more."""

    def recovered(self, lane: Lane) -> None:
        """The lane's breaker closed: what it put off is due now."""

    def heads_freed(self) -> None:
        """Ordered deliveries settled: their keys' next records can be claimed."""


class Attempts:
    """Runs the engine's attempts: map, build, send, read, feed the lane, record."""

    def __init__(
        self,
        *,
        store: Store,
        mappings: MappingRegistry,
        transport: Transport,
        tokens: TokenCache,
        hooks: EngineHooks,
        owner: str,
        engine: EngineSide,
        rng: random.Random,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.mappings = mappings
        self.transport = transport
        self.tokens = tokens
        self.hooks = hooks
        self.owner = owner
        self._engine = engine
        self._rng = rng
        self._clock = clock
        self._warned_tls: set[tuple[str, str]] = set()
        self._gathering: _Gathering | None = None  # outcomes for the next joint store call
        self._write_lock = asyncio.Lock()

    async def run(
        self,
        lane: Lane,
        batch: list[ClaimedDelivery],
        slots: asyncio.Semaphore,
        *,
        probe: bool = False,
    ) -> None:
        """One attempt of ``batch`` on ``lane``, holding one of its ``slots`` (released here);
        ``probe``: the breaker let it through half-open."""
        started = self._clock()
        t0 = time.perf_counter()
        version: str | None = None
        items = [_Item(c) for c in batch]
        integration: CompiledIntegration | None = None
        try:
            mapping = self.mappings.get(lane.group_key)
            integration = mapping.integration(lane.integration) if mapping else None
            if mapping is not None:
                version = mapping.version
            if mapping is None:
                why = f"group {lane.group_key!r} has no mapping file"
                self._settle(items, OutcomeKind.PERMANENT, why)
            elif integration is None:
                why = (
                    f"integration {lane.integration!r} is not in the mapping of group "
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
                if lane.config_of is not integration:
                    lane.reconfigure(LaneConfig.of(integration))
                    lane.type_name = integration.type.name
                    lane.config_of = integration
                await self._send(lane, integration, items)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logs.log(
                "delivery_attempt_error",
                "error",
                group=lane.group_key,
                integration=lane.integration,
                error=redact.scrub(repr(exc), redact.secrets_of_lane(self, lane)),
            )
            self._settle(items, OutcomeKind.RETRY, f"internal error: {exc!r}")
        finally:
            slots.release()
            lane.sending -= len(batch)
            self._engine.finished(len(batch))
            if probe:
                lane.breaker.probe_returned()
                lane.probe_done.set()
        duration_ms = (time.perf_counter() - t0) * 1000
        await self._record(lane, items, started, duration_ms, version, integration)

    @staticmethod
    def _settle(
        items: list[_Item], kind: OutcomeKind, error: str | None, status: int | None = None
    ) -> None:
        for it in items:
            if it.outcome is None:
                it.outcome = Outcome(it.claimed.delivery.id, kind, status, error)

    async def _send(self, lane: Lane, integration: CompiledIntegration, items: list[_Item]) -> None:
        destinations.use(integration)  # this attempt's connections: the entry's policy
        for it in items:
            try:
                it.fields = integration.map(orjson.loads(it.claimed.data_json))
            except MappingError as exc:
                it.outcome = Outcome(
                    it.claimed.delivery.id, OutcomeKind.PERMANENT, None, f"mapping error: {exc}"
                )
        if TokenCache.needs_token(integration):
            try:
                await self.tokens.ensure(integration, self.transport.client())
            except TokenError as exc:
                kind = OutcomeKind.PERMANENT if exc.permanent else OutcomeKind.RETRY
                self._settle(items, kind, str(exc))
                # A refusal says the token endpoint is up; no answer counts as a failure.
                self._feed_breaker(lane, exc.permanent)
                return
        if integration.type.link_key is not None and not await self._links(
            lane, integration, items
        ):
            return
        requests = await self._build(integration, [it for it in items if it.outcome is None])
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
        if len(requests) == 1:  # one-a-request lanes: no task of its own for the request
            await self._send_one(lane, integration, requests[0], by_id)
            return
        await asyncio.gather(*(self._send_one(lane, integration, r, by_id) for r in requests))

    async def _links(
        self, lane: Lane, integration: CompiledIntegration, items: list[_Item]
    ) -> bool:
        """Give each live item its :class:`RecordContext`: its link key and the link stored
        for it. False (every item to retry) when the store cannot answer."""
        link_key = integration.type.link_key
        assert link_key is not None
        keys: dict[str, str | None] = {}
        for it in items:
            if it.outcome is None:
                try:
                    keys[it.claimed.delivery.id] = link_key(it.fields or {})
                except (ValueError, TypeError, KeyError):
                    keys[it.claimed.delivery.id] = None  # the build step says what is wrong
        wanted = [k for k in keys.values() if k]
        try:
            links = await self.store.get_links(lane.group_key, link_scope(integration), wanted)
        except StoreError as exc:
            self._settle(items, OutcomeKind.RETRY, f"cannot read links: {exc}")
            return False
        for it in items:
            did = it.claimed.delivery.id
            if did in keys:
                key = keys[did]
                stored = links.get(key) if key else None
                it.context = RecordContext(
                    it.claimed.received_at, key, stored.external_id if stored else None
                )
        return True

    async def _build(
        self, integration: CompiledIntegration, items: list[_Item]
    ) -> list[OutboundRequest]:
        """The requests for the items; records the builder refuses become permanent."""
        build = integration.type.build
        linked = integration.type.link_key is not None
        live = items
        while live:
            batch = [(it.claimed.delivery.id, it.fields or {}) for it in live]
            kwargs: dict[str, Any] = {"tokens": self.tokens.get}
            if linked:
                kwargs["records"] = {
                    it.claimed.delivery.id: it.context for it in live if it.context is not None
                }
            try:
                blocking = integration.type.blocking_build
                if blocking(integration) if callable(blocking) else blocking:
                    return await asyncio.to_thread(
                        cast(LinkedBuilder, build), integration, batch, **kwargs
                    )
                return cast(LinkedBuilder, build)(integration, batch, **kwargs)
            except BuildErrors as exc:
                for it in live:
                    err = exc.errors.get(it.claimed.delivery.id)
                    if err is not None:
                        why = f"mapping error: {err}" if isinstance(err, MappingError) else str(err)
                        it.outcome = Outcome(
                            it.claimed.delivery.id, OutcomeKind.PERMANENT, None, why
                        )
                live = [it for it in live if it.outcome is None]
            except BuildUnavailable as exc:
                self._settle(live, OutcomeKind.RETRY, str(exc))
                return []
            except (ValueError, KeyError, TypeError) as exc:
                self._settle(live, OutcomeKind.PERMANENT, f"cannot build the request: {exc}")
                return []
        return []

    async def _send_one(
        self,
        lane: Lane,
        integration: CompiledIntegration,
        request: OutboundRequest,
        by_id: dict[str, _Item],
    ) -> None:
        t0 = time.perf_counter()
        lane.counters.requests += 1
        response = await self._exchange(lane, integration, request)
        if (
            isinstance(response, Response)
            and response.status == 401
            and TokenCache.needs_token(integration)
        ):
            # The token may have been revoked or expired early: one fresh token, one retry.
            bearer = request.headers.get("Authorization", "")
            self.tokens.invalidate(integration, bearer.removeprefix("Bearer "))
            try:
                await self.tokens.ensure(integration, self.transport.client())
                ids = set(request.delivery_ids)
                again = await self._build(integration, [by_id[d] for d in request.delivery_ids])
                request = next(r for r in again if set(r.delivery_ids) <= ids)
                response = await self._exchange(lane, integration, request)
            except TokenError as exc:
                response = TransportError(str(exc))
        outcomes = self._read(integration, request, response)
        for o in outcomes:
            it = by_id.get(o.delivery_id)
            if it is not None and it.outcome is None:
                it.outcome = o
        self._judge_lane(lane, response, integration.type.breaker_statuses)
        self.hooks.attempt(lane, outcomes, time.perf_counter() - t0)

    async def _exchange(
        self, lane: Lane, integration: CompiledIntegration, request: OutboundRequest
    ) -> Response | TransportError:
        """The request sent by the type's send step, or the shared HTTP transport."""
        send = integration.type.send
        try:
            if send is None:  # what SendContext.http does, one coroutine frame fewer
                cfg = lane.config
                return await self.transport.send(request, cfg.timeouts, verify_tls=cfg.verify_tls)
            return await send(integration, request, lane.send_context(self.transport))
        except TransportError as exc:
            return exc
        except Exception as exc:  # a send step's bug: this request fails, not the attempt
            logs.log(
                "delivery_send_error",
                "error",
                group=lane.group_key,
                integration=lane.integration,
                error=repr(exc),
            )
            return TransportError(f"the {integration.type.name} send step failed: {exc!r}")

    def _read(
        self,
        integration: CompiledIntegration,
        request: OutboundRequest,
        response: Response | TransportError,
    ) -> list[Outcome]:
        if isinstance(response, TransportError):
            kind = OutcomeKind.PERMANENT if response.permanent else OutcomeKind.RETRY
            return [Outcome(d, kind, None, str(response)) for d in request.delivery_ids]
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
        out = []
        for o in by_status:
            mine = read_out.get(o.delivery_id)
            if mine is None:
                out.append(o)
                continue
            if mine.kind == OutcomeKind.RETRY and mine.retry_after is None:
                # The server's own wait (Retry-After, *-Reset, in seconds or as a date) holds
                # for every type; a type sets retry_after only for a vendor's other headers.
                mine.retry_after = server_wait
            out.append(mine)
        return out

    def _judge_lane(
        self,
        lane: Lane,
        response: Response | TransportError,
        failing: frozenset[int] = frozenset(),
    ) -> None:
        """Feed the breaker (``failing``: the type's further failing statuses); obey the
        integration's own rate limit for the whole lane."""
        now = time.monotonic()
        before = lane.breaker.state(now)
        if isinstance(response, TransportError):
            ok = response.permanent  # a refused destination says nothing of the integration
        else:
            status = response.status
            ok = not (status >= 500 or status == 408 or status in failing)
            if response.status == 429:
                wait = policy.wait_from_headers(response.headers, self._clock())
                if wait is None:
                    wait = policy.backoff(
                        lane.breaker.consecutive + 1, lane.config.retry, self._rng
                    )
                lane.hold_until = max(lane.hold_until, now + wait)
        self._feed_breaker(lane, ok, before, now)

    def _feed_breaker(
        self, lane: Lane, ok: bool, before: BreakerState | None = None, now: float | None = None
    ) -> None:
        """Count a request in the lane's breaker; report and act on a change of state."""
        now = time.monotonic() if now is None else now
        before = lane.breaker.state(now) if before is None else before
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
                self._engine.recovered(lane)

    # -- bookkeeping ----------------------------------------------------------------------
    async def _record(
        self,
        lane: Lane,
        items: list[_Item],
        started: float,
        duration_ms: float,
        version: str | None,
        integration: CompiledIntegration | None = None,
    ) -> None:
        now = self._clock()
        updates = []
        c = lane.counters
        secrets: frozenset[str] | None = None  # looked up once there is an error to scrub
        for it in items:
            d = it.claimed.delivery
            o = it.outcome or Outcome(d.id, OutcomeKind.RETRY, None, "no answer was read")
            if o.error:
                if secrets is None:
                    secrets = redact.secrets_of_lane(self, lane)
                o.error = redact.scrub(o.error, secrets)
            attempts = d.attempts + 1
            attempt = Attempt(d.id, started, duration_ms, o.status, o.error, version)
            link = None
            if o.kind == OutcomeKind.DELIVERED:
                state, at, error = DeliveryState.DELIVERED, now, None
                c.delivered += 1
                c.last_success_at = now
                if o.link is not None and integration is not None:
                    link = LinkWrite(
                        lane.group_key,
                        link_scope(integration),
                        o.link.link_key,
                        o.link.external_id,
                    )
                    attempt.link = link.describe()
            else:
                retry_at = None
                error = o.error
                if o.kind == OutcomeKind.RETRY and o.retry_until is not None:
                    # The type's own slow schedule, outside the entry's retry limits.
                    wait = o.retry_after
                    if wait is None:
                        wait = policy.backoff(attempts, lane.config.retry, self._rng)
                    retry_at = now + wait if now + wait <= o.retry_until else None
                    if retry_at is None:
                        error = f"gave up after {attempts} attempts: {o.error}"
                elif o.kind == OutcomeKind.RETRY:
                    retry_at = policy.next_attempt(
                        attempts,
                        lane.config.retry,
                        now,
                        it.claimed.received_at,
                        o.retry_after,
                        self._rng,
                    )
                    if retry_at is None:
                        error = f"gave up after {attempts} attempts: {o.error}"
                if retry_at is None:
                    state, at = DeliveryState.DEAD, now
                    c.dead += 1
                else:
                    state, at = DeliveryState.PENDING, retry_at
                    c.retried += 1
                c.last_error, c.last_error_at = error, now
            updates.append(
                DeliveryUpdate(
                    d.id,
                    self.owner,
                    state,
                    at,
                    error,
                    o.status,
                    attempt,
                    ordered=d.ordering_key is not None,
                    link=link,
                )
            )
        lane.finished(duration_ms / 1000)
        states = [u.state for u in updates]
        self.hooks.settled(
            lane,
            states.count(DeliveryState.DELIVERED),
            states.count(DeliveryState.PENDING),
            states.count(DeliveryState.DEAD),
        )
        for delay in (0.0, 0.5, 2.0, 5.0):
            if delay:
                await asyncio.sleep(delay)
            try:
                if not (delay == 0.0 and await self._write_together(updates)):
                    await self.store.update_deliveries(updates)
                if any(
                    u.state != DeliveryState.PENDING and it.claimed.delivery.ordering_key
                    for u, it in zip(updates, items, strict=True)
                ):
                    # Per-key ordering: the next record of these keys is the head now.
                    self._engine.heads_freed()
                return
            except StoreError as exc:
                logs.log("delivery_record_failed", "warning", error=str(exc), retry_in=delay)
        # The leases run out and the deliveries are sent again: at least once, never lost.
        logs.log("delivery_record_lost", "error", deliveries=len(updates))

    async def _write_together(self, updates: list[DeliveryUpdate]) -> bool:
        """Write ``updates`` in one store call with those of the attempts that finish while
        the previous such call is under way; True when written, False when the caller is to
        write them on its own (the joint call failed, or they cannot join).

        One call a batch of attempts instead of one an attempt: on SQLite each call is a
        savepoint and statements of its own, each of which gives up the GIL and waits to take
        it back from the busy event loop. One joint call at a time, so what finishes during it
        gathers for the next; an idle engine writes at once, as before."""
        ids = {u.delivery_id for u in updates}
        if any(u.link is not None for u in updates) or len(ids) != len(updates):
            return False  # link writes and repeated ids keep their own call's semantics
        g = self._gathering
        if g is not None and g.ids.isdisjoint(ids):
            g.updates.extend(updates)
            g.ids |= ids
            # Shielded: a follower cancelled (shutdown) must not cancel the others' answer.
            return await asyncio.shield(g.written)
        g = self._gathering = _Gathering(
            list(updates), ids, asyncio.get_running_loop().create_future()
        )
        ok = False
        try:
            async with self._write_lock:
                if self._gathering is g:
                    self._gathering = None  # closed: later updates gather for the next call
                try:
                    await self.store.update_deliveries(g.updates)
                    ok = True
                except Exception:  # each caller retries alone, and logs what it hits
                    ok = False
        finally:
            if self._gathering is g:
                self._gathering = None
            if not g.written.done():
                g.written.set_result(ok)
        return ok


@dataclass(slots=True)
class _Gathering:
    """Outcomes of several attempts waiting to be written in one store call."""

    updates: list[DeliveryUpdate]
    ids: set[str]
    written: asyncio.Future[bool]
