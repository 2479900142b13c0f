"""What only the PostgreSQL store has: several stores (processes) on one database, outages,
migrations under an advisory lock, the URL's pool options.

The behaviour both backends share is tests/test_store.py's, run against each. Every test here
gets a throwaway schema (tests/pg.py); without a PostgreSQL server they are skipped (under
CI they fail). Outages are made by terminating the connections of the test session's database
(only the running test's stores are connected to it) or by a proxy taken down and back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.store import migrations as mig
from gateway.store import open_store
from gateway.store.base import (
    DeliveryState,
    DeliveryUpdate,
    IngestResult,
    IngestWrite,
    StoreError,
    StoreUnavailable,
)
from gateway.store.postgres import PostgresStore, apply_migrations, connect, parse_url
from tests.support import pg
from tests.support.store_rows import count_records
from tests.test_store import AK, entry, rec, wait_pending, writer_paused


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty store URL (a schema of its own), dropped after the test."""
    url = pg.create_schema_sync()
    try:
        yield url
    finally:
        pg.drop_schema_sync(url)


def with_query(url: str, query: str) -> str:
    """``url`` with more query parameters."""
    return f"{url}{'&' if '?' in url else '?'}{query}"


@contextlib.asynccontextmanager
async def opened(url: str) -> AsyncIterator[PostgresStore]:
    s = open_store(url)
    assert isinstance(s, PostgresStore)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


# -- several stores on one database ------------------------------------------------------------
async def test_two_stores_never_claim_the_same_delivery(pg_url: str) -> None:
    """Two pools (as two processes), four claimers each: every delivery claimed exactly once."""
    async with opened(pg_url) as a, opened(pg_url) as b:
        t0 = time.time() - 1000
        for i in range(0, 300, 50):
            await a.commit_ingest(
                IngestWrite([rec(received_at=t0 + i + j) for j in range(50)])
            )  # 600 deliveries
        now = time.time()
        seen: dict[str, list[str]] = {}

        async def claimer(store: PostgresStore, owner: str) -> None:
            mine = seen.setdefault(owner, [])
            while True:
                got = await store.claim_deliveries(owner, limit=7, lease_seconds=60, now=now)
                if not got:
                    return
                mine += [c.delivery.id for c in got]
                assert all(c.delivery.lease_owner == owner for c in got)
                # Settle half of them right away, so claims and updates interleave.
                done = [
                    DeliveryUpdate(c.delivery.id, owner, DeliveryState.DELIVERED, now)
                    for c in got[::2]
                ]
                assert await store.update_deliveries(done) == len(done)

        await asyncio.gather(
            *(claimer(s, f"{name}{i}") for s, name in ((a, "a"), (b, "b")) for i in range(4))
        )
        everything = [d for ids in seen.values() for d in ids]
        assert len(everything) == len(set(everything)) == 600
        assert sum(len(v) for k, v in seen.items() if k.startswith("a")) > 0
        assert sum(len(v) for k, v in seen.items() if k.startswith("b")) > 0
        assert await b.claim_deliveries("late", limit=1000, lease_seconds=60, now=now) == []


async def test_an_expired_lease_moves_to_the_other_store(pg_url: str) -> None:
    """A crashed process's lease expires; another claims the delivery; the first one's late
    update is ignored, the new owner's lands."""
    async with opened(pg_url) as a, opened(pg_url) as b:
        r = rec(integrations=("crm",), received_at=1000.0)
        await a.commit_ingest(IngestWrite([r]))
        (held,) = await a.claim_deliveries("proc-a", limit=5, lease_seconds=30, now=2000.0)
        assert await b.claim_deliveries("proc-b", limit=5, lease_seconds=30, now=2029.9) == []
        (taken,) = await b.claim_deliveries("proc-b", limit=5, lease_seconds=30, now=2030.0)
        assert taken.delivery.id == held.delivery.id
        late = DeliveryUpdate(held.delivery.id, "proc-a", DeliveryState.DEAD, 0.0, "late")
        assert await a.update_deliveries([late]) == 0
        assert await a.release_deliveries("proc-a", [held.delivery.id], at=0.0) == 0
        ok = DeliveryUpdate(taken.delivery.id, "proc-b", DeliveryState.DELIVERED, 0.0)
        assert await b.update_deliveries([ok]) == 1
        got = await a.get_delivery(held.delivery.id)
        assert got is not None
        assert (got.state, got.last_error, got.lease_owner) == (DeliveryState.DELIVERED, None, None)


async def test_idempotency_key_committed_by_another_store_is_a_replay(pg_url: str) -> None:
    async with opened(pg_url) as a, opened(pg_url) as b:
        first = entry("idem:x", request_hash="from-a")
        assert await a.commit_ingest(IngestWrite([rec()], [first])) == IngestResult(True)
        again = await b.commit_ingest(IngestWrite([rec()], [entry("idem:x", request_hash="b")]))
        assert again.committed is False
        assert again.replay == first
        assert await count_records(b) == 1


async def test_same_key_racing_in_two_stores_commits_once(pg_url: str) -> None:
    """Both stores look the key up before either commits: the second one's insert waits for
    the first transaction, finds the key taken, and answers a replay of the first's entry
    (never a second commit, never a clobbered entry)."""
    async with opened(pg_url) as a, opened(pg_url) as b:
        win = IngestWrite([rec()], [entry("idem:race", request_hash="a")])
        lose = IngestWrite([rec(), rec()], [entry("idem:race", request_hash="b")])
        gate = asyncio.Event()

        async def hold_commit(_conn: object) -> None:
            await gate.wait()  # a's group has inserted its write; its COMMIT waits

        async with writer_paused(a):
            ta = asyncio.create_task(a.commit_ingest(win))
            held = asyncio.create_task(a._write(hold_commit))
            await wait_pending(a, 1)
            await asyncio.sleep(0.01)  # the hold is queued behind the write
        await asyncio.sleep(0.1)  # a's group: the insert is done, the hold is running
        tb = asyncio.create_task(b.commit_ingest(lose))
        async with connect(pg_url) as watcher:
            for _ in range(500):  # b's insert blocks on a's uncommitted key
                waiting = await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
                if waiting:
                    break
                await asyncio.sleep(0.01)
            assert waiting, "b's insert never waited on a's key"
        gate.set()
        await held
        assert await ta == IngestResult(committed=True)
        rb = await tb
        assert rb.committed is False
        assert rb.replay == win.idempotency[0]
        assert await count_records(a) == 1
        stored = await b.get_idempotency(AK, "idem:race", time.time())
        assert stored is not None
        assert stored.request_hash == "a"


async def test_concurrent_ingest_from_two_stores(pg_url: str) -> None:
    async with opened(pg_url) as a, opened(pg_url) as b:
        records = [rec() for _ in range(400)]
        results = await asyncio.gather(
            *(
                (a if i % 2 else b).commit_ingest(IngestWrite([r], [entry(f"k{i}")]))
                for i, r in enumerate(records)
            )
        )
        assert results == [IngestResult(committed=True)] * len(records)
        assert await count_records(a) == 400
        assert a.commits + b.commits < 400  # group commit in each


async def test_a_failing_write_fails_alone_after_other_work_in_the_transaction(
    pg_url: str,
) -> None:
    """A group that is not first in its transaction goes in a savepoint: its failure rolls
    back to there, and what came before it in the transaction stays."""
    async with opened(pg_url) as s:
        existing = rec()
        await s.commit_ingest(IngestWrite([existing]))
        before = s.commits

        async def touch(conn: object) -> str:
            return "ran"

        async with writer_paused(s):
            call = asyncio.create_task(s._write(touch))
            good, bad = rec(), rec(rid=existing.id)
            tg = asyncio.create_task(s.commit_ingest(IngestWrite([good], [entry("k")])))
            tb = asyncio.create_task(s.commit_ingest(IngestWrite([bad])))
            await wait_pending(s, 2)
        assert await call == "ran"
        assert await tg == IngestResult(committed=True)
        with pytest.raises(StoreError, match="UNIQUE"):
            await tb
        assert s.commits - before == 2  # the pause, then one transaction for all three
        assert await s.get_record(good.id) is not None
        assert await count_records(s) == 2
        assert await s.get_idempotency(AK, "k", time.time()) is not None


# -- outages -----------------------------------------------------------------------------------
async def _producers(
    store: PostgresStore, stop: asyncio.Event, n: int = 8
) -> tuple[list[str], list[BaseException]]:
    """Ingest one record a call from ``n`` tasks until ``stop``; the acknowledged ids and the
    errors."""
    acked: list[str] = []
    errors: list[BaseException] = []

    async def one() -> None:
        while not stop.is_set():
            r = rec(integrations=("crm",))
            try:
                result = await store.commit_ingest(IngestWrite([r]))
            except StoreUnavailable as exc:
                errors.append(exc)
                await asyncio.sleep(0.01)
                continue
            assert result == IngestResult(committed=True)
            acked.append(r.id)

    await asyncio.gather(*(one() for _ in range(n)))
    return acked, errors


async def _eventually(call, seconds: float = 20.0):  # type: ignore[no-untyped-def]
    """``await call()`` until it stops raising StoreUnavailable; the errors seen first."""
    seen: list[StoreUnavailable] = []
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await call(), seen
        except StoreUnavailable as exc:
            seen.append(exc)
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_terminated_backends_then_the_store_reconnects(pg_url: str) -> None:
    """The server kills every connection of the store (as on a restart) while producers
    ingest: calls fail with StoreUnavailable for a moment, then succeed again, and every
    write answered committed is in the database."""
    async with opened(pg_url) as s:
        await s.commit_ingest(IngestWrite([rec()]))
        stop = asyncio.Event()
        producing = asyncio.create_task(_producers(s, stop))
        await asyncio.sleep(0.3)
        killed = 0
        for _ in range(3):
            killed += await pg.terminate_backends(pg_url)
            await asyncio.sleep(0.3)
        stop.set()
        acked, errors = await producing
        assert killed >= 3
        assert all("PostgreSQL" in str(e) for e in errors), errors[:3]

        # Idle connections died too: the next calls of every kind get through.
        await pg.terminate_backends(pg_url)
        r = rec()
        result, _ = await _eventually(lambda: s.commit_ingest(IngestWrite([r])))
        assert result == IngestResult(committed=True)
        await pg.terminate_backends(pg_url)
        got, _ = await _eventually(lambda: s.get_record(r.id))
        assert got is not None
        await pg.terminate_backends(pg_url)
        claimed, _ = await _eventually(
            lambda: s.claim_deliveries("w", limit=10, lease_seconds=60, now=time.time())
        )
        assert claimed
        await s.ping()

        assert len(acked) > 50
        async with connect(pg_url) as c:
            stored = {r[0] for r in await c.fetch("SELECT id FROM records")}
        assert set(acked) <= stored, "a write was answered committed but is not stored"
        assert s.pending_writes() == 0


class Proxy:
    """A TCP proxy to the PostgreSQL server that can be taken down (connections cut, port
    closed: connection refused) and brought back on the same port."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        await self._server.wait_closed()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.transport.abort()
                self._writers.discard(dst)

        for t in (
            asyncio.create_task(pipe(reader, up_writer)),
            asyncio.create_task(pipe(up_reader, writer)),
        ):
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)


def _via(url: str, port: int) -> str:
    dsn, _ = parse_url(url)
    host_port = dsn.split("@", 1)[1].split("/", 1)[0]
    return url.replace(host_port, f"127.0.0.1:{port}", 1)


async def test_server_down_then_back(pg_url: str) -> None:
    """While the server is unreachable every call raises StoreUnavailable (ingest's 503), none
    hangs, nothing is answered committed; when it is back the same store serves again."""
    target = parse_url(pg_url)[0].split("@", 1)[1].split("/", 1)[0]
    host, port = target.rsplit(":", 1)
    proxy = Proxy(host, int(port))
    await proxy.start()
    url = with_query(_via(pg_url, proxy.port), "pool_min=2&pool_max=4&connect_timeout=2")
    async with opened(url) as s:
        before = rec()
        await s.commit_ingest(IngestWrite([before]))
        await proxy.stop()  # every connection cut, connections refused

        down = rec()
        calls = [
            lambda: s.commit_ingest(IngestWrite([down], [entry("idem:down")])),
            lambda: s.get_record(before.id),
            lambda: s.claim_deliveries("w", limit=5, lease_seconds=60, now=time.time()),
            lambda: s.update_deliveries(
                [DeliveryUpdate(before.delivery_ids[0], "w", DeliveryState.DEAD, 0.0)]
            ),
            lambda: s.lane_stats(time.time()),
            s.ping,
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="PostgreSQL"):
                await call()
            assert time.monotonic() - started < 5
        assert s.pending_writes() == 0

        await proxy.start()  # the same port again
        result, _ = await _eventually(lambda: s.commit_ingest(IngestWrite([down])))
        assert result == IngestResult(committed=True)
        assert (await s.get_record(down.id)) is not None
        # The write refused during the outage stored nothing, its key neither.
        assert await s.get_idempotency(AK, "idem:down", time.time()) is None
        assert await count_records(s) == 2
        await s.ping()
    await proxy.stop()


async def test_unreachable_server_at_open_is_unavailable(pg_url: str) -> None:
    proxy = Proxy("127.0.0.1", 9)
    await proxy.start()
    port = proxy.port
    await proxy.stop()  # a port nobody listens on
    s = open_store(with_query(_via(pg_url, port), "connect_timeout=2"))
    with pytest.raises(StoreUnavailable, match="PostgreSQL"):
        await s.open()
    await s.close()
    missing = pg.url_for("gw_test_no_such_database")
    with pytest.raises(StoreUnavailable, match="does not exist"):
        await open_store(missing).open()


async def test_statement_timeout_is_unavailable(pg_url: str) -> None:
    async with opened(with_query(pg_url, "command_timeout=0.2")) as s:
        with pytest.raises(StoreUnavailable):
            await s._read(lambda c: c.fetchval("SELECT pg_sleep(2)"))
        assert await s.get_record("rec_none") is None  # the pool goes on


# -- migrations --------------------------------------------------------------------------------
async def _schema_rows(url: str) -> list[tuple]:
    async with connect(url) as c:
        rows = await c.fetch("SELECT version, name, applied_at FROM schema_migrations ORDER BY 1")
        return [tuple(r) for r in rows]


async def test_migrations_are_applied_once_by_stores_opening_together(pg_url: str) -> None:
    stores = [open_store(pg_url) for _ in range(5)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        # Every migration file, whatever the latest one is (branches add their own).
        shipped = [(m.version, m.name) for m in mig.load_migrations("postgres")]
        assert shipped[:2] == [(1, "initial"), (2, "delivery_engine")]
        applied = sorted((s.migrations_applied for s in stores), key=len)
        assert applied == [[]] * 4 + [[v for v, _ in shipped]]
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    rows = await _schema_rows(pg_url)
    assert [r[:2] for r in rows] == shipped
    async with opened(pg_url) as again:
        assert again.migrations_applied == []
    assert await _schema_rows(pg_url) == rows  # applied_at unchanged


async def test_a_database_at_version_1_is_upgraded_on_open(pg_url: str) -> None:
    async with connect(pg_url) as c:
        assert await apply_migrations(c, mig.load_migrations("postgres")[:1]) == [1]
        await c.execute(
            "INSERT INTO records (id, group_key, access_key_id, data, received_at) "
            "VALUES ('rec_old', 'g', 'AK', '\\x7b7d', 1.0)"
        )
    async with opened(pg_url) as s:
        shipped = [m.version for m in mig.load_migrations("postgres")]
        assert s.migrations_applied == shipped[1:]
        assert await count_records(s) == 1
        assert await s.set_lane_paused("g", "crm", True, 1.0) is True


async def test_a_failing_migration_rolls_back_whole(pg_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "postgres"
    folder.mkdir()
    (folder / "0001_first.sql").write_text("CREATE TABLE t1 (a integer);\n")
    (folder / "0002_second.sql").write_text(
        "-- a comment; with a semicolon\nCREATE TABLE t2 (a integer);\n"
        "CREATE FUNCTION f() RETURNS integer AS $$ SELECT 1; $$ LANGUAGE sql;\n"
    )
    async with connect(pg_url) as c:
        assert await apply_migrations(c, mig.load_migrations("postgres", folder)) == [1, 2]
        assert await c.fetchval("SELECT f()") == 1
        (folder / "0003_broken.sql").write_text("CREATE TABLE t3 (a integer);\nNOT SQL;\n")
        with pytest.raises(Exception, match="syntax"):
            await apply_migrations(c, mig.load_migrations("postgres", folder))
        assert await c.fetchval("SELECT to_regclass('t3')") is None
        assert [r[0] for r in await c.fetch("SELECT version FROM schema_migrations")] == [1, 2]


async def test_a_database_from_a_newer_gateway_is_refused(pg_url: str) -> None:
    async with opened(pg_url):
        pass
    async with connect(pg_url) as c:
        await c.execute("INSERT INTO schema_migrations VALUES (99, 'future', 0)")
    s = open_store(pg_url)
    with pytest.raises(mig.MigrationError, match="newer"):
        await s.open()


# -- the URL -----------------------------------------------------------------------------------
def test_url_options_are_ours_the_rest_asyncpg_s() -> None:
    dsn, options = parse_url(
        "postgres://u:p%40ss@db.example:5433/gw?pool_min=2&pool_max=20&sslmode=require"
        "&command_timeout=5"
    )
    assert dsn == "postgresql://u:p%40ss@db.example:5433/gw?sslmode=require"
    assert options == {
        "pool_min": 2,
        "pool_max": 20,
        "connect_timeout": 10.0,
        "command_timeout": 5.0,
    }
    for bad in ("pool_max=0", "pool_min=3&pool_max=2", "pool_max=x", "pool_max=1.5"):
        with pytest.raises(ValueError, match="pool"):
            parse_url(f"postgresql://h/db?{bad}")
    with pytest.raises(ValueError, match="timeout"):
        parse_url("postgresql://h/db?connect_timeout=0")


async def test_pool_options_reach_the_pool(pg_url: str) -> None:
    async with opened(with_query(pg_url, "pool_min=2&pool_max=3&application_name=gw-test")) as s:
        assert s._pool is not None
        assert (s._pool.get_min_size(), s._pool.get_max_size()) == (2, 3)
        assert await s._read(lambda c: c.fetchval("SHOW application_name")) == "gw-test"
        # More concurrent reads than connections: they queue for the pool, all answered.
        got = await asyncio.gather(*(s._read(lambda c: c.fetchval("SELECT 1")) for _ in range(20)))
        assert got == [1] * 20


# -- ingest over an outage ---------------------------------------------------------------------
async def test_ingest_answers_503_while_the_database_is_down(
    pg_url: str, aiohttp_client, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The producer API on PostgreSQL: 202 while up, 503 with Retry-After (never a 202) while
    the server is unreachable, 202 again once it is back, without a restart."""
    from gateway.app import create_app
    from gateway.config import load_settings
    from tests.test_ingest_api import JSON, Api, record

    target = parse_url(pg_url)[0].split("@", 1)[1].split("/", 1)[0]
    host, port = target.rsplit(":", 1)
    proxy = Proxy(host, int(port))
    await proxy.start()
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    (mappings / "demo.yaml").write_text("group_key: demo\nintegrations: []\n")
    settings = load_settings(
        {
            "data_dir": tmp_path / "data",
            "mappings": mappings,
            "store": with_query(_via(pg_url, proxy.port), "connect_timeout=2"),
            "key_cache_ttl": 60.0,
            "delivery": False,
        },
        environ={},
    )
    api = Api(await aiohttp_client(create_app(settings)), tmp_path / "data")
    assert isinstance(api.store, PostgresStore)
    key, secret = await api.key("demo")
    n = 0

    async def post():  # type: ignore[no-untyped-def]
        nonlocal n
        n += 1  # a new body each time: a signed request sent twice is a replay
        body = record(data={"n": n})
        return await api.send("POST", "/v1/records", body, JSON, key=key, secret=secret)

    r = await post()
    assert r.status == 202, await r.text()

    await proxy.stop()
    for _ in range(3):
        r = await post()
        assert r.status == 503, await r.text()
        assert r.headers["Retry-After"]
        assert (await r.json())["error"]["code"] == "STORE_UNAVAILABLE"
    assert (await api.client.get("/readyz")).status == 503

    await proxy.start()
    for _ in range(50):
        r = await post()
        if r.status != 503:
            break
        await asyncio.sleep(0.1)
    assert r.status == 202, await r.text()
    assert (await api.client.get("/readyz")).status == 200
    assert await api.count() == 2
    await proxy.stop()
