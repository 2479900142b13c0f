"""Links end to end through a real ``gateway serve`` and a local fake of integrator.io: a
sign-up record creates a licence (one POST), an upgrade updates the same licence (PUT to its
id), and after a gateway restart a cancellation expires it (PUT to the same id), on SQLite and
on PostgreSQL; the link shows in ``gateway links``, the admin API and the attempt history. An
``invalid_user`` licence retries on the accelerated schedule until the user appears."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.integrations.integrator_io import iso
from tests.conftest import STORE_BACKENDS
from tests.support import pg
from tests.support.gateway_proc import GatewayProcess
from tests.support.integrator_fake import IntegratorFake
from tests.support.signing import sign

pytestmark = pytest.mark.e2e

TOKEN = "iio-e2e-secret-token"
ADMIN_TOKEN = "admin-token-for-links-e2e"

MAPPING = """\
group_key: saas
integrations:
  - name: licences
    type: integrator_io
    action: license
    when: {{event: {{in: [signup, upgrade]}}}}
    connection: {{token: "${{IIO_TOKEN}}", connector_id: conn1, base_url: "{url}"}}
    settings: {{trial_days: 30, invalid_user_retry_every: 0.5, invalid_user_retry_for: 120}}
    fields:
      email: email
      connectorEdition: plan
    options: {{retry: {{base: 50ms, cap: 200ms, max_attempts: 3}}}}
  - name: expiry
    type: integrator_io
    action: expire
    when: {{event: {{eq: cancel}}}}
    connection: {{token: "${{IIO_TOKEN}}", connector_id: conn1, base_url: "{url}"}}
    settings: {{link_scope: licences}}
    fields:
      email: email
    options: {{retry: {{base: 50ms, cap: 200ms, max_attempts: 3}}}}
"""


@pytest.fixture
async def fake() -> AsyncIterator[IntegratorFake]:
    server = await IntegratorFake(token=TOKEN).start()
    yield server
    await server.stop()


async def _gateway(tmp_path: Path, fake: IntegratorFake, store: str | None) -> GatewayProcess:
    env = {
        "IIO_TOKEN": TOKEN,
        "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "GATEWAY_DELIVERY_POLL_INTERVAL": "0.05",
    }
    if store is not None:
        env["GATEWAY_STORE"] = store
    gw = GatewayProcess(tmp_path, groups=(), **env)
    (gw.mappings / "saas.yaml").write_text(MAPPING.format(url=fake.url))
    await asyncio.to_thread(gw.start)
    return gw


async def _call(gw: GatewayProcess, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    return await asyncio.to_thread(gw.request, method, path, **kw)


async def _post(gw: GatewayProcess, key: tuple[str, str], data: dict[str, Any]) -> str:
    body = json.dumps({"group_key": "saas", "data": data}).encode()
    url, headers = sign(
        "POST",
        gw.url + "/v1/records",
        body,
        {"Content-Type": "application/json"},
        key=key[0],
        secret=key[1],
    )
    status, doc = await _call(gw, "POST", url.removeprefix(gw.url), body=body, headers=headers)
    assert status == 202, doc
    return str(doc["id"])


async def _record(gw: GatewayProcess, key: tuple[str, str], rid: str) -> dict[str, Any]:
    url, headers = sign("GET", f"{gw.url}/v1/records/{rid}", key=key[0], secret=key[1])
    status, doc = await _call(gw, "GET", url.removeprefix(gw.url), headers=headers)
    assert status == 200, doc
    return dict(doc)


async def _settled(
    gw: GatewayProcess, key: tuple[str, str], rid: str, within: float = 20.0
) -> dict[str, Any]:
    """The record once none of its deliveries is pending."""
    for _ in range(int(within / 0.1)):
        doc = await _record(gw, key, rid)
        if doc["deliveries"] and all(d["state"] != "pending" for d in doc["deliveries"]):
            return doc
        await asyncio.sleep(0.1)
    raise AssertionError(f"still pending after {within}s: {doc}")


async def _admin(gw: GatewayProcess, path: str) -> Any:
    status, doc = await _call(
        gw, "GET", "/admin/v1" + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert status == 200, doc
    return doc


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize("backend", STORE_BACKENDS)
async def test_signup_upgrade_restart_cancel_one_post_then_puts_to_the_same_id(
    tmp_path: Path, fake: IntegratorFake, backend: str
) -> None:
    store = await pg.create_schema() if backend == "postgresql" else None
    gw = await _gateway(tmp_path, fake, store)
    try:
        key = await asyncio.to_thread(gw.create_key, "saas")
        signup = await _post(gw, key, {"event": "signup", "email": "Ada@example.com", "plan": "s"})
        doc = await _settled(gw, key, signup)
        [d] = doc["deliveries"]
        assert (d["integration"], d["state"]) == ("licences", "delivered"), d
        [lic_id] = fake.licenses
        post = next(c for c in fake.calls if c.method == "POST")
        assert post.body["email"] == "Ada@example.com"
        assert post.body["opts"] == {"connectorEdition": "s"}
        assert _epoch(post.body["expires"]) == pytest.approx(
            _epoch(doc["received_at"]) + 30 * 86400, abs=0.002
        )

        upgrade = await _post(
            gw, key, {"event": "upgrade", "email": "ada@example.com", "plan": "p"}
        )
        assert (await _settled(gw, key, upgrade))["deliveries"][0]["state"] == "delivered"
        assert fake.licenses[lic_id]["opts"] == {"connectorEdition": "p"}

        # A new process on the same store: the link is in the store, not in memory.
        await asyncio.to_thread(gw.stop)
        await asyncio.to_thread(gw.start)

        cancel = await _post(gw, key, {"event": "cancel", "email": "ADA@example.com"})
        doc = await _settled(gw, key, cancel)
        [d] = doc["deliveries"]
        assert (d["integration"], d["state"]) == ("expiry", "delivered"), d
        put = fake.calls[-1]
        assert put.body == {"expires": iso(_epoch(doc["received_at"]))}

        writes = [(c.method, c.path) for c in fake.calls if c.method != "GET"]
        licence = f"/v1/connectors/conn1/licenses/{lic_id}"
        assert writes == [
            ("POST", "/v1/connectors/conn1/licenses"),
            ("PUT", licence),
            ("PUT", licence),
        ]
        assert [c.method for c in fake.calls].count("GET") == 1  # before the first POST only
        assert len(fake.licenses) == 1

        # The link: in the admin API, in `gateway links`, in the attempt history.
        links = await _admin(gw, "/links?group=saas")
        assert [(x["integration"], x["link_key"], x["external_id"]) for x in links["links"]] == [
            ("licences", "ada@example.com", lic_id)
        ]
        out = await asyncio.to_thread(gw.cli, "links", "--group", "saas", "--json")
        assert json.loads(out.stdout)["links"][0]["external_id"] == lic_id
        table = (await asyncio.to_thread(gw.cli, "links")).stdout
        assert lic_id in table
        assert "ada@example.com" in table
        detail = await _admin(gw, f"/deliveries/{d['id']}")
        assert detail["attempt_history"][-1]["link"] == f"ada@example.com -> {lic_id}"
        bad = await _call(
            gw,
            "GET",
            "/admin/v1/links?colour=red",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert bad[0] == 400
        assert bad[1]["error"]["code"] == "UNKNOWN_PARAMETER"
        assert TOKEN not in gw.output()
    finally:
        if gw.proc is not None:
            await asyncio.to_thread(gw.stop)
        if store is not None:
            await pg.drop_schema(store)


async def test_invalid_user_then_the_user_appears_and_is_provisioned(
    tmp_path: Path, fake: IntegratorFake
) -> None:
    fake.accounts = set()  # nobody has an integrator.io account yet
    gw = await _gateway(tmp_path, fake, None)
    try:
        key = await asyncio.to_thread(gw.create_key, "saas")
        rid = await _post(gw, key, {"event": "signup", "email": "new@example.com", "plan": "s"})
        for _ in range(200):  # up to 20 s: the entry's own retry would give up after 3
            if fake.count("POST") >= 4:
                break
            await asyncio.sleep(0.1)
        [d] = (await _record(gw, key, rid))["deliveries"]
        assert d["state"] == "pending"
        detail = await _admin(gw, f"/deliveries/{d['id']}")
        assert "invalid_user" in detail["last_error"]
        assert len(detail["attempt_history"]) >= 4

        fake.accounts = {"new@example.com"}
        [d] = (await _settled(gw, key, rid))["deliveries"]
        assert d["state"] == "delivered"
        lic = fake.by_email("new@example.com")
        assert lic is not None
        links = await _admin(gw, "/links?integration=licences&key=new@example.com")
        assert [x["external_id"] for x in links["links"]] == [lic["_id"]]
    finally:
        if gw.proc is not None:
            await asyncio.to_thread(gw.stop)
