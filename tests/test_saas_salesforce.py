"""The ``salesforce`` type: the same calls as simple-salesforce, OAuth2 client credentials with
one refresh on ``401 INVALID_SESSION_ID``, and the delivery engine against a fake org answering
Salesforce's per-record success and errors, UNABLE_TO_LOCK_ROW, REQUEST_LIMIT_EXCEEDED and 503."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from gateway.integrations.base import BuildErrors
from gateway.mapping.errors import SpecErrors
from gateway.mapping.model import CompiledIntegration, compile_mapping
from gateway.store.base import DeliveryState
from tests.support import vendor_fakes
from tests.support.delivery_rig import Rig
from tests.support.receiver import Answer, Receiver
from tests.support.saas import call_of, engine_requests, sdk_capture
from tests.support.vendor_fakes import CLIENT_ID, CLIENT_SECRET

pytestmark = pytest.mark.e2e  # real local servers and the delivery engine

ENTRY = """\
- name: saas
  type: salesforce
  connection:
    instance_url: "{url}"
    client_id: "${SF_CLIENT_ID}"
    client_secret: "${SF_CLIENT_SECRET}"
  settings: {sobject: Contact, external_id_field: Email}
  fields:
    Email: {path: epost, transform: [trim, lower]}
    FirstName: {path: namn, transform: [first_word]}
    LastName: {path: namn, transform: [rest_words]}
    Intressen__c: some_tags
  options: {batch_wait: 50ms, retry: {base: 20ms, cap: 100ms, max_attempts: 30}}
"""

RECORD = {"epost": "Åsa.Öberg@Exempel.se", "namn": "Åsa Öberg Ström", "some_tags": ["kött", "fisk"]}
FIELDS = {"FirstName": "Åsa", "LastName": "Öberg Ström", "Intressen__c": "kött;fisk"}


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SF_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("SF_CLIENT_SECRET", CLIENT_SECRET)


def compiled(entry: str = ENTRY) -> CompiledIntegration:
    text = "group_key: shop\nintegrations:\n" + "\n".join(
        "  " + line
        for line in entry.replace("{url}", "https://acme.my.salesforce.com").splitlines()
    )
    env = {"SF_CLIENT_ID": CLIENT_ID, "SF_CLIENT_SECRET": CLIENT_SECRET}
    return compile_mapping(yaml.safe_load(text), text.encode(), environ=env).integrations[0]


def _sdk(url: str, token: str) -> Any:
    from simple_salesforce import Salesforce

    sf = Salesforce(instance_url=url, session_id=token, version="62.0")
    # simple-salesforce always writes https://; the capture server speaks plain HTTP.
    sf.base_url = sf.base_url.replace("https://", "http://")
    return sf


async def test_the_upsert_is_the_call_simple_salesforce_makes(tmp_path: Path) -> None:
    fake = vendor_fakes.salesforce()
    sent, done = await engine_requests(tmp_path, ENTRY, [RECORD], fake)
    assert [d.state for d in done] == [DeliveryState.DELIVERED]
    upserts = [r for r in sent if r.path != "/services/oauth2/token"]
    assert len(upserts) == 1
    token = fake.valid
    assert token is not None

    # The collection upsert through simple-salesforce's REST call: method, versioned path,
    # bearer session and body as the gateway sent them.
    def collection(url: str) -> None:
        fake.valid = token
        _sdk(url, token).restful(
            "composite/sobjects/Contact/Email",
            method="PATCH",
            json={
                "allOrNone": False,
                "records": [
                    {"attributes": {"type": "Contact"}, "Email": "åsa.öberg@exempel.se", **FIELDS}
                ],
            },
        )

    oracle = await sdk_capture(collection, fake)
    assert call_of(upserts[0]) == call_of(oracle[0])
    assert call_of(upserts[0])[3] == ("bearer", token)

    # Each record is what simple-salesforce's own single-record upsert by external id sends
    # (which names the external id in the path instead of the body).
    def single(url: str) -> None:
        sf = _sdk(url, token)
        contact = sf.Contact
        contact.base_url = contact.base_url.replace("https://", "http://")
        contact.upsert("Email/åsa.öberg@exempel.se", FIELDS)

    [one] = await sdk_capture(single, lambda r: Answer(204, {}, b""))
    record = upserts[0].json()["records"][0]
    assert {k: v for k, v in record.items() if k not in ("attributes", "Email")} == one.json()
    assert one.path.endswith("/sobjects/Contact/Email/%C3%A5sa.%C3%B6berg@exempel.se")


async def test_the_token_comes_from_client_credentials_in_the_form(tmp_path: Path) -> None:
    fake = vendor_fakes.salesforce()
    _, done = await engine_requests(tmp_path, ENTRY, [RECORD, RECORD | {"epost": "b@x.se"}], fake)
    assert all(d.state == DeliveryState.DELIVERED for d in done)
    assert fake.token_requests == [
        {
            "grant_type": ["client_credentials"],
            "client_id": [CLIENT_ID],
            "client_secret": [CLIENT_SECRET],
        }
    ]


async def test_an_expired_session_is_refreshed_once_and_the_request_sent_again(
    tmp_path: Path,
) -> None:
    fake = vendor_fakes.salesforce()
    fake.plan = ["expired_token"]
    sent, done = await engine_requests(tmp_path, ENTRY, [RECORD], fake)
    assert done[0].state == DeliveryState.DELIVERED
    assert done[0].attempts == 1, "the refresh and resend belong to the same attempt"
    assert fake.tokens_issued == 2
    upserts = [r for r in sent if r.path != "/services/oauth2/token"]
    assert [u.headers["Authorization"] for u in upserts] == [
        "Bearer 00DFAKE!session1",
        "Bearer 00DFAKE!session2",
    ]


async def test_wrong_client_credentials_are_permanent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SF_CLIENT_SECRET", "not-the-secret")
    fake = vendor_fakes.salesforce()
    sent, done = await engine_requests(tmp_path, ENTRY, [RECORD], fake)
    assert done[0].state == DeliveryState.DEAD
    assert "invalid_client" in (done[0].last_error or "")
    assert "not-the-secret" not in (done[0].last_error or "")
    assert all(r.path == "/services/oauth2/token" for r in sent)


def test_collections_hold_200_records_and_never_one_external_id_twice() -> None:
    integ = compiled()
    batch = [(f"dlv_{n:04d}", {"Email": f"u{n}@x.se", "LastName": "Ö"}) for n in range(250)]
    batch.append(("dlv_dup", {"Email": "U7@x.se", "LastName": "Ö"}))
    requests = integ.type.build(integ, batch, tokens=lambda i: "tok")  # type: ignore[misc]
    assert [len(r.delivery_ids) for r in requests] == [200, 50, 1]
    assert all(r.method == "PATCH" for r in requests)
    assert requests[0].url == (
        "https://acme.my.salesforce.com/services/data/v62.0/composite/sobjects/Contact/Email"
    )
    assert orjson.loads(requests[0].body)["allOrNone"] is False


def test_a_record_without_its_external_id_fails_alone() -> None:
    integ = compiled()
    with pytest.raises(BuildErrors) as caught:
        integ.type.build(  # type: ignore[misc]
            integ,
            [("dlv_a", {"LastName": "Ö"}), ("dlv_b", {"Email": "b@x.se"})],
            tokens=lambda i: "t",
        )
    assert set(caught.value.errors) == {"dlv_a"}
    assert "Email" in str(caught.value.errors["dlv_a"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("    Intressen__c: some_tags", "    Intressen-c: some_tags"), "API name"),
        (("external_id_field: Email", "external_id_field: Medlem__c"), "not a mapped field"),
    ],
)
def test_the_mapping_is_checked_at_load(change: tuple[str, str], message: str) -> None:
    with pytest.raises(SpecErrors) as caught:
        compiled(ENTRY.replace(*change))
    assert any(message in str(e) for e in caught.value.errors), caught.value


# -- the fake's answer shapes --------------------------------------------------------------


def _records(*emails: str) -> list[dict[str, Any]]:
    return [{"epost": e, "namn": "Åsa Öberg", "some_tags": ["a"]} for e in emails]


def _upserts(sent: list[Any]) -> list[Any]:
    return [r for r in sent if r.path != "/services/oauth2/token"]


async def test_per_record_errors_kill_only_that_record(tmp_path: Path) -> None:
    fake = vendor_fakes.salesforce()
    sent, done = await engine_requests(
        tmp_path, ENTRY, _records("a@x.se", "invalid@x.se", "c@x.se"), fake
    )
    assert len(_upserts(sent)) == 1
    assert [d.state for d in done] == [
        DeliveryState.DELIVERED,
        DeliveryState.DEAD,
        DeliveryState.DELIVERED,
    ]
    assert done[1].last_error == (
        "INVALID_EMAIL_ADDRESS: Email: invalid email address: invalid@x.se (Email)"
    )


async def test_a_locked_row_retries_only_that_record(tmp_path: Path) -> None:
    fake = vendor_fakes.salesforce()
    fake.plan = ["locked"]
    sent, done = await engine_requests(tmp_path, ENTRY, _records("a@x.se", "b@x.se"), fake)
    assert all(d.state == DeliveryState.DELIVERED for d in done)
    upserts = _upserts(sent)
    assert [len(u.json()["records"]) for u in upserts] == [2, 1]
    assert upserts[1].json()["records"][0]["Email"] == "a@x.se"


async def test_the_api_limit_puts_the_records_off(tmp_path: Path) -> None:
    fake = vendor_fakes.salesforce()
    fake.default = "rate_limit"
    rec = await Receiver(fake).start()
    rig = await Rig.create(tmp_path, [ENTRY.replace("{url}", rec.url)])
    try:
        ids = await rig.add(["saas"], _records("a@x.se")[0])
        await rec.wait_for(2)  # the token, then the refused upsert
        deadline = time.monotonic() + 10
        while True:
            [d] = await rig.deliveries(ids)
            if d.attempts == 1 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    finally:
        await rig.close()
        await rec.stop()
    assert d.state == DeliveryState.PENDING
    assert "REQUEST_LIMIT_EXCEEDED" in (d.last_error or "")
    assert d.next_attempt_at - time.time() > 250


async def test_server_errors_retry(tmp_path: Path) -> None:
    fake = vendor_fakes.salesforce()
    fake.plan = ["server_error"]
    _, done = await engine_requests(tmp_path, ENTRY, _records("a@x.se"), fake)
    assert done[0].state == DeliveryState.DELIVERED
    assert fake.answered == ["server_error", "success"]
