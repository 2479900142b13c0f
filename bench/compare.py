"""Before/after in one run: the bare handler, the gateway at a git ref and the working tree's
gateway, under the same wrk load, in alternating order, with each one's CPU per request.

    .venv/bin/python bench/compare.py [--ref main] [--duration 8] [--rounds 3] [--batch 0]
                                      [--workers 1]

On a shared, noisy machine only ratios within one round mean anything; CPU per request (the
gateway process's user + system time over the requests it answered) varies less than
requests per second. The ref's ``gateway/`` is extracted with ``git archive`` into a temporary
directory and put first on the gateway processes' ``PYTHONPATH`` (so ``--workers`` runs the
ref's code in its workers too); the data directory is fresh for every run. Writes a Markdown
result to bench/results/.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from ingest import _pressure, ensure_wrk, presign, run_wrk  # noqa: E402

from tests.support.gateway_proc import GatewayProcess  # noqa: E402

_GATEWAY = "import sys\nfrom gateway import cli\nsys.exit(cli.main(sys.argv[1:]))"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) and of its children
    (the workers of ``serve --workers``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return total + sum(cpu_seconds(int(c)) for c in children)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ref", default="main", help="git ref of the 'before' gateway")
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=0, help="records a request (0: single)")
    ap.add_argument("--workers", type=int, default=1, help="GATEWAY_WORKERS of both gateways")
    args = ap.parse_args()
    wrk = ensure_wrk()
    path = "/v1/records/batch" if args.batch else "/v1/records"
    per_request = max(args.batch, 1)
    rows: list[tuple[int, str, dict]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ref_dir = root / "ref"
        ref_dir.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(HERE.parent), "archive", args.ref, "gateway"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(ref_dir)], input=archive, check=True)
        commands = {
            "bare": [sys.executable, str(HERE / "bare_server.py")],
            args.ref: [sys.executable, "-c", _GATEWAY],
            "working tree": [sys.executable, "-c", _GATEWAY],
        }
        # The working tree's gateway is the installed package (editable); the ref's comes first.
        paths = {args.ref: {"PYTHONPATH": str(ref_dir)}}
        first = 0
        for rnd in range(args.rounds):
            order = list(commands) if rnd % 2 == 0 else list(commands)[::-1]
            for name in order:
                gw = GatewayProcess(
                    root / f"{rnd}-{order.index(name)}",
                    groups=("demo",),
                    GATEWAY_LOG_LEVEL="warning",
                    GATEWAY_RATE_LIMIT="1000000",
                    GATEWAY_RATE_BURST="1000000",
                    GATEWAY_WORKERS=str(args.workers),
                    **paths.get(name, {}),
                )
                key, secret = gw.create_key("demo")
                gw.command = commands[name]
                n = (16000 if not args.batch else 60000 // per_request) * args.duration
                reqs = root / "requests.txt"
                presign(reqs, f"{gw.url}{path}", key, secret, n, args.batch, first)
                first += n * per_request
                gw.start()
                try:
                    c0 = cpu_seconds(gw.proc.pid)
                    conns = 64 if not args.batch else 16
                    r = run_wrk(wrk, gw.url, path, reqs, 1, conns, args.duration)
                    r["cpu_us"] = (cpu_seconds(gw.proc.pid) - c0) / max(r["requests"], 1) * 1e6
                finally:
                    gw.stop()
                rows.append((rnd + 1, name, r))
                print(
                    f"round {rnd + 1} {name}: {r['rps'] * per_request:.0f} records/s",
                    file=sys.stderr,
                )
    report(args, rows, per_request)


def report(args: argparse.Namespace, rows: list[tuple[int, str, dict]], per_request: int) -> None:
    """Print and write the result table and the per-round ratios."""
    load = os.getloadavg()
    lines = [
        f"# Before/after, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `python bench/compare.py {' '.join(sys.argv[1:])}`  ",
        f"{'single records' if not args.batch else f'batches of {args.batch}'}, wrk -t1 "
        f"-c{64 if not args.batch else 16} -d{args.duration}s, SQLite synchronous=FULL, "
        f"{args.workers} gateway worker(s), delivery engine running; load average at the end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}, "
        f"CPU pressure now {_pressure():.0f}%",
        "",
        "| round | server | records/s | p50 | p99 | CPU µs/request | non-2xx | replayed "
        "| CPU pressure |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for rnd, name, r in rows:
        lines.append(
            f"| {rnd} | {name} | {r['rps'] * per_request:.0f} | {r['p50']} | {r['p99']} "
            f"| {r['cpu_us']:.0f} | {r['non_2xx']} | {r['replayed']} | {r['pressure']:.0f}% |"
        )
    lines.append("")
    for rnd in sorted({r for r, _, _ in rows}):
        got = {name: r for rr, name, r in rows if rr == rnd}
        bare, ref, new = got["bare"], got[args.ref], got["working tree"]
        lines.append(
            f"- round {rnd}: working tree / bare **{new['rps'] / bare['rps']:.2f}x** "
            f"({args.ref}: {ref['rps'] / bare['rps']:.2f}x); working tree / {args.ref} "
            f"**{new['rps'] / ref['rps']:.2f}x** records/s, "
            f"**{new['cpu_us'] / ref['cpu_us']:.2f}x** CPU a request"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    kind = "single" if not args.batch else f"batch{args.batch}"
    out = HERE / "results" / f"compare-{kind}-{datetime.now(UTC):%Y%m%d-%H%M}.md"
    out.write_text(text)
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
