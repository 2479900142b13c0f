"""The ``aws_sns`` type: PublishBatch, up to 10 messages a request.

Each record becomes one message whose body is the JSON object of its mapped fields. FIFO
topics (an ARN ending in ``.fifo``) get ``MessageGroupId`` from the mapped field that
``settings.message_group_id`` names and ``MessageDeduplicationId`` from the delivery id, so a
resent message is dropped by SNS itself. Fields named in ``settings.message_attributes`` also
travel as message attributes (subscription filter policies can match them). SNS answers per
entry: only failed entries are retried.
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
MAX_BYTES = 262_144  # a message with its attributes, and the whole batch (SNS quotas)


def _entry(
    delivery_id: str, fields: dict[str, Any], settings: dict[str, Any], fifo: bool
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "Id": delivery_id,  # up to 80 letters, digits, - and _: a delivery id fits
        "Message": orjson.dumps(fields).decode(),
    }
    attrs = aws.message_attributes(fields, settings.get("message_attributes") or [])
    if attrs:
        entry["MessageAttributes"] = attrs
    if fifo:
        group_field = settings.get("message_group_id")
        if not group_field:
            raise ValueError("settings.message_group_id must name a field for a FIFO topic")
        entry["MessageGroupId"] = aws.field_text(fields, str(group_field), "MessageGroupId")
        entry["MessageDeduplicationId"] = delivery_id
    return entry


def _size(entry: dict[str, Any]) -> int:
    return len(entry["Message"].encode()) + aws.attributes_size(
        entry.get("MessageAttributes") or {}
    )


def build(
    integration: Any,
    batch: list[tuple[str, dict[str, Any]]],
    *,
    now: float | None = None,
    tokens: TokenProvider | None = None,
) -> list[OutboundRequest]:
    """PublishBatch requests of at most 10 messages and 256 KiB each."""
    conn = integration.connection.value
    settings = integration.settings.value
    topic_arn = str(conn["topic_arn"])
    fifo = topic_arn.endswith(".fifo")
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
        what="an SNS message",
    )
    return [
        aws.build_call(
            conn,
            "sns",
            "publish_batch",
            {"TopicArn": topic_arn, "PublishBatchRequestEntries": [entries[d] for d, _ in chunk]},
            [d for d, _ in chunk],
        )
        for chunk in chunks
    ]


def read(request: OutboundRequest, response: Response) -> list[Outcome]:
    """Per entry: ``Successful`` delivered; ``Failed`` retried unless the sender is at fault
    (a throttling or server code retries even then)."""
    whole = aws.whole_request_failed("sns", "PublishBatch", request, response)
    if whole is not None:
        return whole
    answer = aws.parse("sns", "PublishBatch", response)
    ours = set(request.delivery_ids)
    out = [
        Outcome(e["Id"], OutcomeKind.DELIVERED, response.status)
        for e in answer.get("Successful") or []
        if e.get("Id") in ours
    ]
    for e in answer.get("Failed") or []:
        if e.get("Id") in ours:
            out.append(
                aws.outcome(
                    e["Id"],
                    e.get("Code"),
                    e.get("Message"),
                    response.status,
                    sender_fault=bool(e.get("SenderFault")),
                )
            )
    return out


AWS_SNS = register(
    IntegrationType(
        name="aws_sns",
        description="Publishes each mapped record as a JSON message to an Amazon SNS topic "
        "(PublishBatch; FIFO topics supported).",
        connection=(
            *aws.AWS_CONNECTION,
            Param(
                "topic_arn",
                description="The topic's ARN; a name ending in .fifo is a FIFO topic.",
                required=True,
                example="arn:aws:sns:eu-west-1:123456789012:signups",
            ),
        ),
        settings=(
            Param(
                "message_group_id",
                description="FIFO topics: the mapped field whose value is the MessageGroupId "
                "(records with equal values stay in order). MessageDeduplicationId is the "
                "delivery id.",
            ),
            Param(
                "message_attributes",
                "list",
                "Mapped fields also sent as message attributes (String or Number), e.g. for "
                "subscription filter policies.",
                default=[],
            ),
        ),
        actions=(
            Action(
                "publish",
                "Publish the mapped fields as the JSON body of one message.",
                open_fields=True,
            ),
        ),
        default_options={"batch_size": 10, "concurrency": 8},
        build=build,
        read=read,
        blocking_build=True,
    )
)
