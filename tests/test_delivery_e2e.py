"""Delivery through a real ``gateway serve`` process: crashes, long outages, replays."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
from requests_aws4auth import AWS4Auth

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
      n: n
    options:
      concurrency: 4
      retry: {{base: 50ms, cap: 500ms}}
      breaker: {{failures: 5, cooldown: 500ms, max_cooldown: 1s}}
"""


def _gateway(tmp_path: Path, url: str, **env: str) -> GatewayProcess:
    gw = GatewayProcess(tmp_path, groups=(), GATEWAY_DELIVERY_POLL_INTERVAL="0.1", **env)
    (gw.mappings / "shop.yaml").write_text(MAPPING.format(url=url))
    return gw


def _load(
    gw: GatewayProcess, key: str, secret: str, stop: threading.Event, acked: list[str]
) -> None:
    session = requests.Session()
    auth = AWS4Auth(key, secret, "us-east-1", "execute-api")
    while not stop.is_set():
        tag = uuid.uuid4().hex
        body = json.dumps({"group_key": "shop", "data": {"tag": tag, "n": 1}}).encode()
        try:
            r = session.post(
                gw.url + "/v1/records",
                data=body,
                auth=auth,
                timeout=5,
                headers={"Content-Type": "application/json"},
            )
        except requests.RequestException:
            return  # the server is gone
        if r.status_code == 202:
            acked.append(tag)


def _run_load(
    gw: GatewayProcess, key: str, secret: str, until: int
) -> tuple[list[str], threading.Event, list[threading.Thread]]:
    stop = threading.Event()
    acked: list[str] = []
    threads = [
        threading.Thread(target=_load, args=(gw, key, secret, stop, acked)) for _ in range(4)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < until and time.monotonic() < deadline:
        time.sleep(0.02)
    return acked, stop, threads


def _wait_arrived(rx: ThreadedReceiver, tags: set[str], within: float) -> set[str]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with rx.lock:
            got = {b["tag"] for b in rx.bodies}
        if tags <= got:
            return got
        time.sleep(0.1)
    return got


@pytest.mark.parametrize("when", ["ingesting", "idle"])
def test_sigkill_during_delivery_then_restart_delivers_every_accepted_record(
    tmp_path: Path, when: str
) -> None:
    # A slow receiver keeps many deliveries leased and in flight when the kill comes.
    with ThreadedReceiver(delay=0.02) as rx:
        gw = _gateway(tmp_path, rx.url, GATEWAY_DELIVERY_LEASE="2")
        gw.start()
        key, secret = gw.create_key("shop")
        acked, stop, threads = _run_load(gw, key, secret, until=300)
        if when == "idle":
            stop.set()
            for t in threads:
                t.join(timeout=10)
            time.sleep(0.3)  # deliveries in flight, no ingest
        with rx.lock:
            before_kill = len(rx.bodies)
        gw.kill()
        stop.set()
        for t in threads:
            t.join(timeout=10)
        assert len(acked) >= 300
        assert before_kill < len(acked), "everything arrived before the kill: no test"
        gw.start()
        got = _wait_arrived(rx, set(acked), within=30)
        missing = set(acked) - got
        assert not missing, f"{len(missing)} of {len(acked)} accepted records never arrived"
        # A record sent twice (in flight at the kill) carries the same idempotency key.
        with rx.lock:
            keys_by_tag: dict[str, set[str]] = {}
            for b, h in zip(rx.bodies, rx.headers, strict=True):
                keys_by_tag.setdefault(b["tag"], set()).add(h["Idempotency-Key"])
        assert all(len(k) == 1 for k in keys_by_tag.values())
        gw.stop()


def test_integration_down_for_the_whole_load_then_back_gets_everything(tmp_path: Path) -> None:
    with ThreadedReceiver(status=503) as rx:
        gw = _gateway(tmp_path, rx.url)
        gw.start()
        key, secret = gw.create_key("shop")
        acked, stop, threads = _run_load(gw, key, secret, until=400)
        stop.set()
        for t in threads:
            t.join(timeout=10)
        time.sleep(1.0)
        with rx.lock:
            assert rx.bodies == []  # nothing got through while it was down
        rx.status = 200
        got = _wait_arrived(rx, set(acked), within=30)
        missing = set(acked) - got
        assert not missing, f"{len(missing)} of {len(acked)} records never arrived"
        assert gw.stop(signal.SIGTERM) == 0
