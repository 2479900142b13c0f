"""Mapping reloads on a running gateway: admin API, file watching, SIGHUP, and that a record's
fan-out always comes from one version."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from gateway.app import MAPPINGS, RELOADER, STORE, create_app
from gateway.auth.keys import SecretBox, create_key, load_master_key
from gateway.config import load_settings
from tests.support.gateway_proc import GatewayProcess
from tests.support.signing import sign

pytestmark = pytest.mark.e2e

TOKEN = "admin-token-for-tests"
VERSION_A = (
    "group_key: shop\nintegrations:\n"
    "  - name: a\n    type: file\n    connection: {path: a.ndjson}\n"
)
VERSION_B = VERSION_A + "  - name: b\n    type: file\n    connection: {path: b.ndjson}\n"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def client(aiohttp_client, tmp_path: Path):
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    (mappings / "shop.yaml").write_text(VERSION_A)
    # These tests are about loading and fan-out; the engine would append to files in the
    # working directory (the mappings' relative paths).
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


ADMIN = {"Authorization": f"Bearer {TOKEN}"}


async def test_admin_endpoints_need_the_token(client, tmp_path: Path) -> None:
    for headers, status, code in [
        ({}, 401, "MISSING_ADMIN_TOKEN"),
        ({"Authorization": "Bearer wrong"}, 401, "INVALID_ADMIN_TOKEN"),
    ]:
        r = await client.post("/admin/v1/reload", headers=headers)
        assert r.status == status
        assert (await r.json())["error"]["code"] == code


async def test_admin_api_is_off_without_a_token(aiohttp_client, tmp_path: Path) -> None:
    settings = load_settings({"data_dir": tmp_path / "d", "mappings": tmp_path}, environ={})
    c = await aiohttp_client(create_app(settings))
    r = await c.get("/admin/v1/groups", headers=ADMIN)
    assert r.status == 403
    assert (await r.json())["error"]["code"] == "ADMIN_API_DISABLED"


async def test_broken_edit_keeps_the_live_version_until_fixed(client, tmp_path: Path) -> None:
    path = tmp_path / "mappings" / "shop.yaml"
    r = await client.get("/admin/v1/groups", headers=ADMIN)
    first = (await r.json())["groups"][0]
    assert [i["name"] for i in first["integrations"]] == ["a"]
    path.write_text(
        VERSION_B.replace(
            "type: file\n    connection: {path: b", "type: nope\n    connection: {path: b"
        )
    )
    r = await client.post("/admin/v1/reload", headers=ADMIN)
    result = await r.json()
    assert list(result["failed"]) == [str(path)]
    assert result["failed"][str(path)][0]["line"] == 7
    r = await client.get("/admin/v1/groups", headers=ADMIN)
    listing = await r.json()
    # The old version stays live; "version" is the file's (issue 14: what If-Match names).
    assert listing["groups"][0]["live_version"] == first["version"]
    assert listing["groups"][0]["version"] != first["version"]
    assert listing["groups"][0]["problems"]
    r = await client.get("/readyz")
    assert "shop.yaml" in (await r.json())["checks"]["mappings"]["errors"][0]
    path.write_text(VERSION_B)
    r = await client.post("/admin/v1/reload", headers=ADMIN)
    assert (await r.json())["loaded"] == ["shop"]
    r = await client.get("/admin/v1/groups", headers=ADMIN)
    now = (await r.json())["groups"][0]
    assert now["version"] != first["version"]
    assert [i["name"] for i in now["integrations"]] == ["a", "b"]
    assert now["problems"] == []


async def test_concurrent_ingest_during_reloads_never_mixes_versions(
    client, tmp_path: Path
) -> None:
    app = client.server.app
    store = app[STORE]
    box = SecretBox(load_master_key(tmp_path / "data", None))
    key = await create_key(store, box, ["shop"])
    path = tmp_path / "mappings" / "shop.yaml"
    registry, reloader = app[MAPPINGS], app[RELOADER]
    versions: dict[str, list[str]] = {}

    async def flip() -> None:
        for i in range(30):
            path.write_text(VERSION_B if i % 2 == 0 else VERSION_A)
            os.utime(path, ns=(time.time_ns() + i * 1000, time.time_ns() + i * 1000))
            await reloader.reload("test")
            m = registry.get("shop")
            assert m is not None
            versions[m.version] = [i.name for i in m.integrations]
            await asyncio.sleep(0.005)

    async def send(n: int) -> str:
        body = json.dumps({"group_key": "shop", "data": {"n": n}}).encode()
        url = str(client.make_url("/v1/records"))
        _, headers = sign(
            "POST", url, body, JSON, key=key.access_key_id, secret=key.secret_access_key
        )
        r = await client.post("/v1/records", data=body, headers=headers)
        assert r.status == 202, await r.text()
        return (await r.json())["id"]

    results = await asyncio.gather(flip(), *[send(n) for n in range(150)])
    ids = results[1:]
    for rid in ids:
        rec = await store.get_record(rid)
        assert rec is not None
        assert rec.mapping_version in versions
        assert sorted(d.integration for d in rec.deliveries) == versions[rec.mapping_version]
    assert len(versions) == 2


def _admin(gw: GatewayProcess, method: str, path: str) -> dict:
    req = urllib.request.Request(gw.url + path, method=method, headers=ADMIN)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _wait_for_integrations(gw: GatewayProcess, names: list[str], timeout: float = 30) -> bool:
    # Generous: the watcher debounces, and CI machines are shared and sometimes loaded.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        groups = _admin(gw, "GET", "/admin/v1/groups")["groups"]
        shop = next((g for g in groups if g["group_key"] == "shop"), None)
        if shop and [i["name"] for i in shop["integrations"]] == names:
            return True
        time.sleep(0.1)
    return False


def _logged(gw: GatewayProcess, text: str, within: float = 15) -> bool:
    deadline = time.monotonic() + within
    while text not in gw.output():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_running_server_picks_up_file_changes_and_sighup(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, groups=(), GATEWAY_ADMIN_TOKEN=TOKEN)
    (gw.mappings / "shop.yaml").write_text(VERSION_A)
    gw.start()
    try:
        assert _wait_for_integrations(gw, ["a"])
        (gw.mappings / "shop.yaml").write_text(VERSION_B)  # the watcher sees it
        assert _wait_for_integrations(gw, ["a", "b"]), gw.output()[-2000:]
        assert _logged(gw, '"reason":"watch"')  # logs are written out about once a second
        # SIGHUP reloads too (and says so even when nothing changed).
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGHUP)
        assert _logged(gw, '"reason":"SIGHUP"')
        assert gw.proc.poll() is None  # SIGHUP does not stop the server
    finally:
        assert gw.stop() == 0
