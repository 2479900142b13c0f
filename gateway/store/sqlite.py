"""The SQLite store backend: one file in WAL mode, one writer thread with group commit.

Why this shape:

- SQLite allows one writer at a time, and with ``synchronous=FULL`` every commit costs an
  fsync (milliseconds). Committing each ingest request on its own would cap ingest at a few
  hundred requests per second. So one dedicated *writer thread* owns the only write connection
  and commits in groups: it takes the first queued write, drains whatever else is already
  queued (up to :attr:`SQLiteStore.max_batch_records` records), applies them all in one
  ``BEGIN IMMEDIATE ... COMMIT`` and only then answers each caller. No timer: the next group
  starts as soon as the previous commit ends, so a lone write is never delayed and a burst
  shares fsyncs.
- Each write in a group must succeed or fail alone. The writer first tries the whole group
  with one set of ``executemany`` calls (fast: no per-row round trips through Python); if
  that hits a constraint error it rolls back to a savepoint and redoes the group one write per
  SAVEPOINT, so only the offending write gets the error.
- Readers never wait for the writer: WAL lets them read the last committed state while a
  write transaction is open. Reads run on a small thread pool, each thread with its own
  connection, so the event loop never blocks on disk.
- Every other write (access keys, claims, delivery updates, purges) also goes through the
  writer thread, so there is exactly one writer and no ``database is locked`` between our
  own connections. They join the same group commit, each in a savepoint of its own (at most
  64 a group): with the delivery engine running, claims and updates would otherwise each pay
  an fsync and starve ingest of the writer.
- Any operational SQLite error (disk I/O, disk full, read-only file, locked past the busy
  timeout) becomes :class:`StoreUnavailable` for the callers of that transaction; the writer
  drops its connection and opens a fresh one for the next job, so it keeps serving once the
  cause is gone.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

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

R = TypeVar("R")

SYNCHRONOUS_MODES = ("FULL", "NORMAL")

# Column order matches the positional fields of base.Delivery (see _delivery()).
_DELIVERY_COLS = (
    "id, record_id, group_key, integration, state, attempts, next_attempt_at, created_at, "
    "updated_at, lease_owner, lease_expires_at, last_error, last_status, delivered_at"
)
_D_DELIVERY_COLS = ", ".join("d." + c.strip() for c in _DELIVERY_COLS.split(","))

_INSERT_RECORD = (
    "INSERT INTO records (id, group_key, access_key_id, data, received_at, mapping_version) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
# state, attempts and the lease columns take their defaults (pending, 0, NULL): fewer bound
# parameters per row on the hottest insert.
_INSERT_DELIVERY = (
    "INSERT INTO deliveries (id, record_id, group_key, integration, next_attempt_at, "
    "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# OR REPLACE: the caller has already checked that no *unexpired* entry holds the key, so a
# conflicting row can only be an expired one, which a new answer replaces.
_INSERT_IDEM = (
    "INSERT OR REPLACE INTO idempotency_keys (access_key_id, key, request_hash, status, "
    "response, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_SELECT_IDEM = (
    "SELECT access_key_id, key, request_hash, status, response, created_at, expires_at "
    "FROM idempotency_keys WHERE access_key_id = ? AND key = ? AND expires_at > ?"
)
# Every idempotency key of a whole group looked up in one statement: one statement per group
# rather than one per write keeps the writer thread's share of the GIL small under load.
_SELECT_IDEM_MANY = (
    "SELECT i.access_key_id, i.key, i.request_hash, i.status, i.response, i.created_at, "
    "i.expires_at FROM json_each(?) AS j JOIN idempotency_keys AS i "
    "ON i.access_key_id = j.value ->> 0 AND i.key = j.value ->> 1 WHERE i.expires_at > ?"
)
_UPDATE_DELIVERY = (
    "UPDATE deliveries SET state = ?, next_attempt_at = ?, last_error = ?, last_status = ?, "
    "attempts = attempts + ?, delivered_at = CASE WHEN ? THEN ? ELSE delivered_at END, "
    "lease_owner = NULL, lease_expires_at = NULL, updated_at = ? "
    "WHERE id = ? AND lease_owner = ?"
)
_INSERT_ATTEMPT = (
    "INSERT INTO attempts (delivery_id, started_at, duration_ms, status, error, "
    "mapping_version) VALUES (?, ?, ?, ?, ?, ?)"
)
# Gives a lease back unsent: no attempt, state and last error untouched.
_RELEASE_DELIVERY = (
    "UPDATE deliveries SET next_attempt_at = ?, lease_owner = NULL, lease_expires_at = NULL, "
    "updated_at = ? WHERE id = ? AND lease_owner = ?"
)
# The state guard repeats the SELECT's, so a replay can never reset a pending delivery.
_REPLAY_DELIVERY = (
    "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?, "
    "delivered_at = NULL, lease_owner = NULL, lease_expires_at = NULL, updated_at = ? "
    "WHERE id = ? AND (state = 'dead' OR state = 'delivered')"
)
# gateway.ids.record_id(): this prefix, then the creation time in milliseconds as 12 hex
# digits, then random digits.
_RECORD_ID_PREFIX = "rec_"
_PURGE_CHUNK = 5000
# Other writes (claims, delivery updates) sharing one commit with ingest groups; bounded so a
# flood of them cannot hold ingest's commit (and its 202s) for long.
_MAX_CALLS_PER_COMMIT = 64


@dataclass(slots=True)
class CommitStats:
    """Counters of the writer thread, for tests and metrics (read without locking)."""

    commits: int = 0  # write transactions committed (ingest groups and other writes)
    ingest_commits: int = 0  # group-commit transactions of commit_ingest
    ingest_writes: int = 0  # IngestWrites answered from a committed transaction
    ingest_records: int = 0  # records those writes carried (replays included)
    failed_transactions: int = 0  # transactions lost to StoreUnavailable
    last_commit_seconds: float = 0.0  # BEGIN to COMMIT of the last ingest group
    last_batch_writes: int = 0  # writes in the last ingest group
    max_batch_writes: int = 0  # the largest ingest group so far


class _Job:
    """A unit of work for the writer thread and how to answer its caller."""

    __slots__ = ("error", "future", "loop", "result")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()
        self.result: Any = None
        self.error: BaseException | None = None


class _IngestJob(_Job):
    __slots__ = ("n", "write")

    def __init__(self, loop: asyncio.AbstractEventLoop, write: IngestWrite) -> None:
        super().__init__(loop)
        self.write = write
        self.n = len(write.records)


class _CallJob(_Job):
    __slots__ = ("fn",)

    def __init__(
        self, loop: asyncio.AbstractEventLoop, fn: Callable[[sqlite3.Connection], Any]
    ) -> None:
        super().__init__(loop)
        self.fn = fn


def _resolve(jobs: list[_Job]) -> None:
    """Answer callers; runs on their event loop (scheduled with call_soon_threadsafe)."""
    for job in jobs:
        fut = job.future
        if fut.done():  # the caller was cancelled; its write is committed all the same
            continue
        if job.error is not None:
            fut.set_exception(job.error)
        else:
            fut.set_result(job.result)


def _is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` is the database failing (503) rather than this write being wrong.

    Constraint violations, bad parameters and misuse are the write's own fault; I/O errors,
    full disks, locks, read-only files and corruption are the store's.
    """
    if isinstance(exc, sqlite3.OperationalError | sqlite3.InternalError):
        return True
    # A bare DatabaseError is SQLITE_CORRUPT / SQLITE_NOTADB and the like.
    return type(exc) is sqlite3.DatabaseError


def _unavailable(exc: BaseException) -> StoreUnavailable:
    name = getattr(exc, "sqlite_errorname", None)
    reason = f"{exc} ({name})" if name else str(exc)
    err = StoreUnavailable(f"SQLite: {reason}")
    err.__cause__ = exc
    return err


def _rejected(exc: BaseException) -> StoreError:
    err = StoreError(f"write rejected: {exc}")
    err.__cause__ = exc
    return err


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


def _fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` durable (a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # e.g. Windows, or a filesystem that cannot sync directories
        pass
    finally:
        os.close(fd)


def _narrow(flt: DeliveryFilter, where: list[str], params: list[Any]) -> None:
    """Add the filter's group, integration and creation-time conditions (its state is each
    caller's: they spell it so the planner picks their index)."""
    for value, clause in (
        (flt.group_key, "group_key = ?"),
        (flt.integration, "integration = ?"),
        (flt.created_after, "created_at > ?"),
        (flt.created_before, "created_at < ?"),
    ):
        if value is not None:
            where.append(clause)
            params.append(value)


def encode_cursor(last_id: str) -> str:
    """An opaque pagination cursor: the last delivery id seen, URL-safe base64."""
    return base64.urlsafe_b64encode(last_id.encode()).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> str:
    """The delivery id inside ``cursor``; ValueError if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = raw.decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError(f"invalid cursor {cursor!r}") from None
    if not value or not value.isprintable():
        raise ValueError(f"invalid cursor {cursor!r}")
    return value


class SQLiteStore(Store):
    """The store in one SQLite file (WAL), with group commit on a dedicated writer thread."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        max_pending_writes: int = 50000,
        busy_timeout: float = 5.0,
        max_batch_records: int = 5000,
        read_threads: int = 4,
    ) -> None:
        """Configure; nothing touches the disk until :meth:`open`.

        ``synchronous``: ``FULL`` (default) fsyncs every commit, so an answered write survives
        a power cut; ``NORMAL`` survives a process crash only. ``busy_timeout``: seconds to wait
        for a lock held by another process before failing with :class:`StoreUnavailable`.
        """
        mode = synchronous.upper()
        if mode not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}, not {synchronous!r}")
        if max_pending_writes <= 0 or max_batch_records <= 0 or read_threads <= 0:
            raise ValueError("max_pending_writes, max_batch_records and read_threads must be > 0")
        self.path = Path(path)
        self.synchronous = mode
        self.max_pending_writes = max_pending_writes
        self.max_batch_records = max_batch_records
        self.busy_timeout = busy_timeout
        self.stats = CommitStats()
        # Called on the writer thread with each committed write transaction's duration
        # (BEGIN to COMMIT, seconds): metrics. Keep it cheap and thread-safe; its errors are
        # swallowed, never the caller's.
        self.on_commit_seconds: Callable[[float], None] | None = None
        self.migrations_applied: list[int] = []  # versions the last open() applied

        self._read_threads = read_threads
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[_Job] = collections.deque()
        self._pending = 0  # records queued, not yet committed (guarded by _cond)
        self._accepting = False  # guarded by _cond: open and not closing
        self._stopping = False  # guarded by _cond: the writer exits once the queue is empty
        self._opened = False
        self._closed = False
        self._writer: threading.Thread | None = None
        self._wconn: sqlite3.Connection | None = None  # owned by the writer thread
        self._readers: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def commits(self) -> int:
        """Write transactions committed so far (see :attr:`stats` for the details)."""
        return self.stats.commits

    def _connect(self, *, writer: bool) -> sqlite3.Connection:
        # isolation_level=None: autocommit mode, we issue BEGIN/COMMIT ourselves (the
        # sqlite3 module's implicit transactions would defeat BEGIN IMMEDIATE and savepoints).
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=False,
            cached_statements=256,
            timeout=self.busy_timeout,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            if writer:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreUnavailable(f"SQLite: cannot use WAL mode (journal_mode={mode})")
                # FULL: the WAL is fsynced at every commit, so a commit survives power loss.
                conn.execute(f"PRAGMA synchronous = {self.synchronous}")
                # Keep the WAL file from staying huge after a burst.
                conn.execute("PRAGMA journal_size_limit = 67108864")
                conn.execute("PRAGMA cache_size = -32768")  # 32 MiB
            else:
                # Readers never write; a bug that tried would fail loudly instead of taking
                # the write lock away from the writer thread.
                conn.execute("PRAGMA query_only = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect(writer=True)
        try:
            self.migrations_applied = migrations.apply_sqlite(conn)
        except BaseException:
            conn.close()
            raise
        self._wconn = conn
        # SQLite fsyncs the directory when it creates a journal or WAL file, but not when it
        # creates the database file itself: without this, a power cut soon after the first
        # start could lose the file's directory entry, and every record in it.
        _fsync_dir(self.path.parent)

    async def open(self) -> None:
        """Create the file if needed, apply pending migrations, start the writer thread."""
        if self._opened or self._closed:
            raise StoreError("a store is opened once; make a new one to reopen")
        try:
            await asyncio.to_thread(self._open_sync)
        except sqlite3.Error as exc:
            raise _unavailable(exc) from exc
        except OSError as exc:
            raise StoreUnavailable(f"cannot create the store at {self.path}: {exc}") from exc
        self._readers = ThreadPoolExecutor(
            max_workers=self._read_threads, thread_name_prefix="store-read"
        )
        self._writer = threading.Thread(target=self._writer_main, name="store-writer", daemon=True)
        with self._cond:
            self._accepting = True
            self._opened = True
        self._writer.start()

    async def close(self) -> None:
        """Commit and answer every queued write, then stop the writer and close connections."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._accepting = False
            self._stopping = True
            self._cond.notify_all()
        if self._writer is not None:
            await asyncio.to_thread(self._writer.join)
        if self._readers is not None:
            readers = self._readers
            await asyncio.to_thread(readers.shutdown, True)
        with self._reader_lock:
            for conn in self._reader_conns:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._reader_conns.clear()

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the writer thread runs and a read succeeds."""
        if self._writer is None or not self._writer.is_alive():
            raise StoreUnavailable("the store's writer is not running")
        await self._read(lambda c: c.execute("SELECT 1").fetchone())

    # -- the writer thread ----------------------------------------------------------------
    def _submit(self, job: _Job, n_records: int = 0) -> None:
        """Queue ``job`` for the writer, or raise (closed / overloaded)."""
        with self._cond:
            if not self._accepting:
                raise StoreUnavailable("store is closed" if self._closed else "store is not open")
            if n_records and self._pending + n_records > self.max_pending_writes:
                raise StoreOverloaded(
                    f"{self._pending} records are waiting for a commit; accepting "
                    f"{n_records} more would exceed the limit of {self.max_pending_writes}"
                )
            self._pending += n_records
            self._queue.append(job)
            self._cond.notify()

    def _writer_main(self) -> None:
        """Serve the queue until close. Everything waiting goes into one transaction (one
        fsync): ingest writes in groups, other writes (claims, delivery updates) each in its
        own savepoint, in queue order."""
        cap = self.max_batch_records
        queue = self._queue
        while True:
            with self._cond:
                while not queue and not self._stopping:
                    self._cond.wait()
                if not queue:  # stopping, and every queued write has been served
                    break
                batch: list[_Job] = []
                n = calls = 0
                while queue:
                    nxt = queue[0]
                    if isinstance(nxt, _IngestJob):
                        # A write bigger than the cap still goes (alone): it is never split.
                        if batch and n + nxt.n > cap:
                            break
                        n += nxt.n
                    else:
                        if calls >= _MAX_CALLS_PER_COMMIT:
                            break
                        calls += 1
                    batch.append(queue.popleft())
            try:
                self._run_group(batch)
            except BaseException as exc:  # a bug: fail these callers, keep the writer alive
                for job in batch:
                    job.result, job.error = None, StoreError(f"store writer failed: {exc!r}")
            finally:
                if n:
                    with self._cond:
                        self._pending -= n
            self._answer(batch)
        if self._wconn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._wconn.close()
            self._wconn = None

    def _answer(self, jobs: list[_Job]) -> None:
        # One wake-up per event loop per group, not one per caller.
        by_loop: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
        for job in jobs:
            by_loop.setdefault(job.loop, []).append(job)
        for loop, its_jobs in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody to answer
                loop.call_soon_threadsafe(_resolve, its_jobs)

    def _writer_conn(self) -> sqlite3.Connection:
        if self._wconn is None:
            self._wconn = self._connect(writer=True)
        return self._wconn

    def _drop_writer_conn(self) -> None:
        """Forget the write connection after a failure; the next job opens a fresh one."""
        conn, self._wconn = self._wconn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _transaction(self, body: Callable[[sqlite3.Connection], R]) -> R:
        """Run ``body`` in BEGIN IMMEDIATE ... COMMIT on the write connection."""
        conn = self._writer_conn()
        started = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = body(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        self.stats.commits += 1
        observe = self.on_commit_seconds
        if observe is not None:
            with contextlib.suppress(Exception):
                observe(time.perf_counter() - started)
        return result

    def _run_group(self, jobs: list[_Job]) -> None:
        """Apply ``jobs`` in one transaction, in order: runs of ingest writes as groups,
        each other write in a savepoint of its own, so its failure is its caller's alone."""
        started = time.perf_counter()
        ingest = [j for j in jobs if isinstance(j, _IngestJob)]

        def body(conn: sqlite3.Connection) -> None:
            now = time.time()
            run: list[_IngestJob] = []
            for job in [*jobs, None]:
                if isinstance(job, _IngestJob):
                    run.append(job)
                    continue
                if run:
                    if not self._apply_group(conn, run, now):
                        self._apply_one_by_one(conn, run, now)
                    run = []
                if isinstance(job, _CallJob):
                    self._apply_call(conn, job)

        try:
            self._transaction(body)
        except Exception as exc:
            # Nothing of the group is committed: every caller hears why.
            self.stats.failed_transactions += 1
            if isinstance(exc, sqlite3.Error) and _is_unavailable(exc):
                self._drop_writer_conn()
                err: BaseException = _unavailable(exc)
            elif isinstance(exc, StoreError):
                self._drop_writer_conn()
                err = exc
            else:
                err = _rejected(exc)
            for job in jobs:
                job.result = None
                job.error = err
            return
        if ingest:
            stats = self.stats
            stats.ingest_commits += 1
            stats.ingest_writes += len(ingest)
            stats.ingest_records += sum(job.n for job in ingest)
            stats.last_commit_seconds = time.perf_counter() - started
            stats.last_batch_writes = len(ingest)
            stats.max_batch_writes = max(stats.max_batch_writes, len(ingest))

    @staticmethod
    def _apply_call(conn: sqlite3.Connection, job: _CallJob) -> None:
        conn.execute("SAVEPOINT call")
        try:
            job.result = job.fn(conn)
        except sqlite3.Error as exc:
            if _is_unavailable(exc):
                raise  # the connection or disk is gone: the whole group fails
            conn.execute("ROLLBACK TO call")
            job.error = _rejected(exc)
        except Exception as exc:  # a bug or bad argument: the caller gets it, the writer lives
            conn.execute("ROLLBACK TO call")
            job.error = exc
        conn.execute("RELEASE call")

    @staticmethod
    def _find_replay(
        conn: sqlite3.Connection,
        write: IngestWrite,
        now: float,
        pending: dict[tuple[str, str], IdempotencyEntry] | None = None,
    ) -> IdempotencyEntry | None:
        """The stored (or earlier in this group) unexpired entry for one of the write's keys."""
        for entry in write.idempotency:
            if pending is not None:
                hit = pending.get((entry.access_key_id, entry.key))
                if hit is not None:
                    return hit
            row = conn.execute(_SELECT_IDEM, (entry.access_key_id, entry.key, now)).fetchone()
            if row is not None:
                return IdempotencyEntry(*row[:4], bytes(row[4]), row[5], row[6])
        return None

    @staticmethod
    def _stored_entries(
        conn: sqlite3.Connection, jobs: list[_IngestJob], now: float
    ) -> dict[tuple[str, str], IdempotencyEntry]:
        """The unexpired stored entries for every idempotency key of the group."""
        keys = [(e.access_key_id, e.key) for job in jobs for e in job.write.idempotency]
        if not keys:
            return {}
        rows = conn.execute(_SELECT_IDEM_MANY, (orjson.dumps(keys), now)).fetchall()
        return {(r[0], r[1]): IdempotencyEntry(*r[:4], bytes(r[4]), r[5], r[6]) for r in rows}

    @staticmethod
    def _insert(conn: sqlite3.Connection, writes: list[IngestWrite], now: float) -> None:
        """Insert the writes' records, deliveries and idempotency entries (executemany)."""
        records = []
        deliveries = []
        idem = []
        for w in writes:
            for r in w.records:
                records.append(
                    (r.id, r.group_key, r.access_key_id, r.data_json, r.received_at,
                     r.mapping_version)
                )  # fmt: skip
                at = r.received_at
                for did, integ in zip(r.delivery_ids, r.integrations, strict=True):
                    deliveries.append((did, r.id, r.group_key, integ, at, at, now))
            for e in w.idempotency:
                idem.append(
                    (e.access_key_id, e.key, e.request_hash, e.status, e.response, e.created_at,
                     e.expires_at)
                )  # fmt: skip
        if records:
            conn.executemany(_INSERT_RECORD, records)
        if deliveries:
            conn.executemany(_INSERT_DELIVERY, deliveries)
        if idem:
            conn.executemany(_INSERT_IDEM, idem)

    def _apply_group(self, conn: sqlite3.Connection, jobs: list[_IngestJob], now: float) -> bool:
        """Fast path: the whole group in one savepoint. False (and nothing applied) on a
        constraint error, so the caller redoes it write by write."""
        pending = self._stored_entries(conn, jobs, now)
        to_insert: list[IngestWrite] = []
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
            to_insert.append(write)
        conn.execute("SAVEPOINT ingest_group")
        try:
            self._insert(conn, to_insert, now)
        except Exception as exc:
            if isinstance(exc, sqlite3.Error) and _is_unavailable(exc):
                raise
            conn.execute("ROLLBACK TO ingest_group")
            conn.execute("RELEASE ingest_group")
            return False
        conn.execute("RELEASE ingest_group")
        return True

    def _apply_one_by_one(
        self, conn: sqlite3.Connection, jobs: list[_IngestJob], now: float
    ) -> None:
        """Slow path: each write in its own savepoint, so a bad one fails alone."""
        for job in jobs:
            write = job.write
            job.result = None
            job.error = None
            # Earlier writes of this group are already inserted in this transaction, so a
            # plain lookup sees them: a same-key write in the same group is a replay.
            replay = self._find_replay(conn, write, now) if write.idempotency else None
            if replay is not None:
                job.result = IngestResult(committed=False, replay=replay)
                continue
            conn.execute("SAVEPOINT ingest_write")
            try:
                self._insert(conn, [write], now)
            except Exception as exc:
                if isinstance(exc, sqlite3.Error) and _is_unavailable(exc):
                    raise
                conn.execute("ROLLBACK TO ingest_write")
                conn.execute("RELEASE ingest_write")
                job.error = _rejected(exc)
                continue
            conn.execute("RELEASE ingest_write")
            job.result = IngestResult(committed=True)

    async def _write(self, fn: Callable[[sqlite3.Connection], R]) -> R:
        """Run ``fn`` in its own transaction on the writer thread."""
        job = _CallJob(asyncio.get_running_loop(), fn)
        self._submit(job)
        return await job.future

    # -- readers --------------------------------------------------------------------------
    def _reader_conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect(writer=False)
            self._local.conn = conn
            with self._reader_lock:
                self._reader_conns.append(conn)
        return conn

    def _drop_reader_conn(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with self._reader_lock:
                if conn in self._reader_conns:
                    self._reader_conns.remove(conn)
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _read_sync(self, fn: Callable[[sqlite3.Connection], R]) -> R:
        try:
            return fn(self._reader_conn())
        except sqlite3.Error as exc:
            if _is_unavailable(exc):
                self._drop_reader_conn()
                raise _unavailable(exc) from exc
            raise StoreError(f"read failed: {exc}") from exc

    async def _read(self, fn: Callable[[sqlite3.Connection], R]) -> R:
        """Run ``fn`` on a reader thread with that thread's connection."""
        readers = self._readers
        if readers is None or self._closed:
            raise StoreUnavailable("store is closed" if self._closed else "store is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(readers, self._read_sync, fn)
        except RuntimeError as exc:  # the executor was shut down under us by close()
            if self._closed:
                raise StoreUnavailable("store is closed") from exc
            raise

    @staticmethod
    def _snapshot(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], R]) -> R:
        """Several SELECTs in one read transaction: they see the same committed state."""
        conn.execute("BEGIN")
        try:
            return fn(conn)
        finally:
            conn.execute("COMMIT")

    # -- ingest ---------------------------------------------------------------------------
    async def commit_ingest(self, write: IngestWrite) -> IngestResult:
        """Queue ``write`` for the next group commit; return once it is durably committed."""
        for r in write.records:
            # Checked here, in the caller, so a malformed write never reaches a transaction.
            if len(r.delivery_ids) != len(r.integrations):
                raise ValueError(
                    f"record {r.id}: {len(r.integrations)} integrations but "
                    f"{len(r.delivery_ids)} delivery ids"
                )
        job = _IngestJob(asyncio.get_running_loop(), write)
        self._submit(job, job.n)
        # Not shielded on purpose: a cancelled caller stops waiting, but its write stays
        # queued and is committed (it may already be in a transaction).
        return await job.future

    async def get_idempotency(
        self, access_key_id: str, key: str, now: float
    ) -> IdempotencyEntry | None:
        """The unexpired entry for ``key``, if any."""

        def q(c: sqlite3.Connection) -> IdempotencyEntry | None:
            row = c.execute(_SELECT_IDEM, (access_key_id, key, now)).fetchone()
            if row is None:
                return None
            return IdempotencyEntry(*row[:4], bytes(row[4]), row[5], row[6])

        return await self._read(q)

    async def purge_idempotency(self, now: float) -> int:
        """Delete expired idempotency entries in chunks (ingest commits run between them)."""

        def chunk(c: sqlite3.Connection) -> int:
            cur = c.execute(
                "DELETE FROM idempotency_keys WHERE rowid IN (SELECT rowid FROM "
                "idempotency_keys WHERE expires_at <= ? LIMIT ?)",
                (now, _PURGE_CHUNK),
            )
            return cur.rowcount

        total = 0
        while True:
            n = await self._write(chunk)
            total += n
            if n < _PURGE_CHUNK:
                return total

    def pending_writes(self) -> int:
        """Records queued but not yet committed."""
        return self._pending

    # -- records --------------------------------------------------------------------------
    async def get_record(self, record_id: str) -> StoredRecord | None:
        """The record and its deliveries (ordered by integration name), or None."""

        def q(c: sqlite3.Connection) -> StoredRecord | None:
            row = c.execute(
                "SELECT id, group_key, access_key_id, data, received_at, mapping_version "
                "FROM records WHERE id = ?",
                (record_id,),
            ).fetchone()
            if row is None:
                return None
            deliveries = [
                _delivery(d)
                for d in c.execute(
                    f"SELECT {_DELIVERY_COLS} FROM deliveries WHERE record_id = ? "
                    "ORDER BY integration, id",
                    (record_id,),
                )
            ]
            return StoredRecord(row[0], row[1], row[2], bytes(row[3]), row[4], row[5], deliveries)

        return await self._read(lambda c: self._snapshot(c, q))

    async def count_records(self) -> int:
        """How many records are stored."""
        return await self._read(lambda c: c.execute("SELECT count(*) FROM records").fetchone()[0])

    # -- access keys ----------------------------------------------------------------------
    async def create_access_key(self, key: AccessKey) -> None:
        """Store a new access key; StoreError if the id exists."""
        row = (
            key.access_key_id,
            key.secret_ciphertext,
            orjson.dumps(list(key.groups)).decode(),
            key.name,
            key.created_at,
            key.revoked_at,
            key.rate_limit,
            key.rate_burst,
        )
        await self._write(
            lambda c: c.execute(
                "INSERT INTO access_keys (access_key_id, secret_ciphertext, groups, name, "
                "created_at, revoked_at, rate_limit, rate_burst) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
        )

    _KEY_COLS = (
        "access_key_id, secret_ciphertext, groups, name, created_at, revoked_at, rate_limit, "
        "rate_burst"
    )

    async def get_access_key(self, access_key_id: str) -> AccessKey | None:
        """The key, revoked or not, or None."""

        def q(c: sqlite3.Connection) -> AccessKey | None:
            row = c.execute(
                f"SELECT {self._KEY_COLS} FROM access_keys WHERE access_key_id = ?",
                (access_key_id,),
            ).fetchone()
            return None if row is None else _access_key(row)

        return await self._read(q)

    async def list_access_keys(self) -> list[AccessKey]:
        """Every key, oldest first."""

        def q(c: sqlite3.Connection) -> list[AccessKey]:
            rows = c.execute(
                f"SELECT {self._KEY_COLS} FROM access_keys ORDER BY created_at, access_key_id"
            ).fetchall()
            return [_access_key(r) for r in rows]

        return await self._read(q)

    async def revoke_access_key(self, access_key_id: str, now: float) -> bool:
        """Mark the key revoked (keeping the first revocation time); False if unknown."""
        return await self._write(
            lambda c: (
                c.execute(
                    "UPDATE access_keys SET revoked_at = coalesce(revoked_at, ?) "
                    "WHERE access_key_id = ?",
                    (now, access_key_id),
                ).rowcount
                > 0
            )
        )

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
        """Lease up to ``limit`` due pending deliveries to ``owner``, oldest due first."""
        if limit <= 0:
            return []
        # `state = 'pending'` is written literally so the planner can use the partial
        # indexes (deliveries_due, deliveries_lane_due).
        where = [
            "d.state = 'pending'",
            "d.next_attempt_at <= ?",
            "(d.lease_expires_at IS NULL OR d.lease_expires_at <= ?)",
        ]
        params: list[Any] = [now, now]
        if group_key is not None:
            where.append("d.group_key = ?")
            params.append(group_key)
        if integration is not None:
            where.append("d.integration = ?")
            params.append(integration)
        params.append(limit)
        sql = (
            f"SELECT {_D_DELIVERY_COLS}, r.data, r.received_at FROM deliveries d "
            f"JOIN records r ON r.id = d.record_id WHERE {' AND '.join(where)} "
            "ORDER BY d.next_attempt_at, d.id LIMIT ?"
        )
        expires = now + lease_seconds

        def claim(c: sqlite3.Connection) -> list[ClaimedDelivery]:
            rows = c.execute(sql, params).fetchall()
            if not rows:
                return []
            # Inside BEGIN IMMEDIATE with the only writer: nobody can claim between the
            # SELECT and this UPDATE.
            c.executemany(
                "UPDATE deliveries SET lease_owner = ?, lease_expires_at = ?, updated_at = ? "
                "WHERE id = ?",
                [(owner, expires, now, r[0]) for r in rows],
            )
            out = []
            for r in rows:
                d = _delivery(r)
                d.lease_owner = owner
                d.lease_expires_at = expires
                d.updated_at = now
                out.append(ClaimedDelivery(d, bytes(r[14]), r[15]))
            return out

        return await self._write(claim)

    async def update_deliveries(self, updates: list[DeliveryUpdate]) -> int:
        """Apply the updates whose lease is still held, in one transaction; return how many."""
        if not updates:
            return 0

        def apply(c: sqlite3.Connection) -> int:
            now = time.time()
            applied = 0
            attempts = []
            for u in updates:
                delivered = u.state == DeliveryState.DELIVERED
                cur = c.execute(
                    _UPDATE_DELIVERY,
                    (
                        str(u.state),
                        u.next_attempt_at,
                        u.last_error,
                        u.last_status,
                        1 if u.attempt is not None else 0,
                        delivered,
                        now,
                        now,
                        u.delivery_id,
                        u.lease_owner,
                    ),
                )
                if cur.rowcount:
                    applied += 1
                    a = u.attempt
                    if a is not None:
                        attempts.append(
                            (u.delivery_id, a.started_at, a.duration_ms, a.status, a.error,
                             a.mapping_version)
                        )  # fmt: skip
            if attempts:
                c.executemany(_INSERT_ATTEMPT, attempts)
            return applied

        return await self._write(apply)

    async def list_deliveries(
        self, flt: DeliveryFilter, *, cursor: str | None = None, limit: int = 100
    ) -> Page[Delivery]:
        """Deliveries matching ``flt`` in id (creation) order, ``limit`` per page.

        The cursor is the last id of the previous page, so paging is stable while deliveries
        are added: nothing is skipped or repeated.
        """
        if limit <= 0:
            raise ValueError("limit must be positive")
        where: list[str] = []
        params: list[Any] = []
        if cursor is not None:
            where.append("id > ?")
            params.append(decode_cursor(cursor))
        if flt.state == DeliveryState.DEAD:
            # A literal, so the planner can use the partial index deliveries_dead.
            where.append("state = 'dead'")
        elif flt.state is not None:
            # Bound on purpose: no partial index matches, so the planner walks the primary
            # key in id order and stops after a page (instead of sorting every pending row).
            where.append("state = ?")
            params.append(str(flt.state))
        _narrow(flt, where, params)
        params.append(limit + 1)  # one more than a page tells whether another page exists
        sql = (
            f"SELECT {_DELIVERY_COLS} FROM deliveries"
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + " ORDER BY id LIMIT ?"
        )

        def q(c: sqlite3.Connection) -> Page[Delivery]:
            rows = c.execute(sql, params).fetchall()
            items = [_delivery(r) for r in rows[:limit]]
            more = len(rows) > limit
            return Page(items, encode_cursor(items[-1].id) if more else None)

        return await self._read(q)

    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        """One delivery by id, whatever its state, or None."""

        def q(c: sqlite3.Connection) -> Delivery | None:
            row = c.execute(
                f"SELECT {_DELIVERY_COLS} FROM deliveries WHERE id = ?", (delivery_id,)
            ).fetchone()
            return _delivery(row) if row is not None else None

        return await self._read(q)

    async def list_attempts(self, delivery_id: str) -> list[Attempt]:
        """Every recorded attempt of a delivery, oldest first."""

        def q(c: sqlite3.Connection) -> list[Attempt]:
            rows = c.execute(
                "SELECT delivery_id, started_at, duration_ms, status, error, mapping_version "
                "FROM attempts WHERE delivery_id = ? ORDER BY id",
                (delivery_id,),
            ).fetchall()
            return [Attempt(*r) for r in rows]

        return await self._read(q)

    # -- the delivery engine --------------------------------------------------------------
    async def release_deliveries(self, owner: str, ids: list[str], at: float) -> int:
        """Give deliveries still leased to ``owner`` back, due at ``at``; return how many.

        No attempt is counted and state and last error stay: the worker never tried (it is
        shutting down, or its lane was paused or its breaker opened). A delivery whose lease
        another owner has taken is left alone, like in :meth:`update_deliveries`.
        """
        if not ids:
            return 0

        def release(c: sqlite3.Connection) -> int:
            now = time.time()
            cur = c.executemany(_RELEASE_DELIVERY, [(at, now, did, owner) for did in ids])
            return cur.rowcount

        return await self._write(release)

    async def reschedule_lane(
        self,
        group_key: str,
        integration: str,
        *,
        at: float,
        only_earlier: bool,
        before: float | None = None,
    ) -> int:
        """Move the lane's unleased pending deliveries to ``at`` in one statement.

        Leased ones belong to a worker that decides their next time itself. A lease counts as
        gone once expired at the time of the call (the clock is read in the transaction, not
        when the call was queued); the expired lease itself is left in place, so the old
        owner's late update still lands if nobody claimed the delivery since.
        """
        # `state = 'pending'` literal and the lane's equality columns first: the planner walks
        # the partial index deliveries_lane_due for this lane only (and, with only_earlier,
        # only its entries before `at`).
        sql = (
            "UPDATE deliveries SET next_attempt_at = ?, updated_at = ? "
            "WHERE state = 'pending' AND group_key = ? AND integration = ? "
            "AND (lease_owner IS NULL OR lease_expires_at <= ?)"
            + (" AND next_attempt_at < ?" if only_earlier else "")
            + (" AND next_attempt_at < ?" if before is not None else "")
        )

        def reschedule(c: sqlite3.Connection) -> int:
            now = time.time()
            params: list[Any] = [at, now, group_key, integration, now]
            if only_earlier:
                params.append(at)
            if before is not None:
                params.append(before)
            return c.execute(sql, params).rowcount

        return await self._write(reschedule)

    async def replay_deliveries(
        self,
        *,
        now: float,
        ids: list[str] | None = None,
        flt: DeliveryFilter | None = None,
        limit: int = 10000,
    ) -> list[str]:
        """Put dead (or delivered) deliveries back to pending, due ``now``; return their ids.

        Exactly one of ``ids`` and ``flt``. Attempts restart at 0 so the retry policy gives
        the replay its full budget; the attempt rows and ``last_error`` stay as history. The
        lease columns are cleared (a dead or delivered delivery has none, but a row must never
        come back pending with a stale owner). Pending deliveries are never touched: they are
        in flight, and resetting their attempts would defeat the retry limit.
        """
        if (ids is None) == (flt is None):
            raise ValueError("replay by ids or by filter: give exactly one of ids and flt")
        if limit <= 0:
            raise ValueError("limit must be positive")
        if ids is not None:
            if not ids:
                return []
            select = (
                "SELECT id FROM deliveries WHERE id IN (SELECT value FROM json_each(?)) "
                "AND (state = 'dead' OR state = 'delivered') ORDER BY id LIMIT ?"
            )
            params: list[Any] = [orjson.dumps(ids).decode(), limit]
        else:
            assert flt is not None
            state = DeliveryState.DEAD if flt.state is None else flt.state
            if state == DeliveryState.PENDING:
                raise ValueError("pending deliveries cannot be replayed (they are in flight)")
            # Literal states (from this fixed choice, never from the caller's text): dead ones
            # come from the partial index deliveries_dead in id order; delivered ones walk the
            # primary key, where they are dense.
            where = ["state = 'dead'" if state == DeliveryState.DEAD else "state = 'delivered'"]
            params = []
            _narrow(flt, where, params)
            params.append(limit)
            select = f"SELECT id FROM deliveries WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"

        def replay(c: sqlite3.Connection) -> list[str]:
            # Select then update inside BEGIN IMMEDIATE with the only writer: nothing changes
            # between the two, so the ids returned are exactly the rows updated.
            found = [r[0] for r in c.execute(select, params)]
            if found:
                c.executemany(_REPLAY_DELIVERY, [(now, now, did) for did in found])
            return found

        return await self._write(replay)

    async def lane_stats(self, now: float) -> list[LaneStats]:
        """Per lane with any pending or dead delivery: counts and the oldest pending, sorted
        by lane. Both counts come from one snapshot."""

        def q(c: sqlite3.Connection) -> list[LaneStats]:
            # Literal states: the pending side is one ordered walk of deliveries_lane_due
            # (grouped by its leading columns, so no sort), the dead side a scan of
            # deliveries_dead. Neither touches delivered rows, however many pile up.
            lanes: dict[tuple[str, str], LaneStats] = {}
            for g, i, pending, due, oldest in c.execute(
                "SELECT group_key, integration, count(*), "
                "coalesce(sum(next_attempt_at <= ?), 0), min(created_at) "
                "FROM deliveries WHERE state = 'pending' GROUP BY group_key, integration",
                (now,),
            ):
                lanes[(g, i)] = LaneStats(g, i, pending, due, 0, oldest)
            for g, i, dead in c.execute(
                "SELECT group_key, integration, count(*) FROM deliveries "
                "WHERE state = 'dead' GROUP BY group_key, integration"
            ):
                stats = lanes.get((g, i))
                if stats is None:
                    lanes[(g, i)] = LaneStats(g, i, 0, 0, dead, None)
                else:
                    stats.dead = dead
            return [lanes[k] for k in sorted(lanes)]

        return await self._read(lambda c: self._snapshot(c, q))

    async def set_lane_paused(
        self, group_key: str, integration: str, paused: bool, now: float
    ) -> bool:
        """Pause or resume a lane durably; True when that changed something.

        Pausing a paused lane keeps its first ``paused_at`` (when the pause began).
        """

        def set_paused(c: sqlite3.Connection) -> bool:
            if paused:
                cur = c.execute(
                    "INSERT INTO paused_lanes (group_key, integration, paused_at) "
                    "VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                    (group_key, integration, now),
                )
            else:
                cur = c.execute(
                    "DELETE FROM paused_lanes WHERE group_key = ? AND integration = ?",
                    (group_key, integration),
                )
            return cur.rowcount > 0

        return await self._write(set_paused)

    async def paused_lanes(self) -> set[tuple[str, str]]:
        """Every paused lane as (group_key, integration)."""
        return await self._read(
            lambda c: {
                (r[0], r[1]) for r in c.execute("SELECT group_key, integration FROM paused_lanes")
            }
        )

    async def purge_delivered(self, before: float, limit: int = 5000) -> int:
        """Delete up to ``limit`` old, fully delivered records in one transaction; return how
        many.

        Old records are found by a range of the records' primary key rather than an index on
        ``received_at``: record ids begin with their creation time in milliseconds
        (gateway/ids.py), and ingest takes ``received_at`` before it makes the id, so every
        record whose id sorts below ``rec_<ms of before>`` was received before ``before``.
        ``received_at < ?`` is checked as well, so a record whose id does not follow that
        scheme is never purged early; one received in the last millisecond before ``before``
        waits for the next purge. Ingest pays for no extra index.

        A record goes only if none of its deliveries is pending or dead (a record without
        deliveries has nothing left to do). Its deliveries and their attempts go with it by
        ``ON DELETE CASCADE`` (``_connect`` turns foreign keys on for every connection); the
        row count is of records only, as SQLite does not count cascaded deletes.
        """
        if limit <= 0:
            return 0
        ms = min(max(int(before * 1000), 0), 16**12 - 1)
        bound = f"{_RECORD_ID_PREFIX}{ms:012x}"
        # Oldest first (primary-key order), so the records past the retention go in the order
        # they arrived. `state = 'pending' OR state = 'dead'` is spelled out (not `!=
        # 'delivered'`) to state what keeps a record; deliveries_record finds its deliveries.
        sql = (
            "DELETE FROM records WHERE id IN (SELECT r.id FROM records r "
            "WHERE r.id < ? AND r.received_at < ? AND NOT EXISTS ("
            "SELECT 1 FROM deliveries d WHERE d.record_id = r.id "
            "AND (d.state = 'pending' OR d.state = 'dead')) "
            "ORDER BY r.id LIMIT ?)"
        )

        def purge(c: sqlite3.Connection) -> int:
            return c.execute(sql, (bound, before, limit)).rowcount

        return await self._write(purge)
