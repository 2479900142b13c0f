"""AWS integrations benchmark: SQS and Kinesis on moto's server, against the http sink.

    .venv/bin/python bench/aws.py [--duration 10] [--rounds 2] [--backlog 15000]
                                  [--micro-seconds 1] [--drain-timeout 60] [--profile DIR]
                                  [--profile-format flamegraph|raw|speedscope]
                                  [--profile-rate 100]

Everything in one run, on the same machine, so the results are ratios within the run. moto's
server runs in its own process with signature checking on (``tests/moto_server.py``: an IAM
user and its key; every call after the setup must be signed with it), so its CPU is not the
gateway's and is reported on its own.

(a) Micro-benchmark, in this process: ``aws_sqs.build`` for a batch of 10 and
    ``aws_kinesis.build`` for a batch of 500 (botocore serialising and signing, a cached
    client), against ``http``'s build of the same mapped records (``body: array``); and the
    readers (``read``: botocore's parser) on a successful answer of that size. µs per record.
(b) End to end. The single-record signed ``POST /v1/records`` load of bench/delivery.py (wrk
    replaying pre-signed requests with ``replay.lua``) for ``--duration`` seconds against
    1. the gateway with delivery off (``GATEWAY_DELIVERY=false``): the **ingest-only** baseline;
    2. ``http`` batches of 100 to bench/delivery.py's sink (``body: array``);
    3. ``aws_sqs``, batches of 10, into a standard queue on moto;
    4. ``aws_kinesis``, batches of 500, into a stream of 4 shards on moto;
    all with ``batch_wait: 50ms`` and each type's default concurrency. Reported: ingest req/s,
    records delivered per second during the load (``gateway_deliveries_total{outcome=
    "delivered"}`` in ``/metrics``), the drain time after the load, and the gateway's CPU
    seconds (``/proc/<pid>/stat``, all its threads) per record from the start of the load to
    the end of the drain, against ingest-only's: the difference is what delivering costs the
    gateway per record. moto's and the sink's CPU are measured the same way. ``--rounds``
    rounds of the four runs, the order reversed every other round.
(c) Delivery alone. For http (batches of 100, and of 10 like SQS), SQS and Kinesis:
    ``--backlog`` records stored through ``POST /v1/records/batch`` with delivery off, then the
    gateway restarted with delivery on and timed until it has delivered them all: records/s
    and the gateway's CPU per record with no ingest beside it, the cleanest view of the
    AWS-specific cost (botocore building and signing, parsing answers, more requests) as a
    difference against http.

moto's server is patched in its own process (``patch_moto``): its SQS send scans every message
in the queue three times for each message sent (~90 records/s once a few hundred are queued, in
a trial), and its Kinesis shards take quadratic time and lose records under concurrent
PutRecords. Nothing else in moto changes. moto's server (werkzeug's) closes the connection after
every answer, so each request to it opens a new TCP connection: a cost real AWS endpoints
(keep-alive, but TLS) do not have in the same form.

The result is written to bench/results/aws-<UTC time>.md and printed. ``--profile DIR``
records py-spy profiles of the gateway during each load of (b) and each drain of (c) (they
cost CPU: not for the numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from delivery import (  # noqa: E402
    GATEWAY_ENV,
    GROUP,
    Sink,
    code_state,
    commits,
    cpu_seconds,
    cpu_stall,
    median,
    presign_file,
    record,
    stored,
    writer_stats,
)
from ingest import ensure_wrk, run_wrk  # noqa: E402

from tests.support import moto_server  # noqa: E402
from tests.support.gateway_proc import GatewayProcess, free_port  # noqa: E402
from tests.support.signing import sign  # noqa: E402

MAPPING = """\
group_key: {group}
description: AWS benchmark, {name}
integrations:
  - name: out
    type: {type}
    connection: {connection}
    settings: {settings}
    fields:
      seq: seq
      email: epost
      first_name: {{path: namn, transform: [first_word]}}
      last_name: {{path: namn, transform: [rest_words]}}
      tags: {{path: some_tags, transform: [lower]}}
    options: {{{options}}}
"""
BATCH = {"http": 100, "http10": 10, "aws_sqs": 10, "aws_kinesis": 500}
SHARDS = 4
WARMUP = 1000  # (c): deliveries before the clock starts
LABELS = {
    "ingest_only": "ingest only (`GATEWAY_DELIVERY=false`)",
    "http": "http, batches of 100 (sink)",
    "http10": "http, batches of 10 (sink)",
    "aws_sqs": "aws_sqs, batches of 10 (moto)",
    "aws_kinesis": f"aws_kinesis, batches of 500, {SHARDS} shards (moto)",
}
RUNS = ("ingest_only", "http", "aws_sqs", "aws_kinesis")  # (b)
TARGETS = ("http", "aws_sqs", "aws_kinesis")
BACKLOG_RUNS = ("http", "http10", "aws_sqs", "aws_kinesis")  # (c)


# -- moto, patched, in its own process --------------------------------------------------------
def patch_moto() -> None:
    """Two fixes to moto's server so that its cost per record stays flat and nothing is lost.

    SQS: ``SQSBackend.send_message`` (and ``_validate_message``, ``Queue.add_message``) read
    ``queue.attributes.get("ContentBasedDeduplication")``; the property builds every attribute,
    and ``ApproximateNumberOfMessages*`` each scan all messages in the queue, so each send costs
    more than the one before. While a batch is sent, the property answers only that key (what
    the full one would give); elsewhere (GetQueueAttributes) it is untouched.

    Kinesis: ``Shard.put_record`` ("not safe for concurrency", moto says) takes the last
    sequence number from a list of all the shard's keys and stores under the next one:
    quadratic, and two concurrent PutRecords (the type's concurrency is 4) overwrite each
    other's records while both are answered as successful. Same logic, O(1), under a lock.
    """
    import threading

    from moto.kinesis import models as kinesis
    from moto.sqs import models as sqs

    sending = threading.local()
    full = sqs.Queue.attributes.fget

    def attributes(self: Any) -> dict[str, Any]:
        if not getattr(sending, "on", False):
            return full(self)
        if not self.fifo_queue:
            return {}
        value = self.content_based_deduplication
        return {
            "ContentBasedDeduplication": str(value).lower() if isinstance(value, bool) else value
        }

    send_batch = sqs.SQSBackend.send_message_batch

    def send_message_batch(self: Any, *a: Any, **kw: Any) -> Any:
        sending.on = True
        try:
            return send_batch(self, *a, **kw)
        finally:
            sending.on = False

    sqs.Queue.attributes = property(attributes)
    sqs.SQSBackend.send_message_batch = send_message_batch

    shard_lock = threading.Lock()

    def put_record(self: Any, partition_key: str, data: str, explicit_hash_key: str) -> str:
        with shard_lock:
            seq = (next(reversed(self.records)) if self.records else 0) + 1
            self.records[seq] = kinesis.Record(partition_key, data, seq, explicit_hash_key)
        return str(seq)

    kinesis.Shard.put_record = put_record


def moto_main(argv: list[str]) -> None:
    patch_moto()
    from moto.server import main

    main(argv)


def start_moto() -> moto_server.MotoServer:
    """tests/moto_server.py's ``start_moto`` (same signature checking and IAM user), with this
    file's ``_moto`` (patched moto) run in place of ``python -m moto.server``."""
    real = subprocess.Popen

    def popen(cmd: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        if cmd[1:3] == ["-m", "moto.server"]:
            cmd = [cmd[0], __file__, "_moto", *cmd[3:]]
        return real(cmd, **kw)

    with mock.patch.object(moto_server.subprocess, "Popen", popen):
        return moto_server.start_moto()


# -- targets: where each run delivers -----------------------------------------------------------
class Target:
    """A run's destination: the mapping entry and a way to count what arrived."""

    def __init__(self, kind: str, moto: moto_server.MotoServer, name: str) -> None:
        self.kind, self.moto, self.sink = kind, moto, None
        self.resource = f"bench-{name}"
        if kind in ("http", "http10"):
            self.sink = Sink()
            self.connection: dict[str, Any] = {"url": self.sink.url}
            self.settings: dict[str, Any] = {"body": "array"}
        elif kind == "aws_sqs":
            url = moto.client("sqs").create_queue(QueueName=self.resource)["QueueUrl"]
            self.connection = moto.connection(queue_url=url)
            self.settings = {}
        elif kind == "aws_kinesis":
            kinesis = moto.client("kinesis")
            kinesis.create_stream(StreamName=self.resource, ShardCount=SHARDS)
            kinesis.get_waiter("stream_exists").wait(
                StreamName=self.resource, WaiterConfig={"Delay": 0.2}
            )
            self.connection = moto.connection(stream_name=self.resource)
            self.settings = {"partition_key": "email"}
        else:  # ingest only: the http mapping, to a port nobody listens on (never sent)
            self.connection = {"url": f"http://127.0.0.1:{free_port()}/in"}
            self.settings = {"body": "array"}

    def mapping(self, name: str) -> str:
        batch = BATCH["http" if self.kind == "ingest_only" else self.kind]
        return MAPPING.format(
            group=GROUP,
            name=name,
            type=self.kind if self.kind.startswith("aws_") else "http",
            connection=json.dumps(self.connection),
            settings=json.dumps(self.settings),
            options=f"batch_size: {batch}, batch_wait: 50ms",
        )

    def cpu(self) -> float:
        """CPU seconds so far of the process on the other end (sink or moto)."""
        if self.sink is not None:
            return cpu_seconds(self.sink.proc.pid)
        return cpu_seconds(self.moto.proc.pid)

    def arrived(self) -> int | None:
        """Records the destination holds (duplicates included; None: nothing to count)."""
        if self.sink is not None:
            return self.sink.stats()["records"]  # type: ignore[union-attr]
        if self.kind == "aws_sqs":
            sqs = self.moto.client("sqs")
            url = sqs.get_queue_url(QueueName=self.resource)["QueueUrl"]
            attrs = sqs.get_queue_attributes(
                QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
            )["Attributes"]
            return int(attrs["ApproximateNumberOfMessages"])
        if self.kind == "aws_kinesis":
            kinesis = self.moto.client("kinesis")
            n = 0
            for shard in kinesis.list_shards(StreamName=self.resource)["Shards"]:
                it = kinesis.get_shard_iterator(
                    StreamName=self.resource,
                    ShardId=shard["ShardId"],
                    ShardIteratorType="TRIM_HORIZON",
                )["ShardIterator"]
                while it:
                    got = kinesis.get_records(ShardIterator=it, Limit=10000)
                    n += len(got["Records"])
                    if not got["Records"] or not got.get("MillisBehindLatest", 1):
                        break
                    it = got.get("NextShardIterator")
            return n
        return None

    def close(self) -> None:
        if self.sink is not None:
            self.sink.stop()


def start_gateway(root: Path, target: Target, name: str, delivery_on: bool) -> GatewayProcess:
    env = {
        **GATEWAY_ENV,
        "MOTO_KEY_ID": target.moto.access_key_id,
        "MOTO_SECRET": target.moto.secret_access_key,
    }
    if not delivery_on:
        env["GATEWAY_DELIVERY"] = "false"
    gw = GatewayProcess(root, groups=(GROUP,), **env)
    (gw.mappings / f"{GROUP}.yaml").write_text(target.mapping(name))
    return gw


def metrics(gw: GatewayProcess) -> dict[str, float]:
    """Deliveries by outcome and outbound requests, summed over lanes (``GET /metrics``)."""
    with urllib.request.urlopen(gw.url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    out = {"delivered": 0.0, "retry": 0.0, "dead": 0.0, "requests": 0.0}
    for line in text.splitlines():
        if line.startswith("gateway_deliveries_total{"):
            labels, _, value = line.rpartition(" ")
            for outcome in ("delivered", "retry", "dead"):
                if f'outcome="{outcome}"' in labels:
                    out[outcome] += float(value)
        elif line.startswith("gateway_delivery_attempt_seconds_count{"):
            out["requests"] += float(line.rpartition(" ")[2])
    return out


def wait_delivered(
    gw: GatewayProcess,
    expected: int,
    timeout: float,
    nearly: int | None = None,
    snapshot: Any = None,
) -> tuple[bool, dict, tuple | None]:
    """Poll /metrics until ``expected`` records are delivered (or dead), or the timeout; also
    the first look showing ``nearly`` of them: (its time, ``snapshot()`` then), or None."""
    deadline = time.time() + timeout
    at_nearly = None
    while True:
        m = metrics(gw)
        done = m["delivered"] + m["dead"]
        if at_nearly is None and nearly is not None and done >= nearly:
            at_nearly = (time.time(), snapshot() if snapshot else None)
        if done >= expected:
            return True, m, at_nearly
        if time.time() > deadline:
            return False, m, at_nearly
        time.sleep(0.1)


# -- (a) micro-benchmark -------------------------------------------------------------------------
MICRO_ENV = {"K": "AKIAIOSFODNN7EXAMPLE", "S": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}
_MICRO_AWS = {
    "region": "us-east-1",
    "endpoint_url": "http://127.0.0.1:9",
    "access_key_id": "${K}",
    "secret_access_key": "${S}",
}
MICRO_CONNECTIONS = {
    "http": ({"url": "http://127.0.0.1:9/in"}, {"body": "array"}),
    "aws_sqs": ({**_MICRO_AWS, "queue_url": "http://127.0.0.1:9/123456789012/q"}, {}),
    "aws_kinesis": ({**_MICRO_AWS, "stream_name": "s"}, {"partition_key": "email"}),
}


def compiled(kind: str) -> Any:
    """The benchmark's mapping entry of that type, compiled (static keys: no network)."""
    import yaml

    from gateway.mapping.model import compile_mapping

    conn, settings = MICRO_CONNECTIONS[kind]
    text = MAPPING.format(
        group=GROUP,
        name="micro",
        type=kind,
        connection=json.dumps(conn),
        settings=json.dumps(settings),
        options=f"batch_size: {BATCH[kind]}",
    )
    return compile_mapping(yaml.safe_load(text), text.encode(), environ=MICRO_ENV).integrations[0]


def mapped_batch(integ: Any, n: int) -> list[tuple[str, dict]]:
    """``n`` (delivery id, mapped fields) pairs, as the engine hands them to ``build``."""
    return [(f"{i:032x}", integ.map(record(i))) for i in range(n)]


def answer(kind: str, ids: list[str]) -> Any:
    """A successful answer of moto's shape for those deliveries."""
    from gateway.integrations.base import Response

    if kind == "aws_sqs":
        body: dict[str, Any] = {
            "Successful": [
                {
                    "Id": d,
                    "MessageId": f"{i:08x}-1111-2222-3333-444455556666",
                    "MD5OfMessageBody": "0123456789abcdef0123456789abcdef",
                }
                for i, d in enumerate(ids)
            ]
        }
        ctype = "application/x-amz-json-1.0"
    else:
        body = {
            "FailedRecordCount": 0,
            "Records": [
                {"SequenceNumber": str(49650000000000000000 + i), "ShardId": "shardId-000000000001"}
                for i in range(len(ids))
            ],
        }
        ctype = "application/x-amz-json-1.1"
    return Response(200, {"Content-Type": ctype}, json.dumps(body).encode())


def cold_main(kind: str) -> None:
    """In a fresh process: ms of the first build and read of a batch (botocore imported, its
    models loaded, the client made), then of the second."""
    integ = compiled(kind)
    b = mapped_batch(integ, BATCH[kind])
    times = []
    for _ in range(2):
        t = time.perf_counter()
        reqs = integ.type.build(integ, b)
        t2 = time.perf_counter()
        for r in reqs:
            integ.type.read(r, answer(kind, r.delivery_ids))
        times.append(((t2 - t) * 1000, (time.perf_counter() - t2) * 1000))
    print(json.dumps(times))


def micro(seconds: float) -> list[dict]:
    """µs per record of build (and read) for SQS/Kinesis batches against http's build."""
    from gateway.integrations import aws

    integ = {kind: compiled(kind) for kind in MICRO_CONNECTIONS}

    def per_record(fn: Any, n: int) -> float:
        """Median of 5 timings, µs per record."""
        fn()  # warm: botocore's client and models
        loops = 1
        while True:
            t = time.perf_counter()
            for _ in range(loops):
                fn()
            if time.perf_counter() - t > seconds / 10:
                break
            loops *= 2
        times = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(loops):
                fn()
            times.append((time.perf_counter() - t) / loops)
        return statistics.median(times) / n * 1e6

    out = []
    aws.forget_clients()
    for kind, n in (("aws_sqs", 10), ("aws_kinesis", 500)):
        b = mapped_batch(integ["http"], n)
        http_us = per_record(lambda b=b: integ["http"].type.build(integ["http"], b), n)
        aws_us = per_record(lambda b=b, k=kind: integ[k].type.build(integ[k], b), n)
        requests = integ[kind].type.build(integ[kind], b)
        read_us = per_record(
            lambda r=requests, k=kind: [
                integ[k].type.read(x, answer(k, x.delivery_ids)) for x in r
            ],
            n,
        )
        parsed_body_us = per_record(
            lambda r=requests, k=kind: [answer(k, x.delivery_ids) for x in r], n
        )
        cold = json.loads(
            subprocess.run(
                [sys.executable, __file__, "_cold", kind],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        out.append(
            {
                "kind": kind,
                "cold_build_ms": cold[0][0],
                "cold_read_ms": cold[0][1],
                "warm_build_ms": cold[1][0],
                "n": n,
                "requests": len(requests),
                "http_build_us": http_us,
                "aws_build_us": aws_us,
                # making the fake answer is timed inside the read loop: take it out
                "aws_read_us": max(0.0, read_us - parsed_body_us),
                "body_bytes": sum(len(r.body) for r in requests),
            }
        )
        print(
            f"[micro] {kind} x{n}: build {aws_us:.1f} µs/record, http {http_us:.1f} "
            f"(x{aws_us / http_us:.1f}); read {out[-1]['aws_read_us']:.1f} µs/record",
            file=sys.stderr,
        )
    return out


# -- (b) end to end ------------------------------------------------------------------------------
def run_e2e(
    args: argparse.Namespace,
    wrk: str,
    moto: moto_server.MotoServer,
    name: str,
    kind: str,
    n_req: int,
) -> dict:
    """Single-record wrk load for ``--duration`` s; with delivery, wait for the drain."""
    delivering = kind != "ingest_only"
    with tempfile.TemporaryDirectory(prefix=f"aws-{name}-") as tmp:
        root = Path(tmp)
        target = Target(kind, moto, name)
        gw = start_gateway(root, target, name, delivering)
        try:
            key, secret = gw.create_key(GROUP)
            reqfile = root / "requests.txt"
            t = time.perf_counter()
            presign_file(reqfile, f"{gw.url}/v1/records", key, secret, n_req)
            print(
                f"[{name}] pre-signed {n_req} requests in {time.perf_counter() - t:.1f} s",
                file=sys.stderr,
            )
            gw.start()
            prof = profile(args, gw, name)
            tx0 = commits(gw)
            stall0 = cpu_stall()
            cpu0, other0 = cpu_seconds(gw.proc.pid), target.cpu()
            t_start = time.time()
            w = run_wrk(wrk, gw.url, "/v1/records", reqfile, 1, args.connections, args.duration)
            t_end = time.time()
            stop_profile(prof)
            cpu_load, other_load = cpu_seconds(gw.proc.pid) - cpu0, target.cpu() - other0
            m_end = metrics(gw) if delivering else None
            tx1 = commits(gw)
            stall = cpu_stall() - stall0
            accepted = stored(gw)
            load = t_end - t_start
            r: dict[str, Any] = {
                "name": name,
                "kind": kind,
                "wrk": {k: v for k, v in w.items() if k != "raw"},
                "accepted": accepted,
                "load_seconds": load,
                "ingest_rps": accepted / load,
                "gateway_cpu": cpu_load / load,
                "other_cpu": other_load / load,
                **writer_stats(tx0, tx1, load),
                "cpu_pressure": stall / load,
            }
            if w["requests"] - w["non_2xx"] > accepted:
                r["warning"] = (
                    f"wrk got {w['requests'] - w['non_2xx']} 2xx but only {accepted} records "
                    "were stored (requests replayed: pre-sign more)"
                )
            if delivering:
                # 99%: the last deliveries can wait for a lane's overflow deferral (README).
                drained, m, at99 = wait_delivered(
                    gw, accepted, args.drain_timeout, nearly=int(accepted * 0.99)
                )
                t_done = time.time()
                cpu_all = cpu_seconds(gw.proc.pid) - cpu0
                other_all = target.cpu() - other0
                done = int(m["delivered"])
                r.update(
                    drained=drained,
                    delivered_in_load=int(m_end["delivered"]),  # type: ignore[index]
                    delivered_rps=m_end["delivered"] / load,  # type: ignore[index]
                    backlog_at_end=accepted - int(m_end["delivered"]),  # type: ignore[index]
                    drain_seconds=t_done - t_end,
                    drain99_seconds=max(0.0, at99[0] - t_end) if at99 else None,
                    delivered=done,
                    dead=int(m["dead"]),
                    retries=int(m["retry"]),
                    requests=int(m["requests"]),
                    e2e_rps=done / (t_done - t_start),
                    # From the start of the load to the end of the drain: ingest + delivery.
                    cpu_ms_per_record=1000 * cpu_all / max(done, 1),
                    other_ms_per_record=1000 * other_all / max(done, 1),
                    other_cpu_all=other_all / (t_done - t_start),
                    gateway_cpu_all=cpu_all / (t_done - t_start),
                )
            else:
                r["cpu_ms_per_record"] = 1000 * cpu_load / max(accepted, 1)
            gw.stop()
            if delivering:
                r["arrived"] = target.arrived()
            print(
                f"[{name}] {accepted} accepted ({r['ingest_rps']:.0f}/s), gateway CPU "
                f"{r['gateway_cpu']:.0%}, {r['cpu_ms_per_record']:.3f} ms/record"
                + (
                    f"; delivered {r['delivered_rps']:.0f}/s during the load, "
                    + (
                        f"drained {r['drain_seconds']:.1f} s after"
                        if r["drained"]
                        else f"NOT drained after {r['drain_seconds']:.0f} s "
                        f"({accepted - r['delivered']} left)"
                    )
                    + f", {r['arrived']} at the destination"
                    if delivering
                    else ""
                ),
                file=sys.stderr,
            )
            return r
        finally:
            if gw.proc is not None and gw.proc.poll() is None:
                gw.stop()
            target.close()


# -- profiles --------------------------------------------------------------------------------
def profile(args: argparse.Namespace, gw: GatewayProcess, name: str) -> subprocess.Popen | None:
    """py-spy on the gateway (all threads, samples holding the GIL) until stopped."""
    if not args.profile:
        return None
    ext = {"flamegraph": "svg", "raw": "txt", "speedscope": "json"}[args.profile_format]
    out = Path(args.profile) / f"aws-{name}.{ext}"
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--format",
            args.profile_format,
            "-o",
            str(out),
            "--pid",
            str(gw.proc.pid),
            "--threads",
            "--gil",
            "--rate",
            str(args.profile_rate),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_profile(prof: subprocess.Popen | None) -> None:
    if prof is not None:
        prof.send_signal(signal.SIGINT)
        prof.wait()


# -- (c) delivery alone --------------------------------------------------------------------------
def store_backlog(gw: GatewayProcess, key: str, secret: str, n: int) -> None:
    """``n`` records through ``POST /v1/records/batch``, 100 a request, signed."""
    url = f"{gw.url}/v1/records/batch"
    for start in range(0, n, 100):
        body = json.dumps(
            {
                "records": [
                    {"group_key": GROUP, "data": record(i)}
                    for i in range(start, min(n, start + 100))
                ]
            }
        ).encode()
        _, headers = sign(
            "POST", url, body, {"Content-Type": "application/json"}, key=key, secret=secret
        )
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()


def run_backlog(args: argparse.Namespace, moto: moto_server.MotoServer, kind: str) -> dict:
    """Store ``--backlog`` records with delivery off; restart delivering; time the drain."""
    name = f"backlog-{kind}"
    n = args.backlog
    with tempfile.TemporaryDirectory(prefix=f"aws-{name}-") as tmp:
        root = Path(tmp)
        target = Target(kind, moto, name)
        gw = start_gateway(root, target, name, False)
        try:
            key, secret = gw.create_key(GROUP)
            gw.start()
            store_backlog(gw, key, secret, n)
            assert stored(gw) == n, "backlog not stored"
            gw.stop()
            del gw.env["GATEWAY_DELIVERY"]
            t_restart = time.time()
            gw.start()
            # Leave out the start (botocore loading its models, making the client: see (a)'s
            # first build) and count from a look after the first WARMUP deliveries.
            warm, m0, _ = wait_delivered(gw, WARMUP, args.drain_timeout)
            if not warm:
                raise RuntimeError(f"{name}: not even {WARMUP} delivered: {gw.output()[-2000:]}")
            warmup_seconds = time.time() - t_restart
            cpu0, other0, t0 = cpu_seconds(gw.proc.pid), target.cpu(), time.time()
            stall0 = cpu_stall()
            prof = profile(args, gw, name)
            # The rate to 99% of the counted records: the last few can wait for a lane's
            # overflow deferral (up to half the lease: see README), which says nothing of cost.
            n99 = int(m0["delivered"] + 0.99 * (n - m0["delivered"]))
            drained, m, at99 = wait_delivered(
                gw,
                n,
                args.drain_timeout,
                nearly=n99,
                snapshot=lambda: (cpu_seconds(gw.proc.pid), target.cpu(), cpu_stall()),
            )
            t1 = time.time()
            cpu, other = cpu_seconds(gw.proc.pid) - cpu0, target.cpu() - other0
            if at99 is None:  # not drained: the whole wait
                at99 = (t1, (cpu0 + cpu, other0 + other, cpu_stall()))
            t99, (cpu99, other99, stall99) = at99[0], at99[1]
            stop_profile(prof)
            gw.stop()
            counted = m["delivered"] - m0["delivered"]
            secs = t1 - t0
            r = {
                "kind": kind,
                "records": n,
                "before_first_look": int(m0["delivered"]),
                "warmup_seconds": warmup_seconds,
                "counted": int(counted),
                "drained": drained,
                "seconds": secs,
                "seconds99": t99 - t0,
                # Rate and CPU shares up to 99%; CPU per record over the whole drain.
                "rps": (n99 - m0["delivered"]) / max(t99 - t0, 1e-9),
                "gateway_cpu": (cpu99 - cpu0) / max(t99 - t0, 1e-9),
                "cpu_ms_per_record": 1000 * cpu / max(counted, 1),
                "other_cpu": (other99 - other0) / max(t99 - t0, 1e-9),
                "other_ms_per_record": 1000 * other / max(counted, 1),
                "requests": int(m["requests"] - m0["requests"]),
                "dead": int(m["dead"]),
                "retries": int(m["retry"]),
                "cpu_pressure": (stall99 - stall0) / max(t99 - t0, 1e-9),
                "arrived": target.arrived(),
            }
            print(
                f"[{name}] {int(m['delivered'])} of {n} delivered, {r['rps']:.0f}/s, gateway "
                f"{r['cpu_ms_per_record']:.3f} ms CPU/record ({r['gateway_cpu']:.0%}), other "
                f"side {r['other_ms_per_record']:.3f} ms/record ({r['other_cpu']:.0%})",
                file=sys.stderr,
            )
            return r
        finally:
            if gw.proc is not None and gw.proc.poll() is None:
                gw.stop()
            target.close()


# -- report ----------------------------------------------------------------------------------
def report(args: argparse.Namespace, res: dict, started: float) -> str:
    rounds: list[dict[str, dict]] = res["rounds"]
    cmd = ".venv/bin/python bench/aws.py " + " ".join(sys.argv[1:])
    lines = [
        f"# AWS integrations benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}; wrk -t1 -c{args.connections} -d{args.duration}s; "
        f"moto {res['moto_version']} server (signature checking on, IAM user; SQS sends and "
        f"Kinesis shards patched, see `patch_moto`), sink, wrk and gateway on the same "
        f"machine; whole run {time.time() - started:.0f} s  ",
        f"{res['code']}",
        "",
        "## (a) Build and read, in process (µs per record)",
        "",
        "| batch | requests | http build | AWS build | AWS / http | AWS read (parse answer) "
        "| body bytes | first build, read in a fresh process | second build |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in res["micro"]:
        lines.append(
            f"| {m['kind']} x{m['n']} | {m['requests']} | {m['http_build_us']:.1f} "
            f"| {m['aws_build_us']:.1f} | **x{m['aws_build_us'] / m['http_build_us']:.1f}** "
            f"| {m['aws_read_us']:.1f} | {m['body_bytes']:,} "
            f"| {m['cold_build_ms']:.0f} ms, {m['cold_read_ms']:.0f} ms "
            f"| {m['warm_build_ms']:.1f} ms |"
        )
    lines += [
        "",
        "http build: the same mapped records as one JSON array (`body: array`, no auth). AWS "
        "build: the type's `build` with a cached botocore client (serialise, SigV4-sign, "
        "hand over). Read: the type's `read` on a successful answer of moto's shape. First "
        "build and read in a fresh process: once per process and connection (importing "
        "botocore, loading its models, making the client; the reader loads the model again).",
        "",
        "## (b) End to end: single-record signed ingest load, delivery in batches",
        "",
        f"{len(rounds)} round(s) of the four runs (order reversed in even rounds).",
        "",
        "| round | run | ingest req/s | delivered rec/s during load | backlog at end | drain "
        "| rec/s load+drain | gateway CPU ms/record | delivery's share (vs ingest only) "
        "| gateway CPU | moto / sink CPU | moto / sink ms/record | CPU pressure |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, rnd in enumerate(rounds, 1):
        base = rnd["ingest_only"]["cpu_ms_per_record"]
        for key in RUNS:
            r = rnd[key]
            if key == "ingest_only":
                lines.append(
                    f"| {n} | {LABELS[key]} | {r['ingest_rps']:.0f} | - | - | - "
                    f"| {r['ingest_rps']:.0f} | {r['cpu_ms_per_record']:.3f} | - "
                    f"| {r['gateway_cpu']:.0%} | - | - | {r['cpu_pressure']:.0%} |"
                )
                continue
            drain = (
                f"{r['drain_seconds']:.1f} s"
                if r["drained"]
                else f"not drained after {r['drain_seconds']:.0f} s"
            )
            if r["drain99_seconds"] is not None and r["drain_seconds"] > 2:
                drain += f" (99%: {r['drain99_seconds']:.1f} s)"
            lines.append(
                f"| {n} | {LABELS[key]} | {r['ingest_rps']:.0f} | {r['delivered_rps']:.0f} "
                f"| {r['backlog_at_end']} | {drain} | {r['e2e_rps']:.0f} "
                f"| {r['cpu_ms_per_record']:.3f} "
                f"| +{r['cpu_ms_per_record'] - base:.3f} (x{r['cpu_ms_per_record'] / base:.2f}) "
                f"| {r['gateway_cpu']:.0%} | {r['other_cpu']:.0%} "
                f"| {r['other_ms_per_record']:.3f} | {r['cpu_pressure']:.0%} |"
            )

    def extra(key: str) -> list[float]:
        return [
            rnd[key]["cpu_ms_per_record"] - rnd["ingest_only"]["cpu_ms_per_record"]
            for rnd in rounds
        ]

    def listed(xs: list[float]) -> str:
        return ", ".join(f"{x:+.3f}" for x in xs)

    lines += [
        "",
        "Ingest req/s = records stored / load time. Delivered = `gateway_deliveries_total"
        '{outcome="delivered"}` at the end of the load. Drain = from the end of the load until '
        "every stored record was delivered (and to 99% of them, when the whole took over 2 s). "
        "rec/s load+drain = delivered / (load + drain). "
        "Gateway CPU ms/record = the gateway process's CPU (user + system, all threads) from "
        "the start of the load to the end of the drain, per record; delivery's share = that "
        "minus the same round's ingest-only figure. Gateway CPU and moto / sink CPU = share of "
        "one core during the load. CPU pressure = share of the time some runnable task waited "
        "for a CPU (`/proc/pressure/cpu`).",
        "",
        "Delivery's gateway CPU per record, median over rounds (ms, vs ingest only): "
        + "; ".join(f"{k} {median(extra(k)):+.3f} ({listed(extra(k))})" for k in TARGETS)
        + ".",
        "",
        "| round | run | wrk req/s | non-2xx | p50 | p99 | outbound requests | records/request "
        "| retries | dead | at the destination | store tx/s | writer busy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    warnings = []
    for n, rnd in enumerate(rounds, 1):
        for key in RUNS:
            r = rnd[key]
            w = r["wrk"]
            per_req = f"{r['delivered'] / r['requests']:.1f}" if r.get("requests") else "-"
            lines.append(
                f"| {n} | {key} | {w['rps']:.0f} | {w['non_2xx']} | {w['p50']} | {w['p99']} "
                f"| {r.get('requests', '-')} | {per_req} | {r.get('retries', '-')} "
                f"| {r.get('dead', '-')} | {r.get('arrived', '-')} | {r['tx_per_s']:.0f} "
                f"| {r['writer_busy']:.0%} |"
            )
            if "warning" in r:
                warnings.append(f"Warning (round {n}, {key}): {r['warning']}")
    if warnings:
        lines += ["", *warnings]

    bl = res["backlog"]

    def vs(r: dict, base: str) -> str:
        b = bl[base]["cpu_ms_per_record"]
        ratio = f" (x{r['cpu_ms_per_record'] / b:.1f})" if b > 0 else ""
        return f"{r['cpu_ms_per_record'] - b:+.3f}{ratio}"

    lines += [
        "",
        f"## (c) Delivery alone: a backlog of {args.backlog:,} stored records, delivered after "
        "a restart",
        "",
        "| type | delivered rec/s | gateway CPU ms/record | vs http, batches of 100 "
        "| vs http, batches of 10 | gateway CPU | moto / sink ms/record | moto / sink CPU "
        "| requests | records/request | retries | dead | at the destination "
        "| 99% / all delivered after | CPU pressure |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in BACKLOG_RUNS:
        r = bl[kind]
        aws_row = kind.startswith("aws_")
        lines.append(
            f"| {LABELS[kind]} | {r['rps']:.0f} | {r['cpu_ms_per_record']:.3f} "
            f"| {'**' + vs(r, 'http') + '**' if aws_row else '-'} "
            f"| {vs(r, 'http10') if aws_row else '-'} "
            f"| {r['gateway_cpu']:.0%} | {r['other_ms_per_record']:.3f} | {r['other_cpu']:.0%} "
            f"| {r['requests']} | {r['counted'] / max(r['requests'], 1):.1f} "
            f"| {r['retries']} | {r['dead']} | {r['arrived']} "
            f"| {r['seconds99']:.1f} / {r['seconds']:.1f} s | {r['cpu_pressure']:.0%} |"
        )
    lines += [
        "",
        f"Timed from the first look at `/metrics` that shows {WARMUP:,} delivered after the "
        "restart (deliveries before it, "
        f"{', '.join(str(bl[k]['before_first_look']) for k in BACKLOG_RUNS)}, "
        f"{', '.join(format(bl[k]['warmup_seconds'], '.1f') for k in BACKLOG_RUNS)} s from the "
        "restart, are left out) to the last delivery. Rate, gateway and moto / sink CPU shares "
        "and CPU pressure: up to 99% of the counted records (the last few can wait up to half "
        "the lease for a lane's overflow deferral, see bench/README.md); CPU per record: the "
        "whole drain. No ingest runs "
        "beside it: the gateway's CPU here is delivery's alone (claims, loading and mapping "
        "records, build, send, read, outcomes in the store).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_moto":
        moto_main(sys.argv[2:])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_cold":
        cold_main(sys.argv[2])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds of load in each (b) run")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the four (b) runs")
    ap.add_argument("--connections", type=int, default=64, help="wrk connections")
    ap.add_argument("--backlog", type=int, default=15000, help="records delivered in (c)")
    ap.add_argument(
        "--micro-seconds", type=float, default=1.0, help="about how long each (a) timing runs"
    )
    ap.add_argument(
        "--drain-timeout",
        type=float,
        default=60.0,
        help="longest wait for every record to be delivered",
    )
    ap.add_argument(
        "--profile",
        metavar="DIR",
        help="py-spy profiles of the gateway (GIL-holding samples) during each (b) load and "
        "each (c) drain; they cost CPU: not for the numbers",
    )
    ap.add_argument(
        "--profile-format", choices=("flamegraph", "raw", "speedscope"), default="flamegraph"
    )
    ap.add_argument("--profile-rate", type=int, default=100, help="py-spy samples a second")
    args = ap.parse_args()
    started = time.time()
    wrk = ensure_wrk()
    import moto

    res: dict = {"code": code_state(), "rounds": [], "moto_version": moto.__version__}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    res["micro"] = micro(args.micro_seconds)
    server = start_moto()
    try:
        fastest = 0.0
        for n in range(args.rounds):
            rnd: dict[str, dict] = {}
            for key in RUNS if n % 2 == 0 else tuple(reversed(RUNS)):
                # Enough distinct signatures that wrk never wraps around (replays are refused).
                count = (
                    int(fastest * args.duration * 1.4) + 5000 if fastest else 6000 * args.duration
                )
                rnd[key] = run_e2e(args, wrk, server, f"{key}-{n + 1}", key, count)
                fastest = max(fastest, rnd[key]["ingest_rps"])
            res["rounds"].append(rnd)
        res["backlog"] = {kind: run_backlog(args, server, kind) for kind in BACKLOG_RUNS}
    finally:
        server.stop()
    if code_state() != res["code"]:
        res["code"] += f"; changed during the run, now {code_state().split(': ', 1)[1]}"
    out = HERE / "results" / f"aws-{datetime.now(UTC):%Y%m%d-%H%M}.md"
    raw = Path(tempfile.gettempdir()) / f"{out.stem}.json"
    raw.write_text(json.dumps(res, indent=1, default=str))
    print(f"raw numbers in {raw}", file=sys.stderr)
    text = report(args, res, started)
    print(text)
    out.write_text(text)
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
