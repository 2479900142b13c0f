"""The ``aws_sqs`` type: SendMessageBatch, up to 10 messages a request.

Each record becomes one message whose body is the JSON object of its mapped fields. FIFO
queues (a URL ending in ``.fifo``) get ``MessageGroupId`` from the mapped field that
``settings.message_group_id`` names and ``MessageDeduplicationId`` from the delivery id, so a
resent message is dropped by SQS itself. Fields named in ``settings.message_attributes`` also
travel as message attributes. SQS answers per entry: only failed entries are retried.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.integrations import aws
from gateway.integrations.base import (
    Action,
    BuildErrors,
    IntegrationType,
    OutboundRequest,
    Outcome,
    OutcomeKind,
    Param,
    Response,
    TokenProvider,
    register,
)
from gateway.mapping.errors import MappingError

MAX_ENTRIES = 10
MAX_BYTES = 262_144  # a message, and the whole batch (SQS quotas)


def _attributes(fields: dict[str, Any], names: list[str]) -> dict[str, Any]:
    out = {}
    for name in names:
        value = fields.get(name)
        if value is None or value == "" or value == []:
            continue  # SQS refuses empty attribute values
        if isinstance(value, bool) or not isinstance(value, int | float):
            text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
            out[name] = {"DataType": "String", "StringValue": text}
        else:
            out[name] = {"DataType": "Number", "StringValue": str(value)}
    return out


def _entry(
    delivery_id: str, fields: dict[str, Any], settings: dict[str, Any], fifo: bool
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "Id": delivery_id,  # letters, digits, - and _: a delivery id fits
        "MessageBody": orjson.dumps(fields).decode(),
    }
    attrs = _attributes(fields, list(settings.get("message_attributes") or []))
    if attrs:
        entry["MessageAttributes"] = attrs
    if fifo:
        group_field = settings.get("message_group_id")
        if not group_field:
            raise ValueError("settings.message_group_id must name a field for a FIFO queue")
        entry["MessageGroupId"] = aws.field_text(fields, str(group_field), "MessageGroupId")
        entry["MessageDeduplicationId"] = delivery_id
    return entry


def _size(entry: dict[str, Any]) -> int:
    size = len(entry["MessageBody"].encode())
    for name, attr in (entry.get("MessageAttributes") or {}).items():
        size += len(name.encode()) + len(attr["DataType"]) + len(attr["StringValue"].encode())
    return size


def build(
    integration: Any,
    batch: list[tuple[str, dict[str, Any]]],
    *,
    now: float | None = None,
    tokens: TokenProvider | None = None,
) -> list[OutboundRequest]:
    """SendMessageBatch requests of at most 10 messages and 256 KiB each."""
    conn = integration.connection.value
    settings = integration.settings.value
    queue_url = str(conn["queue_url"])
    fifo = queue_url.endswith(".fifo")
    entries: dict[str, dict[str, Any]] = {}
    failed: dict[str, Any] = {}
    for delivery_id, fields in batch:
        try:
            entries[delivery_id] = _entry(delivery_id, fields, settings, fifo)
        except MappingError as exc:
            failed[delivery_id] = exc.with_context(integration=integration.name)
    if failed:
        raise BuildErrors(failed)
    chunks = aws.split(
        batch,
        lambda d, _: _size(entries[d]),
        max_count=MAX_ENTRIES,
        max_bytes=MAX_BYTES,
        max_item_bytes=MAX_BYTES,
        what="an SQS message",
    )
    return [
        aws.build_call(
            conn,
            "sqs",
            "send_message_batch",
            {"QueueUrl": queue_url, "Entries": [entries[d] for d, _ in chunk]},
            [d for d, _ in chunk],
        )
        for chunk in chunks
    ]


def read(request: OutboundRequest, response: Response) -> list[Outcome]:
    """Per entry: ``Successful`` delivered; ``Failed`` retried unless the sender is at fault."""
    whole = aws.whole_request_failed("sqs", "SendMessageBatch", request, response)
    if whole is not None:
        return whole
    answer = aws.parse("sqs", "SendMessageBatch", response)
    by_entry = {d: d for d in request.delivery_ids}
    out = [
        Outcome(by_entry[e["Id"]], OutcomeKind.DELIVERED, response.status)
        for e in answer.get("Successful") or []
        if e.get("Id") in by_entry
    ]
    for e in answer.get("Failed") or []:
        if e.get("Id") in by_entry:
            out.append(
                aws.outcome(
                    by_entry[e["Id"]],
                    e.get("Code"),
                    e.get("Message"),
                    response.status,
                    sender_fault=bool(e.get("SenderFault")),
                )
            )
    return out


AWS_SQS = register(
    IntegrationType(
        name="aws_sqs",
        description="Sends each mapped record as a JSON message to an Amazon SQS queue "
        "(SendMessageBatch; FIFO queues supported).",
        connection=(
            *aws.AWS_CONNECTION,
            Param(
                "queue_url",
                "url",
                "The queue's URL; a name ending in .fifo is a FIFO queue.",
                required=True,
                example="https://sqs.eu-west-1.amazonaws.com/123456789012/signups",
            ),
        ),
        settings=(
            Param(
                "message_group_id",
                description="FIFO queues: the mapped field whose value is the MessageGroupId "
                "(records with equal values stay in order). MessageDeduplicationId is the "
                "delivery id.",
            ),
            Param(
                "message_attributes",
                "list",
                "Mapped fields also sent as message attributes (String or Number).",
                default=[],
            ),
        ),
        actions=(
            Action(
                "send_message",
                "Send the mapped fields as the JSON body of one message.",
                open_fields=True,
            ),
        ),
        default_options={"batch_size": 10, "concurrency": 8},
        build=build,
        read=read,
        blocking_build=True,
    )
)
