"""Rollup buckets in the store, on both backends (the ``store`` fixture is parametrised):
a record is added exactly once, in the transaction that completes its delivery; a bucket
becomes exactly one report; a late record opens a correction."""

from __future__ import annotations

import asyncio
import time

import orjson

from gateway.ids import delivery_id, record_id
from gateway.store import open_store
from gateway.store.base import (
    DeliveryState,
    IngestWrite,
    NewRecord,
    RollupAdd,
    Store,
)
from gateway.store.core import ROLLUP_SOURCE

OWNER = "test-owner"
G, LANE = "g", "metering"


async def ingest(store: Store, n: int, data: dict[str, object]) -> list[str]:
    """``n`` records with ``data`` fanning out to the rollup lane; their delivery ids."""
    ids = []
    records = []
    for _ in range(n):
        did = delivery_id()
        ids.append(did)
        records.append(
            NewRecord(record_id(), G, "AK", orjson.dumps(data), time.time(), [LANE], [did])
        )
    await store.commit_ingest(IngestWrite(records))
    return ids


async def claim(store: Store, owner: str = OWNER) -> list[str]:
    got = await store.claim_deliveries(owner, limit=1000, lease_seconds=60, now=time.time())
    return [c.delivery.id for c in got]


def add(did: str, customer: str, units: str, start: float, *, grace: float = 5.0,
        owner: str = OWNER, error: str | None = None) -> RollupAdd:  # fmt: skip
    return RollupAdd(did, owner, G, LANE, {"customer_id": customer}, start, start + 10, grace,
                     {"units": units, "charged": "0.10"}, error)  # fmt: skip


async def test_records_are_summed_exactly_once_per_key_and_window(store: Store) -> None:
    ids = await ingest(store, 6, {"x": 1})
    assert sorted(await claim(store)) == sorted(ids)
    start = 1_700_000_000.0
    adds = [add(d, "c1" if n % 2 else "c2", "1.5", start) for n, d in enumerate(ids)]
    done = await store.rollup_absorb(adds, time.time())
    assert sorted(done.added) == sorted(ids)
    assert not done.lost
    assert not done.reports
    # The same deliveries again (a process that lost its lease, or a replayed call): the
    # delivery is no longer pending under this lease, so nothing is added twice.
    again = await store.rollup_absorb(adds, time.time())
    assert sorted(again.lost) == sorted(ids)
    assert not again.added
    buckets = await store.rollup_buckets(G, LANE)
    assert [(b.by_values, b.records, b.sums, b.state) for b in buckets] == [
        ({"customer_id": "c1"}, 3, {"units": "4.5", "charged": "0.30"}, "open"),
        ({"customer_id": "c2"}, 3, {"units": "4.5", "charged": "0.30"}, "open"),
    ] or [(b.by_values, b.records, b.sums, b.state) for b in buckets] == [
        ({"customer_id": "c2"}, 3, {"units": "4.5", "charged": "0.30"}, "open"),
        ({"customer_id": "c1"}, 3, {"units": "4.5", "charged": "0.30"}, "open"),
    ]
    for did in ids:
        d = await store.get_delivery(did)
        assert d is not None
        assert d.state == DeliveryState.DELIVERED
        assert d.lease_owner is None


async def test_a_foreign_lease_adds_nothing(store: Store) -> None:
    ids = await ingest(store, 1, {"x": 1})
    await claim(store, "other")
    done = await store.rollup_absorb([add(ids[0], "c1", "1", 0.0)], time.time())
    assert done.lost == ids
    assert await store.rollup_buckets() == []
    d = await store.get_delivery(ids[0])
    assert d is not None
    assert d.state == DeliveryState.PENDING


async def test_a_bucket_becomes_one_report_when_due_and_late_records_correct_it(
    store: Store,
) -> None:
    start = float(int(time.time()) - 100)
    ids = await ingest(store, 3, {"x": 1})
    await claim(store)
    await store.rollup_absorb([add(d, "c1", "2", start, grace=5) for d in ids], time.time())
    # Not due before window end + grace.
    assert await store.rollup_close_due(start + 14.9) == []
    made = await store.rollup_close_due(start + 15.0)
    assert len(made) == 1
    assert await store.rollup_close_due(start + 1000.0) == []  # closed once only
    report = await store.get_delivery(made[0])
    assert report is not None
    assert report.state == DeliveryState.PENDING
    assert report.integration == LANE
    assert report.group_key == G
    rec = await store.get_record(report.record_id)
    assert rec is not None
    assert rec.access_key_id == ROLLUP_SOURCE
    data = orjson.loads(rec.data_json)
    assert data["customer_id"] == "c1"
    assert data["units"] == 6
    assert data["charged"] == 0.3
    assert data["rollup_records"] == 3
    assert data["rollup_correction"] is False
    # The report's id carries the window start, and is the same for the same bucket.
    assert int(made[0][4:16], 16) == int(start * 1000)

    # The report, claimed with other deliveries of the lane, is recognised as one.
    late = await ingest(store, 2, {"x": 1})
    claimed = await claim(store)
    assert sorted(claimed) == sorted([*late, made[0]])
    now = time.time()
    done = await store.rollup_absorb(
        [add(made[0], "c1", "6", start), *(add(d, "c1", "1", start) for d in late)], now
    )
    assert done.reports == made
    assert sorted(done.added) == sorted(late)
    buckets = await store.rollup_buckets(G, LANE)
    assert [(b.seq, b.state, b.records, b.sums["units"]) for b in buckets] == [
        (0, "sent", 3, "6"),
        (1, "open", 2, "2"),
    ]
    correction = buckets[1]
    assert correction.close_at >= now + 5 - 0.01  # a grace after its first record
    made2 = await store.rollup_close_due(correction.close_at)
    assert len(made2) == 1
    assert made2 != made
    rec2 = await store.get_record((await store.get_delivery(made2[0])).record_id)  # type: ignore[union-attr]
    assert rec2 is not None
    data2 = orjson.loads(rec2.data_json)
    assert data2["units"] == 2
    assert data2["rollup_correction"] is True
    assert data2["rollup_sequence"] == 1


async def test_a_record_that_cannot_be_summed_is_dead_with_the_reason(store: Store) -> None:
    ids = await ingest(store, 1, {"x": 1})
    await claim(store)
    done = await store.rollup_absorb(
        [add(ids[0], "c1", "0", 0.0, error="units: 'abc' is not a number")], time.time()
    )
    assert done.dead == ids
    d = await store.get_delivery(ids[0])
    assert d is not None
    assert d.state == DeliveryState.DEAD
    assert d.last_error == "units: 'abc' is not a number"
    assert await store.rollup_buckets() == []


async def test_concurrent_adders_on_separate_connections_count_every_record_once(
    store_url: str,
) -> None:
    """Two stores on one database (two gateway processes): both add to the same buckets at
    once; every record is counted exactly once."""
    a, b = open_store(store_url), open_store(store_url)
    await a.open()
    await b.open()
    try:
        ids = await ingest(a, 40, {"x": 1})
        first = await a.claim_deliveries("A", limit=20, lease_seconds=60, now=time.time())
        second = await b.claim_deliveries("B", limit=20, lease_seconds=60, now=time.time())
        start = 1_700_000_000.0
        adds_a = [add(c.delivery.id, f"c{n % 3}", "1", start, owner="A")
                  for n, c in enumerate(first)]  # fmt: skip
        adds_b = [add(c.delivery.id, f"c{n % 3}", "1", start, owner="B")
                  for n, c in enumerate(second)]  # fmt: skip
        results = await asyncio.gather(
            *(
                s.rollup_absorb(chunk, time.time())
                for s, adds in ((a, adds_a), (b, adds_b))
                for chunk in (adds[:10], adds[10:])
            )
        )
        assert sorted(d for r in results for d in r.added) == sorted(ids)
        buckets = await a.rollup_buckets(G, LANE)
        assert sum(bk.records for bk in buckets) == len(ids)
        assert sum(int(bk.sums["units"]) for bk in buckets) == len(ids)
        assert len(buckets) == 3
        assert {bk.seq for bk in buckets} == {0}
    finally:
        await a.close()
        await b.close()
