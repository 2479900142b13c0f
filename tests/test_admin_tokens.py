"""Scoped admin tokens (issue 14): created by the full admin token with a role and groups,
the secret shown once and stored hashed; a read token gets 403 on every write; a token limited
to one group gets 404 for every other group (as if it did not exist) and 403 on endpoints that
are not about a group; revoked tokens are refused; changes are audited under the token's id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.app import STORE, create_app
from gateway.config import load_settings

TOKEN = "full-admin-token-for-token-tests"


def mapping(group: str) -> str:
    return f"group_key: {group}\nintegrations: []\n"


@pytest.fixture
async def client(aiohttp_client, tmp_path: Path):
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    for g in ("shop-se", "shop-no"):
        (mappings / f"{g}.yaml").write_text(mapping(g))
    settings = load_settings(
        {
            "data_dir": tmp_path / "data",
            "mappings": mappings,
            "admin_token": TOKEN,
            "delivery": False,
        },
        environ={},
    )
    return await aiohttp_client(create_app(settings))


async def call(client, token: str, method: str, path: str, body: Any = None, **headers: str):
    r = await client.request(
        method,
        "/admin/v1" + path,
        json=body,
        headers={"Authorization": f"Bearer {token}", **headers},
    )
    return r.status, (await r.json() if r.content_type == "application/json" else None)


async def make(client, **body: Any) -> str:
    status, data = await call(client, TOKEN, "POST", "/tokens", body)
    assert status == 201, data
    assert data["token"].startswith("gwt_")
    return str(data["token"])


async def test_token_secret_is_shown_once_and_stored_hashed(client) -> None:
    token = await make(client, role="read", name="dashboard")
    status, data = await call(client, TOKEN, "GET", "/tokens")
    assert status == 200
    assert token not in str(data)
    [listed] = data["tokens"]
    assert listed["role"] == "read"
    assert listed["groups"] is None
    stored = await client.app[STORE].list_admin_tokens()
    secret = token.rsplit("_", 1)[1]
    assert secret not in repr(stored)


async def test_read_token_reads_but_never_writes(client) -> None:
    token = await make(client, role="read")
    status, g = await call(client, token, "GET", "/groups/shop-se")
    assert status == 200
    status, _ = await call(client, token, "GET", "/groups")
    assert status == 200
    for method, path, body in [
        ("PUT", "/groups/shop-se", {"integrations": []}),
        ("POST", "/groups", {"group_key": "new"}),
        ("DELETE", "/groups/shop-se", None),
        ("POST", "/keys", {"groups": ["shop-se"]}),
        ("POST", "/reload", None),
        ("POST", "/tokens", {"role": "admin"}),
    ]:
        status, data = await call(client, token, method, path, body, **{"If-Match": g["version"]})
        assert status == 403, (method, path, data)
        assert data["error"]["type"] == "authorization_error"


async def test_group_limited_token_cannot_see_other_groups(client) -> None:
    token = await make(client, role="write", groups=["shop-se"])
    status, page = await call(client, token, "GET", "/groups")
    assert [g["group_key"] for g in page["groups"]] == ["shop-se"]
    status, full = await call(client, TOKEN, "GET", "/groups/shop-no")
    assert status == 200
    # 404, not 403: the same answer as for a group that does not exist.
    for method, path in [
        ("GET", "/groups/shop-no"),
        ("PUT", "/groups/shop-no"),
        ("GET", "/groups/shop-no/versions"),
        ("GET", "/groups/shop-no/integrations"),
        ("POST", "/groups/shop-no/clone"),
        ("DELETE", "/groups/shop-no"),
    ]:
        status, data = await call(client, token, method, path, {}, **{"If-Match": full["version"]})
        assert status == 404, (method, path, data)
        assert data["error"]["code"] == "UNKNOWN_GROUP"
        status2, data2 = await call(client, token, method, path.replace("shop-no", "nope"), {})
        assert (status2, data2["error"]["code"]) == (404, "UNKNOWN_GROUP")
    # Its own group it may change.
    status, mine = await call(client, token, "GET", "/groups/shop-se")
    status, data = await call(
        client,
        token,
        "PUT",
        "/groups/shop-se",
        {"description": "by token", "integrations": []},
        **{"If-Match": mine["version"]},
    )
    assert status == 200, data
    # Keys: only for its groups; keys touching other groups are invisible.
    status, data = await call(client, token, "POST", "/keys", {"groups": ["shop-no"]})
    assert status == 422
    status, other = await call(client, TOKEN, "POST", "/keys", {"groups": ["shop-se", "shop-no"]})
    assert status == 201
    status, data = await call(client, token, "GET", "/keys")
    assert other["access_key_id"] not in str(data)
    status, data = await call(client, token, "DELETE", f"/keys/{other['access_key_id']}")
    assert status == 404
    # Endpoints not about one group are refused.
    for path in ("/audit", "/deliveries", "/lanes", "/tokens"):
        status, data = await call(client, token, "GET", path)
        assert status == 403, (path, data)
    # The change is audited under the token's id.
    status, au = await call(client, TOKEN, "GET", "/audit")
    token_id = token.split("_")[1]
    assert {
        "action": "group.update",
        "actor": f"token:{token_id}",
        "target": "shop-se",
    }.items() <= next(e for e in au["entries"] if e["action"] == "group.update").items()


async def test_revoked_unknown_and_forged_tokens_are_refused(client) -> None:
    token = await make(client, role="admin")
    status, _ = await call(client, token, "GET", "/tokens")
    assert status == 200
    token_id = token.split("_")[1]
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    status, data = await call(client, forged, "GET", "/groups")
    assert (status, data["error"]["code"]) == (401, "INVALID_ADMIN_TOKEN")
    status, _ = await call(client, TOKEN, "DELETE", f"/tokens/{token_id}")
    assert status == 204
    status, data = await call(client, token, "GET", "/groups")
    assert (status, data["error"]["code"]) == (401, "INVALID_ADMIN_TOKEN")
    status, data = await call(client, TOKEN, "DELETE", "/tokens/0000000000000000")
    assert status == 404
    status, data = await call(client, "gwt_nonsense", "GET", "/groups")
    assert status == 401
    status, data = await call(client, TOKEN, "POST", "/tokens", {"role": "root"})
    assert status == 422
    assert data["error"]["errors"][0]["field"] == "role"


async def test_group_limited_token_creates_only_groups_in_its_list(client) -> None:
    token = await make(client, role="write", groups=["shop-se", "shop-dk"])
    status, data = await call(client, token, "POST", "/groups", {"group_key": "shop-fi"})
    assert (status, data["error"]["code"]) == (404, "UNKNOWN_GROUP")
    status, data = await call(client, token, "POST", "/groups/shop-se/clone", {"group_key": "x"})
    assert (status, data["error"]["code"]) == (404, "UNKNOWN_GROUP")
    status, data = await call(
        client, token, "POST", "/groups/shop-se/clone", {"group_key": "shop-dk"}
    )
    assert status == 201, data
    status, page = await call(client, token, "GET", "/groups")
    assert [g["group_key"] for g in page["groups"]] == ["shop-dk", "shop-se"]
