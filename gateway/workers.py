"""``gateway serve --workers N``: N processes serving one port, and the parent that runs them.

The parent never serves a request. Before the first worker starts it does what must happen
exactly once (:func:`prepare`): open the store (migrations), create or read the master key file
and check the key against the stored secrets; ``cli`` then makes the bootstrap key. Then it
starts each worker as a fresh ``python -m gateway serve`` with the same flags (a plain
subprocess: nothing of the parent's interpreter, threads or event loop is inherited, no fork
after threads) and the internal variable ``_GATEWAY_WORKER`` giving its number. Each worker
binds the port with ``SO_REUSEPORT``; the kernel spreads new connections over them.

The parent:

- forwards SIGTERM and SIGINT once to every worker, restarts none after that, and exits when
  all have exited: 0 when each stopped cleanly, 1 otherwise (a worker still running
  :data:`STOP_TIMEOUT` seconds later is killed);
- forwards SIGHUP (reload the mappings) to every worker that is serving; one still starting
  gets it as soon as it serves;
- restarts a worker that exits on its own after :data:`FIRST_BACKOFF` seconds, doubling while
  it keeps dying within :data:`STABLE_AFTER` seconds of its start, up to :data:`MAX_BACKOFF`;
- stops everything when a worker fails before it ever served on its first start: that is a
  configuration or environment problem (port, store, master key), not a crash to retry.

Two pipes join them: each worker writes ``"<number> <pid>"`` on the *ready* pipe once it
listens; the parent holds the write end of the *parent* pipe open and never writes to it, so a
worker sees end-of-file there when the parent dies and stops itself (no orphan keeps the port).

What each worker runs depends on the store (:func:`worker_settings`): on SQLite only worker 0
runs the delivery engine; on PostgreSQL every worker does (claims there take ``FOR UPDATE SKIP
LOCKED`` under leases). See docs/operations.md, "Several processes".
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

from gateway import logs
from gateway.config import Settings

#: The internal variable that makes ``gateway serve`` a worker: ``"<number>,<ready fd>,
#: <parent fd>"``. Set by the parent only; not a setting.
WORKER_ENV = "_GATEWAY_WORKER"
#: Answers of /healthz and /readyz carry the number of the worker that answered.
WORKER_HEADER = "X-Gateway-Worker"

FIRST_BACKOFF = 1.0
MAX_BACKOFF = 30.0
STABLE_AFTER = 30.0  # a worker up this long that dies is restarted after FIRST_BACKOFF again
STOP_TIMEOUT = 60.0  # after SIGTERM: the longest the parent waits before it kills a worker

# Stores every process can share with every role (ingest and delivery in all of them).
SHARED_STORES = ("postgresql", "postgres")


class WorkersError(Exception):
    """``--workers`` cannot run with these settings; the message says why and what to do."""


def store_scheme(settings: Settings) -> str:
    """``sqlite``, ``postgresql``, ...: the scheme of the store URL, lower case."""
    return settings.store_url.partition("://")[0].lower()


def delivers(settings: Settings, number: int) -> bool:
    """Whether worker ``number`` runs the delivery engine."""
    if not settings.delivery:
        return False  # GATEWAY_DELIVERY=false: another gateway delivers; none of these does
    return number == 0 or store_scheme(settings) in SHARED_STORES


def worker_settings(settings: Settings, number: int) -> Settings:
    """The settings worker ``number`` runs with: on SQLite, delivery off except in worker 0.

    One SQLite file has one writer at a time; claims are safe across processes (they run in
    ``BEGIN IMMEDIATE``), but a second engine would only contend for that lock, split each
    lane's rate limit, breaker and order across processes, and gain nothing.
    """
    return settings.model_copy(update={"delivery": delivers(settings, number)})


# -- the parent ------------------------------------------------------------------------------


def check(settings: Settings) -> None:
    """Refuse, with the reason, what cannot run as several workers."""
    if settings.port == 0:
        raise WorkersError(
            "--workers needs a fixed port: with port 0 each worker would listen on a port of "
            "its own; give --port (GATEWAY_PORT)"
        )
    if not hasattr(socket, "SO_REUSEPORT"):
        raise WorkersError(
            f"--workers needs SO_REUSEPORT, which this platform ({sys.platform}) lacks; run "
            "one process (--workers 1)"
        )
    scheme = store_scheme(settings)
    if scheme != "sqlite" and scheme not in SHARED_STORES:
        raise WorkersError(
            f"--workers: unknown store scheme {scheme!r}; several processes run on SQLite "
            "(one host) or PostgreSQL"
        )
    _check_port_free(settings.host, settings.port)


def _check_port_free(host: str, port: int) -> None:
    """Fail when something already listens on the port.

    Workers bind with SO_REUSEPORT, which would let them join the listeners of another
    process of the same user (a second gateway started by mistake) and share its traffic
    silently; a probe without SO_REUSEPORT fails instead.
    """
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise WorkersError(f"cannot resolve the listen address {host!r}: {exc}") from None
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(addr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise WorkersError(
                        f"{addr[0]} port {port} is in use by another process; stop it or "
                        "choose another --port"
                    ) from None
                # Other errors (no IPv6 here, say) are the workers' to report, as without
                # --workers.


async def prepare(settings: Settings) -> None:
    """What happens once before the workers start: the store is created and migrated, the
    master key file made (or read), and the key checked against the stored secrets (a wrong
    key raises :class:`~gateway.auth.keys.MasterKeyError`)."""
    from gateway.auth.keys import KeyRing, SecretBox, load_master_key
    from gateway.store import open_store

    store = open_store(
        settings.store_url,
        synchronous=settings.sqlite_synchronous,
        max_pending_writes=settings.max_pending_writes,
    )
    await store.open()
    try:
        configured = settings.master_key.get_secret_value() if settings.master_key else None
        master = load_master_key(settings.data_dir, configured)
        await KeyRing(store, SecretBox(master), ttl=settings.key_cache_ttl).check_master_key()
    finally:
        await store.close()


@dataclass
class _Slot:
    """One worker number and the process serving as it (if any)."""

    number: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    starts: int = 0
    ready: bool = False
    served: bool = False  # any process of this number has served
    restart_at: float | None = None
    backoff: float = FIRST_BACKOFF
    hup_pending: bool = False
    stop_code: int | None = None


def _describe(code: int) -> dict[str, object]:
    if code < 0:
        try:
            return {"signal": signal.Signals(-code).name}
        except ValueError:
            return {"signal": -code}
    return {"code": code}


class Supervisor:
    """Runs ``settings.workers`` workers until SIGTERM or SIGINT (see the module docs)."""

    def __init__(
        self,
        settings: Settings,
        flags: Sequence[str],
        *,
        command: Sequence[str] | None = None,
    ) -> None:
        self.settings = settings
        self.flags = list(flags)
        self.command = list(command or [sys.executable, "-m", "gateway", "serve"])
        self.slots = [_Slot(i) for i in range(settings.workers)]
        self.stopping = False
        self.stop_deadline = 0.0
        self.failed: int | None = None  # exit code when a worker could not start
        self.killed = False
        self._signals: list[int] = []
        self._ready_buffer = b""
        self._announced = False

    # signal handlers only note the signal; the loop acts on it
    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)

    def run(self) -> int:
        """Start the workers and supervise them until they have all exited; the exit code."""
        ready_r, self._ready_w = os.pipe()
        self._parent_r, parent_w = os.pipe()
        wake_r, wake_w = os.pipe()
        for fd in (ready_r, wake_r, wake_w):
            os.set_blocking(fd, False)
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        previous_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        selector = selectors.DefaultSelector()
        selector.register(ready_r, selectors.EVENT_READ)
        selector.register(wake_r, selectors.EVENT_READ)
        try:
            self._log(
                "workers_starting",
                workers=len(self.slots),
                store=store_scheme(self.settings),
                delivery=[s.number for s in self.slots if delivers(self.settings, s.number)],
            )
            for slot in self.slots:
                self._spawn(slot)
            while not (self.stopping and all(s.proc is None for s in self.slots)):
                for key, _ in selector.select(self._timeout()):
                    if key.fd == ready_r:
                        self._read_ready(ready_r)
                    else:
                        with contextlib.suppress(BlockingIOError):
                            while os.read(wake_r, 512):
                                pass
                self._handle_signals()
                self._reap()
                self._restart_due()
                self._enforce_stop_timeout()
        finally:
            # Also on a bug here: no worker outlives the parent (they see the parent pipe
            # close too).
            for slot in self.slots:
                if slot.proc is not None and slot.proc.poll() is None:
                    slot.proc.kill()
                    slot.proc.wait()
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            selector.close()
            for fd in (ready_r, self._ready_w, self._parent_r, parent_w, wake_r, wake_w):
                os.close(fd)
        return self._exit_code()

    def _exit_code(self) -> int:
        if self.failed is not None:
            return self.failed
        clean = (0, 130, -signal.SIGTERM, -signal.SIGINT)
        ok = not self.killed and all(s.stop_code in clean for s in self.slots)
        self._log(
            "workers_stopped",
            codes=[s.stop_code for s in self.slots],
            clean=ok,
        )
        return 0 if ok else 1

    def _log(self, event: str, level: str = "info", **fields: object) -> None:
        logs.log(event, level, **fields)
        logs.flush()

    def _timeout(self) -> float:
        now = time.monotonic()
        due = [s.restart_at for s in self.slots if s.restart_at is not None]
        if self.stopping:
            due.append(self.stop_deadline)
        return max(0.0, min([now + 1.0, *due]) - now)

    def _spawn(self, slot: _Slot) -> None:
        env = {
            **os.environ,
            WORKER_ENV: f"{slot.number},{self._ready_w},{self._parent_r}",
        }
        slot.proc = subprocess.Popen(
            [*self.command, *self.flags],
            env=env,
            pass_fds=(self._ready_w, self._parent_r),
        )
        slot.started_at = time.monotonic()
        slot.starts += 1
        slot.ready = False
        slot.restart_at = None
        self._log(
            "worker_started",
            worker=slot.number,
            pid=slot.proc.pid,
            restarts=slot.starts - 1,
            delivery=delivers(self.settings, slot.number),
        )

    def _read_ready(self, fd: int) -> None:
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(fd, 4096):
                self._ready_buffer += chunk
        *lines, self._ready_buffer = self._ready_buffer.split(b"\n")
        for line in lines:
            try:
                number, pid = (int(x) for x in line.split())
                slot = self.slots[number]
            except (ValueError, IndexError):
                continue
            if slot.proc is None or slot.proc.pid != pid:
                continue  # from a process of that number that has exited since
            slot.ready = slot.served = True
            self._log("worker_ready", worker=number, pid=pid)
            if slot.hup_pending and not self.stopping:
                slot.hup_pending = False
                self._send(slot, signal.SIGHUP)
        if not self._announced and all(s.ready for s in self.slots):
            self._announced = True
            host = self.settings.host
            print(
                f"======== Running on http://{host}:{self.settings.port} with "
                f"{len(self.slots)} workers ========\n(Press CTRL+C to quit)",
                file=sys.stderr,
                flush=True,
            )

    def _send(self, slot: _Slot, sig: int) -> None:
        if slot.proc is not None and slot.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                slot.proc.send_signal(sig)

    def _handle_signals(self) -> None:
        while self._signals:
            sig = self._signals.pop(0)
            if sig == signal.SIGCHLD:
                continue  # only wakes the loop: _reap looks
            name = signal.Signals(sig).name
            if sig == signal.SIGHUP:
                if self.stopping:
                    continue
                sent = []
                for slot in self.slots:
                    if slot.proc is not None and slot.ready:
                        self._send(slot, sig)
                        sent.append(slot.number)
                    elif slot.proc is not None:
                        slot.hup_pending = True
                self._log("signal_forwarded", signal=name, workers=sent)
            elif not self.stopping:
                self._stop(sig)
            else:
                self._log("signal_ignored", signal=name, reason="already stopping")

    def _stop(self, sig: int) -> None:
        self.stopping = True
        self.stop_deadline = time.monotonic() + STOP_TIMEOUT
        sent = []
        for slot in self.slots:
            slot.restart_at = None
            if slot.proc is not None:
                self._send(slot, sig)
                sent.append(slot.number)
        self._log("signal_forwarded", signal=signal.Signals(sig).name, workers=sent)

    def _reap(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.proc is None:
                continue
            code = slot.proc.poll()
            if code is None:
                continue
            pid, slot.proc, slot.ready = slot.proc.pid, None, False
            if self.stopping:
                slot.stop_code = code
                level = "info" if code in (0, 130, -signal.SIGTERM, -signal.SIGINT) else "warning"
                self._log("worker_exited", level, worker=slot.number, pid=pid, **_describe(code))
                continue
            uptime = now - slot.started_at
            if not slot.served and slot.starts == 1 and code != 0:
                # Never served: the port, the store or the settings are wrong. Retrying would
                # only hide it; stop the others and report.
                self._log(
                    "worker_failed_to_start",
                    "error",
                    worker=slot.number,
                    pid=pid,
                    **_describe(code),
                )
                self.failed = code if 0 < code < 256 else 1
                slot.stop_code = code
                self._stop(signal.SIGTERM)
                continue
            slot.backoff = FIRST_BACKOFF if uptime >= STABLE_AFTER else slot.backoff
            slot.restart_at = now + slot.backoff
            self._log(
                "worker_exited",
                "warning",
                worker=slot.number,
                pid=pid,
                uptime_s=round(uptime, 1),
                restart_in_s=slot.backoff,
                **_describe(code),
            )
            slot.backoff = min(slot.backoff * 2, MAX_BACKOFF)

    def _restart_due(self) -> None:
        if self.stopping:
            return
        now = time.monotonic()
        for slot in self.slots:
            if slot.proc is None and slot.restart_at is not None and slot.restart_at <= now:
                self._spawn(slot)

    def _enforce_stop_timeout(self) -> None:
        if not self.stopping or time.monotonic() < self.stop_deadline:
            return
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                self._log(
                    "worker_killed",
                    "error",
                    worker=slot.number,
                    pid=slot.proc.pid,
                    reason=f"still running {STOP_TIMEOUT:.0f} s after the stop signal",
                )
                slot.proc.kill()
                self.killed = True
        self.stop_deadline = time.monotonic() + STOP_TIMEOUT


# -- a worker --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Worker:
    """This process is worker ``number`` of a parent (see :func:`current`)."""

    number: int
    ready_fd: int
    parent_fd: int


def current(environ: dict[str, str] | None = None) -> Worker | None:
    """The worker this process is, from :data:`WORKER_ENV`; None in a plain ``serve``."""
    value = (os.environ if environ is None else environ).get(WORKER_ENV)
    if not value:
        return None
    try:
        number, ready_fd, parent_fd = (int(x) for x in value.split(","))
    except ValueError:
        raise WorkersError(
            f"{WORKER_ENV} is internal (set by serve --workers): {value!r}"
        ) from None
    return Worker(number, ready_fd, parent_fd)


def setup_process(worker: Worker) -> None:
    """First thing in a worker: its log lines name it, and stay whole beside the others'.

    Every worker writes to the one stdout the parent was given. Log lines are buffered; a
    buffer of PIPE_BUF bytes means each write(2) holds whole lines and at most PIPE_BUF bytes,
    which a pipe never interleaves with another writer's (a single line longer than that may
    be, under back-pressure). SIGHUP is ignored until the server installs its handler (the
    default action would end the process).
    """
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logs.set_common_fields(worker=worker.number)
    if not sys.stdout.isatty():
        sys.stdout.flush()
        raw = io.FileIO(sys.stdout.fileno(), "w", closefd=False)
        sys.stdout = io.TextIOWrapper(
            io.BufferedWriter(raw, buffer_size=select.PIPE_BUF), encoding="utf-8"
        )


def attach(app: web.Application, worker: Worker) -> None:
    """Wire a worker's app: its number on /healthz and /readyz, SIGTERM/SIGINT acted on once,
    and a stop of its own when the parent is gone."""

    async def header(request: web.Request, response: web.StreamResponse) -> None:
        if request.path in ("/healthz", "/readyz"):
            response.headers[WORKER_HEADER] = str(worker.number)

    async def install(app: web.Application) -> None:
        from aiohttp.web_runner import GracefulExit

        loop = asyncio.get_running_loop()
        stopping = False

        def on_stop_signal(name: str) -> None:
            # The parent forwards SIGTERM; a service manager or a terminal may send it to the
            # whole group too. The first one starts the graceful stop; another one in the
            # middle of it would cut it short (aiohttp's own handler raises again).
            nonlocal stopping
            if stopping:
                logs.log("signal_ignored", signal=name, reason="already stopping")
                return
            stopping = True
            logs.log("stopping", signal=name)
            raise GracefulExit()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_stop_signal, sig.name)

        def parent_gone() -> None:
            loop.remove_reader(worker.parent_fd)
            logs.log("parent_gone", "warning")
            os.kill(os.getpid(), signal.SIGTERM)

        loop.add_reader(worker.parent_fd, parent_gone)

    app.on_response_prepare.append(header)
    # First: a stop signal during start-up is handled like one later on.
    app.on_startup.insert(0, install)


def ready_notifier(worker: Worker) -> Callable[..., None]:
    """What ``web.run_app`` calls (as ``print``) once the worker listens: tell the parent."""

    def notify(*_args: object, **_kwargs: object) -> None:
        os.write(worker.ready_fd, f"{worker.number} {os.getpid()}\n".encode())
        os.close(worker.ready_fd)

    return notify
