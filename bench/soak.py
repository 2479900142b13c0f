"""Soak benchmark: minutes of mixed signed load with integration outages and mapping reloads.

    .venv/bin/python bench/soak.py [--minutes 5] [--threads 2] [--pause 0.01]
                                   [--outage-every 60] [--outage 15] [--reload-every 20]

A real ``gateway serve`` (SQLite store, the default) delivers one group's records to a local
deduplicating receiver (tests/support/dedup_receiver.py, keyed by Idempotency-Key) while
threads send SigV4-signed records (botocore's signer): single ``POST /v1/records`` and, every
4th request, a batch of 10 (tests/support/load.py). During the run:

- **integration outages**: every ``--outage-every`` seconds the receiver is out for
  ``--outage`` seconds, answering 503 the first half and not listening the second;
- **mapping reloads**: every ``--reload-every`` seconds the group's mapping file is rewritten
  (a constant field's value changes), picked up by the file watcher, and every other time a
  SIGHUP is sent too.

Recorded every 5 s: the gateway's RSS (``VmRSS``), open files (entries of ``/proc/PID/fd``)
and threads; and per minute the ingest answers' p50/p99 latency (client side: sent to answer,
signing included) and their statuses. Reported: the first minute against the last. At the end
the load stops, the receiver stays up, and every acknowledged record must arrive (once after
deduplication); the lost count is reported. The result goes to bench/results/soak-<UTC
time>.md and is printed. Not part of CI (it runs for minutes): the short fault tests in
tests/test_fault_*.py check the same properties in CI.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.support.dedup_receiver import DedupReceiver  # noqa: E402
from tests.support.gateway_proc import GatewayProcess  # noqa: E402
from tests.support.load import Outcome, SignedLoad, summary  # noqa: E402

MAPPING = """\
group_key: soak
integrations:
  - name: hook
    type: http
    connection:
      url: "{url}/in"
      connect_timeout: 1
      read_timeout: 2
    fields:
      tag: tag
      n: n
      generation: {{value: "{generation}"}}
    options:
      concurrency: 16
      retry: {{base: 50ms, cap: 1s, max_attempts: 100000, max_age: 1h}}
      breaker: {{failures: 5, cooldown: 500ms, max_cooldown: 2s}}
"""


def proc_sample(pid: int) -> dict[str, float]:
    """RSS (MiB), open files and threads of ``pid`` from /proc."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status if ":" in line)
    return {
        "rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(fields["Threads"].strip()),
    }


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` (nearest rank)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def window_stats(outcomes: list[Outcome]) -> dict[str, object]:
    """Latency percentiles (ms) of single-record answers and counts, for one window."""
    single = [(o.ended - o.started) * 1000 for o in outcomes if o.kind == "single"]
    records = sum(len(o.acked) for o in outcomes)
    return {
        "requests": len(outcomes),
        "records": records,
        "p50": percentile(single, 0.50),
        "p99": percentile(single, 0.99),
        "statuses": summary(outcomes),
    }


def git_head() -> str:
    try:
        return subprocess.run(
            ["git", "log", "-1", "--format=%h", "--", "gateway/"],
            capture_output=True,
            text=True,
            cwd=HERE.parent,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=2, help="load threads")
    ap.add_argument("--pause", type=float, default=0.01, help="seconds between a thread's requests")
    ap.add_argument("--outage-every", type=float, default=60.0)
    ap.add_argument("--outage", type=float, default=15.0)
    ap.add_argument("--reload-every", type=float, default=20.0)
    ap.add_argument("--drain-timeout", type=float, default=180.0)
    args = ap.parse_args()
    command = "bench/soak.py " + " ".join(sys.argv[1:])

    root = Path(tempfile.mkdtemp(prefix="gw-soak-"))
    duration = args.minutes * 60
    samples: list[tuple[float, dict[str, float]]] = []
    events: list[str] = []
    with DedupReceiver() as rx:
        gw = GatewayProcess(
            root,
            groups=(),
            GATEWAY_DELIVERY_POLL_INTERVAL="0.2",
            GATEWAY_MASTER_KEY="k" * 43 + "=",
        )
        mapping = gw.mappings / "soak.yaml"
        mapping.write_text(MAPPING.format(url=rx.url, generation=0))
        gw.start()
        assert gw.proc is not None
        pid = gw.proc.pid
        key, secret = gw.create_key("soak")
        load = SignedLoad(
            [gw.url], key, secret, "soak", threads=args.threads, batch_every=4, pause=args.pause
        )
        start = time.monotonic()
        load.start()
        next_sample = start
        next_outage = start + args.outage_every
        next_reload = start + args.reload_every
        outage_end = 0.0
        generation = 0
        try:
            while (now := time.monotonic()) < start + duration:
                if now >= next_sample:
                    samples.append((now - start, proc_sample(pid)))
                    next_sample += 5
                if now >= next_outage and not outage_end:
                    rx.fail()
                    outage_end = now + args.outage
                    events.append(f"{now - start:6.1f}s outage starts (503)")
                if outage_end and rx.state == "failing" and now >= outage_end - args.outage / 2:
                    rx.go_down()
                    events.append(f"{now - start:6.1f}s receiver stops listening")
                if outage_end and now >= outage_end:
                    rx.bring_up()
                    outage_end = 0.0
                    next_outage = now + args.outage_every
                    events.append(f"{now - start:6.1f}s receiver back")
                if now >= next_reload:
                    generation += 1
                    mapping.write_text(MAPPING.format(url=rx.url, generation=generation))
                    if generation % 2 == 0:
                        os.kill(pid, signal.SIGHUP)
                    next_reload += args.reload_every
                time.sleep(0.05)
            samples.append((time.monotonic() - start, proc_sample(pid)))
        finally:
            load.stop()
            rx.bring_up()
        end = time.monotonic()

        acked = set(load.acked.values())
        drain_started = time.monotonic()
        arrived = rx.wait_for_tags(acked, args.drain_timeout)
        drain = time.monotonic() - drain_started
        lost = acked - arrived.keys()
        twice = sum(1 for keys in arrived.values() if len(keys) > 1)
        after_drain = proc_sample(pid)
        output = gw.output()
        code = gw.stop()
    shutil.rmtree(root, ignore_errors=True)

    outcomes = load.snapshot()
    first = window_stats([o for o in outcomes if o.started < start + 60])
    last = window_stats([o for o in outcomes if o.started >= end - 60])
    s0, s1 = samples[0][1], samples[-1][1]
    # After a minute: caches, pools and allocator arenas warmed up (the fair baseline).
    warm = next((s for t, s in samples if t >= 60), s1)
    reloads = output.count('"mappings_loaded"')
    taken = datetime.now(UTC)
    lines = [
        f"# Soak benchmark, {taken:%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `.venv/bin/python {command.strip()}`  ",
        f"gateway code: {git_head()} (last commit touching gateway/)  ",
        f"Machine: {os.cpu_count()} cores (shared with other sessions' work), "
        f"CPython {platform.python_version()}; SQLite store; {args.threads} load threads, "
        f"{args.pause}s pause; outages of {args.outage:.0f}s every {args.outage_every:.0f}s; "
        f"a mapping rewrite every {args.reload_every:.0f}s (SIGHUP every other one).",
        "",
        "| | first minute | last minute |",
        "|---|---|---|",
        f"| ingest requests | {first['requests']} | {last['requests']} |",
        f"| records acknowledged | {first['records']} | {last['records']} |",
        f"| single-record p50 / p99 (ms) | {first['p50']:.1f} / {first['p99']:.1f} "
        f"| {last['p50']:.1f} / {last['p99']:.1f} |",
        f"| answers | {first['statuses']} | {last['statuses']} |",
        "",
        "| gateway process | at start | after 1 min | at end of load | after the drain |",
        "|---|---|---|---|---|",
        f"| RSS (MiB) | {s0['rss_mb']:.1f} | {warm['rss_mb']:.1f} | {s1['rss_mb']:.1f} "
        f"| {after_drain['rss_mb']:.1f} |",
        f"| open files (/proc/PID/fd) | {s0['fds']} | {warm['fds']} | {s1['fds']} "
        f"| {after_drain['fds']} |",
        f"| threads | {s0['threads']} | {warm['threads']} | {s1['threads']} "
        f"| {after_drain['threads']} |",
        "",
        f"- Load: {end - start:.0f} s, {len(outcomes)} requests, {len(acked)} records "
        f"acknowledged; all answers: {summary(outcomes)}.",
        f"- Delivery: {len(acked) - len(lost)} of {len(acked)} acknowledged records arrived "
        f"(**{len(lost)} lost**), {twice} under two idempotency keys, {rx.repeats} repeats "
        f"deduplicated by the receiver, {rx.refused} requests refused by it during outages; "
        f"drain after the load {drain:.1f} s.",
        f"- Mapping loads logged: {reloads} (1 at start + {generation} rewrites; a rewrite "
        "followed by a SIGHUP may load once or twice).",
        f"- Gateway exit code at stop: {code}.",
        "",
        "RSS and open files every 5 s (seconds: MiB / fds): "
        + ", ".join(
            f"{t:.0f}: {s['rss_mb']:.0f}/{s['fds']}"
            for t, s in samples[:: max(1, len(samples) // 12)]
        ),
        "",
        "Events: " + "; ".join(e.strip() for e in events),
        "",
    ]
    report = "\n".join(lines)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    path = results / f"soak-{taken:%Y%m%d-%H%M}.md"
    path.write_text(report)
    print(report)
    print(f"written to {path}")
    return 0 if not lost and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
