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
import sqlite3
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


def _send(gw: GatewayProcess, key: str, secret: str, items: list[dict[str, Any]]) -> list[str]:
    """One batch; the ids of the records accepted."""
    body = json.dumps({"records": [{"group_key": "usage", "data": d} for d in items]}).encode()
    r = requests.post(
        gw.url + "/v1/records/batch",
        data=body,
        auth=AWS4Auth(key, secret, "us-east-1", "execute-api"),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert all(x["status"] == "accepted" for x in results), results
    return [x["id"] for x in results]


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
    acked: list[str] = []
    try:
        await asyncio.to_thread(gw.start)
        key, secret = await asyncio.to_thread(gw.create_key, "usage")
        # Start at a window's beginning and spread the load over about three windows.
        await asyncio.sleep(WINDOW - time.time() % WINDOW)
        pace = (WINDOW * 3 - 1.5) / (RECORDS / BATCH)
        for n in range(0, RECORDS, BATCH):
            if n == RECORDS // 2:
                # Records are being added to buckets right now: no chance to clean up.
                await asyncio.to_thread(gw.kill)
                await asyncio.to_thread(gw.start)
            acked += await asyncio.to_thread(_send, gw, key, secret, records[n : n + BATCH])
            await asyncio.sleep(pace)
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

    # Every accepted record is in the store, and every delivery of the group is done.
    assert len(acked) == RECORDS
    assert {i for i, _, _ in stored} == set(acked)
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
    sent = [r for r in server.requests if r.path == METERING_PATH]
    bodies: dict[str, set[bytes]] = collections.defaultdict(set)
    for r in sent:
        bodies[r.headers["Idempotency-Key"]].add(r.body)
    assert all(len(b) == 1 for b in bodies.values())
    assert set(bodies) == set(fake.reports)
    ok = [k for k, status in fake.answers if status == 200]
    assert len(ok) == len(fake.reports) + fake.replays
    # One token for the whole run: the first process was killed before any window closed,
    # and the token lives an hour.
    assert len(fake.token_requests) == 1
