"""SaaS integrations benchmark: the seven SaaS types against their local fakes, beside http.

    .venv/bin/python bench/saas.py [--backlog 3000] [--micro-seconds 1] [--drain-timeout 120]
                                   [--only hubspot,segment,...]

Everything in one run on the same machine, so the results are ratios within the run.

(a) Micro-benchmark, in this process: each type's ``build`` and ``read`` (of its vendor's
    success answer, made by the fake of tests/support/vendor_fakes.py) for one batch of mapped
    records at the vendor's batch size, against ``http``'s build of the same records at the
    same batch size (``body: array``; http has no reader). µs of CPU per record, and the ratio
    to http's: the issue's goal is at most x1.5.
(b) Delivery alone, through a real ``gateway serve``: ``--backlog`` records stored through
    ``POST /v1/records/batch`` with delivery off, the gateway restarted with delivery on and
    timed until every record reached its fake (the fakes run in a separate process, so their
    CPU is not the gateway's). Records/s and the gateway's CPU seconds per delivered record
    (``/proc/<pid>/stat``), for each type at its vendor's batch size with its rate limit
    lifted (the vendor's own rate limit is what bounds a real lane: see the table's last
    column), and for http at each of those batch sizes.

Not measured here: delivery beside a single-record ingest load (bench/delivery.py and
bench/aws.py do that with wrk for http and AWS; the SaaS lanes' cost per record is what (a) and
(b) isolate). The result is written to bench/results/saas-<UTC time>.md and printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import yaml  # noqa: E402

from gateway.mapping.model import compile_mapping  # noqa: E402
from tests.support import vendor_fakes  # noqa: E402
from tests.support.gateway_proc import GatewayProcess  # noqa: E402
from tests.support.receiver import Received, Receiver  # noqa: E402
from tests.support.signing import sign  # noqa: E402

GROUP = "bench"
SECRETS = {
    "HUBSPOT_TOKEN": "pat-bench",
    "SEGMENT_WRITE_KEY": "wk_bench",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/bench",
    "MAILCHIMP_API_KEY": "0123456789abcdef0123456789abcdef-us19",
    "BREVO_API_KEY": "xkeysib-bench",
    "KLAVIYO_API_KEY": "pk_bench",
    "SF_CLIENT_ID": vendor_fakes.CLIENT_ID,
    "SF_CLIENT_SECRET": vendor_fakes.CLIENT_SECRET,
}
#: type -> (entry body with {url}, the vendor's batch size, its default rate limit)
ENTRIES: dict[str, tuple[str, int, str]] = {
    "hubspot": (
        """\
    type: hubspot
    connection: {{token: "${{HUBSPOT_TOKEN}}", base_url: "{url}"}}
    fields:
      email: {{path: epost, transform: [trim, lower]}}
      firstname: {{path: namn, transform: [first_word]}}
      lastname: {{path: namn, transform: [rest_words]}}
      interests: some_tags
      seq: seq
""",
        100,
        "10/s",
    ),
    "segment": (
        """\
    type: segment
    action: identify
    connection: {{write_key: "${{SEGMENT_WRITE_KEY}}", base_url: "{url}"}}
    fields:
      userId: {{path: epost, transform: [trim, lower]}}
      traits.name: namn
      traits.tags: some_tags
      traits.seq: seq
""",
        100,
        "none",
    ),
    "mailchimp": (
        """\
    type: mailchimp
    connection: {{api_key: "${{MAILCHIMP_API_KEY}}", base_url: "{url}/3.0"}}
    settings: {{list_id: a1b2c3d4e5}}
    fields:
      email_address: {{path: epost, transform: [trim, lower]}}
      FNAME: {{path: namn, transform: [first_word]}}
      LNAME: {{path: namn, transform: [rest_words]}}
      tags: some_tags
      SEQ: seq
""",
        500,
        "10 connections",
    ),
    "salesforce": (
        """\
    type: salesforce
    connection:
      instance_url: "{url}"
      client_id: "${{SF_CLIENT_ID}}"
      client_secret: "${{SF_CLIENT_SECRET}}"
    settings: {{sobject: Contact, external_id_field: Email}}
    fields:
      Email: {{path: epost, transform: [trim, lower]}}
      FirstName: {{path: namn, transform: [first_word]}}
      LastName: {{path: namn, transform: [rest_words]}}
      Intressen__c: some_tags
      Seq__c: seq
""",
        200,
        "daily API calls",
    ),
    "klaviyo": (
        """\
    type: klaviyo
    connection: {{api_key: "${{KLAVIYO_API_KEY}}", base_url: "{url}"}}
    fields:
      email: {{path: epost, transform: [trim, lower]}}
      first_name: {{path: namn, transform: [first_word]}}
      last_name: {{path: namn, transform: [rest_words]}}
      properties.intressen: some_tags
      properties.seq: seq
""",
        1,
        "10/s",
    ),
    "brevo": (
        """\
    type: brevo
    connection: {{api_key: "${{BREVO_API_KEY}}", base_url: "{url}/v3"}}
    fields:
      email: {{path: epost, transform: [trim, lower]}}
      FIRSTNAME: {{path: namn, transform: [first_word]}}
      LASTNAME: {{path: namn, transform: [rest_words]}}
      INTRESSEN: some_tags
      SEQ: seq
""",
        1,
        "10/s",
    ),
    "slack": (
        """\
    type: slack
    connection: {{webhook_url: "${{SLACK_WEBHOOK_URL}}", base_url: "{url}"}}
    settings: {{text: "Ny kund {{seq}}: {{namn}} ({{taggar}})"}}
    fields: {{namn: namn, taggar: some_tags, seq: seq}}
""",
        1,
        "1/s",
    ),
}
HTTP_ENTRY = """\
    type: http
    connection: {{url: "{url}/http"}}
    settings: {{body: {body}}}
    fields:
      email: {{path: epost, transform: [trim, lower]}}
      first_name: {{path: namn, transform: [first_word]}}
      last_name: {{path: namn, transform: [rest_words]}}
      tags: some_tags
      seq: seq
"""
FAKES = {
    "hubspot": vendor_fakes.hubspot,
    "segment": vendor_fakes.segment,
    "mailchimp": vendor_fakes.mailchimp,
    "salesforce": vendor_fakes.salesforce,
    "klaviyo": vendor_fakes.klaviyo,
    "brevo": vendor_fakes.brevo,
    "slack": vendor_fakes.slack,
}


def record(i: int) -> dict[str, Any]:
    """A record like the producers': Swedish names, a list of tags, a unique seq."""
    return {
        "epost": f" Kund.{i}@Exempel.SE ",
        "namn": f"Åsa Öberg-Ström {i}",
        "some_tags": ["kött", "fisk", f"t{i % 7}"],
        "seq": i,
    }


def entry(kind: str, url: str, options: str) -> str:
    if kind.startswith("http"):
        size = int(kind.removeprefix("http"))
        body = HTTP_ENTRY.format(url=url, body="array" if size > 1 else "object")
    else:
        body = ENTRIES[kind][0].format(url=url)
    return f"  - name: sink\n{body}    options: {{{options}}}\n"


def batch_size(kind: str) -> int:
    return int(kind.removeprefix("http")) if kind.startswith("http") else ENTRIES[kind][1]


# -- (a) build and read in process ----------------------------------------------------------
def micro(kinds: list[str], seconds: float) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for kind in kinds:
        size = batch_size(kind)
        text = f"group_key: {GROUP}\nintegrations:\n" + entry(
            kind, "http://127.0.0.1:9", f"batch_size: {size}"
        )
        integ = compile_mapping(yaml.safe_load(text), text.encode(), environ=SECRETS)
        integ_one = integ.integrations[0]
        batch = [(f"dlv_{i:028x}", integ_one.map(record(i))) for i in range(size)]
        fake = FAKES[kind]() if kind in FAKES else None
        if kind == "salesforce":
            fake.valid = "tok"  # type: ignore[union-attr]

        def tokens(i: Any) -> str:
            return "tok"

        build = integ_one.type.build
        read = integ_one.type.read
        reqs = build(integ_one, batch, tokens=tokens)
        answers = []
        for r in reqs:
            path = r.url.split("127.0.0.1:9", 1)[1]
            if fake is not None:
                a = fake(Received(r.method, path, dict(r.headers), r.body, 0.0))
                from gateway.integrations.base import Response

                answers.append(Response(a.status, a.headers, a.body))
        n = 0
        t0 = time.process_time()
        while time.process_time() - t0 < seconds:
            reqs = build(integ_one, batch, tokens=tokens)
            if read is not None:
                for r, resp in zip(reqs, answers, strict=True):
                    read(r, resp)
            n += size
        out[kind] = {"us_per_record": 1e6 * (time.process_time() - t0) / n, "batch": size}
    return out


# -- (b) delivery alone ----------------------------------------------------------------------
def serve_fakes(port_file: str) -> None:
    """Run every vendor's fake and an http sink in this process until SIGTERM."""

    async def main() -> None:
        servers = {}
        for name, make in FAKES.items():
            servers[name] = await Receiver(make()).start()
        servers["http"] = await Receiver().start()
        ports = json.dumps({k: s.url for k, s in servers.items()})
        await asyncio.to_thread(Path(port_file).write_text, ports)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()

    asyncio.run(main())


def metric(gw: GatewayProcess, name: str, label: str) -> float:
    with urllib.request.urlopen(gw.url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def store_backlog(gw: GatewayProcess, key: str, secret: str, n: int) -> None:
    url = f"{gw.url}/v1/records/batch"
    for start in range(0, n, 100):
        records = [
            {"group_key": GROUP, "data": record(i)} for i in range(start, min(n, start + 100))
        ]
        body = json.dumps({"records": records}).encode()
        _, headers = sign(
            "POST", url, body, {"Content-Type": "application/json"}, key=key, secret=secret
        )
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()


def drain(kind: str, urls: dict[str, str], n: int, timeout: float) -> dict[str, Any]:
    size = batch_size(kind)
    # The vendor's rate limit is lifted: the gateway's cost is what is measured.
    options = f"batch_size: {size}, batch_wait: 50ms, rate_limit: 100000/s, concurrency: 8"
    url = urls["http" if kind.startswith("http") else kind]
    with tempfile.TemporaryDirectory(prefix=f"saas-{kind}-") as tmp:
        gw = GatewayProcess(
            Path(tmp),
            groups=(),
            GATEWAY_DELIVERY="false",
            GATEWAY_LOG_LEVEL="warning",
            GATEWAY_RATE_LIMIT="1000000",
            GATEWAY_RATE_BURST="1000000",
            **SECRETS,
        )
        (gw.mappings / f"{GROUP}.yaml").write_text(
            f"group_key: {GROUP}\nintegrations:\n" + entry(kind, url, options)
        )
        key, secret = gw.create_key(GROUP)
        gw.start()
        store_backlog(gw, key, secret, n)
        gw.stop()
        del gw.env["GATEWAY_DELIVERY"]
        gw.start()
        assert gw.proc is not None
        cpu0, t0 = cpu_seconds(gw.proc.pid), time.time()
        delivered = 0.0
        while time.time() - t0 < timeout:
            delivered = metric(gw, "gateway_deliveries_total", 'outcome="delivered"')
            if delivered >= n:
                break
            time.sleep(0.1)
        secs = time.time() - t0
        cpu = cpu_seconds(gw.proc.pid) - cpu0
        dead = metric(gw, "gateway_deliveries_total", 'outcome="dead"')
        gw.stop()
    return {
        "kind": kind,
        "batch": size,
        "delivered": int(delivered),
        "dead": int(dead),
        "seconds": secs,
        "rps": delivered / secs,
        "cpu_ms_per_record": 1000 * cpu / max(delivered, 1),
    }


def report(args: argparse.Namespace, a: dict[str, Any], b: list[dict[str, Any]]) -> str:
    lines = [
        f"# SaaS integrations benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"`bench/saas.py --backlog {args.backlog} --micro-seconds {args.micro_seconds}`, "
        f"{os.cpu_count()} CPUs (shared).",
        "",
        "## (a) build + read in process, µs CPU per record",
        "",
        "| type | batch | µs/record | http at the same batch | ratio |",
        "|---|---|---|---|---|",
    ]
    for kind, m in a.items():
        if kind.startswith("http"):
            continue
        base = a[f"http{m['batch']}"]["us_per_record"]
        lines.append(
            f"| {kind} | {m['batch']} | {m['us_per_record']:.1f} | {base:.1f} | "
            f"x{m['us_per_record'] / base:.2f} |"
        )
    lines += [
        "",
        "## (b) delivery alone through `gateway serve` (backlog drained into the fakes)",
        "",
        "| type | batch | delivered | dead | records/s | gateway ms CPU/record | vendor's limit |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in b:
        limit = ENTRIES[r["kind"]][2] if r["kind"] in ENTRIES else "-"
        lines.append(
            f"| {r['kind']} | {r['batch']} | {r['delivered']} | {r['dead']} | {r['rps']:.0f} | "
            f"{r['cpu_ms_per_record']:.3f} | {limit} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backlog", type=int, default=3000)
    p.add_argument("--micro-seconds", type=float, default=1.0)
    p.add_argument("--drain-timeout", type=float, default=120.0)
    p.add_argument("--only", default=",".join(ENTRIES))
    p.add_argument("--serve-fakes", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_fakes:
        serve_fakes(args.serve_fakes)
        return
    kinds = [k for k in args.only.split(",") if k]
    sizes = sorted({batch_size(k) for k in kinds})
    a = micro([*(f"http{s}" for s in sizes), *kinds], args.micro_seconds)
    with tempfile.TemporaryDirectory(prefix="saas-fakes-") as tmp:
        port_file = Path(tmp) / "ports.json"
        fakes = subprocess.Popen([sys.executable, __file__, "--serve-fakes", str(port_file)])
        try:
            for _ in range(200):
                if port_file.exists() and port_file.read_text():
                    break
                time.sleep(0.05)
            urls = json.loads(port_file.read_text())
            b = []
            for kind in [*(f"http{s}" for s in sizes), *kinds]:
                r = drain(kind, urls, args.backlog, args.drain_timeout)
                print(json.dumps(r), file=sys.stderr)
                b.append(r)
        finally:
            fakes.send_signal(signal.SIGTERM)
            fakes.wait(timeout=30)
    text = report(args, a, b)
    out = HERE / "results" / f"saas-{datetime.now(UTC):%Y%m%d-%H%M}.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
