"""Scale-out benchmark: SQLite one process, PostgreSQL one process, PostgreSQL two processes.

    .venv/bin/python bench/scale.py [--duration 8] [--connections 64] [--pool-max N]

In one run, on the same machine, for each configuration:

1. **sqlite-1**: one gateway, the default SQLite store (``synchronous=FULL``);
2. **pg-1**: one gateway, ``GATEWAY_STORE=postgresql://...`` on a fresh database;
3. **pg-2**: two gateway processes (two ports, the same ``GATEWAY_MASTER_KEY``) on one fresh
   database; the key is made once and works on both; the load is split evenly: one wrk per
   port at the same time, each with half the connections and its own pre-signed requests
   (signed for its own port, disjoint ``seq`` ranges).

two runs, each with a fresh store (a new PostgreSQL database per run, made with asyncpg as in
tests/pg.py and dropped at the end):

- **ingest**: the single-record signed ``POST /v1/records`` wrk load of bench/delivery.py with
  delivery off (``GATEWAY_DELIVERY=false``): requests/s = records stored / load time;
- **batched**: the same load with delivery on, bench/delivery.py's batched http configuration
  (``batch_size: 100``, ``batch_wait: 50ms``, ``body: array``) to its sink process: records the
  sink got during the load per second, plus the drain after.

Reported: ratios against sqlite-1 and pg-2 against pg-1, the gateways' CPU per record (all
their threads, ``/proc/<pid>/stat``), the PostgreSQL server's CPU (its processes on this
machine), store transactions a second (``/metrics``) and CPU pressure (``/proc/pressure/cpu``).
The machine has 2 cores shared by wrk, the gateways, the sink and PostgreSQL (and other work).
Result: bench/results/scale-<UTC time>.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import json
import os
import platform
import secrets
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import asyncpg  # noqa: E402
from delivery import (  # noqa: E402
    Sink,
    code_state,
    commits,
    cpu_seconds,
    cpu_stall,
    signed,
    start_gateway,
    stored,
    wait_drained,
)
from ingest import ensure_wrk, run_wrk  # noqa: E402

from tests.support import pg  # noqa: E402

CONFIGS = ("sqlite-1", "pg-1", "pg-2")
LABELS = {
    "sqlite-1": "SQLite, one process",
    "pg-1": "PostgreSQL, one process",
    "pg-2": "PostgreSQL, two processes",
}


def presign(path: Path, url: str, key: str, secret: str, start: int, n: int) -> None:
    """``n`` signed single-record requests, seq ``start`` on, in replay.lua's format."""
    with path.open("w") as f:
        for i in range(start, start + n):
            date, auth, body = signed(url, key, secret, i)
            f.write(f"{date}\n{auth}\n{body}\n")


def postgres_cpu() -> dict[int, float]:
    """CPU seconds so far of each ``postgres`` process on this machine, by pid."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        if stat.split("(", 1)[1].split(")", 1)[0] == "postgres":
            fields = stat.rsplit(")", 1)[1].split()
            out[int(d.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float], pids=None) -> float:
    """CPU seconds between two snapshots, of ``pids`` (default all; exited ones are lost)."""
    return sum(v - before.get(p, 0.0) for p, v in after.items() if pids is None or p in pids)


async def backend_pids(url: str) -> set[int]:
    """Server processes connected to ``url``'s database (the gateways' pools)."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
        return {r["pid"] for r in rows}
    finally:
        await conn.close()


async def pg_count(url: str) -> int:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return await conn.fetchval("SELECT count(*) FROM records")
    finally:
        await conn.close()


def pg_stored(url: str) -> int:
    """Records stored, once the count stops changing."""
    last = -1
    while True:
        n = asyncio.run(pg_count(url))
        if n == last:
            return n
        last = n
        time.sleep(0.3)


def run(args: argparse.Namespace, wrk: str, cfg: str, delivery: bool, n_requests: int) -> dict:
    """One run: fresh store, the gateway(s), wrk for ``--duration`` s, drain if delivering."""
    name = f"{cfg}-{'batched' if delivery else 'ingest'}"
    procs = 2 if cfg == "pg-2" else 1
    db_url = asyncio.run(pg.create_database()) if cfg.startswith("pg") else None
    store_url = db_url + (f"?pool_max={args.pool_max}" if args.pool_max else "") if db_url else None
    master = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    sink = Sink() if delivery else None
    sink_url = sink.url if sink else "http://127.0.0.1:9/in"
    gws = []
    with tempfile.TemporaryDirectory(prefix=f"scale-{name}-") as tmp:
        try:
            for p in range(procs):
                root = Path(tmp) / f"gw{p}"
                gw = start_gateway(root, "batched", sink_url, delivery)
                if store_url:
                    gw.env.update(GATEWAY_STORE=store_url, GATEWAY_MASTER_KEY=master)
                gws.append(gw)
            key, secret = gws[0].create_key("demo")
            per = n_requests if procs == 1 else int(n_requests * 0.75)
            files = []
            t = time.perf_counter()
            for p, gw in enumerate(gws):
                f = Path(tmp) / f"requests-{p}.txt"
                presign(f, f"{gw.url}/v1/records", key, secret, p * per, per)
                files.append(f)
            print(
                f"[{name}] pre-signed {per * procs} in {time.perf_counter() - t:.1f} s",
                file=sys.stderr,
            )
            for gw in gws:
                gw.start()
            time.sleep(0.5)
            tx0 = [commits(gw) for gw in gws]
            cpu0 = [cpu_seconds(gw.proc.pid) for gw in gws]
            pg0 = postgres_cpu()
            stall0 = cpu_stall()
            sink_cpu0 = cpu_seconds(sink.proc.pid) if sink else 0.0
            conns = args.connections // procs
            t_start = time.time()
            with concurrent.futures.ThreadPoolExecutor(procs) as pool:
                futs = [
                    pool.submit(run_wrk, wrk, gw.url, "/v1/records", f, 1, conns, args.duration)
                    for gw, f in zip(gws, files, strict=True)
                ]
                wrks = [fu.result() for fu in futs]
            t_end = time.time()
            secs = t_end - t_start
            cpus = [cpu_seconds(gw.proc.pid) - c for gw, c in zip(gws, cpu0, strict=True)]
            pg1 = postgres_cpu()
            pg_cpu = cpu_delta(pg0, pg1)
            own = asyncio.run(backend_pids(db_url)) if db_url else set()
            pg_own = cpu_delta(pg0, pg1, own)
            stall = cpu_stall() - stall0
            sink_cpu = (cpu_seconds(sink.proc.pid) - sink_cpu0) if sink else 0.0
            tx1 = [commits(gw) for gw in gws]
            accepted = pg_stored(db_url) if db_url else stored(gws[0])
            ok = sum(w["requests"] - w["non_2xx"] for w in wrks)
            r = {
                "name": name,
                "config": cfg,
                "delivery": delivery,
                "procs": procs,
                "wrk": [{k: v for k, v in w.items() if k != "raw"} for w in wrks],
                "accepted": accepted,
                "load_seconds": secs,
                "ingest_rps": accepted / secs,
                "gateway_cpu": [c / secs for c in cpus],
                "gateway_cpu_total": sum(cpus) / secs,
                "postgres_cpu": pg_cpu / secs,
                "postgres_own_cpu": pg_own / secs,
                "backends": len(own),
                "sink_cpu": sink_cpu / secs,
                "tx_per_s": sum(b[0] - a[0] for a, b in zip(tx0, tx1, strict=True)) / secs,
                "tx_ms": 1000
                * sum(b[1] - a[1] for a, b in zip(tx0, tx1, strict=True))
                / max(1, sum(b[0] - a[0] for a, b in zip(tx0, tx1, strict=True))),
                "cpu_pressure": stall / secs,
            }
            if ok > accepted:
                r["warning"] = f"wrk got {ok} 2xx but {accepted} records stored (replays?)"
            print(
                f"[{name}] {accepted} accepted ({r['ingest_rps']:.0f}/s), gateway CPU "
                f"{r['gateway_cpu_total']:.0%}, postgres {pg_cpu / secs:.0%} (own db "
                f"{pg_own / secs:.0%}), pressure "
                f"{r['cpu_pressure']:.0%}",
                file=sys.stderr,
            )
            if sink is not None:
                drained, st = wait_drained(sink, gws[0], accepted, args.drain_timeout)
                t_drained = time.time()
                for gw in gws:
                    gw.stop()
                first, dups = sink.first_arrivals()
                in_load = sum(1 for x in first.values() if x <= t_end)
                r.update(
                    drained=drained,
                    delivered_total=len(first),
                    duplicates=dups,
                    sink_requests=st["requests"],
                    delivered_in_load=in_load,
                    delivered_rps=in_load / secs,
                    backlog_at_end=accepted - in_load,
                    drain_seconds=(max(first.values()) - t_end) if drained else None,
                    waited_seconds=t_drained - t_end,
                )
                print(
                    f"[{name}] delivered {in_load} in the load ({r['delivered_rps']:.0f}/s), "
                    f"backlog {r['backlog_at_end']}, drained {drained}",
                    file=sys.stderr,
                )
            return r
        finally:
            for gw in gws:
                if gw.proc is not None and gw.proc.poll() is None:
                    gw.stop()
            if sink is not None:
                sink.stop()
            if db_url:
                asyncio.run(pg.drop_database(db_url))


def report(args: argparse.Namespace, res: dict, started: float) -> str:
    runs = res["runs"]
    base_i = runs["sqlite-1"]["ingest"]["ingest_rps"]
    base_d = runs["sqlite-1"]["batched"]["delivered_rps"]
    cmd = "python bench/scale.py " + " ".join(sys.argv[1:])
    lines = [
        f"# Scale-out benchmark, {datetime.fromtimestamp(started, UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `.venv/bin/{cmd.strip()}`  ",
        f"{res['code']}  ",
        f"Machine: {os.cpu_count()} cores (shared with other sessions' work), "
        f"{platform.python_implementation()} {platform.python_version()}, PostgreSQL "
        f"{res['pg_version']} on the same machine; wrk -t1 -c{args.connections} "
        f"-d{args.duration}s (pg-2: two wrk at once, -c{args.connections // 2} each); "
        f"pool_max {args.pool_max or 'default (10)'}; took {time.time() - started:.0f} s.",
        "",
        "| configuration | ingest req/s | vs sqlite-1 | batched: delivered rec/s in load "
        "| vs sqlite-1 | batched: its ingest req/s | backlog / drain |",
        "|---|---|---|---|---|---|---|",
    ]
    for cfg in CONFIGS:
        i, b = runs[cfg]["ingest"], runs[cfg]["batched"]
        drain = f"{b['drain_seconds']:.1f} s" if b["drained"] else "not drained"
        lines.append(
            f"| {LABELS[cfg]} | {i['ingest_rps']:,.0f} | {i['ingest_rps'] / base_i:.2f}x "
            f"| {b['delivered_rps']:,.0f} | {b['delivered_rps'] / base_d:.2f}x "
            f"| {b['ingest_rps']:,.0f} | {b['backlog_at_end']} / {drain} |"
        )
    p1, p2 = runs["pg-1"], runs["pg-2"]
    lines += [
        "",
        f"- **PostgreSQL two processes / one**: ingest "
        f"**{p2['ingest']['ingest_rps'] / p1['ingest']['ingest_rps']:.2f}x**, delivered "
        f"**{p2['batched']['delivered_rps'] / p1['batched']['delivered_rps']:.2f}x**.",
        "",
        "CPU during the load, as a share of one core (2 = both cores), and per record "
        "(ingest runs: per record stored; batched: per record stored, delivery included):",
        "",
        "| run | gateway CPU (each process) | gateway ms/record | PostgreSQL CPU: this "
        "database's backends (all postgres processes) | backends ms/record | sink CPU "
        "| store tx/s | ms per tx | CPU pressure "
        "| wrk req/s | non-2xx | p50 / p99 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    warnings = []
    for cfg in CONFIGS:
        for kind in ("ingest", "batched"):
            r = runs[cfg][kind]
            n = r["accepted"] / r["load_seconds"]
            lines.append(
                f"| {cfg} {kind} | {r['gateway_cpu_total']:.2f} ("
                + ", ".join(f"{c:.2f}" for c in r["gateway_cpu"])
                + f") | {1000 * r['gateway_cpu_total'] / n:.3f} "
                f"| {r['postgres_own_cpu']:.2f} ({r['postgres_cpu']:.2f}) "
                f"| {1000 * r['postgres_own_cpu'] / n:.3f} | {r['sink_cpu']:.2f} "
                f"| {r['tx_per_s']:.0f} | {r['tx_ms']:.2f} | {r['cpu_pressure']:.0%} "
                f"| {' + '.join(format(w['rps'], '.0f') for w in r['wrk'])} "
                f"| {sum(w['non_2xx'] for w in r['wrk'])} "
                f"| {', '.join(str(w['p50']) + ' / ' + str(w['p99']) for w in r['wrk'])} |"
            )
            if "warning" in r:
                warnings.append(f"Warning ({r['name']}): {r['warning']}")
    lines += [
        "",
        "Ingest req/s = records stored / load time. Delivered = distinct records the sink got "
        "during the load / load time. Gateway CPU = user + system of all the gateway "
        "processes' threads; PostgreSQL CPU = the server processes connected to the run's "
        "database at the end of the load (the gateways' pools), in brackets every `postgres` "
        "process on the machine (WAL writer, checkpointer, and other sessions' tests, which "
        "use the same server: see the SQLite rows). Store tx/s and ms per tx = ingest group "
        "commits from `gateway_store_commit_seconds` (summed over processes). CPU pressure = "
        "share of the time some runnable task waited for a CPU (`/proc/pressure/cpu`): wrk, "
        "the gateways, the sink and PostgreSQL all share the 2 cores.",
        *(["", *warnings] if warnings else []),
        "",
    ]
    return "\n".join(lines)


async def pg_version() -> str:
    conn = await asyncpg.connect(pg.ADMIN_URL, timeout=5)
    try:
        return (await conn.fetchval("SHOW server_version")).split()[0]
    finally:
        await conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=8, help="seconds of load in each run")
    ap.add_argument("--connections", type=int, default=64, help="wrk connections in all")
    ap.add_argument("--pool-max", type=int, help="PostgreSQL pool_max (default: the store's)")
    ap.add_argument("--drain-timeout", type=float, default=30.0)
    args = ap.parse_args()
    started = time.time()
    wrk = ensure_wrk()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    res: dict = {"code": code_state(), "pg_version": asyncio.run(pg_version()), "runs": {}}
    fastest = 0.0
    for cfg in CONFIGS:
        res["runs"][cfg] = {}
        for delivery in (False, True):
            n = int(fastest * args.duration * 1.5) + 6000 if fastest else 6000 * args.duration
            r = run(args, wrk, cfg, delivery, n)
            res["runs"][cfg]["batched" if delivery else "ingest"] = r
            fastest = max(fastest, r["ingest_rps"])
    if code_state() != res["code"]:
        res["code"] += f"; changed during the run, now {code_state().split(': ', 1)[1]}"
    text = report(args, res, started)
    print(text)
    out = HERE / "results" / f"scale-{datetime.fromtimestamp(started, UTC):%Y%m%d-%H%M}.md"
    out.write_text(text)
    raw = Path(tempfile.gettempdir()) / f"{out.stem}.json"
    raw.write_text(json.dumps(res, indent=1, default=str))
    print(f"raw numbers in {raw}; written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
