"""Usage metering with a rollup through a real ``gateway serve``, killed with SIGKILL in the
middle: 500 usage records over three short windows reach the Automatum fake as exactly one
report per customer per window, with the exact sums, under one idempotency key each."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import decimal
import json
import random
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import requests
from requests_aws4auth import AWS4Auth

from tests.support import pg
from tests.support.automatum_fake import CLIENT_ID, CLIENT_SECRET, METERING_PATH, AutomatumFake
from tests.support.gateway_proc import GatewayProcess
from tests.support.receiver import Receiver

pytestmark = pytest.mark.e2e

WINDOW = 3  # seconds
GRACE = 8  # covers the restart and the killed process's leases (2 s)
RECORDS = 500
BATCH = 10
CUSTOMERS = [f"cus_{n}" for n in range(5)]

MAPPING = """\
group_key: usage
integrations:
  - name: metering
    type: automatum_metering
    connection:
      base_url: "{url}"
      client_id: {client_id}
      client_secret: "${{ATM_SECRET}}"
    settings: {{vendor: acme, listing_id: lst_42}}
    fields:
      customer_id: customer_id
      units: units
      charged: charged
      title: {{value: API calls}}
      description: rollup_window_start
    options:
      rate_limit: 50/s
      retry: {{base: 100ms, cap: 1s}}
      rollup: {{window: {window}s, by: [customer_id], sum: [units, charged], grace: {grace}s}}
"""


def _send(gw: GatewayProcess, auth: AWS4Auth, items: list[dict[str, Any]], key: str) -> list[str]:
    """One batch under an idempotency key, sent again (same key) while the gateway is down or
    restarting; the ids of the records accepted. A batch cut off by the kill is answered, once
    the gateway is back, with what it stored (if it did), never stored twice."""
    body = json.dumps({"records": [{"group_key": "usage", "data": d} for d in items]}).encode()
    deadline = time.monotonic() + 60
    while True:
        try:
            r = requests.post(
                gw.url + "/v1/records/batch",
                data=body,
                auth=auth,
                headers={"Content-Type": "application/json", "Idempotency-Key": key},
                timeout=10,
            )
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
            continue
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert all(x["status"] == "accepted" for x in results), results
        return [x["id"] for x in results]


def _load(
    gw: GatewayProcess, auth: AWS4Auth, batches: list[list[dict[str, Any]]], pace: float
) -> list[str]:
    """Send ``batches`` from four threads, one batch every ``pace`` seconds overall."""
    acked: list[str] = []
    lock = threading.Lock()
    todo = list(enumerate(batches))

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                n, batch = todo.pop(0)
            ids = _send(gw, auth, batch, f"usage-batch-{n}")
            with lock:
                acked.extend(ids)
            time.sleep(pace * 4)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for n, t in enumerate(threads):
        t.start()
        time.sleep(pace if n < 3 else 0)
    for t in threads:
        t.join(timeout=120)
    return acked


STORED = (
    "SELECT id, data, received_at FROM records "
    "WHERE group_key = 'usage' AND access_key_id != 'gateway:rollup'"
)
STATES = (
    "SELECT d.state, count(*) FROM deliveries d JOIN records r ON r.id = d.record_id "
    "WHERE r.group_key = 'usage' GROUP BY d.state"
)
UNFINISHED = "SELECT count(*) FROM deliveries WHERE group_key = 'usage' AND state = 'pending'"
Stored = list[tuple[str, dict[str, Any], float]]


class Peek:
    """Reads the store the gateways write, behind their backs (SQLite file or PostgreSQL)."""

    def __init__(self, db: Path | None = None, url: str | None = None) -> None:
        self.db, self.url = db, url

    async def rows(self, sql: str) -> list[tuple[Any, ...]]:
        if self.url is not None:
            conn = await asyncpg.connect(self.url)
            try:
                return [tuple(r) for r in await conn.fetch(sql)]
            finally:
                await conn.close()
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()

    async def stored(self) -> tuple[Stored, dict[str, int]]:
        """The usage records (id, data, arrival) and the states of their deliveries."""
        rows = await self.rows(STORED)
        states = {state: n for state, n in await self.rows(STATES)}
        return [(i, json.loads(bytes(d)), t) for i, d, t in rows], states

    async def unfinished(self) -> int:
        """Deliveries still pending (claimed or not): records not yet in a bucket."""
        return int((await self.rows(UNFINISHED))[0][0])


async def _kill_while_unfinished(gw: GatewayProcess, peek: Peek, within: float = 10.0) -> int:
    """SIGKILL the gateway the moment the store shows records not yet in their buckets (a
    batch committed, its deliveries not yet added: claimed or about to be); return how many
    there were. (Read afterwards, the count can already be 0 on PostgreSQL: the other
    gateway goes on adding them.)"""
    assert gw.proc is not None
    deadline = time.monotonic() + within
    seen = 0
    while time.monotonic() < deadline and not (seen := await peek.unfinished()):
        pass
    gw.proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(gw.kill)  # waits for it
    return seen


def _records() -> list[dict[str, Any]]:
    rng = random.Random(13)
    return [
        {
            "customer_id": rng.choice(CUSTOMERS),
            "units": rng.randint(1, 50),
            "charged": str(decimal.Decimal(rng.randint(1, 999)) / 100),  # 0.01 .. 9.99
        }
        for _ in range(RECORDS)
    ]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_sigkill_mid_load_gives_one_exact_report_per_customer_and_window(
    tmp_path: Path, backend: str
) -> None:
    """SQLite: one gateway, killed mid-load and again while a report is in flight.
    PostgreSQL: two gateways on one database adding to the same buckets; the one taking the
    load is killed mid-load, then both while a report is in flight."""
    async with contextlib.AsyncExitStack() as stack:
        env = {
            "GATEWAY_DELIVERY_POLL_INTERVAL": "0.1",
            "GATEWAY_DELIVERY_LEASE": "2",
            "ATM_SECRET": CLIENT_SECRET,
            # One master key for every process: an access key made by one is read by all.
            "GATEWAY_MASTER_KEY": "k" * 43 + "=",
        }
        if backend == "postgresql":
            pg.require_server()
            url = await stack.enter_async_context(pg.throwaway_database())
            env["GATEWAY_STORE"] = url
        await _run(tmp_path, backend, env, Peek(tmp_path / "a" / "data" / "gateway.db",
                                                env.get("GATEWAY_STORE")))  # fmt: skip


async def _run(tmp_path: Path, backend: str, env: dict[str, str], peek: Peek) -> None:
    fake = AutomatumFake(expires_in=3600)
    server = await Receiver(fake).start()
    names = ["a", "b"] if backend == "postgresql" else ["a"]
    gws = [GatewayProcess(tmp_path / n, groups=(), **env) for n in names]
    for gw in gws:
        (gw.mappings / "usage.yaml").write_text(
            MAPPING.format(url=server.url, client_id=CLIENT_ID, window=WINDOW, grace=GRACE)
        )
    gw = gws[0]  # takes the producers' load
    records = _records()
    batches = [records[n : n + BATCH] for n in range(0, RECORDS, BATCH)]
    try:
        for g in gws:
            await asyncio.to_thread(g.start)
        key, secret = await asyncio.to_thread(gw.create_key, "usage")
        auth = AWS4Auth(key, secret, "us-east-1", "execute-api")
        # Start at a window's beginning and spread the load over about three windows.
        await asyncio.sleep(WINDOW - time.time() % WINDOW)
        pace = (WINDOW * 3 - 1.5) / len(batches)
        load = asyncio.create_task(asyncio.to_thread(_load, gw, auth, batches, pace))
        # Kill 1, mid-load: batches are being stored, records claimed and added to buckets.
        await asyncio.sleep(WINDOW * 1.5)
        in_flight = await _kill_while_unfinished(gw, peek)
        await asyncio.to_thread(gw.start)
        acked = await load
        # Kill 2, while a report is at Automatum and its answer not yet back: the restarted
        # process sends that report again, under the same key.
        fake.delay = 1.0
        deadline = time.monotonic() + WINDOW + GRACE + 20
        while not fake.delayed and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        assert fake.delayed, "no report was made"
        for g in gws:
            await asyncio.to_thread(g.kill)
        fake.delay = 0.0
        for g in gws:
            await asyncio.to_thread(g.start)
        # Wait for every report: the last window ends, then its grace, then the send.
        deadline = time.monotonic() + WINDOW + GRACE + 30
        stored: Stored = []
        states: dict[str, int] = {}
        while time.monotonic() < deadline:
            stored, states = await peek.stored()
            windows = {(d["customer_id"], t // WINDOW * WINDOW) for _, d, t in stored}
            if len(fake.reports) >= len(windows) and states.get("pending", 0) == 0:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # a report made or sent twice would show by now
        stored, states = await peek.stored()
        for g in gws:
            await asyncio.to_thread(g.stop)
    finally:
        for g in gws:
            if g.proc is not None and g.proc.poll() is None:
                await asyncio.to_thread(g.kill)
        await server.stop()

    # The first kill came while records were on their way into buckets.
    assert in_flight > 0
    # Every record is accepted once and stored once, and every delivery of the group is done.
    assert len(acked) == RECORDS
    assert sorted(i for i, _, _ in stored) == sorted(acked)
    assert set(states) == {"delivered"}, states

    # Expected: per customer and window (by arrival), the exact sums.
    expected: dict[tuple[str, float], list[decimal.Decimal]] = collections.defaultdict(
        lambda: [decimal.Decimal(0), decimal.Decimal(0)]
    )
    for _, d, t in stored:
        sums = expected[(d["customer_id"], t // WINDOW * WINDOW)]
        sums[0] += d["units"]
        sums[1] += decimal.Decimal(d["charged"])
    assert len({w for _, w in expected}) >= 3, "the load did not span three windows"

    # Exactly one report per customer per window, with the exact sums.
    got: dict[tuple[str, float], list[Any]] = {}
    for report in fake.reports.values():
        details = report.body["details"]
        [usage] = details["usages"]
        start = datetime.datetime.fromisoformat(usage["description"]).timestamp()
        bucket = (details["customer"]["id"], start)
        assert bucket not in got, f"two reports for {bucket}"
        got[bucket] = [usage["units"], decimal.Decimal(str(details["charged"]))]
        day = datetime.datetime.fromtimestamp(start, datetime.UTC).date().isoformat()
        assert details["reportingDate"] == day
    assert got == {k: [int(u), c] for k, (u, c) in expected.items()}

    # No report went out under two keys, and a key sent again carried the same report.
    assert fake.replays >= 1  # the report in flight at the second kill, sent again
    sent = [r for r in server.seen if r.path == METERING_PATH]
    bodies: dict[str, set[bytes]] = collections.defaultdict(set)
    for r in sent:
        bodies[r.headers["Idempotency-Key"]].add(r.body)
    assert all(len(b) == 1 for b in bodies.values())
    assert set(bodies) == set(fake.reports)
    held = fake.delayed[0]
    assert sum(r.headers["Idempotency-Key"] == held for r in sent) >= 2
    # One token per process that sent reports, though a token lives an hour and each sent
    # several: SQLite, the second and third lives of the one gateway (the first was killed
    # before any window closed); PostgreSQL, at most the four lives after the first kill.
    if backend == "sqlite":
        assert len(fake.token_requests) == 2
    else:
        assert 1 <= len(fake.token_requests) <= 4 < len(fake.reports)
