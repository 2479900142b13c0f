"""A store that fails outside a handler's own commit still answers 503, never 500 (in process).

Found by tests/test_fault_postgres_restart.py: with PostgreSQL down for longer than the key
cache keeps an entry (2 x ``key_cache_ttl``), the key ring's store read raised
``StoreUnavailable`` from authentication and producers got ``500 INTERNAL_ERROR``; the same for
the ``Idempotency-Key`` lookup before a write. Here the outage is the store closed under the
running app (every call then raises ``StoreUnavailable``), which needs no server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import STORE, create_app
from gateway.auth.keys import SecretBox, create_key, load_master_key
from gateway.config import load_settings
from tests.support.signing import sign

Client = TestClient[web.Request, web.Application]
RECORD = json.dumps({"group_key": "demo", "data": {"a": 1}}).encode()


@pytest.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> Client:
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    (mappings / "demo.yaml").write_text("group_key: demo\nintegrations: []\n")
    settings = load_settings(
        {
            "data_dir": tmp_path / "data",
            "mappings": mappings,
            "key_cache_ttl": 0.05,
            "delivery": False,
        },
        environ={},
    )
    return await aiohttp_client(create_app(settings))  # type: ignore[no-any-return]


async def _post(client: Client, key: str, secret: str, path: str, headers: dict[str, str]) -> Any:
    url = str(client.make_url(path))
    _, signed = sign("POST", url, RECORD, headers, key=key, secret=secret)
    return await client.post(path, data=RECORD, headers=signed)


@pytest.mark.parametrize("idempotency_key", [None, "k-1"])
async def test_store_down_at_key_lookup_or_idempotency_lookup_is_503(
    client: Client, tmp_path: Path, idempotency_key: str | None
) -> None:
    app = client.app
    assert app is not None
    store = app[STORE]
    box = SecretBox(load_master_key(tmp_path / "data", None))
    made = await create_key(store, box, ["demo"])
    headers = {"Content-Type": "application/json"}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    ok = await _post(client, made.access_key_id, made.secret_access_key, "/v1/records", headers)
    assert ok.status == 202, await ok.text()

    await store.close()  # the outage: every store call now raises StoreUnavailable
    fresh = "AKGW" + "Z" * 16  # a key id the ring has never cached: looked up in the store
    for key_id in (made.access_key_id, fresh):
        r = await _post(client, key_id, made.secret_access_key, "/v1/records", headers)
        body = await r.json()
        assert r.status == 503, body
        assert body["error"]["code"] == "STORE_UNAVAILABLE"
        assert r.headers["Retry-After"]
