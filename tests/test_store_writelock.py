"""The SQLite store's write lock (gateway/store/writelock.py): taken around each write
transaction, let go after it whatever happened, waited for in the kernel, bounded by the busy
timeout, and never left held by a write that gave up or a store that closed.

"Another process" is an open file description of the lock file held by the test: flock locks
belong to the description, so a second descriptor in this process contends like a process.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import stat
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest

from gateway.store.base import IngestResult, IngestWrite, StoreUnavailable
from gateway.store.sqlite import SQLiteStore
from gateway.store.writelock import SUFFIX
from tests.support.store_rows import count_records
from tests.test_store import rec


@contextmanager
def held_elsewhere(db: Path) -> Iterator[int]:
    """The store's write lock, held by another open file description until the block ends."""
    fd = os.open(f"{db}{SUFFIX}", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # lets go


def free(db: Path) -> bool:
    """True when nobody holds the write lock (taken and let go at once to find out)."""
    fd = os.open(f"{db}{SUFFIX}", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


async def eventually_free(db: Path, within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if free(db):
            return True
        await asyncio.sleep(0.02)
    return False


async def commit(store: SQLiteStore) -> IngestResult:
    return await store.commit_ingest(IngestWrite([rec()]))


@asynccontextmanager
async def opened(db: Path, busy_timeout: float = 5.0) -> AsyncIterator[SQLiteStore]:
    """A SQLite store on ``db``, open for the block."""
    s = SQLiteStore(db, busy_timeout=busy_timeout)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def test_lock_file_is_private_and_free_between_writes(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    async with opened(db) as s:
        assert stat.S_IMODE(os.stat(f"{db}{SUFFIX}").st_mode) == 0o600
        assert (await commit(s)).committed
        assert free(db)  # let go right after COMMIT


async def test_a_write_waits_for_the_holder_and_goes_on_when_it_lets_go(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    async with opened(db, 10.0) as s:
        with held_elsewhere(db):
            pending = asyncio.ensure_future(commit(s))
            await asyncio.sleep(0.3)
            assert not pending.done()  # waiting, not failed, not written past the lock
        result = await asyncio.wait_for(pending, 5.0)
        assert result.committed
        assert await count_records(s) == 1
        assert await eventually_free(db)


async def test_held_past_the_busy_timeout_is_unavailable_then_the_next_write_succeeds(
    tmp_path: Path,
) -> None:
    db = tmp_path / "g.db"
    async with opened(db, 0.2) as s:
        with held_elsewhere(db):
            with pytest.raises(StoreUnavailable, match=r"write lock for over 0\.2 s"):
                await commit(s)
            assert s.pending_writes() == 0
        assert (await commit(s)).committed  # takes over the wait still in progress
        assert await eventually_free(db)


async def test_a_wait_nobody_wants_any_more_lets_go_when_it_gets_the_lock(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    async with opened(db, 0.2) as s:
        with held_elsewhere(db), pytest.raises(StoreUnavailable):
            await commit(s)
        # No write follows: the waiting thread gets the lock and must not keep it. (The pause
        # lets it take the lock first; checking at once could find it free in between.)
        await asyncio.sleep(0.3)
        assert await eventually_free(db)


async def test_closing_while_a_wait_is_in_progress_leaves_the_lock_free(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    s = SQLiteStore(db, busy_timeout=0.2)
    await s.open()
    with held_elsewhere(db):
        with pytest.raises(StoreUnavailable):
            await commit(s)
        await s.close()
    await asyncio.sleep(0.3)  # the waiting thread takes the lock, then must let go
    assert await eventually_free(db)
    again = SQLiteStore(db, busy_timeout=1.0)
    await again.open()
    try:
        assert (await commit(again)).committed
    finally:
        await again.close()


async def test_a_failed_transaction_lets_go(tmp_path: Path) -> None:
    # A writer that does not take our lock (the sqlite3 shell) holds SQLite's own: the
    # transaction fails after the busy timeout, and the write lock must not stay taken.
    db = tmp_path / "g.db"
    s = SQLiteStore(db, busy_timeout=0.2)
    await s.open()
    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable, match="locked"):
            await commit(s)
        assert free(db)
        other.execute("ROLLBACK")
        assert (await commit(s)).committed
    finally:
        other.close()
        await s.close()


async def test_two_stores_on_one_file_take_turns_without_failures(tmp_path: Path) -> None:
    # As two workers of `serve --workers 2` do: every write of both commits, none is refused.
    db = tmp_path / "g.db"
    a, b = SQLiteStore(db, busy_timeout=5.0), SQLiteStore(db, busy_timeout=5.0)
    await a.open()
    await b.open()
    try:
        results = await asyncio.gather(*(commit(a if i % 2 else b) for i in range(400)))
        assert all(r.committed for r in results)
        assert await count_records(a) == 400
        assert free(db)
    finally:
        await a.close()
        await b.close()


async def test_acquiring_before_open_is_unavailable(tmp_path: Path) -> None:
    from gateway.store.writelock import WriteLock

    with pytest.raises(StoreUnavailable, match="not open"):
        await WriteLock(tmp_path / "g.db", 1.0).acquire()


async def test_a_failing_flock_is_unavailable_and_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from gateway.store import writelock

    real = writelock.fcntl.flock

    def flock(fd: int, op: int) -> None:
        if op == writelock.fcntl.LOCK_EX:  # the blocking wait, not the first try
            raise OSError(errno.ENOLCK, "No locks available")
        real(fd, op)

    db = tmp_path / "g.db"
    async with opened(db, 2.0) as s:
        with held_elsewhere(db):
            monkeypatch.setattr(writelock.fcntl, "flock", flock)
            with pytest.raises(StoreUnavailable, match="cannot take the store's write lock"):
                await commit(s)
            monkeypatch.setattr(writelock.fcntl, "flock", real)
        assert (await commit(s)).committed  # the next write waits afresh
