"""The ``aws_s3`` type: PutObject, one NDJSON object per batch.

Each line of the object is the JSON of one record's mapped fields, in delivery id order
(creation order, whatever order the batch was claimed in). The key
comes from ``settings.key``, a template of the send time in UTC (``{year}`` ``{month}``
``{day}`` ``{hour}`` ``{minute}``, zero-padded) and ``{batch_id}``: the batch's idempotency
key (the delivery id for a batch of one, else ``batch_`` and a digest of its sorted delivery
ids, as the ``http`` type's ``Idempotency-Key``). A batch sent again with the same deliveries writes
the same key and so replaces its object instead of adding a duplicate, as long as the retry
falls in the same time partition (a retry across, e.g., an hour boundary lands in the next
hour's prefix). ``{batch_id}`` is required: without it every batch of a partition would
overwrite the one before.

S3 answers in its rest-xml protocol: ``SlowDown`` (503), ``InternalError`` and 5xx retry;
``AccessDenied``, ``NoSuchBucket`` and other client errors are permanent, with S3's code.
"""

from __future__ import annotations

import string
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

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
from gateway.integrations.http import idempotency_key

if TYPE_CHECKING:
    from gateway.mapping.model import CompiledIntegration

DEFAULT_KEY = "gateway/{year}/{month}/{day}/{hour}/{batch_id}.ndjson"
KEY_FIELDS = ("year", "month", "day", "hour", "minute", "batch_id")
CONTENT_TYPE = "application/x-ndjson"


def check_key(template: str) -> None:
    """Raise ``ValueError`` unless the template names only known placeholders, plainly,
    and ``{batch_id}`` among them."""
    names = set()
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"settings.key {template!r}: {exc}") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in KEY_FIELDS or spec or conversion:
            known = " ".join("{" + k + "}" for k in KEY_FIELDS)
            raise ValueError(
                f"settings.key {template!r}: unknown placeholder {{{name}}}; known: {known}"
            )
        names.add(name)
    if "batch_id" not in names:
        raise ValueError(
            f"settings.key {template!r} must contain {{batch_id}}, or the batches of one "
            "time partition overwrite each other"
        )


def object_key(template: str, when: float, delivery_ids: list[str]) -> str:
    """The key of a batch sent at ``when`` (epoch seconds; partitions in UTC)."""
    check_key(template)
    t = datetime.fromtimestamp(when, UTC)
    return template.format(
        year=f"{t.year:04d}",
        month=f"{t.month:02d}",
        day=f"{t.day:02d}",
        hour=f"{t.hour:02d}",
        minute=f"{t.minute:02d}",
        batch_id=idempotency_key(delivery_ids),
    )


def build(
    integration: CompiledIntegration,
    batch: list[tuple[str, dict[str, Any]]],
    *,
    now: float | None = None,
    tokens: TokenProvider | None = None,
) -> list[OutboundRequest]:
    """One PutObject of the whole batch as NDJSON, its lines in delivery id order."""
    conn = integration.connection.value
    settings = integration.settings.value
    # By delivery id (creation order): the same deliveries make the same key and the same
    # object whatever order a retry or a replay claims them in.
    batch = sorted(batch, key=lambda item: item[0])
    ids = [d for d, _ in batch]
    key = object_key(
        str(settings.get("key") or DEFAULT_KEY), time.time() if now is None else now, ids
    )
    body = b"".join(orjson.dumps(fields) + b"\n" for _, fields in batch)
    params = {
        "Bucket": str(conn["bucket"]),
        "Key": key,
        "Body": body,
        "ContentType": CONTENT_TYPE,
    }
    return [aws.build_call(conn, "s3", "put_object", params, ids)]


def read(request: OutboundRequest, response: Response) -> list[Outcome]:
    """Delivered on 2xx; else every record of the object by S3's error code."""
    whole = aws.whole_request_failed("s3", "PutObject", request, response)
    if whole is not None:
        return whole
    return [Outcome(d, OutcomeKind.DELIVERED, response.status) for d in request.delivery_ids]


def check(
    connection: dict[str, Any], settings: dict[str, Any], fields: list[str]
) -> list[tuple[str, str]]:
    """The key template, when the mapping loads."""
    try:
        check_key(str(settings.get("key") or DEFAULT_KEY))
    except ValueError as exc:
        return [("settings.key", str(exc).removeprefix("settings.key "))]
    return []


AWS_S3 = register(
    IntegrationType(
        name="aws_s3",
        description="Writes each batch of mapped records as one NDJSON object to an Amazon "
        "S3 bucket (PutObject), under a key with date partitions.",
        connection=(
            *aws.AWS_CONNECTION,
            Param("bucket", description="The bucket's name.", required=True, example="events"),
        ),
        settings=(
            Param(
                "key",
                description="Object key template: {year} {month} {day} {hour} {minute} of "
                "the send time in UTC, and {batch_id} (required), the batch's idempotency "
                "key (from its sorted delivery ids), so a batch sent again within the same "
                "partition replaces its object rather than duplicating it.",
                default=DEFAULT_KEY,
                example="signups/dt={year}-{month}-{day}/{hour}{minute}-{batch_id}.ndjson",
            ),
        ),
        actions=(
            Action(
                "put_object",
                "Write the batch's mapped fields as one JSON line per record, in delivery "
                f"id order, ContentType {CONTENT_TYPE}.",
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
