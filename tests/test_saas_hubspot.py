"""The ``hubspot`` type: the same call as HubSpot's own SDK, and the delivery engine against a
fake of HubSpot's batch upsert answering its real success, partial, rate-limit, expired-token
and server-error shapes."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import yaml

from gateway.integrations.base import BuildErrors
from gateway.mapping.errors import SpecErrors
from gateway.mapping.model import CompiledIntegration, compile_mapping
from gateway.store.base import DeliveryState
from tests.support import vendor_fakes
from tests.support.saas import call_of, engine_requests, sdk_capture

pytestmark = pytest.mark.e2e  # real local servers and the delivery engine

TOKEN = "pat-eu1-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"

ENTRY = """\
- name: saas
  type: hubspot
  connection:
    token: "${HUBSPOT_TOKEN}"
    base_url: "{url}"
  fields:
    email: {path: epost, transform: [trim, lower]}
    firstname: {path: namn, transform: [first_word]}
    lastname: {path: namn, transform: [rest_words]}
    interests: some_tags
  options: {batch_wait: 50ms, retry: {base: 20ms, cap: 100ms, max_attempts: 30}}
"""

RECORD = {
    "epost": " Åsa.Öberg@Exempel.se ",
    "namn": "Åsa Öberg Ström",
    "some_tags": ["kött", "fisk"],
}


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUBSPOT_TOKEN", TOKEN)


def compiled(entry: str = ENTRY, url: str = "https://api.hubapi.com") -> CompiledIntegration:
    text = "group_key: shop\nintegrations:\n" + "\n".join(
        "  " + line for line in entry.replace("{url}", url).splitlines()
    )
    mapping = compile_mapping(yaml.safe_load(text), text.encode(), environ={"HUBSPOT_TOKEN": TOKEN})
    return mapping.integrations[0]


async def test_the_request_is_the_call_hubspots_sdk_makes(tmp_path: Path) -> None:
    fake = vendor_fakes.hubspot()
    sent, done = await engine_requests(tmp_path, ENTRY, [RECORD], fake)
    assert [d.state for d in done] == [DeliveryState.DELIVERED]

    from hubspot import Client
    from hubspot.crm.contacts import (
        BatchInputSimplePublicObjectBatchInputUpsert,
        SimplePublicObjectBatchInputUpsert,
    )

    def sdk(url: str) -> None:
        Client.create(access_token=TOKEN, host=url).crm.contacts.batch_api.upsert(
            BatchInputSimplePublicObjectBatchInputUpsert(
                inputs=[
                    SimplePublicObjectBatchInputUpsert(
                        id_property="email",
                        id="åsa.öberg@exempel.se",
                        object_write_trace_id=done[0].id,
                        properties={
                            "email": "åsa.öberg@exempel.se",
                            "firstname": "Åsa",
                            "lastname": "Öberg Ström",
                            "interests": "kött;fisk",
                        },
                    )
                ]
            )
        )

    oracle = await sdk_capture(sdk, fake)
    assert len(sent) == 1
    assert call_of(sent[0]) == call_of(oracle[0])
    assert call_of(sent[0])[3] == ("bearer", TOKEN)


def test_batches_hold_100_inputs_and_never_one_id_twice() -> None:
    integ = compiled()
    batch = [(f"dlv_{n:04d}", {"email": f"u{n}@x.se", "firstname": "A"}) for n in range(150)]
    batch.append(("dlv_dup", {"email": "U3@x.se", "firstname": "B"}))
    requests = integ.type.build(integ, batch)  # type: ignore[misc]
    sizes = [len(r.delivery_ids) for r in requests]
    assert sizes == [100, 50, 1]
    assert requests[2].delivery_ids == ["dlv_dup"]
    assert all(
        r.url == "https://api.hubapi.com/crm/v3/objects/contacts/batch/upsert" for r in requests
    )
    assert all(r.secret_headers == frozenset({"Authorization"}) for r in requests)


def test_a_record_without_its_id_property_fails_alone_naming_the_field() -> None:
    integ = compiled()
    with pytest.raises(BuildErrors) as caught:
        integ.type.build(integ, [("dlv_a", {"firstname": "Åsa"}), ("dlv_b", {"email": "b@x.se"})])  # type: ignore[misc]
    assert set(caught.value.errors) == {"dlv_a"}
    assert "email" in str(caught.value.errors["dlv_a"])


def test_custom_object_types_and_id_properties_go_in_the_path_and_inputs() -> None:
    entry = ENTRY.replace(
        "  fields:", "  settings: {object_type: 2-1234567, id_property: medlemsnummer}\n  fields:"
    ).replace("    interests: some_tags", "    medlemsnummer: nr")
    integ = compiled(entry)
    [req] = integ.type.build(integ, [("dlv_a", {"medlemsnummer": 42, "firstname": "Åsa"})])  # type: ignore[misc]
    assert req.url.endswith("/crm/v3/objects/2-1234567/batch/upsert")
    assert orjson.loads(req.body)["inputs"] == [
        {
            "idProperty": "medlemsnummer",
            "id": "42",
            "objectWriteTraceId": "dlv_a",
            "properties": {"medlemsnummer": "42", "firstname": "Åsa"},
        }
    ]


@pytest.mark.parametrize(
    ("change", "where", "message"),
    [
        ("    FirstName: namn\n", "FirstName", "not a valid name"),
        ("", "id_property", "not a mapped field"),
    ],
)
def test_the_mapping_is_checked_against_hubspots_rules_at_load(
    change: str, where: str, message: str
) -> None:
    entry = ENTRY.replace("    interests: some_tags\n", "    interests: some_tags\n" + change)
    if not change:
        entry = entry.replace("  fields:", "  settings: {id_property: kundnr}\n  fields:")
    with pytest.raises(SpecErrors) as caught:
        compiled(entry)
    assert any(where in str(e) and message in str(e) for e in caught.value.errors), caught.value


# -- the fake's answer shapes --------------------------------------------------------------


def _records(*emails: str) -> list[dict[str, object]]:
    return [{"epost": e, "namn": "Åsa Öberg", "some_tags": ["a"]} for e in emails]


async def test_success_delivers_the_batch_in_one_request(tmp_path: Path) -> None:
    fake = vendor_fakes.hubspot()
    sent, done = await engine_requests(
        tmp_path, ENTRY, _records("a@x.se", "b@x.se", "c@x.se"), fake
    )
    assert len(sent) == 1
    assert len(sent[0].json()["inputs"]) == 3
    assert all(d.state == DeliveryState.DELIVERED for d in done)


@pytest.mark.parametrize("shape", ["partial", "partial_by_id"])
async def test_partial_failure_kills_only_the_invalid_input_with_hubspots_message(
    tmp_path: Path, shape: str
) -> None:
    fake = vendor_fakes.hubspot()
    fake.default = shape
    sent, done = await engine_requests(
        tmp_path, ENTRY, _records("a@x.se", "invalid@x.se", "c@x.se"), fake
    )
    assert len(sent) == 1, "the delivered inputs must not be sent again"
    states = [d.state for d in done]
    assert states == [DeliveryState.DELIVERED, DeliveryState.DEAD, DeliveryState.DELIVERED]
    assert "INVALID_EMAIL" in (done[1].last_error or "")
    assert "VALIDATION_ERROR" in (done[1].last_error or "")


async def test_an_error_naming_no_input_retries_only_the_unconfirmed_inputs(
    tmp_path: Path,
) -> None:
    fake = vendor_fakes.hubspot()
    fake.plan = ["partial_unattributed"]
    sent, done = await engine_requests(
        tmp_path, ENTRY, _records("a@x.se", "invalid@x.se", "c@x.se"), fake
    )
    assert all(d.state == DeliveryState.DELIVERED for d in done)
    assert [len(r.json()["inputs"]) for r in sent] == [3, 1]
    assert sent[1].json()["inputs"][0]["id"] == "invalid@x.se"


async def test_rate_limit_waits_out_hubspots_window(tmp_path: Path) -> None:
    fake = vendor_fakes.hubspot(interval_ms=600)
    fake.plan = ["rate_limit"]
    sent, done = await engine_requests(tmp_path, ENTRY, _records("a@x.se"), fake)
    assert done[0].state == DeliveryState.DELIVERED
    assert len(sent) == 2
    # The backoff alone would retry within 20 ms; HubSpot's window says 600 ms.
    assert sent[1].at - sent[0].at >= 0.55


async def test_an_expired_token_is_permanent_with_hubspots_message(tmp_path: Path) -> None:
    fake = vendor_fakes.hubspot()
    fake.default = "expired_token"
    sent, done = await engine_requests(tmp_path, ENTRY, _records("a@x.se", "b@x.se"), fake)
    assert len(sent) == 1
    assert [d.state for d in done] == [DeliveryState.DEAD, DeliveryState.DEAD]
    assert "HTTP 401" in (done[0].last_error or "")
    assert "EXPIRED_AUTHENTICATION" in (done[0].last_error or "")


async def test_server_errors_retry_until_delivered(tmp_path: Path) -> None:
    fake = vendor_fakes.hubspot()
    fake.plan = ["server_error", "server_error"]
    sent, done = await engine_requests(tmp_path, ENTRY, _records("a@x.se"), fake)
    assert [d.state for d in done] == [DeliveryState.DELIVERED]
    assert fake.answered[:3] == ["server_error", "server_error", "success"]
    assert len(sent) == 3


def test_the_token_never_shows_in_a_preview() -> None:
    from gateway.mapping.preview import redact_request

    integ = compiled()
    [req] = integ.type.build(integ, [("dlv_a", {"email": "a@x.se"})])  # type: ignore[misc]
    shown = redact_request(req, [TOKEN])
    assert TOKEN not in str(shown)
    assert shown["headers"]["Authorization"] in ("***", "Bearer ***")
