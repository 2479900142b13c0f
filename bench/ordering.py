"""Per-key ordering benchmark: delivered records/s with ordering off, on over 1,000 keys and on
over 10 keys, in one run.

    .venv/bin/python bench/ordering.py [--records 20000] [--rounds 2] [--postgres]
                                       [--batch-size 1] [--concurrency 16]

Each run stores ``--records`` records first (through the store's ingest path, the ordering key
stamped as ingest does), then starts a delivery engine on them and times the drain until a
local HTTP sink (bench/delivery.py's, in its own process) has every record. Delivered
records/s = records / drain time. The three configurations differ only in
``options.ordering_key``:

- ``off``: no ordering key (the baseline);
- ``keys-1000``: ``ordering_key: key`` with 1,000 distinct keys (each key 1/1000 of the
  records; the goal: >= 0.9x of ``off``);
- ``keys-10``: 10 keys (reported: one record of a key in flight at a time caps the lane at
  10 requests at once, whatever its concurrency).

``--rounds`` rounds of the three, the order reversed every other round; ratios are taken
within a round (the machine is shared: absolute numbers move between runs, ratios less). The
engine runs in this process on asyncio; the store is SQLite in a fresh directory per run, or
with ``--postgres`` a fresh schema per run on the local server (tests/support/pg.py).
Results: bench/results/ordering-<UTC>.md.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import orjson  # noqa: E402
from delivery import Sink  # noqa: E402

from gateway.delivery.engine import DeliveryEngine, EngineSettings  # noqa: E402
from gateway.ids import delivery_id, record_id  # noqa: E402
from gateway.mapping import ordering  # noqa: E402
from gateway.mapping.loader import MappingRegistry  # noqa: E402
from gateway.store import open_store  # noqa: E402
from gateway.store.base import IngestWrite, NewRecord  # noqa: E402
from tests.support import pg  # noqa: E402

MAPPING = """\
group_key: bench
integrations:
  - name: sink
    type: http
    connection:
      url: "{url}"
    settings: {{body: {body}}}
    fields:
      seq: seq
      key: key
      email: epost
    options: {{concurrency: {concurrency}, batch_size: {batch}{extra}}}
"""
CONFIGS = {"off": 0, "keys-1000": 1000, "keys-10": 10}


async def one_run(
    name: str, keys: int, args: argparse.Namespace, sink: Sink, offset: int, root: Path
) -> dict:
    mappings = root / "mappings"
    mappings.mkdir(parents=True)
    extra = ", ordering_key: key" if keys else ""
    body = "array" if args.batch_size > 1 else "object"
    (mappings / "bench.yaml").write_text(
        MAPPING.format(
            url=sink.url,
            body=body,
            concurrency=args.concurrency,
            batch=args.batch_size,
            extra=extra + (", batch_wait: 20ms" if args.batch_size > 1 else ""),
        )
    )
    registry = MappingRegistry(mappings)
    registry.reload()
    assert not registry.all_problems(), [str(p) for p in registry.all_problems()]
    mapping = registry.get("bench")
    url = await pg.create_schema() if args.postgres else f"sqlite:///{root / 'store.db'}"
    store = open_store(url)
    await store.open()
    n = args.records
    t0 = time.time() - 60
    for start in range(0, n, 500):
        recs = []
        for i in range(start, min(start + 500, n)):
            data = {"seq": offset + i, "key": f"k{i % keys}" if keys else "", "epost": "a@x.se"}
            r = NewRecord(
                record_id(), "bench", "AKBENCH", orjson.dumps(data), t0 + i * 1e-4,
                ["sink"], [delivery_id()],
            )  # fmt: skip
            ordering.stamp(r, mapping, data)
            recs.append(r)
        assert (await store.commit_ingest(IngestWrite(recs))).committed
    before = sink.stats()["unique"]
    engine = DeliveryEngine(store, registry, EngineSettings(lease_seconds=60, poll_interval=0.2))
    started = time.perf_counter()
    await engine.start()
    deadline = started + args.timeout
    got = 0
    while time.perf_counter() < deadline:
        got = sink.stats()["unique"] - before
        if got >= n:
            break
        await asyncio.sleep(0.05)
    seconds = time.perf_counter() - started
    await engine.stop()
    await store.close()
    if args.postgres:
        await pg.drop_schema(url)
    return {"config": name, "keys": keys, "records": got, "seconds": seconds, "rate": got / seconds}


async def main_async(args: argparse.Namespace, commit: str) -> str:
    sink = Sink()
    rows: list[list[dict]] = []
    offset = 0
    try:
        for rnd in range(args.rounds):
            names = list(CONFIGS)
            if rnd % 2:
                names.reverse()
            got = []
            for name in names:
                with tempfile.TemporaryDirectory() as tmp:
                    res = await one_run(name, CONFIGS[name], args, sink, offset, Path(tmp))
                offset += args.records
                print(
                    f"round {rnd + 1} {name:10s} {res['records']} records in "
                    f"{res['seconds']:.2f} s: {res['rate']:.0f}/s",
                    file=sys.stderr,
                )
                got.append(res)
            rows.append(sorted(got, key=lambda r: list(CONFIGS).index(r["config"])))
    finally:
        sink.stop()
    out = [
        f"# Ordering benchmark {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"gateway `{commit}`, {platform.python_version()}, {platform.machine()}, store "
        f"{'PostgreSQL' if args.postgres else 'SQLite'}, {args.records} records a run, batch_size "
        f"{args.batch_size}, concurrency {args.concurrency}; shared machine: compare ratios "
        "within a round.",
        "",
        "| round | config | records/s | drain s | vs off |",
        "|---|---|---|---|---|",
    ]
    for i, rnd in enumerate(rows, 1):
        base = rnd[0]["rate"]
        for r in rnd:
            out.append(
                f"| {i} | {r['config']} | {r['rate']:.0f} | {r['seconds']:.2f} | "
                f"{r['rate'] / base:.2f}x |"
            )
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--records", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--postgres", action="store_true", help="PostgreSQL (default: SQLite)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--timeout", type=float, default=300)
    args = p.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    report = asyncio.run(main_async(args, commit))
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    path = results / f"ordering-{datetime.now(UTC):%Y%m%d-%H%M}.md"
    path.write_text(report)
    print(report)
    print(f"written to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
