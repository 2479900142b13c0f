"""Ingest benchmark: the gateway against a bare aiohttp handler, same load generator, same run.

    .venv/bin/python bench/ingest.py [--duration 10] [--connections 64] [--threads 1]

Starts a bare aiohttp server that answers 202 (the baseline), then ``gateway serve`` (SQLite,
synchronous=FULL), and replays pre-signed requests at each with wrk (a Lua script; every request
has its own signature, so none is answered as a replay). Reports requests/s and records/s,
the ratios the targets are stated in, and writes a Markdown result to bench/results/.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import platform
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import orjson

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


class Signer:
    """SigV4 header signing for the load generator, the signing key derived once.

    Pre-signing 100,000s of requests with botocore takes minutes; this signs the same way
    (POST, signed headers content-type, host and x-amz-date, one X-Amz-Date for the file) in a
    few microseconds each. :func:`presign` checks its first request against botocore's
    signature, and the gateway refuses any that is wrong (wrk's non-2xx count).
    """

    def __init__(
        self, key: str, secret: str, region: str = "us-east-1", service: str = "execute-api"
    ):
        now = datetime.now(UTC)
        self.key = key
        self.date = now.strftime("%Y%m%dT%H%M%SZ")
        self.when = now.replace(microsecond=0)
        scope_date = self.date[:8]
        self.scope = f"{scope_date}/{region}/{service}/aws4_request"
        k = hmac.digest(b"AWS4" + secret.encode(), scope_date.encode(), "sha256")
        for part in (region, service, "aws4_request"):
            k = hmac.digest(k, part.encode(), "sha256")
        self.signing_key = k

    def authorization(self, url: str, body: bytes) -> str:
        """The Authorization header for ``POST url`` with ``body`` (application/json)."""
        parts = urlsplit(url)
        creq = (
            f"POST\n{parts.path}\n\ncontent-type:application/json\nhost:{parts.netloc}\n"
            f"x-amz-date:{self.date}\n\ncontent-type;host;x-amz-date\n"
            + hashlib.sha256(body).hexdigest()
        )
        sts = (
            f"AWS4-HMAC-SHA256\n{self.date}\n{self.scope}\n"
            + hashlib.sha256(creq.encode()).hexdigest()
        )
        sig = hmac.digest(self.signing_key, sts.encode(), "sha256").hex()
        return (
            f"AWS4-HMAC-SHA256 Credential={self.key}/{self.scope}, "
            f"SignedHeaders=content-type;host;x-amz-date, Signature={sig}"
        )


def presign(path: Path, url: str, key: str, secret: str, n: int, batch: int, first: int) -> None:
    """Write ``n`` distinct signed requests (three lines each) for the Lua script; record
    numbers start at ``first``, so every round and run of one benchmark sends new bodies."""
    signer = Signer(key, secret)
    with path.open("wb") as f:
        for i in range(n):
            if batch:
                base = first + i * batch
                body = orjson.dumps(
                    {
                        "records": [
                            {"group_key": "demo", "data": _data(base + j)} for j in range(batch)
                        ]
                    }
                )
            else:
                body = orjson.dumps({"group_key": "demo", "data": _data(first + i)})
            auth = signer.authorization(url, body)
            if i == 0:
                _, headers = sign(
                    "POST",
                    url,
                    body,
                    {"Content-Type": "application/json"},
                    key=key,
                    secret=secret,
                    when=signer.when,
                )
                if headers["Authorization"] != auth:
                    raise SystemExit("the bench signer disagrees with botocore")
            f.write(signer.date.encode() + b"\n" + auth.encode() + b"\n" + body + b"\n")


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
    """Run wrk; return requests/s, non-2xx count, replays, latency percentiles, CPU pressure."""
    pressure = _pressure()
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
    replayed = re.search(r"replayed: (\d+)", out)
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    return {
        "rps": rps,
        "requests": total,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "replayed": int(replayed.group(1)) if replayed else 0,
        "p50": lat.get("50"),
        "p99": lat.get("99"),
        "pressure": (pressure + _pressure()) / 2,
        "raw": out,
    }


def _pressure() -> float:
    """The machine's CPU pressure (some, avg10, %): how much other work competed."""
    try:
        text = Path("/proc/pressure/cpu").read_text()
    except OSError:
        return float("nan")
    return float(re.search(r"avg10=([\d.]+)", text).group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="wrk threads")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--big-batch", type=int, default=1000, help="0: no run with big batches")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, order reversed every other")
    ap.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"])
    ap.add_argument("--json", metavar="PATH", help="also write the rounds and ratios as JSON")
    ap.add_argument(
        "--workers",
        type=int,
        default=0,
        help="also run single records against `serve --workers N` (same store), N > 1",
    )
    ap.add_argument(
        "--ladder",
        action="store_true",
        help="also run the gateway cut short at each stage (bench/stage_server.py) to show "
        "where the time goes (first round only)",
    )
    args = ap.parse_args()
    wrk = ensure_wrk()
    rounds: list[dict[str, dict]] = []
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
        # Enough distinct requests that wrk never wraps around within a run (it counts any
        # replay it sends, and such a run is reported as invalid).
        sizes = {
            "single": (1, 16000 * args.duration),
            "batch": (args.batch_size, 60000 * args.duration // args.batch_size),
        }
        if args.big_batch:
            sizes["big"] = (args.big_batch, 80000 * args.duration // args.big_batch)
        if args.workers > 1:
            sizes["workers"] = (1, 16000 * args.duration)
        first = 0
        # delivery from the gateway runs throughout: the demo group's file integration
        gw.start()
        try:
            for rnd in range(args.rounds):
                files: dict[str, Path] = {}
                t0 = time.perf_counter()
                for name, (size, n) in sizes.items():
                    files[name] = root / f"{name}.txt"
                    path = "/v1/records/batch" if size > 1 else "/v1/records"
                    presign(
                        files[name],
                        f"{gw.url}{path}",
                        key,
                        secret,
                        n,
                        size if size > 1 else 0,
                        first,
                    )
                    first += n * size
                print(
                    f"round {rnd + 1}: pre-signed {sum(n for _, n in sizes.values())} requests "
                    f"in {time.perf_counter() - t0:.1f} s",
                    file=sys.stderr,
                )
                order = ["bare", *sizes]
                if rnd % 2:
                    order.reverse()
                results: dict[str, dict] = {}
                for name in order:
                    if name == "bare":
                        results["bare"] = _run_bare(wrk, bare_port, files["single"], args)
                        continue
                    size = sizes[name][0]
                    path = "/v1/records/batch" if size > 1 else "/v1/records"
                    conns = args.connections if size == 1 else min(args.connections, 16)
                    if name == "workers":  # the same store, served by N processes
                        gw.stop()
                        gw.env["GATEWAY_WORKERS"] = str(args.workers)
                        gw.start()
                    try:
                        results[name] = run_wrk(
                            wrk, gw.url, path, files[name], args.threads, conns, args.duration
                        )
                        # The next run must not pay for this one's deliveries.
                        results[name]["drain_s"] = drain(gw)
                    finally:
                        if name == "workers":
                            gw.stop()
                            del gw.env["GATEWAY_WORKERS"]
                            gw.start()
                    results[name]["size"] = size
                    print(
                        f"round {rnd + 1} {name}: {results[name]['rps']:.0f} req/s", file=sys.stderr
                    )
                if args.ladder and rnd == 0:
                    gw.stop()
                    for stage in STAGES:
                        # The stages store nothing: the same requests serve each of them.
                        gw.command = [sys.executable, str(HERE / "stage_server.py"), stage]
                        gw.start()
                        try:
                            results[f"stage:{stage}"] = run_wrk(
                                wrk, gw.url, "/v1/records", files["single"],
                                args.threads, args.connections, args.duration,
                            )  # fmt: skip
                            results[f"stage:{stage}"]["size"] = 1
                        finally:
                            gw.stop()
                    gw.command = [sys.executable, "-m", "gateway"]
                    gw.start()
                rounds.append(results)
        finally:
            gw.stop()
    report(args, rounds)


def _run_bare(wrk: str, port: int, reqfile: Path, args: argparse.Namespace) -> dict:
    # The bare server gets requests signed for the gateway's port: it never looks at them.
    bare = subprocess.Popen([sys.executable, str(HERE / "bare_server.py"), str(port)])
    try:
        _wait(port)
        r = run_wrk(
            wrk,
            f"http://127.0.0.1:{port}",
            "/v1/records",
            reqfile,
            args.threads,
            args.connections,
            args.duration,
        )
    finally:
        bare.terminate()
        bare.wait()
    r["size"] = 1
    r["replayed"] = 0  # the bare handler looks at nothing; replays cost it the same
    return r


def _wait(port: int) -> None:
    import socket

    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("bare server did not start")


PENDING = "SELECT count(*) FROM deliveries WHERE state = 'pending'"


def drain(gw: GatewayProcess, timeout: float = 300.0) -> float | None:
    """Seconds until the store has no pending delivery (the demo group's file integration
    has written every record of the run), or None after ``timeout``."""
    t0 = time.perf_counter()
    db = f"file:{gw.data_dir / 'gateway.db'}?mode=ro"
    while time.perf_counter() - t0 < timeout:
        conn = sqlite3.connect(db, uri=True, timeout=30)
        try:
            (n,) = conn.execute(
                "SELECT count(*) FROM deliveries WHERE state = 'pending'"
            ).fetchone()
        finally:
            conn.close()
        if n == 0:
            return time.perf_counter() - t0
        time.sleep(0.2)
    return None


def _row(name: str, r: dict) -> str:
    drained = r.get("drain_s", "-")
    if isinstance(drained, float):
        drained = f"{drained:.1f} s"
    elif drained is None:
        drained = "**not drained**"
    return (
        f"| {name} | {r['rps']:.0f} | {r['rps'] * r['size']:.0f} | {r['non_2xx']} "
        f"| {r['replayed']} | {r['p50']} | {r['p99']} | {drained} | {r['pressure']:.0f}% |"
    )


def _ratios(r: dict[str, dict]) -> dict[str, float]:
    single = r["single"]["rps"]
    out = {"single/bare": single / r["bare"]["rps"]}
    if "workers" in r:
        out["workers/bare"] = r["workers"]["rps"] / r["bare"]["rps"]
    for name in ("batch", "big"):
        if name in r:
            out[f"{name}/single"] = r[name]["rps"] * r[name]["size"] / single
    return out


def report(args: argparse.Namespace, rounds: list[dict[str, dict]]) -> None:
    """Print and write the result: every round's runs, its ratios, the best of the rounds."""
    cmd = "python bench/ingest.py " + " ".join(sys.argv[1:])
    names = {
        "bare": "bare aiohttp handler (202)",
        "single": "gateway, single record",
        "batch": f"gateway, batch of {args.batch_size}",
        "big": f"gateway, batch of {args.big_batch}",
        "workers": f"gateway, single record, `serve --workers {args.workers}`",
        **{f"stage:{st}": f"stage `{st}`: {STAGES[st]}" for st in STAGES},
    }
    load = os.getloadavg()
    lines = [
        f"# Ingest benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}, wrk -t{args.threads} -c{args.connections} "
        f"(batches: -c{min(args.connections, 16)}) -d{args.duration}s, SQLite "
        f"synchronous={args.synchronous}, delivery engine running (file integration); load "
        f"average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}",
        "",
        "Every request is signed once (`replayed` counts requests wrk sent a second time: "
        "must be 0, or the gateway answered them from its signature table). CPU pressure: "
        "`/proc/pressure/cpu` some avg10, other work competing for the cores. Delivered after: "
        "how long the file integration took, once the load stopped, to write the run's last "
        "record; the next run starts only then, so none pays for another's deliveries.",
        "",
    ]
    invalid = False
    for i, r in enumerate(rounds, 1):
        lines += [
            f"## Round {i} (order: {', '.join(k for k in r if not k.startswith('stage'))})",
            "",
            "| run | requests/s | records/s | non-2xx | replayed | p50 | p99 | delivered after "
            "| CPU pressure |",
            "|---|---|---|---|---|---|---|---|---|",
            *[_row(names[k], v) for k, v in r.items()],
            "",
            "- " + ", ".join(f"{k}: **{v:.2f}x**" for k, v in _ratios(r).items()),
            "",
        ]
        invalid |= any(v["replayed"] or v["non_2xx"] for v in r.values())
    best = {k: max(_ratios(r)[k] for r in rounds) for k in _ratios(rounds[0])}
    lines += [
        "## Best of the rounds (ratios within one round)",
        "",
        f"- single-record / bare handler: **{best['single/bare']:.2f}x** (target at least 0.60x)",
        f"- batch of {args.batch_size} / single, records/s: **{best['batch/single']:.1f}x** "
        "(target at least 10x)",
    ]
    if "workers/bare" in best:
        lines.append(
            f"- single-record with `--workers {args.workers}` / bare handler: "
            f"**{best['workers/bare']:.2f}x**"
        )
    if "big/single" in best:
        lines.append(
            f"- batch of {args.big_batch} / single, records/s: **{best['big/single']:.1f}x**"
        )
    if invalid:
        lines += ["", "**INVALID**: some run had replays or non-2xx answers (see the tables)."]
    lines.append("")
    text = "\n".join(lines)
    print(text)
    out = HERE / "results" / f"ingest-{datetime.now(UTC):%Y%m%d-%H%M}.md"
    out.write_text(text)
    print(f"written to {out}", file=sys.stderr)
    if args.json:
        doc = {
            "result": str(out),
            "rounds": [
                {k: {f: v for f, v in r.items() if f != "raw"} for k, r in rnd.items()}
                for rnd in rounds
            ],
            "ratios": [_ratios(r) for r in rounds],
            "best": best,
            "invalid": invalid,
        }
        Path(args.json).write_text(json.dumps(doc, indent=1, default=str))


if __name__ == "__main__":
    main()
