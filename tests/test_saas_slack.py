"""The ``slack`` type: the same call as slack-sdk's WebhookClient, and the delivery engine
against a fake incoming webhook answering Slack's ok, invalid_payload, channel_is_archived,
429 + Retry-After, invalid_token and rollup_error shapes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from gateway.integrations.base import BuildErrors
from gateway.mapping.errors import SpecErrors
from gateway.mapping.model import CompiledIntegration, compile_mapping
from gateway.mapping.preview import redact_request
from gateway.store.base import DeliveryState
from tests.support import vendor_fakes
from tests.support.saas import call_of, engine_requests, sdk_capture

pytestmark = pytest.mark.e2e  # real local servers and the delivery engine

HOOK_PATH = "/services/T0AB12CD3/B0EF45GH6/x7Y8z9A0b1C2d3E4f5G6h7I8"
HOOK = "https://hooks.slack.com" + HOOK_PATH

ENTRY = """\
- name: saas
  type: slack
  connection:
    webhook_url: "${SLACK_WEBHOOK_URL}"
    base_url: "{url}"
  settings:
    text: "Ny kund: *{namn}* <mailto:{epost}|{epost}> ({taggar})"
    blocks:
      - type: section
        text: {type: mrkdwn, text: "*{namn}* vill ha: {taggar}"}
  fields:
    namn: namn
    epost: {path: epost, transform: [trim, lower]}
    taggar: some_tags
  options: {retry: {base: 20ms, cap: 100ms, max_attempts: 30}}
"""

RECORD = {"epost": "Åsa.Öberg@Exempel.se", "namn": "Åsa Öberg", "some_tags": ["kött", "fisk"]}


@pytest.fixture(autouse=True)
def _hook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_WEBHOOK_URL", HOOK)


def compiled(entry: str = ENTRY) -> CompiledIntegration:
    text = "group_key: shop\nintegrations:\n" + "\n".join(
        "  " + line for line in entry.replace('    base_url: "{url}"\n', "").splitlines()
    )
    env = {"SLACK_WEBHOOK_URL": HOOK}
    return compile_mapping(yaml.safe_load(text), text.encode(), environ=env).integrations[0]


async def test_the_request_is_the_call_slacks_webhook_client_makes(tmp_path: Path) -> None:
    fake = vendor_fakes.slack()
    sent, done = await engine_requests(tmp_path, ENTRY, [RECORD], fake)
    assert [d.state for d in done] == [DeliveryState.DELIVERED]

    from slack_sdk.webhook import WebhookClient

    def sdk(url: str) -> None:
        WebhookClient(url + HOOK_PATH).send(
            text="Ny kund: *Åsa Öberg* <mailto:åsa.öberg@exempel.se|åsa.öberg@exempel.se> "
            "(kött, fisk)",
            blocks=[
                {
                    "type": "section",
                    "text": {"type": "mrkdwn", "text": "*Åsa Öberg* vill ha: kött, fisk"},
                }
            ],
        )

    oracle = await sdk_capture(sdk, fake)
    assert call_of(sent[0]) == call_of(oracle[0])
    assert sent[0].path == HOOK_PATH


def test_record_values_cannot_inject_slack_markup() -> None:
    integ = compiled()
    [req] = integ.type.build(  # type: ignore[misc]
        integ,
        [("dlv_a", {"namn": "<!channel> & <https://evil.example|klicka>", "epost": "a@x.se"})],
    )
    text = orjson.loads(req.body)["text"]
    assert "<!channel>" not in text
    assert "&lt;!channel&gt; &amp; &lt;https://evil.example|klicka&gt;" in text
    assert "<mailto:a@x.se|a@x.se>" in text  # the template's own markup stays


def test_the_webhook_url_never_shows_in_a_preview() -> None:
    integ = compiled()
    [req] = integ.type.build(integ, [("dlv_a", {"namn": "Åsa"})])  # type: ignore[misc]
    assert req.url == HOOK
    secrets = [HOOK]
    shown = redact_request(req, secrets)
    assert HOOK_PATH not in str(shown)


def test_a_message_without_text_fails_alone() -> None:
    entry = ENTRY.replace('    text: "Ny kund: *{namn}* <mailto:{epost}|{epost}> ({taggar})"\n', "")
    entry = entry.replace(
        "    blocks:\n      - type: section\n"
        '        text: {type: mrkdwn, text: "*{namn}* vill ha: {taggar}"}\n',
        "",
    ).replace("  settings:\n", "  settings: {}\n")
    integ = compiled(entry.replace("    namn: namn\n", "    text: namn\n"))
    with pytest.raises(BuildErrors) as caught:
        integ.type.build(integ, [("dlv_a", {}), ("dlv_b", {"text": "hej"})])  # type: ignore[misc]
    assert set(caught.value.errors) == {"dlv_a"}


def test_placeholders_must_be_mapped_fields_at_load() -> None:
    with pytest.raises(SpecErrors) as caught:
        compiled(ENTRY.replace("    taggar: some_tags\n", ""))
    assert any("{taggar}" in str(e) for e in caught.value.errors)


# -- the fake's answer shapes --------------------------------------------------------------


def _records(n: int) -> list[dict[str, Any]]:
    return [{"epost": f"u{i}@x.se", "namn": "Åsa", "some_tags": ["a"]} for i in range(n)]


async def test_ok_delivers_one_message_a_record(tmp_path: Path) -> None:
    sent, done = await engine_requests(tmp_path, ENTRY, _records(2), vendor_fakes.slack())
    assert len(sent) == 2
    assert all(d.state == DeliveryState.DELIVERED for d in done)


@pytest.mark.parametrize(
    ("shape", "status"),
    [
        ("invalid_payload", 400),
        ("channel_is_archived", 410),
        ("invalid_token", 403),
        ("no_service", 404),
    ],
)
async def test_refusals_are_permanent_with_slacks_error_word(
    tmp_path: Path, shape: str, status: int
) -> None:
    fake = vendor_fakes.slack()
    fake.default = shape
    sent, done = await engine_requests(tmp_path, ENTRY, _records(1), fake)
    assert len(sent) == 1
    assert done[0].state == DeliveryState.DEAD
    assert done[0].last_error == f"HTTP {status}: {shape}"


async def test_rate_limit_waits_for_retry_after(tmp_path: Path) -> None:
    fake = vendor_fakes.slack(retry_after="1")
    fake.plan = ["rate_limit"]
    sent, done = await engine_requests(tmp_path, ENTRY, _records(1), fake)
    assert done[0].state == DeliveryState.DELIVERED
    assert len(sent) == 2
    assert sent[1].at - sent[0].at >= 0.95


async def test_server_errors_retry(tmp_path: Path) -> None:
    fake = vendor_fakes.slack()
    fake.plan = ["server_error"]
    sent, done = await engine_requests(tmp_path, ENTRY, _records(1), fake)
    assert done[0].state == DeliveryState.DELIVERED
    assert fake.answered == ["server_error", "success"]
    assert sent[0].body == sent[1].body


def test_the_webhook_path_stays_hidden_when_sent_to_another_host() -> None:
    from gateway.mapping.preview import preview

    text = "group_key: shop\nintegrations:\n" + "\n".join(
        "  " + line for line in ENTRY.replace("{url}", "http://127.0.0.1:9").splitlines()
    )
    env = {"SLACK_WEBHOOK_URL": HOOK}
    mapping = compile_mapping(yaml.safe_load(text), text.encode(), environ=env)
    doc = preview(mapping, RECORD)
    shown = str(doc)
    assert "x7Y8z9A0b1C2d3E4f5G6h7I8" not in shown
    assert "http://127.0.0.1:9" in shown
