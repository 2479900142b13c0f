"""Several gateway processes on one PostgreSQL database (real processes, the local server)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import requests
from requests_aws4auth import AWS4Auth

from tests.support import pg
from tests.support.gateway_proc import GatewayProcess
from tests.support.receiver import ThreadedReceiver

pytestmark = pytest.mark.e2e

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
      concurrency: 4
      retry: {{base: 50ms, cap: 500ms}}
      breaker: {{failures: 5, cooldown: 500ms, max_cooldown: 1s}}
"""


@pytest.fixture
def database() -> Iterator[str]:
    pg.require_server()
    url = pg.create_database_sync()
    yield url
    pg.drop_database_sync(url)


def _gateway(root: Path, store: str, url: str, **env: str) -> GatewayProcess:
    gw = GatewayProcess(
        root,
        groups=(),
        GATEWAY_STORE=store,
        GATEWAY_DELIVERY_POLL_INTERVAL="0.1",
        GATEWAY_MASTER_KEY="k" * 43 + "=",
        **env,
    )
    (gw.mappings / "shop.yaml").write_text(MAPPING.format(url=url))
    return gw


def _send(
    gw: GatewayProcess,
    key: str,
    secret: str,
    stop: threading.Event,
    acked: list[str],
    refused: list[int],
) -> None:
    session = requests.Session()
    auth = AWS4Auth(key, secret, "us-east-1", "execute-api")
    while not stop.is_set():
        tag = uuid.uuid4().hex
        body = json.dumps({"group_key": "shop", "data": {"tag": tag}}).encode()
        try:
            r = session.post(
                gw.url + "/v1/records",
                data=body,
                auth=auth,
                timeout=5,
                headers={"Content-Type": "application/json"},
            )
        except requests.RequestException:
            time.sleep(0.05)
            continue
        if r.status_code == 202:
            acked.append(tag)
        else:
            refused.append(r.status_code)
            time.sleep(0.02)


class Load:
    """Threads sending signed records to some gateways until stopped."""

    def __init__(self, targets: list[tuple[GatewayProcess, str, str]]) -> None:
        self.stop = threading.Event()
        self.acked: list[str] = []
        self.refused: list[int] = []
        self.threads = [
            threading.Thread(target=_send, args=(gw, k, s, self.stop, self.acked, self.refused))
            for gw, k, s in targets
            for _ in range(2)
        ]
        for t in self.threads:
            t.start()

    def until(self, n: int, within: float = 30) -> None:
        deadline = time.monotonic() + within
        while len(self.acked) < n and time.monotonic() < deadline:
            time.sleep(0.02)

    def end(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)


def _arrived(rx: ThreadedReceiver, tags: set[str], within: float) -> dict[str, set[str]]:
    """Idempotency keys seen per tag, once every tag arrived (or the time is up)."""
    deadline = time.monotonic() + within
    while True:
        with rx.lock:
            keys: dict[str, set[str]] = {}
            for b, h in zip(rx.bodies, rx.headers, strict=True):
                keys.setdefault(b["tag"], set()).add(h["Idempotency-Key"])
        if tags <= set(keys) or time.monotonic() > deadline:
            return keys
        time.sleep(0.1)


def _two(tmp_path: Path, database: str, rx: ThreadedReceiver, **env: str):
    a = _gateway(tmp_path / "a", database, rx.url, **env).start()
    b = _gateway(tmp_path / "b", database, rx.url, **env).start()
    key, secret = a.create_key("shop")  # one store: the other process knows the key too
    return a, b, key, secret


def test_two_processes_on_one_database_deliver_every_record_once_to_a_deduplicating_sink(
    tmp_path: Path, database: str
) -> None:
    with ThreadedReceiver() as rx:
        a, b, key, secret = _two(tmp_path, database, rx)
        try:
            load = Load([(a, key, secret), (b, key, secret)])
            load.until(400)
            load.end()
            assert not load.refused, load.refused[:5]
            keys = _arrived(rx, set(load.acked), within=30)
            missing = set(load.acked) - set(keys)
            assert not missing, f"{len(missing)} of {len(load.acked)} never arrived"
            # Deduplicated by the Idempotency-Key: one key per record, so exactly once.
            assert all(len(k) == 1 for k in keys.values())
            # Both processes delivered (claims are shared, not one process doing it all).
            assert '"delivery_started"' in a.output()
            assert '"delivery_started"' in b.output()
        finally:
            a.stop()
            b.stop()


def test_sigkill_of_one_process_the_other_finishes_its_leased_work(
    tmp_path: Path, database: str
) -> None:
    with ThreadedReceiver(delay=0.02) as rx:
        a, b, key, secret = _two(tmp_path, database, rx, GATEWAY_DELIVERY_LEASE="2")
        try:
            load = Load([(a, key, secret)])
            load.until(300)
            a.kill()  # holds leases on deliveries it claimed and never finished
            load.end()
            keys = _arrived(rx, set(load.acked), within=30)
            missing = set(load.acked) - set(keys)
            assert not missing, f"{len(missing)} of {len(load.acked)} never arrived"
            assert all(len(k) == 1 for k in keys.values())
        finally:
            b.stop()


async def _set_connections(database_url: str, allowed: bool) -> None:
    name = database_url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(pg.ADMIN_URL)
    try:
        await conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                name,
            )
    finally:
        await conn.close()


def test_database_outage_answers_503_and_every_202_is_delivered(
    tmp_path: Path, database: str
) -> None:
    # The outage: the gateway's database refuses connections and its sessions are cut, as
    # in a server restart, without disturbing other databases on the shared server.
    with ThreadedReceiver() as rx:
        gw = _gateway(tmp_path, database, rx.url).start()
        key, secret = gw.create_key("shop")
        try:
            load = Load([(gw, key, secret)])
            load.until(100)
            pg._run(_set_connections(database, False))
            time.sleep(2.0)
            during = len(load.acked)
            time.sleep(1.0)
            assert len(load.acked) == during, "202s while the database was down"
            pg._run(_set_connections(database, True))
            load.until(during + 100)
            load.end()
            assert 503 in load.refused
            assert len(load.acked) > during, "ingest did not come back by itself"
            keys = _arrived(rx, set(load.acked), within=30)
            missing = set(load.acked) - set(keys)
            assert not missing, f"{len(missing)} of {len(load.acked)} 202 records never arrived"
        finally:
            pg._run(_set_connections(database, True))
            gw.stop()
