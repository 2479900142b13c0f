"""aws_sns and aws_eventbridge: against moto's server with signature checking on, and against
a local server answering with the bodies the real services give for partial failures and
throttling (moto cannot produce those)."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.integrations import aws
from gateway.store.base import DeliveryState
from tests import test_aws_integrations
from tests.support.delivery_rig import Rig
from tests.support.moto_server import MotoServer
from tests.support.receiver import Answer, Received, Receiver
from tests.test_aws_integrations import entry

pytestmark = pytest.mark.e2e

# The module-scoped moto server and the fixture putting its keys in the environment.
moto = test_aws_integrations.moto
keys = test_aws_integrations.keys

BIG = "x" * 300_000  # over the 256 KiB of a message / an event


def _drain(sqs: Any, url: str) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while True:
        batch = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            MessageAttributeNames=["All"],
            AttributeNames=["All"],
        ).get("Messages", [])
        if not batch:
            return got
        got += batch
        sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)
            ],
        )


def _queue(server: MotoServer, name: str, fifo: bool = False) -> tuple[str, str]:
    sqs = server.client("sqs")
    attrs = {"FifoQueue": "true"} if fifo else {}
    url = sqs.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    return url, arn


def _subscribed_topic(server: MotoServer, name: str, fifo: bool = False) -> tuple[str, str]:
    """A topic and an SQS queue subscribed to it with raw message delivery: (topic, queue url)."""
    sns = server.client("sns")
    suffix = ".fifo" if fifo else ""
    attrs = {"FifoTopic": "true"} if fifo else {}
    topic = sns.create_topic(Name=name + suffix, Attributes=attrs)["TopicArn"]
    url, arn = _queue(server, f"{name}-q{suffix}", fifo)
    sns.subscribe(
        TopicArn=topic,
        Protocol="sqs",
        Endpoint=arn,
        Attributes={"RawMessageDelivery": "true"},
    )
    return topic, url


# -- SNS on moto ---------------------------------------------------------------------------


async def test_sns_messages_reach_a_subscribed_queue_as_mapped(
    tmp_path: Path, keys: MotoServer
) -> None:
    topic, url = _subscribed_topic(keys, "signups")
    rig = await Rig.create(
        tmp_path,
        [
            entry(
                "topic",
                "aws_sns",
                keys.connection(topic_arn=topic),
                {"email": "email", "n": "n"},
                {"message_attributes": ["n", "email"]},
            )
        ],
    )
    try:
        ids = [
            d for i in range(25) for d in await rig.add(["topic"], {"email": f"{i}@x.se", "n": i})
        ]
        for d in await rig.wait_settled(ids):
            assert d.state == DeliveryState.DELIVERED, d.last_error
        got = _drain(keys.client("sqs"), url)
        bodies = sorted((json.loads(m["Body"]) for m in got), key=lambda b: b["n"])
        assert bodies == [{"email": f"{i}@x.se", "n": i} for i in range(25)]
        for m in got:
            attrs = m["MessageAttributes"]
            n = json.loads(m["Body"])["n"]
            assert attrs["n"] == {"DataType": "Number", "StringValue": str(n)}
            assert attrs["email"] == {"DataType": "String", "StringValue": f"{n}@x.se"}
    finally:
        await rig.close()


async def test_sns_fifo_topic_group_and_dedup_ids(tmp_path: Path, keys: MotoServer) -> None:
    topic, url = _subscribed_topic(keys, "orders", fifo=True)
    rig = await Rig.create(
        tmp_path,
        [
            entry(
                "topic",
                "aws_sns",
                keys.connection(topic_arn=topic),
                {"email": "email", "n": "n"},
                {"message_group_id": "email"},
            )
        ],
        start=False,
    )
    try:
        ids = [d for i in range(3) for d in await rig.add(["topic"], {"email": "a@x.se", "n": i})]
        await rig.engine.start()
        for d in await rig.wait_settled(ids):
            assert d.state == DeliveryState.DELIVERED, d.last_error
        got = _drain(keys.client("sqs"), url)
        assert [json.loads(m["Body"])["n"] for m in got] == [0, 1, 2]  # in order
        assert {m["Attributes"]["MessageGroupId"] for m in got} == {"a@x.se"}
        assert [m["Attributes"]["MessageDeduplicationId"] for m in got] == ids
    finally:
        await rig.close()


async def test_sns_fifo_record_without_a_group_id_is_dead_others_delivered(
    tmp_path: Path, keys: MotoServer
) -> None:
    topic, url = _subscribed_topic(keys, "nogroup", fifo=True)
    rig = await Rig.create(
        tmp_path,
        [
            entry(
                "topic",
                "aws_sns",
                keys.connection(topic_arn=topic),
                {"email": "email", "n": "n"},
                {"message_group_id": "email"},
            )
        ],
        start=False,
    )
    try:
        [ok] = await rig.add(["topic"], {"email": "a@x.se", "n": 1})
        [bad] = await rig.add(["topic"], {"n": 2})
        await rig.engine.start()
        d_ok, d_bad = await rig.wait_settled([ok, bad])
        assert d_ok.state == DeliveryState.DELIVERED, d_ok.last_error
        assert d_bad.state == DeliveryState.DEAD
        assert "MessageGroupId comes from field 'email'" in d_bad.last_error
        assert [json.loads(m["Body"])["n"] for m in _drain(keys.client("sqs"), url)] == [1]
    finally:
        await rig.close()


async def test_sns_record_over_the_size_limit_is_dead_others_delivered(
    tmp_path: Path, keys: MotoServer
) -> None:
    topic, url = _subscribed_topic(keys, "sizes")
    rig = await Rig.create(
        tmp_path,
        [
            entry(
                "topic",
                "aws_sns",
                keys.connection(topic_arn=topic),
                {"n": "n", "blob": "blob"},
            )
        ],
        start=False,
    )
    try:
        [a] = await rig.add(["topic"], {"n": 1, "blob": "small"})
        [big] = await rig.add(["topic"], {"n": 2, "blob": BIG})
        [b] = await rig.add(["topic"], {"n": 3, "blob": "small"})
        await rig.engine.start()
        da, dbig, db = await rig.wait_settled([a, big, b])
        assert (da.state, db.state) == (DeliveryState.DELIVERED, DeliveryState.DELIVERED)
        assert dbig.state == DeliveryState.DEAD
        assert dbig.attempts <= 1
        assert "over the 262,144-byte limit of an SNS message" in dbig.last_error
        assert sorted(json.loads(m["Body"])["n"] for m in _drain(keys.client("sqs"), url)) == [
            1,
            3,
        ]
    finally:
        await rig.close()


# -- EventBridge on moto -------------------------------------------------------------------


def _bus_to_queue(server: MotoServer, bus: str, source: str) -> str:
    """A custom bus with a rule on ``source`` whose target is a fresh queue: its URL."""
    events = server.client("events")
    events.create_event_bus(Name=bus)
    url, arn = _queue(server, f"{bus}-events")
    events.put_rule(
        Name="to-queue", EventBusName=bus, EventPattern=json.dumps({"source": [source]})
    )
    events.put_targets(Rule="to-queue", EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])
    return url


async def test_eventbridge_events_reach_a_rules_queue_on_a_custom_bus(
    tmp_path: Path, keys: MotoServer
) -> None:
    url = _bus_to_queue(keys, "shop-bus", "com.example.shop")
    rig = await Rig.create(
        tmp_path,
        [
            entry(
                "bus",
                "aws_eventbridge",
                keys.connection(event_bus_name="shop-bus"),
                {"email": "email", "n": "n", "kind": "kind"},
                {
                    "source": "com.example.shop",
                    "detail_type": "signup",
                    "detail_type_field": "kind",
                },
            )
        ],
    )
    try:
        ids = []
        for i in range(12):
            data: dict[str, Any] = {"email": f"{i}@x.se", "n": i}
            if i % 2:
                data["kind"] = "order"
            ids += await rig.add(["bus"], data)
        for d in await rig.wait_settled(ids):
            assert d.state == DeliveryState.DELIVERED, d.last_error
        events = sorted(
            (json.loads(m["Body"]) for m in _drain(keys.client("sqs"), url)),
            key=lambda e: e["detail"]["n"],
        )
        assert [e["detail"]["n"] for e in events] == list(range(12))
        assert {e["source"] for e in events} == {"com.example.shop"}
        for e in events:
            n = e["detail"]["n"]
            assert e["detail-type"] == ("order" if n % 2 else "signup")
            assert e["detail"] == {
                "email": f"{n}@x.se",
                "n": n,
                **({"kind": "order"} if n % 2 else {}),
            }
    finally:
        await rig.close()


async def test_eventbridge_source_from_a_field_and_bus_from_a_field(
    tmp_path: Path, keys: MotoServer
) -> None:
    url = _bus_to_queue(keys, "billing-bus", "com.example.billing")
    rig = await Rig.create(
        tmp_path,
        [
            entry(
                "bus",
                "aws_eventbridge",
                keys.connection(),  # no bus here: each record names its own
                {"app": "app", "bus": "bus", "n": "n"},
                {"source_field": "app", "detail_type": "invoice", "event_bus_field": "bus"},
            )
        ],
        start=False,
    )
    try:
        [ok] = await rig.add(["bus"], {"app": "com.example.billing", "bus": "billing-bus", "n": 1})
        [no_source] = await rig.add(["bus"], {"bus": "billing-bus", "n": 2})
        await rig.engine.start()
        d_ok, d_none = await rig.wait_settled([ok, no_source])
        assert d_ok.state == DeliveryState.DELIVERED, d_ok.last_error
        assert d_none.state == DeliveryState.DEAD
        assert "Source comes from field 'app'" in d_none.last_error
        [event] = [json.loads(m["Body"]) for m in _drain(keys.client("sqs"), url)]
        assert (event["source"], event["detail-type"]) == ("com.example.billing", "invoice")
    finally:
        await rig.close()


async def test_eventbridge_event_over_the_size_limit_is_dead_others_delivered(
    tmp_path: Path, keys: MotoServer
) -> None:
    url = _bus_to_queue(keys, "size-bus", "com.example.size")
    rig = await Rig.create(
        tmp_path,
        [
            entry(
                "bus",
                "aws_eventbridge",
                keys.connection(event_bus_name="size-bus"),
                {"n": "n", "blob": "blob"},
                {"source": "com.example.size", "detail_type": "blob"},
            )
        ],
        start=False,
    )
    try:
        [a] = await rig.add(["bus"], {"n": 1, "blob": "small"})
        [big] = await rig.add(["bus"], {"n": 2, "blob": BIG})
        [b] = await rig.add(["bus"], {"n": 3, "blob": "small"})
        await rig.engine.start()
        da, dbig, db = await rig.wait_settled([a, big, b])
        assert (da.state, db.state) == (DeliveryState.DELIVERED, DeliveryState.DELIVERED)
        assert dbig.state == DeliveryState.DEAD
        assert "over the 262,144-byte limit of an EventBridge event" in dbig.last_error
        got = [json.loads(m["Body"])["detail"]["n"] for m in _drain(keys.client("sqs"), url)]
        assert sorted(got) == [1, 3]
    finally:
        await rig.close()


def test_eventbridge_entry_size_is_awss_rule() -> None:
    from gateway.integrations.aws_eventbridge import entry_size

    e = {"Source": "é", "DetailType": "ab", "Detail": '{"a":1}', "EventBusName": "not-counted"}
    assert entry_size(e) == 2 + 2 + 7
    assert entry_size({**e, "Time": "2024-01-01T00:00:00Z", "Resources": ["arn:x"]}) == 11 + 14 + 5


@pytest.mark.parametrize(
    ("type_", "conn", "settings"),
    [
        ("aws_sns", "topic", {}),
        ("aws_eventbridge", "bus", {"source": "s", "detail_type": "t"}),
    ],
)
async def test_wrong_secret_is_permanent_with_awss_error(
    tmp_path: Path,
    keys: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
    type_: str,
    conn: str,
    settings: dict[str, str],
) -> None:
    if conn == "topic":
        extra = {"topic_arn": keys.client("sns").create_topic(Name="locked")["TopicArn"]}
    else:
        keys.client("events").create_event_bus(Name="locked-bus")
        extra = {"event_bus_name": "locked-bus"}
    monkeypatch.setenv("MOTO_SECRET", "not-the-secret")
    rig = await Rig.create(
        tmp_path, [entry("x", type_, keys.connection(**extra), {"email": "email"}, settings)]
    )
    try:
        [d] = await rig.wait_settled(await rig.add(["x"]))
        assert d.state == DeliveryState.DEAD
        assert d.attempts == 1
        assert d.last_error.startswith("AWS SignatureDoesNotMatch"), d.last_error
    finally:
        await rig.close()


# -- answers moto cannot give, from a local server -----------------------------------------

SNS_NS = "http://sns.amazonaws.com/doc/2010-03-31/"


def _sns_ok(ok: list[str], failed: list[tuple[str, str, str, bool]]) -> bytes:
    """PublishBatch's answer (query protocol, XML) as SNS gives it."""
    good = "".join(
        f"<member><Id>{i}</Id><MessageId>0b5e-{n}</MessageId></member>" for n, i in enumerate(ok)
    )
    bad = "".join(
        f"<member><Id>{i}</Id><Code>{code}</Code><Message>{msg}</Message>"
        f"<SenderFault>{str(sender).lower()}</SenderFault></member>"
        for i, code, msg, sender in failed
    )
    return (
        f'<PublishBatchResponse xmlns="{SNS_NS}"><PublishBatchResult>'
        f"<Successful>{good}</Successful><Failed>{bad}</Failed></PublishBatchResult>"
        "<ResponseMetadata><RequestId>4c2d-req</RequestId></ResponseMetadata>"
        "</PublishBatchResponse>"
    ).encode()


def _sns_error(code: str, message: str, kind: str = "Sender") -> bytes:
    return (
        f'<ErrorResponse xmlns="{SNS_NS}"><Error><Type>{kind}</Type><Code>{code}</Code>'
        f"<Message>{message}</Message></Error><RequestId>4c2d-req</RequestId></ErrorResponse>"
    ).encode()


def _sns_ids(r: Received) -> list[str]:
    form = urllib.parse.parse_qs(r.body.decode())
    assert form["Action"] == ["PublishBatch"]
    n = 1
    ids = []
    while f"PublishBatchRequestEntries.member.{n}.Id" in form:
        ids += form[f"PublishBatchRequestEntries.member.{n}.Id"]
        n += 1
    return ids


def _events_ns(r: Received) -> list[int]:
    assert r.headers["X-Amz-Target"] == "AWSEvents.PutEvents"
    return [json.loads(e["Detail"])["n"] for e in r.json()["Entries"]]


XML = {"Content-Type": "text/xml"}
JSON11 = {"Content-Type": "application/x-amz-json-1.1"}


@pytest.fixture
async def fake_aws(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Receiver]:
    monkeypatch.setenv("MOTO_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("MOTO_SECRET", "secret")
    aws.forget_clients()
    r = await Receiver().start()
    yield r
    await r.stop()


def _fake_entry(type_: str, url: str) -> str:
    conn = {
        "region": "us-east-1",
        "endpoint_url": url,
        "access_key_id": "${MOTO_KEY_ID}",
        "secret_access_key": "${MOTO_SECRET}",
    }
    if type_ == "aws_sns":
        conn["topic_arn"] = "arn:aws:sns:us-east-1:123456789012:signups"
        return entry("x", type_, conn, {"email": "email", "n": "n"})
    conn["event_bus_name"] = "shop-bus"
    settings = {"source": "com.example.shop", "detail_type": "signup"}
    return entry("x", type_, conn, {"email": "email", "n": "n"}, settings)


async def _three(tmp_path: Path, type_: str, receiver: Receiver) -> tuple[Rig, list[str]]:
    """A rig with three records queued before the engine starts (one batch)."""
    rig = await Rig.create(tmp_path, [_fake_entry(type_, receiver.url)], start=False)
    ids = [d for n in range(3) for d in await rig.add(["x"], {"email": f"{n}@x.se", "n": n})]
    await rig.engine.start()
    return rig, ids


async def test_sns_retries_only_the_throttled_entry(tmp_path: Path, fake_aws: Receiver) -> None:
    calls: list[list[str]] = []

    def answer(r: Received) -> Answer:
        ids = _sns_ids(r)
        calls.append(ids)
        if len(calls) == 1:  # first: one throttled, one invalid, one published
            body = _sns_ok(
                [ids[2]],
                [
                    (ids[0], "Throttled", "Rate exceeded", True),
                    (ids[1], "InvalidParameter", "Invalid parameter: Message too long", True),
                ],
            )
        else:
            body = _sns_ok(ids, [])
        return Answer(200, XML, body)

    fake_aws.answer = answer
    rig, ids = await _three(tmp_path, "aws_sns", fake_aws)
    try:
        throttled, invalid, published = await rig.wait_settled(ids)
        assert calls[0] == ids
        assert calls[1:] == [[ids[0]]]  # only the throttled one again
        assert throttled.state == DeliveryState.DELIVERED
        assert throttled.attempts == 2
        assert published.state == DeliveryState.DELIVERED
        assert published.attempts == 1
        assert invalid.state == DeliveryState.DEAD
        assert invalid.attempts == 1
        assert invalid.last_error.startswith(
            "AWS InvalidParameter: Invalid parameter: Message too long"
        ), invalid.last_error
    finally:
        await rig.close()


async def test_eventbridge_retries_only_the_throttled_entry(
    tmp_path: Path, fake_aws: Receiver
) -> None:
    calls: list[list[int]] = []

    def answer(r: Received) -> Answer:
        ns = _events_ns(r)
        calls.append(ns)
        if len(calls) == 1:  # positional: throttled, invalid, put
            body = {
                "FailedEntryCount": 2,
                "Entries": [
                    {"ErrorCode": "ThrottlingException", "ErrorMessage": "Rate exceeded."},
                    {
                        "ErrorCode": "InvalidArgument",
                        "ErrorMessage": "Parameter DetailType is not valid.",
                    },
                    {"EventId": "11710aed-b79e-4468-a20b-bb3c0c3b4860"},
                ],
            }
        else:
            body = {"FailedEntryCount": 0, "Entries": [{"EventId": f"e-{n}"} for n in ns]}
        return Answer(200, JSON11, json.dumps(body).encode())

    fake_aws.answer = answer
    rig, ids = await _three(tmp_path, "aws_eventbridge", fake_aws)
    try:
        throttled, invalid, put = await rig.wait_settled(ids)
        assert calls == [[0, 1, 2], [0]]
        assert throttled.state == DeliveryState.DELIVERED
        assert throttled.attempts == 2
        assert put.state == DeliveryState.DELIVERED
        assert put.attempts == 1
        assert invalid.state == DeliveryState.DEAD
        assert invalid.attempts == 1
        assert invalid.last_error.startswith(
            "AWS InvalidArgument: Parameter DetailType is not valid."
        ), invalid.last_error
        first = fake_aws.requests[0].json()["Entries"][0]
        assert first["EventBusName"] == "shop-bus"
        assert (first["Source"], first["DetailType"]) == ("com.example.shop", "signup")
    finally:
        await rig.close()


async def test_eventbridge_answer_with_fewer_entries_retries_all(
    tmp_path: Path, fake_aws: Receiver
) -> None:
    calls: list[list[int]] = []

    def answer(r: Received) -> Answer:
        ns = _events_ns(r)
        calls.append(ns)
        entries = [{"EventId": f"e-{n}"} for n in ns]
        if len(calls) == 1:
            entries = entries[:1]  # which of the three is that? nobody can say
        body = {"FailedEntryCount": 0, "Entries": entries}
        return Answer(200, JSON11, json.dumps(body).encode())

    fake_aws.answer = answer
    rig, ids = await _three(tmp_path, "aws_eventbridge", fake_aws)
    try:
        for d in await rig.wait_settled(ids):
            assert d.state == DeliveryState.DELIVERED
            assert d.attempts == 2
        assert calls[0] == [0, 1, 2]
        assert sorted(n for c in calls[1:] for n in c) == [0, 1, 2]  # each sent once more
    finally:
        await rig.close()


WHOLE_REQUEST: dict[str, Callable[[], Answer]] = {
    "sns-throttling": lambda: Answer(400, XML, _sns_error("Throttling", "Rate exceeded")),
    "sns-throttled-429": lambda: Answer(429, XML, _sns_error("Throttled", "Rate exceeded")),
    "sns-internal": lambda: Answer(
        500, XML, _sns_error("InternalError", "Internal error", "Receiver")
    ),
    "events-throttling": lambda: Answer(
        400,
        JSON11,
        json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded."}).encode(),
    ),
    "events-internal": lambda: Answer(
        500, JSON11, json.dumps({"__type": "InternalException", "message": "oops"}).encode()
    ),
}


@pytest.mark.parametrize("case", sorted(WHOLE_REQUEST))
async def test_whole_request_throttling_retries_then_delivers(
    tmp_path: Path, fake_aws: Receiver, case: str
) -> None:
    type_ = "aws_sns" if case.startswith("sns") else "aws_eventbridge"
    seen = 0

    def answer(r: Received) -> Answer:
        nonlocal seen
        seen += 1
        if seen == 1:
            return WHOLE_REQUEST[case]()
        if type_ == "aws_sns":
            return Answer(200, XML, _sns_ok(_sns_ids(r), []))
        ns = _events_ns(r)
        body = {"FailedEntryCount": 0, "Entries": [{"EventId": f"e-{n}"} for n in ns]}
        return Answer(200, JSON11, json.dumps(body).encode())

    fake_aws.answer = answer
    rig, ids = await _three(tmp_path, type_, fake_aws)
    try:
        for d in await rig.wait_settled(ids):
            assert d.state == DeliveryState.DELIVERED, d.last_error
            assert d.attempts == 2
    finally:
        await rig.close()


@pytest.mark.parametrize(
    ("type_", "status", "body", "expect"),
    [
        (
            "aws_sns",
            403,
            _sns_error(
                "AuthorizationError",
                "User: arn:aws:iam::123456789012:user/gw is not authorized to perform: "
                "SNS:Publish on resource: arn:aws:sns:us-east-1:123456789012:signups",
            ),
            "AWS AuthorizationError: User: arn:aws:iam::123456789012:user/gw is not authorized",
        ),
        (
            "aws_eventbridge",
            400,
            json.dumps(
                {
                    "__type": "AccessDeniedException",
                    "Message": "User: arn:aws:iam::123456789012:user/gw is not authorized to "
                    "perform: events:PutEvents on resource: "
                    "arn:aws:events:us-east-1:123456789012:event-bus/shop-bus",
                }
            ).encode(),
            "AWS AccessDeniedException: User: arn:aws:iam::123456789012:user/gw is not",
        ),
    ],
)
async def test_access_denied_is_permanent(
    tmp_path: Path, fake_aws: Receiver, type_: str, status: int, body: bytes, expect: str
) -> None:
    headers = XML if type_ == "aws_sns" else JSON11
    fake_aws.answer = lambda r: Answer(status, headers, body)
    rig, ids = await _three(tmp_path, type_, fake_aws)
    try:
        for d in await rig.wait_settled(ids):
            assert d.state == DeliveryState.DEAD
            assert d.attempts == 1
            assert d.last_error.startswith(expect), d.last_error
            assert f"(HTTP {status})" in d.last_error
        assert len(fake_aws.requests) == 1
    finally:
        await rig.close()
