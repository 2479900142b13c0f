"""The ``aws_sns`` type: PublishBatch, up to 10 messages a request.

Each record becomes one message whose body is the JSON object of its mapped fields. FIFO
topics (an ARN ending in ``.fifo``) get ``MessageGroupId`` from the mapped field that
``settings.message_group_id`` names and ``MessageDeduplicationId`` from the delivery id, so a
resent message is dropped by SNS itself. Fields named in ``settings.message_attributes`` also
travel as message attributes (subscription filter policies can match them). SNS answers per
entry: only failed entries are retried.
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
MAX_BYTES = 262_144  # a message with its attributes, and the whole batch (SNS quotas)


def build(
    integration: CompiledIntegration,
    batch: list[tuple[str, dict[str, Any]]],
    *,
    now: float | None = None,
    tokens: TokenProvider | None = None,
) -> list[OutboundRequest]:
    """PublishBatch requests of at most 10 messages and 256 KiB each."""
    settings = integration.settings.value
    topic_arn = str(integration.connection.value["topic_arn"])
    fifo = topic_arn.endswith(".fifo")
    return aws.batch_calls(
        integration,
        batch,
        aws.prepare(
            integration,
            batch,
            lambda d, fields: aws.message_entry(d, fields, settings, body="Message", fifo=fifo),
        ),
        lambda e: aws.message_size(e, "Message"),
        service="sns",
        method="publish_batch",
        params=lambda entries: {"TopicArn": topic_arn, "PublishBatchRequestEntries": entries},
        max_count=MAX_ENTRIES,
        max_bytes=MAX_BYTES,
        max_item_bytes=MAX_BYTES,
        what="an SNS message",
    )


def read(request: OutboundRequest, response: Response) -> list[Outcome]:
    """Per entry: ``Successful`` delivered; ``Failed`` retried unless the sender is at fault
    (a throttling or server code retries even then)."""
    return aws.read_by_id("sns", "PublishBatch", request, response)


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
        check=aws.check_fifo("topic_arn"),
        blocking_build=aws.needs_credentials_io,
    )
)
