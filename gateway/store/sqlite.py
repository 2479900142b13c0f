"""The SQLite store backend: one file in WAL mode, one writer task with group commit.

The queue, group commit and the shared reads are ``gateway.store.core``'s; this module is the
connection to SQLite. Why this shape:

- SQLite allows one writer at a time, and with ``synchronous=FULL`` every commit costs an
  fsync (milliseconds). Committing each ingest request on its own would cap ingest at a few
  hundred requests per second. So one *writer task* owns the only write connection and
  commits in groups (see core), in one ``BEGIN IMMEDIATE ... COMMIT``. The group's statements
  run on the event loop (a few ms of SQLite's C code; from a thread of their own each of them
  waited to take the GIL back from the busy loop); only a BEGIN that must wait for another
  process's write lock, and every COMMIT (its fsync), run on a commit thread. Processes
  sharing the file (``serve --workers``) also take :mod:`gateway.store.writelock` around each
  transaction, so the lock passes between them without SQLite's sleeping busy handler.
- Each write in a group must succeed or fail alone. The writer first tries the whole group
  with one set of ``executemany`` calls (fast: no per-row round trips through Python); if
  that hits a constraint error it rolls back to a savepoint and redoes the group one write per
  SAVEPOINT, so only the offending write gets the error.
- Readers never wait for the writer: WAL lets them read the last committed state while a
  write transaction is open. Reads run on a small thread pool, each thread with its own
  connection, so the event loop never blocks on disk.
- Every other write (access keys, claims, delivery updates, purges) also goes through the
  writer, so there is exactly one writer and no ``database is locked`` between our
  own connections. They join the same group commit, each in a savepoint of its own: with the
  delivery engine running, claims and updates would otherwise each pay an fsync and starve
  ingest of the writer.
- Any operational SQLite error (disk I/O, disk full, read-only file, locked past the busy
  timeout) becomes :class:`StoreUnavailable` for the callers of that transaction; the writer
  drops its connection and opens a fresh one for the next job, so it keeps serving once the
  cause is gone.
- The database holds record data: its file (and so the ``-wal`` and ``-shm`` files SQLite
  creates with the same mode) is readable by its owner only (0600). A file found with a looser
  mode is tightened when the store opens, with a warning in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sqlite3
import stat
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from gateway import logs
from gateway.store import base, core, migrations, queries
from gateway.store.base import StoreError, StoreUnavailable
from gateway.store.core import CallJob, IngestJob, Job, Params, Row
from gateway.store.queries import sqlite as q
from gateway.store.writelock import WriteLock

R = TypeVar("R")

SYNCHRONOUS_MODES = ("FULL", "NORMAL")
FILE_MODE = 0o600  # the database and its -wal and -shm files: record data, owner only
_COMPANIONS = ("", "-wal", "-shm", "-journal")
WRITER_SWITCH_INTERVAL = 0.0005  # seconds; see SQLiteStore.open
_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


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


def secure_files(path: Path) -> tuple[list[str], list[str]]:
    """Create the database file ``path`` with mode 0600 if missing, and tighten it and any
    existing ``-wal``, ``-shm`` or ``-journal`` file that others may read to 0600. Returns the
    files tightened and those that could not be (not ours to chmod), for the log.

    SQLite creates the -wal and -shm files with the database file's mode, so a 0600 database
    keeps them 0600 too.
    """
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    tightened: list[str] = []
    failed: list[str] = []
    for suffix in _COMPANIONS:
        name = f"{path}{suffix}"
        try:
            mode = stat.S_IMODE(os.stat(name).st_mode)
        except FileNotFoundError:
            continue
        if not mode & ~FILE_MODE:
            continue
        try:
            os.chmod(name, FILE_MODE)
        except PermissionError:  # another user's file: say so, but serve
            failed.append(f"{name} ({mode:04o})")
        else:
            tightened.append(f"{name} ({mode:04o})")
    return tightened, failed


def apply_migrations(
    conn: sqlite3.Connection, all_migrations: list[migrations.Migration] | None = None
) -> list[int]:
    """Apply pending migrations to ``conn`` (autocommit mode); return the versions applied.

    ``all_migrations`` defaults to the packaged SQLite ones. Everything runs in one
    ``BEGIN IMMEDIATE`` transaction: concurrent openers of the same file serialise on the
    write lock, and the second finds nothing left to do. A failing migration rolls back
    whole, leaving the database at its previous version.
    """
    todo = migrations.load_migrations("sqlite") if all_migrations is None else all_migrations
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(q.SCHEMA_MIGRATIONS_TABLE)
        applied = [row[0] for row in conn.execute(queries.SCHEMA_MIGRATIONS_VERSIONS)]
        todo = migrations.plan(applied, todo)
        for mig in todo:
            for statement in mig.statements():
                conn.execute(statement)
            conn.execute(queries.INSERT_SCHEMA_MIGRATION, (mig.version, mig.name, time.time()))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return [m.version for m in todo]


# Rows a multi-row INSERT takes at most: a power of two, so a group needs at most
# log2(_MAX_ROWS) + 1 statement shapes per table (the statement cache keeps them prepared) and
# stays far below SQLite's 32,766 bound variables.
_MAX_ROWS = 64


def _insert_rows(conn: sqlite3.Connection, sql: str, rows: Sequence[Row]) -> None:
    """Insert ``rows`` with ``sql`` (an ``INSERT ... VALUES (?, ...)`` of one row), as few
    statements as possible: chunks of 64, 32, ... 1 rows, one ``VALUES`` list each.

    Why not ``executemany``: the sqlite3 module releases and re-takes the GIL for every row it
    steps, and under load each re-take waits for the busy event loop thread; one statement a
    chunk takes the GIL back once a chunk (this made ingest's group commit several times
    slower than SQLite itself under wrk).
    """
    if not rows:
        return
    head, _, one = sql.rpartition("VALUES")
    one = one.strip()
    i, n = 0, len(rows)
    while i < n:
        size = _MAX_ROWS
        while size > n - i:
            size //= 2
        chunk = rows[i : i + size]
        i += size
        if size == 1:
            conn.execute(sql, chunk[0])
            continue
        conn.execute(_multi_row_sql(head, one, size), [v for row in chunk for v in row])


@functools.cache
def _multi_row_sql(head: str, one: str, size: int) -> str:
    return f"{head}VALUES {', '.join([one] * size)}"


def _update_rows(conn: sqlite3.Connection, rows: Sequence[Row], now: float) -> set[str]:
    """Apply delivery updates ``(id, owner, state, next_attempt_at, last_error, last_status,
    attempt increment, delivered)`` whose lease ``owner`` still holds, up to 64 a statement
    (one ``UPDATE ... FROM (VALUES ...)``, for the GIL's sake as in :func:`_insert_rows`);
    return the ids updated."""
    done: set[str] = set()
    i, n = 0, len(rows)
    while i < n:
        size = _MAX_ROWS
        while size > n - i:
            size //= 2
        chunk = rows[i : i + size]
        i += size
        params: list[Any] = [v for row in chunk for v in row]
        params += [now, now]
        done.update(r[0] for r in conn.execute(_update_sql(size), params))
    return done


@functools.cache
def _update_sql(size: int) -> str:
    return q.UPDATE_DELIVERIES_FROM.format(values=", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * size))


class SQLiteStore(core.GroupCommitStore):
    """The store in one SQLite file (WAL), with group commit by one writer task."""

    _purge_idempotency_sql = q.PURGE_IDEM_CHUNK
    # One SQLite file has one delivering process (gateway.workers: worker 0 only).
    single_deliverer = True
    _lane_stats_sql = q.LANE_STATS
    _rollup_latest_sql = q.ROLLUP_LATEST
    _rollup_due_sql = q.ROLLUP_DUE

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
        super().__init__(max_pending_writes=max_pending_writes, max_batch_records=max_batch_records)
        self.path = Path(path)
        self.synchronous = mode
        self.busy_timeout = busy_timeout
        self._read_threads = read_threads
        self._cond = threading.Condition(threading.Lock())
        self._guard = self._cond  # guards the queue (callers may be on other threads)
        self._writer: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the writer task's (open()'s)
        self._loop_thread = 0  # its thread's ident
        self._work = asyncio.Event()  # set when the queue has work (on the writer's loop)
        # BEGIN IMMEDIATE (which may wait for another process's write lock) and COMMIT (the
        # fsync) run here, never on the event loop.
        self._committer: ThreadPoolExecutor | None = None
        self._wconn: sqlite3.Connection | None = None  # the writer task's
        # Taken around every write transaction: the processes of `serve --workers` pass the
        # write lock through the kernel instead of SQLite's sleeping busy handler.
        self._write_lock = WriteLock(self.path, busy_timeout)
        self._readers: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------
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
                # the write lock away from the writer.
                conn.execute("PRAGMA query_only = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tightened, failed = secure_files(self.path)
        if tightened:
            logs.log(
                "store_file_mode_tightened",
                "warning",
                files=tightened,
                mode=f"{FILE_MODE:04o}",
                reason="the store holds record data; it was readable by other users",
            )
        if failed:
            logs.log(
                "store_file_mode_loose",
                "warning",
                files=failed,
                reason="the store holds record data and other users may read it; "
                "chmod 0600 was not permitted",
            )
        conn = self._connect(writer=True)
        try:
            self.migrations_applied = apply_migrations(conn)
        except BaseException:
            conn.close()
            raise
        self._wconn = conn
        try:
            self._write_lock.open()
        except OSError as exc:
            conn.close()
            raise StoreUnavailable(f"cannot open the store's lock file: {exc}") from exc
        # SQLite fsyncs the directory when it creates a journal or WAL file, but not when it
        # creates the database file itself: without this, a power cut soon after the first
        # start could lose the file's directory entry, and every record in it.
        _fsync_dir(self.path.parent)

    async def open(self) -> None:
        """Create the file if needed, apply pending migrations, start the writer task (on
        this event loop)."""
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
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-commit")
        # The commit thread gives up the GIL around BEGIN and COMMIT and must take it back
        # from the event loop thread, which (busy) only yields it every switch interval
        # (5 ms by default). A shorter interval bounds each wait.
        if sys.getswitchinterval() > WRITER_SWITCH_INTERVAL:
            sys.setswitchinterval(WRITER_SWITCH_INTERVAL)
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        with self._cond:
            self._accepting = True
            self._opened = True
        self._writer = self._loop.create_task(self._writer_main(), name="store-writer")

    async def close(self) -> None:
        """Commit and answer every queued write, then stop the writer and close connections."""
        if not self._stop_accepting():
            return
        if self._writer is not None:
            if asyncio.get_running_loop() is self._loop:
                await asyncio.shield(self._writer)
            else:
                await asyncio.wrap_future(
                    asyncio.run_coroutine_threadsafe(_join(self._writer), self._writer.get_loop())
                )
        if self._committer is not None:
            await asyncio.to_thread(self._committer.shutdown, True)
        self._write_lock.close()
        if self._readers is not None:
            readers = self._readers
            await asyncio.to_thread(readers.shutdown, True)
        with self._reader_lock:
            for conn in self._reader_conns:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._reader_conns.clear()

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the writer task runs and a read succeeds."""
        if self._writer is None or self._writer.done():
            raise StoreUnavailable("the store's writer is not running")
        await self._fetch("SELECT 1")

    # -- the writer task ------------------------------------------------------------------
    # Why on the event loop: the statements of a group commit are a few ms of SQLite's C code,
    # but in a thread of their own each of them gave the GIL up and waited to take it back
    # from the busy event loop, a dozen waits a transaction, so under load most of a commit
    # was spent waiting (commits of ~10 ms for ~15 records). Now only BEGIN IMMEDIATE and
    # COMMIT (the lock wait and the fsync) leave the loop.
    def _wake_writer(self) -> None:
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._work.set()
        else:  # a caller on another thread's loop
            with contextlib.suppress(RuntimeError):  # the writer's loop is closed
                loop.call_soon_threadsafe(self._work.set)

    async def _writer_main(self) -> None:
        """Serve the queue until close. Everything waiting goes into one transaction (one
        fsync): ingest writes in groups, other writes (claims, delivery updates) each in its
        own savepoint, in queue order."""
        try:
            while True:
                with self._cond:
                    batch, n = self._take_batch() if self._queue else ([], 0)
                    stop = not batch and self._stopping
                if stop:  # stopping, and every queued write has been served
                    break
                if not batch:
                    self._work.clear()
                    if not self._queue:
                        await self._work.wait()
                    continue
                try:
                    await self._run_group(batch)
                except asyncio.CancelledError:
                    core.fail(batch, StoreUnavailable("the store's writer stopped"))
                    raise
                except BaseException as exc:  # a bug: fail these callers, keep the writer
                    core.fail(batch, StoreError(f"store writer failed: {exc!r}"))
                finally:
                    self._served(n)
                    self._answer(batch)
        finally:
            if self._wconn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._wconn.close()
                self._wconn = None

    async def _off_loop(self, fn: Callable[[], R]) -> R:
        """Run ``fn`` on the commit thread. The write connection is the thread's until it
        returns: if the writer is cancelled meanwhile, wait for it anyway."""
        assert self._committer is not None
        cf = self._committer.submit(fn)
        try:
            return await asyncio.wrap_future(cf)
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                cf.result()
            raise

    def _answer(self, jobs: list[Job]) -> None:
        # Callers on the writer's loop are answered now; others with one wake-up per loop.
        by_loop: dict[asyncio.AbstractEventLoop, list[Job]] = {}
        for job in jobs:
            by_loop.setdefault(job.loop, []).append(job)
        for loop, its_jobs in by_loop.items():
            if loop is self._loop:
                core.resolve(its_jobs)
                continue
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody to answer
                loop.call_soon_threadsafe(core.resolve, its_jobs)

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

    def _begin_now(self) -> sqlite3.Connection | None:
        """BEGIN IMMEDIATE on the loop when the write lock is free (the usual case: one
        process writes), else None: :meth:`_begin` then waits for it off the loop. The busy
        timeout is 0 for this one statement, so the loop never waits for a lock."""
        conn = self._wconn
        if conn is None:
            return None
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) in _BUSY_CODES:
                return None
            raise
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        return conn

    def _begin(self) -> sqlite3.Connection:
        """BEGIN IMMEDIATE, waiting up to the busy timeout for another process's write lock
        (on the commit thread)."""
        conn = self._writer_conn()
        conn.execute("BEGIN IMMEDIATE")
        return conn

    async def _transaction(self, body: Callable[[sqlite3.Connection], R]) -> R:
        """Run ``body`` (on the loop) in BEGIN IMMEDIATE ... COMMIT (both on the commit
        thread) on the write connection."""
        started = time.perf_counter()
        lock = self._write_lock
        try:
            await lock.acquire()
            conn = self._begin_now()
            if conn is None:
                conn = await self._off_loop(self._begin)
            try:
                result = body(conn)

                def commit() -> None:
                    conn.execute("COMMIT")
                    lock.release()  # at once, on this thread: another process may be waiting

                await self._off_loop(commit)
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
        finally:
            lock.release()
        self._observe(time.perf_counter() - started)
        return result

    async def _run_group(self, jobs: list[Job]) -> None:
        """Apply ``jobs`` in one transaction, in order: runs of ingest writes as groups,
        each other write in a savepoint of its own, so its failure is its caller's alone."""
        started = time.perf_counter()

        def body(conn: sqlite3.Connection) -> None:
            now = time.time()
            run: list[IngestJob] = []
            for job in [*jobs, None]:
                if isinstance(job, IngestJob):
                    run.append(job)
                    continue
                if run:
                    if not self._apply_group(conn, run, now):
                        self._apply_one_by_one(conn, run, now)
                    run = []
                if isinstance(job, CallJob):
                    self._apply_call(conn, job)

        try:
            await self._transaction(body)
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
            core.fail(jobs, err)
            return
        self._group_committed(jobs, started)

    @staticmethod
    def _apply_call(conn: sqlite3.Connection, job: CallJob) -> None:
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
    def _stored_entries(
        conn: sqlite3.Connection, jobs: list[IngestJob], now: float
    ) -> dict[core.Key, base.IdempotencyEntry]:
        """The unexpired stored entries (committed, or earlier in this transaction) for every
        idempotency key of ``jobs``."""
        keys = [(e.access_key_id, e.key) for job in jobs for e in job.write.idempotency]
        if not keys:
            return {}
        rows = conn.execute(q.SELECT_IDEM_MANY, (orjson.dumps(keys), now)).fetchall()
        return {(r[0], r[1]): core.idempotency_entry(r) for r in rows}

    @staticmethod
    def _insert(conn: sqlite3.Connection, writes: list[base.IngestWrite], now: float) -> None:
        """Insert the writes' records, deliveries and idempotency entries, many rows a
        statement (see :func:`_insert_rows`)."""
        ordered: list[Row] = []
        records, deliveries = core.record_params(writes, now, ordered)
        idem = [core.idempotency_params(e) for w in writes for e in w.idempotency]
        _insert_rows(conn, q.INSERT_RECORD, records)
        _insert_rows(conn, q.INSERT_DELIVERY, deliveries)
        _insert_rows(conn, q.INSERT_ORDERED_DELIVERY, ordered)
        _insert_rows(conn, q.INSERT_IDEM, idem)

    def _apply_group(self, conn: sqlite3.Connection, jobs: list[IngestJob], now: float) -> bool:
        """Fast path: the whole group in one savepoint. False (and nothing applied) on a
        constraint error, so the caller redoes it write by write."""
        to_insert, _ = core.plan_group(jobs, self._stored_entries(conn, jobs, now))
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
        self, conn: sqlite3.Connection, jobs: list[IngestJob], now: float
    ) -> None:
        """Slow path: each write in its own savepoint, so a bad one fails alone."""
        for job in jobs:
            write = job.write
            job.result = None
            job.error = None
            # Earlier writes of this group are already inserted in this transaction, so a
            # plain lookup sees them: a same-key write in the same group is a replay.
            if write.idempotency:
                replay = core.first_replay(write, self._stored_entries(conn, [job], now))
                if replay is not None:
                    job.result = base.IngestResult(committed=False, replay=replay)
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
            job.result = base.IngestResult(committed=True)

    async def _execute(self, sql: str, params: Params | Callable[[], Params] = ()) -> int:
        """Run one statement by the writer (in its next group); rows changed."""

        def run(c: sqlite3.Connection) -> int:
            return c.execute(sql, params() if callable(params) else params).rowcount

        changed: int = await self._write(run)
        return changed

    # -- readers --------------------------------------------------------------------------
    def _reader_conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
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
            raise self._closed_error()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(readers, self._read_sync, fn)
        except RuntimeError as exc:  # the executor was shut down under us by close()
            if self._closed:
                raise StoreUnavailable("store is closed") from exc
            raise

    async def _fetch(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._read(lambda c: c.execute(sql, params).fetchall())

    async def _fetch_snapshot(self, statements: list[tuple[str, Params]]) -> list[list[Row]]:
        def run(c: sqlite3.Connection) -> list[list[Row]]:
            # Several SELECTs in one read transaction: they see the same committed state.
            c.execute("BEGIN")
            try:
                return [c.execute(sql, params).fetchall() for sql, params in statements]
            finally:
                c.execute("COMMIT")

        return await self._read(run)

    # -- deliveries -----------------------------------------------------------------------
    async def _claim(self, claim: core.Claim) -> list[base.ClaimedDelivery]:
        where, params = core.claim_where(claim, prefix="d.")
        params.append(claim.limit)
        sql = q.CLAIM_SELECT + " AND ".join(where) + q.CLAIM_ORDER
        owner, expires, now, limit = claim.owner, claim.expires, claim.now, claim.limit

        def lease(c: sqlite3.Connection) -> list[base.ClaimedDelivery]:
            rows = c.execute(sql, params).fetchall()
            if not rows:
                c.execute(queries.PARK_FOLLOWERS, (now, now))
                return []
            # Inside BEGIN IMMEDIATE with the only writer: nobody can claim between the
            # SELECT and this UPDATE.
            # One statement for the whole claim (executemany steps, and re-takes the GIL, once
            # a row).
            ids = orjson.dumps([r[0] for r in rows]).decode()
            c.execute(q.LEASE_MANY, (owner, expires, now, ids))
            if len(rows) < limit:
                # The claim walked the whole due range: park the ordered deliveries it passed
                # over (not the head of their key), so the next claims need not.
                c.execute(queries.PARK_FOLLOWERS, (now, now))
            out = []
            for r in rows:
                d = core.delivery(r)
                d.lease_owner = owner
                d.lease_expires_at = expires
                d.updated_at = now
                d.ordering_key = r[16]
                out.append(base.ClaimedDelivery(d, bytes(r[14]), r[15]))
            return out

        claimed: list[base.ClaimedDelivery] = await self._write(lease)
        return claimed

    async def update_deliveries(self, updates: list[base.DeliveryUpdate]) -> int:
        """Apply the updates whose lease is still held, in one transaction; return how many."""
        if not updates:
            return 0

        def apply(c: sqlite3.Connection) -> int:
            now = time.time()
            rows = [
                (u.delivery_id, u.lease_owner, str(u.state), u.next_attempt_at, u.last_error,
                 u.last_status, 1 if u.attempt is not None else 0,
                 u.state == base.DeliveryState.DELIVERED)
                for u in updates
            ]  # fmt: skip
            if len({u.delivery_id for u in updates}) == len(updates):
                done = _update_rows(c, rows, now)
            else:  # the same delivery twice: one at a time, so the first wins as it always has
                done = set()
                for r in rows:
                    cur = c.execute(q.UPDATE_DELIVERY, (*r[2:7], r[7], now, now, r[0], r[1]))
                    if cur.rowcount:
                        done.add(r[0])
            attempts = [
                (u.delivery_id, a.started_at, a.duration_ms, a.status, a.error, a.mapping_version,
                 a.link)
                for u in updates
                if (a := u.attempt) is not None and u.delivery_id in done
            ]  # fmt: skip
            _insert_rows(c, q.INSERT_ATTEMPT, attempts)
            # Links of the deliveries this update marked delivered, in the same transaction.
            links = [
                (u.delivery_id, u.link)
                for u in updates
                if u.link is not None
                and u.state == base.DeliveryState.DELIVERED
                and u.delivery_id in done
            ]
            if links:
                upserts, deletes = core.link_writes(links, now)
                c.executemany(queries.UPSERT_LINK, upserts)  # rare: a row a statement is fine
                c.executemany(queries.DELETE_LINK, deletes)
            settled = [
                u.delivery_id
                for u in updates
                if u.ordered and u.state != base.DeliveryState.PENDING and u.delivery_id in done
            ]
            if settled:
                # Per-key ordering: their keys' next deliveries, if parked, are due now.
                c.execute(q.UNPARK_NEXT, (orjson.dumps(settled).decode(),))
            return len(done)

        applied: int = await self._write(apply)
        return applied

    # -- the delivery engine --------------------------------------------------------------
    async def _run_steps(self, steps: Callable[[], core.Steps[R]]) -> R:
        def run(c: sqlite3.Connection) -> R:
            def step(op: str, sql: str, params: Params) -> Any:
                cur = c.execute(sql, params)
                return cur.fetchall() if op == "fetch" else cur.rowcount

            return core.drive(steps(), step)

        result: R = await self._write(run)
        return result

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
            return c.executemany(
                q.RELEASE_DELIVERY, [(at, now, did, owner) for did in ids]
            ).rowcount

        released: int = await self._write(release)
        return released

    async def _replay(
        self, now: float, limit: int, ids: list[str] | None, where: list[str], params: list[Any]
    ) -> list[str]:
        if ids is not None:
            select = q.REPLAY_BY_IDS
            params = [orjson.dumps(ids).decode(), limit]
        else:
            select = f"SELECT id FROM deliveries WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"
            params = [*params, limit]

        def replay(c: sqlite3.Connection) -> list[str]:
            # Select then update inside BEGIN IMMEDIATE with the only writer: nothing changes
            # between the two, so the ids returned are exactly the rows updated.
            found = [r[0] for r in c.execute(select, params)]
            if found:
                c.executemany(q.REPLAY_DELIVERY, [(now, now, did) for did in found])
            return found

        replayed: list[str] = await self._write(replay)
        return replayed

    async def release_foreign_leases(self, owner: str, now: float) -> int:
        """Clear every other owner's lease on a pending delivery (see :class:`base.Store`).

        On SQLite only one process delivers, so when its engine starts, a lease of another
        owner is a dead process's (SIGKILL, power cut): waiting it out (the whole lease, 60 s
        by default) would hold back what that process had claimed for nothing. Their due time
        and attempts stay; a delivery the dead process had sent but not yet recorded is sent
        again, with the same idempotency key (at least once)."""
        return await self._execute(q.RELEASE_FOREIGN_LEASES, (now, owner))

    async def purge_delivered(self, before: float, limit: int = 5000) -> int:
        """Delete up to ``limit`` old, fully delivered records in one transaction; return how
        many.

        Old records are found by a range of the records' primary key rather than an index on
        ``received_at`` (see :func:`core.purge_bound`): ingest pays for no extra index. One
        received in the last millisecond before ``before`` waits for the next purge.

        A record goes only if none of its deliveries is pending or dead (a record without
        deliveries has nothing left to do). Its deliveries and their attempts go with it by
        ``ON DELETE CASCADE`` (``_connect`` turns foreign keys on for every connection); the
        row count is of records only, as SQLite does not count cascaded deletes.
        """
        if limit <= 0:
            return 0
        return await self._execute(q.PURGE_DELIVERED, (core.purge_bound(before), before, limit))


async def _join(task: asyncio.Task[None]) -> None:
    await asyncio.shield(task)
