"""The store: group commit, idempotency, load shedding, durability, claims, listing, keys.

Most tests take the ``store`` / ``store_url`` fixtures (tests/conftest.py), parametrised over
every backend (SQLite, PostgreSQL). ``writer_paused`` holds either backend's writer so writes
queue into one group. Tests that reach further inside SQLite (its connection, pragmas, disk)
are SQLite-only through the ``sqlite_store`` helper, with the reason; tests/test_store_postgres.py
covers what only PostgreSQL has (several processes on one database, outages).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.ids import delivery_id, record_id, time_id
from gateway.store import migrations as mig
from gateway.store import open_store
from gateway.store.base import (
    AccessKey,
    Attempt,
    Delivery,
    DeliveryFilter,
    DeliveryState,
    DeliveryUpdate,
    IdempotencyEntry,
    IngestResult,
    IngestWrite,
    LaneStats,
    NewRecord,
    Store,
    StoreError,
    StoreOverloaded,
    StoreUnavailable,
)
from gateway.store.core import decode_cursor, encode_cursor
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SQLiteStore
from gateway.store.sqlite import apply_migrations as apply_sqlite_migrations
from tests.conftest import STORE_BACKENDS
from tests.support import pg
from tests.support.store_rows import count_records, scalar, sqlite_schema_versions

REPO = Path(__file__).resolve().parent.parent
AK = "AKGWTESTTESTTESTTEST"


# -- helpers ----------------------------------------------------------------------------------
def rec(
    group: str = "g",
    integrations: tuple[str, ...] = ("crm", "mail"),
    *,
    received_at: float | None = None,
    rid: str | None = None,
    data: bytes = b'{"epost": "a@example.com"}',
) -> NewRecord:
    """A new record fanning out to ``integrations``."""
    return NewRecord(
        id=rid or record_id(),
        group_key=group,
        access_key_id=AK,
        data_json=data,
        received_at=time.time() if received_at is None else received_at,
        integrations=list(integrations),
        delivery_ids=[delivery_id() for _ in integrations],
        mapping_version="v1",
    )


def entry(key: str, *, request_hash: str = "h1", ttl: float = 60.0, body: bytes = b"{}"):
    """An idempotency entry for ``key`` created now, living ``ttl`` seconds (may be < 0)."""
    now = time.time()
    return IdempotencyEntry(AK, key, request_hash, 202, body, now, now + ttl)


# Tests of SQLite's own machinery run on that backend only (not collected for PostgreSQL,
# rather than skipped: a skip in CI would read as a missing server).
SQLITE_ONLY = pytest.mark.parametrize("store_backend", ["sqlite"])


def sqlite_store(store: Store, reason: str = "reaches into SQLite internals") -> SQLiteStore:
    """``store`` as a SQLiteStore, or skip: the test pokes at SQLite internals."""
    if not isinstance(store, SQLiteStore):
        pytest.skip(f"SQLite-only: {reason}")
    return store


@contextlib.asynccontextmanager
async def writer_paused(store: Store) -> AsyncIterator[None]:
    """Hold the writer (SQLite's commit thread, PostgreSQL's task) busy, so writes queue up and
    land in one later transaction. The pause itself is one commit."""
    if isinstance(store, PostgresStore):
        gate, started = asyncio.Event(), asyncio.Event()

        async def hold(_conn: object) -> None:
            started.set()
            await gate.wait()

        held = asyncio.create_task(store._write(hold))
        await asyncio.wait_for(started.wait(), 10)
        try:
            yield
        finally:
            gate.set()
            await held
        return
    s = sqlite_store(store)
    gate, started = threading.Event(), threading.Event()

    def block() -> None:
        started.set()
        gate.wait(30)

    # SQLite's writer runs its statements on the event loop and BEGIN/COMMIT on its commit
    # thread: hold that thread, and a write that the writer has taken (the pause's own
    # commit) waits there while later ones queue up.
    assert s._committer is not None
    s._committer.submit(block)
    assert await asyncio.to_thread(started.wait, 10)
    blocker = asyncio.create_task(s._write(lambda _conn: None))
    for _ in range(1000):
        await asyncio.sleep(0.001)
        if not s._queue:
            break
    try:
        yield
    finally:
        gate.set()
        await blocker


async def wait_pending(store: Store, n: int) -> None:
    """Wait until ``n`` records are queued (the tasks submitting them have run)."""
    for _ in range(1000):
        if store.pending_writes() == n:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"pending_writes() is {store.pending_writes()}, expected {n}")


async def add(store: Store, *records: NewRecord) -> None:
    """Commit ``records`` in one write."""
    result = await store.commit_ingest(IngestWrite(list(records)))
    assert result == IngestResult(committed=True)


# -- records and group commit -----------------------------------------------------------------
async def test_record_round_trip_with_deliveries(store: Store) -> None:
    r = rec(integrations=("mail", "crm"), data=b'{"namn": "John Doe", "n": [1, 2]}')
    assert await store.get_record(r.id) is None
    await add(store, r)

    got = await store.get_record(r.id)
    assert got is not None
    assert (got.id, got.group_key, got.access_key_id) == (r.id, "g", AK)
    assert got.data_json == r.data_json
    assert got.received_at == r.received_at
    assert got.mapping_version == "v1"
    by_integration = {d.integration: d for d in got.deliveries}
    assert set(by_integration) == {"crm", "mail"}
    for integ, did in zip(r.integrations, r.delivery_ids, strict=True):
        d = by_integration[integ]
        assert d.id == did
        assert d.record_id == r.id
        assert d.group_key == "g"
        assert d.state == DeliveryState.PENDING
        assert d.attempts == 0
        assert d.next_attempt_at == r.received_at
        assert d.created_at == r.received_at
        assert d.lease_owner is None
        assert d.lease_expires_at is None
        assert d.last_error is None
        assert d.last_status is None
        assert d.delivered_at is None
    assert await count_records(store) == 1


async def test_record_without_integrations(store: Store) -> None:
    r = rec(integrations=())
    await add(store, r)
    got = await store.get_record(r.id)
    assert got is not None
    assert got.deliveries == []


async def test_mismatched_delivery_ids_are_refused_before_queueing(store: Store) -> None:
    r = rec()
    r.delivery_ids.pop()
    with pytest.raises(ValueError, match="delivery ids"):
        await store.commit_ingest(IngestWrite([r]))
    assert await count_records(store) == 0


async def test_concurrent_writes_share_transactions_and_are_readable_on_return(
    store: Store,
) -> None:
    writes = 200
    before = store.commits

    async def one() -> None:
        r = rec()
        await add(store, r)
        # Answered means committed: visible to any reader right away.
        got = await store.get_record(r.id)
        assert got is not None
        assert len(got.deliveries) == 2

    await asyncio.gather(*(one() for _ in range(writes)))
    transactions = store.commits - before
    assert 1 <= transactions < writes
    assert await count_records(store) == writes
    assert store.pending_writes() == 0


async def test_a_failing_write_fails_alone_in_its_group(store: Store) -> None:
    existing = rec()
    await add(store, existing)
    before = store.commits
    dup_in_group = rec()
    writes = [
        IngestWrite([rec()]),
        IngestWrite([rec(), rec(rid=existing.id)]),  # clashes with a stored record
        IngestWrite([rec()], [entry("idem:a")]),
        IngestWrite([dup_in_group]),
        IngestWrite([rec(rid=dup_in_group.id)]),  # clashes with a write of the same group
        IngestWrite([rec(), rec()]),
    ]
    async with writer_paused(store):
        tasks = [asyncio.create_task(store.commit_ingest(w)) for w in writes]
        await wait_pending(store, 8)
    results = await asyncio.gather(*tasks, return_exceptions=True)

    assert store.commits - before == 2  # the pause, then ONE group with all six writes
    for i in (0, 2, 3, 5):
        assert results[i] == IngestResult(committed=True), results[i]
    for i in (1, 4):
        assert isinstance(results[i], StoreError), results[i]
        assert not isinstance(results[i], StoreUnavailable | StoreOverloaded)
        assert "UNIQUE" in str(results[i])
    # The failing writes stored nothing, not even their first record.
    assert await store.get_record(writes[1].records[0].id) is None
    assert (await store.get_record(dup_in_group.id)).deliveries[0].id == (
        dup_in_group.delivery_ids[0]
    )
    assert await count_records(store) == 1 + 1 + 1 + 1 + 2
    assert await store.get_idempotency(AK, "idem:a", time.time()) is not None


@SQLITE_ONLY
async def test_other_writes_share_the_group_commit_and_fail_alone(store: Store) -> None:
    s = sqlite_store(
        store,
        "one writer thread runs every write; PostgreSQL runs claims and updates in their own "
        "concurrent transactions (test_store_postgres.py)",
    )
    first, last = rec(), rec()
    before = store.commits

    def bug(_conn: sqlite3.Connection) -> None:
        raise ValueError("a bug in a call")

    def clash(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE records SET data = x'00' WHERE id = ?", (first.id,))
        conn.execute(
            "INSERT INTO records (id, group_key, access_key_id, data, received_at) "
            "VALUES (?, 'g', 'a', x'00', 0)",
            (first.id,),
        )

    async with writer_paused(store):
        tasks = [
            asyncio.create_task(store.commit_ingest(IngestWrite([first]))),
            asyncio.create_task(s._write(bug)),
            asyncio.create_task(s._write(clash)),
            asyncio.create_task(
                store.claim_deliveries("w", limit=10, lease_seconds=30, now=time.time() + 1)
            ),
            asyncio.create_task(store.commit_ingest(IngestWrite([last]))),
        ]
        await wait_pending(store, 2)
        await asyncio.sleep(0.05)  # the three calls queue behind the first ingest
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert store.commits - before == 2  # the pause, then one transaction for all five
    assert results[0] == IngestResult(committed=True)
    assert isinstance(results[1], ValueError)
    assert isinstance(results[2], StoreError)
    assert "UNIQUE" in str(results[2])
    # The failed call's first statement was rolled back with it.
    assert (await store.get_record(first.id)).data_json == first.data_json
    # Queue order holds inside the transaction: the claim saw the ingest queued before it.
    assert {c.delivery.id for c in results[3]} == set(first.delivery_ids)
    assert results[4] == IngestResult(committed=True)
    assert await count_records(store) == 2


async def test_cancelled_caller_still_gets_its_write_committed(store: Store) -> None:
    r = rec()
    async with writer_paused(store):
        task = asyncio.create_task(store.commit_ingest(IngestWrite([r])))
        await wait_pending(store, 1)
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Nothing to wait on but the writer; a read after another commit sees the write.
    await add(store, rec())
    assert await store.get_record(r.id) is not None


# -- idempotency ------------------------------------------------------------------------------
async def test_idempotency_replay_returns_first_entry_and_stores_nothing(store: Store) -> None:
    first = entry("idem:k1", request_hash="first", body=b'{"id": "first"}')
    r1 = rec()
    assert await store.commit_ingest(IngestWrite([r1], [first])) == IngestResult(True)

    r2 = rec()
    again = entry("idem:k1", request_hash="second", body=b'{"id": "second"}')
    result = await store.commit_ingest(IngestWrite([r2], [entry("sig:x"), again]))
    assert result.committed is False
    assert result.replay == first
    assert await count_records(store) == 1
    assert await store.get_record(r2.id) is None
    # Nothing of the replayed write was stored, its other keys included.
    assert await store.get_idempotency(AK, "sig:x", time.time()) is None

    assert await store.get_idempotency(AK, "idem:k1", time.time()) == first
    assert await store.get_idempotency(AK, "idem:k1", first.expires_at + 1) is None
    assert await store.get_idempotency("AKOTHER", "idem:k1", time.time()) is None


async def test_expired_idempotency_key_is_replaced(store: Store) -> None:
    old = entry("idem:k", request_hash="old", ttl=-1.0)  # stored already expired
    await store.commit_ingest(IngestWrite([rec()], [old]))
    assert await store.get_idempotency(AK, "idem:k", time.time()) is None

    new = entry("idem:k", request_hash="new")
    result = await store.commit_ingest(IngestWrite([rec()], [new]))
    assert result == IngestResult(committed=True)
    assert await store.get_idempotency(AK, "idem:k", time.time()) == new
    assert await count_records(store) == 2


async def test_same_key_twice_in_one_transaction_second_is_replay(store: Store) -> None:
    a = IngestWrite([rec()], [entry("idem:same", request_hash="a")])
    b = IngestWrite([rec()], [entry("idem:same", request_hash="b")])
    before = store.commits
    async with writer_paused(store):
        ta = asyncio.create_task(store.commit_ingest(a))
        tb = asyncio.create_task(store.commit_ingest(b))
        await wait_pending(store, 2)
    ra, rb = await ta, await tb
    assert store.commits - before == 2  # the pause and one group
    assert ra == IngestResult(committed=True)
    assert rb.committed is False
    assert rb.replay == a.idempotency[0]
    assert await count_records(store) == 1
    assert await store.get_record(b.records[0].id) is None


async def test_same_key_after_a_failed_write_in_the_group_is_not_a_replay(store: Store) -> None:
    existing = rec()
    await add(store, existing)
    failing = IngestWrite([rec(rid=existing.id)], [entry("idem:k", request_hash="bad")])
    good = IngestWrite([rec()], [entry("idem:k", request_hash="good")])
    async with writer_paused(store):
        tf = asyncio.create_task(store.commit_ingest(failing))
        tg = asyncio.create_task(store.commit_ingest(good))
        await wait_pending(store, 2)
    with pytest.raises(StoreError):
        await tf
    assert await tg == IngestResult(committed=True)
    stored = await store.get_idempotency(AK, "idem:k", time.time())
    assert stored is not None
    assert stored.request_hash == "good"


async def test_purge_idempotency_removes_only_expired(store: Store) -> None:
    await store.commit_ingest(
        IngestWrite([rec()], [entry("a", ttl=-5), entry("b", ttl=-1), entry("c", ttl=60)])
    )
    assert await store.purge_idempotency(time.time()) == 2
    assert await store.purge_idempotency(time.time()) == 0
    assert await store.get_idempotency(AK, "c", time.time()) is not None


# -- load shedding, close, restart ------------------------------------------------------------
async def test_overloaded_when_pending_records_would_exceed_the_limit(store_url: str) -> None:
    s = open_store(store_url, max_pending_writes=10)
    await s.open()
    try:
        async with writer_paused(s):
            tasks = [asyncio.create_task(s.commit_ingest(IngestWrite([rec() for _ in range(6)])))]
            await wait_pending(s, 6)
            with pytest.raises(StoreOverloaded, match="10"):
                await s.commit_ingest(IngestWrite([rec() for _ in range(5)]))
            tasks.append(
                asyncio.create_task(s.commit_ingest(IngestWrite([rec() for _ in range(4)])))
            )
            await wait_pending(s, 10)
            with pytest.raises(StoreOverloaded):
                await s.commit_ingest(IngestWrite([rec()]))
        assert [r.committed for r in await asyncio.gather(*tasks)] == [True, True]
        assert s.pending_writes() == 0
        await s.commit_ingest(IngestWrite([rec()]))  # room again
        assert await count_records(s) == 11
    finally:
        await s.close()


async def test_close_commits_every_queued_write_then_refuses(store_url: str) -> None:
    s = open_store(store_url)
    await s.open()
    records = [rec() for _ in range(300)]
    tasks = [asyncio.create_task(s.commit_ingest(IngestWrite([r]))) for r in records]
    await asyncio.sleep(0)  # every task has queued its write
    assert s.pending_writes() > 0
    await s.close()
    assert all(t.done() for t in tasks)
    assert [t.result() for t in tasks] == [IngestResult(committed=True)] * len(records)

    with pytest.raises(StoreUnavailable, match="closed"):
        await s.commit_ingest(IngestWrite([rec()]))
    with pytest.raises(StoreUnavailable):
        await s.get_record(records[0].id)
    with pytest.raises(StoreUnavailable):
        await s.claim_deliveries("w", limit=1, lease_seconds=1, now=time.time())
    await s.close()  # idempotent

    again = open_store(store_url)
    await again.open()
    try:
        assert await count_records(again) == len(records)
    finally:
        await again.close()


async def test_store_not_opened_refuses(store_url: str) -> None:
    s = open_store(store_url)
    with pytest.raises(StoreUnavailable, match="not open"):
        await s.commit_ingest(IngestWrite([rec()]))
    with pytest.raises(StoreUnavailable):
        await s.get_record("rec_none")


async def test_data_survives_close_and_reopen(store_url: str) -> None:
    s = open_store(store_url)
    await s.open()
    r = rec()
    await add(s, r)
    await s.commit_ingest(IngestWrite([rec()], [entry("idem:x")]))
    await s.create_access_key(AccessKey(AK, b"cipher", ["g"], "k", time.time()))
    await s.close()

    s2 = open_store(store_url)
    await s2.open()
    try:
        got = await s2.get_record(r.id)
        assert got is not None
        assert got.data_json == r.data_json
        assert len(got.deliveries) == 2
        assert await count_records(s2) == 2
        assert await s2.get_idempotency(AK, "idem:x", time.time()) is not None
        assert (await s2.get_access_key(AK)).groups == ["g"]
    finally:
        await s2.close()


CHILD = r"""
import asyncio, sys, time
from gateway.store import open_store
from gateway.store.base import IngestWrite, NewRecord
from gateway.ids import delivery_id, record_id

async def main(url):
    store = open_store(url)
    await store.open()
    print("ready", flush=True)

    async def producer():
        while True:
            r = NewRecord(record_id(), "g", "AK", b'{"n": 1}', time.time(), ["crm"],
                          [delivery_id()])
            await store.commit_ingest(IngestWrite([r]))
            sys.stdout.write(r.id + "\n")
            sys.stdout.flush()

    await asyncio.gather(*(producer() for _ in range(16)))

asyncio.run(main(sys.argv[1]))
"""


async def test_every_acknowledged_write_survives_sigkill(store_url: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    acknowledged: list[str] = []
    stderr = b""

    def run_and_kill() -> int:
        nonlocal stderr
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, store_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=REPO,
        )
        try:
            read_until_killed(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            assert proc.stderr is not None
            stderr = proc.stderr.read()
        return proc.returncode

    def read_until_killed(proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        deadline = time.monotonic() + 60
        while len(acknowledged) < 400 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line.endswith(b"\n"):
                break
            acknowledged.append(line.decode().strip())
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: commits are in flight
        for line in proc.stdout:  # acknowledged before the kill, still in the pipe
            if line.endswith(b"\n"):
                acknowledged.append(line.decode().strip())

    returncode = await asyncio.to_thread(run_and_kill)
    assert returncode == -signal.SIGKILL, stderr.decode()
    assert len(acknowledged) >= 400

    s = open_store(store_url)
    await s.open()
    try:
        missing = [rid for rid in acknowledged if await s.get_record(rid) is None]
        assert missing == []
        assert await count_records(s) >= len(acknowledged)
    finally:
        await s.close()


# -- claims and updates -----------------------------------------------------------------------
async def test_two_owners_never_claim_the_same_delivery(store: Store) -> None:
    t0 = time.time() - 100
    for i in range(30):
        await add(store, rec(received_at=t0 + i))
    now = time.time()
    seen: dict[str, list[str]] = {"a": [], "b": []}

    async def worker(owner: str) -> None:
        while True:
            got = await store.claim_deliveries(owner, limit=7, lease_seconds=60, now=now)
            if not got:
                return
            for c in got:
                assert c.delivery.lease_owner == owner
                assert c.delivery.lease_expires_at == now + 60
                seen[owner].append(c.delivery.id)

    await asyncio.gather(worker("a"), worker("b"), worker("a"), worker("b"))
    assert not set(seen["a"]) & set(seen["b"])
    everything = seen["a"] + seen["b"]
    assert len(everything) == len(set(everything)) == 60


async def test_claim_order_due_filters_and_record_data(store: Store) -> None:
    base = 1_000_000.0
    late = rec("g1", ("crm",), received_at=base + 30)
    early = rec("g1", ("crm", "mail"), received_at=base + 10, data=b'{"early": true}')
    other = rec("g2", ("crm",), received_at=base + 20)
    future = rec("g1", ("crm",), received_at=base + 1000)
    await add(store, late, early, other, future)
    now = base + 100

    mail = await store.claim_deliveries("w", limit=10, lease_seconds=5, now=now, integration="mail")
    assert [c.delivery.id for c in mail] == [early.delivery_ids[1]]
    assert mail[0].data_json == b'{"early": true}'
    assert mail[0].received_at == base + 10

    lane = await store.claim_deliveries(
        "w", limit=10, lease_seconds=5, now=now, group_key="g1", integration="crm"
    )
    assert [c.delivery.id for c in lane] == [early.delivery_ids[0], late.delivery_ids[0]]
    rest = await store.claim_deliveries("w", limit=10, lease_seconds=5, now=now)
    assert [c.delivery.id for c in rest] == [other.delivery_ids[0]]  # `future` is not due
    assert await store.claim_deliveries("w", limit=10, lease_seconds=5, now=now) == []
    assert await store.claim_deliveries("w", limit=0, lease_seconds=5, now=now + 5000) == []


async def test_expired_lease_is_reclaimable_and_stale_owner_update_is_ignored(
    store: Store,
) -> None:
    r = rec(integrations=("crm",), received_at=1000.0)
    await add(store, r)
    did = r.delivery_ids[0]
    (a,) = await store.claim_deliveries("owner-a", limit=5, lease_seconds=10, now=2000.0)
    assert a.delivery.id == did
    assert await store.claim_deliveries("owner-b", limit=5, lease_seconds=10, now=2009.0) == []
    (b,) = await store.claim_deliveries("owner-b", limit=5, lease_seconds=10, now=2010.0)
    assert b.delivery.id == did
    assert b.delivery.lease_owner == "owner-b"

    stale = DeliveryUpdate(did, "owner-a", DeliveryState.DELIVERED, 0.0, last_status=200)
    assert await store.update_deliveries([stale]) == 0
    d = (await store.get_record(r.id)).deliveries[0]
    assert d.state == DeliveryState.PENDING
    assert d.lease_owner == "owner-b"
    assert d.attempts == 0
    assert d.delivered_at is None

    fresh = DeliveryUpdate(did, "owner-b", DeliveryState.DELIVERED, 0.0, last_status=200)
    assert await store.update_deliveries([fresh]) == 1
    d = (await store.get_record(r.id)).deliveries[0]
    assert d.state == DeliveryState.DELIVERED
    assert d.lease_owner is None
    # Delivered is final: a second update under the old lease does nothing.
    assert await store.update_deliveries([fresh]) == 0
    assert await store.claim_deliveries("owner-c", limit=5, lease_seconds=10, now=9e9) == []


async def test_update_deliveries_sets_state_attempts_and_attempt_rows(store: Store) -> None:
    r = rec(integrations=("crm", "mail", "chat"), received_at=1000.0)
    await add(store, r)
    claimed = await store.claim_deliveries("w", limit=10, lease_seconds=30, now=1001.0)
    ids = {c.delivery.integration: c.delivery.id for c in claimed}
    assert len(ids) == 3

    def attempt(did: str, status: int | None, error: str | None) -> Attempt:
        return Attempt(did, 1001.5, 12.5, status, error, "v1")

    t = time.time()
    applied = await store.update_deliveries(
        [
            DeliveryUpdate(
                ids["crm"],
                "w",
                DeliveryState.DELIVERED,
                1001.0,
                None,
                200,
                attempt(ids["crm"], 200, None),
            ),
            DeliveryUpdate(
                ids["mail"],
                "w",
                DeliveryState.PENDING,
                1061.0,
                "HTTP 503",
                503,
                attempt(ids["mail"], 503, "HTTP 503"),
            ),
            DeliveryUpdate(
                ids["chat"],
                "w",
                DeliveryState.DEAD,
                1001.0,
                "channel_not_found",
                404,
                attempt(ids["chat"], 404, "channel_not_found"),
            ),
            DeliveryUpdate("dlv_nonexistent", "w", DeliveryState.DEAD, 0.0),
        ]
    )
    assert applied == 3
    got = {d.integration: d for d in (await store.get_record(r.id)).deliveries}

    crm = got["crm"]
    assert crm.state == DeliveryState.DELIVERED
    assert crm.attempts == 1
    assert crm.last_status == 200
    assert crm.delivered_at is not None
    assert crm.delivered_at >= t
    mail = got["mail"]
    assert mail.state == DeliveryState.PENDING
    assert mail.attempts == 1
    assert mail.next_attempt_at == 1061.0
    assert mail.last_error == "HTTP 503"
    assert mail.last_status == 503
    assert mail.delivered_at is None
    assert mail.lease_owner is None
    assert mail.lease_expires_at is None
    chat = got["chat"]
    assert chat.state == DeliveryState.DEAD
    assert chat.last_error == "channel_not_found"
    assert all(d.updated_at >= t for d in got.values())

    assert await store.list_attempts(ids["crm"]) == [attempt(ids["crm"], 200, None)]
    assert await store.list_attempts("dlv_nonexistent") == []

    # The retry is due again only at its next_attempt_at.
    assert await store.claim_deliveries("w", limit=10, lease_seconds=30, now=1060.0) == []
    (again,) = await store.claim_deliveries("w", limit=10, lease_seconds=30, now=1061.0)
    assert again.delivery.id == ids["mail"]
    assert again.delivery.attempts == 1
    # An update without an attempt (e.g. released unsent) does not count one.
    release = DeliveryUpdate(ids["mail"], "w", DeliveryState.PENDING, 1070.0)
    assert await store.update_deliveries([release]) == 1
    mail = next(d for d in (await store.get_record(r.id)).deliveries if d.id == ids["mail"])
    assert mail.attempts == 1
    assert mail.next_attempt_at == 1070.0
    assert len(await store.list_attempts(ids["mail"])) == 1
    assert await store.update_deliveries([]) == 0


async def test_get_delivery_by_id_in_every_state(store: Store) -> None:
    r = rec(integrations=("crm", "mail"), received_at=1000.0)
    await add(store, r)
    crm, mail = r.delivery_ids
    got = await store.get_delivery(crm)
    assert got is not None
    assert (got.id, got.record_id, got.group_key, got.integration) == (crm, r.id, "g", "crm")
    assert (got.state, got.attempts, got.created_at) == (DeliveryState.PENDING, 0, 1000.0)
    assert await store.get_delivery("dlv_nonexistent") is None
    await store.claim_deliveries("w", limit=10, lease_seconds=30, now=1001.0)
    await settle(
        store,
        "w",
        {
            crm: outcome(crm, DeliveryState.DEAD, at=1002.0, error="HTTP 400"),
            mail: outcome(mail, DeliveryState.DELIVERED, at=1002.0),
        },
    )
    dead = await store.get_delivery(crm)
    assert dead is not None
    assert (dead.state, dead.last_error, dead.last_status) == (DeliveryState.DEAD, "HTTP 400", 503)
    done = await store.get_delivery(mail)
    assert done is not None
    assert done.state == DeliveryState.DELIVERED
    assert done.delivered_at is not None
    # The same row the record shows.
    record = await store.get_record(r.id)
    assert record is not None
    assert {d.id: d for d in record.deliveries} == {crm: dead, mail: done}
    assert "get_delivery" in Store.__abstractmethods__


# -- listing ----------------------------------------------------------------------------------
async def _walk(store: Store, flt: DeliveryFilter, limit: int) -> list[str]:
    ids: list[str] = []
    cursor = None
    for _ in range(10_000):
        page = await store.list_deliveries(flt, cursor=cursor, limit=limit)
        assert len(page.items) <= limit
        ids += [d.id for d in page.items]
        if page.next_cursor is None:
            return ids
        assert page.items, "a page with a next cursor must not be empty"
        cursor = page.next_cursor
    raise AssertionError("pagination did not end")


async def test_list_deliveries_pagination_with_filters(store: Store) -> None:
    t0 = 5000.0
    for i in range(25):
        await add(store, rec("g1" if i % 3 else "g2", ("crm", "mail"), received_at=t0 + i))
    # Kill a few deliveries so the state filter has something to find.
    claimed = await store.claim_deliveries("w", limit=7, lease_seconds=60, now=t0 + 100)
    await store.update_deliveries(
        [DeliveryUpdate(c.delivery.id, "w", DeliveryState.DEAD, 0.0) for c in claimed]
    )
    everything = await store.list_deliveries(DeliveryFilter(), limit=1000)
    assert everything.next_cursor is None
    all_items = everything.items
    assert len(all_items) == 50
    assert [d.id for d in all_items] == sorted(d.id for d in all_items)

    filters = [
        DeliveryFilter(),
        DeliveryFilter(state=DeliveryState.DEAD),
        DeliveryFilter(state=DeliveryState.PENDING, group_key="g1"),
        DeliveryFilter(group_key="g2", integration="mail"),
        DeliveryFilter(created_after=t0 + 5, created_before=t0 + 15),
        DeliveryFilter(state=DeliveryState.DELIVERED),
    ]
    for flt in filters:
        expected = [
            d.id
            for d in all_items
            if (flt.state is None or d.state == flt.state)
            and (flt.group_key is None or d.group_key == flt.group_key)
            and (flt.integration is None or d.integration == flt.integration)
            and (flt.created_after is None or d.created_at > flt.created_after)
            and (flt.created_before is None or d.created_at < flt.created_before)
        ]
        for limit in (1, 3, 10, 50, 51):
            assert await _walk(store, flt, limit) == expected, (flt, limit)
    assert len(await _walk(store, DeliveryFilter(state=DeliveryState.DEAD), 2)) == 7

    with pytest.raises(ValueError, match="cursor"):
        await store.list_deliveries(DeliveryFilter(), cursor="!!not a cursor!!")


async def test_list_deliveries_is_stable_under_inserts_between_pages(store: Store) -> None:
    for _ in range(20):
        await add(store, rec())
    before = {d.id for d in (await store.list_deliveries(DeliveryFilter(), limit=1000)).items}
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.list_deliveries(DeliveryFilter(), cursor=cursor, limit=6)
        seen += [d.id for d in page.items]
        await add(store, rec(), rec())  # new deliveries arrive while an operator pages
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert len(seen) == len(set(seen)), "an item was listed twice"
    assert before <= set(seen), "an item that existed before listing was skipped"


def test_cursor_round_trip() -> None:
    for value in ("dlv_01HZZZZZZZZZZZZZZZZZZZZZZZ", "x", "dlv_é"):
        assert decode_cursor(encode_cursor(value)) == value
    with pytest.raises(ValueError, match="invalid cursor"):
        decode_cursor("")


# -- access keys ------------------------------------------------------------------------------
async def test_access_keys_create_get_list_revoke(store: Store) -> None:
    k1 = AccessKey("AKGW1", b"\x00cipher1", ["g1", "g2"], "shop", 100.0)
    k2 = AccessKey("AKGW2", b"cipher2", [], None, 200.0, rate_limit=5.5, rate_burst=10)
    await store.create_access_key(k2)
    await store.create_access_key(k1)
    assert await store.get_access_key("AKGW1") == k1
    assert await store.get_access_key("AKGW2") == k2
    assert await store.get_access_key("AKGW3") is None
    assert await store.list_access_keys() == [k1, k2]  # oldest first
    with pytest.raises(StoreError):
        await store.create_access_key(k1)

    assert await store.revoke_access_key("AKGW1", 300.0) is True
    assert (await store.get_access_key("AKGW1")).revoked_at == 300.0
    assert await store.revoke_access_key("AKGW1", 400.0) is True  # already revoked
    assert (await store.get_access_key("AKGW1")).revoked_at == 300.0
    assert await store.revoke_access_key("AKGW404", 300.0) is False
    assert (await store.get_access_key("AKGW2")).revoked_at is None


# -- the delivery engine: release, reschedule, replay, lane stats, pauses, purge --------------
def rid_at(at: float) -> str:
    """A record id made at time ``at``, as ingest makes them (the time leads the id)."""
    return "rec_" + time_id(int(at * 1000))


async def by_integration(store: Store, rid: str) -> dict[str, Delivery]:
    """The record's deliveries by integration."""
    got = await store.get_record(rid)
    assert got is not None
    return {d.integration: d for d in got.deliveries}


async def settle(store: Store, owner: str, outcomes: dict[str, DeliveryUpdate]) -> None:
    """Apply updates for deliveries ``owner`` holds, each recording one attempt."""
    updates = []
    for did, u in outcomes.items():
        u.attempt = Attempt(did, 1.0, 5.0, u.last_status, u.last_error, "v1")
        updates.append(u)
    assert await store.update_deliveries(updates) == len(updates)


def outcome(
    did: str, state: DeliveryState, *, at: float = 0.0, error: str | None = None
) -> DeliveryUpdate:
    """What a worker "w" reports for ``did``."""
    status = 200 if state == DeliveryState.DELIVERED else 503
    return DeliveryUpdate(did, "w", state, at, error, status)


def test_the_engine_methods_are_abstract() -> None:
    engine = {
        "release_deliveries",
        "reschedule_lane",
        "replay_deliveries",
        "lane_stats",
        "set_lane_paused",
        "paused_lanes",
        "purge_delivered",
    }
    assert engine <= Store.__abstractmethods__


async def test_release_gives_leases_back_without_an_attempt_to_their_owner_only(
    store: Store,
) -> None:
    r = rec(integrations=("crm", "mail"), received_at=1000.0)
    await add(store, r)
    crm, mail = r.delivery_ids
    await store.claim_deliveries("w", limit=10, lease_seconds=60, now=1001.0)
    await settle(store, "w", {mail: outcome(mail, DeliveryState.PENDING, at=1002.0, error="503")})
    claimed = await store.claim_deliveries("w", limit=10, lease_seconds=60, now=1002.0)
    assert [c.delivery.id for c in claimed] == [mail]  # crm is still leased from 1001
    before = await by_integration(store, r.id)
    assert {d.lease_owner for d in before.values()} == {"w"}

    # Another owner (or one whose lease was taken over) gives back nothing.
    assert await store.release_deliveries("other", [crm, mail], at=5000.0) == 0
    assert await by_integration(store, r.id) == before
    assert await store.release_deliveries("w", [], at=5000.0) == 0

    t = time.time()
    assert await store.release_deliveries("w", [crm, mail, "dlv_unknown"], at=5000.0) == 2
    after = await by_integration(store, r.id)
    for integ in ("crm", "mail"):
        d = after[integ]
        assert d.state == DeliveryState.PENDING
        assert d.next_attempt_at == 5000.0
        assert (d.lease_owner, d.lease_expires_at) == (None, None)
        assert d.updated_at >= t
        assert d.attempts == before[integ].attempts
        assert d.last_error == before[integ].last_error
    assert (after["mail"].attempts, after["mail"].last_error) == (1, "503")
    assert len(await store.list_attempts(mail)) == 1
    assert await store.list_attempts(crm) == []
    # Released means unleased: due again at `at`, for anyone.
    assert await store.release_deliveries("w", [crm], at=6000.0) == 0
    assert await store.claim_deliveries("x", limit=10, lease_seconds=60, now=4999.0) == []
    again = await store.claim_deliveries("x", limit=10, lease_seconds=60, now=5000.0)
    assert {c.delivery.id for c in again} == {crm, mail}


async def test_reschedule_lane_moves_only_its_unleased_pending_deliveries(store: Store) -> None:
    dead = rec("g", ("crm",), received_at=500.0)
    leased = rec("g", ("crm", "mail"), received_at=1000.0)
    expired = rec("g", ("crm", "mail"), received_at=2000.0)
    free = rec("g", ("crm", "mail"), received_at=3000.0)
    later = rec("g", ("crm",), received_at=8000.0)
    other = rec("g2", ("crm",), received_at=1500.0)
    await add(store, dead, leased, expired, free, later, other)
    (d,) = await store.claim_deliveries(
        "w", limit=1, lease_seconds=60, now=600.0, group_key="g", integration="crm"
    )
    assert d.delivery.id == dead.delivery_ids[0]
    await settle(store, "w", {d.delivery.id: outcome(d.delivery.id, DeliveryState.DEAD)})
    # A live lease (the call reads the clock: it is time.time() that counts) ...
    (live,) = await store.claim_deliveries(
        "w", limit=1, lease_seconds=3600, now=time.time(), group_key="g", integration="crm"
    )
    assert live.delivery.id == leased.delivery_ids[0]
    # ... and one that expired long ago, which counts as unleased.
    (stale,) = await store.claim_deliveries(
        "old", limit=1, lease_seconds=10, now=2500.0, group_key="g", integration="crm"
    )
    assert stale.delivery.id == expired.delivery_ids[0]

    async def times() -> dict[str, float]:
        out = {}
        for name, r in (
            ("dead", dead),
            ("leased", leased),
            ("expired", expired),
            ("free", free),
            ("later", later),
            ("other", other),
        ):
            ds = await by_integration(store, r.id)
            out[name] = ds["crm"].next_attempt_at
            if "mail" in ds:
                out[name + "/mail"] = ds["mail"].next_attempt_at
        return out

    start = await times()
    # A deferral never brings a later retry forward, nor touches leased, dead, other lanes.
    assert await store.reschedule_lane("g", "crm", at=5000.0, only_earlier=True) == 2
    assert await times() == {**start, "expired": 5000.0, "free": 5000.0}
    assert await store.reschedule_lane("g", "crm", at=100.0, only_earlier=True) == 0
    assert await times() == {**start, "expired": 5000.0, "free": 5000.0}
    # Without only_earlier (a resume) every unleased pending one moves, earlier or later.
    assert await store.reschedule_lane("g", "crm", at=4000.0, only_earlier=False) == 3
    moved = {"expired": 4000.0, "free": 4000.0, "later": 4000.0}
    assert await times() == {**start, **moved}
    assert (await by_integration(store, leased.id))["crm"].lease_owner == "w"
    assert (await by_integration(store, dead.id))["crm"].state == DeliveryState.DEAD
    assert await store.reschedule_lane("nope", "crm", at=1.0, only_earlier=False) == 0


async def test_reschedule_lane_with_before_moves_only_those_due_before_it(store: Store) -> None:
    rs = [rec("g", ("crm",), received_at=t) for t in (100.0, 200.0, 300.0)]
    await add(store, *rs)
    # A breaker's recovery: what it put off (due before 250) is due now; a later one stays.
    assert await store.reschedule_lane("g", "crm", at=50.0, only_earlier=False, before=250.0) == 2
    times = [(await by_integration(store, r.id))["crm"].next_attempt_at for r in rs]
    assert times == [50.0, 50.0, 300.0]


async def test_replay_by_ids_skips_pending_and_unknown_and_keeps_history(store: Store) -> None:
    r = rec(integrations=("crm", "mail", "chat"), received_at=1000.0)
    await add(store, r)
    crm, mail, chat = r.delivery_ids
    await store.claim_deliveries("w", limit=10, lease_seconds=60, now=1001.0)
    await settle(
        store,
        "w",
        {
            crm: outcome(crm, DeliveryState.DELIVERED),
            mail: outcome(mail, DeliveryState.DEAD, error="HTTP 410"),
            chat: outcome(chat, DeliveryState.PENDING, at=9000.0, error="HTTP 503"),
        },
    )
    before = await by_integration(store, r.id)
    assert before["crm"].delivered_at is not None

    replayed = await store.replay_deliveries(now=3000.0, ids=[chat, "dlv_unknown", mail, crm, mail])
    assert replayed == sorted([crm, mail])  # id order, each once, the pending one skipped
    after = await by_integration(store, r.id)
    assert after["chat"] == before["chat"]  # pending: untouched, attempts not reset
    for integ in ("crm", "mail"):
        d = after[integ]
        assert d.state == DeliveryState.PENDING
        assert d.attempts == 0
        assert d.next_attempt_at == 3000.0
        assert d.delivered_at is None
        assert (d.lease_owner, d.lease_expires_at) == (None, None)
        assert d.last_error == before[integ].last_error
        assert len(await store.list_attempts(d.id)) == 1  # history stays
    assert after["mail"].last_error == "HTTP 410"
    # Now pending, so a second replay finds nothing; an empty list replays nothing.
    assert await store.replay_deliveries(now=4000.0, ids=[crm, mail]) == []
    assert await store.replay_deliveries(now=4000.0, ids=[]) == []
    assert (await by_integration(store, r.id))["mail"].next_attempt_at == 3000.0
    claimed = await store.claim_deliveries("w", limit=10, lease_seconds=60, now=3000.0)
    assert sorted(c.delivery.id for c in claimed) == sorted([crm, mail])


async def test_replay_by_filter_respects_state_group_integration_and_limit(store: Store) -> None:
    records = [
        rec("g1", ("crm", "mail"), received_at=1000.0),
        rec("g1", ("crm", "mail"), received_at=1001.0),
        rec("g2", ("crm", "mail"), received_at=1002.0),
        rec("g2", ("crm", "mail"), received_at=1003.0),
    ]
    await add(store, *records)
    await store.claim_deliveries("w", limit=100, lease_seconds=60, now=2000.0)
    outcomes = {}
    for i, r in enumerate(records):
        crm, mail = r.delivery_ids
        # crm dies, except g1's second, which waits for a retry; mail is delivered.
        crm_state = DeliveryState.PENDING if i == 1 else DeliveryState.DEAD
        outcomes[crm] = outcome(crm, crm_state, at=9000.0, error="boom")
        outcomes[mail] = outcome(mail, DeliveryState.DELIVERED)
    await settle(store, "w", outcomes)
    crm_ids = [r.delivery_ids[0] for r in records]
    mail_ids = [r.delivery_ids[1] for r in records]

    async def states() -> dict[str, DeliveryState]:
        page = await store.list_deliveries(DeliveryFilter(), limit=100)
        return {d.id: d.state for d in page.items}

    initial = await states()
    with pytest.raises(ValueError, match="pending"):
        await store.replay_deliveries(now=5000.0, flt=DeliveryFilter(state=DeliveryState.PENDING))
    with pytest.raises(ValueError, match="exactly one"):
        await store.replay_deliveries(now=5000.0)
    with pytest.raises(ValueError, match="exactly one"):
        await store.replay_deliveries(now=5000.0, ids=[crm_ids[0]], flt=DeliveryFilter())
    assert await states() == initial

    # The state defaults to dead: g1 has one dead delivery; the pending one is not touched.
    assert await store.replay_deliveries(now=5000.0, flt=DeliveryFilter(group_key="g1")) == [
        crm_ids[0]
    ]
    # At most `limit`, oldest (by id) first.
    g2_crm = sorted(crm_ids[2:])
    flt = DeliveryFilter(group_key="g2", integration="crm")
    assert await store.replay_deliveries(now=5000.0, flt=flt, limit=1) == g2_crm[:1]
    assert await store.replay_deliveries(now=5000.0, flt=flt, limit=1) == g2_crm[1:]
    assert await store.replay_deliveries(now=5000.0, flt=DeliveryFilter()) == []
    # Delivered ones only when asked, narrowed by integration and creation time.
    delivered = DeliveryFilter(state=DeliveryState.DELIVERED, integration="crm")
    assert await store.replay_deliveries(now=5000.0, flt=delivered) == []
    early = DeliveryFilter(state=DeliveryState.DELIVERED, created_before=1001.5)
    assert await store.replay_deliveries(now=5000.0, flt=early) == sorted(mail_ids[:2])
    late = DeliveryFilter(state=DeliveryState.DELIVERED, group_key="g2", created_after=1002.5)
    assert await store.replay_deliveries(now=5000.0, flt=late) == [mail_ids[3]]

    final = await states()
    assert final[mail_ids[2]] == DeliveryState.DELIVERED  # matched no filter
    assert {k for k, v in final.items() if v == DeliveryState.PENDING} == set(
        crm_ids + mail_ids[:2] + mail_ids[3:]
    )
    kept = (await by_integration(store, records[1].id))["crm"]
    assert (kept.attempts, kept.next_attempt_at) == (1, 9000.0)
    for did in crm_ids[0:1] + crm_ids[2:]:
        d = next(
            d
            for d in (await store.list_deliveries(DeliveryFilter(), limit=100)).items
            if d.id == did
        )
        assert (d.attempts, d.next_attempt_at, d.last_error) == (0, 5000.0, "boom")
        assert len(await store.list_attempts(did)) == 1


async def test_lane_stats_counts_pending_due_dead_and_oldest(store: Store) -> None:
    assert await store.lane_stats(5000.0) == []
    a = rec("g1", ("crm", "mail"), received_at=1000.0)
    b = rec("g1", ("crm", "mail"), received_at=2000.0)
    c = rec("g1", ("crm", "mail"), received_at=6000.0)  # not due at 5000
    d = rec("g2", ("crm",), received_at=3000.0)  # delivered: its lane has nothing to show
    e = rec("g3", ("crm",), received_at=100.0)  # dead only
    await add(store, c, b, a, d, e)
    claimed = await store.claim_deliveries("w", limit=100, lease_seconds=60, now=3500.0)
    outcomes = {}
    for cd in claimed:
        did = cd.delivery.id
        if cd.delivery.group_key == "g1" and cd.delivery.integration == "crm":
            # A retry: still pending, but rescheduled past `now`; created_at stays 1000.
            if did == a.delivery_ids[0]:
                outcomes[did] = outcome(did, DeliveryState.PENDING, at=7000.0)
            continue  # b's stays leased: leased ones are pending (and due) all the same
        state = DeliveryState.DELIVERED if cd.delivery.group_key == "g2" else DeliveryState.DEAD
        outcomes[did] = outcome(did, state)
    await settle(store, "w", outcomes)

    stats = await store.lane_stats(5000.0)
    assert stats == [
        LaneStats("g1", "crm", pending=3, due=1, dead=0, oldest_pending_at=1000.0),
        LaneStats("g1", "mail", pending=1, due=0, dead=2, oldest_pending_at=6000.0),
        LaneStats("g3", "crm", pending=0, due=0, dead=1, oldest_pending_at=None),
    ]
    later = {(s.group_key, s.integration): s.due for s in await store.lane_stats(7000.0)}
    assert later == {("g1", "crm"): 3, ("g1", "mail"): 1, ("g3", "crm"): 0}


async def test_paused_lanes_survive_close_and_reopen(store_url: str) -> None:
    s = open_store(store_url)
    await s.open()
    try:
        assert await s.paused_lanes() == set()
        assert await s.set_lane_paused("g", "crm", True, 100.0) is True
        assert await s.set_lane_paused("g", "crm", True, 200.0) is False  # already paused
        assert await s.set_lane_paused("g", "mail", True, 300.0) is True
        assert await s.set_lane_paused("g2", "crm", False, 300.0) is False  # was not paused
        assert await s.paused_lanes() == {("g", "crm"), ("g", "mail")}
    finally:
        await s.close()

    s2 = open_store(store_url)
    await s2.open()
    try:
        assert await s2.paused_lanes() == {("g", "crm"), ("g", "mail")}
        # The pause keeps its start.
        sql = "SELECT group_key, integration, paused_at FROM paused_lanes ORDER BY 1, 2"
        if isinstance(s2, SQLiteStore):
            rows = await s2._read(lambda c: c.execute(sql).fetchall())
        else:
            assert isinstance(s2, PostgresStore)
            rows = [tuple(r) for r in await s2._read(lambda c: c.fetch(sql))]
        assert rows == [("g", "crm", 100.0), ("g", "mail", 300.0)]
        assert await s2.set_lane_paused("g", "crm", False, 400.0) is True
        assert await s2.set_lane_paused("g", "crm", False, 500.0) is False
        assert await s2.paused_lanes() == {("g", "mail")}
    finally:
        await s2.close()

    s3 = open_store(store_url)
    await s3.open()
    try:
        assert await s3.paused_lanes() == {("g", "mail")}
    finally:
        await s3.close()


async def test_purge_delivered_keeps_unfinished_and_recent_records(store: Store) -> None:
    now = time.time()
    old, before = now - 10 * 86400, now - 86400

    def at(t: float, integrations: tuple[str, ...], received: float | None = None) -> NewRecord:
        return rec(integrations=integrations, received_at=received or t, rid=rid_at(t))

    done = at(old, ("crm", "mail"))
    bare = at(old + 1, ())  # no deliveries: nothing left to do
    dead = at(old + 2, ("crm", "mail"))
    waiting = at(old + 3, ("crm", "mail"))
    fresh = at(now - 60, ("crm",))
    # An id from long ago on a record received recently: received_at decides.
    odd = at(old + 4, (), received=now - 60)
    await add(store, done, bare, dead, waiting, fresh, odd)
    await store.claim_deliveries("w", limit=100, lease_seconds=60, now=now)
    outcomes = {}
    for r in (done, dead, waiting, fresh):
        for integ, did in zip(r.integrations, r.delivery_ids, strict=True):
            state = DeliveryState.DELIVERED
            if integ == "mail" and r is dead:
                state = DeliveryState.DEAD
            if integ == "mail" and r is waiting:
                state = DeliveryState.PENDING
            outcomes[did] = outcome(did, state, at=now + 60)
    await settle(store, "w", outcomes)

    assert await store.purge_delivered(before, limit=0) == 0
    assert await store.purge_delivered(old - 1) == 0  # nothing received that early
    assert await count_records(store) == 6
    assert await store.purge_delivered(before) == 2
    assert await store.get_record(done.id) is None
    assert await store.get_record(bare.id) is None
    for r in (dead, waiting, fresh, odd):
        assert await store.get_record(r.id) is not None, r
    # The deliveries and their attempts went with the record; the kept ones keep theirs.
    left = {d.id for d in (await store.list_deliveries(DeliveryFilter(), limit=100)).items}
    assert left == set(dead.delivery_ids + waiting.delivery_ids + fresh.delivery_ids)
    for did in done.delivery_ids:
        assert await store.list_attempts(did) == []
    for did in dead.delivery_ids + waiting.delivery_ids:
        assert len(await store.list_attempts(did)) == 1
    orphans_sql = (
        "SELECT count(*) FROM attempts WHERE delivery_id NOT IN (SELECT id FROM deliveries)"
    )
    assert await scalar(store, orphans_sql) == 0
    assert await store.purge_delivered(before) == 0


async def test_purge_delivered_respects_limit_oldest_first(store: Store) -> None:
    now = time.time()
    old = now - 10 * 86400
    records = [rec(integrations=(), received_at=old + i, rid=rid_at(old + i)) for i in range(5)]
    await add(store, *reversed(records))
    assert await store.purge_delivered(now, limit=2) == 2
    assert [await store.get_record(r.id) is None for r in records] == [True] * 2 + [False] * 3
    assert await store.purge_delivered(now, limit=10) == 3
    assert await count_records(store) == 0


# -- migrations -------------------------------------------------------------------------------
def _schema_rows(path: Path) -> list[tuple]:
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT version, name, applied_at FROM schema_migrations").fetchall()
    finally:
        con.close()


@SQLITE_ONLY
async def test_migrations_are_applied_once(store_url: str) -> None:
    s = open_store(store_url)
    sqlite_store(s, "reads the file; test_store_postgres.py has PostgreSQL's")
    await s.open()
    # Every migration file, whatever the latest one is (branches add their own).
    shipped = [(m.version, m.name) for m in mig.load_migrations("sqlite")]
    assert shipped[:2] == [(1, "initial"), (2, "delivery_engine")]
    assert s.migrations_applied == [v for v, _ in shipped]
    await s.close()
    path = s.path
    rows = _schema_rows(path)
    assert [r[:2] for r in rows] == shipped

    s2 = open_store(store_url)
    await s2.open()
    try:
        assert s2.migrations_applied == []
        assert await count_records(s2) == 0
    finally:
        await s2.close()
    assert _schema_rows(path) == rows  # not re-applied, applied_at unchanged


async def test_a_database_at_version_1_is_upgraded_on_open(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    con = sqlite3.connect(path, isolation_level=None)
    assert apply_sqlite_migrations(con, mig.load_migrations("sqlite")[:1]) == [1]
    con.execute(
        "INSERT INTO records (id, group_key, access_key_id, data, received_at) "
        "VALUES ('rec_old', 'g', 'AK', x'7b7d', 1.0)"
    )
    con.close()
    s = SQLiteStore(path)
    await s.open()
    try:
        shipped = [(m.version, m.name) for m in mig.load_migrations("sqlite")]
        assert s.migrations_applied == [v for v, _ in shipped[1:]]
        assert await count_records(s) == 1
        assert await s.set_lane_paused("g", "crm", True, 1.0) is True
        assert await s.paused_lanes() == {("g", "crm")}
    finally:
        await s.close()
    assert [r[:2] for r in _schema_rows(path)] == shipped


def test_migration_runner_rolls_back_a_failing_migration(tmp_path: Path) -> None:
    folder = tmp_path / "sqlite"
    folder.mkdir()
    (folder / "0001_first.sql").write_text("CREATE TABLE t1 (a INTEGER);\n")
    (folder / "0002_second.sql").write_text(
        "-- a comment; with a semicolon\nCREATE TABLE t2 (a INTEGER);\n"
        "CREATE TRIGGER tr AFTER INSERT ON t2 BEGIN INSERT INTO t1 VALUES (1); END;\n"
    )
    con = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    assert apply_sqlite_migrations(con, mig.load_migrations("sqlite", folder)) == [1, 2]
    assert sqlite_schema_versions(con) == [1, 2]
    con.execute("INSERT INTO t2 VALUES (5)")
    assert con.execute("SELECT count(*) FROM t1").fetchone() == (1,)  # the trigger is whole

    (folder / "0003_broken.sql").write_text("CREATE TABLE t3 (a);\nTHIS IS NOT SQL;\n")
    with pytest.raises(sqlite3.OperationalError):
        apply_sqlite_migrations(con, mig.load_migrations("sqlite", folder))
    assert sqlite_schema_versions(con) == [1, 2]
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "t3" not in tables  # the failed migration left nothing behind
    con.close()


def test_migration_files_and_plan_are_checked(tmp_path: Path) -> None:
    folder = tmp_path / "sqlite"
    folder.mkdir()
    (folder / "0001_a.sql").write_text("SELECT 1;")
    (folder / "0003_c.sql").write_text("SELECT 1;")
    with pytest.raises(mig.MigrationError, match="0002 is missing"):
        mig.load_migrations("sqlite", folder)
    (folder / "0003_c.sql").unlink()
    (folder / "2_bad.sql").write_text("SELECT 1;")
    with pytest.raises(mig.MigrationError, match="NNNN_description"):
        mig.load_migrations("sqlite", folder)
    (folder / "2_bad.sql").unlink()
    migrations = mig.load_migrations("sqlite", folder)
    assert mig.plan([], migrations) == migrations
    assert mig.plan([1], migrations) == []
    with pytest.raises(mig.MigrationError, match="newer"):
        mig.plan([1, 2], migrations)
    assert next(m.version for m in mig.load_migrations("sqlite")) == 1
    assert mig.split_statements("-- only a comment\n") == []


# -- failures ---------------------------------------------------------------------------------
async def test_locked_database_surfaces_as_unavailable_and_writer_recovers(
    tmp_path: Path,
) -> None:
    path = tmp_path / "locked.db"
    s = SQLiteStore(path, busy_timeout=0.2)
    await s.open()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(StoreUnavailable, match="locked"):
            await s.commit_ingest(IngestWrite([rec()]))
        with pytest.raises(StoreUnavailable, match="locked"):
            await s.create_access_key(AccessKey("AKGWX", b"c", [], None, 1.0))
        assert s.pending_writes() == 0
        assert s.stats.failed_transactions == 2
        other.execute("ROLLBACK")

        r = rec()
        await add(s, r)  # the same writer thread serves the next write
        assert await s.get_record(r.id) is not None
        await s.ping()
    finally:
        other.close()
        await s.close()


@SQLITE_ONLY
async def test_disk_full_surfaces_as_unavailable_and_writer_recovers(store: Store) -> None:
    s = sqlite_store(
        store, "caps the file's pages; PostgreSQL's outage is test_store_postgres.py's"
    )
    await add(s, rec())

    def fill_up(c: sqlite3.Connection) -> None:
        # Simulated full disk: the file may not grow past its current size.
        pages = c.execute("PRAGMA page_count").fetchone()[0]
        c.execute(f"PRAGMA max_page_count = {pages}")

    await s._write(fill_up)
    big = [rec(data=b'{"x": "' + b"y" * 200_000 + b'"}') for _ in range(3)]
    results = await asyncio.gather(
        *(s.commit_ingest(IngestWrite([r])) for r in big), return_exceptions=True
    )
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    assert "full" in str(results[0])
    assert s.pending_writes() == 0
    # The writer drops the failed connection and opens a fresh one (here: without the cap,
    # like a disk that has space again) and keeps serving.
    await add(s, big[0])
    assert await s.get_record(big[0].id) is not None


async def test_unopenable_path_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a directory")
    s = open_store(f"sqlite:///{tmp_path / 'afile' / 'sub' / 'gateway.db'}")
    with pytest.raises(StoreUnavailable):
        await s.open()
    await s.close()


async def test_not_a_database_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not an SQLite database at all" * 200)
    s = open_store(f"sqlite:///{path}")
    with pytest.raises(StoreUnavailable, match="not a database"):
        await s.open()


# -- file modes -------------------------------------------------------------------------------
def _modes(path: Path) -> dict[str, int]:
    """The permission bits of the database file and of its -wal and -shm files, where present."""
    out = {}
    for suffix in ("", "-wal", "-shm"):
        f = Path(f"{path}{suffix}")
        if f.exists():
            out[suffix or "db"] = f.stat().st_mode & 0o777
    return out


def _loosen(path: Path) -> None:
    """Give the database and its -wal and -shm files the mode SQLite's default gives: 0644."""
    for suffix in ("", "-wal", "-shm"):
        f = Path(f"{path}{suffix}")
        f.touch()
        f.chmod(0o644)


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@SQLITE_ONLY
async def test_store_files_are_owner_only_after_open_and_after_a_write(store_url: str) -> None:
    s = sqlite_store(open_store(store_url), "file modes")
    with _umask(0):  # nothing left to the umask: a permissive one must not widen the files
        await s.open()
        try:
            assert _modes(s.path) == {"db": 0o600, "-wal": 0o600, "-shm": 0o600}
            assert (await s.commit_ingest(IngestWrite([rec()]))).committed
            assert _modes(s.path) == {"db": 0o600, "-wal": 0o600, "-shm": 0o600}
        finally:
            await s.close()


@SQLITE_ONLY
async def test_a_store_file_readable_by_others_is_tightened_at_open_and_logged(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    first = sqlite_store(open_store(store_url), "file modes")
    await first.open()
    r = rec()
    await first.commit_ingest(IngestWrite([r]))
    await first.close()
    _loosen(first.path)  # as an older gateway left them
    capsys.readouterr()

    again = open_store(store_url)
    await again.open()
    try:
        assert _modes(first.path) == {"db": 0o600, "-wal": 0o600, "-shm": 0o600}
        assert await again.get_record(r.id) is not None  # the data is untouched
    finally:
        await again.close()
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    tightened = [x for x in lines if x["event"] == "store_file_mode_tightened"]
    assert len(tightened) == 1  # one line for the open, naming every file it tightened
    assert tightened[0]["level"] == "warning"
    assert len(tightened[0]["files"]) == 3

    third = open_store(store_url)  # already tight: nothing to say
    await third.open()
    await third.close()
    assert "store_file_mode_tightened" not in capsys.readouterr().out


# -- open_store and settings ------------------------------------------------------------------
async def test_open_store_relative_path_creates_parent_dirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    s = open_store("sqlite:///var/deep/gateway.db", synchronous="normal")
    await s.open()
    try:
        assert (tmp_path / "var" / "deep" / "gateway.db").exists()
        pragmas = await sqlite_store(s)._write(
            lambda c: tuple(
                c.execute(f"PRAGMA {p}").fetchone()[0]
                for p in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            )
        )
        assert pragmas == ("wal", 1, 1, 5000)  # synchronous NORMAL is 1
    finally:
        await s.close()


@SQLITE_ONLY
async def test_default_synchronous_is_full(store: Store) -> None:
    s = sqlite_store(store, "a SQLite pragma")
    assert await s._write(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 2


def test_open_store_rejects_unknown_urls() -> None:
    with pytest.raises(ValueError, match="sqlite://, postgresql://"):
        open_store("mysql://localhost/gateway")
    assert isinstance(open_store("postgresql://localhost/gateway"), PostgresStore)
    assert isinstance(open_store("postgres://u:p@db:5433/gw?pool_max=3"), PostgresStore)
    with pytest.raises(ValueError, match="pool_max"):
        open_store("postgresql://localhost/gateway?pool_min=5&pool_max=2")
    with pytest.raises(ValueError, match="sqlite://"):
        open_store("/just/a/path.db")
    with pytest.raises(ValueError, match="sqlite:///"):
        open_store("sqlite://relative.db")
    with pytest.raises(ValueError, match="synchronous"):
        open_store("sqlite:///x.db", synchronous="OFF")


# -- group semantics against a sequential model ------------------------------------------------
@st.composite
def _scenarios(draw: st.DrawFn) -> tuple[list[str], list[list[tuple[list[str], list[str]]]]]:
    """Keys stored expired beforehand, then groups of writes ([record ids], [keys]).

    Ids and keys come from small pools, so clashes (duplicate records, same keys in one
    group, expired keys reused) are common.
    """
    expired = draw(st.lists(st.sampled_from("abcd"), unique=True, max_size=2))
    write = st.tuples(
        st.lists(st.sampled_from([f"rec_{i}" for i in range(8)]), min_size=0, max_size=3),
        st.lists(st.sampled_from("abcdef"), unique=True, max_size=2),
    )
    groups = draw(st.lists(st.lists(write, min_size=1, max_size=8), min_size=1, max_size=3))
    return expired, groups


@pytest.mark.parametrize("backend", STORE_BACKENDS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=_scenarios())
def test_group_commit_matches_one_at_a_time_semantics(
    backend: str,
    scenario: tuple[list[str], list[list[tuple[list[str], list[str]]]]],
) -> None:
    """Whatever a group holds, each write gets what it would get if committed alone, in order."""
    expired, groups = scenario
    if backend == "postgresql":
        pg.require_server()

    async def run(url: str) -> None:
        s = open_store(url)
        await s.open()
        try:
            if expired:
                stale = [entry(k, request_hash="stale", ttl=-1) for k in expired]
                await s.commit_ingest(IngestWrite([], stale))
            model_records: set[str] = set()
            model_keys: dict[str, str] = {}  # key -> request_hash of the entry that holds it
            for g, group in enumerate(groups):
                writes = [
                    IngestWrite(
                        [rec(rid=r, integrations=("crm",)) for r in ids],
                        [entry(k, request_hash=f"{g}.{i}") for k in keys],
                    )
                    for i, (ids, keys) in enumerate(group)
                ]
                async with writer_paused(s):
                    tasks = [asyncio.create_task(s.commit_ingest(w)) for w in writes]
                    await wait_pending(s, sum(len(w.records) for w in writes))
                    for _ in range(3):  # zero-record writes are not counted as pending
                        await asyncio.sleep(0)
                results = await asyncio.gather(*tasks, return_exceptions=True)
                for w, got in zip(writes, results, strict=True):
                    held = [k.key for k in w.idempotency if k.key in model_keys]
                    ids = [r.id for r in w.records]
                    if held:
                        assert isinstance(got, IngestResult), got
                        assert got.committed is False
                        assert got.replay is not None
                        assert got.replay.request_hash == model_keys[held[0]]
                    elif len(set(ids)) < len(ids) or model_records & set(ids):
                        assert isinstance(got, StoreError), got
                    else:
                        assert got == IngestResult(committed=True)
                        model_records.update(ids)
                        model_keys.update({k.key: k.request_hash for k in w.idempotency})
            assert await count_records(s) == len(model_records)
            for r in model_records:
                assert await s.get_record(r) is not None
            for k in "abcdef":
                stored = await s.get_idempotency(AK, k, time.time())
                assert (stored.request_hash if stored else None) == model_keys.get(k)
        finally:
            await s.close()

    async def on_postgres() -> None:
        async with pg.throwaway_schema() as url:
            await run(url)

    if backend == "postgresql":
        asyncio.run(on_postgres())
        return
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(f"sqlite:///{Path(tmp) / 'model.db'}"))
