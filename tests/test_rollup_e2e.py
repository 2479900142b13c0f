"""Usage metering with a rollup through a real ``gateway serve``, killed with SIGKILL in the
middle: 500 usage records over three short windows reach the Automatum fake as exactly one
report per customer per window, with the exact sums, under one idempotency key each."""

from __future__ import annotations

import asyncio
import collections
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

import pytest
import requests
from requests_aws4auth import AWS4Auth

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


def _stored(db: Path) -> tuple[list[tuple[str, dict[str, Any], float]], dict[str, int]]:
    """The usage records in the store (id, data, arrival) and the states of their deliveries."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT id, data, received_at FROM records "
            "WHERE group_key = 'usage' AND access_key_id != 'gateway:rollup'"
        ).fetchall()
        states = dict(
            con.execute(
                "SELECT d.state, count(*) FROM deliveries d JOIN records r ON r.id = d.record_id "
                "WHERE r.group_key = 'usage' GROUP BY d.state"
            ).fetchall()
        )
    finally:
        con.close()
    return [(i, json.loads(d), t) for i, d, t in rows], states


def _unfinished(db: Path) -> int:
    """Deliveries of the group still pending (claimed or not): records not yet in a bucket."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(
            con.execute(
                "SELECT count(*) FROM deliveries WHERE group_key = 'usage' AND state = 'pending'"
            ).fetchone()[0]
        )
    finally:
        con.close()


def _kill_while_unfinished(gw: GatewayProcess, within: float = 10.0) -> None:
    """SIGKILL the gateway the moment the store shows records not yet in their buckets (a
    batch committed, its deliveries not yet added: claimed or about to be)."""
    assert gw.proc is not None
    db = gw.data_dir / "gateway.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            pending = con.execute(
                "SELECT count(*) FROM deliveries WHERE group_key = 'usage' AND state = 'pending'"
            ).fetchone()[0]
            if pending:
                break
    finally:
        con.close()
    gw.proc.send_signal(signal.SIGKILL)
    gw.kill()  # waits for it


async def test_sigkill_mid_load_gives_one_exact_report_per_customer_and_window(
    tmp_path: Path,
) -> None:
    fake = AutomatumFake(expires_in=3600)
    server = await Receiver(fake).start()
    gw = GatewayProcess(
        tmp_path,
        groups=(),
        GATEWAY_DELIVERY_POLL_INTERVAL="0.1",
        GATEWAY_DELIVERY_LEASE="2",
        ATM_SECRET=CLIENT_SECRET,
    )
    (gw.mappings / "usage.yaml").write_text(
        MAPPING.format(url=server.url, client_id=CLIENT_ID, window=WINDOW, grace=GRACE)
    )
    rng = random.Random(13)
    records = [
        {
            "customer_id": rng.choice(CUSTOMERS),
            "units": rng.randint(1, 50),
            "charged": str(decimal.Decimal(rng.randint(1, 999)) / 100),  # 0.01 .. 9.99
        }
        for _ in range(RECORDS)
    ]
    batches = [records[n : n + BATCH] for n in range(0, RECORDS, BATCH)]
    try:
        await asyncio.to_thread(gw.start)
        key, secret = await asyncio.to_thread(gw.create_key, "usage")
        auth = AWS4Auth(key, secret, "us-east-1", "execute-api")
        # Start at a window's beginning and spread the load over about three windows.
        await asyncio.sleep(WINDOW - time.time() % WINDOW)
        pace = (WINDOW * 3 - 1.5) / len(batches)
        load = asyncio.create_task(asyncio.to_thread(_load, gw, auth, batches, pace))
        # Kill 1, mid-load: batches are being stored, records claimed and added to buckets.
        await asyncio.sleep(WINDOW * 1.5)
        await asyncio.to_thread(_kill_while_unfinished, gw)
        in_flight = _unfinished(gw.data_dir / "gateway.db")
        await asyncio.to_thread(gw.start)
        acked = await load
        # Kill 2, while a report is at Automatum and its answer not yet back: the restarted
        # process sends that report again, under the same key.
        fake.delay = 1.0
        deadline = time.monotonic() + WINDOW + GRACE + 20
        while not fake.delayed and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        assert fake.delayed, "no report was made"
        await asyncio.to_thread(gw.kill)
        fake.delay = 0.0
        await asyncio.to_thread(gw.start)
        # Wait for every report: the last window ends, then its grace, then the send.
        deadline = time.monotonic() + WINDOW + GRACE + 30
        stored: list[tuple[str, dict[str, Any], float]] = []
        states: dict[str, int] = {}
        while time.monotonic() < deadline:
            stored, states = _stored(gw.data_dir / "gateway.db")
            windows = {(d["customer_id"], t // WINDOW * WINDOW) for _, d, t in stored}
            if len(fake.reports) >= len(windows) and states.get("pending", 0) == 0:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # a report made or sent twice would show by now
        stored, states = _stored(gw.data_dir / "gateway.db")
        await asyncio.to_thread(gw.stop)
    finally:
        if gw.proc is not None and gw.proc.poll() is None:
            await asyncio.to_thread(gw.kill)
        await server.stop()

    # The kill left records on their way into buckets, for the restarted process to add.
    # The first kill left records on their way into buckets, for the restarted one to add.
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
    # One token per process that sent reports (the second and the third: the first was
    # killed before any window closed), though a token lives an hour and each sent several.
    assert len(fake.token_requests) == 2
