"""Ingest benchmark: the gateway against a bare aiohttp handler, same load generator, same run.

    .venv/bin/python bench/ingest.py [--duration 10] [--connections 64] [--threads 1]

Starts a bare aiohttp server that answers 202 (the baseline), then ``gateway serve`` (SQLite,
synchronous=FULL), and replays pre-signed requests at each with wrk (a Lua script; every request
has its own signature, so none is answered as a replay). Reports requests/s and records/s,
the ratios the targets are stated in, and writes a Markdown result to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.support.gateway_proc import GatewayProcess, free_port  # noqa: E402
from tests.support.signing import sign  # noqa: E402

STAGES = {
    "respond": "gateway app + middleware + request log, handler answers at once",
    "auth": "+ body read, SigV4 verification, key lookup, rate limit",
    "validate": "+ JSON, idempotency keys, validation, fan-out (no store)",
}


def ensure_wrk() -> str:
    """Path of wrk, installing Debian's package if it is missing."""
    path = shutil.which("wrk")
    if path:
        return path
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, capture_output=True)
    path = shutil.which("wrk")
    if not path:
        raise SystemExit("wrk is needed: apt-get install wrk")
    return path


def presign(path: Path, url: str, key: str, secret: str, n: int, batch: int) -> None:
    """Write ``n`` distinct signed requests (three lines each) for the Lua script."""
    with path.open("w") as f:
        for i in range(n):
            if batch:
                body = json.dumps(
                    {
                        "records": [
                            {"group_key": "demo", "data": _data(i * batch + j)}
                            for j in range(batch)
                        ]
                    }
                ).encode()
            else:
                body = json.dumps({"group_key": "demo", "data": _data(i)}).encode()
            _, headers = sign(
                "POST", url, body, {"Content-Type": "application/json"}, key=key, secret=secret
            )
            f.write(f"{headers['X-Amz-Date']}\n{headers['Authorization']}\n{body.decode()}\n")


def _data(i: int) -> dict:
    return {
        "epost": f"user{i}@example.com",
        "namn": "John Doe",
        "some_tags": ["TAG1", "TAG2"],
        "n": i,
    }


def run_wrk(
    wrk: str, url: str, path: str, reqfile: Path, threads: int, conns: int, duration: int
) -> dict:
    """Run wrk; return requests/s, non-2xx count and latency percentiles."""
    out = subprocess.run(
        [
            wrk,
            "-t",
            str(threads),
            "-c",
            str(conns),
            "-d",
            f"{duration}s",
            "--latency",
            "-s",
            str(HERE / "replay.lua"),
            url,
            "--",
            str(reqfile),
            path,
            str(threads),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    return {
        "rps": rps,
        "requests": total,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "p50": lat.get("50"),
        "p99": lat.get("99"),
        "raw": out,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="wrk threads")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"])
    ap.add_argument(
        "--ladder",
        action="store_true",
        help="also run the gateway cut short at each stage (bench/stage_server.py) to show "
        "where the time goes",
    )
    args = ap.parse_args()
    wrk = ensure_wrk()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        gw = GatewayProcess(
            root,
            groups=("demo",),
            GATEWAY_LOG_LEVEL="warning",
            GATEWAY_SQLITE_SYNCHRONOUS=args.synchronous,
            GATEWAY_RATE_LIMIT="1000000",
            GATEWAY_RATE_BURST="1000000",
        )
        key, secret = gw.create_key("demo")
        bare_port = free_port()
        # Enough distinct requests that wrk never wraps around within the run.
        n_single = max(20000, 12000 * args.duration)
        n_batch = max(500, 150 * args.duration)
        single = root / "single.txt"
        batch = root / "batch.txt"
        t0 = time.perf_counter()
        presign(single, f"http://127.0.0.1:{gw.port}/v1/records", key, secret, n_single, 0)
        presign(
            batch,
            f"http://127.0.0.1:{gw.port}/v1/records/batch",
            key,
            secret,
            n_batch,
            args.batch_size,
        )
        # The bare server gets requests signed for the gateway's port: it never looks at them.
        print(
            f"pre-signed {n_single} + {n_batch} requests in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )

        bare = subprocess.Popen([sys.executable, str(HERE / "bare_server.py"), str(bare_port)])
        try:
            _wait(bare_port)
            results["bare"] = run_wrk(
                wrk,
                f"http://127.0.0.1:{bare_port}",
                "/v1/records",
                single,
                args.threads,
                args.connections,
                args.duration,
            )
        finally:
            bare.terminate()
            bare.wait()
        if args.ladder:
            for stage in STAGES:
                gw.command = [sys.executable, str(HERE / "stage_server.py"), stage]
                gw.start()
                try:
                    results[f"stage:{stage}"] = run_wrk(
                        wrk,
                        gw.url,
                        "/v1/records",
                        single,
                        args.threads,
                        args.connections,
                        args.duration,
                    )
                finally:
                    gw.stop()
            gw.command = [sys.executable, "-m", "gateway"]
        gw.start()
        try:
            results["single"] = run_wrk(
                wrk, gw.url, "/v1/records", single, args.threads, args.connections, args.duration
            )
            results["batch"] = run_wrk(
                wrk,
                gw.url,
                "/v1/records/batch",
                batch,
                args.threads,
                min(args.connections, 16),
                args.duration,
            )
        finally:
            gw.stop()
    report(args, results)


def _wait(port: int) -> None:
    import socket

    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("bare server did not start")


def _row(name: str, r: dict, per_request: int) -> str:
    return (
        f"| {name} | {r['rps']:.0f} | {r['rps'] * per_request:.0f} | {r['non_2xx']} "
        f"| {r['p50']} | {r['p99']} |"
    )


def report(args: argparse.Namespace, r: dict[str, dict]) -> None:
    single_ratio = r["single"]["rps"] / r["bare"]["rps"]
    batch_records = r["batch"]["rps"] * args.batch_size
    batch_ratio = batch_records / r["single"]["rps"]
    cmd = "python bench/ingest.py " + " ".join(sys.argv[1:])
    lines = [
        f"# Ingest benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}, wrk -t{args.threads} -c{args.connections} "
        f"-d{args.duration}s, SQLite synchronous={args.synchronous}",
        "",
        "| run | requests/s | records/s | non-2xx | p50 | p99 |",
        "|---|---|---|---|---|---|",
        _row("bare aiohttp handler (202)", r["bare"], 1),
        _row("gateway, single record", r["single"], 1),
        _row(f"gateway, batch of {args.batch_size}", r["batch"], args.batch_size),
        *[
            _row(f"stage `{st}`: {STAGES[st]}", r[f"stage:{st}"], 1)
            for st in STAGES
            if f"stage:{st}" in r
        ],
        "",
        f"- single-record throughput / bare handler: **{single_ratio:.0%}** (target at least 60%)",
        f"- batch records/s / single records/s: **{batch_ratio:.1f}x** (target at least 10x)",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    out = HERE / "results" / f"ingest-{datetime.now(UTC):%Y%m%d-%H%M}.md"
    out.write_text(text)
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
