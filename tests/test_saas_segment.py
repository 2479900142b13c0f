"""The ``segment`` type: the same call as Segment's own Python library
(segment-analytics-python), and the delivery engine against a fake of /v1/batch answering
Segment's success, 400, 429 + Retry-After, bad-key and 5xx shapes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from gateway.integrations.base import BuildErrors
from gateway.integrations.segment import received_at
from gateway.mapping.errors import SpecErrors
from gateway.mapping.model import CompiledIntegration, compile_mapping
from gateway.store.base import DeliveryState
from tests.support import vendor_fakes
from tests.support.saas import call_of, engine_requests, sdk_capture

pytestmark = pytest.mark.e2e  # real local servers and the delivery engine

WRITE_KEY = "wk_9Zx8Yv7Ut6Sr5Qp4"

IDENTIFY = """\
- name: saas
  type: segment
  action: identify
  connection:
    write_key: "${SEGMENT_WRITE_KEY}"
    base_url: "{url}"
  fields:
    userId: {path: epost, transform: [trim, lower]}
    traits.email: {path: epost, transform: [trim, lower]}
    traits.firstName: {path: namn, transform: [first_word]}
    traits.lastName: {path: namn, transform: [rest_words]}
    traits.tags: some_tags
  options: {batch_wait: 50ms, retry: {base: 20ms, cap: 100ms, max_attempts: 30}}
"""

TRACK = """\
- name: saas
  type: segment
  action: track
  connection:
    write_key: "${SEGMENT_WRITE_KEY}"
    base_url: "{url}"
  fields:
    userId: {path: epost, transform: [trim, lower]}
    event: {value: Signed Up}
    properties.name: namn
    properties.tags: some_tags
  options: {batch_wait: 50ms, retry: {base: 20ms, cap: 100ms, max_attempts: 30}}
"""

RECORD = {"epost": "Åsa.Öberg@Exempel.se", "namn": "Åsa Öberg Ström", "some_tags": ["kött", "fisk"]}


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGMENT_WRITE_KEY", WRITE_KEY)


def compiled(entry: str = IDENTIFY) -> CompiledIntegration:
    text = "group_key: shop\nintegrations:\n" + "\n".join(
        "  " + line for line in entry.replace("{url}", "https://api.segment.io").splitlines()
    )
    env = {"SEGMENT_WRITE_KEY": WRITE_KEY}
    return compile_mapping(yaml.safe_load(text), text.encode(), environ=env).integrations[0]


def _without_library_stamp(call: tuple[Any, ...]) -> tuple[Any, ...]:
    # What only says which library sent the batch and when it left (sentAt,
    # context.library) is not part of the call. The library also repeats the write key in
    # the body; the gateway sends it once, in the basic auth Segment documents (compared
    # as the auth of the call), so a secret is not copied into every body.
    body = dict(call[4])
    body.pop("sentAt", None)
    assert body.pop("writeKey", WRITE_KEY) == WRITE_KEY
    for msg in body["batch"]:
        msg["context"].pop("library", None)
    return (*call[:4], body)


def _when(delivery_id: str) -> dt.datetime:
    return dt.datetime.fromisoformat(received_at(delivery_id))


async def test_identify_is_the_call_segments_library_makes(tmp_path: Path) -> None:
    fake = vendor_fakes.segment()
    sent, done = await engine_requests(tmp_path, IDENTIFY, [RECORD], fake)
    assert [d.state for d in done] == [DeliveryState.DELIVERED]

    from segment.analytics import Client

    def sdk(url: str) -> None:
        client = Client(WRITE_KEY, host=url, sync_mode=True, gzip=False, max_retries=0)
        client.identify(
            user_id="åsa.öberg@exempel.se",
            traits={
                "email": "åsa.öberg@exempel.se",
                "firstName": "Åsa",
                "lastName": "Öberg Ström",
                "tags": ["kött", "fisk"],
            },
            timestamp=_when(done[0].id),
            message_id=done[0].id,
        )

    oracle = await sdk_capture(sdk, fake)
    assert call_of(sent[0]) == _without_library_stamp(call_of(oracle[0]))
    assert call_of(sent[0])[3] == ("basic", WRITE_KEY + ":")


async def test_track_is_the_call_segments_library_makes(tmp_path: Path) -> None:
    fake = vendor_fakes.segment()
    sent, done = await engine_requests(tmp_path, TRACK, [RECORD], fake)
    assert [d.state for d in done] == [DeliveryState.DELIVERED]

    from segment.analytics import Client

    def sdk(url: str) -> None:
        client = Client(WRITE_KEY, host=url, sync_mode=True, gzip=False, max_retries=0)
        client.track(
            user_id="åsa.öberg@exempel.se",
            event="Signed Up",
            properties={"name": "Åsa Öberg Ström", "tags": ["kött", "fisk"]},
            timestamp=_when(done[0].id),
            message_id=done[0].id,
        )

    oracle = await sdk_capture(sdk, fake)
    assert call_of(sent[0]) == _without_library_stamp(call_of(oracle[0]))


def test_messages_over_32kb_fail_alone_and_batches_stay_under_500kb() -> None:
    integ = compiled()
    big = "x" * 40_000
    with pytest.raises(BuildErrors) as caught:
        integ.type.build(  # type: ignore[misc]
            integ, [("dlv_a", {"userId": "a", "traits.bio": big}), ("dlv_b", {"userId": "b"})]
        )
    assert set(caught.value.errors) == {"dlv_a"}
    assert "32768" in str(caught.value.errors["dlv_a"])
    batch = [(f"dlv_{n:04d}", {"userId": str(n), "traits.bio": "y" * 20_000}) for n in range(60)]
    requests = integ.type.build(integ, batch)  # type: ignore[misc]
    assert all(len(r.body) <= 500 * 1024 for r in requests)
    assert sum(len(r.delivery_ids) for r in requests) == 60
    assert len(requests) == 3


def test_a_message_needs_a_user_and_a_track_its_event() -> None:
    integ = compiled()
    with pytest.raises(BuildErrors) as caught:
        integ.type.build(integ, [("dlv_a", {"traits.email": "a@x.se"})])  # type: ignore[misc]
    assert "userId or anonymousId" in str(caught.value.errors["dlv_a"])
    track = compiled(TRACK)
    with pytest.raises(BuildErrors) as caught:
        track.type.build(track, [("dlv_b", {"userId": "u"})])  # type: ignore[misc]
    assert "event" in str(caught.value.errors["dlv_b"])


def test_field_names_are_checked_at_load() -> None:
    with pytest.raises(SpecErrors) as caught:
        compiled(IDENTIFY.replace("    traits.tags: some_tags", "    email: epost"))
    assert any("email" in str(e) and "not a valid name" in str(e) for e in caught.value.errors)


def test_nested_traits_and_the_mapped_timestamp() -> None:
    integ = compiled()
    [req] = integ.type.build(  # type: ignore[misc]
        integ,
        [
            (
                "dlv_a",
                {
                    "userId": "u",
                    "traits.address.city": "Malmö",
                    "timestamp": "2026-01-02T03:04:05Z",
                },
            )
        ],
    )
    msg = orjson.loads(req.body)["batch"][0]
    assert msg["traits"] == {"address": {"city": "Malmö"}}
    assert msg["timestamp"] == "2026-01-02T03:04:05Z"


# -- the fake's answer shapes --------------------------------------------------------------


def _records(n: int) -> list[dict[str, Any]]:
    return [{"epost": f"u{i}@x.se", "namn": "Åsa Öberg", "some_tags": ["a"]} for i in range(n)]


async def test_success_delivers_the_batch_in_one_request(tmp_path: Path) -> None:
    sent, done = await engine_requests(tmp_path, IDENTIFY, _records(3), vendor_fakes.segment())
    assert len(sent) == 1
    assert [m["messageId"] for m in sent[0].json()["batch"]] == [d.id for d in done]
    assert all(d.state == DeliveryState.DELIVERED for d in done)


async def test_a_refused_batch_is_dead_with_segments_message(tmp_path: Path) -> None:
    fake = vendor_fakes.segment()
    fake.default = "too_large"
    sent, done = await engine_requests(tmp_path, IDENTIFY, _records(2), fake)
    assert len(sent) == 1
    assert all(d.state == DeliveryState.DEAD for d in done)
    assert "batch size exceeds 500KB" in (done[0].last_error or "")


async def test_rate_limit_waits_for_retry_after(tmp_path: Path) -> None:
    fake = vendor_fakes.segment(retry_after="1")
    fake.plan = ["rate_limit"]
    sent, done = await engine_requests(tmp_path, IDENTIFY, _records(2), fake)
    assert all(d.state == DeliveryState.DELIVERED for d in done)
    assert len(sent) >= 2  # the retries may travel together or apart
    assert all(later.at - sent[0].at >= 0.95 for later in sent[1:])


async def test_a_bad_write_key_is_permanent(tmp_path: Path) -> None:
    fake = vendor_fakes.segment()
    fake.default = "bad_key"
    sent, done = await engine_requests(tmp_path, IDENTIFY, _records(1), fake)
    assert len(sent) == 1
    assert done[0].state == DeliveryState.DEAD
    assert "Invalid write key" in (done[0].last_error or "")


async def test_server_errors_retry_with_the_same_message_ids(tmp_path: Path) -> None:
    fake = vendor_fakes.segment()
    fake.plan = ["server_error"]
    sent, done = await engine_requests(tmp_path, IDENTIFY, _records(2), fake)
    assert all(d.state == DeliveryState.DELIVERED for d in done)
    first, *retries = [[m["messageId"] for m in r.json()["batch"]] for r in sent]
    assert first == [d.id for d in done]
    # Retried deliveries may travel together or apart, each with its own message id again.
    assert sorted(i for r in retries for i in r) == sorted(first)
