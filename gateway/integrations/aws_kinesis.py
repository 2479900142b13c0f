"""The ``aws_kinesis`` type: PutRecords into a Kinesis data stream, up to 500 records a request.

Each record becomes one Kinesis record whose data is the JSON object of its mapped fields and
whose partition key is the value of the mapped field that ``settings.partition_key`` names (a
record without one fails permanently, as a mapping error). Requests stay within Kinesis's
limits: 500 records and 5 MiB (data plus partition keys); a single record over 1 MiB is
refused with a clear reason. ``stream_name`` may also be the stream's ARN.

Kinesis answers positionally: ``Records[i]`` is the result of the i-th record sent. An entry
with an ``ErrorCode`` failed; throttling (``ProvisionedThroughputExceededException``,
``KMSThrottlingException``) and ``InternalFailure`` retry that record alone, other codes are
permanent with AWS's code and message. ``FailedRecordCount`` only summarises the entries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from gateway.integrations import aws
from gateway.integrations.base import (
    Action,
    IntegrationType,
    OutboundRequest,
    Outcome,
    Param,
    Response,
    TokenProvider,
    register,
)
from gateway.mapping.errors import MappingError

if TYPE_CHECKING:
    from gateway.mapping.model import CompiledIntegration

MAX_RECORDS = 500
MAX_REQUEST_BYTES = 5 * 1024 * 1024  # data plus partition keys, the whole request
MAX_RECORD_BYTES = 1024 * 1024  # data plus partition key, one record
MAX_KEY_CHARS = 256


def _record(fields: dict[str, Any], key_field: str) -> dict[str, Any]:
    key = aws.field_text(fields, key_field, "the partition key")
    if len(key) > MAX_KEY_CHARS:
        raise MappingError(
            f"the partition key from field {key_field!r} is {len(key)} characters, over "
            f"Kinesis's limit of {MAX_KEY_CHARS}",
            field=key_field,
            value=key,
        )
    return {"Data": orjson.dumps(fields), "PartitionKey": key}


def _size(record: dict[str, Any]) -> int:
    return len(record["Data"]) + len(record["PartitionKey"].encode())


def _stream(name: str, region: str) -> dict[str, str]:
    if not name.startswith("arn:"):
        return {"StreamName": name}
    parts = name.split(":")
    if len(parts) < 6 or parts[2] != "kinesis" or not parts[5].startswith("stream/"):
        raise ValueError(f"{name!r} is not a Kinesis stream ARN")
    if parts[3] != region:
        raise ValueError(f"the stream ARN is in region {parts[3]!r}, the connection in {region!r}")
    return {"StreamARN": name}


def build(
    integration: CompiledIntegration,
    batch: list[tuple[str, dict[str, Any]]],
    *,
    now: float | None = None,
    tokens: TokenProvider | None = None,
) -> list[OutboundRequest]:
    """PutRecords requests of at most 500 records and 5 MiB each."""
    conn = integration.connection.value
    stream = _stream(str(conn["stream_name"]), str(conn.get("region") or "us-east-1"))
    key_field = str(integration.settings.value["partition_key"])
    return aws.batch_calls(
        integration,
        batch,
        aws.prepare(integration, batch, lambda _, fields: _record(fields, key_field)),
        _size,
        service="kinesis",
        method="put_records",
        params=lambda records: {**stream, "Records": records},
        max_count=MAX_RECORDS,
        max_bytes=MAX_REQUEST_BYTES,
        max_item_bytes=MAX_RECORD_BYTES,
        what="a Kinesis record (data plus partition key)",
    )


def read(request: OutboundRequest, response: Response) -> list[Outcome]:
    """Per record, by position: no ``ErrorCode`` delivered; throttling and internal failures
    retried; other codes permanent."""
    return aws.read_by_position("kinesis", "PutRecords", "Records", request, response)


def check(
    connection: dict[str, Any], settings: dict[str, Any], fields: list[str]
) -> list[tuple[str, str]]:
    """The partition key comes from a mapped field."""
    name = settings.get("partition_key")
    if name and name not in fields:
        return [("settings.partition_key", f"names {name!r}, which is not a mapped field")]
    return []


AWS_KINESIS = register(
    IntegrationType(
        name="aws_kinesis",
        description="Puts each mapped record as a JSON record into an Amazon Kinesis data "
        "stream (PutRecords; partition key from a mapped field).",
        connection=(
            *aws.AWS_CONNECTION,
            Param(
                "stream_name",
                description="The stream's name, or its ARN.",
                required=True,
                example="clickstream",
            ),
        ),
        settings=(
            Param(
                "partition_key",
                description="The mapped field whose value is each record's partition key "
                "(records with equal keys go to the same shard, in order). A record without "
                "a value fails as a mapping error.",
                required=True,
                example="customer_id",
            ),
        ),
        actions=(
            Action(
                "put_record",
                "Put the mapped fields as the JSON data of one Kinesis record.",
                open_fields=True,
            ),
        ),
        default_options={"batch_size": 500, "concurrency": 4},
        build=build,
        read=read,
        check=check,
        blocking_build=aws.needs_credentials_io,
    )
)
