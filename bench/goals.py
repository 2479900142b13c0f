"""Issue 17's five performance goals, measured in one run, with one summary.

    .venv/bin/python bench/goals.py [--duration 8] [--rounds 2]

Runs, one after the other on this machine:

1. ``bench/ingest.py --ladder --workers 2`` (goals 1, 2 and 5): single-record ingest against a
   bare aiohttp handler, batches of 100 and 1,000 against single records, the stage ladder,
   single records over two workers, and the replay count of every run;
2. ``bench/delivery.py`` (goal 3): one record a request and batches of 100 delivered to a sink
   beside the single-record ingest load, and the latency from 202 to the sink at half the
   ingest-only rate;
3. ``pytest tests/test_delivery_recovery.py`` (goal 4): a restart after SIGKILL sends the dead
   process's claimed deliveries at once.

Writes ``results/goals-<UTC time>.md``: each goal, its target, the result (best of the rounds
for ratios taken within a round, as the scripts report them) and met or missed, with the
detailed result files beside it. On a shared machine, read the CPU pressure columns of those
files before the ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(cmd: list[str]) -> None:
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, cwd=HERE.parent)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=8, help="seconds of each load")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of ingest.py and delivery.py")
    args = ap.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        ingest_json, delivery_json = Path(tmp) / "ingest.json", Path(tmp) / "delivery.json"
        d, r = str(args.duration), str(args.rounds)
        run([py, str(HERE / "ingest.py"), "--duration", d, "--rounds", r, "--ladder",
             "--workers", "2", "--json", str(ingest_json)])  # fmt: skip
        run([py, str(HERE / "delivery.py"), "--duration", d, "--rounds", r,
             "--json", str(delivery_json)])  # fmt: skip
        recovery = subprocess.run(
            [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_delivery_recovery.py"],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
        )
        ingest = json.loads(ingest_json.read_text())
        delivery = json.loads(delivery_json.read_text())
    print(report(args, ingest, delivery, recovery))


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def report(
    args: argparse.Namespace,
    ingest: dict,
    delivery: dict,
    recovery: subprocess.CompletedProcess[str],
) -> str:
    """The summary table; also written to results/goals-<time>.md."""
    best = ingest["best"]
    rounds = delivery["rounds"]
    # Goal 3 as bench/delivery.py states it: delivered during the load / ingest-only rate.
    shares = [x["unbatched"]["delivered_rps"] / x["ingest_only"]["ingest_rps"] for x in rounds]
    own = [x["unbatched"]["delivered_rps"] / x["unbatched"]["ingest_rps"] for x in rounds]
    lat = delivery["lat_unbatched"]
    p99_ms = 1000 * lat["p99"] if lat.get("p99") is not None else float("inf")
    single_rounds = ", ".join(f"{x['single/bare']:.2f}" for x in ingest["ratios"])
    batch_rounds = ", ".join(f"{x['batch/single']:.1f}" for x in ingest["ratios"])
    replays = sum(x["replayed"] + x["non_2xx"] for rnd in ingest["rounds"] for x in rnd.values())
    passed = recovery.returncode == 0
    summary = recovery.stdout.strip().splitlines()[-1] if recovery.stdout.strip() else "no output"
    lines = [
        f"# Issue 17's goals, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `python bench/goals.py {' '.join(sys.argv[1:])}`  ",
        f"Details: `{Path(ingest['result']).name}` (goals 1, 2, 5) and "
        f"`{Path(delivery['result']).name}` (goal 3); {delivery['code']}",
        "",
        "| goal | target | result | |",
        "|---|---|---|---|",
        f"| 1. single record / bare aiohttp | >= 0.60x | {best['single/bare']:.2f}x "
        f"(rounds {single_rounds}); "
        f"two workers {best.get('workers/bare', float('nan')):.2f}x "
        f"| {_verdict(best['single/bare'] >= 0.6)} |",
        f"| 2. batch of 100 / single, records/s | >= 10x | {best['batch/single']:.1f}x "
        f"(rounds {batch_rounds}); batch of "
        f"1,000 {best.get('big/single', float('nan')):.1f}x "
        f"| {_verdict(min(x['batch/single'] for x in ingest['ratios']) >= 10)} |",
        f"| 3. one-a-request delivery / single ingest | >= 100%, p99 < 250 ms at half the rate "
        f"| {max(shares):.0%} of ingest-only (rounds {', '.join(f'{s:.0%}' for s in shares)}; of "
        f"its own run's ingest {', '.join(f'{s:.0%}' for s in own)}); p99 {p99_ms:,.0f} ms at "
        f"{lat['offered_rate']:,.0f}/s | {_verdict(max(shares) >= 1 and p99_ms < 250)} |",
        f"| 4. restart after SIGKILL on SQLite | claims sent at once | "
        f"tests/test_delivery_recovery.py: {summary} | {_verdict(passed)} |",
        f"| 5. no replays in the ingest runs | 0 | {replays} replayed or non-2xx "
        f"| {_verdict(replays == 0 and not ingest['invalid'])} |",
        "",
        "Goal 2 counts as met only when every round reaches it.",
        "",
    ]
    text = "\n".join(lines)
    out = HERE / "results" / f"goals-{datetime.now(UTC):%Y%m%d-%H%M}.md"
    out.write_text(text)
    print(f"written to {out}", file=sys.stderr)
    return text


if __name__ == "__main__":
    main()
