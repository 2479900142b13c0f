"""The ``aws_eventbridge`` type: PutEvents, up to 10 events a request.

Each record becomes one event whose ``Detail`` is the JSON object of its mapped fields (all
of them, including any used for the source, detail type or bus below).

``Source``, ``DetailType`` and ``EventBusName`` are per event in PutEvents, so each may be
fixed or come from the record:

- ``settings.source`` / ``settings.detail_type``: a literal for every event;
  ``settings.source_field`` / ``settings.detail_type_field``: the mapped field whose value is
  the event's own. A named field with a value wins; without one the literal is used, and with
  no literal either the record fails (a mapping error naming the field).
- ``connection.event_bus_name`` (name or ARN; unset: the account's default bus), and
  ``settings.event_bus_field`` likewise for a per-record bus.

Size: AWS counts an entry as the UTF-8 bytes of Source, DetailType, Detail and each of
Resources, plus 14 for Time when set; an entry and the whole request must stay within 256 KB.
The answer's ``Entries`` are positional (one per request entry, in order): an entry with an
``ErrorCode`` failed; throttling and internal codes retry, the rest are permanent.
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

MAX_ENTRIES = 10
MAX_BYTES = 262_144  # an entry, and the whole request (EventBridge quotas: 256 KB)
TIME_BYTES = 14  # what a Time parameter counts for, whatever its value


def _pick(
    fields: dict[str, Any],
    settings: dict[str, Any],
    literal_key: str,
    field_key: str,
    what: str,
) -> str | None:
    """The value of a per-event key: the named mapped field's, else the literal."""
    name = settings.get(field_key)
    literal = settings.get(literal_key)
    if name:
        value = fields.get(str(name))
        if value is not None and value != "" and value != []:
            return str(value)
        if not literal:
            return aws.field_text(fields, str(name), what)  # raises: no value, no fallback
    return str(literal) if literal else None


def _entry(fields: dict[str, Any], settings: dict[str, Any], bus: str | None) -> dict[str, Any]:
    source = _pick(fields, settings, "source", "source_field", "Source")
    detail_type = _pick(fields, settings, "detail_type", "detail_type_field", "DetailType")
    if source is None:
        raise ValueError("settings.source or settings.source_field is required")
    if detail_type is None:
        raise ValueError("settings.detail_type or settings.detail_type_field is required")
    entry: dict[str, Any] = {
        "Source": source,
        "DetailType": detail_type,
        "Detail": orjson.dumps(fields).decode(),
    }
    bus_field = settings.get("event_bus_field")
    if bus_field and fields.get(str(bus_field)) not in (None, "", []):
        bus = str(fields[str(bus_field)])
    if bus:
        entry["EventBusName"] = bus
    return entry


def entry_size(entry: dict[str, Any]) -> int:
    """An entry's size as AWS counts it against the 256 KB limit."""
    size = TIME_BYTES if entry.get("Time") is not None else 0
    for key in ("Source", "DetailType", "Detail"):
        if entry.get(key) is not None:
            size += len(str(entry[key]).encode())
    for resource in entry.get("Resources") or []:
        if resource is not None:
            size += len(str(resource).encode())
    return size


def build(
    integration: CompiledIntegration,
    batch: list[tuple[str, dict[str, Any]]],
    *,
    now: float | None = None,
    tokens: TokenProvider | None = None,
) -> list[OutboundRequest]:
    """PutEvents requests of at most 10 events and 256 KB each."""
    conn = integration.connection.value
    settings = integration.settings.value
    bus = str(conn["event_bus_name"]) if conn.get("event_bus_name") else None
    return aws.batch_calls(
        integration,
        batch,
        aws.prepare(integration, batch, lambda _, fields: _entry(fields, settings, bus)),
        entry_size,
        service="events",
        method="put_events",
        params=lambda entries: {"Entries": entries},
        max_count=MAX_ENTRIES,
        max_bytes=MAX_BYTES,
        max_item_bytes=MAX_BYTES,
        what="an EventBridge event (Source, DetailType and Detail)",
    )


def read(request: OutboundRequest, response: Response) -> list[Outcome]:
    """Per entry, by position: an ``ErrorCode`` is a failure (throttling and internal codes
    retry, the rest are permanent with AWS's code and message); the others are delivered."""
    return aws.read_by_position("events", "PutEvents", "Entries", request, response)


def check(
    connection: dict[str, Any], settings: dict[str, Any], fields: list[str]
) -> list[tuple[str, str]]:
    """Source and detail type given one way or the other; fields named are mapped."""
    out = []
    for literal, from_field in (("source", "source_field"), ("detail_type", "detail_type_field")):
        if not settings.get(literal) and not settings.get(from_field):
            out.append((f"settings.{literal}", f"set {literal} or {from_field}"))
    for key in ("source_field", "detail_type_field", "event_bus_field"):
        name = settings.get(key)
        if name and name not in fields:
            out.append((f"settings.{key}", f"names {name!r}, which is not a mapped field"))
    return out


AWS_EVENTBRIDGE = register(
    IntegrationType(
        name="aws_eventbridge",
        description="Puts each mapped record as an event on an Amazon EventBridge bus "
        "(PutEvents); Detail is the JSON of the mapped fields, source and detail type fixed "
        "or from mapped fields.",
        connection=(
            *aws.AWS_CONNECTION,
            Param(
                "event_bus_name",
                description="The event bus, by name or ARN; unset: the account's default bus.",
                example="orders",
            ),
        ),
        settings=(
            Param(
                "source",
                description="Source of every event (unless source_field gives one). "
                "One of source and source_field is required.",
                example="com.example.shop",
            ),
            Param(
                "source_field",
                description="The mapped field whose value is the event's Source; when it "
                "has no value, source is used.",
            ),
            Param(
                "detail_type",
                description="DetailType of every event (unless detail_type_field gives one). "
                "One of detail_type and detail_type_field is required.",
                example="signup",
            ),
            Param(
                "detail_type_field",
                description="The mapped field whose value is the event's DetailType; when it "
                "has no value, detail_type is used.",
            ),
            Param(
                "event_bus_field",
                description="The mapped field whose value is the event's bus (name or ARN); "
                "when it has no value, connection.event_bus_name is used.",
            ),
        ),
        actions=(
            Action(
                "put_event",
                "Put one event whose Detail is the JSON object of the mapped fields.",
                open_fields=True,
            ),
        ),
        default_options={"batch_size": 10, "concurrency": 8},
        build=build,
        read=read,
        check=check,
        blocking_build=aws.needs_credentials_io,
    )
)
