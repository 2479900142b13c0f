"""The PostgreSQL store backend (asyncpg): several gateway processes, or hosts, on one database.

Why this shape:

- **Group commit on the event loop.** ``commit_ingest`` queues its write; one *writer task*
  per store takes the first queued write, drains whatever else is already queued (up to
  :attr:`PostgresStore.max_batch_records` records), applies them all in one transaction on a
  pool connection and only then answers each caller. No timer: the next group starts as soon as
  the previous commit ends. Records, deliveries and idempotency entries of a whole group go in
  one statement (``unnest`` of arrays, data-modifying CTEs), so a group costs a handful of round
  trips whatever its size.
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
import collections
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import orjson

from gateway.store import migrations
from gateway.store.base import (
    AccessKey,
    Attempt,
    ClaimedDelivery,
    Delivery,
    DeliveryFilter,
    DeliveryState,
    DeliveryUpdate,
    IdempotencyEntry,
    IngestResult,
    IngestWrite,
    LaneStats,
    Page,
    Store,
    StoredRecord,
    StoreError,
    StoreOverloaded,
    StoreUnavailable,
)
from gateway.store.sqlite import CommitStats, decode_cursor, encode_cursor

R = TypeVar("R")
Conn = asyncpg.Connection
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

# pg_advisory_xact_lock key serialising migrations ("gw_migr" in ASCII).
MIGRATION_LOCK = 0x67775F6D69677200

SCHEMA_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at double precision NOT NULL
)
"""

_TX_ATTEMPTS = 4  # a transaction lost to a deadlock or serialization failure is tried again
_PURGE_CHUNK = 5000
_MAX_CALLS_PER_COMMIT = 64
_RECORD_ID_PREFIX = "rec_"  # see SQLiteStore.purge_delivered

_DELIVERY_COLS = (
    "id, record_id, group_key, integration, state, attempts, next_attempt_at, created_at, "
    "updated_at, lease_owner, lease_expires_at, last_error, last_status, delivered_at"
)


def _cols(prefix: str) -> str:
    return ", ".join(f"{prefix}.{c.strip()}" for c in _DELIVERY_COLS.split(","))


_IDEM_COLS = "access_key_id, key, request_hash, status, response, created_at, expires_at"
_SELECT_IDEM = (
    f"SELECT {_IDEM_COLS} FROM idempotency_keys "
    "WHERE access_key_id = $1 AND key = $2 AND expires_at > $3"
)
_SELECT_IDEM_MANY = (
    "SELECT i.access_key_id, i.key, i.request_hash, i.status, i.response, i.created_at, "
    "i.expires_at FROM unnest($1::text[], $2::text[]) AS k(a, k) "
    "JOIN idempotency_keys AS i ON i.access_key_id = k.a AND i.key = k.k "
    "WHERE i.expires_at > $3"
)
# One statement for a whole group: records, their deliveries (state, attempts and lease take
# their defaults) and the idempotency entries. An entry replaces only an expired one; the keys
# it wrote come back, so a key taken meanwhile by another process is noticed.
_INSERT_GROUP = (
    "WITH r AS (INSERT INTO records (id, group_key, access_key_id, data, received_at, "
    "mapping_version) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], "
    "$5::float8[], $6::text[])), "
    "d AS (INSERT INTO deliveries (id, record_id, group_key, integration, next_attempt_at, "
    "created_at, updated_at) SELECT x.id, x.rid, x.g, x.i, x.t, x.t, $12 FROM unnest("
    "$7::text[], $8::text[], $9::text[], $10::text[], $11::float8[]) AS x(id, rid, g, i, t)) "
    f"INSERT INTO idempotency_keys ({_IDEM_COLS}) SELECT * FROM unnest($13::text[], "
    "$14::text[], $15::text[], $16::int[], $17::bytea[], $18::float8[], $19::float8[]) "
    "ON CONFLICT (access_key_id, key) DO UPDATE SET request_hash = excluded.request_hash, "
    "status = excluded.status, response = excluded.response, created_at = excluded.created_at, "
    "expires_at = excluded.expires_at WHERE idempotency_keys.expires_at <= $12 "
    "RETURNING access_key_id, key"
)
# The updates whose lease is still held, and the attempts of those, in one statement.
_UPDATE_DELIVERIES = (
    "WITH u AS (UPDATE deliveries AS d SET state = x.state, next_attempt_at = x.next, "
    "last_error = x.err, last_status = x.status, attempts = d.attempts + x.inc, "
    "delivered_at = CASE WHEN x.delivered THEN $9 ELSE d.delivered_at END, "
    "lease_owner = NULL, lease_expires_at = NULL, updated_at = $9 "
    "FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::text[], $6::int[], "
    "$7::int[], $8::bool[]) AS x(id, owner, state, next, err, status, inc, delivered) "
    "WHERE d.id = x.id AND d.lease_owner = x.owner RETURNING d.id), "
    "a AS (INSERT INTO attempts (delivery_id, started_at, duration_ms, status, error, "
    "mapping_version) SELECT y.did, y.started, y.ms, y.status, y.err, y.mv FROM unnest("
    "$10::text[], $11::float8[], $12::float8[], $13::int[], $14::text[], $15::text[]) "
    "WITH ORDINALITY AS y(did, started, ms, status, err, mv, n) "
    "WHERE y.did IN (SELECT id FROM u) ORDER BY y.n) "
    "SELECT count(*) FROM u"
)
_REPLAY_SET = (
    "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = $1, "
    "delivered_at = NULL, lease_owner = NULL, lease_expires_at = NULL, updated_at = $1 "
)


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


def _delivery(row: Sequence[Any]) -> Delivery:
    return Delivery(
        row[0],
        row[1],
        row[2],
        row[3],
        DeliveryState(row[4]),
        row[5],
        row[6],
        row[7],
        row[8],
        row[9],
        row[10],
        row[11],
        row[12],
        row[13],
    )


def _idem(row: Sequence[Any]) -> IdempotencyEntry:
    return IdempotencyEntry(row[0], row[1], row[2], row[3], bytes(row[4]), row[5], row[6])


def _access_key(row: Sequence[Any]) -> AccessKey:
    return AccessKey(
        access_key_id=row[0],
        secret_ciphertext=bytes(row[1]),
        groups=orjson.loads(row[2]),
        name=row[3],
        created_at=row[4],
        revoked_at=row[5],
        rate_limit=row[6],
        rate_burst=row[7],
    )


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
    if all_migrations is None:
        all_migrations = migrations.load_migrations(DIALECT)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(SCHEMA_TABLE_SQL)
        applied = [r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")]
        todo = migrations.plan(applied, all_migrations)
        for mig in todo:
            await conn.execute(mig.sql)  # the simple protocol runs the whole script
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                mig.version,
                mig.name,
                time.time(),
            )
    return [m.version for m in todo]


# -- the writer's jobs --------------------------------------------------------------------------
class _Job:
    __slots__ = ("error", "future", "result")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.future: asyncio.Future[Any] = loop.create_future()
        self.result: Any = None
        self.error: BaseException | None = None


class _IngestJob(_Job):
    __slots__ = ("keys", "n", "write")

    def __init__(self, loop: asyncio.AbstractEventLoop, write: IngestWrite) -> None:
        super().__init__(loop)
        self.write = write
        self.n = len(write.records)
        self.keys = {(e.access_key_id, e.key) for e in write.idempotency}


class _CallJob(_Job):
    __slots__ = ("fn",)

    def __init__(self, loop: asyncio.AbstractEventLoop, fn: Fn[Any]) -> None:
        super().__init__(loop)
        self.fn = fn


async def _no_reset(_conn: Conn) -> None:
    """Pool release hook: our sessions keep no state (asyncpg still rolls back an open
    transaction first), so skip the default reset query's round trip."""


class PostgresStore(Store):
    """The store in a PostgreSQL database, with group commit on a writer task."""

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
        self.dsn = dsn
        self.pool_min = pool_min
        self.pool_max = pool_max
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.max_pending_writes = max_pending_writes
        self.max_batch_records = max_batch_records
        self.stats = CommitStats()
        # Called with each committed write transaction's duration (BEGIN to COMMIT, seconds):
        # metrics. Runs on the event loop; its errors are swallowed.
        self.on_commit_seconds: Callable[[float], None] | None = None
        self.migrations_applied: list[int] = []  # versions the last open() applied

        self._pool: asyncpg.Pool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: collections.deque[_Job] = collections.deque()
        self._wake = asyncio.Event()
        self._pending = 0
        self._accepting = False
        self._stopping = False
        self._opened = False
        self._closed = False
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

    @property
    def commits(self) -> int:
        """Write transactions committed so far (see :attr:`stats` for the details)."""
        return self.stats.commits

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
        if self._closed:
            return
        self._closed = True
        self._accepting = False
        self._stopping = True
        self._wake.set()
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
    def _live_pool(self) -> asyncpg.Pool:
        pool = self._pool
        if pool is None or self._closed:
            raise StoreUnavailable("store is closed" if self._closed else "store is not open")
        return pool

    def _observe(self, seconds: float) -> None:
        self.stats.commits += 1
        observe = self.on_commit_seconds
        if observe is not None:
            with contextlib.suppress(Exception):
                observe(seconds)

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

    async def _snapshot(self, fn: Fn[R]) -> R:
        """Several SELECTs that see the same committed state."""

        async def run(conn: Conn) -> R:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                return await fn(conn)

        return await self._read(run)

    async def _tx(self, fn: Fn[R], *, transaction: bool = True) -> R:
        """Run the write ``fn`` in its own transaction on a pool connection (with
        ``transaction=False``, ``fn`` is one statement, atomic on its own). A deadlock or
        serialization failure is tried again; a write is never retried after a connection
        failure, as it may have committed."""
        fresh = False
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
            except Exception as exc:
                if isinstance(exc, _NotSent):
                    if not fresh:  # once: a connection that died idle, replaced by the pool
                        fresh = True
                        continue
                    exc = exc.__cause__ or exc
                if _is_retryable(exc) and attempt + 1 < _TX_ATTEMPTS:
                    await asyncio.sleep(random.uniform(0, 0.01 * 2**attempt))
                    continue
                if _is_unavailable(exc) or _is_retryable(exc):
                    self.stats.failed_transactions += 1
                err = _translate(exc)
                if err is exc:
                    raise
                raise err from exc
            self._observe(time.perf_counter() - started)
            return result
        raise AssertionError("unreachable")

    # -- the writer task ------------------------------------------------------------------
    def _submit(self, job: _Job, n_records: int = 0) -> None:
        """Queue ``job`` for the writer, or raise (closed / overloaded)."""
        if not self._accepting:
            raise StoreUnavailable("store is closed" if self._closed else "store is not open")
        if n_records and self._pending + n_records > self.max_pending_writes:
            raise StoreOverloaded(
                f"{self._pending} records are waiting for a commit; accepting "
                f"{n_records} more would exceed the limit of {self.max_pending_writes}"
            )
        self._pending += n_records
        self._queue.append(job)
        self._wake.set()

    def _loop_for_caller(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not None and loop is not self._loop:
            raise StoreError("the PostgreSQL store is used from the event loop that opened it")
        return loop

    async def _writer_main(self) -> None:
        """Serve the queue until close: everything waiting goes into one transaction."""
        cap = self.max_batch_records
        queue = self._queue
        while True:
            if not queue:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch: list[_Job] = []
            n = calls = 0
            while queue:
                nxt = queue[0]
                if isinstance(nxt, _IngestJob):
                    if batch and n + nxt.n > cap:  # a bigger write still goes, alone
                        break
                    n += nxt.n
                else:
                    if calls >= _MAX_CALLS_PER_COMMIT:
                        break
                    calls += 1
                batch.append(queue.popleft())
            try:
                await self._run_group(batch)
            except asyncio.CancelledError:
                for job in batch:
                    job.result, job.error = None, StoreUnavailable("the store's writer stopped")
                raise
            except BaseException as exc:  # a bug: fail these callers, keep the writer alive
                for job in batch:
                    job.result, job.error = None, StoreError(f"store writer failed: {exc!r}")
            finally:
                self._pending -= n
                self._answer(batch)

    @staticmethod
    def _answer(jobs: list[_Job]) -> None:
        for job in jobs:
            fut = job.future
            if fut.done():  # the caller was cancelled; its write is committed all the same
                continue
            if job.error is not None:
                fut.set_exception(job.error)
            else:
                fut.set_result(job.result)

    async def _run_group(self, jobs: list[_Job]) -> None:
        """Apply ``jobs`` in one transaction, in order: runs of ingest writes as groups, each
        other call in a savepoint of its own."""
        ingest = [j for j in jobs if isinstance(j, _IngestJob)]
        fresh = False
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
            except Exception as exc:
                if isinstance(exc, _NotSent):
                    if not fresh:  # once: a connection that died idle, replaced by the pool
                        fresh = True
                        continue
                    exc = exc.__cause__ or exc
                if _is_retryable(exc) and attempt + 1 < _TX_ATTEMPTS:
                    await asyncio.sleep(random.uniform(0, 0.01 * 2**attempt))
                    continue
                # Nothing of the group is committed (or, if the connection broke during
                # COMMIT, nobody can tell): every caller hears why, none hears "committed".
                self.stats.failed_transactions += 1
                err = _translate(exc)
                if err is exc:
                    err = _rejected(exc)
                for job in jobs:
                    job.result = None
                    job.error = err
                return
            self._observe(time.perf_counter() - started)
            if ingest:
                stats = self.stats
                stats.ingest_commits += 1
                stats.ingest_writes += len(ingest)
                stats.ingest_records += sum(job.n for job in ingest)
                stats.last_commit_seconds = time.perf_counter() - started
                stats.last_batch_writes = len(ingest)
                stats.max_batch_writes = max(stats.max_batch_writes, len(ingest))
            return

    async def _apply_jobs(self, conn: Conn, jobs: list[_Job]) -> None:
        now = time.time()
        run: list[_IngestJob] = []
        first = True  # nothing done yet in this transaction
        for job in [*jobs, None]:
            if isinstance(job, _IngestJob):
                run.append(job)
                continue
            if run:
                if not await self._apply_group(conn, run, now, first=first):
                    await self._apply_one_by_one(conn, run, now)
                run = []
            if isinstance(job, _CallJob):
                await self._apply_call(conn, job)
            first = False

    @staticmethod
    async def _apply_call(conn: Conn, job: _CallJob) -> None:
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
        conn: Conn, keys: Iterable[tuple[str, str]], now: float
    ) -> dict[tuple[str, str], IdempotencyEntry]:
        """The unexpired stored entries (committed, or earlier in this transaction) among
        ``keys``."""
        keys = list(keys)
        if not keys:
            return {}
        rows = await conn.fetch(_SELECT_IDEM_MANY, [k[0] for k in keys], [k[1] for k in keys], now)
        return {(r[0], r[1]): _idem(r) for r in rows}

    @classmethod
    async def _find_replay(
        cls, conn: Conn, write: IngestWrite, now: float
    ) -> IdempotencyEntry | None:
        """The stored unexpired entry for the first of the write's keys that has one."""
        stored = await cls._stored_entries(
            conn, [(e.access_key_id, e.key) for e in write.idempotency], now
        )
        for e in write.idempotency:
            hit = stored.get((e.access_key_id, e.key))
            if hit is not None:
                return hit
        return None

    @staticmethod
    async def _insert(conn: Conn, writes: list[IngestWrite], now: float) -> set[tuple[str, str]]:
        """Insert the writes' records, deliveries and idempotency entries in one statement;
        return the idempotency keys written (an unexpired entry is never replaced)."""
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
        idem: dict[tuple[str, str], IdempotencyEntry] = {}
        for w in writes:
            for r in w.records:
                rid.append(r.id)
                rgroup.append(r.group_key)
                rkey.append(r.access_key_id)
                rdata.append(r.data_json)
                rat.append(r.received_at)
                rver.append(r.mapping_version)
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
            _INSERT_GROUP,
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
        return {(r[0], r[1]) for r in rows}

    async def _apply_group(
        self, conn: Conn, jobs: list[_IngestJob], now: float, *, first: bool = False
    ) -> bool:
        """Fast path: the whole group in one savepoint. False (and nothing applied) on a
        constraint error or a key another process took meanwhile: redo it write by write.

        ``first``: nothing precedes the group in the transaction, so instead of a savepoint
        (two round trips on every commit) a failure rolls the whole transaction back and
        chains a new one (one round trip, only on failure)."""
        pending = await self._stored_entries(conn, {k for job in jobs for k in job.keys}, now)
        to_insert: list[IngestWrite] = []
        expected: set[tuple[str, str]] = set()
        for job in jobs:
            write = job.write
            replay = None
            for e in write.idempotency:
                replay = pending.get((e.access_key_id, e.key))
                if replay is not None:
                    break
            if replay is not None:
                job.result = IngestResult(committed=False, replay=replay)
                continue
            job.result = IngestResult(committed=True)
            for e in write.idempotency:
                pending[(e.access_key_id, e.key)] = e
            expected |= job.keys
            to_insert.append(write)
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

    async def _apply_one_by_one(self, conn: Conn, jobs: list[_IngestJob], now: float) -> None:
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

    async def _write(self, fn: Fn[R]) -> R:
        """Run ``fn`` inside the writer's next group transaction, in a savepoint of its own
        (tests use it to hold the writer; the store's own writes use :meth:`_tx`)."""
        job = _CallJob(self._loop_for_caller(), fn)
        self._submit(job)
        return await job.future

    # -- ingest ---------------------------------------------------------------------------
    async def commit_ingest(self, write: IngestWrite) -> IngestResult:
        """Queue ``write`` for the next group commit; return once it is committed."""
        for r in write.records:
            if len(r.delivery_ids) != len(r.integrations):
                raise ValueError(
                    f"record {r.id}: {len(r.integrations)} integrations but "
                    f"{len(r.delivery_ids)} delivery ids"
                )
        job = _IngestJob(self._loop_for_caller(), write)
        self._submit(job, job.n)
        # Not shielded on purpose: a cancelled caller stops waiting, but its write stays
        # queued and is committed (it may already be in a transaction).
        return await job.future

    async def get_idempotency(
        self, access_key_id: str, key: str, now: float
    ) -> IdempotencyEntry | None:
        """The unexpired entry for ``key``, if any."""
        row = await self._read(lambda c: c.fetchrow(_SELECT_IDEM, access_key_id, key, now))
        return None if row is None else _idem(row)

    async def purge_idempotency(self, now: float) -> int:
        """Delete expired idempotency entries in chunks (short transactions)."""
        sql = (
            "DELETE FROM idempotency_keys WHERE (access_key_id, key) IN (SELECT access_key_id, "
            "key FROM idempotency_keys WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)"
        )
        total = 0
        while True:
            n = _count(
                await self._tx(lambda c: c.execute(sql, now, _PURGE_CHUNK), transaction=False)
            )
            total += n
            if n < _PURGE_CHUNK:
                return total

    def pending_writes(self) -> int:
        """Records queued but not yet committed."""
        return self._pending

    # -- records --------------------------------------------------------------------------
    async def get_record(self, record_id: str) -> StoredRecord | None:
        """The record and its deliveries (ordered by integration name), or None."""

        async def q(c: Conn) -> StoredRecord | None:
            row = await c.fetchrow(
                "SELECT id, group_key, access_key_id, data, received_at, mapping_version "
                "FROM records WHERE id = $1",
                record_id,
            )
            if row is None:
                return None
            rows = await c.fetch(
                f"SELECT {_DELIVERY_COLS} FROM deliveries WHERE record_id = $1 "
                "ORDER BY integration, id",
                record_id,
            )
            deliveries = [_delivery(d) for d in rows]
            return StoredRecord(row[0], row[1], row[2], bytes(row[3]), row[4], row[5], deliveries)

        return await self._snapshot(q)

    async def count_records(self) -> int:
        """How many records are stored."""
        return await self._read(lambda c: c.fetchval("SELECT count(*) FROM records"))

    # -- access keys ----------------------------------------------------------------------
    _KEY_COLS = (
        "access_key_id, secret_ciphertext, groups, name, created_at, revoked_at, rate_limit, "
        "rate_burst"
    )

    async def create_access_key(self, key: AccessKey) -> None:
        """Store a new access key; StoreError if the id exists."""
        args = (
            key.access_key_id,
            key.secret_ciphertext,
            orjson.dumps(list(key.groups)).decode(),
            key.name,
            key.created_at,
            key.revoked_at,
            key.rate_limit,
            key.rate_burst,
        )
        await self._tx(
            lambda c: c.execute(
                f"INSERT INTO access_keys ({self._KEY_COLS}) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                *args,
            ),
            transaction=False,
        )

    async def get_access_key(self, access_key_id: str) -> AccessKey | None:
        """The key, revoked or not, or None."""
        row = await self._read(
            lambda c: c.fetchrow(
                f"SELECT {self._KEY_COLS} FROM access_keys WHERE access_key_id = $1",
                access_key_id,
            )
        )
        return None if row is None else _access_key(row)

    async def list_access_keys(self) -> list[AccessKey]:
        """Every key, oldest first."""
        rows = await self._read(
            lambda c: c.fetch(
                f"SELECT {self._KEY_COLS} FROM access_keys ORDER BY created_at, access_key_id"
            )
        )
        return [_access_key(r) for r in rows]

    async def revoke_access_key(self, access_key_id: str, now: float) -> bool:
        """Mark the key revoked (keeping the first revocation time); False if unknown."""
        status = await self._tx(
            lambda c: c.execute(
                "UPDATE access_keys SET revoked_at = coalesce(revoked_at, $1) "
                "WHERE access_key_id = $2",
                now,
                access_key_id,
            ),
            transaction=False,
        )
        return _count(status) > 0

    # -- deliveries -----------------------------------------------------------------------
    async def claim_deliveries(
        self,
        owner: str,
        *,
        limit: int,
        lease_seconds: float,
        now: float,
        group_key: str | None = None,
        integration: str | None = None,
    ) -> list[ClaimedDelivery]:
        """Lease up to ``limit`` due pending deliveries to ``owner``, oldest due first.

        One statement: the due rows are locked ``FOR UPDATE SKIP LOCKED`` (rows another
        claimer holds are passed over, never waited for) and leased. PostgreSQL re-checks a
        locked row against the conditions, so a delivery another process leased meanwhile is
        never taken.
        """
        if limit <= 0:
            return []
        where = [
            "state = 'pending'",
            "next_attempt_at <= $1",
            "(lease_expires_at IS NULL OR lease_expires_at <= $1)",
        ]
        params: list[Any] = [now, limit, owner, now + lease_seconds]
        if group_key is not None:
            params.append(group_key)
            where.append(f"group_key = ${len(params)}")
        if integration is not None:
            params.append(integration)
            where.append(f"integration = ${len(params)}")
        sql = (
            f"WITH c AS (SELECT id FROM deliveries WHERE {' AND '.join(where)} "
            "ORDER BY next_attempt_at, id LIMIT $2 FOR UPDATE SKIP LOCKED), "
            "u AS (UPDATE deliveries AS d SET lease_owner = $3, lease_expires_at = $4, "
            f"updated_at = $1 FROM c WHERE d.id = c.id RETURNING {_cols('d')}) "
            f"SELECT {_cols('u')}, r.data, r.received_at FROM u "
            "JOIN records AS r ON r.id = u.record_id ORDER BY u.next_attempt_at, u.id"
        )
        rows = await self._tx(lambda c: c.fetch(sql, *params), transaction=False)
        return [ClaimedDelivery(_delivery(r), bytes(r[14]), r[15]) for r in rows]

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
        attempts = [(u.delivery_id, u.attempt) for u in updates if u.attempt is not None]
        attempts = [(d, a) for d, a in attempts if first[d].attempt is a]

        async def apply(c: Conn) -> int:
            now = time.time()
            return await c.fetchval(
                _UPDATE_DELIVERIES,
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
            )

        return await self._tx(apply, transaction=False)

    @staticmethod
    def _filter_where(flt: DeliveryFilter, params: list[Any]) -> list[str]:
        where: list[str] = []
        if flt.group_key is not None:
            params.append(flt.group_key)
            where.append(f"group_key = ${len(params)}")
        if flt.integration is not None:
            params.append(flt.integration)
            where.append(f"integration = ${len(params)}")
        if flt.created_after is not None:
            params.append(flt.created_after)
            where.append(f"created_at > ${len(params)}")
        if flt.created_before is not None:
            params.append(flt.created_before)
            where.append(f"created_at < ${len(params)}")
        return where

    async def list_deliveries(
        self, flt: DeliveryFilter, *, cursor: str | None = None, limit: int = 100
    ) -> Page[Delivery]:
        """Deliveries matching ``flt`` in id (creation) order, ``limit`` per page; the cursor is
        the last id of the previous page, so paging is stable while deliveries are added."""
        if limit <= 0:
            raise ValueError("limit must be positive")
        params: list[Any] = []
        where: list[str] = []
        if cursor is not None:
            params.append(decode_cursor(cursor))
            where.append(f"id > ${len(params)}")
        if flt.state == DeliveryState.DEAD:
            where.append("state = 'dead'")  # a literal: the partial index deliveries_dead
        elif flt.state is not None:
            params.append(str(flt.state))
            where.append(f"state = ${len(params)}")
        where += self._filter_where(flt, params)
        params.append(limit + 1)  # one more than a page tells whether another page exists
        sql = (
            f"SELECT {_DELIVERY_COLS} FROM deliveries"
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + f" ORDER BY id LIMIT ${len(params)}"
        )
        rows = await self._read(lambda c: c.fetch(sql, *params))
        items = [_delivery(r) for r in rows[:limit]]
        more = len(rows) > limit
        return Page(items, encode_cursor(items[-1].id) if more else None)

    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        """One delivery by id, whatever its state, or None."""
        row = await self._read(
            lambda c: c.fetchrow(
                f"SELECT {_DELIVERY_COLS} FROM deliveries WHERE id = $1", delivery_id
            )
        )
        return None if row is None else _delivery(row)

    async def list_attempts(self, delivery_id: str) -> list[Attempt]:
        """Every recorded attempt of a delivery, oldest first."""
        rows = await self._read(
            lambda c: c.fetch(
                "SELECT delivery_id, started_at, duration_ms, status, error, mapping_version "
                "FROM attempts WHERE delivery_id = $1 ORDER BY id",
                delivery_id,
            )
        )
        return [Attempt(*r) for r in rows]

    # -- the delivery engine --------------------------------------------------------------
    async def release_deliveries(self, owner: str, ids: list[str], at: float) -> int:
        """Give deliveries still leased to ``owner`` back, due at ``at``; return how many."""
        if not ids:
            return 0
        status = await self._tx(
            lambda c: c.execute(
                "UPDATE deliveries SET next_attempt_at = $1, lease_owner = NULL, "
                "lease_expires_at = NULL, updated_at = $2 "
                "WHERE id = ANY($3::text[]) AND lease_owner = $4",
                at,
                time.time(),
                sorted(set(ids)),
                owner,
            ),
            transaction=False,
        )
        return _count(status)

    async def reschedule_lane(
        self,
        group_key: str,
        integration: str,
        *,
        at: float,
        only_earlier: bool,
        before: float | None = None,
    ) -> int:
        """Move the lane's unleased pending deliveries to ``at`` in one statement (see
        SQLiteStore.reschedule_lane). A row a claimer holds is waited for, then re-checked:
        if it is leased by then, it is left alone."""
        sql = (
            "UPDATE deliveries SET next_attempt_at = $1, updated_at = $2 "
            "WHERE state = 'pending' AND group_key = $3 AND integration = $4 "
            "AND (lease_owner IS NULL OR lease_expires_at <= $2)"
            + (" AND next_attempt_at < $1" if only_earlier else "")
            + (" AND next_attempt_at < $5" if before is not None else "")
        )

        async def reschedule(c: Conn) -> int:
            params: list[Any] = [at, time.time(), group_key, integration]
            if before is not None:
                params.append(before)
            return _count(await c.execute(sql, *params))

        return await self._tx(reschedule, transaction=False)

    async def replay_deliveries(
        self,
        *,
        now: float,
        ids: list[str] | None = None,
        flt: DeliveryFilter | None = None,
        limit: int = 10000,
    ) -> list[str]:
        """Put dead (or delivered) deliveries back to pending, due ``now``; return their ids
        (see SQLiteStore.replay_deliveries). Selected and locked, then updated, in one
        statement; the state guard is checked again on the locked rows."""
        if (ids is None) == (flt is None):
            raise ValueError("replay by ids or by filter: give exactly one of ids and flt")
        if limit <= 0:
            raise ValueError("limit must be positive")
        params: list[Any] = [now, limit]
        if ids is not None:
            if not ids:
                return []
            params.append(sorted(set(ids)))
            where = ["id = ANY($3::text[])", "(state = 'dead' OR state = 'delivered')"]
        else:
            assert flt is not None
            state = DeliveryState.DEAD if flt.state is None else flt.state
            if state == DeliveryState.PENDING:
                raise ValueError("pending deliveries cannot be replayed (they are in flight)")
            where = ["state = 'dead'" if state == DeliveryState.DEAD else "state = 'delivered'"]
            where += self._filter_where(flt, params)
        sql = (
            _REPLAY_SET + f"WHERE id IN (SELECT id FROM deliveries WHERE {' AND '.join(where)} "
            "ORDER BY id LIMIT $2 FOR UPDATE) AND (state = 'dead' OR state = 'delivered') "
            "RETURNING id"
        )
        rows = await self._tx(lambda c: c.fetch(sql, *params), transaction=False)
        return sorted(r[0] for r in rows)

    async def lane_stats(self, now: float) -> list[LaneStats]:
        """Per lane with any pending or dead delivery: counts and the oldest pending, sorted
        by lane; one statement, so one snapshot."""
        rows = await self._read(
            lambda c: c.fetch(
                "SELECT group_key, integration, count(*), "
                "count(*) FILTER (WHERE next_attempt_at <= $1), min(created_at), 0::bigint "
                "FROM deliveries WHERE state = 'pending' GROUP BY group_key, integration "
                "UNION ALL "
                "SELECT group_key, integration, 0, 0, NULL, count(*) "
                "FROM deliveries WHERE state = 'dead' GROUP BY group_key, integration",
                now,
            )
        )
        lanes: dict[tuple[str, str], LaneStats] = {}
        for g, i, pending, due, oldest, dead in rows:
            stats = lanes.get((g, i))
            if stats is None:
                lanes[(g, i)] = LaneStats(g, i, pending, due, dead, oldest)
            else:
                stats.pending += pending
                stats.due += due
                stats.dead += dead
                if oldest is not None:
                    stats.oldest_pending_at = oldest
        return [lanes[k] for k in sorted(lanes)]

    async def set_lane_paused(
        self, group_key: str, integration: str, paused: bool, now: float
    ) -> bool:
        """Pause or resume a lane durably; True when that changed something. Pausing a paused
        lane keeps its first ``paused_at``."""
        if paused:
            sql = (
                "INSERT INTO paused_lanes (group_key, integration, paused_at) "
                "VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
            )
            args: tuple[Any, ...] = (group_key, integration, now)
        else:
            sql = "DELETE FROM paused_lanes WHERE group_key = $1 AND integration = $2"
            args = (group_key, integration)
        status = await self._tx(lambda c: c.execute(sql, *args), transaction=False)
        return _count(status) > 0

    async def paused_lanes(self) -> set[tuple[str, str]]:
        """Every paused lane as (group_key, integration)."""
        rows = await self._read(
            lambda c: c.fetch("SELECT group_key, integration FROM paused_lanes")
        )
        return {(r[0], r[1]) for r in rows}

    async def purge_delivered(self, before: float, limit: int = 5000) -> int:
        """Delete up to ``limit`` old, fully delivered records in one transaction; return how
        many (see SQLiteStore.purge_delivered for how old records are found by id).

        The candidates' deliveries are locked before the final check, so a delivery replayed
        by another process at the same moment keeps its record: the check runs after that
        replay committed. Candidate records are locked ``SKIP LOCKED``: concurrent purgers
        share the work instead of waiting on each other.
        """
        if limit <= 0:
            return 0
        ms = min(max(int(before * 1000), 0), 16**12 - 1)
        bound = f"{_RECORD_ID_PREFIX}{ms:012x}"
        unfinished = (
            "EXISTS (SELECT 1 FROM deliveries AS d WHERE d.record_id = r.id "
            "AND (d.state = 'pending' OR d.state = 'dead'))"
        )

        async def purge(c: Conn) -> int:
            rows = await c.fetch(
                "SELECT r.id FROM records AS r WHERE r.id < $1 AND r.received_at < $2 "
                f"AND NOT {unfinished} ORDER BY r.id LIMIT $3 FOR UPDATE OF r SKIP LOCKED",
                bound,
                before,
                limit,
            )
            if not rows:
                return 0
            ids = [r[0] for r in rows]
            await c.execute(
                "SELECT 1 FROM deliveries WHERE record_id = ANY($1::text[]) ORDER BY id FOR UPDATE",
                ids,
            )
            status = await c.execute(
                f"DELETE FROM records AS r WHERE r.id = ANY($1::text[]) AND NOT {unfinished}",
                ids,
            )
            return _count(status)

        return await self._tx(purge)


@contextlib.asynccontextmanager
async def connect(url: str) -> AsyncIterator[Conn]:
    """One plain connection to the database a store URL names (tools and tests)."""
    dsn, options = parse_url(url)
    conn = await asyncpg.connect(dsn, timeout=options["connect_timeout"])
    try:
        yield conn
    finally:
        await conn.close()
