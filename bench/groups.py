"""Ingest with 1 group and with 10,000 groups, same run: the number of groups must not matter.

    .venv/bin/python bench/groups.py [--groups 10000] [--duration 8]

Two gateways in turn, each with its own store: one whose mappings directory holds one group,
one holding N (the single-record requests spread over all of them). wrk replays pre-signed
requests as in bench/ingest.py. Writes a Markdown result to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from ingest import ensure_wrk, run_wrk  # noqa: E402

from tests.gateway_proc import GatewayProcess  # noqa: E402
from tests.signing import sign  # noqa: E402

MAPPING = (
    "group_key: {g}\nintegrations:\n  - name: out\n    type: file\n"
    "    connection: {{path: ./out-{g}.ndjson}}\n    fields:\n"
    "      email: {{path: epost, transform: [trim, lower]}}\n      name: namn\n"
)


def run(root: Path, groups: int, requests: int, args: argparse.Namespace, wrk: str) -> dict:
    names = [f"g{i}" for i in range(groups)]
    gw = GatewayProcess(
        root,
        groups=(),
        GATEWAY_LOG_LEVEL="warning",
        GATEWAY_RATE_LIMIT="1000000",
        GATEWAY_RATE_BURST="1000000",
    )
    for g in names:
        (gw.mappings / f"{g}.yaml").write_text(MAPPING.format(g=g))
    key, secret = gw.create_key(*names)
    url = f"http://127.0.0.1:{gw.port}/v1/records"
    reqfile = root / "requests.txt"
    with reqfile.open("w") as f:
        for i in range(requests):
            body = json.dumps(
                {
                    "group_key": names[i % groups],
                    "data": {"epost": f"U{i}@example.com", "namn": "A B"},
                }
            ).encode()
            _, h = sign(
                "POST", url, body, {"Content-Type": "application/json"}, key=key, secret=secret
            )
            f.write(f"{h['X-Amz-Date']}\n{h['Authorization']}\n{body.decode()}\n")
    gw.start(timeout=120)
    try:
        return run_wrk(wrk, gw.url, "/v1/records", reqfile, 1, args.connections, args.duration)
    finally:
        gw.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--groups", type=int, default=10000)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--connections", type=int, default=64)
    args = ap.parse_args()
    wrk = ensure_wrk()
    n = 6000 * args.duration
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        one = run(Path(a), 1, n, args, wrk)
        many = run(Path(b), args.groups, n, args, wrk)
    cmd = "python bench/groups.py " + " ".join(sys.argv[1:])
    text = "\n".join(
        [
            f"# Ingest with 1 group vs {args.groups:,} groups, "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            "",
            f"Command: `{cmd.strip()}` (wrk -t1 -c{args.connections} -d{args.duration}s)",
            "",
            "| groups | requests/s | non-2xx | p50 | p99 |",
            "|---|---|---|---|---|",
            f"| 1 | {one['rps']:.0f} | {one['non_2xx']} | {one['p50']} | {one['p99']} |",
            f"| {args.groups:,} | {many['rps']:.0f} | {many['non_2xx']} | {many['p50']} "
            f"| {many['p99']} |",
            "",
            f"Ratio {args.groups:,} groups / 1 group: **{many['rps'] / one['rps']:.2f}** "
            "(target: no measurable difference; runs here vary by about 15%)",
            "",
        ]
    )
    print(text)
    (HERE / "results" / f"groups-{datetime.now(UTC):%Y%m%d-%H%M}.md").write_text(text)


if __name__ == "__main__":
    main()
