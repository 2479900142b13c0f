"""The PostgreSQL store backend (asyncpg): several gateway processes, or hosts, on one database.

The queue, group commit and the shared reads are ``gateway.store.core``'s; this module is the
connection to PostgreSQL. Why this shape:

- **Group commit on the event loop.** One *writer task* per store serves the queue (see core),
  each group in one transaction on a pool connection. Records, deliveries and idempotency
  entries of a whole group go in one statement (``unnest`` of arrays, data-modifying CTEs), so a
  group costs a handful of round trips whatever its size.
- **Each write succeeds or fails alone.** The group is first tried in one savepoint; on a
  constraint error it is rolled back to the savepoint and redone one write per savepoint (as in
  SQLite), so only the offending write gets the error.
- **Idempotency across processes.** Another process may store the same key between our lookup
  and our insert. The insert replaces only an *expired* entry (``ON CONFLICT ... DO UPDATE ...
  WHERE expires_at <= now``); a key it could not write sends the group down the one-by-one path,
  whose fresh lookup turns that write into a replay of the other process's answer. Rows are
  inserted in key order, so two processes never wait on each other's keys in opposite orders.
- **Everything else runs concurrently**, each call in its own transaction (usually a single
  statement) on a pool connection: PostgreSQL has no single-writer limit, and claims must not
  hold their row locks until an ingest group commits. Claims lock with ``FOR UPDATE SKIP
  LOCKED`` under a lease, so processes never claim the same delivery and an expired lease is
  claimable again; updates and releases apply only while the lease is held.
- **Outages.** Any connection failure, timeout, server shutdown, full disk or read-only server
  becomes :class:`StoreUnavailable` for the calls it hit; a write is answered committed only
  after its ``COMMIT`` returned. The pool replaces broken connections by itself, so the store
  serves again as soon as the server does. Deadlocks and serialization failures are retried.
- **Migrations** run in one transaction under an advisory lock, so processes starting together
  apply them once.

Options come from the URL's query (removed before asyncpg sees it): ``pool_min`` (default 1)
and ``pool_max`` (default 10) connections, ``connect_timeout`` (seconds, default 10) and
``command_timeout`` (seconds a statement may take, default 60). Every other query parameter is
asyncpg's (``sslmode``, server settings such as ``application_name``...).

The store is bound to the event loop that opened it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from gateway.store import core, migrations, queries
from gateway.store.base import (
    Attempt,
    ClaimedDelivery,
    DeliveryState,
    DeliveryUpdate,
    IdempotencyEntry,
    IngestResult,
    IngestWrite,
    StoreError,
    StoreUnavailable,
)
from gateway.store.core import CallJob, IngestJob, Job, Key, Params, Row, numbered
from gateway.store.queries import postgres as q

R = TypeVar("R")
Conn = Any  # asyncpg.Connection: asyncpg publishes no type information
Fn = Callable[[Conn], Awaitable[R]]

DIALECT = "postgres"
SCHEMES = ("postgresql", "postgres")

# Our options in the URL's query, with their defaults.
URL_OPTIONS: dict[str, float] = {
    "pool_min": 1,
    "pool_max": 10,
    "connect_timeout": 10.0,
    "command_timeout": 60.0,
}

_TX_ATTEMPTS = 4  # a transaction lost to a deadlock or serialization failure is tried again


# -- errors -----------------------------------------------------------------------------------
# SQLSTATE classes that mean the database, not the write, is at fault: connection exceptions,
# insufficient resources (disk full, too many connections), operator intervention (shutdown,
# statement timeout), system errors (I/O), internal errors, config file errors, invalid
# catalog name (no such database), invalid authorization.
_UNAVAILABLE_CLASSES = frozenset({"08", "53", "57", "58", "XX", "F0", "3D", "28"})
# Read-only transaction (a standby after failover, default_transaction_read_only), lock not
# available (lock_timeout), object in use, and 55000 as connecting answers it for a database
# that is "not currently accepting connections" (ALTER DATABASE ... ALLOW_CONNECTIONS false,
# a database being dropped or restored).
_UNAVAILABLE_STATES = frozenset({"25006", "55P03", "55006", "55000"})
_RETRYABLE_STATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock


def _sqlstate(exc: BaseException) -> str:
    return getattr(exc, "sqlstate", None) or ""


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.PostgresError) and _sqlstate(exc) in _RETRYABLE_STATES


def _is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` is the database failing (503) rather than this write being wrong."""
    if isinstance(exc, OSError | TimeoutError | asyncpg.exceptions.InternalClientError):
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        # Connection closed, pool closing...; bad parameters are the write's own fault.
        return not isinstance(exc, asyncpg.exceptions.DataError | ValueError)
    if isinstance(exc, asyncpg.PostgresError):
        state = _sqlstate(exc)
        return state[:2] in _UNAVAILABLE_CLASSES or state in _UNAVAILABLE_STATES
    return False


def _is_connection_lost(exc: BaseException) -> bool:
    """The connection was broken before or while we used it: worth one more try for a read."""
    if isinstance(
        exc,
        ConnectionError
        | asyncpg.exceptions.ConnectionDoesNotExistError
        | asyncpg.exceptions.InternalClientError,
    ):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        return _sqlstate(exc) in ("57P01", "57P02", "08006", "08003")  # admin/crash shutdown
    return isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)


def _cause(exc: BaseException) -> BaseException:
    """The failure behind ``exc``: a rollback that failed on a broken connection hides why."""
    while isinstance(
        exc, asyncpg.InterfaceError | asyncpg.exceptions.InternalClientError
    ) and isinstance(exc.__context__, asyncpg.PostgresError | OSError):
        exc = exc.__context__
    return exc


class _NotSent(Exception):
    """Nothing of a write reached the server (its connection was found broken at BEGIN, or
    asyncpg refused to send on it): it can be tried again on another connection."""


class _Retry:
    """When a write transaction is tried again: once after a connection that died idle (its
    write never reached the server), and after a deadlock or serialization failure while
    attempts are left. Never after a connection failure mid-write: it may have committed."""

    def __init__(self) -> None:
        self.fresh = False  # the one try on a fresh connection is used up

    async def after(self, caught: Exception, attempt: int) -> BaseException | None:
        """None to try again (after a short random back-off for a deadlock), else the failure
        to report."""
        failure: BaseException = caught
        if isinstance(caught, _NotSent):
            if not self.fresh:
                self.fresh = True
                return None
            failure = caught.__cause__ or caught
        if _is_retryable(failure) and attempt + 1 < _TX_ATTEMPTS:
            await asyncio.sleep(random.uniform(0, 0.01 * 2**attempt))
            return None
        return failure


async def _begin(conn: Conn) -> Any:
    """BEGIN on ``conn``; the started transaction, or _NotSent if the connection is broken."""
    tx = conn.transaction()
    try:
        await tx.start()
    except Exception as exc:
        if _is_connection_lost(exc):
            raise _NotSent() from exc
        raise
    return tx


async def _in_transaction(conn: Conn, fn: Fn[R]) -> R:
    """``fn`` in a transaction; on an error the rollback's own failure (the connection is
    gone) is dropped, so the caller hears the first error."""
    tx = await _begin(conn)
    try:
        result = await fn(conn)
    except BaseException:
        with contextlib.suppress(Exception):
            await tx.rollback()
        raise
    await tx.commit()
    return result


def _unavailable(exc: BaseException) -> StoreUnavailable:
    exc = _cause(exc)
    state = _sqlstate(exc)
    detail = f"{exc} ({state})" if state else f"{type(exc).__name__}: {exc}"
    err = StoreUnavailable(f"PostgreSQL: {detail}")
    err.__cause__ = exc
    return err


def _rejected(exc: BaseException) -> StoreError:
    if isinstance(exc, asyncpg.UniqueViolationError):
        err = StoreError(f"write rejected: UNIQUE constraint failed: {exc.constraint_name} ({exc})")
    else:
        err = StoreError(f"write rejected: {exc}")
    err.__cause__ = exc
    return err


def _is_db_error(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError)


def _translate(exc: BaseException) -> BaseException:
    """What a caller hears for ``exc``: StoreUnavailable, StoreError, or ``exc`` itself (a bug
    or a bad argument of ours)."""
    if isinstance(exc, StoreError):
        return exc
    if _is_unavailable(exc) or _is_retryable(exc):
        return _unavailable(exc)
    if _is_db_error(exc):
        return _rejected(exc)
    return exc


def _text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL; error texts (from remote answers) may."""
    if value is None or "\x00" not in value:
        return value
    return value.replace("\x00", "\ufffd")


def _count(status: str) -> int:
    """Rows affected, from a command status such as ``UPDATE 3`` or ``INSERT 0 1``."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0


# -- URL ----------------------------------------------------------------------------------------
def parse_url(url: str) -> tuple[str, dict[str, float]]:
    """Split a ``postgresql://`` URL into asyncpg's DSN and our options (see the module doc).

    Raises ValueError for another scheme or a bad option value.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES:
        raise ValueError(f"not a PostgreSQL URL: {url!r}")
    options = dict(URL_OPTIONS)
    rest: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in URL_OPTIONS:
            rest.append((name, value))
            continue
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"store URL option {name}={value!r} is not a number") from None
        if name.startswith("pool_"):
            if number != int(number):
                raise ValueError(f"store URL option {name}={value!r} is not a whole number")
            number = int(number)
        options[name] = number
    if options["pool_max"] < 1 or not 0 <= options["pool_min"] <= options["pool_max"]:
        raise ValueError(
            f"store URL: need 0 <= pool_min <= pool_max and pool_max >= 1 "
            f"(pool_min={options['pool_min']}, pool_max={options['pool_max']})"
        )
    if options["connect_timeout"] <= 0 or options["command_timeout"] <= 0:
        raise ValueError("store URL: connect_timeout and command_timeout must be > 0")
    dsn = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(rest), parts.fragment))
    return dsn, options


# -- migrations -------------------------------------------------------------------------------
async def apply_migrations(
    conn: Conn, all_migrations: list[migrations.Migration] | None = None
) -> list[int]:
    """Apply pending migrations on ``conn``; return the versions applied.

    One transaction under an advisory lock: processes starting together serialise here and the
    later ones find nothing left to do. A failing migration rolls back whole, leaving the
    database at its previous version.
    """
    todo = migrations.load_migrations(DIALECT) if all_migrations is None else all_migrations
    async with conn.transaction():
        await conn.execute(q.LOCK_MIGRATIONS, q.MIGRATION_LOCK)
        await conn.execute(q.SCHEMA_MIGRATIONS_TABLE)
        applied = [r[0] for r in await conn.fetch(queries.SCHEMA_MIGRATIONS_VERSIONS)]
        todo = migrations.plan(applied, todo)
        for mig in todo:
            await conn.execute(mig.sql)  # the simple protocol runs the whole script
            await conn.execute(
                numbered(queries.INSERT_SCHEMA_MIGRATION), mig.version, mig.name, time.time()
            )
    return [m.version for m in todo]


async def _no_reset(_conn: Conn) -> None:
    """Pool release hook: our sessions keep no state (asyncpg still rolls back an open
    transaction first), so skip the default reset query's round trip."""


class PostgresStore(core.GroupCommitStore):
    """The store in a PostgreSQL database, with group commit on a writer task."""

    _purge_idempotency_sql = q.PURGE_IDEM_CHUNK
    _lane_stats_sql = q.LANE_STATS
    _rollup_latest_sql = q.ROLLUP_LATEST
    _rollup_due_sql = q.ROLLUP_DUE

    def __init__(
        self,
        dsn: str,
        *,
        pool_min: int = 1,
        pool_max: int = 10,
        connect_timeout: float = 10.0,
        command_timeout: float = 60.0,
        max_pending_writes: int = 50000,
        max_batch_records: int = 5000,
    ) -> None:
        """Configure; nothing connects until :meth:`open`. ``dsn`` is asyncpg's (no options of
        ours: see :meth:`from_url`)."""
        if max_pending_writes <= 0 or max_batch_records <= 0:
            raise ValueError("max_pending_writes and max_batch_records must be > 0")
        if pool_max < 1 or not 0 <= pool_min <= pool_max:
            raise ValueError("need 0 <= pool_min <= pool_max and pool_max >= 1")
        super().__init__(max_pending_writes=max_pending_writes, max_batch_records=max_batch_records)
        self.dsn = dsn
        self.pool_min = pool_min
        self.pool_max = pool_max
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._pool: Any = None  # asyncpg.Pool once open
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> PostgresStore:
        """The store a ``postgresql://`` URL names, its query options applied."""
        dsn, options = parse_url(url)
        return cls(
            dsn,
            pool_min=int(options["pool_min"]),
            pool_max=int(options["pool_max"]),
            connect_timeout=options["connect_timeout"],
            command_timeout=options["command_timeout"],
            **kwargs,
        )

    # -- lifecycle ------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect the pool, apply pending migrations, start the writer task."""
        if self._opened or self._closed:
            raise StoreError("a store is opened once; make a new one to reopen")
        try:
            pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self.pool_min,
                max_size=self.pool_max,
                timeout=self.connect_timeout,
                command_timeout=self.command_timeout,
                reset=_no_reset,
            )
        except Exception as exc:  # refused, timed out, no such database, bad password...
            raise _unavailable(exc) from exc
        try:
            async with pool.acquire(timeout=self.connect_timeout) as conn:
                self.migrations_applied = await apply_migrations(conn)
        except BaseException as exc:
            pool.terminate()
            if isinstance(exc, StoreError) or not isinstance(exc, Exception):
                raise
            if _is_unavailable(exc) or _is_retryable(exc):
                raise _unavailable(exc) from exc
            raise StoreError(f"applying the schema migrations failed: {exc}") from exc
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self._opened = True
        self._accepting = True
        self._writer = self._loop.create_task(self._writer_main(), name="store-writer")

    async def close(self) -> None:
        """Commit and answer every queued write, then stop the writer and close the pool."""
        if not self._stop_accepting():
            return
        if self._writer is not None:
            await asyncio.shield(self._writer)
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=self.connect_timeout)
            except Exception:
                pool.terminate()

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the writer task runs and the database answers."""
        if self._writer is None or self._writer.done():
            raise StoreUnavailable("the store's writer is not running")
        await self._read(lambda c: c.fetchval("SELECT 1"))

    # -- connections ----------------------------------------------------------------------
    def _live_pool(self) -> Any:
        pool = self._pool
        if pool is None or self._closed:
            raise self._closed_error()
        return pool

    async def _read(self, fn: Fn[R]) -> R:
        """Run ``fn`` on a pool connection; one more try if the connection was found broken
        (after a server restart the pool may still hold connections that died idle)."""
        for attempt in range(2):
            pool = self._live_pool()
            try:
                async with pool.acquire(timeout=self.connect_timeout) as conn:
                    return await fn(conn)
            except Exception as exc:
                if attempt == 0 and _is_connection_lost(exc) and not self._closed:
                    continue
                err = _translate(exc)
                if err is exc:
                    raise
                raise err from exc
        raise AssertionError("unreachable")

    async def _fetch(self, sql: str, params: Params = ()) -> list[Row]:
        text = numbered(sql)
        rows: list[Row] = await self._read(lambda c: c.fetch(text, *params))
        return rows

    async def _fetch_snapshot(self, statements: list[tuple[str, Params]]) -> list[list[Row]]:
        if len(statements) == 1:  # one statement is one snapshot
            return [await self._fetch(*statements[0])]

        async def run(conn: Conn) -> list[list[Row]]:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                return [await conn.fetch(numbered(sql), *params) for sql, params in statements]

        return await self._read(run)

    async def _execute(self, sql: str, params: Params | Callable[[], Params] = ()) -> int:
        """One statement in its own transaction on a pool connection; rows changed."""
        text = numbered(sql)

        async def run(c: Conn) -> int:
            return _count(await c.execute(text, *(params() if callable(params) else params)))

        return await self._tx(run, transaction=False)

    async def _tx(self, fn: Fn[R], *, transaction: bool = True) -> R:
        """Run the write ``fn`` in its own transaction on a pool connection (with
        ``transaction=False``, ``fn`` is one statement, atomic on its own). A deadlock or
        serialization failure is tried again; a write is never retried after a connection
        failure, as it may have committed."""
        retry = _Retry()
        for attempt in range(_TX_ATTEMPTS + 1):
            pool = self._live_pool()
            started = time.perf_counter()
            try:
                async with pool.acquire(timeout=self.connect_timeout) as conn:
                    if transaction:
                        result = await _in_transaction(conn, fn)
                    else:
                        try:
                            result = await fn(conn)
                        except asyncpg.exceptions.InternalClientError as exc:
                            raise _NotSent() from exc  # refused locally: never sent
            except Exception as caught:
                failure = await retry.after(caught, attempt)
                if failure is None:
                    continue
                if _is_unavailable(failure) or _is_retryable(failure):
                    self.stats.failed_transactions += 1
                err = _translate(failure)
                if err is failure:
                    raise
                raise err from failure
            self._observe(time.perf_counter() - started)
            return result
        raise AssertionError("unreachable")

    # -- the writer task ------------------------------------------------------------------
    def _wake_writer(self) -> None:
        self._wake.set()

    def _caller_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not None and loop is not self._loop:
            raise StoreError("the PostgreSQL store is used from the event loop that opened it")
        return loop

    async def _writer_main(self) -> None:
        """Serve the queue until close: everything waiting goes into one transaction."""
        while True:
            if not self._queue:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch, n = self._take_batch()
            try:
                await self._run_group(batch)
            except asyncio.CancelledError:
                core.fail(batch, StoreUnavailable("the store's writer stopped"))
                raise
            except BaseException as exc:  # a bug: fail these callers, keep the writer alive
                core.fail(batch, StoreError(f"store writer failed: {exc!r}"))
            finally:
                self._served(n)
                core.resolve(batch)

    async def _run_group(self, jobs: list[Job]) -> None:
        """Apply ``jobs`` in one transaction, in order: runs of ingest writes as groups, each
        other call in a savepoint of its own."""
        retry = _Retry()
        for attempt in range(_TX_ATTEMPTS + 1):
            started = time.perf_counter()
            for job in jobs:
                job.result = job.error = None
            try:
                pool = self._pool  # still set while close() waits for the queue to drain
                if pool is None:
                    raise StoreUnavailable("store is closed")
                async with pool.acquire(timeout=self.connect_timeout) as conn:
                    await _in_transaction(conn, lambda c: self._apply_jobs(c, jobs))
            except Exception as caught:
                failure = await retry.after(caught, attempt)
                if failure is None:
                    continue
                # Nothing of the group is committed (or, if the connection broke during
                # COMMIT, nobody can tell): every caller hears why, none hears "committed".
                self.stats.failed_transactions += 1
                err = _translate(failure)
                core.fail(jobs, _rejected(failure) if err is failure else err)
                return
            self._observe(time.perf_counter() - started)
            self._group_committed(jobs, started)
            return

    async def _apply_jobs(self, conn: Conn, jobs: list[Job]) -> None:
        now = time.time()
        run: list[IngestJob] = []
        first = True  # nothing done yet in this transaction
        for job in [*jobs, None]:
            if isinstance(job, IngestJob):
                run.append(job)
                continue
            if run:
                if not await self._apply_group(conn, run, now, first=first):
                    await self._apply_one_by_one(conn, run, now)
                run = []
            if isinstance(job, CallJob):
                await self._apply_call(conn, job)
            first = False

    @staticmethod
    async def _apply_call(conn: Conn, job: CallJob) -> None:
        await conn.execute("SAVEPOINT call")
        try:
            job.result = await job.fn(conn)
        except Exception as exc:
            if _is_unavailable(exc) or _is_retryable(exc):
                raise  # the connection or the server is gone: the whole group fails
            await conn.execute("ROLLBACK TO SAVEPOINT call")
            job.error = _rejected(exc) if _is_db_error(exc) else exc
        await conn.execute("RELEASE SAVEPOINT call")

    @staticmethod
    async def _stored_entries(
        conn: Conn, keys: Iterable[Key], now: float
    ) -> dict[Key, IdempotencyEntry]:
        """The unexpired stored entries (committed, or earlier in this transaction) among
        ``keys``."""
        keys = list(keys)
        if not keys:
            return {}
        rows = await conn.fetch(q.SELECT_IDEM_MANY, [k[0] for k in keys], [k[1] for k in keys], now)
        return {(r[0], r[1]): core.idempotency_entry(r) for r in rows}

    @classmethod
    async def _find_replay(
        cls, conn: Conn, write: IngestWrite, now: float
    ) -> IdempotencyEntry | None:
        """The stored unexpired entry for the first of the write's keys that has one."""
        stored = await cls._stored_entries(
            conn, [(e.access_key_id, e.key) for e in write.idempotency], now
        )
        return core.first_replay(write, stored)

    @staticmethod
    async def _insert(conn: Conn, writes: list[IngestWrite], now: float) -> set[Key]:
        """Insert the writes' records, deliveries and idempotency entries in one statement;
        return the idempotency keys written (an unexpired entry is never replaced)."""
        # Columns as arrays for unnest(), built in one pass (transposing rows costs several
        # times more on a 5000-record group).
        rid: list[str] = []
        rgroup: list[str] = []
        rkey: list[str] = []
        rdata: list[bytes] = []
        rat: list[float] = []
        rver: list[str | None] = []
        did: list[str] = []
        drec: list[str] = []
        dgroup: list[str] = []
        dinteg: list[str] = []
        dat: list[float] = []
        ordered: list[tuple[str, str, str, str, float, str, int]] = []  # per-key ordering
        idem: dict[Key, IdempotencyEntry] = {}
        for w in writes:
            for r in w.records:
                rid.append(r.id)
                rgroup.append(r.group_key)
                rkey.append(r.access_key_id)
                rdata.append(r.data_json)
                rat.append(r.received_at)
                rver.append(r.mapping_version)
                if r.ordering:
                    # Ordered deliveries go in their own statement (below); the rest as usual.
                    integs: list[str] = []
                    for d, integ, key in zip(
                        r.delivery_ids, r.integrations, r.ordering, strict=True
                    ):
                        if key is None:
                            integs.append(integ)
                            did.append(d)
                        else:
                            ordered.append(
                                (d, r.id, r.group_key, integ, r.received_at, key[0], int(key[1]))
                            )
                    for integ in integs:
                        drec.append(r.id)
                        dgroup.append(r.group_key)
                        dinteg.append(integ)
                        dat.append(r.received_at)
                    continue
                for d, integ in zip(r.delivery_ids, r.integrations, strict=True):
                    did.append(d)
                    drec.append(r.id)
                    dgroup.append(r.group_key)
                    dinteg.append(integ)
                    dat.append(r.received_at)
            for e in w.idempotency:
                idem[(e.access_key_id, e.key)] = e  # the last one wins, as INSERT OR REPLACE
        if not rid and not idem:
            return set()
        # Key order: two processes inserting the same keys wait on each other in one order.
        entries = [idem[k] for k in sorted(idem)]
        rows = await conn.fetch(
            q.INSERT_GROUP,
            rid,
            rgroup,
            rkey,
            rdata,
            rat,
            rver,
            did,
            drec,
            dgroup,
            dinteg,
            dat,
            now,
            [e.access_key_id for e in entries],
            [e.key for e in entries],
            [e.request_hash for e in entries],
            [e.status for e in entries],
            [e.response for e in entries],
            [e.created_at for e in entries],
            [e.expires_at for e in entries],
        )
        if ordered:
            cols = list(zip(*ordered, strict=True))
            await conn.execute(
                q.INSERT_ORDERED_DELIVERIES, *[list(c) for c in cols[:5]], now, *map(list, cols[5:])
            )
        return {(r[0], r[1]) for r in rows}

    async def _apply_group(
        self, conn: Conn, jobs: list[IngestJob], now: float, *, first: bool = False
    ) -> bool:
        """Fast path: the whole group in one savepoint. False (and nothing applied) on a
        constraint error or a key another process took meanwhile: redo it write by write.

        ``first``: nothing precedes the group in the transaction, so instead of a savepoint
        (two round trips on every commit) a failure rolls the whole transaction back and
        chains a new one (one round trip, only on failure)."""
        stored = await self._stored_entries(conn, {k for job in jobs for k in job.keys}, now)
        to_insert, expected = core.plan_group(jobs, stored, keys=True)
        if not to_insert:
            return True

        async def undo() -> None:
            if first:
                await conn.execute("ROLLBACK AND CHAIN")
            else:
                await conn.execute("ROLLBACK TO SAVEPOINT ingest_group")
                await conn.execute("RELEASE SAVEPOINT ingest_group")

        if not first:
            await conn.execute("SAVEPOINT ingest_group")
        try:
            written = await self._insert(conn, to_insert, now)
        except Exception as exc:
            if _is_unavailable(exc) or _is_retryable(exc):
                raise
            await undo()
            return False
        if written != expected:
            await undo()
            return False
        if not first:
            await conn.execute("RELEASE SAVEPOINT ingest_group")
        return True

    async def _apply_one_by_one(self, conn: Conn, jobs: list[IngestJob], now: float) -> None:
        """Slow path: each write in its own savepoint, so a bad one fails alone."""
        for job in jobs:
            write = job.write
            job.result = None
            job.error = None
            # Earlier writes of this group are already inserted in this transaction, and
            # other processes' commits are visible to this new statement.
            replay = await self._find_replay(conn, write, now) if write.idempotency else None
            if replay is not None:
                job.result = IngestResult(committed=False, replay=replay)
                continue
            await conn.execute("SAVEPOINT ingest_write")
            try:
                written = await self._insert(conn, [write], now)
            except Exception as exc:
                if _is_unavailable(exc) or _is_retryable(exc):
                    raise
                await conn.execute("ROLLBACK TO SAVEPOINT ingest_write")
                await conn.execute("RELEASE SAVEPOINT ingest_write")
                job.error = _rejected(exc) if _is_db_error(exc) else StoreError(str(exc))
                continue
            if written != job.keys:
                # Another process stored one of the keys after our lookup.
                await conn.execute("ROLLBACK TO SAVEPOINT ingest_write")
                await conn.execute("RELEASE SAVEPOINT ingest_write")
                replay = await self._find_replay(conn, write, now)
                if replay is not None:
                    job.result = IngestResult(committed=False, replay=replay)
                else:
                    job.error = StoreError("write rejected: an idempotency key changed meanwhile")
                continue
            await conn.execute("RELEASE SAVEPOINT ingest_write")
            job.result = IngestResult(committed=True)

    # -- deliveries -----------------------------------------------------------------------
    async def _claim(self, claim: core.Claim) -> list[ClaimedDelivery]:
        """One statement: the due rows are locked ``FOR UPDATE SKIP LOCKED`` (rows another
        claimer holds are passed over, never waited for) and leased. PostgreSQL re-checks a
        locked row against the conditions, so a delivery another process leased meanwhile is
        never taken."""
        where, params = core.claim_where(claim)
        sql = q.CLAIM.format(where=numbered(" AND ".join(where), 5))
        args = [claim.now, claim.limit, claim.owner, claim.expires, *params]

        async def lease(c: Conn) -> list[Any]:
            rows: list[Any] = await c.fetch(sql, *args)
            if len(rows) < claim.limit:
                # The claim walked the whole due range: park the ordered deliveries it passed
                # over (not the head of their key), so the next claims need not (per-key
                # ordering). In the claim's transaction: one commit for both.
                await c.execute(_PARK, claim.now, claim.now)
            return rows

        rows = await self._tx(lease)
        out = []
        for r in rows:
            d = core.delivery(r)
            d.ordering_key = r[16]
            out.append(ClaimedDelivery(d, bytes(r[14]), r[15]))
        return out

    async def update_deliveries(self, updates: list[DeliveryUpdate]) -> int:
        """Apply the updates whose lease is still held, in one statement; return how many."""
        if not updates:
            return 0
        # A delivery's first update releases its lease, so a later one for the same id could
        # never apply: keep the first. Id order: concurrent updaters lock rows in one order.
        first: dict[str, DeliveryUpdate] = {}
        for u in updates:
            first.setdefault(u.delivery_id, u)
        todo = [first[k] for k in sorted(first)]
        attempts: list[tuple[str, Attempt]] = []
        for u in updates:
            a = u.attempt
            if a is not None and first[u.delivery_id].attempt is a:
                attempts.append((u.delivery_id, a))

        links = [
            (u.delivery_id, u.link)
            for u in todo
            if u.link is not None and u.state == DeliveryState.DELIVERED
        ]

        async def apply(c: Conn) -> int:
            now = time.time()
            applied: int = await c.fetchval(
                q.UPDATE_DELIVERIES,
                [u.delivery_id for u in todo],
                [u.lease_owner for u in todo],
                [str(u.state) for u in todo],
                [u.next_attempt_at for u in todo],
                [_text(u.last_error) for u in todo],
                [u.last_status for u in todo],
                [0 if u.attempt is None else 1 for u in todo],
                [u.state == DeliveryState.DELIVERED for u in todo],
                now,
                [d for d, _ in attempts],
                [a.started_at for _, a in attempts],
                [a.duration_ms for _, a in attempts],
                [a.status for _, a in attempts],
                [_text(a.error) for _, a in attempts],
                [a.mapping_version for _, a in attempts],
                [a.link for _, a in attempts],
            )
            if links:
                # Same transaction: a link is written exactly when its delivery is marked
                # delivered, and never for an update whose lease was lost.
                rows = await c.fetch(q.DELIVERED_NOW, [d for d, _ in links], now)
                done = {r[0] for r in rows}
                upserts, deletes = core.link_writes([(d, w) for d, w in links if d in done], now)
                if upserts:
                    await c.executemany(numbered(queries.UPSERT_LINK), upserts)
                if deletes:
                    await c.executemany(numbered(queries.DELETE_LINK), deletes)
            return applied

        settled = [u.delivery_id for u in todo if u.ordered and u.state != DeliveryState.PENDING]

        async def apply_and_unpark(c: Conn) -> int:
            applied = await apply(c)
            # Per-key ordering: their keys' next deliveries, if parked, are due now; in the
            # same transaction as the update (one commit).
            await c.execute(_UNPARK_NEXT, settled)
            return applied

        if settled:
            return await self._tx(apply_and_unpark)
        # One statement is atomic on its own; with links, a transaction holds them together.
        return await self._tx(apply, transaction=bool(links))

    async def _run_steps(self, steps: Callable[[], core.Steps[R]]) -> R:
        async def run(c: Conn) -> R:
            gen = steps()
            try:
                op, sql, params = next(gen)
                while True:
                    if op == "fetch":
                        answer: Any = await c.fetch(numbered(sql), *params)
                    else:
                        answer = _count(await c.execute(numbered(sql), *params))
                    op, sql, params = gen.send(answer)
            except StopIteration as stop:
                result: R = stop.value
                return result

        result: R = await self._write(run)
        return result

    # -- the delivery engine --------------------------------------------------------------
    async def release_deliveries(self, owner: str, ids: list[str], at: float) -> int:
        """Give deliveries still leased to ``owner`` back, due at ``at``; return how many."""
        if not ids:
            return 0
        unique = sorted(set(ids))
        return await self._execute(q.RELEASE_DELIVERIES, lambda: (at, time.time(), unique, owner))

    async def _replay(
        self, now: float, limit: int, ids: list[str] | None, where: list[str], params: list[Any]
    ) -> list[str]:
        """Selected and locked, then updated, in one statement; the state guard is checked
        again on the locked rows."""
        if ids is not None:
            where = [q.REPLAY_IDS, "(state = 'dead' OR state = 'delivered')"]
            params = [sorted(set(ids))]
        sql = numbered(q.REPLAY.format(where=" AND ".join(where)))
        args = [now, now, *params, limit]
        rows = await self._tx(lambda c: c.fetch(sql, *args), transaction=False)
        return sorted(r[0] for r in rows)

    async def purge_delivered(self, before: float, limit: int = 5000) -> int:
        """Delete up to ``limit`` old, fully delivered records in one transaction; return how
        many (see :func:`core.purge_bound` for how old records are found by id).

        The candidates' deliveries are locked before the final check, so a delivery replayed
        by another process at the same moment keeps its record: the check runs after that
        replay committed. Candidate records are locked ``SKIP LOCKED``: concurrent purgers
        share the work instead of waiting on each other.
        """
        if limit <= 0:
            return 0
        bound = core.purge_bound(before)

        async def purge(c: Conn) -> int:
            rows = await c.fetch(q.PURGE_CANDIDATES, bound, before, limit)
            if not rows:
                return 0
            ids = [r[0] for r in rows]
            await c.execute(q.PURGE_LOCK_DELIVERIES, ids)
            return _count(await c.execute(q.PURGE_RECORDS, ids))

        return await self._tx(purge)


_PARK = numbered(queries.PARK_FOLLOWERS)
_UNPARK_NEXT = numbered(q.UNPARK_NEXT)


@contextlib.asynccontextmanager
async def connect(url: str) -> AsyncIterator[Conn]:
    """One plain connection to the database a store URL names (tools and tests)."""
    dsn, options = parse_url(url)
    conn = await asyncpg.connect(dsn, timeout=options["connect_timeout"])
    try:
        yield conn
    finally:
        await conn.close()
