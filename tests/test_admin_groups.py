"""The management API (issue 14) on a real in-process server: groups, integrations, versions,
rollback, audit and keys; If-Match (412/428), 422 with key paths (file unchanged), 404, 409;
hand edits seen as versions; comments kept; every error in the envelope. Every answer is
checked against the admin OpenAPI document with openapi-core."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from openapi_spec_validator import validate

from gateway.admin.api import create_admin_app
from gateway.admin.openapi import admin_openapi_document
from gateway.app import STORE, create_app
from gateway.config import load_settings
from gateway.ids import delivery_id, record_id
from gateway.store.base import IngestWrite, NewRecord

SPEC = OpenAPI.from_path(Path(__file__).parents[1] / "gateway" / "admin" / "openapi.json")
TOKEN = "admin-token-for-management-tests"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}

SHOP = """\
# Web shop sign-ups: kept by hand and by the API
group_key: shop
description: Shop
integrations:
  - name: local  # the NDJSON file
    type: file
    connection:
      path: {out}
    fields:
      email: epost  # the producer's name
"""


@pytest.fixture
async def client(aiohttp_client, tmp_path: Path, store_url: str):
    """A gateway on each store backend (SQLite, PostgreSQL): the history lives in the store."""
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    (mappings / "shop.yaml").write_text(SHOP.format(out=tmp_path / "out.ndjson"))
    settings = load_settings(
        {
            "data_dir": tmp_path / "data",
            "store": store_url,
            "mappings": mappings,
            "admin_token": TOKEN,
            "delivery": False,
        },
        environ={},
    )
    c = await aiohttp_client(create_app(settings))
    c.mappings = mappings
    c.tmp = tmp_path
    return c


async def call(client, method: str, path: str, body: Any = None, **headers: str):
    """One admin request; its answer is validated against the OpenAPI document."""
    r = await client.request(method, "/admin/v1" + path, json=body, headers={**ADMIN, **headers})
    raw = await r.read()
    data = json.loads(raw) if r.content_type == "application/json" else None
    url = urlsplit("/admin/v1" + path)
    SPEC.validate_response(
        MockRequest(
            "http://localhost",
            method.lower(),
            url.path,
            args=dict(p.split("=", 1) for p in url.query.split("&") if "=" in p),
            headers={**ADMIN, **headers},
            data=json.dumps(body).encode() if body is not None else None,
        ),
        MockResponse(
            raw, status_code=r.status, headers=dict(r.headers), content_type=r.content_type
        ),
    )
    return r, data


def envelope(data: Any, code: str) -> dict[str, Any]:
    assert set(data) == {"error"}, data
    assert data["error"]["code"] == code, data
    assert isinstance(data["error"]["message"], str)
    return data["error"]


def entry(name: str, out: Path, **more: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "file",
        "connection": {"path": str(out)},
        "fields": {"email": "epost"},
        **more,
    }


async def test_get_group_with_version_etag_and_content(client):
    r, g = await call(client, "GET", "/groups/shop")
    assert r.status == 200
    assert r.headers["ETag"] == f'"{g["version"]}"'
    assert g["content"]["integrations"][0]["name"] == "local"
    assert g["live_version"] == g["version"]
    assert g["problems"] == []
    r, page = await call(client, "GET", "/groups")
    assert [x["group_key"] for x in page["groups"]] == ["shop"]
    assert page["next_cursor"] is None


async def test_put_needs_if_match_and_refuses_stale(client):
    _, g = await call(client, "GET", "/groups/shop")
    new = {**g["content"], "description": "Changed"}
    r, data = await call(client, "PUT", "/groups/shop", new)
    assert r.status == 428
    envelope(data, "PRECONDITION_REQUIRED")
    r, data = await call(client, "PUT", "/groups/shop", new, **{"If-Match": '"0000"'})
    assert r.status == 412
    assert envelope(data, "VERSION_MISMATCH")["current_version"] == g["version"]
    r, data = await call(
        client,
        "PUT",
        "/groups/shop",
        new,
        **{"If-Match": r.headers.get("ETag") or f'"{g["version"]}"'},
    )
    assert r.status == 200, data
    assert data["content"]["description"] == "Changed"
    assert data["live_version"] == data["version"] != g["version"]
    text = (client.mappings / "shop.yaml").read_text()
    # Comments of the parts not changed are kept.
    assert "# Web shop sign-ups" in text
    assert "# the NDJSON file" in text
    assert "# the producer's name" in text
    # The old ETag is stale now.
    r, data = await call(client, "PUT", "/groups/shop", new, **{"If-Match": f'"{g["version"]}"'})
    assert r.status == 412


async def test_invalid_put_is_422_with_paths_and_file_unchanged(client):
    before = (client.mappings / "shop.yaml").read_bytes()
    _, g = await call(client, "GET", "/groups/shop")
    bad = {
        **g["content"],
        "integrations": [
            {"name": "local", "type": "nosuchtype"},
            {
                "name": "x",
                "type": "file",
                "connection": {"path": "/tmp/x"},
                "fields": {"nope": {"transform": ["nosuch"]}},
            },
        ],
    }
    r, data = await call(client, "PUT", "/groups/shop", bad, **{"If-Match": g["version"]})
    assert r.status == 422
    err = envelope(data, "INVALID_MAPPING")
    fields = {e["field"] for e in err["errors"]}
    assert any(f.startswith("integrations[0]") for f in fields), fields
    assert any(f.startswith("integrations[1]") for f in fields), fields
    assert (client.mappings / "shop.yaml").read_bytes() == before


async def test_literal_secret_refused(client):
    _, g = await call(client, "GET", "/groups/shop")
    body = {
        "group_key": "shop",
        "integrations": [
            {
                "name": "hook",
                "type": "http",
                "connection": {
                    "url": "http://127.0.0.1:9/x",
                    "auth": {"type": "bearer", "token": "literal-secret"},
                },
                "fields": {"email": "epost"},
            }
        ],
    }
    r, data = await call(client, "PUT", "/groups/shop", body, **{"If-Match": g["version"]})
    assert r.status == 422, data
    assert "literal-secret" not in str(data)


async def test_create_clone_versions_rollback_and_audit(client):
    out = client.tmp / "new.ndjson"
    r, g = await call(
        client,
        "POST",
        "/groups",
        {"group_key": "shop-se", "integrations": [entry("a", out)], "create_key": True},
    )
    assert r.status == 201, g
    assert g["access_key"]["secret_access_key"]
    assert (client.mappings / "shop-se.yaml").exists()
    r, data = await call(client, "POST", "/groups", {"group_key": "shop-se"})
    assert r.status == 409
    envelope(data, "GROUP_EXISTS")
    # generated key
    r, gen = await call(client, "POST", "/groups", {"integrations": []})
    assert r.status == 201
    assert gen["group_key"]
    # clone
    r, c = await call(client, "POST", "/groups/shop/clone", {"group_key": "shop-no"})
    assert r.status == 201, c
    assert c["content"]["integrations"][0]["name"] == "local"
    assert "# the NDJSON file" in (client.mappings / "shop-no.yaml").read_text()
    # versions, then rollback
    v1 = g["version"]
    r, g2 = await call(
        client, "PATCH", "/groups/shop-se/integrations/a", {"enabled": False}, **{"If-Match": v1}
    )
    assert r.status == 200, g2
    assert g2["integration"]["enabled"] is False
    r, vs = await call(client, "GET", "/groups/shop-se/versions")
    assert [v["action"] for v in vs["versions"]] == ["create", "integration.update"]
    r, one = await call(client, "GET", "/groups/shop-se/versions/1")
    assert one["version"] == v1
    assert "group_key: shop-se" in one["text"]
    r, rb = await call(
        client, "POST", "/groups/shop-se/rollback", {"version": 1}, **{"If-Match": g2["version"]}
    )
    assert r.status == 200, rb
    assert rb["version"] == v1
    r, vs = await call(client, "GET", "/groups/shop-se/versions")
    assert [v["number"] for v in vs["versions"]] == [1, 2, 3]
    r, data = await call(client, "GET", "/groups/shop-se/versions/99")
    assert r.status == 404
    r, data = await call(
        client, "POST", "/groups/shop-se/rollback", {"version": 2**70}, **{"If-Match": v1}
    )
    assert r.status == 422
    envelope(data, "INVALID_REQUEST")
    r, au = await call(client, "GET", "/audit")
    actions = [e["action"] for e in au["entries"]]
    assert "group.create" in actions
    assert "key.create" in actions
    assert "group.rollback" in actions
    assert all(e["actor"] == "admin" for e in au["entries"])


async def test_integrations_crud(client):
    _, g = await call(client, "GET", "/groups/shop")
    out = client.tmp / "b.ndjson"
    r, data = await call(
        client, "POST", "/groups/shop/integrations", entry("b", out), **{"If-Match": g["version"]}
    )
    assert r.status == 201, data
    v = data["version"]
    r, data = await call(
        client, "POST", "/groups/shop/integrations", entry("b", out), **{"If-Match": v}
    )
    assert r.status == 409
    r, data = await call(client, "GET", "/groups/shop/integrations")
    assert [e["name"] for e in data["integrations"]] == ["local", "b"]
    r, data = await call(
        client,
        "PUT",
        "/groups/shop/integrations/b",
        entry("b", out, options={"batch_size": 5}),
        **{"If-Match": v},
    )
    assert r.status == 200, data
    v = data["version"]
    r, data = await call(client, "GET", "/groups/shop/integrations/b")
    assert data["integration"]["options"] == {"batch_size": 5}
    r, data = await call(client, "DELETE", "/groups/shop/integrations/b", **{"If-Match": v})
    assert r.status == 204
    r, data = await call(client, "GET", "/groups/shop/integrations/b")
    assert r.status == 404
    envelope(data, "UNKNOWN_INTEGRATION")
    assert "# the NDJSON file" in (client.mappings / "shop.yaml").read_text()


async def test_hand_edit_is_a_new_version_and_api_sees_it(client):
    _, g = await call(client, "GET", "/groups/shop")
    path = client.mappings / "shop.yaml"
    path.write_text(path.read_text().replace("description: Shop", "description: By hand"))
    r, g2 = await call(client, "GET", "/groups/shop")
    assert g2["content"]["description"] == "By hand"
    assert g2["version"] != g["version"]
    # A write based on the version before the hand edit is refused: no lost change.
    r, _data = await call(client, "PUT", "/groups/shop", g["content"], **{"If-Match": g["version"]})
    assert r.status == 412
    _, vs = await call(client, "GET", "/groups/shop/versions")
    assert [v["actor"] for v in vs["versions"]][-1] == "file"
    assert vs["versions"][-1]["version"] == g2["version"]


async def test_concurrent_writers_one_wins(client):
    _, g = await call(client, "GET", "/groups/shop")
    bodies = [{**g["content"], "description": f"writer {i}"} for i in range(5)]
    results = await asyncio.gather(
        *(call(client, "PUT", "/groups/shop", b, **{"If-Match": g["version"]}) for b in bodies)
    )
    statuses = sorted(r.status for r, _ in results)
    assert statuses == [200, 412, 412, 412, 412]


async def test_keys_list_create_rotate_revoke(client):
    r, data = await call(client, "POST", "/keys", {"groups": ["nope"]})
    assert r.status == 422
    envelope(data, "UNKNOWN_GROUP")
    r, k = await call(client, "POST", "/keys", {"groups": ["shop"], "name": "shop key"})
    assert r.status == 201
    secret = k["secret_access_key"]
    r, data = await call(client, "GET", "/keys")
    assert secret not in str(data)
    assert [x["state"] for x in data["keys"]] == ["active"]
    r, rot = await call(
        client,
        "POST",
        f"/keys/{k['access_key_id']}/rotate",
        {"old_key_valid_until": "2999-01-01T00:00:00Z"},
    )
    assert r.status == 422
    r, rot = await call(client, "POST", f"/keys/{k['access_key_id']}/rotate", {})
    assert r.status == 201, rot
    assert rot["groups"] == ["shop"]
    assert rot["access_key_id"] != k["access_key_id"]
    _, data = await call(client, "GET", "/keys")
    states = {x["access_key_id"]: x["state"] for x in data["keys"]}
    assert states == {k["access_key_id"]: "expiring", rot["access_key_id"]: "active"}
    r, _ = await call(client, "DELETE", f"/keys/{k['access_key_id']}")
    assert r.status == 204
    _, data = await call(client, "GET", "/keys")
    states = {x["access_key_id"]: x["state"] for x in data["keys"]}
    assert states[k["access_key_id"]] == "revoked"
    r, data = await call(client, "DELETE", "/keys/AKGWNOSUCHKEY")
    assert r.status == 404
    envelope(data, "UNKNOWN_ACCESS_KEY")


async def test_delete_group_and_unknowns(client):
    r, data = await call(client, "GET", "/groups/nope")
    assert r.status == 404
    envelope(data, "UNKNOWN_GROUP")
    r, data = await call(client, "GET", "/groups/..%2f..%2fetc")
    assert r.status == 404
    _, g = await call(client, "GET", "/groups/shop")
    r, data = await call(client, "DELETE", "/groups/shop")
    assert r.status == 428
    r, data = await call(
        client, "DELETE", "/groups/shop?pending=maybe", **{"If-Match": g["version"]}
    )
    assert r.status == 400
    r, data = await call(client, "DELETE", "/groups/shop", **{"If-Match": g["version"]})
    assert r.status == 204
    assert not (client.mappings / "shop.yaml").exists()
    r, data = await call(client, "GET", "/groups/shop")
    assert r.status == 404


async def test_bad_bodies(client):
    r = await client.post(
        "/admin/v1/groups", data=b"{nope", headers={**ADMIN, "Content-Type": "application/json"}
    )
    assert r.status == 400
    envelope(await r.json(), "MALFORMED_JSON")
    r = await client.post(
        "/admin/v1/groups", data=b"x", headers={**ADMIN, "Content-Type": "text/plain"}
    )
    assert r.status == 415
    r, data = await call(client, "POST", "/groups", [1, 2])
    assert r.status == 422
    r = await client.get("/admin/v1/groups/shop")
    assert r.status == 401
    r, data = await call(client, "GET", "/openapi.json")
    assert data["openapi"].startswith("3.1")


def test_admin_openapi_document_is_valid_and_covers_every_route(tmp_path: Path) -> None:
    doc = json.loads(admin_openapi_document())
    validate(doc)
    documented = {
        (m.upper(), p) for p, item in doc["paths"].items() for m in item if m != "parameters"
    }
    app = create_admin_app("x")
    routed = {
        (r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }

    # Path parameter names may differ; compare the shapes.
    def shape(p: str) -> str:
        return re.sub(r"\{[^}]+\}", "{}", p)

    assert {(m, shape(p)) for m, p in routed} == {(m, shape(p)) for m, p in documented}


async def test_every_hand_edit_picked_up_by_a_reload_is_a_version(client):
    path = client.mappings / "shop.yaml"
    _, _g = await call(client, "GET", "/groups/shop")  # version 1: the file as found
    path.write_text(path.read_text().replace("description: Shop", "description: Edit one"))
    r, _ = await call(client, "POST", "/reload")
    assert r.status == 200
    path.write_text(path.read_text().replace("description: Edit one", "description: Edit 2"))
    r, _ = await call(client, "POST", "/reload")
    _, vs = await call(client, "GET", "/groups/shop/versions")
    assert [(v["actor"], v["action"]) for v in vs["versions"]] == [("file", "file")] * 3
    texts = []
    for v in vs["versions"]:
        _, one = await call(client, "GET", f"/groups/shop/versions/{v['number']}")
        texts.append(one["content"]["description"])
    assert texts == ["Shop", "Edit one", "Edit 2"]
    _, au = await call(client, "GET", "/audit")
    assert [e["actor"] for e in au["entries"] if e["action"] == "group.file"] == ["file"] * 3


async def _pending(client, group: str, integration: str) -> None:
    rec = NewRecord(
        record_id(),
        group,
        "AKTEST",
        orjson.dumps({"epost": "p@example.com"}),
        time.time(),
        [integration],
        [delivery_id()],
    )
    assert (await client.app[STORE].commit_ingest(IngestWrite([rec]))).committed


async def test_delete_with_pending_deliveries_needs_a_decision(client):
    await _pending(client, "shop", "local")
    _, g = await call(client, "GET", "/groups/shop")
    r, data = await call(client, "DELETE", "/groups/shop", **{"If-Match": g["version"]})
    assert r.status == 409
    assert envelope(data, "PENDING_DELIVERIES")["pending"] == 1
    assert (client.mappings / "shop.yaml").exists()
    r, _ = await call(client, "DELETE", "/groups/shop?pending=keep", **{"If-Match": g["version"]})
    assert r.status == 204
    assert not (client.mappings / "shop.yaml").exists()
    # keep: the lane is paused, so the deliveries wait for the group to come back.
    assert ("shop", "local") in await client.app[STORE].paused_lanes()
    _, au = await call(client, "GET", "/audit")
    deleted = [e for e in au["entries"] if e["action"] == "group.delete"]
    assert deleted[0]["detail"]["pending"] == 1
    assert deleted[0]["detail"]["pending_action"] == "keep"


async def test_store_unavailable_is_503_in_the_envelope(client):
    await client.app[STORE].close()
    r, data = await call(client, "GET", "/groups/shop/versions")
    assert r.status == 503
    assert r.headers["Retry-After"] == "5"
    envelope(data, "STORE_UNAVAILABLE")
    r, data = await call(client, "GET", "/keys")
    assert r.status == 503


async def test_hand_edits_and_api_writes_interleaved_lose_nothing(client):
    path = client.mappings / "shop.yaml"
    for i in range(3):
        # By hand: a comment and a change.
        path.write_text(
            path.read_text().replace("integrations:\n", f"# hand note {i}\nintegrations:\n", 1)
        )
        _, g = await call(client, "GET", "/groups/shop")
        # Through the API, from what it just read: another change.
        r, data = await call(
            client,
            "PATCH",
            "/groups/shop/integrations/local",
            {"options": {"batch_size": 10 + i}},
            **{"If-Match": g["version"]},
        )
        assert r.status == 200, data
    text = path.read_text()
    for i in range(3):
        assert f"# hand note {i}" in text
    assert "# the NDJSON file" in text
    _, g = await call(client, "GET", "/groups/shop")
    assert g["content"]["integrations"][0]["options"] == {"batch_size": 12}
    _, vs = await call(client, "GET", "/groups/shop/versions")
    assert [v["actor"] for v in vs["versions"]] == ["file", "admin"] * 3


async def test_yaml_only_values_survive_api_writes_and_answer_as_json(client):
    path = client.mappings / "shop.yaml"
    path.write_text(
        path.read_text().replace(
            "      email: epost  # the producer's name\n",
            "      email: epost  # the producer's name\n"
            "      size: {path: code, transform: {lookup: {table: {1: small, 2: large}}}}\n",
        )
        + "# a trailing note\n"
    )
    r, g = await call(client, "GET", "/groups/shop")
    assert r.status == 200, g
    table = g["content"]["integrations"][0]["fields"]["size"]["transform"]["lookup"]["table"]
    assert table == {"1": "small", "2": "large"}  # JSON keys are strings
    r, data = await call(
        client,
        "PATCH",
        "/groups/shop/integrations/local",
        {"enabled": False},
        **{"If-Match": g["version"]},
    )
    assert r.status == 200, data
    text = path.read_text()
    # The integer keys are written back as they were, not as strings.
    assert "{1: small, 2: large}" in text
    assert "# a trailing note" in text
    assert "enabled: false" in text
