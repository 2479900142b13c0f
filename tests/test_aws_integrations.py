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
from tests.delivery_rig import Rig
from tests.moto_server import MotoServer, start_moto


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
    )
    try:
        ids = [d for i in range(3) for d in await rig.add(["queue"], {"email": "a@x.se", "n": i})]
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
