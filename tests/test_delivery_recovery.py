"""Recovery after a SIGKILL on SQLite: the restarted gateway sends what the dead one had claimed
at once, without waiting out the dead process's leases (issue 17, goal 4)."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from pathlib import Path

import pytest
import requests
from requests_aws4auth import AWS4Auth

from tests.support.gateway_proc import GatewayProcess
from tests.support.receiver import ThreadedReceiver

pytestmark = pytest.mark.e2e

LEASE = 300.0  # far longer than the test may take: waiting it out would fail the test

MAPPING = """\
group_key: shop
integrations:
  - name: hook
    type: http
    connection:
      url: "{url}/in"
    fields:
      tag: tag
    options:
      concurrency: 2
"""


def _leases(db: Path) -> list[tuple[str, float]]:
    """(owner, expires_at) of every leased pending delivery, read on a connection of its own."""
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("PRAGMA query_only = ON")
        return con.execute(
            "SELECT lease_owner, lease_expires_at FROM deliveries "
            "WHERE state = 'pending' AND lease_owner IS NOT NULL"
        ).fetchall()
    finally:
        con.close()


def _post(gw: GatewayProcess, auth: AWS4Auth, tag: str) -> int:
    body = json.dumps({"group_key": "shop", "data": {"tag": tag}}).encode()
    r = requests.post(
        gw.url + "/v1/records",
        data=body,
        auth=auth,
        timeout=10,
        headers={"Content-Type": "application/json"},
    )
    return r.status_code


def test_restart_after_sigkill_sends_the_dead_process_claims_without_waiting_for_the_lease(
    tmp_path: Path,
) -> None:
    # The receiver hangs: the first gateway claims every delivery, sends two and holds the rest
    # in its lane, all under a 300-s lease, when it is killed.
    with ThreadedReceiver(delay=30.0) as rx:
        gw = GatewayProcess(
            tmp_path,
            groups=(),
            GATEWAY_DELIVERY_LEASE=str(LEASE),
            GATEWAY_DELIVERY_POLL_INTERVAL="0.1",
        )
        (gw.mappings / "shop.yaml").write_text(MAPPING.format(url=rx.url))
        gw.start()
        key, secret = gw.create_key("shop")
        auth = AWS4Auth(key, secret, "us-east-1", "execute-api")
        tags = [uuid.uuid4().hex for _ in range(30)]
        try:
            assert all(_post(gw, auth, t) == 202 for t in tags)
            db = gw.data_dir / "gateway.db"
            deadline = time.monotonic() + 20
            while len(_leases(db)) < len(tags) and time.monotonic() < deadline:
                time.sleep(0.1)
            leased = _leases(db)
            assert len(leased) == len(tags), "the first gateway did not claim everything"
        finally:
            gw.kill()
        killed_at = time.time()
        # Stale from here on: every claim outlives the restart by minutes.
        assert all(expires > killed_at + LEASE / 2 for _, expires in leased)
        dead_owner = leased[0][0]

        rx.delay = 0.0
        gw.start()
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                with rx.lock:
                    got = {b["tag"] for b in rx.bodies}
                if set(tags) <= got:
                    break
                time.sleep(0.1)
            missing = set(tags) - got
            assert not missing, f"{len(missing)} of {len(tags)} claimed deliveries not sent"
            # Every record arrived (the two in flight at the kill may arrive twice: at least
            # once), and the restarted gateway said what it took over.
            events = [json.loads(line) for line in gw.output().splitlines() if '"event"' in line]
            released = [e for e in events if e.get("event") == "delivery_stale_leases_released"]
            assert released, "no delivery_stale_leases_released event"
            assert released[-1]["released"] == len(tags)
            assert released[-1]["owner"] != dead_owner
            assert all(o != dead_owner for o, _ in _leases(db))
        finally:
            gw.stop()
