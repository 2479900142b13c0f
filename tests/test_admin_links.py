"""``GET /admin/v1/links``: the token, filters, pages, and a 400 naming every bad parameter.

Links are written the way the engine writes them (a delivered update holding its lease), in
the store of an app with its delivery engine off."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.app import STORE
from gateway.store.base import DeliveryState, DeliveryUpdate, LinkWrite
from tests.test_admin_deliveries import TOKEN, add, make_client

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def client(aiohttp_client, tmp_path: Path):
    c = await make_client(aiohttp_client, tmp_path, [], delivery=False)
    store = c.app[STORE]
    for n, (group, integration) in enumerate(
        [("shop", "lic"), ("shop", "lic"), ("shop", "crm"), ("saas", "lic"), ("saas", "lic")]
    ):
        await add(c, [integration], group=group, n=n)
    claimed = await store.claim_deliveries("t", limit=10, lease_seconds=30, now=9e9)
    await store.update_deliveries(
        [
            DeliveryUpdate(
                x.delivery.id,
                "t",
                DeliveryState.DELIVERED,
                0.0,
                link=LinkWrite(
                    x.delivery.group_key, x.delivery.integration, f"k{n}@example.com", f"id{n}"
                ),
            )
            for n, x in enumerate(claimed)
        ]
    )
    return c


async def _get(client, query: str = "", headers: dict[str, str] | None = None):
    resp = await client.get("/admin/v1/links" + query, headers=AUTH if headers is None else headers)
    return resp.status, await resp.json()


async def test_needs_the_admin_token(client) -> None:
    status, body = await _get(client, headers={})
    assert (status, body["error"]["code"]) == (401, "MISSING_ADMIN_TOKEN")


async def test_lists_everything_in_key_order_a_page_at_a_time(client) -> None:
    seen = []
    cursor = None
    for _ in range(10):
        status, body = await _get(client, "?limit=2" + (f"&cursor={cursor}" if cursor else ""))
        assert status == 200, body
        assert len(body["links"]) <= 2
        seen += body["links"]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    keys = [(x["group_key"], x["integration"], x["link_key"]) for x in seen]
    assert len(keys) == 5
    assert keys == sorted(keys)
    one = seen[0]
    assert set(one) == {
        "group_key", "integration", "link_key", "external_id", "delivery_id", "created_at",
        "updated_at",
    }  # fmt: skip
    assert one["delivery_id"].startswith("dlv_")
    assert one["created_at"].endswith("Z")


async def test_filters(client) -> None:
    status, body = await _get(client, "?group=shop&integration=lic")
    assert status == 200
    assert [(x["group_key"], x["integration"]) for x in body["links"]] == [("shop", "lic")] * 2
    key = body["links"][0]["link_key"]
    status, body = await _get(client, f"?key={key}")
    assert [x["link_key"] for x in body["links"]] == [key]
    status, body = await _get(client, "?group=nobody")
    assert (status, body) == (200, {"links": [], "next_cursor": None})


@pytest.mark.parametrize(
    ("query", "field", "code"),
    [
        ("?limit=0", "limit", "INVALID_PARAMETER"),
        ("?limit=1001", "limit", "INVALID_PARAMETER"),
        ("?limit=x", "limit", "INVALID_PARAMETER"),
        ("?cursor=garbage", "cursor", "INVALID_PARAMETER"),
        ("?group=", "group", "INVALID_PARAMETER"),
        ("?group=a&group=b", "group", "INVALID_PARAMETER"),
        ("?colour=red", "colour", "UNKNOWN_PARAMETER"),
    ],
)
async def test_bad_parameters_are_400_naming_them(client, query, field, code) -> None:
    status, body = await _get(client, query)
    assert status == 400
    assert body["error"]["code"] == code
    assert body["error"]["errors"][0]["field"] == field
