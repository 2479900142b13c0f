"""CPU instructions per request, counted by callgrind: the same answer on a busy machine.

    .venv/bin/python bench/instructions.py [--requests 1000]

Runs each server under ``valgrind --tool=callgrind`` with counting off, warms it with 50
requests, counts ``--requests`` signed single-record ``POST /v1/records`` sent one at a time
over one keep-alive connection (Python's http.client, in this process), and reports the
server's instructions (all its threads) per request, and each as a multiple of the bare
handler's:

- ``bare``: bench/bare_server.py, aiohttp answering 202;
- ``respond``, ``auth``, ``validate``: the gateway cut short at each stage
  (bench/stage_server.py);
- ``full``: ``gateway serve``, delivery on (the demo group's file integration).

Instruction counts do not depend on what else the machine runs (wrk's requests/s do), so a
change's effect shows at the first run (the servers run with ``PYTHONHASHSEED=0``; random ids
and keys still move a count by a fraction of a per cent). They are not time: a cache miss
costs no instruction, a system call's kernel work is not counted, and with one request at a
time the group commit groups nothing (``full`` pays a transaction and a delivery per record,
which concurrent load shares out). Read ``full`` as the worst case and the stages as exact.
"""

from __future__ import annotations

import argparse
import http.client
import re
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from ingest import presign  # noqa: E402

from tests.support.gateway_proc import GatewayProcess  # noqa: E402

SERVERS = {
    "bare": [str(HERE / "bare_server.py")],
    "respond": [str(HERE / "stage_server.py"), "respond"],
    "auth": [str(HERE / "stage_server.py"), "auth"],
    "validate": [str(HERE / "stage_server.py"), "validate"],
    "full": ["-m", "gateway"],
}
WARM = 50


def count(name: str, n: int, root: Path) -> int:
    """Instructions the server ``name`` runs for ``n`` requests, after the warm-up."""
    out = root / f"{name}.callgrind"
    gw = GatewayProcess(
        root / name,
        groups=("demo",),
        GATEWAY_LOG_LEVEL="warning",
        GATEWAY_RATE_LIMIT="1000000",
        GATEWAY_RATE_BURST="1000000",
        # String hashes are randomised per process, which moves the count by a few per cent.
        PYTHONHASHSEED="0",
    )
    key, secret = gw.create_key("demo")
    gw.command = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no",
        f"--callgrind-out-file={out}", sys.executable, *SERVERS[name],
    ]  # fmt: skip
    reqfile = root / f"{name}.txt"
    presign(reqfile, f"{gw.url}/v1/records", key, secret, n + WARM, 0, 0)
    lines = reqfile.read_bytes().split(b"\n")
    gw.start(timeout=600)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=120)
        for i in range(n + WARM):
            if i == WARM:
                subprocess.run(["callgrind_control", "-i", "on", str(gw.proc.pid)], check=True,
                               capture_output=True)  # fmt: skip
            date, auth, body = lines[3 * i : 3 * i + 3]
            conn.request(
                "POST",
                "/v1/records",
                body=body,
                headers={
                    "Content-Type": "application/json",
                    "X-Amz-Date": date.decode(),
                    "Authorization": auth.decode(),
                    "Host": f"127.0.0.1:{gw.port}",
                },
            )
            resp = conn.getresponse()
            resp.read()
            if resp.status != 202:
                raise SystemExit(f"{name}: request {i} answered {resp.status}")
        subprocess.run(["callgrind_control", "-i", "off", str(gw.proc.pid)], check=True,
                       capture_output=True)  # fmt: skip
    finally:
        gw.stop()
    text = subprocess.run(["callgrind_annotate", str(out)], capture_output=True, text=True).stdout
    found = re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", text)
    if found is None:
        raise SystemExit(f"{name}: no totals in callgrind's output")
    return int(found.group(1).replace(",", ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=1000)
    args = ap.parse_args()
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is needed: apt-get install valgrind")
    per: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in SERVERS:
            per[name] = count(name, args.requests, Path(tmp)) / args.requests
            print(f"{name}: {per[name]:,.0f} instructions a request", file=sys.stderr)
    lines = [
        f"# Instructions per request, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `python bench/instructions.py {' '.join(sys.argv[1:])}`  ",
        f"{args.requests} signed single-record requests one at a time (after {WARM} to warm "
        "up), callgrind, every thread of the server",
        "",
        "| server | instructions a request | x bare | added by this stage |",
        "|---|---|---|---|",
    ]
    prev = None
    for name, value in per.items():
        added = "" if prev is None else f"+{value - per[prev]:,.0f}"
        lines.append(f"| {name} | {value:,.0f} | {value / per['bare']:.2f}x | {added} |")
        prev = name
    text = "\n".join(lines) + "\n"
    print(text)
    out = HERE / "results" / f"instructions-{datetime.now(UTC):%Y%m%d-%H%M}.md"
    out.write_text(text)
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
