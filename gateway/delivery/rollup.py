"""Rollups: a lane's records summed per key and UTC window, sent as one report per bucket.

An integration entry with ``options.rollup`` (``{window: 1h, by: [customer_id], sum: [units],
grace: 5m}``) does not send its records one by one. When the engine claims a record's
delivery on such a lane, :meth:`Rollups.absorb` adds the record's ``sum`` attributes into the
open bucket of its ``by`` values and its window (by the record's arrival time, windows aligned
to UTC), in the same store transaction that marks the delivery delivered: a crash before that
commit leaves the delivery leased, so it is claimed again and added then; after it, the
delivery is done and never added again. Exactly once either way.

A background round (:meth:`Rollups.run`) turns each bucket whose window plus grace has passed
into a report: a record of its own (the ``by`` values, the sums, and ``rollup_*`` attributes
saying what it covers) with one delivery, made in the transaction that marks the bucket sent.
That delivery is sent like any other, mapped through the entry's fields, with an idempotency
key (its delivery id) that is the same for every resend. A record that reaches its bucket
after the report was made opens a correction bucket (``rollup_sequence`` 1, 2...), reported
a grace after its first record. See docs/links-and-rollups.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import decimal
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from gateway import logs
from gateway.mapping.loader import MappingRegistry
from gateway.mapping.options import RollupOptions
from gateway.store.base import ClaimedDelivery, RollupAdd, Store, StoreError
from gateway.store.core import report_data

#: How often due buckets are looked for (seconds) while any mapping has a rollup.
TICK = 0.5
#: Buckets turned into reports per store transaction.
CLOSE_BATCH = 200
#: The largest amount a record may add (exclusive): sums stay exact and fit a JSON number.
MAX_AMOUNT = decimal.Decimal(10) ** 15
#: How long the answer "does any mapping have a rollup" is kept (seconds).
ACTIVE_TTL = 2.0
#: Without any rollup in the live mappings, buckets left by a removed one are still closed,
#: this often.
IDLE_TICK = 10.0


def window_of(received_at: float, window: float) -> tuple[float, float]:
    """The UTC-aligned window ``[start, end)`` holding ``received_at``."""
    start = math.floor(received_at / window) * window
    return start, start + window


def amount(value: Any) -> decimal.Decimal:
    """A summed attribute's value as an exact decimal; ValueError when it is not a number.
    A number or a numeric string counts; booleans, lists and non-finite values do not."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{value!r} is not a number")
    try:
        # str() of a float is its shortest repr, so 0.1 adds as exactly 0.1.
        out = decimal.Decimal(str(value).strip())
    except decimal.InvalidOperation:
        raise ValueError(f"{value!r} is not a number") from None
    if not out.is_finite():
        raise ValueError(f"{value!r} is not a number")
    if abs(out) >= MAX_AMOUNT:
        raise ValueError(f"{value!r} is too large to add up (the limit is 1e15)")
    return out


def bucket_of(
    data: Mapping[str, Any], received_at: float, opts: RollupOptions
) -> tuple[dict[str, Any], float, float, dict[str, str]]:
    """Where a record goes: its ``by`` values (None where missing), its window, and its
    ``sum`` amounts (a missing or null attribute adds nothing). ValueError naming the
    attribute when an amount is not a number."""
    by = {name: data.get(name) for name in opts.by}
    start, end = window_of(received_at, opts.window)
    sums: dict[str, str] = {}
    for name in opts.sum:
        value = data.get(name)
        if value is None:
            continue
        try:
            sums[name] = str(amount(value))
        except ValueError as exc:
            raise ValueError(f"rollup sum attribute {name!r}: {exc}") from None
    return by, start, end, sums


def preview(
    data: Mapping[str, Any], opts: RollupOptions, now: float
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The bucket a record arriving at ``now`` would join, as the preview shows it, and the
    report of a bucket holding only this record (None when the record cannot be added)."""
    try:
        by, start, end, sums = bucket_of(data, now, opts)
    except ValueError as exc:
        return {"error": str(exc)}, None
    report = report_data(by, sums, start, end, 1, 0)
    bucket = {
        "key": by,
        "window_start": report["rollup_window_start"],
        "window_end": report["rollup_window_end"],
        "reported_after": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(end + opts.grace)),
        "adds": {k: report[k] for k in sums},
    }
    return bucket, report


class Rollups:
    """The engine's rollup side: absorbing claimed records, closing due buckets."""

    def __init__(
        self,
        store: Store,
        mappings: MappingRegistry,
        owner: str,
        *,
        send: Callable[[list[ClaimedDelivery]], Any],
        notify: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.mappings = mappings
        self.owner = owner
        self._send = send  # queue reports on their lanes (the engine's routing)
        self._notify = notify  # reports were made: claim now
        self._clock = clock
        self._active = False
        self._active_at = -ACTIVE_TTL

    def options(self, group_key: str, integration: str) -> RollupOptions | None:
        """The lane's rollup, if its entry has one."""
        mapping = self.mappings.get(group_key)
        entry = mapping.integration(integration) if mapping is not None else None
        return entry.options.rollup if entry is not None else None

    def split(
        self, claimed: list[ClaimedDelivery]
    ) -> tuple[list[ClaimedDelivery], list[tuple[ClaimedDelivery, RollupOptions]]]:
        """``claimed`` as (deliveries of ordinary lanes, those of rollup lanes)."""
        plain: list[ClaimedDelivery] = []
        rolled: list[tuple[ClaimedDelivery, RollupOptions]] = []
        for c in claimed:
            opts = self.options(c.delivery.group_key, c.delivery.integration)
            if opts is None:
                plain.append(c)
            else:
                rolled.append((c, opts))
        return plain, rolled

    async def absorb(self, rolled: list[tuple[ClaimedDelivery, RollupOptions]]) -> None:
        """Add the records to their buckets (one transaction); send the reports among them."""
        adds = []
        for c, opts in rolled:
            d = c.delivery
            error = None
            try:
                by, start, end, sums = bucket_of(orjson.loads(c.data_json), c.received_at, opts)
            except (ValueError, orjson.JSONDecodeError) as exc:
                by, start, end, sums, error = {}, 0.0, 0.0, {}, str(exc)
            adds.append(
                RollupAdd(
                    d.id,
                    self.owner,
                    d.group_key,
                    d.integration,
                    by,
                    start,
                    end,
                    opts.grace,
                    sums,
                    error,
                )
            )
        try:
            done = await self.store.rollup_absorb(adds, self._clock())
        except StoreError as exc:
            logs.log("rollup_absorb_failed", "warning", error=str(exc), deliveries=len(adds))
            # Given back due soon; nothing was added (the transaction did not commit).
            ids = [c.delivery.id for c, _ in rolled]
            # If even that fails, the leases run out and the deliveries are claimed again.
            with contextlib.suppress(StoreError):
                await self.store.release_deliveries(self.owner, ids, self._clock() + 1.0)
            return
        if done.dead:
            logs.log("rollup_refused", "warning", deliveries=len(done.dead))
        if done.reports:
            wanted = set(done.reports)
            self._send([c for c, _ in rolled if c.delivery.id in wanted])

    def active(self) -> bool:
        """Whether any live mapping has a rollup entry (looked up again every
        :data:`ACTIVE_TTL` seconds: a walk over every group is too much for each tick)."""
        now = time.monotonic()
        if now - self._active_at < ACTIVE_TTL:
            return self._active
        self._active_at = now
        self._active = any(
            mapping is not None and any(i.options.rollup for i in mapping.integrations)
            for mapping in map(self.mappings.get, self.mappings.groups())
        )
        return self._active

    async def close_due(self) -> int:
        """Turn every due bucket into its report; how many were made."""
        made = 0
        while True:
            ids = await self.store.rollup_close_due(self._clock(), CLOSE_BATCH)
            made += len(ids)
            if ids:
                logs.log("rollup_reports", reports=len(ids))
                self._notify()
            if len(ids) < CLOSE_BATCH:
                return made

    async def run(self, stopping: Callable[[], bool]) -> None:
        """Close due buckets every :data:`TICK` until ``stopping()``."""
        last = 0.0
        while not stopping():
            try:
                now = time.monotonic()
                if self.active() or now - last >= IDLE_TICK:
                    last = now
                    await self.close_due()
            except StoreError as exc:
                logs.log("rollup_close_failed", "warning", error=str(exc))
            except Exception as exc:  # a bug must not stop the reports for good
                logs.log("rollup_error", "error", error=repr(exc))
            await asyncio.sleep(TICK)
