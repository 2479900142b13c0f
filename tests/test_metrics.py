"""``GET /metrics``: the Prometheus exposition of a running application, read with
prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import STORE, create_app
from gateway.auth.keys import SecretBox, create_key, load_master_key
from gateway.config import load_settings
from gateway.metrics import METRICS
from tests.support.delivery_rig import FAST_RETRY, Rig, http_entry
from tests.support.receiver import Answer, Receiver
from tests.support.signing import sign

JSON = {"Content-Type": "application/json"}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the exposition by (name, labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


class Gateway:
    """A running application with a signing client."""

    def __init__(self, client: TestClient, data_dir: Path) -> None:
        self.client = client
        self.app = client.server.app
        self.metrics = self.app[METRICS]
        self.box = SecretBox(load_master_key(data_dir, None))
        self.key = ""
        self.secret = ""

    async def make_key(self, *groups: str) -> None:
        k = await create_key(self.app[STORE], self.box, list(groups))
        self.key, self.secret = k.access_key_id, k.secret_access_key

    async def post(self, path: str, body: Any, *, signed: bool = True) -> int:
        raw = json.dumps(body).encode()
        headers = dict(JSON)
        if signed:
            url = str(self.client.make_url(path))
            _, headers = sign("POST", url, raw, headers, key=self.key, secret=self.secret)
        r = await self.client.post(path, data=raw, headers=headers)
        await r.read()
        return r.status

    async def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        r = await self.client.get("/metrics")
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        return samples(await r.text())

    async def value(self, name: str, **labels: str) -> float | None:
        return (await self.scrape()).get((name, frozenset(labels.items())))

    async def wait_for(
        self, name: str, check: Callable[[float | None], bool], within: float = 10.0, **labels: str
    ) -> float | None:
        deadline = time.monotonic() + within
        while True:
            v = await self.value(name, **labels)
            if check(v):
                return v
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}{labels} is {v} after {within}s")
            await asyncio.sleep(0.05)


@pytest.fixture
async def receiver():
    r = await Receiver().start()
    yield r
    await r.stop()


@pytest.fixture
def start(aiohttp_client, tmp_path: Path, receiver: Receiver):
    """``await start(options=..., delivery=...)``: a gateway whose group ``shop`` has one http
    integration ``hook`` sending to the receiver, and a key for ``shop``."""

    async def go(options: str = FAST_RETRY, url_suffix: str = "/in", **settings: Any) -> Gateway:
        mappings = tmp_path / "mappings"
        mappings.mkdir()
        url = receiver.url + url_suffix
        Rig.write_mapping(mappings, "shop", [http_entry("hook", url, options)])
        Rig.write_mapping(mappings, "empty", [])
        config = load_settings(
            {
                "data_dir": tmp_path / "data",
                "mappings": mappings,
                "delivery_poll_interval": 0.05,
                **settings,
            },
            environ={},
        )
        gw = Gateway(await aiohttp_client(create_app(config)), tmp_path / "data")
        await gw.make_key("shop", "empty")
        return gw

    return go


def rec(n: int = 1, group: str = "shop") -> dict[str, Any]:
    return {"group_key": group, "data": {"email": f"u{n}@example.com", "n": n}}


async def test_accepted_records_are_counted(start) -> None:
    gw = await start()
    before = await gw.scrape()
    assert before[("gateway_records_accepted_total", frozenset())] == 0
    commits_before = before[("gateway_store_commit_seconds_count", frozenset())]
    assert await gw.post("/v1/records", rec(1)) == 202
    assert await gw.value("gateway_records_accepted_total") == 1
    assert await gw.post("/v1/records/batch", {"records": [rec(2), rec(3)]}) == 200
    after = await gw.scrape()
    assert after[("gateway_records_accepted_total", frozenset())] == 3
    # The store's writer thread timed the ingest transactions.
    assert after[("gateway_store_commit_seconds_count", frozenset())] >= commits_before + 2
    assert after[("gateway_store_commit_seconds_sum", frozenset())] > 0
    assert after[("gateway_store_pending_writes", frozenset())] == 0
    assert after[("gateway_mapping_groups", frozenset())] == 2


async def test_refused_requests_are_counted_by_reason(start) -> None:
    gw = await start()
    assert await gw.post("/v1/records", rec(group="nope")) == 403  # the key may not
    assert await gw.post("/v1/records", rec(group="nope")) == 403
    assert await gw.post("/v1/records", rec(), signed=False) == 401
    r = await gw.client.get("/not-the-api")  # not a producer request: not counted
    assert r.status == 404
    got = await gw.scrape()
    refused = {
        dict(labels)["reason"]: v
        for (name, labels), v in got.items()
        if name == "gateway_requests_refused_total"
    }
    assert refused == {"GROUP_NOT_ALLOWED": 2, "MISSING_AUTHENTICATION_TOKEN": 1}
    assert got[("gateway_records_accepted_total", frozenset())] == 0


async def test_a_delivery_shows_in_outcomes_and_the_attempt_histogram(
    start, receiver: Receiver
) -> None:
    gw = await start()
    lane = {"group": "shop", "integration": "hook"}
    assert await gw.post("/v1/records", rec()) == 202
    await receiver.wait_for(1)
    await gw.wait_for("gateway_deliveries_total", lambda v: v == 1, outcome="delivered", **lane)
    got = await gw.scrape()
    assert got[("gateway_delivery_attempt_seconds_count", frozenset({("type", "http")}))] == 1
    assert got[("gateway_delivery_attempt_seconds_sum", frozenset({("type", "http")}))] > 0
    inf = frozenset({("type", "http"), ("le", "+Inf")})
    assert got[("gateway_delivery_attempt_seconds_bucket", inf)] == 1
    for outcome in ("retry", "dead"):
        assert (
            "gateway_deliveries_total",
            frozenset({**lane, "outcome": outcome}.items()),
        ) not in got
    assert got[("gateway_breaker_state", frozenset(lane.items()))] == 0


async def test_a_permanent_failure_is_counted_and_the_lane_shows_it_dead(
    start, receiver: Receiver
) -> None:
    receiver.answer = lambda r: Answer(400, body=b'{"error":"bad"}')
    gw = await start()
    gw.metrics.lane_stats_interval = 0
    lane = {"group": "shop", "integration": "hook"}
    assert await gw.post("/v1/records", rec()) == 202
    await gw.wait_for("gateway_deliveries_total", lambda v: v == 1, outcome="dead", **lane)
    await gw.wait_for("gateway_lane_dead", lambda v: v == 1, **lane)
    assert await gw.value("gateway_lane_backlog", **lane) == 0


async def test_failing_receiver_opens_the_breaker(start, receiver: Receiver) -> None:
    receiver.answer = lambda r: Answer(500)
    gw = await start(FAST_RETRY + ", breaker: {failures: 2, cooldown: 5s}")
    lane = {"group": "shop", "integration": "hook"}
    assert await gw.post("/v1/records", rec()) == 202
    await gw.wait_for("gateway_breaker_state", lambda v: v == 2, **lane)
    got = await gw.scrape()
    assert got[("gateway_breaker_opened_total", frozenset(lane.items()))] == 1
    retries = got[("gateway_deliveries_total", frozenset({**lane, "outcome": "retry"}.items()))]
    assert retries == 2
    assert len(receiver.requests) == 2  # nothing more while it is open


async def test_backlog_counts_pending_deliveries(start) -> None:
    gw = await start(delivery=False)  # nothing sends: every delivery stays pending
    lane = {"group": "shop", "integration": "hook"}
    assert await gw.value("gateway_lane_backlog", **lane) is None
    for n in range(3):
        assert await gw.post("/v1/records", rec(n)) == 202
    assert await gw.post("/v1/records", rec(9, group="empty")) == 202  # no integration
    # The store is asked at most every lane_stats_interval (5 s): still the old snapshot.
    assert await gw.value("gateway_lane_backlog", **lane) is None
    gw.metrics.lane_stats_interval = 0
    await asyncio.sleep(0.2)
    got = await gw.scrape()
    assert got[("gateway_lane_backlog", frozenset(lane.items()))] == 3
    assert got[("gateway_lane_dead", frozenset(lane.items()))] == 0
    assert 0.2 <= got[("gateway_lane_oldest_pending_seconds", frozenset(lane.items()))] < 30
    assert not any(dict(labels).get("group") == "empty" for _, labels in got)
    assert got[("gateway_records_accepted_total", frozenset())] == 4


def test_each_app_has_its_own_registry(tmp_path: Path) -> None:
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    apps = [
        create_app(load_settings({"data_dir": tmp_path / d, "mappings": mappings}, environ={}))
        for d in ("a", "b")
    ]
    a, b = (app[METRICS] for app in apps)
    assert a.registry is not b.registry
    a.records_committed(5)
    assert b.registry.get_sample_value("gateway_records_accepted_total") == 0
    assert a.registry.get_sample_value("gateway_records_accepted_total") == 5
    assert prometheus_client.REGISTRY.get_sample_value("gateway_records_accepted_total") is None


async def test_a_delivery_that_never_became_a_request_is_counted_dead(
    start, receiver: Receiver
) -> None:
    # The URL needs {n}; a record without `n` cannot become a request.
    gw = await start(url_suffix="/{n}")
    lane = {"group": "shop", "integration": "hook"}
    assert await gw.post("/v1/records", {"group_key": "shop", "data": {"email": "a@x.se"}}) == 202
    await gw.wait_for("gateway_deliveries_total", lambda v: v == 1, outcome="dead", **lane)
    assert receiver.seen == []
