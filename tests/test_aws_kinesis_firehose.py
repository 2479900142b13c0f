"""The aws_kinesis and aws_firehose types: against moto's server with signature checking on,
and against a local server answering the JSON bodies Kinesis and Firehose really send
(partial failures and throttling, which moto cannot produce)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.delivery.engine import EngineSettings
from gateway.ids import delivery_id, record_id
from gateway.integrations import aws
from gateway.store.base import DeliveryState, IngestWrite, NewRecord
from tests.support.delivery_rig import Rig
from tests.support.moto_server import MotoServer
from tests.support.receiver import Answer, Received, Receiver
from tests.test_aws_integrations import entry, keys, moto  # noqa: F401

pytestmark = pytest.mark.e2e

JSON_11 = {"Content-Type": "application/x-amz-json-1.1"}
FAST = "retry: {base: 20ms, cap: 50ms, max_attempts: 5}"


# -- against moto -----------------------------------------------------------------------------
def _all_stream_records(kinesis: Any, stream: str) -> list[dict[str, Any]]:
    """Every record of every shard, read from the start."""
    out = []
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        it = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while it:
            got = kinesis.get_records(ShardIterator=it, Limit=1000)
            out += [{**r, "ShardId": shard["ShardId"]} for r in got["Records"]]
            if not got["Records"]:
                break
            it = got.get("NextShardIterator")
    return out


async def test_kinesis_records_arrive_as_mapped_with_their_partition_keys(
    tmp_path: Path,
    keys: MotoServer,  # noqa: F811
) -> None:
    kinesis = keys.client("kinesis")
    kinesis.create_stream(StreamName="clicks", ShardCount=4)
    rig = await Rig.create(
        tmp_path,
        [
            entry(
                "stream",
                "aws_kinesis",
                keys.connection(stream_name="clicks"),
                {"customer": "customer", "n": "n"},
                {"partition_key": "customer"},
                options="batch_size: 50, " + FAST,
            )
        ],
        start=False,
    )
    try:
        ids = [
            d
            for i in range(40)
            for d in await rig.add(["stream"], {"customer": f"c{i % 7}", "n": i})
        ]
        no_key = await rig.add(["stream"], {"n": 99})
        await rig.engine.start()
        for d in await rig.wait_settled(ids):
            assert d.state == DeliveryState.DELIVERED, d.last_error
        [d] = await rig.wait_settled(no_key)
        assert d.state == DeliveryState.DEAD
        assert d.last_error == (
            "mapping error: integration 'stream', field 'customer': the partition key comes "
            "from field 'customer', which has no value"
        )
        got = _all_stream_records(kinesis, "clicks")
        data = [json.loads(r["Data"]) for r in got]
        assert sorted(x["n"] for x in data) == list(range(40))
        assert {r["PartitionKey"] for r in got} == {f"c{i}" for i in range(7)}
        for r, x in zip(got, data, strict=True):
            assert r["PartitionKey"] == x["customer"]
            assert set(x) == {"customer", "n"}
        # Equal keys go to one shard; seven keys over four shards use more than one.
        shards = {
            k: {r["ShardId"] for r in got if r["PartitionKey"] == k}
            for k in {r["PartitionKey"] for r in got}
        }
        assert all(len(s) == 1 for s in shards.values())
        assert len({r["ShardId"] for r in got}) > 1
    finally:
        await rig.close()


async def test_kinesis_stream_given_by_arn(tmp_path: Path, keys: MotoServer) -> None:  # noqa: F811
    kinesis = keys.client("kinesis")
    kinesis.create_stream(StreamName="by-arn", ShardCount=1)
    arn = kinesis.describe_stream_summary(StreamName="by-arn")["StreamDescriptionSummary"][
        "StreamARN"
    ]
    rig = await Rig.create(
        tmp_path,
        [
            entry(
                "stream",
                "aws_kinesis",
                keys.connection(stream_name=arn),
                {"n": "n"},
                {"partition_key": "n"},
            )
        ],
    )
    try:
        ids = [d for i in range(3) for d in await rig.add(["stream"], {"n": i})]
        for d in await rig.wait_settled(ids):
            assert d.state == DeliveryState.DELIVERED, d.last_error
        got = _all_stream_records(kinesis, "by-arn")
        assert sorted(json.loads(r["Data"])["n"] for r in got) == [0, 1, 2]
        assert sorted(r["PartitionKey"] for r in got) == ["0", "1", "2"]
    finally:
        await rig.close()


async def test_firehose_records_arrive_in_s3_as_ndjson(tmp_path: Path, keys: MotoServer) -> None:  # noqa: F811
    s3 = keys.client("s3")
    s3.create_bucket(Bucket="lake")
    firehose = keys.client("firehose")
    firehose.create_delivery_stream(
        DeliveryStreamName="events",
        DeliveryStreamType="DirectPut",
        ExtendedS3DestinationConfiguration={
            "RoleARN": "arn:aws:iam::123456789012:role/firehose",
            "BucketARN": "arn:aws:s3:::lake",
            "Prefix": "events/",
        },
    )
    rig = await Rig.create(
        tmp_path,
        [
            entry(
                "hose",
                "aws_firehose",
                keys.connection(delivery_stream_name="events"),
                {"email": "email", "n": "n"},
                options="batch_size: 10, " + FAST,
            )
        ],
        start=False,
    )
    try:
        ids = [
            d for i in range(25) for d in await rig.add(["hose"], {"email": f"{i}@x.se", "n": i})
        ]
        await rig.engine.start()
        for d in await rig.wait_settled(ids):
            assert d.state == DeliveryState.DELIVERED, d.last_error
        # moto writes one object per PutRecordBatch, straight away (no buffering).
        listed = s3.list_objects_v2(Bucket="lake", Prefix="events/").get("Contents", [])
        assert len(listed) >= 3  # batches of at most 10
        lines = []
        for obj in listed:
            body = s3.get_object(Bucket="lake", Key=obj["Key"])["Body"].read().decode()
            assert body.endswith("\n")
            lines += body.splitlines()
        rows = [json.loads(line) for line in lines]
        assert sorted(r["n"] for r in rows) == list(range(25))
        assert all(r == {"email": f"{r['n']}@x.se", "n": r["n"]} for r in rows)
    finally:
        await rig.close()


@pytest.mark.parametrize(
    ("type_", "conn", "settings"),
    [
        ("aws_kinesis", {"stream_name": "locked"}, {"partition_key": "n"}),
        ("aws_firehose", {"delivery_stream_name": "locked"}, None),
    ],
)
async def test_wrong_secret_is_permanent_with_awss_error(
    tmp_path: Path,
    keys: MotoServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    type_: str,
    conn: dict[str, str],
    settings: dict[str, str] | None,
) -> None:
    monkeypatch.setenv("MOTO_SECRET", "not-the-secret")
    rig = await Rig.create(
        tmp_path, [entry("out", type_, keys.connection(**conn), {"n": "n"}, settings)]
    )
    try:
        [d] = await rig.wait_settled(await rig.add(["out"], {"n": 1}))
        assert d.state == DeliveryState.DEAD
        assert d.attempts == 1
        assert d.last_error.startswith("AWS SignatureDoesNotMatch: "), d.last_error
    finally:
        await rig.close()


# -- against a local server answering as Kinesis and Firehose do ------------------------------
@pytest.fixture
async def fake_aws(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Receiver]:
    monkeypatch.setenv("MOTO_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("MOTO_SECRET", "secret")
    aws.forget_clients()
    r = await Receiver().start()
    yield r
    await r.stop()


def _conn(url: str, **extra: str) -> dict[str, str]:
    return {
        "region": "us-east-1",
        "endpoint_url": url,
        "access_key_id": "${MOTO_KEY_ID}",
        "secret_access_key": "${MOTO_SECRET}",
        **extra,
    }


def _sent(r: Received) -> list[dict[str, Any]]:
    """The mapped records of a PutRecords / PutRecordBatch request, in order."""
    return [orjson.loads(base64.b64decode(x["Data"])) for x in r.json()["Records"]]


class Kind:
    """What differs between the two types as seen from the wire."""

    def __init__(
        self,
        type_: str,
        target: str,
        conn: dict[str, str],
        settings: dict[str, str] | None,
        ok: Callable[[], dict[str, str]],
        results: str,
        failed_count: str,
        max_record: int,
        max_request: int,
    ) -> None:
        self.type = type_
        self.target = target
        self.conn = conn
        self.settings = settings
        self.ok = ok
        self.results = results
        self.failed_count = failed_count
        self.max_record = max_record
        self.max_request = max_request

    def entry(self, url: str, options: str = FAST) -> str:
        return entry(
            "out",
            self.type,
            _conn(url, **self.conn),
            {"n": "n", "pad": "pad"},
            self.settings,
            options=options,
        )

    def answer(self, results: list[dict[str, str]]) -> Answer:
        body = {
            self.failed_count: sum(1 for r in results if "ErrorCode" in r),
            self.results: results,
        }
        return Answer(200, JSON_11, json.dumps(body).encode())


KINESIS = Kind(
    "aws_kinesis",
    "Kinesis_20131202.PutRecords",
    {"stream_name": "s"},
    {"partition_key": "n"},
    lambda: {
        "SequenceNumber": "49590338271490256608559692538361571095921575989136588898",
        "ShardId": "shardId-000000000000",
    },
    "Records",
    "FailedRecordCount",
    1024 * 1024,
    5 * 1024 * 1024,
)
FIREHOSE = Kind(
    "aws_firehose",
    "Firehose_20150804.PutRecordBatch",
    {"delivery_stream_name": "s"},
    None,
    lambda: {"RecordId": "49543463076548007577105092703039560359975228518395012"},
    "RequestResponses",
    "FailedPutCount",
    1000 * 1024,
    4 * 1024 * 1024,
)
KINDS = pytest.mark.parametrize("kind", [KINESIS, FIREHOSE], ids=lambda k: k.type)

# What each service says when a record is throttled, and a code that will not pass by waiting.
THROTTLED = {
    "aws_kinesis": {
        "ErrorCode": "ProvisionedThroughputExceededException",
        "ErrorMessage": "Rate exceeded for shard shardId-000000000001 in stream s under "
        "account 123456789012.",
    },
    "aws_firehose": {"ErrorCode": "ServiceUnavailableException", "ErrorMessage": "Slow down."},
}
REFUSED = {
    "aws_kinesis": {
        "ErrorCode": "KMSAccessDeniedException",
        "ErrorMessage": "User is not authorized to use the key",
    },
    "aws_firehose": {
        "ErrorCode": "InvalidKMSResourceException",
        "ErrorMessage": "The KMS key is disabled",
    },
}


async def _add_many(rig: Rig, name: str, data: list[dict[str, Any]]) -> list[str]:
    """Store the records in one commit (faster than one by one); return the delivery ids."""
    recs, ids = [], []
    for d in data:
        did, rid = delivery_id(), record_id()
        rig.record_of[did] = rid
        ids.append(did)
        recs.append(NewRecord(rid, "shop", "AKTEST", orjson.dumps(d), time.time(), [name], [did]))
    assert (await rig.store.commit_ingest(IngestWrite(recs))).committed
    rig.engine.notify()
    return ids


@KINDS
async def test_only_the_throttled_record_is_sent_again(
    tmp_path: Path, fake_aws: Receiver, kind: Kind
) -> None:
    calls: list[list[int]] = []

    def answer(r: Received) -> Answer:
        assert r.headers["X-Amz-Target"] == kind.target
        assert r.headers["Authorization"].startswith("AWS4-HMAC-SHA256 ")
        sent = [x["n"] for x in _sent(r)]
        calls.append(sent)
        if len(calls) == 1:  # the first record throttled, the second refused
            return kind.answer([THROTTLED[kind.type], REFUSED[kind.type]] + [kind.ok()] * 2)
        return kind.answer([kind.ok() for _ in sent])

    fake_aws.answer = answer
    rig = await Rig.create(
        tmp_path, [kind.entry(fake_aws.url, "batch_size: 10, " + FAST)], start=False
    )
    try:
        ids = await _add_many(rig, "out", [{"n": i} for i in range(4)])
        await rig.engine.start()
        states = await rig.wait_settled(ids)
        assert calls == [[0, 1, 2, 3], [0]]
        assert states[0].state == DeliveryState.DELIVERED
        assert states[0].attempts == 2
        attempts = await rig.store.list_attempts(ids[0])
        code, message = THROTTLED[kind.type]["ErrorCode"], THROTTLED[kind.type]["ErrorMessage"]
        assert attempts[0].error == f"AWS {code}: {message} (HTTP 200)"
        assert states[1].state == DeliveryState.DEAD
        assert states[1].attempts == 1
        code, message = REFUSED[kind.type]["ErrorCode"], REFUSED[kind.type]["ErrorMessage"]
        assert states[1].last_error == f"AWS {code}: {message} (HTTP 200)"
        assert [d.state for d in states[2:]] == [DeliveryState.DELIVERED] * 2
        assert [d.attempts for d in states[2:]] == [1, 1]
    finally:
        await rig.close()


@KINDS
@pytest.mark.parametrize(
    ("status", "code", "retried"),
    [
        (400, "ProvisionedThroughputExceededException", True),  # Kinesis: the whole request
        (400, "ServiceUnavailableException", True),  # Firehose's throttling
        (400, "ThrottlingException", True),
        (500, "InternalFailure", True),
        (400, "AccessDeniedException", False),
        (400, "ResourceNotFoundException", False),
        (400, "ValidationException", False),
    ],
)
async def test_whole_request_errors(
    tmp_path: Path, fake_aws: Receiver, kind: Kind, status: int, code: str, retried: bool
) -> None:
    message = f"no ({code})"
    error = Answer(status, JSON_11, json.dumps({"__type": code, "message": message}).encode())
    answers = iter([error])
    fake_aws.answer = lambda r: next(answers, None) or kind.answer([kind.ok() for _ in _sent(r)])
    rig = await Rig.create(tmp_path, [kind.entry(fake_aws.url)])
    try:
        [d] = await rig.wait_settled(await rig.add(["out"], {"n": 1}))
        attempts = await rig.store.list_attempts(d.id)
        assert attempts[0].error == f"AWS {code}: {message} (HTTP {status})"
        if retried:
            assert d.state == DeliveryState.DELIVERED
            assert d.attempts == 2
        else:
            assert d.state == DeliveryState.DEAD
            assert d.attempts == 1
            assert d.last_error == attempts[0].error
    finally:
        await rig.close()


@KINDS
async def test_an_answer_out_of_step_with_the_request_retries_all(
    tmp_path: Path, fake_aws: Receiver, kind: Kind
) -> None:
    calls: list[int] = []

    def answer(r: Received) -> Answer:
        calls.append(len(_sent(r)))
        return kind.answer([kind.ok()] * (1 if len(calls) == 1 else calls[-1]))

    fake_aws.answer = answer
    rig = await Rig.create(
        tmp_path, [kind.entry(fake_aws.url, "batch_size: 10, " + FAST)], start=False
    )
    try:
        ids = await _add_many(rig, "out", [{"n": i} for i in range(3)])
        await rig.engine.start()
        states = await rig.wait_settled(ids)
        assert calls[0] == 3
        assert sum(calls[1:]) == 3  # all again (maybe in several requests, as they come due)
        assert [d.attempts for d in states] == [2, 2, 2]
        assert {d.state for d in states} == {DeliveryState.DELIVERED}
    finally:
        await rig.close()


def _strict(kind: Kind, requests: list[list[int]]) -> Callable[[Received], Answer]:
    """Answers as the service does, refusing a request over its count or size limits."""

    def answer(r: Received) -> Answer:
        records = r.json()["Records"]
        size = sum(
            len(base64.b64decode(x["Data"])) + len(x.get("PartitionKey", "").encode())
            for x in records
        )
        if len(records) > 500 or size > kind.max_request:
            body = {"__type": "ValidationException", "message": "too many records or bytes"}
            return Answer(400, JSON_11, json.dumps(body).encode())
        requests.append([x["n"] for x in _sent(r)])
        return kind.answer([kind.ok() for _ in records])

    return answer


@KINDS
async def test_a_big_batch_goes_in_requests_of_at_most_500_records(
    tmp_path: Path, fake_aws: Receiver, kind: Kind
) -> None:
    requests: list[list[int]] = []
    fake_aws.answer = _strict(kind, requests)
    rig = await Rig.create(
        tmp_path,
        [kind.entry(fake_aws.url, "batch_size: 1200, batch_wait: 500ms, " + FAST)],
        settings=EngineSettings(lease_seconds=30, poll_interval=0.05, claim_batch=2000),
        start=False,
    )
    try:
        ids = await _add_many(rig, "out", [{"n": i} for i in range(1200)])
        await rig.engine.start()
        await fake_aws.wait_for(3)
        states = await rig.wait_settled(ids, within=30)
        assert {d.state for d in states} == {DeliveryState.DELIVERED}
        assert sorted(len(r) for r in requests) == [200, 500, 500]
        assert sorted(n for r in requests for n in r) == list(range(1200))
    finally:
        await rig.close()


@KINDS
async def test_requests_stay_within_the_size_limit(
    tmp_path: Path, fake_aws: Receiver, kind: Kind
) -> None:
    requests: list[list[int]] = []
    fake_aws.answer = _strict(kind, requests)
    rig = await Rig.create(
        tmp_path, [kind.entry(fake_aws.url, "batch_size: 20, " + FAST)], start=False
    )
    try:
        # Records of 90% of the record limit: the request limit holds four (Firehose) or five
        # (Kinesis) of them.
        pad = "x" * int(kind.max_record * 0.9)
        ids = await _add_many(rig, "out", [{"n": i, "pad": pad} for i in range(12)])
        await rig.engine.start()
        states = await rig.wait_settled(ids, within=30)
        assert {d.state for d in states} == {DeliveryState.DELIVERED}, [
            d.last_error for d in states
        ]
        per = kind.max_request // len(orjson.dumps({"n": 10, "pad": pad}))
        assert per in (4, 5)
        assert max(len(r) for r in requests) == per
        assert sorted(n for r in requests for n in r) == list(range(12))
    finally:
        await rig.close()


@KINDS
async def test_a_record_over_the_limit_is_dead_and_the_others_delivered(
    tmp_path: Path, fake_aws: Receiver, kind: Kind
) -> None:
    requests: list[list[int]] = []
    fake_aws.answer = _strict(kind, requests)
    rig = await Rig.create(
        tmp_path, [kind.entry(fake_aws.url, "batch_size: 10, " + FAST)], start=False
    )
    try:
        # Just over the record limit: for Firehose that is still under 1 MiB.
        big = "x" * kind.max_record
        ids = await _add_many(
            rig, "out", [{"n": 0}, {"n": 1, "pad": big}, {"n": 2}, {"n": 3, "pad": "y" * 1000}]
        )
        await rig.engine.start()
        states = await rig.wait_settled(ids)
        assert states[1].state == DeliveryState.DEAD
        assert states[1].attempts == 1
        assert "over the" in states[1].last_error
        assert f"{kind.max_record:,}-byte limit of a" in states[1].last_error
        assert [states[i].state for i in (0, 2, 3)] == [DeliveryState.DELIVERED] * 3
        assert requests == [[0, 2, 3]]
    finally:
        await rig.close()


async def test_firehose_data_is_one_json_line_per_record(
    tmp_path: Path, fake_aws: Receiver
) -> None:
    bodies: list[list[bytes]] = []

    def answer(r: Received) -> Answer:
        bodies.append([base64.b64decode(x["Data"]) for x in r.json()["Records"]])
        return FIREHOSE.answer([FIREHOSE.ok() for _ in bodies[-1]])

    fake_aws.answer = answer
    rig = await Rig.create(
        tmp_path, [FIREHOSE.entry(fake_aws.url, "batch_size: 10, " + FAST)], start=False
    )
    try:
        ids = await _add_many(rig, "out", [{"n": 1, "pad": "a\nb"}, {"n": 2}])
        await rig.engine.start()
        await rig.wait_settled(ids)
        assert bodies == [[b'{"n":1,"pad":"a\\nb"}\n', b'{"n":2}\n']]
    finally:
        await rig.close()


async def test_kinesis_partition_keys_over_256_characters_are_refused(
    tmp_path: Path, fake_aws: Receiver
) -> None:
    sent: list[list[str]] = []

    def answer(r: Received) -> Answer:
        sent.append([x["PartitionKey"] for x in r.json()["Records"]])
        return KINESIS.answer([KINESIS.ok() for _ in sent[-1]])

    fake_aws.answer = answer
    conn = _conn(fake_aws.url, stream_name="s")
    rig = await Rig.create(
        tmp_path,
        [entry("out", "aws_kinesis", conn, {"k": "k"}, {"partition_key": "k"}, FAST)],
        start=False,
    )
    try:
        ids = await _add_many(rig, "out", [{"k": "a" * 256}, {"k": "b" * 257}])
        await rig.engine.start()
        ok, long = await rig.wait_settled(ids)
        assert ok.state == DeliveryState.DELIVERED
        assert long.state == DeliveryState.DEAD
        assert "257 characters, over Kinesis's limit of 256" in long.last_error
        assert sent == [["a" * 256]]
    finally:
        await rig.close()
