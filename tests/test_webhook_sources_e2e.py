"""Inbound webhooks through a real ``gateway serve``: events signed by the Standard Webhooks
reference library (``standardwebhooks``, the oracle), by an HMAC header and by a bearer token,
stored as records of the source's group and delivered to a local HubSpot stand-in; every
refusal answered in the error envelope with nothing stored; source files hot-reloaded."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from requests_aws4auth import AWS4Auth
from standardwebhooks.webhooks import Webhook

from tests.support.gateway_proc import REPO, GatewayProcess
from tests.support.receiver import ThreadedReceiver

pytestmark = pytest.mark.e2e

WHSEC = "whsec_" + base64.b64encode(os.urandom(24)).decode()
HMAC_SECRET = "shop-hmac-" + uuid.uuid4().hex
BEARER = "partner-token-" + uuid.uuid4().hex
SECRETS = {
    "AUTOMATUM_WEBHOOK_SECRET": WHSEC,
    "HUBSPOT_TOKEN": "pat-eu1-" + uuid.uuid4().hex,
    "SHOP_HMAC_SECRET": HMAC_SECRET,
    "PARTNER_TOKEN": BEARER,
}
EXAMPLES = REPO / "mappings" / "examples"

SHOP_SOURCE = """\
group_key: automatum-crm
verify:
  scheme: hmac_sha256
  secret: ${SHOP_HMAC_SECRET}
  header: X-Shop-Signature
  prefix: "sha256="
events:
  accept: [order.paid]
  type: event
  id: event_id
  timestamp: created_at
  data: ""
"""
PARTNER_SOURCE = """\
group_key: automatum-crm
verify:
  scheme: bearer
  token: ${PARTNER_TOKEN}
events:
  accept: [lead.created]
  data: lead
"""


class Env:
    gw: GatewayProcess
    hubspot: ThreadedReceiver
    auth: AWS4Auth


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[type[Env]]:
    root = tmp_path_factory.mktemp("webhooks")
    with ThreadedReceiver() as hubspot:
        gw = GatewayProcess(root, groups=(), GATEWAY_DELIVERY_POLL_INTERVAL="0.1", **SECRETS)
        # The repository's example, pointed at the local HubSpot stand-in.
        mapping = (EXAMPLES / "automatum-crm.yaml").read_text()
        mapping = mapping.replace(
            "token: ${HUBSPOT_TOKEN}", f"token: ${{HUBSPOT_TOKEN}}\n      base_url: {hubspot.url}"
        )
        assert hubspot.url in mapping
        (gw.mappings / "automatum-crm.yaml").write_text(mapping)
        sources = gw.mappings / "sources"
        sources.mkdir()
        shutil.copy(EXAMPLES / "sources" / "automatum.yaml", sources / "automatum.yaml")
        (sources / "shop.yaml").write_text(SHOP_SOURCE)
        (sources / "partner.yaml").write_text(PARTNER_SOURCE)
        gw.start()
        key, secret = gw.create_key("automatum-crm")
        Env.gw, Env.hubspot = gw, hubspot
        Env.auth = AWS4Auth(key, secret, "us-east-1", "execute-api")
        try:
            yield Env
        finally:
            assert gw.stop() == 0
            log = gw.output()
            for value in (*SECRETS.values(), WHSEC.removeprefix("whsec_")):
                assert value not in log, "a secret reached the log"
            assert '"internal_error"' not in log, log[-3000:]


# -- helpers ---------------------------------------------------------------------------------


def records(gw: GatewayProcess) -> int:
    """Records committed, read from the store's file as an operator's SQL client would."""
    con = sqlite3.connect(f"file:{gw.data_dir / 'gateway.db'}?mode=ro", uri=True)
    try:
        return int(con.execute("SELECT count(*) FROM records").fetchone()[0])
    finally:
        con.close()


def event(kind: str = "customer.created", **customer: Any) -> bytes:
    return json.dumps(
        {
            "type": kind,
            "timestamp": datetime.now(UTC).isoformat(),
            "data": {
                "customer": {
                    "id": "cus_" + uuid.uuid4().hex[:8],
                    "email": f"{uuid.uuid4().hex[:8]}@example.com",
                    "name": "Åsa Öberg Lind",
                    "company": "Kött & Fisk AB",
                    "country": "SE",
                    **customer,
                },
                "listing_id": "lst_42",
                "tags": ["trial", "eu"],
                "items": [{"sku": "A", "qty": 1}],
            },
        },
        ensure_ascii=False,
    ).encode()


def signed(
    body: bytes,
    msg_id: str | None = None,
    at: datetime | None = None,
    secret: str = WHSEC,
) -> dict[str, str]:
    """Standard Webhooks headers made by the reference library."""
    msg_id = msg_id or "msg_" + uuid.uuid4().hex
    at = at or datetime.now(UTC)
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, at, body),
    }


def post(source: str, body: bytes, headers: dict[str, str]) -> requests.Response:
    return requests.post(
        f"{Env.gw.url}/v1/webhooks/{source}", data=body, headers=headers, timeout=10
    )


def stored_data(record_id: str) -> dict[str, Any]:
    r = requests.get(f"{Env.gw.url}/v1/records/{record_id}", auth=Env.auth, timeout=10)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()["data"]
    return data


def wait_for_contacts(n: int, within: float = 15.0) -> list[Any]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with Env.hubspot.lock:
            if len(Env.hubspot.bodies) >= n:
                return list(Env.hubspot.bodies)
        time.sleep(0.05)
    raise AssertionError(f"expected {n} HubSpot requests, got {len(Env.hubspot.bodies)}")


def assert_refused(r: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    err: dict[str, Any] = r.json()["error"]
    assert err["code"] == code, err
    assert err["type"]
    assert err["message"]
    return err


# -- accepted --------------------------------------------------------------------------------


def test_signed_event_is_stored_flattened_and_delivered_to_the_crm(env: type[Env]) -> None:
    body = event()
    sent = json.loads(body)
    before = len(Env.hubspot.bodies)
    headers = signed(body)
    r = post("automatum", body, headers)
    assert r.status_code == 202, r.text
    answer = r.json()
    assert answer["status"] == "accepted"
    assert answer["integrations"] == ["crm"]
    customer = sent["data"]["customer"]
    assert stored_data(answer["id"]) == {
        "customer.id": customer["id"],
        "customer.email": customer["email"],
        "customer.name": "Åsa Öberg Lind",
        "customer.company": "Kött & Fisk AB",
        "customer.country": "SE",
        "listing_id": "lst_42",
        "tags": ["trial", "eu"],  # a list of scalars is kept
        "items": '[{"sku":"A","qty":1}]',  # a list of objects becomes its JSON text
        "event_type": "customer.created",
        "event_id": headers["webhook-id"],
    }
    bodies = wait_for_contacts(before + 1)
    (contact,) = bodies[before]["inputs"]
    assert contact["id"] == customer["email"]
    assert contact["properties"]["firstname"] == "Åsa"
    assert contact["properties"]["lastname"] == "Öberg Lind"
    assert contact["properties"]["automatum_customer_id"] == customer["id"]


def test_accepted_event_type_that_the_mapping_routes_nowhere_is_stored(env: type[Env]) -> None:
    body = event("entitlement.updated")
    r = post("automatum", body, signed(body))
    assert r.status_code == 202, r.text
    assert r.json()["integrations"] == []  # the example's `when` sends only new customers
    assert stored_data(r.json()["id"])["event_type"] == "entitlement.updated"


def test_hmac_header_variant(env: type[Env]) -> None:
    body = json.dumps(
        {
            "event": "order.paid",
            "event_id": 981,
            "created_at": datetime.now(UTC).isoformat(),
            "order": {"total": 12.5, "customer": {"email": "k@example.com"}},
        }
    ).encode()
    mac = hmac.new(HMAC_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "X-Shop-Signature": f"sha256={mac}"}
    r = post("shop", body, headers)
    assert r.status_code == 202, r.text
    data = stored_data(r.json()["id"])
    # data: "" flattens the whole event.
    assert data["order.total"] == 12.5
    assert data["order.customer.email"] == "k@example.com"
    assert data["event_type"] == "order.paid"
    assert data["event_id"] == "981"
    # Another body under the same signature is refused; the same event id again is not stored.
    n = records(Env.gw)
    assert_refused(post("shop", body + b" ", headers), 401, "WEBHOOK_SIGNATURE_INVALID")
    again = post("shop", body, headers)
    assert again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == r.json()["id"]
    assert records(Env.gw) == n


def test_hmac_variant_refuses_a_stale_event_time(env: type[Env]) -> None:
    n = records(Env.gw)
    for created in (
        (datetime.now(UTC) - timedelta(minutes=6)).isoformat(),
        time.time() + 400,
    ):
        body = json.dumps(
            {"event": "order.paid", "event_id": str(uuid.uuid4()), "created_at": created}
        ).encode()
        mac = hmac.new(HMAC_SECRET.encode(), body, hashlib.sha256).hexdigest()
        headers = {"Content-Type": "application/json", "X-Shop-Signature": f"sha256={mac}"}
        assert_refused(post("shop", body, headers), 401, "WEBHOOK_TIMESTAMP_EXPIRED")
    body = json.dumps({"event": "order.paid", "event_id": "x", "created_at": "yesterday"}).encode()
    mac = hmac.new(HMAC_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "X-Shop-Signature": f"sha256={mac}"}
    assert_refused(post("shop", body, headers), 400, "MISSING_EVENT_TIMESTAMP")
    assert records(Env.gw) == n


def test_bearer_variant(env: type[Env]) -> None:
    body = json.dumps(
        {"id": "ev-1", "type": "lead.created", "lead": {"email": "p@example.com", "score": 7}}
    ).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {BEARER}"}
    r = post("partner", body, headers)
    assert r.status_code == 202, r.text
    data = stored_data(r.json()["id"])
    assert data == {
        "email": "p@example.com",
        "score": 7,
        "event_type": "lead.created",
        "event_id": "ev-1",
    }
    n = records(Env.gw)
    wrong = {**headers, "Authorization": "Bearer " + BEARER[:-1] + "x"}
    err = assert_refused(post("partner", body, wrong), 401, "WEBHOOK_UNAUTHENTICATED")
    assert BEARER not in json.dumps(err)
    assert_refused(
        post("partner", body, {"Content-Type": "application/json"}), 401, "WEBHOOK_UNAUTHENTICATED"
    )
    assert records(Env.gw) == n


# -- refused, nothing stored -----------------------------------------------------------------


def _unsigned(body: bytes) -> tuple[str, dict[str, str]]:
    return "automatum", {"Content-Type": "application/json"}


def _bad_signature(body: bytes) -> tuple[str, dict[str, str]]:
    other = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    return "automatum", signed(body, secret=other)


def _tampered(body: bytes) -> tuple[str, dict[str, str]]:
    return "automatum", signed(body.replace(b"customer.created", b"customer.createe"))


def _stale(body: bytes) -> tuple[str, dict[str, str]]:
    return "automatum", signed(body, at=datetime.now(UTC) - timedelta(seconds=301))


def _future(body: bytes) -> tuple[str, dict[str, str]]:
    return "automatum", signed(body, at=datetime.now(UTC) + timedelta(seconds=400))


def _unknown_source(body: bytes) -> tuple[str, dict[str, str]]:
    return "nosuchsource", signed(body)


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        (_unsigned, 401, "WEBHOOK_SIGNATURE_MISSING"),
        (_bad_signature, 401, "WEBHOOK_SIGNATURE_INVALID"),
        (_tampered, 401, "WEBHOOK_SIGNATURE_INVALID"),
        (_stale, 401, "WEBHOOK_TIMESTAMP_EXPIRED"),
        (_future, 401, "WEBHOOK_TIMESTAMP_EXPIRED"),
        (_unknown_source, 404, "UNKNOWN_SOURCE"),
    ],
)
def test_refused_and_nothing_stored(env: type[Env], make: Any, status: int, code: str) -> None:
    body = event()
    source, headers = make(body)
    n = records(Env.gw)
    err = assert_refused(post(source, body, headers), status, code)
    assert WHSEC not in json.dumps(err)
    assert records(Env.gw) == n


def test_event_type_not_accepted_is_refused(env: type[Env]) -> None:
    body = event("customer.deleted")
    n = records(Env.gw)
    err = assert_refused(post("automatum", body, signed(body)), 422, "EVENT_TYPE_NOT_ACCEPTED")
    assert err["errors"] == [{"field": "type", "message": "not in the source's accept list"}]
    assert records(Env.gw) == n


def test_invalid_event_data_gets_the_producer_envelope(env: type[Env]) -> None:
    body = event(notes="x" * 20000)
    n = records(Env.gw)
    err = assert_refused(post("automatum", body, signed(body)), 422, "INVALID_DATA")
    assert err["errors"][0]["field"] == "data.customer.notes"
    assert records(Env.gw) == n
    assert_refused(
        post("automatum", b"x" * (2 << 20), signed(b"x" * (2 << 20))), 413, "PAYLOAD_TOO_LARGE"
    )
    assert records(Env.gw) == n


def test_replayed_event_id_is_never_stored_twice(env: type[Env]) -> None:
    body = event()
    msg_id = "msg_" + uuid.uuid4().hex
    delivered = len(Env.hubspot.bodies)
    first = post("automatum", body, signed(body, msg_id))
    assert first.status_code == 202, first.text
    n = records(Env.gw)
    before = len(wait_for_contacts(delivered + 1))
    # The sender's retry: same id and body, a fresh timestamp and signature. Answered with the
    # first answer (so the sender stops retrying), stored no second time.
    retry = post("automatum", body, signed(body, msg_id, datetime.now(UTC) + timedelta(seconds=2)))
    assert retry.status_code == 202, retry.text
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.json() == first.json()
    # A replay of the exact request: the same.
    headers = signed(body, msg_id)
    assert post("automatum", body, headers).json()["id"] == first.json()["id"]
    # The same id with another event: refused.
    other = event()
    assert_refused(post("automatum", other, signed(other, msg_id)), 409, "EVENT_ID_CONFLICT")
    assert records(Env.gw) == n
    time.sleep(1.0)  # a second delivery would have arrived by now
    assert len(Env.hubspot.bodies) == before
    # The event id is remembered in the store: a restarted gateway still knows it.
    Env.gw.stop()
    Env.gw.start()
    later = post("automatum", body, signed(body, msg_id))
    assert later.status_code == 202, later.text
    assert later.headers["Idempotent-Replayed"] == "true"
    assert later.json()["id"] == first.json()["id"]
    assert records(Env.gw) == n


# -- source files ----------------------------------------------------------------------------


def test_source_files_reload_while_serving(env: type[Env]) -> None:
    gw = Env.gw
    path = gw.mappings / "sources" / "late.yaml"
    body = json.dumps({"id": "l1", "type": "lead.created", "lead": {"email": "l@example.com"}})
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {BEARER}"}

    def until(status: int) -> requests.Response:
        deadline = time.monotonic() + 15
        while True:
            r = post("late", body.encode(), headers)
            if r.status_code == status or time.monotonic() > deadline:
                return r
            time.sleep(0.1)

    assert_refused(post("late", body.encode(), headers), 404, "UNKNOWN_SOURCE")
    path.write_text(PARTNER_SOURCE)  # picked up by the watcher
    assert until(202).status_code == 202
    # A broken version never replaces the live one; the log names file and line.
    path.write_text(PARTNER_SOURCE.replace("scheme: bearer", "scheme: bearr"))
    deadline = time.monotonic() + 15
    while "webhook_source_invalid" not in gw.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert f"{path}:3: verify.scheme: unknown scheme" in gw.output()
    ready = requests.get(gw.url + "/readyz", timeout=10).json()
    assert any(
        e.startswith(f"{path}:3: verify.scheme") for e in ready["checks"]["mappings"]["errors"]
    )
    headers["Authorization"] = f"Bearer {BEARER}"
    body = body.replace("l1", "l2")
    assert post("late", body.encode(), headers).status_code == 202
    path.unlink()
    assert_refused(until(404), 404, "UNKNOWN_SOURCE")


def test_concurrent_deliveries_of_one_event_store_one_record(env: type[Env]) -> None:
    # Senders retry on timeouts, so the same event can arrive on several connections at once:
    # the event id's entry commits in the record's transaction, so exactly one is stored.
    from concurrent.futures import ThreadPoolExecutor

    body = event("entitlement.updated")
    msg_id = "msg_" + uuid.uuid4().hex
    n = records(Env.gw)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post("automatum", body, signed(body, msg_id)), range(8)))
    assert [a.status_code for a in answers] == [202] * 8, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert sum(1 for a in answers if "Idempotent-Replayed" not in a.headers) == 1
    assert records(Env.gw) == n + 1
