"""Per-key ordering end to end: real gateway processes, a flaky local integration, a SIGKILL.

1,000 records over 50 keys go to an integration that fails 30% of requests (503) and answers
some with 429 and Retry-After; the gateway is SIGKILLed once half-way. Per key, the first
successful arrivals must come in record order, and every record must arrive. On SQLite (one
process, restarted) and on PostgreSQL (two processes sharing the database, one killed and
restarted, the records sent alternately to both).
"""

from __future__ import annotations

import http.server
import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from requests_aws4auth import AWS4Auth

from tests.support import pg
from tests.support.gateway_proc import GatewayProcess

pytestmark = pytest.mark.e2e

KEYS = 50
RECORDS = 1000
BATCH = 50

MAPPING = """\
group_key: shop
integrations:
  - name: hook
    type: http
    connection:
      url: "{url}/in"
    fields:
      key: key
      seq: seq
    options:
      concurrency: 16
      ordering_key: key
      retry: {{base: 50ms, cap: 300ms, max_attempts: 1000, max_age: 1h}}
      breaker: {{failures: 1000, failure_ratio: 1, min_requests: 1000, cooldown: 200ms}}
"""


class FlakyIntegration:
    """A threaded HTTP server failing 30% of requests with 503 and answering 0.5% with 429
    and ``Retry-After: 1``; it notes every successful request's (key, seq) as it arrives."""

    def __init__(self, seed: int = 18) -> None:
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.ok: list[tuple[str, int]] = []
        self.failed = 0
        self.limited = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                headers = {}
                with outer.lock:
                    roll = outer.rng.random()
                    if roll < 0.005:
                        status, headers = 429, {"Retry-After": "1"}
                        outer.limited += 1
                    elif roll < 0.305:
                        status = 503
                        outer.failed += 1
                    else:
                        status = 200
                        outer.ok.append((body["key"], body["seq"]))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FlakyIntegration:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def arrivals(self) -> list[tuple[str, int]]:
        with self.lock:
            return list(self.ok)


def _gateway(root: Path, url: str, **env: str) -> GatewayProcess:
    gw = GatewayProcess(
        root,
        groups=(),
        GATEWAY_DELIVERY_POLL_INTERVAL="0.1",
        GATEWAY_DELIVERY_LEASE="2",
        GATEWAY_MASTER_KEY="k" * 43 + "=",
        **env,
    )
    (gw.mappings / "shop.yaml").write_text(MAPPING.format(url=url))
    return gw


def _records() -> list[dict[str, Any]]:
    """Record i: key ``k{i % 50}``, its number within the key ``i // 50``."""
    return [
        {"group_key": "shop", "data": {"key": f"k{i % KEYS}", "seq": i // KEYS}}
        for i in range(RECORDS)
    ]


def _send(targets: list[GatewayProcess], key: str, secret: str) -> None:
    """Every record in batches, one batch after the other (each answered before the next is
    sent, so record order is the order here), alternating between the gateways."""
    auth = AWS4Auth(key, secret, "us-east-1", "execute-api")
    recs = _records()
    with requests.Session() as s:
        for n, i in enumerate(range(0, RECORDS, BATCH)):
            gw = targets[n % len(targets)]
            body = json.dumps({"records": recs[i : i + BATCH]}).encode()
            r = s.post(
                gw.url + "/v1/records/batch",
                data=body,
                auth=auth,
                timeout=10,
                headers={"Content-Type": "application/json"},
            )
            assert r.status_code == 200, r.text
            assert r.json()["accepted"] == BATCH


def _wait(rx: FlakyIntegration, n: int, within: float) -> list[tuple[str, int]]:
    deadline = time.monotonic() + within
    while True:
        got = rx.arrivals()
        if len(set(got)) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def _check(got: list[tuple[str, int]]) -> None:
    per_key = RECORDS // KEYS
    firsts: dict[str, list[int]] = {}
    seen: set[tuple[str, int]] = set()
    for key, seq in got:
        if (key, seq) not in seen:
            seen.add((key, seq))
            firsts.setdefault(key, []).append(seq)
    missing = {(f"k{i % KEYS}", i // KEYS) for i in range(RECORDS)} - seen
    assert not missing, f"{len(missing)} records never arrived, e.g. {sorted(missing)[:5]}"
    out_of_order = {k: v for k, v in firsts.items() if v != list(range(per_key))}
    assert not out_of_order, f"{len(out_of_order)} keys out of order, e.g. {out_of_order}"


def test_order_per_key_through_failures_429s_and_a_sigkill_on_sqlite(tmp_path: Path) -> None:
    with FlakyIntegration() as rx:
        gw = _gateway(tmp_path, rx.url).start()
        key, secret = gw.create_key("shop")
        try:
            _send([gw], key, secret)
            _wait(rx, RECORDS // 2, within=60)
            gw.kill()  # leases held, requests in flight, nothing recorded of them
            gw.start()
            got = _wait(rx, RECORDS, within=120)
            assert rx.failed > 100  # the integration really was flaky
            assert rx.limited > 0
            _check(got)
        finally:
            gw.stop()


@pytest.fixture
def database() -> Iterator[str]:
    pg.require_server()
    url = pg.create_database_sync()
    yield url
    pg.drop_database_sync(url)


def test_order_per_key_with_two_processes_on_postgresql(tmp_path: Path, database: str) -> None:
    with FlakyIntegration(seed=1818) as rx:
        a = _gateway(tmp_path / "a", rx.url, GATEWAY_STORE=database).start()
        b = _gateway(tmp_path / "b", rx.url, GATEWAY_STORE=database).start()
        key, secret = a.create_key("shop")
        try:
            _send([a, b], key, secret)
            _wait(rx, RECORDS // 2, within=60)
            a.kill()
            a.start()
            got = _wait(rx, RECORDS, within=120)
            assert rx.failed > 100
            _check(got)
            # Both processes delivered: the keys were shared out, not sent by one alone.
            for gw in (a, b):
                assert '"delivery_started"' in gw.output()
        finally:
            a.stop()
            b.stop()
