"""Admin API for deliveries and lanes on a real in-process server: listing with filters and
cursors, one delivery with its attempts, replay (by ids, by filter, through the live
mapping), lanes (breaker, backlog, oldest age), pause and resume, auth and bad parameters."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.app import RELOADER, STORE, create_app
from gateway.config import load_settings
from gateway.delivery.engine import ENGINE
from gateway.ids import delivery_id, record_id
from gateway.store.base import (
    DeliveryState,
    DeliveryUpdate,
    IngestWrite,
    NewRecord,
    Store,
)
from tests.support.delivery_rig import FAST_RETRY, Rig, http_entry
from tests.support.receiver import Answer, Receiver

TOKEN = "admin-token-for-delivery-tests"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture
async def receiver():
    r = await Receiver().start()
    yield r
    await r.stop()


async def make_client(
    aiohttp_client, tmp_path: Path, entries: list[str], *, delivery: bool = True, **more: Any
):
    """A gateway with group ``shop`` of ``entries``; the engine polls every 50 ms."""
    mappings = tmp_path / "mappings"
    mappings.mkdir(exist_ok=True)
    Rig.write_mapping(mappings, "shop", entries)
    settings = load_settings(
        {
            "data_dir": tmp_path / "data",
            "mappings": mappings,
            "admin_token": TOKEN,
            "delivery": delivery,
            "delivery_poll_interval": 0.05,
            **more,
        },
        environ={},
    )
    return await aiohttp_client(create_app(settings))


async def add(
    client,
    integrations: list[str],
    *,
    group: str = "shop",
    n: int = 1,
    received_at: float | None = None,
) -> list[str]:
    """Store a record with one delivery per integration straight in the store; wake the
    engine; return the delivery ids."""
    ids = [delivery_id() for _ in integrations]
    rec = NewRecord(
        record_id(),
        group,
        "AKTEST",
        orjson.dumps({"email": f"u{n}@example.com", "n": n}),
        time.time() if received_at is None else received_at,
        list(integrations),
        ids,
    )
    assert (await client.app[STORE].commit_ingest(IngestWrite([rec]))).committed
    client.app[ENGINE].notify()
    return ids


async def wait_state(
    store: Store, ids: list[str], state: DeliveryState, within: float = 10.0
) -> None:
    deadline = time.monotonic() + within
    while True:
        got = [await store.get_delivery(i) for i in ids]
        if all(d is not None and d.state == state for d in got):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not all {state} after {within}s: {got}")
        await asyncio.sleep(0.05)


async def get(client, path: str, **params: Any) -> tuple[int, Any]:
    r = await client.get(path, params=params, headers=ADMIN)
    return r.status, await r.json()


async def post(client, path: str, body: Any = None) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body) if body is not None else b""
    r = await client.post(path, data=data, headers={**ADMIN, "Content-Type": "application/json"})
    return r.status, await r.json()


# -- auth ------------------------------------------------------------------------------------
ENDPOINTS = [
    ("GET", "/admin/v1/deliveries"),
    ("GET", "/admin/v1/deliveries/dlv_x"),
    ("POST", "/admin/v1/deliveries/replay"),
    ("GET", "/admin/v1/lanes"),
    ("POST", "/admin/v1/lanes/shop/hook/pause"),
    ("POST", "/admin/v1/lanes/shop/hook/resume"),
]


async def test_every_endpoint_needs_the_admin_token(aiohttp_client, tmp_path: Path) -> None:
    client = await make_client(aiohttp_client, tmp_path, [http_entry("hook", "http://x")])
    for method, path in ENDPOINTS:
        for headers, code in [
            ({}, "MISSING_ADMIN_TOKEN"),
            ({"Authorization": "Bearer wrong"}, "INVALID_ADMIN_TOKEN"),
            ({"Authorization": f"Basic {TOKEN}"}, "MISSING_ADMIN_TOKEN"),
        ]:
            r = await client.request(method, path, headers=headers, data=b'{"ids": ["x"]}')
            assert r.status == 401, (method, path, headers)
            err = (await r.json())["error"]
            assert err["type"] == "authentication_error"
            assert err["code"] == code, (method, path)
    # Nothing was paused by the refused calls.
    assert await client.app[STORE].paused_lanes() == set()


async def test_every_endpoint_is_off_without_a_token(aiohttp_client, tmp_path: Path) -> None:
    client = await make_client(aiohttp_client, tmp_path, [], admin_token=None)
    for method, path in ENDPOINTS:
        r = await client.request(method, path, headers=ADMIN)
        assert r.status == 403, (method, path)
        err = (await r.json())["error"]
        assert (err["type"], err["code"]) == ("authorization_error", "ADMIN_API_DISABLED")


# -- listing ---------------------------------------------------------------------------------
async def _fill(client) -> list[dict[str, Any]]:
    """30 records over two groups and two integrations, a minute apart, every fourth
    delivery dead; the engine is off. Returns what each delivery is, in id order."""
    store: Store = client.app[STORE]
    made = []
    for i in range(30):
        group = "g1" if i % 3 else "g2"
        at = T0 + 60 * i
        for did, integ in zip(
            await add(client, ["crm", "mail"], group=group, received_at=at, n=i),
            ["crm", "mail"],
            strict=True,
        ):
            made.append({"id": did, "group": group, "integration": integ, "at": at})
    dead = [m["id"] for m in made[::4]]
    claimed = await store.claim_deliveries("t", limit=1000, lease_seconds=60, now=time.time())
    assert len(claimed) == len(made)
    updates = [
        DeliveryUpdate(
            c.delivery.id,
            "t",
            DeliveryState.DEAD if c.delivery.id in dead else DeliveryState.PENDING,
            c.delivery.next_attempt_at,
            "HTTP 400: no" if c.delivery.id in dead else None,
            400 if c.delivery.id in dead else None,
        )
        for c in claimed
    ]
    assert await store.update_deliveries(updates) == len(made)
    for m in made:
        m["state"] = "dead" if m["id"] in dead else "pending"
    return sorted(made, key=lambda m: m["id"])


async def walk(client, limit: int, **params: Any) -> list[dict[str, Any]]:
    """Every page of a listing; checks each page's size and that pages end."""
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(1000):
        q = {**params, "limit": str(limit)}
        if cursor is not None:
            q["cursor"] = cursor
        status, body = await get(client, "/admin/v1/deliveries", **q)
        assert status == 200, body
        assert len(body["deliveries"]) <= limit
        items += body["deliveries"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items
        assert body["deliveries"], "a page with a next cursor must not be empty"
    raise AssertionError("pagination did not end")


async def test_list_filters_and_pages_skip_and_repeat_nothing(
    aiohttp_client, tmp_path: Path
) -> None:
    client = await make_client(aiohttp_client, tmp_path, [], delivery=False)
    made = await _fill(client)
    cases: list[tuple[dict[str, str], Any]] = [
        ({}, lambda m: True),
        ({"state": "dead"}, lambda m: m["state"] == "dead"),
        ({"state": "pending"}, lambda m: m["state"] == "pending"),
        ({"state": "delivered"}, lambda m: False),
        ({"group": "g2"}, lambda m: m["group"] == "g2"),
        ({"integration": "mail"}, lambda m: m["integration"] == "mail"),
        (
            {"group": "g1", "integration": "crm", "state": "dead"},
            lambda m: (m["group"], m["integration"], m["state"]) == ("g1", "crm", "dead"),
        ),
        (
            {"created_after": iso(T0 + 300), "created_before": iso(T0 + 900)},
            lambda m: T0 + 300 < m["at"] < T0 + 900,
        ),
        ({"created_after": "2023-11-14T23:13:20+01:00"}, lambda m: m["at"] > T0),
    ]
    for params, keep in cases:
        want = [m["id"] for m in made if keep(m)]
        for limit in (1, 7, 1000):
            got = await walk(client, limit, **params)
            ids = [d["id"] for d in got]
            assert ids == want, (params, limit)  # in order, none twice, none skipped
    # The item shape: the producer API's delivery view plus group and record, times ISO.
    [first] = (await get(client, "/admin/v1/deliveries", limit="1"))[1]["deliveries"]
    assert first["id"] == made[0]["id"]
    m = made[0]
    assert (first["group_key"], first["integration"]) == (m["group"], m["integration"])
    assert first["record_id"].startswith("rec_")
    assert first["state"] == m["state"]
    assert first["created_at"] == iso(m["at"]).replace("Z", ".000Z")
    dead = next(d for d in await walk(client, 1000, state="dead"))
    assert (dead["last_error"], dead["last_status"]) == ("HTTP 400: no", 400)
    assert dead["next_attempt_at"] is None
    pending = next(d for d in await walk(client, 1000, state="pending"))
    assert pending["next_attempt_at"].endswith("Z")
    # Without a limit a page holds 100.
    status, body = await get(client, "/admin/v1/deliveries")
    assert (status, len(body["deliveries"])) == (200, 60)
    assert body["next_cursor"] is None


async def test_list_bad_parameters_are_400_naming_them(aiohttp_client, tmp_path: Path) -> None:
    client = await make_client(aiohttp_client, tmp_path, [], delivery=False)
    for query, field in [
        ("state=bogus", "state"),
        ("state=", "state"),
        ("group=", "group"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("limit=-5", "limit"),
        ("created_after=yesterday", "created_after"),
        ("created_before=1700000000", "created_before"),
        ("created_after=2024-01-02&created_before=2024-01-01", "created_before"),
        ("cursor=%21%21%21", "cursor"),
        ("cursor=", "cursor"),
        ("status=dead", "status"),
        ("state=dead&state=pending", "state"),
    ]:
        r = await client.get("/admin/v1/deliveries?" + query, headers=ADMIN)
        assert r.status == 400, query
        err = (await r.json())["error"]
        assert err["type"] == "invalid_request", query
        assert err["message"].startswith(field + ":"), (query, err)
        assert err["errors"][0]["field"] == field, query


# -- one delivery ----------------------------------------------------------------------------
async def test_one_delivery_with_its_attempts_and_404(
    aiohttp_client, tmp_path: Path, receiver: Receiver
) -> None:
    answers = iter([Answer(503), Answer(200)])
    receiver.answer = lambda r: next(answers, Answer(200))
    client = await make_client(aiohttp_client, tmp_path, [http_entry("hook", receiver.url)])
    [did] = await add(client, ["hook"])
    await wait_state(client.app[STORE], [did], DeliveryState.DELIVERED)
    status, body = await get(client, f"/admin/v1/deliveries/{did}")
    assert status == 200
    assert body["id"] == did
    assert (body["group_key"], body["integration"], body["state"]) == ("shop", "hook", "delivered")
    assert body["attempts"] == 2
    assert body["delivered_at"].endswith("Z")
    assert body["lease_owner"] is None
    history = body["attempt_history"]
    assert [a["status"] for a in history] == [503, 200]
    assert history[0]["error"].startswith("HTTP 503")
    assert history[1]["error"] is None
    assert all(a["started_at"].endswith("Z") and a["duration_ms"] >= 0 for a in history)
    assert len({a["mapping_version"] for a in history}) == 1
    assert history[0]["mapping_version"]
    status, body = await get(client, "/admin/v1/deliveries/dlv_unknown")
    assert status == 404
    assert (body["error"]["type"], body["error"]["code"]) == ("not_found", "DELIVERY_NOT_FOUND")


# -- replay ----------------------------------------------------------------------------------
async def test_replay_by_ids_sends_dead_deliveries_again(
    aiohttp_client, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.answer = lambda r: Answer(400, body=b'{"error":"bad"}')
    # The engine looks for due deliveries only when woken: the replay must wake it.
    client = await make_client(
        aiohttp_client,
        tmp_path,
        [http_entry("hook", receiver.url)],
        delivery_poll_interval=60,
    )
    store: Store = client.app[STORE]
    ids = [(await add(client, ["hook"], n=i))[0] for i in range(3)]
    await wait_state(store, ids, DeliveryState.DEAD)
    await receiver.wait_for(3)
    receiver.answer = lambda r: Answer(200)
    status, body = await post(
        client, "/admin/v1/deliveries/replay", {"ids": [ids[0], ids[2], "dlv_unknown"]}
    )
    assert status == 200, body
    assert body == {"replayed": 2, "ids": sorted([ids[0], ids[2]])}
    await wait_state(store, [ids[0], ids[2]], DeliveryState.DELIVERED)
    await receiver.wait_for(5)
    assert [r.headers["Idempotency-Key"] for r in receiver.requests[3:]] in (
        [ids[0], ids[2]],
        [ids[2], ids[0]],
    )
    middle = await store.get_delivery(ids[1])
    assert middle is not None
    assert middle.state == DeliveryState.DEAD
    # The replayed one keeps its history: the 400, then the 200.
    _, detail = await get(client, f"/admin/v1/deliveries/{ids[0]}")
    assert [a["status"] for a in detail["attempt_history"]] == [400, 200]
    # Replaying a delivered one by id sends it again (explicit ids mean it).
    status, body = await post(client, "/admin/v1/deliveries/replay", {"ids": [ids[0]]})
    assert (status, body["replayed"]) == (200, 1)
    await receiver.wait_for(6)


async def test_replay_by_filter_goes_through_the_live_mapping(
    aiohttp_client, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.answer = lambda r: Answer(400)
    entries = [http_entry("hook", receiver.url + "/hook"), http_entry("other", receiver.url)]
    client = await make_client(aiohttp_client, tmp_path, entries)
    store: Store = client.app[STORE]
    ids = [await add(client, ["hook", "other"], n=i) for i in range(4)]
    # Sorted: listing and replay go in id order (ids made in one millisecond need not sort
    # in the order they were made).
    hook, other = sorted(i[0] for i in ids), sorted(i[1] for i in ids)
    await wait_state(store, hook + other, DeliveryState.DEAD)
    # Fix the mapping: hook now sends to /fixed with a constant field.
    fixed = http_entry("hook", receiver.url + "/fixed").replace(
        "n: n", "n: n\n    source: {value: replayed}"
    )
    Rig.write_mapping(tmp_path / "mappings", "shop", [fixed, entries[1]])
    result = await client.app[RELOADER].reload("test")
    assert result.loaded == ["shop"], result.to_dict()
    receiver.answer = lambda r: Answer(200)
    seen = len(receiver.requests)
    status, body = await post(
        client,
        "/admin/v1/deliveries/replay",
        {"filter": {"state": "dead", "group": "shop", "integration": "hook"}, "limit": 3},
    )
    assert status == 200, body
    assert body == {"replayed": 3, "ids": hook[:3]}
    await wait_state(store, hook[:3], DeliveryState.DELIVERED)
    got = (await receiver.wait_for(seen + 3))[seen:]
    assert {r.path for r in got} == {"/fixed"}
    assert {r.json()["source"] for r in got} == {"replayed"}
    for did in other + hook[3:]:
        d = await store.get_delivery(did)
        assert d is not None
        assert d.state == DeliveryState.DEAD
    # The rest of the dead ones, by a filter on state alone.
    status, body = await post(client, "/admin/v1/deliveries/replay", {"filter": {}})
    assert status == 200
    assert sorted(body["ids"]) == sorted(other + hook[3:])
    await wait_state(store, other + hook[3:], DeliveryState.DELIVERED)
    # Nothing dead is left to replay.
    status, body = await post(client, "/admin/v1/deliveries/replay", {"filter": {}})
    assert (status, body) == (200, {"replayed": 0, "ids": []})


async def test_replay_bad_bodies_are_400(aiohttp_client, tmp_path: Path) -> None:
    client = await make_client(aiohttp_client, tmp_path, [], delivery=False)
    for body, code, field in [
        (b"", "MALFORMED_JSON", None),
        (b"{nope", "MALFORMED_JSON", None),
        ([], "INVALID_REQUEST", None),
        ({}, "INVALID_REQUEST", None),
        ({"limit": 5}, "INVALID_REQUEST", None),
        ({"ids": ["dlv_a"], "filter": {}}, "INVALID_REQUEST", None),
        ({"ids": []}, "INVALID_REQUEST", "ids"),
        ({"ids": "dlv_a"}, "INVALID_REQUEST", "ids"),
        ({"ids": [1, 2]}, "INVALID_REQUEST", "ids"),
        ({"ids": ["dlv_a"], "limit": 0}, "INVALID_REQUEST", "limit"),
        ({"filter": {}, "limit": 10001}, "INVALID_REQUEST", "limit"),
        ({"filter": {}, "limit": "many"}, "INVALID_REQUEST", "limit"),
        ({"filter": []}, "INVALID_REQUEST", "filter"),
        ({"filter": {"state": "pending"}}, "INVALID_REQUEST", "filter.state"),
        ({"filter": {"groups": "g"}}, "INVALID_REQUEST", "filter.groups"),
        ({"filter": {"created_after": "last week"}}, "INVALID_REQUEST", "filter.created_after"),
        ({"filter": {}, "dry_run": True}, "INVALID_REQUEST", "dry_run"),
    ]:
        status, answer = await post(client, "/admin/v1/deliveries/replay", body)
        assert status == 400, body
        err = answer["error"]
        assert (err["type"], err["code"]) == ("invalid_request", code), (body, err)
        if field is not None:
            assert err["errors"][0]["field"] == field, (body, err)


# -- lanes -----------------------------------------------------------------------------------
def lane_of(body: dict[str, Any], group: str, integration: str) -> dict[str, Any]:
    [lane] = [
        x for x in body["lanes"] if (x["group_key"], x["integration"]) == (group, integration)
    ]
    return lane


async def test_pause_holds_deliveries_and_resume_sends_them(
    aiohttp_client, tmp_path: Path, receiver: Receiver
) -> None:
    entries = [http_entry("hook", receiver.url + "/hook"), http_entry("other", receiver.url)]
    client = await make_client(aiohttp_client, tmp_path, entries)
    store: Store = client.app[STORE]
    status, lane = await post(client, "/admin/v1/lanes/shop/hook/pause")
    assert status == 200, lane
    assert (lane["group_key"], lane["integration"], lane["paused"]) == ("shop", "hook", True)
    ids = [await add(client, ["hook", "other"], n=i) for i in range(3)]
    hook, other = [i[0] for i in ids], [i[1] for i in ids]
    # The other lane flows; the paused one sends nothing.
    await wait_state(store, other, DeliveryState.DELIVERED)
    await asyncio.sleep(1.0)
    assert [r.path for r in receiver.seen] == ["/"] * 3
    for did in hook:
        d = await store.get_delivery(did)
        assert d is not None
        assert (d.state, d.attempts) == (DeliveryState.PENDING, 0)
    status, body = await get(client, "/admin/v1/lanes")
    assert status == 200
    paused = lane_of(body, "shop", "hook")
    assert paused["paused"] is True
    assert paused["backlog"]["pending"] == 3
    assert paused["backlog"]["oldest_pending_age"] >= 1.0
    assert paused["since_start"]["delivered"] == 0
    assert lane_of(body, "shop", "other")["paused"] is False
    assert lane_of(body, "shop", "other")["since_start"]["delivered"] == 3
    # Pausing again changes nothing; resuming sends the held ones.
    status, lane = await post(client, "/admin/v1/lanes/shop/hook/pause")
    assert (status, lane["paused"]) == (200, True)
    status, lane = await post(client, "/admin/v1/lanes/shop/hook/resume")
    assert (status, lane["paused"]) == (200, False)
    await wait_state(store, hook, DeliveryState.DELIVERED, within=5.0)
    assert sorted(r.headers["Idempotency-Key"] for r in receiver.seen if r.path == "/hook") == (
        sorted(hook)
    )
    assert await store.paused_lanes() == set()
    status, body = await get(client, "/admin/v1/lanes")
    lane = lane_of(body, "shop", "hook")
    assert lane["backlog"]["pending"] == 0
    assert lane["backlog"]["oldest_pending_age"] is None


async def test_pause_of_a_lane_not_in_the_live_mapping_is_404(
    aiohttp_client, tmp_path: Path
) -> None:
    client = await make_client(aiohttp_client, tmp_path, [http_entry("hook", "http://x")])
    for path, says in [
        ("/admin/v1/lanes/shop/nope/pause", "has no integration 'nope'; it has: hook"),
        ("/admin/v1/lanes/shop/nope/resume", "has no integration 'nope'"),
        ("/admin/v1/lanes/elsewhere/hook/pause", "group 'elsewhere' has no live mapping"),
    ]:
        status, body = await post(client, path)
        assert status == 404, path
        assert (body["error"]["type"], body["error"]["code"]) == ("not_found", "UNKNOWN_LANE")
        assert says in body["error"]["message"]
    assert await client.app[STORE].paused_lanes() == set()
    assert client.app[ENGINE].lanes == {}


async def test_lanes_show_breaker_backlog_age_and_every_source(
    aiohttp_client, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.answer = lambda r: Answer(503, body=b"down")
    breaking = http_entry(
        "hook", receiver.url, options=FAST_RETRY + ", breaker: {failures: 2, cooldown: 60s}"
    )
    client = await make_client(
        aiohttp_client, tmp_path, [breaking, http_entry("quiet", "http://127.0.0.1:9")]
    )
    ids = [(await add(client, ["hook"], n=i))[0] for i in range(3)]
    # A lane only the store knows: deliveries of an integration the mapping no longer has.
    [gone] = await add(client, ["retired"], group="oldgroup")
    deadline = time.monotonic() + 10
    while True:
        status, body = await get(client, "/admin/v1/lanes")
        assert status == 200
        hook = lane_of(body, "shop", "hook")
        # The breaker opens when the second failure is judged, a moment before that attempt's
        # outcome is counted: wait for both.
        if hook["breaker"] == "open" and hook["since_start"]["retried"] >= 2:
            break
        assert time.monotonic() < deadline, hook
        await asyncio.sleep(0.05)
    assert hook["type"] == "http"
    assert (hook["in_mapping"], hook["enabled"], hook["paused"]) == (True, True, False)
    assert 0 < hook["breaker_retry_in"] <= 60
    assert hook["backlog"]["pending"] == 3
    assert hook["backlog"]["dead"] == 0
    assert 0 <= hook["backlog"]["oldest_pending_age"] < 60  # this test's own records
    created = datetime.fromisoformat(hook["backlog"]["oldest_pending_at"])
    assert abs(created.timestamp() + hook["backlog"]["oldest_pending_age"] - time.time()) < 2
    assert hook["since_start"]["requests"] >= 2
    assert hook["since_start"]["retried"] >= 2
    assert hook["last_error"].startswith("HTTP 503")
    assert hook["last_error_at"].endswith("Z")
    assert hook["last_success_at"] is None
    quiet = lane_of(body, "shop", "quiet")  # declared, never used
    assert (quiet["breaker"], quiet["paused"], quiet["queued"]) == ("closed", False, 0)
    assert quiet["backlog"] == {
        "pending": 0,
        "due": 0,
        "dead": 0,
        "oldest_pending_at": None,
        "oldest_pending_age": None,
    }
    retired = lane_of(body, "oldgroup", "retired")  # store (and engine) only
    assert (retired["in_mapping"], retired["enabled"]) == (False, None)
    assert retired["backlog"]["pending"] + retired["backlog"]["dead"] == 1
    await wait_state(client.app[STORE], [gone], DeliveryState.DEAD)
    status, body = await get(client, "/admin/v1/lanes")
    assert lane_of(body, "oldgroup", "retired")["backlog"]["dead"] == 1
    assert body["delivery_engine"] is True
    assert len({(x["group_key"], x["integration"]) for x in body["lanes"]}) == len(body["lanes"])
    assert ids
