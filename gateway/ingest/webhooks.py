"""Inbound webhooks as a record source: ``POST /v1/webhooks/{source}`` (docs/webhook-sources.md).

A source file (:mod:`gateway.mapping.webhook_sources`) names the group, the verification and
the accepted event types. A request goes: unknown source 404 (before any byte of the body is
read); what the headers alone can refuse (missing signature, a stale timestamp, a wrong bearer
token); the body read with the producer API's hardened reader (cap, timeout, budget);
the signature checked over the bytes as sent, in constant time; rate limit per source; only
then decompressed and parsed. The event is then flattened into a record plus ``event_type`` and
``event_id``, validated with the producer API's limits, and committed with the group's
deliveries and a 24-hour entry for its event id in the same transaction (the store's
idempotency table), so 202 means stored and the same event is never stored twice.

Verification is the standard library's ``hmac``: the Standard Webhooks reference package
(``standardwebhooks``, the tests' oracle) is a dozen lines of the same calls plus dependencies
the gateway does not otherwise need.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from gateway import logs
from gateway.appkeys import INGEST
from gateway.errors import ApiError
from gateway.ids import delivery_id, record_id
from gateway.ingest import idempotency, jsonbody
from gateway.ingest.api import Ingest, commit_write, store_unavailable
from gateway.ingest.body import Held, content_encoding, decode, read_body
from gateway.ingest.validate import Limits, Problems, validate_data
from gateway.mapping.webhook_sources import SourceRegistry, WebhookSource
from gateway.store.base import (
    IdempotencyEntry,
    IngestWrite,
    NewRecord,
    StoreUnavailable,
)

#: The live webhook sources, reloaded with the mappings.
SOURCES: web.AppKey[SourceRegistry] = web.AppKey("webhook_sources", SourceRegistry)

#: Seconds a webhook's timestamp may be away from the gateway's clock (Standard Webhooks).
TOLERANCE = 300.0
#: Parts a flattened name has at most; an object found at that depth is kept as JSON text.
MAX_DEPTH = 8
#: Attribute names the gateway adds to every webhook record.
EVENT_TYPE = "event_type"
EVENT_ID = "event_id"
_MAX_ID = 255
_ECHO = 64  # how much of a sender's value a message quotes back


def principal_of(source: WebhookSource) -> str:
    """The records' ``access_key_id`` and the idempotency namespace of a source's events."""
    return f"webhook:{source.name}"


def _unauthenticated(code: str, message: str) -> ApiError:
    return ApiError(401, code, message)


def _clip(value: str) -> str:
    return value if len(value) <= _ECHO else value[:_ECHO] + "..."


# -- verification ----------------------------------------------------------------------------


def _check_timestamp(ts: float, now: float) -> None:
    if now - ts > TOLERANCE:
        raise _unauthenticated(
            "WEBHOOK_TIMESTAMP_EXPIRED",
            f"the webhook timestamp is {int(now - ts)} s old; at most {int(TOLERANCE)} s allowed",
        )
    if ts - now > TOLERANCE:
        raise _unauthenticated(
            "WEBHOOK_TIMESTAMP_EXPIRED",
            f"the webhook timestamp is {int(ts - now)} s in the future; at most "
            f"{int(TOLERANCE)} s allowed",
        )


def verify_head(source: WebhookSource, request: web.Request, now: float) -> None:
    """Refuse what the headers alone show to be unauthenticated, before the body is read."""
    headers = request.headers
    if source.scheme == "bearer":
        auth = headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthenticated(
                "WEBHOOK_UNAUTHENTICATED", "Authorization: Bearer <token> is required"
            )
        if not hmac.compare_digest(token.strip().encode("utf-8", "replace"), source.key):
            raise _unauthenticated("WEBHOOK_UNAUTHENTICATED", "the bearer token is not valid")
        return
    if source.scheme == "hmac_sha256":
        assert source.header is not None
        if not headers.get(source.header):
            raise _unauthenticated(
                "WEBHOOK_SIGNATURE_MISSING", f"the {source.header} header is required"
            )
        return
    missing = [
        h for h in ("webhook-id", "webhook-timestamp", "webhook-signature") if not headers.get(h)
    ]
    if missing:
        raise _unauthenticated(
            "WEBHOOK_SIGNATURE_MISSING",
            f"Standard Webhooks headers missing: {', '.join(missing)}",
        )
    msg_id = headers["webhook-id"]
    if len(msg_id) > _MAX_ID or not msg_id.isprintable():
        raise ApiError(
            400, "INVALID_EVENT_ID", f"webhook-id must be 1 to {_MAX_ID} printable characters"
        )
    raw_ts = headers["webhook-timestamp"]
    if not raw_ts.isascii() or not raw_ts.isdigit() or len(raw_ts) > 12:
        raise _unauthenticated(
            "WEBHOOK_TIMESTAMP_INVALID", "webhook-timestamp must be whole seconds since the epoch"
        )
    _check_timestamp(int(raw_ts), now)


def _hmac_b64(key: bytes, content: bytes) -> bytes:
    return base64.b64encode(hmac.new(key, content, hashlib.sha256).digest())


def verify_body(source: WebhookSource, request: web.Request, body: bytes) -> None:
    """Check the signature over the body as sent (still encoded); constant-time compares."""
    headers = request.headers
    if source.scheme == "bearer":
        return
    if source.scheme == "standard_webhooks":
        signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
        expected = _hmac_b64(source.key, signed)
        ok = False
        # A space-separated list (several during secret rotation); only v1 (HMAC) is known.
        for part in headers["webhook-signature"].split(" "):
            version, _, sig = part.partition(",")
            if version == "v1" and hmac.compare_digest(sig.encode("utf-8", "replace"), expected):
                ok = True
        if not ok:
            raise _unauthenticated(
                "WEBHOOK_SIGNATURE_INVALID",
                "the webhook-signature does not match the body (no v1 signature made with "
                "this source's secret)",
            )
        return
    assert source.header is not None
    value = headers[source.header].strip()
    if source.prefix:
        if not value.lower().startswith(source.prefix.lower()):
            raise _unauthenticated(
                "WEBHOOK_SIGNATURE_INVALID",
                f"the {source.header} header must start with {source.prefix!r}",
            )
        value = value[len(source.prefix) :]
    digest = hmac.new(source.key, body, hashlib.sha256).digest()
    if source.encoding == "hex":
        expected, given = digest.hex().encode(), value.lower().encode("utf-8", "replace")
    else:
        expected, given = base64.b64encode(digest), value.encode("utf-8", "replace")
    if not hmac.compare_digest(given, expected):
        raise _unauthenticated(
            "WEBHOOK_SIGNATURE_INVALID",
            f"the {source.header} header is not the HMAC-SHA256 of the body with this "
            "source's secret",
        )


# -- the event -------------------------------------------------------------------------------


def lookup(obj: Any, path: str) -> Any:
    """The value at a dotted ``path`` of nested objects, or None. ``""`` is ``obj`` itself."""
    if not path:
        return obj
    for part in path.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def _timestamp(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            return None
        if dt.tzinfo is None:
            return None  # a time without a zone is ambiguous: refuse rather than guess
        return dt.timestamp()
    return None


def flatten(obj: dict[str, Any], limits: Limits) -> tuple[dict[str, Any], Problems]:
    """The event's object as a flat record: nested names joined with ``.``; scalars and lists
    of scalars as they are; lists holding an object or a list, and objects whose name already
    has :data:`MAX_DEPTH` parts, as their JSON text; empty objects add nothing. Two parts
    flattening to one name are a problem (nothing is silently overwritten)."""
    out: dict[str, Any] = {}
    problems = Problems()

    def put(name: str, value: Any) -> None:
        if name in out:
            problems.add(f"data.{_clip(name)}", "two parts of the event flatten to this name")
        else:
            out[name] = value

    def walk(node: dict[str, Any], prefix: str, depth: int) -> None:
        for key, value in node.items():
            name = f"{prefix}.{key}" if prefix else key
            if isinstance(value, dict):
                if depth + 1 >= MAX_DEPTH:  # the name has MAX_DEPTH parts already
                    put(name, orjson.dumps(value).decode())
                else:
                    walk(value, name, depth + 1)
            elif isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
                put(name, orjson.dumps(value).decode())
            else:
                put(name, value)
            if len(out) > limits.max_attributes:
                return  # validation reports the count; do not build an unbounded dict

    walk(obj, "", 0)
    return out, problems


def _event_id(source: WebhookSource, request: web.Request, event: Any) -> str:
    if source.scheme == "standard_webhooks":
        return request.headers["webhook-id"]
    value = lookup(event, source.id_path)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise ApiError(
            400,
            "MISSING_EVENT_ID",
            f"the event has no id at '{source.id_path}' (text or an integer); it is needed to "
            "refuse the same event twice",
        )
    if len(value) > _MAX_ID or not value.isprintable():
        raise ApiError(
            400, "INVALID_EVENT_ID", f"the event id must be 1 to {_MAX_ID} printable characters"
        )
    return value


def _event_type(source: WebhookSource, event: Any) -> str:
    value = lookup(event, source.type_path)
    if not isinstance(value, str) or not value:
        raise ApiError(
            400,
            "MISSING_EVENT_TYPE",
            f"the event has no type at '{source.type_path}' (text)",
        )
    if value not in source.accept:
        raise ApiError(
            422,
            "EVENT_TYPE_NOT_ACCEPTED",
            f"event type '{_clip(value)}' is not accepted by source '{source.name}'",
            errors=[{"field": source.type_path, "message": "not in the source's accept list"}],
        )
    return value


def _record_data(
    source: WebhookSource, event: Any, event_type: str, event_id: str, limits: Limits
) -> dict[str, Any]:
    obj = lookup(event, source.data_path)
    if not isinstance(obj, dict):
        where = source.data_path or "the top level"
        raise ApiError(
            422,
            "INVALID_EVENT",
            f"the event has no object at {where!r} to make a record of",
            errors=[{"field": source.data_path or "(body)", "message": "must be an object"}],
        )
    data, problems = flatten(obj, limits)
    for name, value in ((EVENT_TYPE, event_type), (EVENT_ID, event_id)):
        # The event may carry the same fact under the same name (data: "" flattens the whole
        # event, its id among it): fine when it agrees, refused rather than overwritten if not.
        if name in data and str(data[name]) != value:
            problems.add(
                f"data.{name}", "the gateway sets this attribute; the event has another value"
            )
        data[name] = value
    validate_data(data, limits, errors=problems)
    if problems.total:
        raise problems.invalid("the event does not make a valid record")
    return data


def _parse(request: web.Request, body: bytes) -> Any:
    ctype = request.content_type if "Content-Type" in request.headers else ""
    if ctype != "application/json":
        raise ApiError(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            "Content-Type must be application/json" + (f", not {ctype[:100]}" if ctype else ""),
        )
    charset = request.charset
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        raise ApiError(415, "UNSUPPORTED_MEDIA_TYPE", "JSON bodies must be UTF-8")
    return jsonbody.loads(body)


# -- the handler -----------------------------------------------------------------------------


def _replayed(entry: IdempotencyEntry, req_hash: str, event_id: str) -> web.Response:
    if entry.request_hash != req_hash:
        raise ApiError(
            409,
            "EVENT_ID_CONFLICT",
            f"event id '{_clip(event_id)}' was already accepted with a different body",
        )
    return web.Response(
        body=entry.response,
        status=entry.status,
        content_type="application/json",
        headers={idempotency.REPLAY_HEADER: "true"},
    )


async def post_webhook(request: web.Request) -> web.Response:
    """``POST /v1/webhooks/{source}``: verify, flatten and store one event; 202 once committed."""
    ing = request.app[INGEST]
    held = Held(ing.budget)
    try:
        return await _post_webhook(ing, request.app[SOURCES], request, held)
    finally:
        held.release()


async def _post_webhook(
    ing: Ingest, sources: SourceRegistry, request: web.Request, held: Held
) -> web.Response:
    name = request.match_info["source"]
    source = sources.get(name)
    if source is None:
        raise ApiError(404, "UNKNOWN_SOURCE", f"No webhook source '{_clip(name)}'")
    principal = principal_of(source)
    info = logs.info(request)
    info.access_key_id = principal
    info.group_key = source.group_key
    now = time.time()
    verify_head(source, request, now)
    wbits = content_encoding(request)
    raw = await read_body(request, ing.max_body_bytes, held, ing.body_timeout)
    verify_body(source, request, raw)
    decision = ing.limiter.take(principal)
    info.headers.update(decision.headers())
    if not decision.allowed:
        raise ApiError(
            429,
            "RATE_LIMITED",
            f"Rate limit of {decision.limit} requests exceeded for this source; retry after "
            f"{decision.retry_after} s",
            headers=decision.headers(),
        )
    body = raw if wbits is None else decode(raw, wbits, ing.max_body_bytes, held)
    event = _parse(request, body)
    if not isinstance(event, dict):
        raise ApiError(400, "INVALID_EVENT", "a webhook event is a JSON object")
    event_id = _event_id(source, request, event)
    if source.timestamp_path is not None:
        ts = _timestamp(lookup(event, source.timestamp_path))
        if ts is None:
            raise ApiError(
                400,
                "MISSING_EVENT_TIMESTAMP",
                f"the event has no time at '{source.timestamp_path}' (epoch seconds, or ISO "
                "8601 with a zone)",
            )
        _check_timestamp(ts, now)
    req_hash = idempotency.request_hash("POST", request.path, body)
    event_key = "event:" + event_id
    try:
        earlier = await ing.store.get_idempotency(principal, event_key, now)
    except StoreUnavailable as exc:
        raise store_unavailable(exc) from None
    if earlier is not None:
        return _replayed(earlier, req_hash, event_id)
    event_type = _event_type(source, event)
    data = _record_data(source, event, event_type, event_id, ing.limits)
    mapping = ing.mappings.get(source.group_key)
    if mapping is None:
        # The operator's doing, not the sender's: 503 makes a webhook sender retry later.
        raise ApiError(
            503,
            "GROUP_NOT_LIVE",
            f"The group of webhook source '{source.name}' is not live (its mapping file is "
            "missing or has errors)",
            headers={"Retry-After": "60"},
        )
    integrations = mapping.fan_out(data)
    rec = NewRecord(
        id=record_id(),
        group_key=source.group_key,
        access_key_id=principal,
        data_json=orjson.dumps(data),
        received_at=now,
        integrations=integrations,
        delivery_ids=[delivery_id() for _ in integrations],
        mapping_version=mapping.version,
    )
    info.record_id = rec.id
    payload = orjson.dumps({"id": rec.id, "status": "accepted", "integrations": integrations})
    entries = idempotency.entries(
        principal, [(event_key, ing.idempotency_ttl)], req_hash, 202, payload
    )
    result = await commit_write(ing, IngestWrite([rec], entries))
    if not result.committed:
        # The same event committed by a concurrent request between the lookup and now.
        assert result.replay is not None
        return _replayed(result.replay, req_hash, event_id)
    if ing.on_commit is not None:
        ing.on_commit(1)
    return web.Response(body=payload, status=202, content_type="application/json")


def add_routes(app: web.Application, sources: SourceRegistry) -> None:
    """Register ``POST /v1/webhooks/{source}`` with the registry of live sources."""
    app[SOURCES] = sources
    app.router.add_post("/v1/webhooks/{source}", post_webhook)
