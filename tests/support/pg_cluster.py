"""A throwaway PostgreSQL cluster of a test's own, which the test may stop, restart or crash.

The shared server at 127.0.0.1:5432 (tests/support/pg.py) serves every other test and every
other engineer on the machine; restarting it would hurt them. A fault test that restarts
PostgreSQL runs ``initdb`` and ``pg_ctl`` from the installed server packages
(``/usr/lib/postgresql/<version>/bin``, the newest) into a temporary directory, on a free
loopback port, with its Unix socket in that directory too, so nothing of it is shared.

``initdb`` refuses to run as root. Under root (CI, this machine) every server command runs as
the ``postgres`` system user, the owner of the packaged server, through ``runuser``; the
temporary directory is made over to that user. As any other user the commands run as that
user.

The cluster trusts local connections (it listens on 127.0.0.1 only) and runs with
``fsync=off``: a test restarts the server process, it does not pull the power, and the data
survive a process restart or crash (committed WAL is in the kernel's page cache) while the
shared, busy disk is spared the flushes.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

SERVER_USER = "postgres"


class ClusterUnavailable(Exception):
    """No PostgreSQL server binaries, or no user that may run them."""


def server_bin() -> Path:
    """The newest installed ``/usr/lib/postgresql/<version>/bin`` holding initdb and pg_ctl."""
    found = []
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        bindir = Path(initdb).parent
        if (bindir / "pg_ctl").exists():
            version = bindir.parent.name
            found.append((int(version) if version.isdigit() else 0, bindir))
    if not found:
        raise ClusterUnavailable("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin")
    return max(found)[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    """``PgCluster.create()`` then :meth:`start`; :meth:`destroy` removes everything."""

    def __init__(self, root: Path, bindir: Path, run_as: str | None) -> None:
        self.root = root
        self.bindir = bindir
        self.run_as = run_as  # the user the server commands run as; None: this process's own
        self.data = root / "data"
        self.log = root / "server.log"
        self.port = _free_port()

    @classmethod
    def create(cls) -> PgCluster:
        """A fresh cluster (initdb done, not started) in a new temporary directory."""
        bindir = server_bin()
        run_as = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise ClusterUnavailable(
                    f"running as root and there is no {SERVER_USER!r} user to run initdb as"
                ) from None
            if shutil.which("runuser") is None:
                raise ClusterUnavailable("running as root and runuser is not installed")
            run_as = SERVER_USER
        root = Path(tempfile.mkdtemp(prefix="gw-pgcluster-"))
        if run_as is not None:
            shutil.chown(root, run_as, run_as)
        cluster = cls(root, bindir, run_as)
        try:
            cluster._run(
                "initdb",
                "-D",
                str(cluster.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                timeout=120,
            )
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    def _run(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / tool), *args]
        if self.run_as is not None:
            command = ["runuser", "-u", self.run_as, "--", *command]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            # The server must not inherit the test's PG* variables (another server's port).
            env={k: v for k, v in os.environ.items() if not k.startswith("PG")},
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{tool} {' '.join(args)} failed ({result.returncode}):\n{result.stdout}"
                f"{result.stderr}\n{self.server_log()}"
            )
        return result

    def url(self, database: str = "postgres") -> str:
        """The URL of ``database`` on this cluster, as user postgres."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def server_log(self) -> str:
        """The server's log so far (for failure messages)."""
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def _options(self) -> str:
        return (
            f"-p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.root} -c fsync=off -c max_connections=60"
        )

    def start(self) -> PgCluster:
        """Start the server and wait until it accepts connections."""
        self._run(
            "pg_ctl",
            "start",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            "60",
            "-o",
            self._options(),
            timeout=90,
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (sessions cut, clean shutdown) or ``immediate`` (a crash:
        the next start recovers from the WAL)."""
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "60", timeout=90)

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart``: stop and start again in one command."""
        self._run(
            "pg_ctl",
            "restart",
            "-D",
            str(self.data),
            "-m",
            mode,
            "-w",
            "-t",
            "60",
            "-l",
            str(self.log),
            "-o",
            self._options(),
            timeout=120,
        )

    def running(self) -> bool:
        """Whether the server process runs (``pg_ctl status``)."""
        try:
            self._run("pg_ctl", "status", "-D", str(self.data), timeout=30)
        except RuntimeError:
            return False
        return True

    def wait_accepting(self, within: float = 30.0) -> None:
        """Wait until the port accepts TCP connections."""
        deadline = time.monotonic() + within
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def destroy(self) -> None:
        """Stop the server if it runs (immediately) and remove the directory."""
        if self.data.exists() and self.running():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def cluster() -> Iterator[PgCluster]:
    """``with cluster() as c``: a started throwaway cluster, destroyed afterwards."""
    c = PgCluster.create()
    try:
        c.start()
        yield c
    finally:
        c.destroy()
