"""The ``aws_firehose`` type: PutRecordBatch into a Firehose stream, up to 500 records a
request.

Each record's data is the JSON object of its mapped fields followed by a newline, so what
Firehose writes to its destination (S3 objects, ...) is newline-delimited JSON. Requests stay
within Firehose's limits: 500 records and 4 MiB of data; a single record over 1,000 KiB is
refused with a clear reason.

Firehose answers positionally: ``RequestResponses[i]`` is the result of the i-th record sent.
An entry with an ``ErrorCode`` failed; ``ServiceUnavailableException`` (Firehose's way of
saying "slow down") and internal failures retry that record alone, other codes are permanent
with AWS's code and message. ``FailedPutCount`` only summarises the entries.
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

if TYPE_CHECKING:
    from gateway.mapping.model import CompiledIntegration

MAX_RECORDS = 500
MAX_REQUEST_BYTES = 4 * 1024 * 1024  # record data, the whole request
MAX_RECORD_BYTES = 1000 * 1024  # one record's data, before base64


def _data(fields: dict[str, Any]) -> bytes:
    return orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE)


def build(
    integration: CompiledIntegration,
    batch: list[tuple[str, dict[str, Any]]],
    *,
    now: float | None = None,
    tokens: TokenProvider | None = None,
) -> list[OutboundRequest]:
    """PutRecordBatch requests of at most 500 records and 4 MiB each."""
    stream = str(integration.connection.value["delivery_stream_name"])
    return aws.batch_calls(
        integration,
        batch,
        {delivery_id: {"Data": _data(fields)} for delivery_id, fields in batch},
        lambda e: len(e["Data"]),
        service="firehose",
        method="put_record_batch",
        params=lambda records: {"DeliveryStreamName": stream, "Records": records},
        max_count=MAX_RECORDS,
        max_bytes=MAX_REQUEST_BYTES,
        max_item_bytes=MAX_RECORD_BYTES,
        what="a Firehose record",
    )


def read(request: OutboundRequest, response: Response) -> list[Outcome]:
    """Per record, by position: no ``ErrorCode`` delivered; ``ServiceUnavailableException``
    and internal failures retried; other codes permanent."""
    return aws.read_by_position("firehose", "PutRecordBatch", "RequestResponses", request, response)


AWS_FIREHOSE = register(
    IntegrationType(
        name="aws_firehose",
        description="Puts each mapped record as one line of newline-delimited JSON into an "
        "Amazon Data Firehose stream (PutRecordBatch).",
        connection=(
            *aws.AWS_CONNECTION,
            Param(
                "delivery_stream_name",
                description="The Firehose stream's name.",
                required=True,
                example="events-to-s3",
            ),
        ),
        actions=(
            Action(
                "put_record",
                "Put the mapped fields as one JSON line (the record's data ends in a newline).",
                open_fields=True,
            ),
        ),
        default_options={"batch_size": 500, "concurrency": 4},
        build=build,
        read=read,
        blocking_build=aws.needs_credentials_io,
    )
)
