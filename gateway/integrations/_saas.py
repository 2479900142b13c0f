"""What the SaaS integration types (hubspot, segment, slack, mailchimp, ...) share.

Not a type itself (the leading underscore keeps it out of the registry): the connection keys
every SaaS type has, JSON requests cut to a vendor's count and byte limits, and reading an
answer that failed as a whole (rate limit, bad credentials, an outage) into outcomes carrying
the vendor's own message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from gateway.integrations.base import (
    BuildErrors,
    OutboundRequest,
    Outcome,
    OutcomeKind,
    Param,
    Response,
)
from gateway.integrations.transport import is_retryable_status
from gateway.mapping.errors import MappingError

#: How much of a vendor's message an outcome keeps (errors end up in the store and logs).
MESSAGE_CHARS = 300


def base_url_param(default: str, example: str | None = None) -> Param:
    """``connection.base_url``: the vendor's API root, production unless set."""
    return Param(
        "base_url",
        "url",
        "The API root as the vendor documents it; unset: production "
        f"({default}). Tests, proxies and regional hosts set it.",
        example=example,
    )


TIMEOUT_PARAMS = (
    Param("connect_timeout", "number", "Seconds to connect.", default=5),
    Param("read_timeout", "number", "Seconds to wait for the answer.", default=30),
)


def base_url(integration: Any, default: str) -> str:
    """The entry's ``connection.base_url`` or the vendor's production root, without a final
    slash."""
    value = integration.connection.value.get("base_url") or default
    return str(value).rstrip("/")


def dumps(value: Any) -> bytes:
    """JSON as the vendors take it: UTF-8, Swedish and other non-ASCII letters as they are."""
    return orjson.dumps(value)


def loads(body: bytes) -> Any:
    """The answer's JSON, or None when it is not JSON (a proxy's HTML page, an empty body)."""
    if not body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def shorten(text: str) -> str:
    """``text`` cut to :data:`MESSAGE_CHARS` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 3] + "..."


def body_text(response: Response) -> str:
    """The start of the answer's body as text."""
    return shorten(response.body[: MESSAGE_CHARS * 2].decode("utf-8", "replace"))


def whole_request(
    request: OutboundRequest,
    response: Response,
    message: str,
    *,
    retry_after: float | None = None,
    permanent: bool | None = None,
) -> list[Outcome]:
    """Every delivery of the request gets the same outcome: the status decides (408, 425,
    429 and 5xx retry; other failures, 401 and 403 among them, are permanent) unless
    ``permanent`` says otherwise. The error is ``HTTP <status>: <vendor's message>``."""
    status = response.status
    if permanent is None:
        permanent = not is_retryable_status(status)
    kind = OutcomeKind.PERMANENT if permanent else OutcomeKind.RETRY
    error = f"HTTP {status}: {shorten(message)}" if message else f"HTTP {status}"
    return [Outcome(d, kind, status, error, retry_after) for d in request.delivery_ids]


def header_seconds(headers: Mapping[str, str], name: str, *, scale: float = 1.0) -> float | None:
    """A header's non-negative number times ``scale``, or None when absent or not a number."""
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = float(str(raw).strip()) * scale
    except ValueError:
        return None
    if value != value or value < 0:
        return None
    return value


def chunks(
    entries: list[tuple[str, Any]],
    *,
    max_count: int,
    max_bytes: int,
    overhead: int = 64,
    size: Callable[[Any], int] | None = None,
) -> list[list[tuple[str, Any]]]:
    """``(delivery_id, entry)`` pairs cut into runs of at most ``max_count`` entries whose JSON
    (plus ``overhead`` for the envelope) fits ``max_bytes``, in order."""
    # Usually the whole batch fits: one serialisation to check instead of one an entry.
    if (
        0 < len(entries) <= max_count
        and size is None
        and overhead + len(orjson.dumps([e for _, e in entries])) <= max_bytes
    ):
        return [entries]
    measure = size or (lambda e: len(orjson.dumps(e)) + 1)
    out: list[list[tuple[str, Any]]] = []
    current: list[tuple[str, Any]] = []
    used = overhead
    for item in entries:
        n = measure(item[1])
        if current and (len(current) >= max_count or used + n > max_bytes):
            out.append(current)
            current, used = [], overhead
        current.append(item)
        used += n
    if current:
        out.append(current)
    return out


def distinct_rounds(
    entries: list[tuple[str, Any]], key: Callable[[Any], str]
) -> list[list[tuple[str, Any]]]:
    """Entries split so that no run holds two with the same ``key`` (vendors refuse or
    merge a batch that names one record twice); a later duplicate goes to a later run, so
    its request is built after the earlier one's. Order is kept within each run."""
    rounds: list[tuple[set[str], list[tuple[str, Any]]]] = []
    for item in entries:
        k = key(item[1])
        for seen, run in rounds:
            if k not in seen:
                seen.add(k)
                run.append(item)
                break
        else:
            rounds.append(({k}, [item]))
    return [run for _, run in rounds]


def too_big(entries: Iterable[tuple[str, Any]], limit: int, what: str) -> dict[str, Any]:
    """``{delivery_id: MappingError}`` for entries whose JSON is over ``limit`` bytes."""
    out: dict[str, Any] = {}
    for delivery_id, entry in entries:
        n = len(orjson.dumps(entry))
        if n > limit:
            out[delivery_id] = MappingError(
                f"{what} is {n} bytes as JSON; the vendor takes at most {limit}"
            )
    return out


def text_value(value: Any, *, list_separator: str = ";") -> str:
    """A mapped value as vendors with string-only properties take it: booleans as
    ``true``/``false``, lists joined with ``list_separator``, numbers as written."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return list_separator.join(text_value(v) for v in value)
    return str(value)


def need(fields: dict[str, Any], name: str, why: str) -> Any:
    """The mapped value of ``name``; a :class:`MappingError` naming it when blank."""
    value = fields.get(name)
    if value is None or value == "" or value == []:
        raise MappingError(f"{why}, and the field has no value", field=name)
    return value


def raise_failed(failed: dict[str, Any], integration: Any) -> None:
    """Raise :class:`BuildErrors` for the records that cannot become a request."""
    if failed:
        raise BuildErrors(
            {
                d: e.with_context(integration=integration.name)
                if isinstance(e, MappingError)
                else e
                for d, e in failed.items()
            }
        )


def check_names(
    fields: Iterable[str], pattern: re.Pattern[str], rule: str, skip: Iterable[str] = ()
) -> list[tuple[str, str]]:
    """Load-time problems of mapped field names the vendor would refuse."""
    skipped = set(skip)
    return [
        (f"fields.{name}", f"{name!r} is not a valid name: {rule}")
        for name in fields
        if name not in skipped and not pattern.fullmatch(name)
    ]


def delivered(request: OutboundRequest, status: int) -> list[Outcome]:
    """Every delivery of the request delivered."""
    return [Outcome(d, OutcomeKind.DELIVERED, status) for d in request.delivery_ids]
