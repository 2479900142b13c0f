"""The write lock that processes sharing one SQLite file take around each write transaction.

SQLite lets one connection write at a time. A connection that finds the file locked does not
wait in a queue: its busy handler sleeps and tries again (1, 2, 5, 10 ... up to 100 ms a
sleep), so with two processes writing (``serve --workers``) the lock sat idle between a
commit and the other process's next try, while the process that had just committed took it
again at once. Two workers then took fewer records a second than one, with answers up to
1.5 s late.

This lock is an ``flock`` on a file beside the database (``<database>-writelock``). A process
waiting for it sleeps in the kernel, which wakes it the moment the holder lets go, so the
lock passes between processes without a gap and without polling. It is taken before
``BEGIN IMMEDIATE`` and let go right after ``COMMIT`` (or ``ROLLBACK``); SQLite's own lock
and busy timeout still guard against writers that do not take it (the ``sqlite3`` shell, an
older gateway).

The wait runs on a daemon thread of its own, so the event loop never blocks and a process can
exit while another one holds the lock. A wait that outlasts the timeout fails that write with
:class:`StoreUnavailable`; the wait itself goes on, and the next write takes it over.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import threading
from pathlib import Path

from gateway.store.base import StoreUnavailable

SUFFIX = "-writelock"


class WriteLock:
    """An exclusive ``flock`` on ``<database>-writelock``, for one writer of one process."""

    def __init__(self, database: Path, timeout: float) -> None:
        """``timeout``: seconds a write waits for another process to let go. Nothing touches
        the disk until :meth:`open`."""
        self.path = Path(f"{database}{SUFFIX}")
        self.timeout = timeout
        self._fd: int | None = None
        self._wait: asyncio.Future[None] | None = None  # a wait in progress, or None
        # Between close() and a waiting thread: which of them closes the file.
        self._guard = threading.Lock()
        self._waiting = False  # a thread is blocked in flock
        self._closed = False
        self._wanted = False  # a write awaits the wait in progress (else it gave up)
        self._wake = threading.Condition(self._guard)
        self._request: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None
        self._thread: threading.Thread | None = None
        self._fd_for_waiter = -1

    def open(self) -> None:
        """Create (mode 0600) and open the lock file; it never holds data."""
        self._fd = self._fd_for_waiter = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)

    def _try(self) -> bool:
        assert self._fd is not None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    async def acquire(self) -> None:
        """Take the lock, waiting up to :attr:`timeout` seconds for another process to let
        go; raise :class:`StoreUnavailable` when it does not."""
        timeout = self.timeout
        if self._fd is None:
            raise StoreUnavailable("the store is not open")
        if self._wait is None:
            if self._try():
                return
            self._wait = self._start_wait()
        wait = self._wait
        self._wanted = True
        try:
            await asyncio.wait_for(asyncio.shield(wait), timeout)
        except TimeoutError:
            self._wanted = False
            raise StoreUnavailable(
                f"another process has held the store's write lock for over {timeout:g} s"
            ) from None
        except BaseException:
            self._wanted = False
            raise
        finally:
            if wait.done():
                self._wait = None

    def _start_wait(self) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._guard:
            self._waiting = True
            self._request = (loop, fut)
            if self._thread is None:
                # One long-lived thread per lock: starting a thread for each wait would add its
                # start-up to every hand-over between processes.
                self._thread = threading.Thread(
                    target=self._waiter, name="store-write-lock", daemon=True
                )
                self._thread.start()
            self._wake.notify()
        return fut

    def _waiter(self) -> None:
        """The waiting thread: blocks in flock for each wait asked of it, until closed."""
        while True:
            with self._guard:
                while self._request is None and not self._closed:
                    self._wake.wait()
                if self._request is None:  # closed, nothing asked
                    return
                loop, fut = self._request
                self._request = None
                fd = self._fd_for_waiter
            error: OSError | None = None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                error = exc
            with self._guard:
                self._waiting = False
                if self._closed:
                    # The store closed while this thread waited: the file is this thread's
                    # (closing it lets go of the lock).
                    with contextlib.suppress(OSError):
                        os.close(fd)
                    return
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(self._settle, fut, error)

    def _settle(self, fut: asyncio.Future[None], error: OSError | None) -> None:
        """On the loop: hand the lock to the write awaiting it, or let go if none does."""
        if fut.done():  # cancelled by close()
            return
        if not self._wanted:
            # The write that started this wait gave up, and no other took it over: let go at
            # once rather than hold the lock with nothing to write.
            self._wait = None
            if error is None:
                self.release()
            return
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(StoreUnavailable(f"cannot take the store's write lock: {error}"))

    def release(self) -> None:
        """Let go of the lock (from any thread; a no-op when it is not held)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Let go and close the file. A wait still in progress closes it when it ends."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self._wait is not None:
            self._wait.cancel()
            self._wait = None
        with self._guard:
            self._closed = True
            self._wake.notify()
            if self._waiting:
                return  # the waiting thread closes the file when flock returns
        with contextlib.suppress(OSError):
            os.close(fd)  # lets go of the lock if held
