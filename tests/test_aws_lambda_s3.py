"""The aws_lambda and aws_s3 types.

S3 against moto's server with signature checking on: objects under the key template, NDJSON of
the mapped records; a batch sent again replaces its object. S3's errors against a local server
answering S3-shaped XML.

Lambda: moto runs functions in Docker, which is not here. Without Docker moto answers an
invocation of an existing function with HTTP 200, ``X-Amz-Function-Error: Handled`` and the
text "error running docker: ..." (a function error, as far as a client can tell), and a missing
function with ``ResourceNotFoundException``; with ``{"lambda": {"use_docker": false}}`` set
through its config API it echoes the payload for any function name, existing or not. Both
check the signature. What Lambda itself answers (a function's error object, throttling, a
missing function) is played by a local server that also verifies the SigV4 signature with the
project's own verifier.
"""

# The fixtures imported from test_aws_integrations are parameters of the tests here.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import time
import urllib.request
import uuid
import zipfile
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from gateway.auth.sigv4 import SigV4Error, SigV4Verifier
from gateway.ids import delivery_id, record_id
from gateway.integrations import aws, aws_lambda, aws_s3
from gateway.integrations.http import idempotency_key
from gateway.integrations.transport import Timeouts, Transport
from gateway.store.base import DeliveryState, IngestWrite, NewRecord
from tests.support.delivery_rig import Rig
from tests.support.moto_server import MotoServer
from tests.support.receiver import Answer
from tests.test_aws_integrations import entry, keys, moto  # noqa: F401
from tests.test_delivery_auth import RawReceiver, header

pytestmark = pytest.mark.e2e

FAST = "retry: {base: 20ms, cap: 100ms, max_attempts: 5}"
ACCESS_KEY_ID = "AKIDLAMBDAS3TESTKEY1"
SECRET = "lambda/s3+Secret=0123456789abcdefghijKLMNOP"
REGION = "eu-north-1"


@pytest.fixture
async def receiver() -> AsyncIterator[RawReceiver]:
    r = await RawReceiver().start()
    yield r
    await r.stop()


@pytest.fixture
def local_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_AWS_SECRET", SECRET)
    aws.forget_clients()


def local_connection(url: str, **extra: str) -> dict[str, str]:
    return {
        "region": REGION,
        "endpoint_url": url,
        "access_key_id": ACCESS_KEY_ID,
        "secret_access_key": "${GW_TEST_AWS_SECRET}",
        **extra,
    }


def verify_signature(received: RawReceiver, service: str) -> None:
    """Every request's SigV4 signature verifies with the key, and not with another."""
    verifier = SigV4Verifier(REGION, service)
    assert received.raw
    for req in received.raw:
        parsed = verifier.parse(req, time.time())
        assert parsed.access_key_id == ACCESS_KEY_ID
        verifier.verify(req, parsed, SECRET)
        with pytest.raises(SigV4Error):
            verifier.verify(req, parsed, "x" + SECRET[1:])


async def settle_batch(rig: Rig, records: list[dict[str, Any]], name: str) -> list[str]:
    """Store the records while the engine is stopped, then start it: one batch."""
    ids = [d for r in records for d in await rig.add([name], r)]
    await rig.engine.start()
    return ids


# -- S3 on moto -------------------------------------------------------------------------------

KEY_PATTERN = re.compile(
    r"^gateway/(\d{4})/(\d{2})/(\d{2})/(\d{2})/((?:dlv|batch)_[0-9a-f]{32})\.ndjson$"
)


async def test_s3_objects_have_the_key_pattern_and_ndjson_of_the_records(
    tmp_path: Path, keys: MotoServer
) -> None:
    s3 = keys.client("s3")
    s3.create_bucket(Bucket="events")
    rig = await Rig.create(
        tmp_path,
        [
            entry(
                "bucket",
                "aws_s3",
                keys.connection(bucket="events"),
                {"email": "email", "n": "n"},
                options=f"batch_size: 10, {FAST}",
            )
        ],
        start=False,
    )
    try:
        hours = {datetime.now(UTC).strftime("%Y/%m/%d/%H")}
        records = [{"email": f"{i}@x.se", "n": i, "secret": "not mapped"} for i in range(25)]
        ids = await settle_batch(rig, records, "bucket")
        for d in await rig.wait_settled(ids):
            assert d.state == DeliveryState.DELIVERED, d.last_error
        hours.add(datetime.now(UTC).strftime("%Y/%m/%d/%H"))
        listed = s3.list_objects_v2(Bucket="events")["Contents"]
        assert len(listed) == 3  # 25 records in batches of 10
        by_n = dict(zip(range(25), ids, strict=True))
        seen = []
        for obj in listed:
            m = KEY_PATTERN.match(obj["Key"])
            assert m, obj["Key"]
            assert "/".join(m.groups()[:4]) in hours
            got = s3.get_object(Bucket="events", Key=obj["Key"])
            assert got["ContentType"] == "application/x-ndjson"
            text = got["Body"].read().decode()
            assert text.endswith("\n")
            lines = [json.loads(line) for line in text.splitlines()]
            assert all(set(line) == {"email", "n"} for line in lines)  # the mapped fields only
            assert all(line["email"] == f"{line['n']}@x.se" for line in lines)
            # The batch id is the idempotency key of the object's deliveries, in line order.
            assert m.group(5) == idempotency_key([by_n[line["n"]] for line in lines])
            seen += [line["n"] for line in lines]
        assert sorted(seen) == list(range(25))
    finally:
        await rig.close()


async def test_s3_a_batch_sent_again_replaces_its_object(tmp_path: Path, keys: MotoServer) -> None:
    s3 = keys.client("s3")
    s3.create_bucket(Bucket="resent")
    # Versioning shows every PUT of a key: a resend must be a second version, not a second key.
    s3.put_bucket_versioning(Bucket="resent", VersioningConfiguration={"Status": "Enabled"})
    rig = await Rig.create(
        tmp_path,
        [
            entry(
                "bucket",
                "aws_s3",
                keys.connection(bucket="resent"),
                {"n": "n"},
                {"key": "signups/{year}-{month}-{day}/{batch_id}.ndjson"},
                options=f"batch_size: 10, {FAST}",
            )
        ],
        start=False,
    )
    try:
        # Due in the reverse of their id order: the first batch is claimed in that order, the
        # replayed one (all due at once) in id order. The same object all the same.
        now = time.time()
        ids = sorted(delivery_id() for _ in range(5))
        for n, did in enumerate(ids):
            rid = record_id()
            data = orjson.dumps({"n": n})
            rec = NewRecord(rid, "shop", "AKTEST", data, now - n, ["bucket"], [did])
            assert (await rig.store.commit_ingest(IngestWrite([rec]))).committed
            rig.record_of[did] = rid
        await rig.engine.start()
        for d in await rig.wait_settled(ids):
            assert d.state == DeliveryState.DELIVERED, d.last_error
        [first] = s3.list_objects_v2(Bucket="resent")["Contents"]
        replayed = await rig.store.replay_deliveries(now=time.time(), ids=ids)
        assert sorted(replayed) == sorted(ids)
        rig.engine.notify()
        for d in await rig.wait_settled(ids):
            assert d.state == DeliveryState.DELIVERED, d.last_error
        for d in ids:
            assert len(await rig.store.list_attempts(d)) == 2  # really sent twice
        listed = s3.list_objects_v2(Bucket="resent")["Contents"]
        assert [o["Key"] for o in listed] == [first["Key"]]
        versions = s3.list_object_versions(Bucket="resent")["Versions"]
        assert [v["Key"] for v in versions] == [first["Key"]] * 2
        bodies = [
            s3.get_object(Bucket="resent", Key=v["Key"], VersionId=v["VersionId"])["Body"].read()
            for v in versions
        ]
        assert bodies[0] == bodies[1]  # the same object, byte for byte
        # Lines in delivery id order, whatever order the batch was claimed in.
        assert [json.loads(line)["n"] for line in bodies[0].splitlines()] == list(range(5))
    finally:
        await rig.close()


# -- S3 errors, from a local server -----------------------------------------------------------


def s3_error(status: int, code: str, message: str) -> Answer:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        "<RequestId>4442587FB7D0A2F9</RequestId><HostId>host-id</HostId></Error>"
    )
    return Answer(status, {"Content-Type": "application/xml"}, body.encode())


@pytest.mark.parametrize(
    ("status", "code"), [(503, "SlowDown"), (500, "InternalError"), (400, "RequestTimeout")]
)
async def test_s3_throttling_and_server_errors_retry(
    tmp_path: Path, receiver: RawReceiver, local_keys: None, status: int, code: str
) -> None:
    answers = [
        s3_error(status, code, "Please reduce your request rate."),
        s3_error(status, code, "x"),
    ]
    receiver.answer = lambda r: answers.pop(0) if answers else Answer(200, {"ETag": '"e"'}, b"")
    rig = await Rig.create(
        tmp_path,
        [entry("bucket", "aws_s3", local_connection(receiver.url, bucket="b"), {"n": "n"})],
    )
    try:
        [d] = await rig.wait_settled(await rig.add(["bucket"], {"n": 1}))
        assert d.state == DeliveryState.DELIVERED, d.last_error
        assert d.attempts == 3
        tries = await rig.store.list_attempts(d.id)
        assert tries[0].error == f"AWS {code}: Please reduce your request rate. (HTTP {status})"
        assert [r.method for r in receiver.requests] == ["PUT"] * 3
        assert all(r.path.startswith("/b/gateway/") for r in receiver.requests)
        assert {r.body for r in receiver.requests} == {b'{"n":1}\n'}
        verify_signature(receiver, "s3")
    finally:
        await rig.close()


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [(403, "AccessDenied", "Access Denied"), (404, "NoSuchBucket", "The bucket does not exist")],
)
async def test_s3_access_denied_and_no_such_bucket_are_permanent(
    tmp_path: Path,
    receiver: RawReceiver,
    local_keys: None,
    status: int,
    code: str,
    message: str,
) -> None:
    receiver.answer = lambda r: s3_error(status, code, message)
    rig = await Rig.create(
        tmp_path,
        [entry("bucket", "aws_s3", local_connection(receiver.url, bucket="b"), {"n": "n"})],
    )
    try:
        [d] = await rig.wait_settled(await rig.add(["bucket"], {"n": 1}))
        assert d.state == DeliveryState.DEAD
        assert d.attempts == 1
        assert d.last_error == f"AWS {code}: {message} (HTTP {status})"
    finally:
        await rig.close()


def test_s3_key_template_is_checked_and_filled() -> None:
    when = datetime(2024, 3, 9, 7, 5, 59, tzinfo=UTC).timestamp()
    ids = ["dlv_a", "dlv_b"]
    key = aws_s3.object_key("x/{year}/{month}/{day}/{hour}{minute}-{batch_id}.ndjson", when, ids)
    assert key == f"x/2024/03/09/0705-{idempotency_key(ids)}.ndjson"
    assert aws_s3.object_key("{batch_id}", when, ["dlv_a"]) == "dlv_a"
    with pytest.raises(ValueError, match=r"must contain \{batch_id\}"):
        aws_s3.object_key("x/{year}/{month}.ndjson", when, ids)
    with pytest.raises(ValueError, match=r"unknown placeholder \{second\}"):
        aws_s3.object_key("{second}/{batch_id}", when, ids)
    with pytest.raises(ValueError, match="unknown placeholder"):
        aws_s3.object_key("{year:>6}/{batch_id}", when, ids)


async def test_s3_over_https_sends_the_aws_chunked_body_with_its_length(
    receiver: RawReceiver, local_keys: None
) -> None:
    """Over HTTPS botocore frames an S3 body aws-chunked with a CRC32 trailer and asks for
    ``Transfer-Encoding: chunked``; the body goes whole, so it must go with its length only
    (S3 refuses both; a proxy may take it for request smuggling)."""
    integration = SimpleNamespace(
        connection=SimpleNamespace(
            value={
                "region": REGION,
                "endpoint_url": f"https://s3.{REGION}.amazonaws.com",
                "access_key_id": ACCESS_KEY_ID,
                "secret_access_key": SECRET,
                "bucket": "b",
            }
        ),
        settings=SimpleNamespace(value={}),
    )
    [req] = aws_s3.build(integration, [("dlv_1", {"n": 1}), ("dlv_2", {"n": 2})])
    ndjson = b'{"n":1}\n{"n":2}\n'
    names = {k.lower() for k in req.headers}
    assert "transfer-encoding" not in names
    assert "expect" not in names
    assert header(req.headers, "Content-Encoding") == "aws-chunked"
    assert header(req.headers, "X-Amz-Decoded-Content-Length") == str(len(ndjson))
    crc = base64.b64encode(zlib.crc32(ndjson).to_bytes(4, "big")).decode()
    assert req.body == b"%x\r\n%s\r\n0\r\nx-amz-checksum-crc32:%s\r\n\r\n" % (
        len(ndjson),
        ndjson,
        crc.encode(),
    )
    # On the wire: one framing, the length of the whole body.
    req.url = receiver.url + "/b/key"
    transport = Transport()
    try:
        response = await transport.send(req, Timeouts())
    finally:
        await transport.close()
    assert response.status == 200
    [got] = receiver.requests
    assert header(got.headers, "Transfer-Encoding") is None
    assert header(got.headers, "Content-Length") == str(len(req.body))
    assert got.body == req.body


# -- Lambda on moto ---------------------------------------------------------------------------


def moto_lambda(server: MotoServer, *, use_docker: bool) -> None:
    """Switch moto's Lambda between its Docker backend and the one that echoes payloads."""
    config = json.dumps({"lambda": {"use_docker": use_docker}}).encode()
    req = urllib.request.Request(server.url + "/moto-api/config", data=config, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert json.loads(resp.read())["lambda"]["use_docker"] is use_docker


def moto_function(server: MotoServer) -> str:
    """A function in moto's Docker backend (which cannot run it here); its ARN."""
    name = f"f{uuid.uuid4().hex[:8]}"
    role = server.client("iam").create_role(RoleName=name, AssumeRolePolicyDocument="{}")
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as z:
        z.writestr("app.py", "def handler(event, context):\n    return event\n")
    made = server.client("lambda").create_function(
        FunctionName=name,
        Runtime="python3.11",
        Role=role["Role"]["Arn"],
        Handler="app.handler",
        Code={"ZipFile": code.getvalue()},
    )
    return str(made["FunctionArn"])


@pytest.mark.parametrize("invocation_type", ["RequestResponse", "Event"])
async def test_lambda_invocations_on_moto_are_signed_and_accepted(
    tmp_path: Path, keys: MotoServer, invocation_type: str
) -> None:
    moto_lambda(keys, use_docker=False)
    rig = await Rig.create(
        tmp_path,
        [
            entry(
                "fn",
                "aws_lambda",
                keys.connection(function_name="on-signup"),
                {"email": "email", "n": "n"},
                {"invocation_type": invocation_type, "qualifier": "live"},
                options=FAST,
            )
        ],
    )
    try:
        ids = [d for i in range(3) for d in await rig.add(["fn"], {"email": f"{i}@x.se", "n": i})]
        for d in await rig.wait_settled(ids):
            assert d.state == DeliveryState.DELIVERED, d.last_error
            assert d.last_status == (200 if invocation_type == "RequestResponse" else 202)
            assert d.attempts == 1
    finally:
        await rig.close()


async def test_lambda_wrong_secret_on_moto_is_permanent_with_awss_error(
    tmp_path: Path, keys: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    moto_lambda(keys, use_docker=False)
    monkeypatch.setenv("MOTO_SECRET", "not-the-secret")
    rig = await Rig.create(
        tmp_path,
        [entry("fn", "aws_lambda", keys.connection(function_name="f"), {"n": "n"}, options=FAST)],
    )
    try:
        [d] = await rig.wait_settled(await rig.add(["fn"], {"n": 1}))
        assert d.state == DeliveryState.DEAD
        assert d.attempts == 1
        assert d.last_error.startswith("AWS SignatureDoesNotMatch"), d.last_error
    finally:
        await rig.close()


@pytest.mark.parametrize(("setting", "attempts"), [(None, 3), ("permanent", 1)])
async def test_lambda_function_error_on_moto_retries_unless_told_permanent(
    tmp_path: Path, keys: MotoServer, setting: str | None, attempts: int
) -> None:
    moto_lambda(keys, use_docker=True)
    arn = moto_function(keys)
    rig = await Rig.create(
        tmp_path,
        [
            entry(
                "fn",
                "aws_lambda",
                keys.connection(function_name=arn),
                {"n": "n"},
                {"function_error": setting} if setting else None,
                options="retry: {base: 20ms, cap: 50ms, max_attempts: 3}",
            )
        ],
    )
    try:
        [d] = await rig.wait_settled(await rig.add(["fn"], {"n": 1}))
        assert d.state == DeliveryState.DEAD
        assert d.attempts == attempts
        assert d.last_status == 200
        # moto without Docker: a function error whose payload is its own text.
        why = "Lambda function error (Handled): error running docker"
        assert d.last_error.startswith(why if attempts == 1 else f"gave up after 3 attempts: {why}")
    finally:
        await rig.close()


async def test_lambda_missing_function_on_moto_is_permanent(
    tmp_path: Path, keys: MotoServer
) -> None:
    moto_lambda(keys, use_docker=True)
    rig = await Rig.create(
        tmp_path,
        [entry("fn", "aws_lambda", keys.connection(function_name="nope"), {"n": "n"})],
    )
    try:
        [d] = await rig.wait_settled(await rig.add(["fn"], {"n": 1}))
        assert d.state == DeliveryState.DEAD
        assert d.attempts == 1
        assert d.last_error.startswith("AWS ResourceNotFoundException: Function not found"), (
            d.last_error
        )
        assert d.last_error.endswith("(HTTP 404)")
    finally:
        await rig.close()


# -- Lambda, answered by a local server -------------------------------------------------------

ALIAS_ARN = "arn:aws:lambda:eu-north-1:123456789012:function:on-signup:live"


def lambda_error(status: int, code: str, message: str, **extra: str) -> Answer:
    body = json.dumps({"Type": "User", "message": message, **extra}).encode()
    headers = {"Content-Type": "application/json", "X-Amzn-ErrorType": code}
    return Answer(status, headers, body)


def function_error(message: str) -> Answer:
    body = {"errorMessage": message, "errorType": "ValueError", "stackTrace": ["  File ..."]}
    headers = {"X-Amz-Function-Error": "Unhandled", "X-Amz-Executed-Version": "7"}
    return Answer(200, headers, json.dumps(body).encode())


OK = Answer(200, {"X-Amz-Executed-Version": "7"}, b'{"statusCode": 200}')


@pytest.mark.parametrize("invocation_type", ["RequestResponse", "Event"])
async def test_lambda_invoke_request_is_as_lambda_expects_and_signed(
    tmp_path: Path, receiver: RawReceiver, local_keys: None, invocation_type: str
) -> None:
    receiver.answer = lambda r: OK if invocation_type == "RequestResponse" else Answer(202, {}, b"")
    settings = {"invocation_type": invocation_type, "qualifier": "7"}
    rig = await Rig.create(
        tmp_path,
        [
            entry(
                "fn",
                "aws_lambda",
                local_connection(receiver.url, function_name=ALIAS_ARN),
                {"email": "email", "n": "n"},
                settings,
                options=f"batch_size: 10, {FAST}",
            )
        ],
        start=False,
    )
    try:
        records = [{"email": f"{i}@x.se", "n": i, "other": True} for i in range(3)]
        ids = await settle_batch(rig, records, "fn")
        for d in await rig.wait_settled(ids):
            assert d.state == DeliveryState.DELIVERED, d.last_error
        # One invocation a record, the payload its mapped fields, even in a batch of three.
        assert len(receiver.requests) == 3
        assert sorted(r.json()["n"] for r in receiver.requests) == [0, 1, 2]
        for r in receiver.requests:
            assert r.method == "POST"
            assert r.path == (
                "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aeu-north-1%3A123456789012"
                "%3Afunction%3Aon-signup%3Alive/invocations?Qualifier=7"
            )
            assert r.json() == {"email": f"{r.json()['n']}@x.se", "n": r.json()["n"]}
            if invocation_type == "Event":
                assert header(r.headers, "X-Amz-Invocation-Type") == "Event"
        verify_signature(receiver, "lambda")
    finally:
        await rig.close()


async def test_lambda_array_payload_is_one_invocation_per_batch(
    tmp_path: Path, receiver: RawReceiver, local_keys: None
) -> None:
    receiver.answer = lambda r: OK
    rig = await Rig.create(
        tmp_path,
        [
            entry(
                "fn",
                "aws_lambda",
                local_connection(receiver.url, function_name="on-signup"),
                {"n": "n"},
                {"payload": "array"},
                options=f"batch_size: 10, {FAST}",
            )
        ],
        start=False,
    )
    try:
        ids = await settle_batch(rig, [{"n": i} for i in range(4)], "fn")
        for d in await rig.wait_settled(ids):
            assert d.state == DeliveryState.DELIVERED, d.last_error
        [r] = receiver.requests
        assert r.json() == [{"n": 0}, {"n": 1}, {"n": 2}, {"n": 3}]
        verify_signature(receiver, "lambda")
    finally:
        await rig.close()


async def test_lambda_function_error_retries_by_default_with_the_functions_message(
    tmp_path: Path, receiver: RawReceiver, local_keys: None
) -> None:
    answers = [function_error("no such plan: gold")]
    receiver.answer = lambda r: answers.pop(0) if answers else OK
    rig = await Rig.create(
        tmp_path,
        [entry("fn", "aws_lambda", local_connection(receiver.url, function_name="f"), {"n": "n"})],
    )
    try:
        [d] = await rig.wait_settled(await rig.add(["fn"], {"n": 1}))
        assert d.state == DeliveryState.DELIVERED, d.last_error
        assert d.attempts == 2
        [first, _] = await rig.store.list_attempts(d.id)
        assert first.status == 200
        assert first.error == "Lambda function error (Unhandled): ValueError: no such plan: gold"
    finally:
        await rig.close()


async def test_lambda_function_error_setting_permanent(
    tmp_path: Path, receiver: RawReceiver, local_keys: None
) -> None:
    receiver.answer = lambda r: function_error("no such plan: gold")
    rig = await Rig.create(
        tmp_path,
        [
            entry(
                "fn",
                "aws_lambda",
                local_connection(receiver.url, function_name="f"),
                {"n": "n"},
                {"function_error": "permanent"},
            )
        ],
    )
    try:
        [d] = await rig.wait_settled(await rig.add(["fn"], {"n": 1}))
        assert d.state == DeliveryState.DEAD
        assert d.attempts == 1
        assert d.last_error == "Lambda function error (Unhandled): ValueError: no such plan: gold"
    finally:
        await rig.close()


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (
            lambda_error(
                429,
                "TooManyRequestsException",
                "Rate Exceeded.",
                Reason="ReservedFunctionConcurrentInvocationLimitExceeded",
            ),
            "AWS TooManyRequestsException: Rate Exceeded. (HTTP 429)",
        ),
        (
            lambda_error(500, "ServiceException", "internal"),
            "AWS ServiceException: internal (HTTP 500)",
        ),
        (
            lambda_error(409, "ResourceConflictException", "The function is being updated"),
            "AWS ResourceConflictException: The function is being updated (HTTP 409)",
        ),
    ],
)
async def test_lambda_throttling_and_service_errors_retry(
    tmp_path: Path, receiver: RawReceiver, local_keys: None, answer: Answer, error: str
) -> None:
    answers = [answer]
    receiver.answer = lambda r: answers.pop(0) if answers else OK
    rig = await Rig.create(
        tmp_path,
        [entry("fn", "aws_lambda", local_connection(receiver.url, function_name="f"), {"n": "n"})],
    )
    try:
        [d] = await rig.wait_settled(await rig.add(["fn"], {"n": 1}))
        assert d.state == DeliveryState.DELIVERED, d.last_error
        assert d.attempts == 2
        [first, _] = await rig.store.list_attempts(d.id)
        assert first.error == error
    finally:
        await rig.close()


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (404, "ResourceNotFoundException", f"Function not found: {ALIAS_ARN}"),
        (403, "AccessDeniedException", "not authorized to perform: lambda:InvokeFunction"),
    ],
)
async def test_lambda_missing_function_and_access_denied_are_permanent(
    tmp_path: Path,
    receiver: RawReceiver,
    local_keys: None,
    status: int,
    code: str,
    message: str,
) -> None:
    receiver.answer = lambda r: lambda_error(status, code, message)
    rig = await Rig.create(
        tmp_path,
        [
            entry(
                "fn",
                "aws_lambda",
                local_connection(receiver.url, function_name=ALIAS_ARN),
                {"n": "n"},
            )
        ],
    )
    try:
        [d] = await rig.wait_settled(await rig.add(["fn"], {"n": 1}))
        assert d.state == DeliveryState.DEAD
        assert d.attempts == 1
        assert d.last_error == f"AWS {code}: {message} (HTTP {status})"
    finally:
        await rig.close()


@pytest.mark.parametrize(("invocation_type", "sent"), [("Event", False), ("RequestResponse", True)])
async def test_lambda_payload_limit_depends_on_the_invocation_type(
    tmp_path: Path, receiver: RawReceiver, local_keys: None, invocation_type: str, sent: bool
) -> None:
    receiver.answer = lambda r: OK
    rig = await Rig.create(
        tmp_path,
        [
            entry(
                "fn",
                "aws_lambda",
                local_connection(receiver.url, function_name="f"),
                {"text": "text"},
                {"invocation_type": invocation_type},
            )
        ],
    )
    try:
        big = {"text": "x" * (1024 * 1024)}  # just over 1 MB as JSON, far under 6 MB
        [d] = await rig.wait_settled(await rig.add(["fn"], big))
        if sent:
            assert d.state == DeliveryState.DELIVERED, d.last_error
            assert len(receiver.requests[0].body) == 1024 * 1024 + len('{"text":""}')
        else:
            assert d.state == DeliveryState.DEAD
            assert d.last_error == (
                "the record is 1,048,587 bytes as sent, over the 1,048,576-byte limit of "
                "a Lambda Event payload"
            )
            await asyncio.sleep(0.1)
            assert receiver.seen == []
    finally:
        await rig.close()


def test_function_error_text_reads_the_error_object_or_the_text() -> None:
    text = aws_lambda.function_error_text
    assert text("Unhandled", b'{"errorMessage":"m","errorType":"T"}') == (
        "Lambda function error (Unhandled): T: m"
    )
    assert text("Unhandled", b'{"errorMessage":"m"}') == "Lambda function error (Unhandled): m"
    assert text("Handled", b"boom\n") == "Lambda function error (Handled): boom"
    assert text("Unhandled", b"") == "Lambda function error (Unhandled)"
    long = text("Unhandled", json.dumps({"errorMessage": "y" * 5000}).encode())
    assert len(long) < 1100
    assert long.endswith("...")
