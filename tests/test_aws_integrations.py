"""The AWS integration types against moto's server with signature checking on."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gateway.integrations import aws
from gateway.store.base import DeliveryState
from tests.support.delivery_rig import Rig
from tests.support.moto_server import MotoServer, start_moto

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = start_moto()
    yield server
    server.stop()


@pytest.fixture
def keys(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    monkeypatch.setenv("MOTO_KEY_ID", moto.access_key_id)
    monkeypatch.setenv("MOTO_SECRET", moto.secret_access_key)
    aws.forget_clients()
    return moto


def entry(
    name: str,
    type_: str,
    connection: dict,
    fields: dict,
    settings: dict | None = None,
    options: str = "retry: {base: 20ms, cap: 100ms, max_attempts: 5}",
) -> str:
    block = {
        "name": name,
        "type": type_,
        "connection": connection,
        "fields": fields,
        **({"settings": settings} if settings else {}),
    }
    text = yaml.safe_dump([block], sort_keys=False)
    return text.rstrip("\n") + "\n" + textwrap.indent(f"options: {{{options}}}\n", "  ")


async def test_sqs_messages_arrive_as_mapped(tmp_path: Path, keys: MotoServer) -> None:
    sqs = keys.client("sqs")
    url = sqs.create_queue(QueueName="signups")["QueueUrl"]
    rig = await Rig.create(
        tmp_path,
        [
            entry(
                "queue",
                "aws_sqs",
                keys.connection(queue_url=url),
                {"email": "email", "n": "n"},
                {"message_attributes": ["n"]},
            )
        ],
    )
    try:
        ids = [
            d for i in range(25) for d in await rig.add(["queue"], {"email": f"{i}@x.se", "n": i})
        ]
        for d in await rig.wait_settled(ids):
            assert d.state == DeliveryState.DELIVERED, d.last_error
        got = []
        while True:
            batch = sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
            ).get("Messages", [])
            if not batch:
                break
            got += batch
        assert sorted(json.loads(m["Body"])["n"] for m in got) == list(range(25))
        assert {m["MessageAttributes"]["n"]["DataType"] for m in got} == {"Number"}
    finally:
        await rig.close()


async def test_sqs_fifo_group_and_dedup_ids(tmp_path: Path, keys: MotoServer) -> None:
    sqs = keys.client("sqs")
    url = sqs.create_queue(QueueName="orders.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    rig = await Rig.create(
        tmp_path,
        [
            entry(
                "queue",
                "aws_sqs",
                keys.connection(queue_url=url),
                {"email": "email", "n": "n"},
                {"message_group_id": "email"},
            )
        ],
        start=False,  # one batch: entries keep their order inside a request
    )
    try:
        ids = [d for i in range(3) for d in await rig.add(["queue"], {"email": "a@x.se", "n": i})]
        await rig.engine.start()
        for d in await rig.wait_settled(ids):
            assert d.state == DeliveryState.DELIVERED, d.last_error
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"])[
            "Messages"
        ]
        assert [json.loads(m["Body"])["n"] for m in got] == [0, 1, 2]  # in order
        assert {m["Attributes"]["MessageGroupId"] for m in got} == {"a@x.se"}
        assert [m["Attributes"]["MessageDeduplicationId"] for m in got] == ids
    finally:
        await rig.close()


async def test_wrong_secret_is_a_permanent_failure_with_awss_error(
    tmp_path: Path, keys: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = keys.client("sqs").create_queue(QueueName="locked")["QueueUrl"]
    monkeypatch.setenv("MOTO_SECRET", "not-the-secret")
    rig = await Rig.create(
        tmp_path,
        [entry("queue", "aws_sqs", keys.connection(queue_url=url), {"email": "email"})],
    )
    try:
        [d] = await rig.wait_settled(await rig.add(["queue"]))
        assert d.state == DeliveryState.DEAD
        assert d.attempts == 1
        assert d.last_error.startswith("AWS SignatureDoesNotMatch"), d.last_error
    finally:
        await rig.close()


# -- answers moto cannot give: partial failures and throttling, from a local server ---------
@pytest.fixture
async def fake_aws():
    from tests.support.receiver import Receiver

    r = await Receiver().start()
    yield r
    await r.stop()


def _sqs_entries(received) -> list[str]:
    return [e["Id"] for e in received.json()["Entries"]]


async def test_sqs_retries_only_failed_entries(
    tmp_path: Path, fake_aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.receiver import Answer

    monkeypatch.setenv("MOTO_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("MOTO_SECRET", "secret")
    aws.forget_clients()
    calls: list[list[str]] = []

    def answer(r):
        ids = _sqs_entries(r)
        calls.append(ids)
        if len(calls) == 1:  # first: one throttled (retry), one sender's fault (permanent)
            body = {
                "Successful": [
                    {"Id": i, "MessageId": "m", "MD5OfMessageBody": "x"} for i in ids[2:]
                ],
                "Failed": [
                    {
                        "Id": ids[0],
                        "SenderFault": False,
                        "Code": "InternalError",
                        "Message": "try again",
                    },
                    {
                        "Id": ids[1],
                        "SenderFault": True,
                        "Code": "InvalidParameterValue",
                        "Message": "bad body",
                    },
                ],
            }
        else:
            body = {
                "Successful": [{"Id": i, "MessageId": "m", "MD5OfMessageBody": "x"} for i in ids],
                "Failed": [],
            }
        return Answer(
            200, {"Content-Type": "application/x-amz-json-1.0"}, json.dumps(body).encode()
        )

    fake_aws.answer = answer
    conn = {
        "region": "us-east-1",
        "endpoint_url": fake_aws.url,
        "access_key_id": "${MOTO_KEY_ID}",
        "secret_access_key": "${MOTO_SECRET}",
        "queue_url": fake_aws.url + "/123456789012/q",
    }
    rig = await Rig.create(
        tmp_path,
        [
            entry(
                "queue",
                "aws_sqs",
                conn,
                {"n": "n"},
                options="batch_size: 10, retry: {base: 20ms, cap: 50ms}",
            )
        ],
        start=False,
    )
    try:
        ids = [d for i in range(4) for d in await rig.add(["queue"], {"n": i})]
        await rig.engine.start()
        states = {d.id: d for d in await rig.wait_settled(ids)}
        assert calls[0] == ids  # one request for the batch of four
        assert calls[1:] == [[ids[0]]]  # only the throttled entry again
        assert states[ids[0]].state == DeliveryState.DELIVERED
        assert states[ids[0]].attempts == 2
        assert states[ids[1]].state == DeliveryState.DEAD
        assert states[ids[1]].last_error == "AWS InvalidParameterValue: bad body (HTTP 200)"
        assert {states[i].state for i in ids[2:]} == {DeliveryState.DELIVERED}
    finally:
        await rig.close()


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (400, "AWS.SimpleQueueService.RequestThrottled", "retry"),
        (400, "ThrottlingException", "retry"),
        (500, "InternalError", "retry"),
        (403, "AccessDenied", "dead"),
        (400, "AWS.SimpleQueueService.NonExistentQueue", "dead"),
    ],
)
async def test_sqs_whole_request_errors(
    tmp_path: Path, fake_aws, monkeypatch: pytest.MonkeyPatch, status: int, code: str, kind: str
) -> None:
    from tests.support.receiver import Answer

    monkeypatch.setenv("MOTO_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("MOTO_SECRET", "secret")
    aws.forget_clients()
    body = json.dumps({"__type": f"com.amazonaws.sqs#{code}", "message": "no"}).encode()
    headers = {"Content-Type": "application/x-amz-json-1.0", "x-amzn-query-error": f"{code};Sender"}
    answers = iter([Answer(status, headers, body)])
    fake_aws.answer = lambda r: next(answers, Answer(200, body=b'{"Successful": [], "Failed": []}'))
    conn = {
        "region": "us-east-1",
        "endpoint_url": fake_aws.url,
        "access_key_id": "${MOTO_KEY_ID}",
        "secret_access_key": "${MOTO_SECRET}",
        "queue_url": fake_aws.url + "/123456789012/q",
    }
    rig = await Rig.create(tmp_path, [entry("queue", "aws_sqs", conn, {"n": "n"})])
    try:
        [d] = await rig.wait_settled(await rig.add(["queue"], {"n": 1}), within=10)
        attempts = await rig.store.list_attempts(d.id)
        assert attempts[0].error.startswith(f"AWS {code}: no (HTTP {status})"), attempts[0].error
        if kind == "retry":
            # The second answer lists the entry in neither Successful nor Failed: judged by the
            # status (200), so delivered.
            assert d.state == DeliveryState.DELIVERED
            assert d.attempts == 2
        else:
            assert d.state == DeliveryState.DEAD
            assert d.attempts == 1
    finally:
        await rig.close()


async def test_assumed_role_with_external_id_delivers(tmp_path: Path, keys: MotoServer) -> None:
    iam = keys.client("iam")
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": "*"},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"sts:ExternalId": "shop-42"}},
            }
        ],
    }
    role = iam.create_role(RoleName="gateway-writer", AssumeRolePolicyDocument=json.dumps(trust))
    iam.put_role_policy(
        RoleName="gateway-writer",
        PolicyName="all",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
            }
        ),
    )
    sqs = keys.client("sqs")
    url = sqs.create_queue(QueueName="via-role")["QueueUrl"]
    conn = keys.connection(queue_url=url, role_arn=role["Role"]["Arn"], external_id="shop-42")
    rig = await Rig.create(tmp_path, [entry("queue", "aws_sqs", conn, {"n": "n"})])
    try:
        [d] = await rig.wait_settled(await rig.add(["queue"], {"n": 7}))
        assert d.state == DeliveryState.DELIVERED, d.last_error
        [m] = sqs.receive_message(QueueUrl=url)["Messages"]
        assert json.loads(m["Body"]) == {"n": 7}
        # The request was signed with the role's temporary keys, not the user's.
        creds = aws.client(
            rig.registry.get("shop").integration("queue").connection.value, "sqs"
        )._request_signer._credentials
        assert creds.method == "assume-role"
        assert creds.get_frozen_credentials().access_key != keys.access_key_id
    finally:
        await rig.close()
