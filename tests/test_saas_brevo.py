"""The ``brevo`` type: the same call as brevo-python (Brevo's own SDK), and the delivery engine
against a fake of POST /v3/contacts answering Brevo's created, updated, 400, 429 +
x-sib-ratelimit-reset, bad-key and 5xx shapes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.integrations.base import BuildErrors
from gateway.mapping.errors import SpecErrors
from gateway.mapping.model import CompiledIntegration, compile_mapping
from gateway.store.base import DeliveryState
from tests.support import vendor_fakes
from tests.support.saas import call_of, engine_requests, sdk_capture

pytestmark = pytest.mark.e2e  # real local servers and the delivery engine

API_KEY = "xkeysib-0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0-AbCdEfGh"

ENTRY = """\
- name: saas
  type: brevo
  connection:
    api_key: "${BREVO_API_KEY}"
    base_url: "{url}/v3"
  settings: {list_ids: [7, 12]}
  fields:
    email: {path: epost, transform: [trim, lower]}
    FIRSTNAME: {path: namn, transform: [first_word]}
    LASTNAME: {path: namn, transform: [rest_words]}
    INTRESSEN: some_tags
  options: {retry: {base: 20ms, cap: 100ms, max_attempts: 30}}
"""

RECORD = {"epost": "Åsa.Öberg@Exempel.se", "namn": "Åsa Öberg Ström", "some_tags": ["kött", "fisk"]}


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BREVO_API_KEY", API_KEY)


def compiled(entry: str = ENTRY) -> CompiledIntegration:
    text = "group_key: shop\nintegrations:\n" + "\n".join(
        "  " + line for line in entry.replace('    base_url: "{url}/v3"\n', "").splitlines()
    )
    env = {"BREVO_API_KEY": API_KEY}
    return compile_mapping(yaml.safe_load(text), text.encode(), environ=env).integrations[0]


async def test_the_request_is_the_call_brevos_sdk_makes(tmp_path: Path) -> None:
    fake = vendor_fakes.brevo()
    sent, done = await engine_requests(tmp_path, ENTRY, [RECORD], fake)
    assert [d.state for d in done] == [DeliveryState.DELIVERED]

    from brevo import Brevo

    def sdk(url: str) -> None:
        Brevo(api_key=API_KEY, base_url=url + "/v3", max_retries=0).contacts.create_contact(
            email="åsa.öberg@exempel.se",
            attributes={
                "FIRSTNAME": "Åsa",
                "LASTNAME": "Öberg Ström",
                "INTRESSEN": ["kött", "fisk"],
            },
            list_ids=[7, 12],
            update_enabled=True,
        )

    oracle = await sdk_capture(sdk, fake)
    assert call_of(sent[0], "api-key") == call_of(oracle[0], "api-key")
    assert call_of(sent[0], "api-key")[3] == ("api-key", API_KEY)
    assert sent[0].path == "/v3/contacts"


def test_production_is_the_default_and_the_key_is_a_secret_header() -> None:
    integ = compiled()
    [req] = integ.type.build(integ, [("dlv_a", {"email": "a@x.se"})])  # type: ignore[misc]
    assert req.url == "https://api.brevo.com/v3/contacts"
    assert req.secret_headers == frozenset({"api-key"})


def test_a_record_without_an_identifier_fails_alone() -> None:
    integ = compiled()
    with pytest.raises(BuildErrors) as caught:
        integ.type.build(  # type: ignore[misc]
            integ, [("dlv_a", {"FIRSTNAME": "Åsa"}), ("dlv_b", {"email": "b@x.se"})]
        )
    assert set(caught.value.errors) == {"dlv_a"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("    INTRESSEN: some_tags", "    intressen: some_tags"), "attribute name"),
        (("{list_ids: [7, 12]}", "{list_ids: [nyhetsbrev]}"), "list ids"),
    ],
)
def test_the_mapping_is_checked_at_load(change: tuple[str, str], message: str) -> None:
    with pytest.raises(SpecErrors) as caught:
        compiled(ENTRY.replace(*change))
    assert any(message in str(e) for e in caught.value.errors), caught.value


# -- the fake's answer shapes --------------------------------------------------------------


def _records(*emails: str) -> list[dict[str, Any]]:
    return [{"epost": e, "namn": "Åsa Öberg", "some_tags": ["a"]} for e in emails]


async def test_created_and_updated_are_delivered(tmp_path: Path) -> None:
    fake = vendor_fakes.brevo()
    sent, done = await engine_requests(tmp_path, ENTRY, _records("new@x.se", "known@x.se"), fake)
    assert len(sent) == 2
    assert all(d.state == DeliveryState.DELIVERED for d in done)
    assert sorted(d.last_status or 0 for d in done) == [201, 204]


async def test_an_invalid_contact_is_dead_with_brevos_code_and_message(tmp_path: Path) -> None:
    fake = vendor_fakes.brevo()
    sent, done = await engine_requests(tmp_path, ENTRY, _records("a@x.se", "invalid@x.se"), fake)
    assert len(sent) == 2
    assert [d.state for d in done] == [DeliveryState.DELIVERED, DeliveryState.DEAD]
    assert done[1].last_error == "HTTP 400: invalid_parameter: Invalid email address"


async def test_rate_limit_waits_for_the_reset_header(tmp_path: Path) -> None:
    fake = vendor_fakes.brevo(reset="1")
    fake.plan = ["rate_limit"]
    sent, done = await engine_requests(tmp_path, ENTRY, _records("a@x.se"), fake)
    assert done[0].state == DeliveryState.DELIVERED
    assert len(sent) == 2
    assert sent[1].at - sent[0].at >= 0.95


async def test_a_bad_key_is_permanent(tmp_path: Path) -> None:
    fake = vendor_fakes.brevo()
    fake.default = "bad_key"
    sent, done = await engine_requests(tmp_path, ENTRY, _records("a@x.se"), fake)
    assert len(sent) == 1
    assert done[0].state == DeliveryState.DEAD
    assert done[0].last_error == "HTTP 401: unauthorized: Key not found"


async def test_server_errors_retry(tmp_path: Path) -> None:
    fake = vendor_fakes.brevo()
    fake.plan = ["server_error"]
    _, done = await engine_requests(tmp_path, ENTRY, _records("a@x.se"), fake)
    assert done[0].state == DeliveryState.DELIVERED
    assert fake.answered == ["server_error", "success"]
