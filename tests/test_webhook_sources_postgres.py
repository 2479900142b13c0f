"""Webhook event ids on a shared PostgreSQL store: two ``gateway serve`` processes on one
database remember the same events, so a sender's retry landing on the other process is not
stored twice (the event id's entry commits in the record's transaction, in the store)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
import requests
from standardwebhooks.webhooks import Webhook

from tests.support import pg
from tests.support.gateway_proc import GatewayProcess

pytestmark = pytest.mark.e2e

WHSEC = "whsec_" + base64.b64encode(os.urandom(32)).decode()
SOURCE = """\
group_key: crm
verify: {scheme: standard_webhooks, secret: "${WH_SECRET}"}
events: {accept: [customer.created]}
"""


@pytest.fixture
def store_url() -> Iterator[str]:
    url = pg.create_schema_sync()
    yield url
    pg.drop_schema_sync(url)


def _records(url: str) -> int:
    base, _, schema = url.partition("?search_path=")

    async def count() -> int:
        conn = await asyncpg.connect(base, timeout=10, server_settings={"search_path": schema})
        try:
            return int(await conn.fetchval("SELECT count(*) FROM records"))
        finally:
            await conn.close()

    return asyncio.run(count())


def _gateway(root: Path, url: str) -> GatewayProcess:
    gw = GatewayProcess(
        root, groups=("crm",), GATEWAY_STORE=url, GATEWAY_DELIVERY="0", WH_SECRET=WHSEC
    )
    (gw.mappings / "sources").mkdir()
    (gw.mappings / "sources" / "market.yaml").write_text(SOURCE)
    return gw


def _post(gw: GatewayProcess, body: bytes, msg_id: str) -> requests.Response:
    now = datetime.now(UTC)
    headers = {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(WHSEC).sign(msg_id, now, body),
    }
    return requests.post(gw.url + "/v1/webhooks/market", data=body, headers=headers, timeout=10)


def test_a_retry_on_another_process_is_not_stored_twice(tmp_path: Path, store_url: str) -> None:
    a = _gateway(tmp_path / "a", store_url).start()
    b = _gateway(tmp_path / "b", store_url).start()
    try:
        body = json.dumps(
            {"type": "customer.created", "data": {"customer": {"email": "a@example.com"}}}
        ).encode()
        msg_id = "msg_" + uuid.uuid4().hex
        first = _post(a, body, msg_id)
        assert first.status_code == 202, first.text
        retry = _post(b, body, msg_id)
        assert retry.status_code == 202, retry.text
        assert retry.headers["Idempotent-Replayed"] == "true"
        assert retry.json()["id"] == first.json()["id"]
        other = body.replace(b"a@example.com", b"b@example.com")
        conflict = _post(b, other, msg_id)
        assert conflict.status_code == 409, conflict.text
        assert conflict.json()["error"]["code"] == "EVENT_ID_CONFLICT"
        assert _records(store_url) == 1
    finally:
        assert a.stop() == 0
        assert b.stop() == 0
