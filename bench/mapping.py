"""Mapping benchmarks: records mapped per second, loading 10,000 mapping files, and ingest with
1 group against 10,000 groups.

    .venv/bin/python bench/mapping.py [--records 50000] [--files 10000]
        [--groups 10000] [--duration 8] [--rounds 3] [--no-ingest]

(a) ``CompiledIntegration.map`` on a 10-field mapping with transforms, without and with an
E.164 phone field (phonenumbers parsing is the costly transform); (b) a cold
``MappingRegistry.reload()`` of N generated files (target: under 5 s for 10,000), then a
reload with nothing changed, and where a cold load's time goes (reading, YAML and compiling
measured apart on the same files); (c) single-record
ingest (``gateway serve``, SQLite ``synchronous=FULL``) with a mappings directory of 1 group
and of N groups, the key allowed on all of them and the requests spread over all of them
(target: no measurable difference). (c) alternates the two gateways for ``--rounds`` rounds,
each run with freshly pre-signed requests replayed by wrk (bench/ingest.py's machinery), and
reports every run, the medians and their ratio. Writes a Markdown result to
bench/results/mapping-*.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from ingest import ensure_wrk, run_wrk  # noqa: E402

from gateway.mapping.loader import MappingRegistry, load_file  # noqa: E402
from gateway.mapping.model import compile_mapping  # noqa: E402
from gateway.mapping.yamlsrc import load_with_lines  # noqa: E402
from tests.support.gateway_proc import GatewayProcess  # noqa: E402
from tests.support.signing import sign  # noqa: E402

FIELDS = """\
      email: {path: epost, transform: [trim, lower], required: true}
      first_name: {path: namn, transform: [first_word]}
      last_name: {path: namn, transform: [rest_words]}
      tags: {path: some_tags, transform: [lower, {join: ";"}]}
      country: {path: land, transform: [upper, {lookup: {table: {SE: Sweden}, default: Other}}]}
      signed_up: {path: ts, transform: [{date: {input: [epoch_s], output: iso8601}}]}
      hashed: {path: epost, transform: [sha256]}
      source: {value: web}
      greeting: {template: "Hej {namn}!"}
      score: {path: poang, transform: [to_int]}
"""
PHONE = "      phone: {path: tel, transform: [{e164: SE}]}\n"


def mapping_text(group: str, phone: bool) -> str:
    return (
        f"group_key: {group}\nintegrations:\n  - name: hook\n    type: http\n"
        f"    connection: {{url: https://hooks.example.com/x}}\n    fields:\n"
        + FIELDS
        + (PHONE if phone else "")
    )


RECORD = {
    "epost": " John.Doe@Example.COM ",
    "namn": "John Ludvig Doe",
    "some_tags": ["TAG1", "TAG2"],
    "land": "se",
    "ts": 1795350000,
    "poang": "42",
    "tel": "070-123 45 67",
}


# -- (a) mapping rate ---------------------------------------------------------------------


def map_rate(tmp: Path, phone: bool, n: int) -> float:
    path = tmp / "bench.yaml"
    path.write_text(mapping_text("bench", phone))
    mapping, problems = load_file(path)
    assert mapping is not None, problems
    integ = mapping.integrations[0]
    assert len(integ.map(RECORD)) == 10 + phone
    t = time.perf_counter()
    for _ in range(n):
        integ.map(RECORD)
    return n / (time.perf_counter() - t)


# -- (b) loading many files ---------------------------------------------------------------


def load_time(tmp: Path, files: int) -> dict[str, float]:
    d = tmp / "many"
    d.mkdir()
    for i in range(files):
        (d / f"g{i}.yaml").write_text(mapping_text(f"g{i}", i % 2 == 0))
    reg = MappingRegistry(d)
    t = time.perf_counter()
    result = reg.reload()
    cold = time.perf_counter() - t
    assert not result.failed
    assert len(reg) == files
    t = time.perf_counter()
    again = reg.reload()
    warm = time.perf_counter() - t
    assert not again.loaded
    # The registry froze what it loaded (see MappingRegistry.reload); let it go.
    del reg, result, again
    gc.unfreeze()
    gc.collect()
    # The same work in its three steps, timed apart (a second pass: the files are cached).
    paths = sorted(d.glob("*.yaml"))
    t = time.perf_counter()
    contents = [p.read_bytes() for p in paths]
    read = time.perf_counter() - t
    t = time.perf_counter()
    parsed = [load_with_lines(c.decode())[0] for c in contents]
    parse = time.perf_counter() - t
    t = time.perf_counter()
    for p, data, content in zip(paths, parsed, contents, strict=True):
        compile_mapping(data, content, expected_group=p.stem)
    comp = time.perf_counter() - t
    return {
        "groups": files,
        "cold": cold,
        "warm": warm,
        "read": read,
        "parse": parse,
        "compile": comp,
    }


# -- (c) ingest with 1 group and with N groups --------------------------------------------

INGEST_MAPPING = (
    "group_key: {g}\nintegrations:\n  - name: out\n    type: file\n"
    "    connection: {{path: ./out-{g}.ndjson}}\n    fields:\n"
    "      email: {{path: epost, transform: [trim, lower]}}\n      name: namn\n"
)


class Gateway:
    """A gateway whose mappings directory holds ``groups`` groups, one key for all of them."""

    def __init__(self, root: Path, groups: int) -> None:
        self.names = [f"g{i}" for i in range(groups)]
        self.gw = GatewayProcess(
            root,
            groups=(),
            GATEWAY_LOG_LEVEL="warning",
            GATEWAY_RATE_LIMIT="1000000",
            GATEWAY_RATE_BURST="1000000",
        )
        for g in self.names:
            (self.gw.mappings / f"{g}.yaml").write_text(INGEST_MAPPING.format(g=g))
        self.key, self.secret = self.gw.create_key(*self.names)
        self.sent = 0
        self.startup: list[float] = []

    def presign(self, path: Path, n: int) -> None:
        """``n`` distinct signed single-record requests, round-robin over every group."""
        url = f"http://127.0.0.1:{self.gw.port}/v1/records"
        with path.open("w") as f:
            for _ in range(n):
                i = self.sent
                self.sent += 1
                body = json.dumps(
                    {
                        "group_key": self.names[i % len(self.names)],
                        "data": {"epost": f"U{i}@example.com", "namn": "A B"},
                    }
                ).encode()
                _, h = sign(
                    "POST",
                    url,
                    body,
                    {"Content-Type": "application/json"},
                    key=self.key,
                    secret=self.secret,
                )
                f.write(f"{h['X-Amz-Date']}\n{h['Authorization']}\n{body.decode()}\n")

    def run(self, wrk: str, args: argparse.Namespace, command: list[str] | None = None) -> dict:
        reqfile = self.gw.root / "requests.txt"
        # Fresh signatures each run (a replayed signature is answered without storing), and
        # more than wrk can send in the run, so it never wraps around.
        self.presign(reqfile, 4000 * args.duration)
        self.gw.command = command or [sys.executable, "-m", "gateway"]
        t = time.perf_counter()
        self.gw.start(timeout=300)
        self.startup.append(time.perf_counter() - t)
        try:
            return run_wrk(
                wrk, self.gw.url, "/v1/records", reqfile, 1, args.connections, args.duration
            )
        finally:
            self.gw.stop()


def ingest_groups(args: argparse.Namespace) -> dict[str, dict]:
    """Runs per variant (in alternating rounds) and start-up times."""
    wrk = ensure_wrk()
    many_label = f"{args.groups:,} groups"
    variants: dict[str, dict] = {"1 group": {}, many_label: {}}
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        one, many = Gateway(Path(a), 1), Gateway(Path(b), args.groups)
        for v in variants.values():
            v["runs"], v["startup"] = [], []
        for _ in range(args.rounds):
            for label, v in variants.items():
                gw = one if label == "1 group" else many
                v["runs"].append(gw.run(wrk, args, v.get("command")))
                v["startup"].append(gw.startup[-1])
    return variants


# -- report -------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=50000)
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--groups", type=int, default=10000)
    ap.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=3, help="runs per gateway, alternating")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--no-ingest", action="store_true", help="skip (c)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        plain = map_rate(root, False, args.records)
        phone = map_rate(root, True, args.records // 5)
        load = load_time(root, args.files)
    ingest = None if args.no_ingest else ingest_groups(args)

    cmd = "python bench/mapping.py " + " ".join(sys.argv[1:])
    per_file = 1000 * load["cold"] / load["groups"]
    steps = load["read"] + load["parse"] + load["compile"]
    lines = [
        f"# Mapping benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `{cmd.strip()}` on {os.cpu_count()} cores",
        "",
        "## (a) mapping rate, (b) loading mapping files",
        "",
        "| measure | result |",
        "|---|---|",
        f"| 10-field mapping with transforms (`CompiledIntegration.map`) | "
        f"{plain:,.0f} records/s |",
        f"| same plus an E.164 phone field | {phone:,.0f} records/s |",
        f"| cold `MappingRegistry.reload()` of {load['groups']:,} files (load + validate) | "
        f"**{load['cold']:.2f} s** ({per_file:.2f} ms a file; target under 5 s) |",
        f"| reload with nothing changed | {load['warm']:.3f} s |",
        "",
        f"The same {load['groups']:,} files in steps, timed apart: read "
        f"{load['read']:.2f} s, YAML with line numbers (`load_with_lines`) {load['parse']:.2f} s "
        f"({100 * load['parse'] / steps:.0f}%), compile and validate (`compile_mapping`) "
        f"{load['compile']:.2f} s ({100 * load['compile'] / steps:.0f}%).",
        "",
    ]
    if ingest:
        base = statistics.median(r["rps"] for r in ingest["1 group"]["runs"])
        lines += [
            f"## (c) ingest, 1 group vs {args.groups:,} groups",
            "",
            f"Single-record `POST /v1/records`, wrk -t1 -c{args.connections} -d{args.duration}s, "
            f"{args.rounds} alternating rounds; the {args.groups:,}-group gateway's requests "
            "go round-robin over all its groups with one key allowed on all of them.",
            "",
            "| gateway | round | req/s | p50 | p99 | non-2xx |",
            "|---|---|---|---|---|---|",
        ]
        for label, v in ingest.items():
            for i, r in enumerate(v["runs"], 1):
                lines.append(
                    f"| {label} | {i} | {r['rps']:.0f} | {r['p50']} | {r['p99']} | {r['non_2xx']} |"
                )
        lines += ["", "| gateway | median req/s | vs 1 group | start until healthy |"]
        lines += ["|---|---|---|---|"]
        for label, v in ingest.items():
            med = statistics.median(r["rps"] for r in v["runs"])
            lines.append(
                f"| {label} | {med:,.0f} | **{med / base:.2f}** "
                f"| {statistics.median(v['startup']):.1f} s |"
            )
        lines += ["", "Target: no measurable difference between 1 and many groups.", ""]
    text = "\n".join(lines)
    print(text)
    out = HERE / "results" / f"mapping-{datetime.now(UTC):%Y%m%d-%H%M}.md"
    out.write_text(text)


if __name__ == "__main__":
    main()
