"""The ``mailchimp`` type: the same call as mailchimp-marketing (Mailchimp's own SDK), and the
delivery engine against a fake of the batch subscribe endpoint answering Mailchimp's success,
per-member errors, 429, bad-key and 5xx shapes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from gateway.integrations.base import BuildErrors
from gateway.integrations.mailchimp import base_url
from gateway.mapping.errors import SpecErrors
from gateway.mapping.model import CompiledIntegration, compile_mapping
from gateway.store.base import DeliveryState
from tests.support import vendor_fakes
from tests.support.saas import call_of, engine_requests, sdk_capture

pytestmark = pytest.mark.e2e  # real local servers and the delivery engine

API_KEY = "0123456789abcdef0123456789abcdef-us19"

ENTRY = """\
- name: saas
  type: mailchimp
  connection:
    api_key: "${MAILCHIMP_API_KEY}"
    base_url: "{url}/3.0"
  settings: {list_id: a1b2c3d4e5, status_if_new: pending}
  fields:
    email_address: {path: epost, transform: [trim, lower]}
    FNAME: {path: namn, transform: [first_word]}
    LNAME: {path: namn, transform: [rest_words]}
    tags: some_tags
  options: {batch_wait: 50ms, retry: {base: 20ms, cap: 100ms, max_attempts: 30}}
"""

RECORD = {"epost": "Åsa.Öberg@Exempel.se", "namn": "Åsa Öberg Ström", "some_tags": ["kött", "fisk"]}


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILCHIMP_API_KEY", API_KEY)


def compiled(entry: str = ENTRY) -> CompiledIntegration:
    text = "group_key: shop\nintegrations:\n" + "\n".join(
        "  " + line for line in entry.replace('    base_url: "{url}/3.0"\n', "").splitlines()
    )
    env = {"MAILCHIMP_API_KEY": API_KEY}
    return compile_mapping(yaml.safe_load(text), text.encode(), environ=env).integrations[0]


async def test_the_request_is_the_call_mailchimps_sdk_makes(tmp_path: Path) -> None:
    fake = vendor_fakes.mailchimp()
    sent, done = await engine_requests(tmp_path, ENTRY, [RECORD], fake)
    assert [d.state for d in done] == [DeliveryState.DELIVERED]

    import mailchimp_marketing

    def sdk(url: str) -> None:
        client = mailchimp_marketing.Client()
        client.set_config({"api_key": API_KEY})
        client.api_client.host = url + "/3.0"
        client.lists.batch_list_members(
            "a1b2c3d4e5",
            {
                "members": [
                    {
                        "email_address": "åsa.öberg@exempel.se",
                        "status": "pending",
                        "tags": ["kött", "fisk"],
                        "merge_fields": {"FNAME": "Åsa", "LNAME": "Öberg Ström"},
                    }
                ],
                "update_existing": True,
            },
        )

    oracle = await sdk_capture(sdk, fake)
    ours, theirs = call_of(sent[0]), call_of(oracle[0])
    # Basic auth: Mailchimp takes any user name; the key is the password.
    assert ours[3][0] == theirs[3][0] == "basic"
    assert ours[3][1].split(":", 1)[1] == theirs[3][1].split(":", 1)[1] == API_KEY
    assert (ours[:3], ours[4]) == (theirs[:3], theirs[4])


def test_the_data_centre_comes_from_the_key() -> None:
    integ = compiled()
    assert base_url(integ) == "https://us19.api.mailchimp.com/3.0"
    [req] = integ.type.build(integ, [("dlv_a", {"email_address": "a@x.se"})])  # type: ignore[misc]
    assert req.url == "https://us19.api.mailchimp.com/3.0/lists/a1b2c3d4e5"


def test_batches_hold_500_members_and_never_one_address_twice() -> None:
    integ = compiled()
    batch = [(f"dlv_{n:04d}", {"email_address": f"u{n}@x.se"}) for n in range(700)]
    batch.append(("dlv_dup", {"email_address": "U5@x.se"}))
    requests = integ.type.build(integ, batch)  # type: ignore[misc]
    assert [len(r.delivery_ids) for r in requests] == [500, 200, 1]
    assert orjson.loads(requests[0].body)["update_existing"] is True


def test_a_bad_status_or_missing_address_fails_alone() -> None:
    integ = compiled()
    with pytest.raises(BuildErrors) as caught:
        integ.type.build(  # type: ignore[misc]
            integ,
            [
                ("dlv_a", {"FNAME": "Åsa"}),
                ("dlv_b", {"email_address": "b@x.se", "status": "maybe"}),
                ("dlv_c", {"email_address": "c@x.se"}),
            ],
        )
    assert set(caught.value.errors) == {"dlv_a", "dlv_b"}
    assert "email_address" in str(caught.value.errors["dlv_a"])
    assert "'maybe'" in str(caught.value.errors["dlv_b"])


@pytest.mark.parametrize("bad", ["fname", "FIRST_NAME_X", "1NAME"])
def test_merge_tags_are_checked_at_load(bad: str) -> None:
    with pytest.raises(SpecErrors) as caught:
        compiled(ENTRY.replace("    tags: some_tags", f"    {bad}: namn"))
    assert any(bad in str(e) and "merge tag" in str(e) for e in caught.value.errors)


# -- the fake's answer shapes --------------------------------------------------------------


def _records(*emails: str) -> list[dict[str, Any]]:
    return [{"epost": e, "namn": "Åsa Öberg", "some_tags": ["a"]} for e in emails]


async def test_success_delivers_the_batch_in_one_request(tmp_path: Path) -> None:
    fake = vendor_fakes.mailchimp()
    sent, done = await engine_requests(tmp_path, ENTRY, _records("a@x.se", "b@x.se"), fake)
    assert len(sent) == 1
    assert all(d.state == DeliveryState.DELIVERED for d in done)


async def test_per_member_errors_kill_only_that_member_with_mailchimps_message(
    tmp_path: Path,
) -> None:
    fake = vendor_fakes.mailchimp()
    sent, done = await engine_requests(
        tmp_path, ENTRY, _records("a@x.se", "invalid@x.se", "c@x.se"), fake
    )
    assert len(sent) == 1
    assert [d.state for d in done] == [
        DeliveryState.DELIVERED,
        DeliveryState.DEAD,
        DeliveryState.DELIVERED,
    ]
    assert "looks fake or invalid" in (done[1].last_error or "")
    assert "ERROR_GENERIC" in (done[1].last_error or "")


async def test_too_many_connections_retries(tmp_path: Path) -> None:
    fake = vendor_fakes.mailchimp()
    fake.plan = ["rate_limit"]
    _, done = await engine_requests(tmp_path, ENTRY, _records("a@x.se"), fake)
    assert done[0].state == DeliveryState.DELIVERED
    assert fake.answered == ["rate_limit", "success"]


async def test_a_bad_key_is_permanent_with_mailchimps_title_and_detail(tmp_path: Path) -> None:
    fake = vendor_fakes.mailchimp()
    fake.default = "bad_key"
    sent, done = await engine_requests(tmp_path, ENTRY, _records("a@x.se", "b@x.se"), fake)
    assert len(sent) == 1
    assert all(d.state == DeliveryState.DEAD for d in done)
    assert (done[0].last_error or "").startswith("HTTP 401: API Key Invalid: Your API key")


async def test_server_errors_retry(tmp_path: Path) -> None:
    fake = vendor_fakes.mailchimp()
    fake.plan = ["server_error"]
    _, done = await engine_requests(tmp_path, ENTRY, _records("a@x.se"), fake)
    assert done[0].state == DeliveryState.DELIVERED
    assert fake.answered == ["server_error", "success"]
