"""A small real filesystem that a test can fill up: a tmpfs mounted for the test.

``mount -t tmpfs -o size=...`` needs root (CI and this machine run tests as root). Elsewhere
:func:`small_disk` raises :class:`NoSmallDisk` and the test skips (fails under CI).

:func:`fill` writes a filler file until the kernel answers ENOSPC; deleting the file gives
the space back.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path


class NoSmallDisk(Exception):
    """The filesystem cannot be mounted here."""


@contextlib.contextmanager
def small_disk(where: Path, size_mb: int) -> Iterator[Path]:
    """Mount a ``size_mb`` MiB tmpfs at ``where`` (made if missing); unmount afterwards."""
    where.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise NoSmallDisk(f"cannot mount a tmpfs at {where}: {result.stderr.strip()}")
    try:
        yield where
    finally:
        # Lazy: a process the test failed to stop must not leave the mount behind.
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def fill(path: Path) -> int:
    """Write ``path`` until the filesystem is full (ENOSPC); return the bytes written."""
    written = 0
    chunk = b"\0" * (1 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while len(chunk) >= 512:
            try:
                written += os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk = chunk[: len(chunk) // 2]
    finally:
        os.close(fd)
    return written


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer could still put on ``path``'s filesystem."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
