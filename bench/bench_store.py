"""Store ingest throughput: ``commit_ingest`` from many concurrent tasks (group commit).

    .venv/bin/python bench/bench_store.py --tasks 200 --records 1 --writes 50000
    .venv/bin/python bench/bench_store.py --tasks 200 --records 100 --writes 2000

Each write holds ``--records`` records (two deliveries each) and one signature idempotency
entry, like the ingest API's; ``--tasks`` tasks commit them concurrently. Prints records/s,
writes/s, transactions, the mean group size and the CPU spent per 1000 records. The store is a
SQLite file in a temporary directory unless ``--path`` is given, or the database of ``--url``
(any store URL, e.g. ``postgresql://postgres@127.0.0.1:5432/gw_bench``: give it an empty
database of its own).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.ids import delivery_id, record_id
from gateway.store import open_store
from gateway.store.base import IdempotencyEntry, IngestWrite, NewRecord

DATA = json.dumps(
    {"epost": "john.doe@example.com", "namn": "John Doe", "some_tags": ["TAG1", "TAG2"]}
).encode()
INTEGRATIONS = ["crm", "mail"]


def make_write(n: int) -> IngestWrite:
    """A write like the ingest API's: ``n`` records and a signature idempotency entry."""
    now = time.time()
    records = [
        NewRecord(
            record_id(), "demo", "AKGWBENCH", DATA, now, INTEGRATIONS,
            [delivery_id() for _ in INTEGRATIONS], "v1",
        )
        for _ in range(n)
    ]  # fmt: skip
    sig = "sig:" + os.urandom(32).hex()
    entry = IdempotencyEntry(
        "AKGWBENCH", sig, "h" * 64, 202, b'{"status":"accepted"}', now, now + 600
    )
    return IngestWrite(records, [entry])


async def run(args: argparse.Namespace, url: str) -> dict[str, float]:
    """Commit ``args.writes`` pre-built writes from ``args.tasks`` tasks; the measurements.

    Writes are built before the clock starts, so the numbers are the store's (building a
    write, mostly generating ids, is the ingest API's cost, not the store's).
    """
    store = open_store(url, synchronous=args.synchronous, max_pending_writes=10**9)
    await store.open()

    async def drive(writes: list[IngestWrite]) -> list[float]:
        latencies: list[float] = []
        source = iter(writes)

        async def worker() -> None:
            for write in source:  # tasks share one iterator: each write is committed once
                t = time.perf_counter()
                await store.commit_ingest(write)
                latencies.append(time.perf_counter() - t)

        await asyncio.gather(*(worker() for _ in range(args.tasks)))
        return latencies

    # Warm up (file creation, page cache), then measure.
    await drive([make_write(args.records) for _ in range(max(args.writes // 10, args.tasks))])
    writes = [make_write(args.records) for _ in range(args.writes)]
    commits0, writes0 = store.stats.ingest_commits, store.stats.ingest_writes
    started, cpu0 = time.perf_counter(), time.process_time()
    latencies = await drive(writes)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu0
    commits = store.stats.ingest_commits - commits0
    n_writes = store.stats.ingest_writes - writes0
    await store.close()
    latencies.sort()
    return {
        "seconds": elapsed,
        "records_per_s": n_writes * args.records / elapsed,
        "writes_per_s": n_writes / elapsed,
        "transactions": commits,
        "transactions_per_s": commits / elapsed,
        "mean_writes_per_transaction": n_writes / max(commits, 1),
        # CPU of the whole process (event loop, writer and reader threads) per 1000 records:
        # steadier than records/s on a shared machine.
        "cpu_ms_per_1k_records": 1000 * cpu / max(n_writes * args.records, 1) * 1000,
        "latency_p50_ms": 1000 * statistics.median(latencies),
        "latency_p99_ms": 1000 * latencies[max(int(len(latencies) * 0.99) - 1, 0)],
    }


def main() -> None:
    """Parse flags, run, print."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", type=int, default=200, help="concurrent writers")
    p.add_argument("--records", type=int, default=1, help="records per write")
    p.add_argument("--writes", type=int, default=20000, help="writes to commit (measured)")
    p.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"])
    p.add_argument("--path", type=Path, help="SQLite store file (default: a temporary one)")
    p.add_argument("--url", help="store URL instead of a SQLite file (e.g. postgresql://...)")
    p.add_argument("--json", action="store_true", help="print JSON")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        path = args.path or Path(tmp) / "bench.db"
        result = asyncio.run(run(args, args.url or f"sqlite:///{path}"))
    config = {k: getattr(args, k) for k in ("tasks", "records", "writes", "synchronous")}
    if args.json:
        print(json.dumps({**config, **result}))
        return
    print(" ".join(f"{k}={v}" for k, v in config.items()))
    for k, v in result.items():
        print(f"  {k:30} {v:12.1f}")


if __name__ == "__main__":
    main()
