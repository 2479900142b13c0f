"""The ``aws_sqs`` type: SendMessageBatch, up to 10 messages a request.

Each record becomes one message whose body is the JSON object of its mapped fields. FIFO
queues (a URL ending in ``.fifo``) get ``MessageGroupId`` from the mapped field that
``settings.message_group_id`` names and ``MessageDeduplicationId`` from the delivery id, so a
resent message is dropped by SQS itself. Fields named in ``settings.message_attributes`` also
travel as message attributes. SQS answers per entry: only failed entries are retried.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

MAX_ENTRIES = 10
MAX_BYTES = 262_144  # a message, and the whole batch (SQS quotas)


def build(
    integration: CompiledIntegration,
    batch: list[tuple[str, dict[str, Any]]],
    *,
    now: float | None = None,
    tokens: TokenProvider | None = None,
) -> list[OutboundRequest]:
    """SendMessageBatch requests of at most 10 messages and 256 KiB each."""
    settings = integration.settings.value
    queue_url = str(integration.connection.value["queue_url"])
    fifo = queue_url.endswith(".fifo")
    return aws.batch_calls(
        integration,
        batch,
        aws.prepare(
            integration,
            batch,
            lambda d, fields: aws.message_entry(d, fields, settings, body="MessageBody", fifo=fifo),
        ),
        lambda e: aws.message_size(e, "MessageBody"),
        service="sqs",
        method="send_message_batch",
        params=lambda entries: {"QueueUrl": queue_url, "Entries": entries},
        max_count=MAX_ENTRIES,
        max_bytes=MAX_BYTES,
        max_item_bytes=MAX_BYTES,
        what="an SQS message",
    )


def read(request: OutboundRequest, response: Response) -> list[Outcome]:
    """Per entry: ``Successful`` delivered; ``Failed`` retried unless the sender is at fault
    (a throttling or server code retries even then)."""
    return aws.read_by_id("sqs", "SendMessageBatch", request, response)


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
        check=aws.check_fifo("queue_url"),
        blocking_build=aws.needs_credentials_io,
    )
)
