"""The ``segment`` type: identify and track calls through Segment's HTTP tracking API.

``POST {base_url}/v1/batch`` with ``{"batch": [message, ...]}``, basic auth with the source's
write key as the user name. Each record is one message: ``messageId`` is the delivery id (Segment
drops a message id it has seen, so a retried batch is not counted twice) and ``timestamp`` the
time the gateway received the record (from the delivery id) unless a ``timestamp`` field is
mapped. Field names are the message's own keys: ``userId``, ``anonymousId``, ``event``,
``traits.<name>``, ``properties.<name>``, ``context.<name>``; dots make nested objects.

Segment takes 32 KB a message and 500 KB a batch: a larger message is refused before sending
(dead, with its size), a batch is cut to fit. Segment answers for the whole batch.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from typing import Any

from gateway.integrations import _saas
from gateway.integrations.base import (
    Action,
    Field,
    IntegrationType,
    OutboundRequest,
    Outcome,
    Param,
    Response,
    TokenProvider,
    register,
)
from gateway.mapping.errors import MappingError

DEFAULT_BASE_URL = "https://api.segment.io"
MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
TOP_LEVEL = frozenset({"userId", "anonymousId", "event", "timestamp"})
PREFIXES = ("traits.", "properties.", "context.")
NAME = re.compile(r"(userId|anonymousId|event|timestamp|(traits|properties|context)(\.[^.\s]+)+)")


def received_at(delivery_id: str) -> str:
    """The ISO 8601 UTC time in a delivery id (its first 48 bits are epoch milliseconds; the
    delivery is created when the record is accepted)."""
    try:
        ms = int(delivery_id.removeprefix("dlv_")[:12], 16)
    except ValueError:
        return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
    when = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return when.isoformat(timespec="milliseconds")


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = doc
    for p in parents:
        child = node.get(p)
        if not isinstance(child, dict):
            child = node[p] = {}
        node = child
    node[last] = value


def message(action: str, delivery_id: str, fields: dict[str, Any]) -> dict[str, Any]:
    """One Segment message of ``action`` (identify, track) from a record's mapped fields."""
    if not fields.get("userId") and not fields.get("anonymousId"):
        raise MappingError("Segment needs userId or anonymousId, and neither has a value")
    # The keys Segment's own libraries always send (absent ids as null, no integrations
    # filter), so a message reads the same in Segment's debugger whoever sent it.
    msg: dict[str, Any] = {
        "type": action,
        "messageId": delivery_id,
        "userId": None,
        "anonymousId": None,
        "integrations": {},
        "context": {},
    }
    if action == "track":
        _saas.need(fields, "event", "a track call names its event")
        msg["properties"] = {}
    else:
        msg["traits"] = {}
    for name, value in fields.items():
        if value is None:
            continue
        _set(msg, name, value)
    msg.setdefault("timestamp", received_at(delivery_id))
    return msg


def build(
    integration: Any,
    batch: list[tuple[str, dict[str, Any]]],
    *,
    now: float | None = None,
    tokens: TokenProvider | None = None,
) -> list[OutboundRequest]:
    """``/v1/batch`` requests of at most ``batch_size`` messages and 500 KB each."""
    action = integration.action.name
    # Each message serialised once: its size is checked and the body joined from the parts.
    parts: list[tuple[str, bytes]] = []
    failed: dict[str, Any] = {}
    for delivery_id, fields in batch:
        try:
            part = _saas.dumps(message(action, delivery_id, fields))
        except MappingError as exc:
            failed[delivery_id] = exc
            continue
        if len(part) > MAX_MESSAGE_BYTES:
            failed[delivery_id] = MappingError(
                f"the Segment message is {len(part)} bytes as JSON; the vendor takes at most "
                f"{MAX_MESSAGE_BYTES}"
            )
            continue
        parts.append((delivery_id, part))
    _saas.raise_failed(failed, integration)

    key = str(integration.connection.value["write_key"])
    headers = {
        "Content-Type": "application/json",
        "Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode(),
    }
    url = _saas.base_url(integration, DEFAULT_BASE_URL) + "/v1/batch"
    out = []
    for group in _saas.chunks(
        parts, max_count=len(parts), max_bytes=MAX_BATCH_BYTES, size=lambda p: len(p) + 1
    ):
        body = b'{"batch":[' + b",".join(p for _, p in group) + b"]}"
        out.append(
            OutboundRequest(
                "POST",
                url,
                dict(headers),
                body,
                [d for d, _ in group],
                frozenset({"Authorization"}),
            )
        )
    return out


def read(request: OutboundRequest, response: Response) -> list[Outcome]:
    """Segment answers for the whole batch: 200 delivered; 400 (a malformed or too large
    batch) and 401/403 permanent with Segment's message; 429 and 5xx retry."""
    if 200 <= response.status < 300:
        return _saas.delivered(request, response.status)
    doc = _saas.loads(response.body)
    msg = ""
    if isinstance(doc, dict):
        msg = str(doc.get("message") or doc.get("error") or "")
    return _saas.whole_request(request, response, msg or _saas.body_text(response))


def check(
    connection: dict[str, Any], settings: dict[str, Any], fields: list[str]
) -> list[tuple[str, str]]:
    """When the mapping loads: every field is a Segment message key."""
    return _saas.check_names(
        fields,
        NAME,
        "Segment fields are userId, anonymousId, event, timestamp, or traits.<name>, "
        "properties.<name>, context.<name>",
    )


_IDS = (
    Field("userId", "string", "Your id of the user (userId or anonymousId is required)."),
    Field("anonymousId", "string", "An id of a user not yet known."),
    Field(
        "timestamp",
        "datetime",
        "When it happened; unset: when the gateway received the record.",
    ),
)
_TRAITS = (
    Field("traits.email", "email", "E-mail address."),
    Field("traits.firstName", "string", "First name."),
    Field("traits.lastName", "string", "Last name."),
    Field("traits.name", "string", "Full name."),
    Field("traits.phone", "string", "Phone number."),
    Field("traits.createdAt", "datetime", "When the user signed up."),
)

SEGMENT = register(
    IntegrationType(
        name="segment",
        description="Sends identify and track calls to a Segment source (HTTP tracking API "
        "/v1/batch; messageId is the delivery id, so retries are not counted twice). "
        "A message over 32 KB fails before sending; Segment answers for the whole "
        "batch: 400/401/403 permanent, 429 and 5xx retry.",
        connection=(
            Param(
                "write_key",
                description="The source's write key.",
                required=True,
                secret=True,
                example="${SEGMENT_WRITE_KEY}",
            ),
            _saas.base_url_param(DEFAULT_BASE_URL, example="https://events.eu1.segmentapis.com"),
            *_saas.TIMEOUT_PARAMS,
        ),
        actions=(
            Action(
                "identify",
                "Who the user is: userId or anonymousId and traits.<name> fields (any trait "
                "name; dots nest: traits.address.city).",
                fields=(*_IDS, *_TRAITS),
                open_fields=True,
            ),
            Action(
                "track",
                "What the user did: event, userId or anonymousId, properties.<name> fields "
                "(any property name; dots nest).",
                fields=(
                    *_IDS,
                    Field("event", "string", "The event's name.", required=True),
                    Field("properties.revenue", "number", "Revenue of the event."),
                    Field("properties.currency", "string", "ISO 4217 currency of revenue."),
                ),
                open_fields=True,
            ),
        ),
        # Segment's own libraries send 100 messages a batch; 500 KB a batch is the limit.
        default_options={"batch_size": 100, "batch_wait": 1.0, "concurrency": 4},
        build=build,
        read=read,
        check=check,
    )
)
