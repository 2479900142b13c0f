"""Delivery benchmark: ingest to a local HTTP sink, one record a request and batches of 100.

    .venv/bin/python bench/delivery.py [--duration 10] [--rate R] [--rounds 2]
                                       [--drain-timeout 30] [--profile DIR]

Everything in one run, on the same machine, so the results are ratios within the run:

(a) Throughput. The same single-record signed ``POST /v1/records`` load as bench/ingest.py (wrk
    replaying pre-signed requests with ``replay.lua``) for ``--duration`` seconds against
    1. the gateway with delivery off (``GATEWAY_DELIVERY=false``, same mapping, so ingest does
       the same writes: the record and its delivery row): the **ingest-only** baseline;
    2. the gateway delivering each record in its own request (http, ``body: object``,
       ``batch_size: 1``) to a sink;
    3. the gateway delivering in batches (``batch_size: 100``, ``batch_wait: 50ms``,
       ``body: array``).
    The sink is a minimal aiohttp server in its own process (its CPU is not the gateway's) that
    logs each record's ``seq`` and arrival time. Reported: ingest requests/s, records delivered
    per second during the load, the backlog when the load stopped, and the drain time (from the
    end of the load until the sink had every accepted record). ``--rounds`` rounds of the three
    runs (order reversed every other round); ratios are taken within a round.
(b) Latency, from the 202 to arrival at the sink, at a fixed offered load (``--rate``, default
    half the median ingest-only rate of (a)): an open-loop generator (asyncio + aiohttp client,
    its own process; requests signed with botocore's SigV4Auth before the timed part) logs the
    202 time of each ``seq``; the sink logs its arrival time; both use ``time.time()``.

Each gateway run gets a fresh data and mappings directory. ``--profile DIR`` also records a
py-spy flame graph of the gateway during each delivery run's load (costs CPU: not for the
numbers). The result is written to bench/results/delivery-<UTC time>.md and printed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from ingest import Signer, _data, _wait, ensure_wrk, run_wrk  # noqa: E402

from tests.support.gateway_proc import GatewayProcess, free_port  # noqa: E402
from tests.support.signing import sign  # noqa: E402

GROUP = "demo"
MAPPING = """\
group_key: {group}
description: delivery benchmark, {name}
integrations:
  - name: sink
    type: http
    connection:
      url: "{url}"
    settings: {{body: {body}}}
    fields:
      seq: seq
      email: epost
      first_name: {{path: namn, transform: [first_word]}}
      last_name: {{path: namn, transform: [rest_words]}}
      tags: {{path: some_tags, transform: [lower]}}
    options: {{{options}}}
"""
CONFIGS = {
    "unbatched": {"body": "object", "options": "batch_size: 1, concurrency: 32"},
    "batched": {"body": "array", "options": "batch_size: 100, batch_wait: 50ms"},
}
GATEWAY_ENV = {
    "GATEWAY_LOG_LEVEL": "warning",
    "GATEWAY_RATE_LIMIT": "1000000",
    "GATEWAY_RATE_BURST": "1000000",
}


def record(i: int) -> dict:
    """bench/ingest.py's record, with a unique ``seq`` the sink and the generator log."""
    return {**_data(i), "seq": i}


def signed(url: str, key: str, secret: str, i: int) -> tuple[str, str, str]:
    """(X-Amz-Date, Authorization, body) of record ``i``, signed by botocore's SigV4Auth."""
    body = json.dumps({"group_key": GROUP, "data": record(i)})
    _, headers = sign(
        "POST", url, body.encode(), {"Content-Type": "application/json"}, key=key, secret=secret
    )
    return headers["X-Amz-Date"], headers["Authorization"], body


# -- the sink (its own process) --------------------------------------------------------------
def sink_main(port: int) -> None:
    """Answer 200 to every POST, log (seq, arrival time) of each record in the body."""
    import orjson
    import uvloop
    from aiohttp import web

    arrivals: list[tuple[int, float]] = []
    seen: set[int] = set()
    state = {"requests": 0}

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        t = time.time()
        state["requests"] += 1
        doc = orjson.loads(body)
        for r in doc if isinstance(doc, list) else [doc]:
            seq = r["seq"]
            arrivals.append((seq, t))
            seen.add(seq)
        return web.Response(body=b'{"ok":true}', content_type="application/json")

    async def stats(_: web.Request) -> web.Response:
        return web.Response(
            body=orjson.dumps(
                {"requests": state["requests"], "records": len(arrivals), "unique": len(seen)}
            ),
            content_type="application/json",
        )

    async def dump(_: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(arrivals), content_type="application/json")

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/in", receive)
    app.router.add_get("/stats", stats)
    app.router.add_get("/dump", dump)
    web.run_app(
        app,
        host="127.0.0.1",
        port=port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


class Sink:
    """The sink process."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, __file__, "_sink", str(self.port)])
        _wait(self.port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/in"

    def _get(self, path: str) -> object:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as r:
            return json.loads(r.read())

    def stats(self) -> dict:
        return self._get("/stats")  # type: ignore[return-value]

    def first_arrivals(self) -> tuple[dict[int, float], int]:
        """First arrival time of each seq, and how many arrivals were duplicates."""
        first: dict[int, float] = {}
        dups = 0
        for seq, t in self._get("/dump"):  # type: ignore[union-attr]
            if seq in first:
                dups += 1
                first[seq] = min(first[seq], t)
            else:
                first[seq] = t
        return first, dups

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


# -- the open-loop load generator (its own process) -----------------------------------------
def load_main(url: str, key: str, secret: str, rate: float, duration: float, out: str) -> None:
    """Send ``rate`` x ``duration`` pre-signed records at fixed times, whatever the answers
    take; write each seq's 202 time (and its schedule lag) to ``out`` as JSON."""
    import aiohttp
    import uvloop

    n = int(rate * duration)
    t0 = time.perf_counter()
    reqs = [signed(url, key, secret, i) for i in range(n)]
    print(f"generator: signed {n} requests in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    async def run() -> dict:
        acked: list[tuple[int, float, int]] = []
        lags: list[float] = []
        waits: list[float] = []  # from the scheduled send to the answer
        errors: list[str] = []
        connector = aiohttp.TCPConnector(limit=512)
        async with aiohttp.ClientSession(connector=connector) as session:
            loop = asyncio.get_running_loop()

            async def one(i: int) -> None:
                date, auth, body = reqs[i]
                headers = {
                    "Content-Type": "application/json",
                    "X-Amz-Date": date,
                    "Authorization": auth,
                }
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        acked.append((i, time.time(), resp.status))
                        waits.append(loop.time() - (start + i / rate))
                except aiohttp.ClientError as exc:
                    errors.append(repr(exc))

            start = loop.time() + 0.2
            wall_start = time.time() + (start - loop.time())
            tasks = set()
            i = 0
            while i < n:
                now = loop.time()
                while i < n and start + i / rate <= now:
                    lags.append(now - (start + i / rate))
                    task = asyncio.create_task(one(i))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    i += 1
                if i < n:
                    await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
            wall_sent = time.time()
            if tasks:
                await asyncio.wait(set(tasks))
            return {
                "start": wall_start,
                "sent_end": wall_sent,
                "end": time.time(),
                "acked": acked,
                "lag_max": max(lags) if lags else 0.0,
                "ingest_p50": pct(waits, 0.5) if waits else None,
                "ingest_p99": pct(waits, 0.99) if waits else None,
                "lag_p99": sorted(lags)[int(0.99 * (len(lags) - 1))] if lags else 0.0,
                "errors": errors[:5],
                "n_errors": len(errors),
            }

    result = uvloop.run(run())
    Path(out).write_text(json.dumps(result))


# -- helpers ---------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_stall() -> float:
    """Seconds so far in which some runnable task waited for a CPU (Linux PSI), or NaN."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return float("nan")
    return int(line.rsplit("total=", 1)[1]) / 1e6


def commits(gw: GatewayProcess) -> tuple[float, float]:
    """The store's write transactions so far and their total seconds (``GET /metrics``)."""
    with urllib.request.urlopen(gw.url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("gateway_store_commit_seconds_count", "gateway_store_commit_seconds_sum"):
            values[name] = float(value)
    return values["gateway_store_commit_seconds_count"], values["gateway_store_commit_seconds_sum"]


def writer_stats(before: tuple[float, float], after: tuple[float, float], seconds: float) -> dict:
    n, busy = after[0] - before[0], after[1] - before[1]
    return {
        "tx_per_s": n / seconds,
        "writer_busy": busy / seconds,
        "tx_ms": 1000 * busy / max(n, 1),
    }


def db_query(gw: GatewayProcess, sql: str) -> list[tuple]:
    """A read-only query against the gateway's SQLite store (WAL: fine while it runs)."""
    conn = sqlite3.connect(f"file:{gw.data_dir / 'gateway.db'}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def stored(gw: GatewayProcess) -> int:
    """Records stored, once the count stops changing (the last commits have landed)."""
    last = -1
    while True:
        n = db_query(gw, "SELECT count(*) FROM records")[0][0]
        if n == last:
            return n
        last = n
        time.sleep(0.3)


def pending(gw: GatewayProcess) -> int:
    return db_query(gw, "SELECT count(*) FROM deliveries WHERE state = 'pending'")[0][0]


def start_gateway(root: Path, config: str, sink_url: str, delivery: bool) -> GatewayProcess:
    env = dict(GATEWAY_ENV)
    if not delivery:
        env["GATEWAY_DELIVERY"] = "false"
    gw = GatewayProcess(root, groups=(GROUP,), **env)
    (gw.mappings / f"{GROUP}.yaml").write_text(
        MAPPING.format(group=GROUP, name=config, url=sink_url, **CONFIGS[config])
    )
    return gw


def presign_file(path: Path, url: str, key: str, secret: str, n: int) -> None:
    """``n`` signed single-record requests in replay.lua's format (three lines each), signed
    with ingest.py's fast signer (botocore took ~50 s for a run's requests); the first is
    checked against botocore's signature."""
    signer = Signer(key, secret)
    with path.open("w") as f:
        for i in range(n):
            body = json.dumps({"group_key": GROUP, "data": record(i)})
            auth = signer.authorization(url, body.encode())
            if i == 0:
                _, headers = sign(
                    "POST",
                    url,
                    body.encode(),
                    {"Content-Type": "application/json"},
                    key=key,
                    secret=secret,
                    when=signer.when,
                )
                if headers["Authorization"] != auth:
                    raise SystemExit("the bench signer disagrees with botocore")
            f.write(f"{signer.date}\n{auth}\n{body}\n")


def start_profile(args: argparse.Namespace, gw: GatewayProcess, name: str) -> subprocess.Popen:
    if not args.profile:
        return None  # type: ignore[return-value]
    out = Path(args.profile) / f"delivery-{name}.svg"
    out.parent.mkdir(parents=True, exist_ok=True)
    pyspy = Path(sys.executable).parent / "py-spy"
    return subprocess.Popen(
        [
            str(pyspy),
            "record",
            "-d",
            str(args.duration),
            "-o",
            str(out),
            "--pid",
            str(gw.proc.pid),
            "--idle",
            "--threads",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_drained(
    sink: Sink, gw: GatewayProcess, expected: int, timeout: float
) -> tuple[bool, dict]:
    """Wait until the sink has ``expected`` distinct records (or the timeout)."""
    deadline = time.time() + timeout
    while True:
        st = sink.stats()
        if st["unique"] >= expected:
            return True, st
        if time.time() > deadline:
            return False, st
        time.sleep(0.1)


def timeline(accepted: list[float], first: dict[int, float], t0: float, t1: float) -> list[dict]:
    """Per 5 s from the start of the load: accepted and delivered records, backlog at the end."""
    arrivals = sorted(first.values())
    accepted = sorted(accepted)
    out = []
    step = 5.0
    t = t0
    a = d = 0
    while t < t1:
        end = min(t + step, t1)
        a2 = sum(1 for x in accepted if x < end)
        d2 = sum(1 for x in arrivals if x < end)
        out.append(
            {
                "from": t - t0,
                "to": end - t0,
                "accepted": a2 - a,
                "delivered": d2 - d,
                "backlog": a2 - d2,
            }
        )
        a, d = a2, d2
        t = end
    return out


# -- the runs --------------------------------------------------------------------------------
def run_throughput(
    args: argparse.Namespace, wrk: str, name: str, config: str, delivery: bool, n_requests: int
) -> dict:
    """Single-record wrk load for ``--duration`` s; with delivery, wait for the drain."""
    with tempfile.TemporaryDirectory(prefix=f"delivery-{name}-") as tmp:
        root = Path(tmp)
        sink = Sink() if delivery else None
        gw = start_gateway(
            root, config, sink.url if sink else f"http://127.0.0.1:{free_port()}/in", delivery
        )
        try:
            key, secret = gw.create_key(GROUP)
            reqfile = root / "requests.txt"
            t = time.perf_counter()
            presign_file(reqfile, f"{gw.url}/v1/records", key, secret, n_requests)
            print(
                f"[{name}] pre-signed {n_requests} requests in {time.perf_counter() - t:.1f} s",
                file=sys.stderr,
            )
            gw.start()
            prof = start_profile(args, gw, name) if delivery else None
            tx0 = commits(gw)
            stall0 = cpu_stall()
            cpu0 = cpu_seconds(gw.proc.pid)
            sink_cpu0 = cpu_seconds(sink.proc.pid) if sink else 0.0
            t_start = time.time()
            w = run_wrk(wrk, gw.url, "/v1/records", reqfile, 1, args.connections, args.duration)
            t_end = time.time()
            cpu = cpu_seconds(gw.proc.pid) - cpu0
            sink_cpu = (cpu_seconds(sink.proc.pid) - sink_cpu0) if sink else 0.0
            tx1 = commits(gw)
            stall = cpu_stall() - stall0
            pending_at_end = pending(gw) if sink else None
            # Requests wrk had in flight when it stopped are still committed after it exits.
            accepted = stored(gw)
            r = {
                "name": name,
                "config": config,
                "delivery": delivery,
                "wrk": {k: v for k, v in w.items() if k != "raw"},
                "accepted": accepted,
                "load_seconds": t_end - t_start,
                "ingest_rps": accepted / (t_end - t_start),
                "gateway_cpu": cpu / (t_end - t_start),
                "sink_cpu": sink_cpu / (t_end - t_start),
                **writer_stats(tx0, tx1, t_end - t_start),
                "cpu_pressure": stall / (t_end - t_start),
            }
            if w["requests"] - w["non_2xx"] > accepted:
                r["warning"] = (
                    f"wrk got {w['requests'] - w['non_2xx']} 2xx but only {accepted} records "
                    "were stored (requests replayed: pre-sign more)"
                )
            print(
                f"[{name}] {accepted} accepted in {t_end - t_start:.1f} s "
                f"({r['ingest_rps']:.0f}/s), gateway CPU {r['gateway_cpu']:.0%}",
                file=sys.stderr,
            )
            if sink is not None:
                r["pending_at_end_db"] = pending_at_end
                drained, st = wait_drained(sink, gw, accepted, args.drain_timeout)
                t_drained = time.time()
                r["pending_after_drain_db"] = pending(gw)
                if prof is not None:
                    prof.wait()
            gw.stop()
            received = [x for (x,) in db_query(gw, "SELECT received_at FROM records ORDER BY 1")]
            if sink is not None:
                first, dups = sink.first_arrivals()
                in_load = sum(1 for t in first.values() if t <= t_end)
                r.update(
                    drained=drained,
                    delivered_total=len(first),
                    duplicates=dups,
                    sink_requests=st["requests"],
                    delivered_in_load=in_load,
                    delivered_rps=in_load / (t_end - t_start),
                    backlog_at_end=accepted - in_load,
                    drain_seconds=(max(first.values()) - t_end) if drained else None,
                    waited_seconds=t_drained - t_end,
                    # Deliveries per second after the load (how fast the backlog went).
                    drain_rps=(len(first) - in_load)
                    / max(1e-9, (max(first.values()) if drained else t_drained) - t_end),
                    timeline=timeline(received, first, t_start, t_end),
                )
                print(
                    f"[{name}] delivered {in_load} during the load ({r['delivered_rps']:.0f}/s), "
                    f"backlog {r['backlog_at_end']}, "
                    + (
                        f"drained {r['drain_seconds']:.1f} s after"
                        if drained
                        else f"NOT drained after {r['waited_seconds']:.0f} s "
                        f"({accepted - len(first)} missing)"
                    ),
                    file=sys.stderr,
                )
            return r
        finally:
            if gw.proc is not None and gw.proc.poll() is None:
                gw.stop()
            if sink is not None:
                sink.stop()


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p * (len(s) - 1)))]


def run_latency(args: argparse.Namespace, name: str, config: str, rate: float) -> dict:
    """Open-loop load at ``rate``; latency of each record from its 202 to the sink."""
    with tempfile.TemporaryDirectory(prefix=f"delivery-{name}-") as tmp:
        root = Path(tmp)
        sink = Sink()
        gw = start_gateway(root, config, sink.url, True)
        try:
            key, secret = gw.create_key(GROUP)
            gw.start()
            out = root / "acked.json"
            tx0 = commits(gw)
            stall0 = cpu_stall()
            wall0 = time.time()
            cpu0 = cpu_seconds(gw.proc.pid)
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "_load",
                    f"{gw.url}/v1/records",
                    key,
                    secret,
                    str(rate),
                    str(args.duration),
                    str(out),
                ],
                check=True,
            )
            gen = json.loads(out.read_text())
            cpu = cpu_seconds(gw.proc.pid) - cpu0
            tx1 = commits(gw)
            stall = (cpu_stall() - stall0) / (time.time() - wall0)
            acked = {seq: t for seq, t, status in gen["acked"] if status == 202}
            drained, _ = wait_drained(sink, gw, len(acked), args.drain_timeout)
            pending_after = pending(gw)
            gw.stop()
            first, dups = sink.first_arrivals()
        finally:
            if gw.proc is not None and gw.proc.poll() is None:
                gw.stop()
            sink.stop()
    lat = [first[s] - t for s, t in acked.items() if s in first]
    missing = len(acked) - len(lat)
    n = int(rate * args.duration)
    r = {
        "name": name,
        "config": config,
        "offered_rate": rate,
        "sent": n,
        "achieved_rate": n / max(1e-9, gen["sent_end"] - gen["start"]),
        "schedule_lag_p99": gen["lag_p99"],
        "schedule_lag_max": gen["lag_max"],
        "acked": len(acked),
        "non_202": len(gen["acked"]) - len(acked),
        "client_errors": gen["n_errors"],
        "delivered": len(lat),
        "missing": missing,
        "duplicates": dups,
        "drained": drained,
        "gateway_cpu": cpu / max(1e-9, gen["end"] - gen["start"]),
        "ingest_p50": gen["ingest_p50"],
        "ingest_p99": gen["ingest_p99"],
        "pending_in_store_after": pending_after,
        **writer_stats(tx0, tx1, gen["end"] - gen["start"]),
        "cpu_pressure": stall,
    }
    if lat:
        # Records never delivered count as slower than any that were.
        full = lat + [float("inf")] * missing
        r.update(
            {f"p{int(p * 100)}": pct(full, p) for p in (0.5, 0.9, 0.99)},
            max=max(full),
            min=min(lat),
        )
    print(
        f"[{name}] {len(acked)} acked at {rate:.0f}/s, "
        + (
            f"p50 {r['p50'] * 1000:.0f} ms, p99 {r['p99'] * 1000:.0f} ms, missing {missing}"
            if lat
            else "nothing delivered"
        ),
        file=sys.stderr,
    )
    return r


# -- report ----------------------------------------------------------------------------------
def ms(x: float | None) -> str:
    if x is None:
        return "-"
    if x == float("inf"):
        return "not delivered"
    return f"{x * 1000:.0f} ms"


def code_state() -> str:
    """The last commit of gateway/ the gateway ran from, and any uncommitted changes there."""

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=HERE.parent, capture_output=True, text=True).stdout

    last = git("log", "-1", "--format=%h", "--", "gateway").strip()
    dirty = git("status", "--porcelain", "--", "gateway").rstrip()
    if not dirty:
        return f"gateway code: {last} (last commit touching gateway/)"
    files = ", ".join(line[3:] for line in dirty.splitlines())
    digest = hashlib.sha256(git("diff", "--", "gateway").encode()).hexdigest()[:8]
    return (
        f"gateway code: {last} (last commit touching gateway/) plus uncommitted changes in "
        f"{files} (diff {digest})"
    )


LABELS = {
    "ingest_only": "ingest only (`GATEWAY_DELIVERY=false`)",
    "unbatched": "one record a request (`batch_size: 1`, object)",
    "batched": "batches of 100 (`batch_size: 100, batch_wait: 50ms`, array)",
}
RUNS = tuple(LABELS)


def median(xs: list[float]) -> float:
    s = sorted(xs)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def report(args: argparse.Namespace, res: dict, rate: float, started: float) -> str:
    rounds: list[dict[str, dict]] = res["rounds"]
    cmd = ".venv/bin/python bench/delivery.py " + " ".join(sys.argv[1:])
    lines = [
        f"# Delivery benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}; wrk -t1 -c{args.connections} -d{args.duration}s; "
        f"SQLite synchronous=FULL (default); sink and load generator in their own processes; "
        f"whole run {time.time() - started:.0f} s  ",
        f"{res['code']}",
        "",
        "## (a) Throughput: single-record ingest load, delivery to a local HTTP sink",
        "",
        f"{len(rounds)} round(s) of the three runs (order reversed in even rounds); ratios are "
        "taken within a round.",
        "",
        "| round | run | ingest req/s | delivered rec/s during load | delivered / ingest-only "
        "| backlog at end of load | drain time | gateway CPU | store tx/s | writer busy "
        "| CPU pressure |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, rnd in enumerate(rounds, 1):
        base = rnd["ingest_only"]["ingest_rps"]
        for key in RUNS:
            r = rnd[key]
            tail = (
                f"| {r['gateway_cpu']:.0%} | {r['tx_per_s']:.0f} | {r['writer_busy']:.0%} "
                f"| {r['cpu_pressure']:.0%} |"
            )
            if not r["delivery"]:
                lines.append(
                    f"| {n} | {LABELS[key]} | {r['ingest_rps']:.0f} | - | - | - | - {tail}"
                )
                continue
            drain = (
                f"{r['drain_seconds']:.1f} s"
                if r["drained"]
                else f"not drained after {r['waited_seconds']:.0f} s "
                f"({r['accepted'] - r['delivered_total']} left, {r['drain_rps']:.0f}/s)"
            )
            lines.append(
                f"| {n} | {LABELS[key]} | {r['ingest_rps']:.0f} | {r['delivered_rps']:.0f} "
                f"| **{r['delivered_rps'] / base:.0%}** | {r['backlog_at_end']} | {drain} {tail}"
            )

    def ratios(key: str, of: str = "base") -> list[float]:
        return [
            r[key]["delivered_rps"]
            / (r["ingest_only"]["ingest_rps"] if of == "base" else r[key]["ingest_rps"])
            for r in rounds
        ]

    def own_ingest(key: str) -> list[float]:
        return [r[key]["ingest_rps"] / r["ingest_only"]["ingest_rps"] for r in rounds]

    def listed(xs: list[float]) -> str:
        return ", ".join(f"{x:.0%}" for x in xs)

    def per_cpu(key: str) -> list[float]:
        # Records per second of gateway CPU: less sensitive to other work on the machine.
        return [
            (r[key]["delivered_rps"] / r[key]["gateway_cpu"])
            / (r["ingest_only"]["ingest_rps"] / r["ingest_only"]["gateway_cpu"])
            for r in rounds
        ]

    bm = median(ratios("batched"))
    lines += [
        "",
        "Ingest req/s = records stored / load time (wrk's own figures below). Delivered = "
        "distinct records the sink got between the start and the end of the load. Gateway CPU = "
        "share of one core during the load (all its threads). Store tx/s and writer busy = the "
        "SQLite writer thread's transactions a second and the share of the time it was inside "
        "one (BEGIN to COMMIT), from `gateway_store_commit_seconds` in `/metrics`. CPU "
        "pressure = share of the time some runnable task on the machine waited for a CPU "
        "(`/proc/pressure/cpu`): well above 0% means other work was competing for the 2 cores.",
        "",
        f"- **batches of 100: delivered / ingest-only = {bm:.0%}** (median; rounds "
        f"{listed(ratios('batched'))}). Target: keeps up with the single-record ingest rate "
        f"(100%): **{'met' if bm >= 1 else 'missed'}**. Delivered / that run's own ingest "
        f"{listed(ratios('batched', 'own'))}; its ingest / ingest-only "
        f"{listed(own_ingest('batched'))}. Per gateway CPU-second (delivered records per "
        f"CPU-second / ingest-only records per CPU-second): {listed(per_cpu('batched'))}.",
        f"- one record a request: delivered / ingest-only = "
        f"{median(ratios('unbatched')):.0%} (rounds {listed(ratios('unbatched'))}); delivered "
        f"/ its own ingest {listed(ratios('unbatched', 'own'))}; its ingest / ingest-only "
        f"{listed(own_ingest('unbatched'))}; per gateway CPU-second "
        f"{listed(per_cpu('unbatched'))}.",
        "",
        "Per 5 s of the load (accepted / delivered / backlog at the end of the 5 s):",
        "",
    ]
    for n, rnd in enumerate(rounds, 1):
        for key in ("unbatched", "batched"):
            tl = " · ".join(
                f"{x['accepted']}/{x['delivered']}/{x['backlog']}" for x in rnd[key]["timeline"]
            )
            lines.append(f"- round {n}, {key}: {tl}")
    lines += [
        "",
        "| round | run | wrk req/s | wrk requests | non-2xx | p50 | p99 | duplicates at sink "
        "| sink requests | pending in store at end of load | sink CPU | ms per store tx |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    warnings = []
    for n, rnd in enumerate(rounds, 1):
        for key in RUNS:
            r = rnd[key]
            w = r["wrk"]
            lines.append(
                f"| {n} | {key} | {w['rps']:.0f} | {w['requests']} | {w['non_2xx']} "
                f"| {w['p50']} | {w['p99']} | {r.get('duplicates', '-')} "
                f"| {r.get('sink_requests', '-')} | {r.get('pending_at_end_db', '-')} "
                f"| {format(r['sink_cpu'], '.0%') if r['delivery'] else '-'} "
                f"| {r['tx_ms']:.2f} |"
            )
            if "warning" in r:
                warnings.append(f"Warning (round {n}, {key}): {r['warning']}")
    if warnings:
        lines += ["", *warnings]
    lines += [
        "",
        f"## (b) Latency from the 202 to arrival at the sink, open loop at {rate:.0f} records/s"
        + (" (`--rate`)" if args.rate else " (half the median ingest-only rate)"),
        "",
        "| config | achieved rate | 202s | p50 | p90 | p99 | max | not delivered "
        "| ingest p50 / p99 | gateway CPU | writer busy | CPU pressure | target p99 < 250 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in ("lat_unbatched", "lat_batched"):
        r = res[key]
        ok = r.get("p99") is not None and r["p99"] < 0.25
        lines.append(
            f"| {LABELS[r['config']]} | {r['achieved_rate']:.0f}/s | {r['acked']} "
            f"| {ms(r.get('p50'))} | {ms(r.get('p90'))} | {ms(r.get('p99'))} "
            f"| {ms(r.get('max'))} | {r['missing']} "
            f"| {ms(r['ingest_p50'])} / {ms(r['ingest_p99'])} | {r['gateway_cpu']:.0%} "
            f"| {r['writer_busy']:.0%} | {r['cpu_pressure']:.0%} "
            f"| **{'met' if ok else 'missed'}** |"
        )
    lines += [
        "",
        "Latency = sink arrival - 202 time of the same `seq`. Ingest p50 / p99 = from the "
        "scheduled send to the 202, at the generator. Earliest latency below zero means the "
        "generator logged some 202s late (its own event loop was behind, see schedule lag).",
        "",
        *(
            f"- {res[k]['config']}: schedule lag p99 {ms(res[k]['schedule_lag_p99'])}, "
            f"max {ms(res[k]['schedule_lag_max'])}; non-202 {res[k]['non_202']}; "
            f"client errors {res[k]['client_errors']}; duplicates at sink "
            f"{res[k]['duplicates']}; earliest latency {ms(res[k].get('min'))}; store tx/s "
            f"{res[k]['tx_per_s']:.0f}; still pending in the store when the sink had all: "
            f"{res[k]['pending_in_store_after']}"
            for k in ("lat_unbatched", "lat_batched")
        ),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_sink":
        sink_main(int(sys.argv[2]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_load":
        url, key, secret, rate, duration, out = sys.argv[2:8]
        load_main(url, key, secret, float(rate), float(duration), out)
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds of load in each run")
    ap.add_argument(
        "--rate",
        type=float,
        help="offered records/s for (b); default half the median ingest-only rate of (a)",
    )
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the three (a) runs")
    ap.add_argument("--connections", type=int, default=64, help="wrk connections")
    ap.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="longest wait for the sink to have everything after the load",
    )
    ap.add_argument("--profile", metavar="DIR", help="py-spy flame graphs of the delivery runs")
    ap.add_argument("--json", metavar="PATH", help="where to write the raw numbers (JSON)")
    args = ap.parse_args()
    started = time.time()
    wrk = ensure_wrk()
    res: dict = {"code": code_state(), "rounds": []}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    # Enough distinct signatures that wrk never wraps around (a replay would not be stored):
    # generous before the first ingest-only run, then from the fastest rate seen.
    fastest = 0.0
    for n in range(args.rounds):
        rnd: dict[str, dict] = {}
        for key in RUNS if n % 2 == 0 else tuple(reversed(RUNS)):
            count = int(fastest * args.duration * 1.4) + 5000 if fastest else 9000 * args.duration
            config = "unbatched" if key == "unbatched" else "batched"
            name = f"{key}-{n + 1}"
            rnd[key] = run_throughput(args, wrk, name, config, key != "ingest_only", count)
            fastest = max(fastest, rnd[key]["ingest_rps"])
        res["rounds"].append(rnd)
    rate = args.rate or median([r["ingest_only"]["ingest_rps"] for r in res["rounds"]]) / 2
    res["lat_unbatched"] = run_latency(args, "lat_unbatched", "unbatched", rate)
    res["lat_batched"] = run_latency(args, "lat_batched", "batched", rate)
    if code_state() != res["code"]:
        res["code"] += f"; changed during the run, now {code_state().split(': ', 1)[1]}"
    text = report(args, res, rate, started)
    print(text)
    out = HERE / "results" / f"delivery-{datetime.now(UTC):%Y%m%d-%H%M}.md"
    out.write_text(text)
    raw = Path(args.json or Path(tempfile.gettempdir()) / f"{out.stem}.json")
    res["result"] = str(out)
    raw.write_text(json.dumps(res, indent=1, default=str))
    print(f"raw numbers in {raw}", file=sys.stderr)
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
