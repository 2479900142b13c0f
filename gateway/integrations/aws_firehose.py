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

from typing import Any

import orjson

from gateway.integrations import aws
from gateway.integrations.base import (
    Action,
    IntegrationType,
    OutboundRequest,
    Outcome,
    OutcomeKind,
    Param,
    Response,
    TokenProvider,
    register,
)

MAX_RECORDS = 500
MAX_REQUEST_BYTES = 4 * 1024 * 1024  # record data, the whole request
MAX_RECORD_BYTES = 1000 * 1024  # one record's data, before base64


def _data(fields: dict[str, Any]) -> bytes:
    return orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE)


def build(
    integration: Any,
    batch: list[tuple[str, dict[str, Any]]],
    *,
    now: float | None = None,
    tokens: TokenProvider | None = None,
) -> list[OutboundRequest]:
    """PutRecordBatch requests of at most 500 records and 4 MiB each."""
    conn = integration.connection.value
    data = {delivery_id: _data(fields) for delivery_id, fields in batch}
    chunks = aws.split(
        batch,
        lambda d, _: len(data[d]),
        max_count=MAX_RECORDS,
        max_bytes=MAX_REQUEST_BYTES,
        max_item_bytes=MAX_RECORD_BYTES,
        what="a Firehose record",
    )
    stream = str(conn["delivery_stream_name"])
    return [
        aws.build_call(
            conn,
            "firehose",
            "put_record_batch",
            {"DeliveryStreamName": stream, "Records": [{"Data": data[d]} for d, _ in chunk]},
            [d for d, _ in chunk],
        )
        for chunk in chunks
    ]


def read(request: OutboundRequest, response: Response) -> list[Outcome]:
    """Per record, by position: no ``ErrorCode`` delivered; ``ServiceUnavailableException``
    and internal failures retried; other codes permanent."""
    whole = aws.whole_request_failed("firehose", "PutRecordBatch", request, response)
    if whole is not None:
        return whole
    entries = aws.parse("firehose", "PutRecordBatch", response).get("RequestResponses") or []
    ids = request.delivery_ids
    if len(entries) != len(ids):
        # Positions cannot be trusted: send everything again rather than lose a record.
        why = f"Firehose answered {len(entries)} results for {len(ids)} records"
        return [Outcome(d, OutcomeKind.RETRY, response.status, why) for d in ids]
    out = []
    for delivery_id, e in zip(ids, entries, strict=True):
        code = e.get("ErrorCode")
        if code:
            out.append(aws.outcome(delivery_id, code, e.get("ErrorMessage"), response.status))
        else:
            out.append(Outcome(delivery_id, OutcomeKind.DELIVERED, response.status))
    return out


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
        blocking_build=True,
    )
)
