"""Admin API: deliveries (list, one with its attempts, replay) and lanes (status, pause, resume).

Every time goes in and out as ISO 8601 UTC. Every bad parameter is a 400 naming it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from aiohttp import web

from gateway.appkeys import ENGINE, MAPPINGS, SETTINGS, STORE
from gateway.errors import ApiError, json_response
from gateway.ingest.api import delivery_view, iso
from gateway.store.base import (
    Attempt,
    BlockedKey,
    Delivery,
    DeliveryFilter,
    DeliveryState,
    LaneStats,
    StoreError,
)

T = TypeVar("T")

#: Page size of ``GET /admin/v1/deliveries``: default and largest.
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: Most deliveries one replay call puts back (by ids or by filter).
MAX_REPLAY = 10000

_LIST_PARAMS = (
    "state",
    "group",
    "integration",
    "created_after",
    "created_before",
    "cursor",
    "limit",
)
_FILTER_KEYS = ("state", "group", "integration", "created_after", "created_before")


# -- parsing ---------------------------------------------------------------------------------


def _bad(field: str, message: str, code: str = "INVALID_PARAMETER") -> ApiError:
    return ApiError(400, code, f"{field}: {message}", errors=[{"field": field, "message": message}])


def parse_time(field: str, value: Any, code: str = "INVALID_PARAMETER") -> float:
    """ISO 8601 (``2025-05-01T12:00:00Z``, an offset, or a bare date) as epoch seconds; a
    time without an offset is UTC."""
    if not isinstance(value, str) or not value.strip():
        raise _bad(field, "an ISO 8601 time is required, e.g. 2025-05-01T12:00:00Z", code)
    try:
        t = datetime.fromisoformat(value.strip())
    except ValueError:
        raise _bad(
            field, f"{value!r} is not an ISO 8601 time (e.g. 2025-05-01T12:00:00Z)", code
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.timestamp()


def _state(field: str, value: Any, allowed: tuple[str, ...], code: str) -> DeliveryState:
    if value not in allowed:
        raise _bad(field, f"{value!r} is not one of {', '.join(allowed)}", code)
    return DeliveryState(value)


def _name(field: str, value: Any, code: str) -> str:
    if not isinstance(value, str) or not value:
        raise _bad(field, "a non-empty string is required", code)
    return value


def _limit(field: str, value: Any, highest: int, code: str) -> int:
    if isinstance(value, bool):
        value = None
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            value = None
    if not isinstance(value, int):
        raise _bad(field, f"a whole number from 1 to {highest} is required", code)
    if not 1 <= value <= highest:
        raise _bad(field, f"{value} is out of range: from 1 to {highest}", code)
    return value


def _filter(
    values: Mapping[str, Any], *, states: tuple[str, ...], prefix: str = "", code: str
) -> DeliveryFilter:
    flt = DeliveryFilter()
    if values.get("state") is not None:
        flt.state = _state(prefix + "state", values["state"], states, code)
    if values.get("group") is not None:
        flt.group_key = _name(prefix + "group", values["group"], code)
    if values.get("integration") is not None:
        flt.integration = _name(prefix + "integration", values["integration"], code)
    for key in ("created_after", "created_before"):
        if values.get(key) is not None:
            setattr(flt, key, parse_time(prefix + key, values[key], code))
    if (
        flt.created_after is not None
        and flt.created_before is not None
        and flt.created_after >= flt.created_before
    ):
        raise _bad(prefix + "created_before", "must be later than created_after", code)
    return flt


def _query(request: web.Request) -> dict[str, str]:
    """The query parameters, each at most once, none unknown."""
    out: dict[str, str] = {}
    for key in request.query:
        if key not in _LIST_PARAMS:
            raise _bad(
                key, f"unknown parameter; known: {', '.join(_LIST_PARAMS)}", "UNKNOWN_PARAMETER"
            )
        values = request.query.getall(key)
        if len(values) > 1:
            raise _bad(key, "given more than once")
        out[key] = values[0]
    return out


async def _store(call: Awaitable[T]) -> T:
    """Await a store call; an unavailable store is a 503."""
    try:
        return await call
    except StoreError as exc:
        raise ApiError(
            503,
            "STORE_UNAVAILABLE",
            f"The store is unavailable: {exc}",
            headers={"Retry-After": "5"},
        ) from None


# -- views -----------------------------------------------------------------------------------


def delivery_item(d: Delivery) -> dict[str, Any]:
    """A delivery as the admin API lists it: the producer API's view with its group and
    record."""
    view = delivery_view(d)
    return {"id": d.id, "record_id": d.record_id, "group_key": d.group_key, **view}


def attempt_view(a: Attempt) -> dict[str, Any]:
    """One attempt of a delivery."""
    return {
        "started_at": iso(a.started_at),
        "duration_ms": round(a.duration_ms, 3),
        "status": a.status,
        "error": a.error,
        "mapping_version": a.mapping_version,
        "link": a.link,  # the link this attempt wrote, e.g. "a@b.se -> lic_1"
    }


# -- deliveries ------------------------------------------------------------------------------


async def list_deliveries(request: web.Request) -> web.Response:
    """``GET /admin/v1/deliveries``: deliveries matching the filter, oldest first, a page at
    a time; ``next_cursor`` continues (null on the last page)."""
    q = _query(request)
    flt = _filter(q, states=tuple(s.value for s in DeliveryState), code="INVALID_PARAMETER")
    limit = _limit("limit", q["limit"], MAX_LIMIT, "INVALID_PARAMETER") if "limit" in q else None
    cursor = q.get("cursor")
    if cursor is not None and not cursor:
        raise _bad("cursor", "empty; leave it out for the first page")
    try:
        page = await _store(
            request.config_dict[STORE].list_deliveries(
                flt, cursor=cursor, limit=limit or DEFAULT_LIMIT
            )
        )
    except ValueError:
        raise _bad("cursor", "not a cursor this API gave out (next_cursor)") from None
    return json_response(
        {"deliveries": [delivery_item(d) for d in page.items], "next_cursor": page.next_cursor}
    )


async def get_delivery(request: web.Request) -> web.Response:
    """``GET /admin/v1/deliveries/{id}``: the delivery, its lease, and every attempt."""
    did = request.match_info["id"]
    store = request.config_dict[STORE]
    d = await _store(store.get_delivery(did))
    if d is None:
        raise ApiError(404, "DELIVERY_NOT_FOUND", f"No delivery with id '{did}'")
    attempts = await _store(store.list_attempts(did))
    leased = d.lease_expires_at is not None and d.lease_expires_at > time.time()
    return json_response(
        {
            **delivery_item(d),
            "lease_owner": d.lease_owner if leased else None,
            "lease_expires_at": iso(d.lease_expires_at) if leased else None,
            "attempt_history": [attempt_view(a) for a in attempts],
        }
    )


async def replay(request: web.Request) -> web.Response:
    """``POST /admin/v1/deliveries/replay`` ``{"ids": [...]}`` or ``{"filter": {...},
    "limit": N}``: put dead (or delivered) deliveries back to pending, due now. They are
    mapped when sent, so through the mapping live then."""
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "MALFORMED_JSON", f"request body is not valid JSON: {exc}") from None
    shape = 'the body is {"ids": [...]} or {"filter": {"state": "dead", ...}, "limit": N}'
    if not isinstance(body, dict):
        raise ApiError(400, "INVALID_REQUEST", shape)
    unknown = sorted(set(body) - {"ids", "filter", "limit"})
    if unknown:
        raise ApiError(
            400,
            "INVALID_REQUEST",
            f"unknown fields: {', '.join(unknown)}; {shape}",
            errors=[{"field": k, "message": "unknown field"} for k in unknown],
        )
    has_ids, has_filter = body.get("ids") is not None, body.get("filter") is not None
    if has_ids == has_filter:
        raise ApiError(
            400,
            "INVALID_REQUEST",
            ("give either ids or filter, not both; " if has_ids else "") + shape,
        )
    limit = MAX_REPLAY
    if body.get("limit") is not None:
        limit = _limit("limit", body["limit"], MAX_REPLAY, "INVALID_REQUEST")
    ids: list[str] | None = None
    flt: DeliveryFilter | None = None
    if has_ids:
        ids = body["ids"]
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
            raise _bad("ids", "a non-empty list of delivery ids is required", "INVALID_REQUEST")
        if len(ids) > MAX_REPLAY:
            raise _bad("ids", f"{len(ids)} ids; at most {MAX_REPLAY} per call", "INVALID_REQUEST")
    else:
        given = body["filter"]
        if not isinstance(given, dict):
            raise _bad("filter", "an object is required", "INVALID_REQUEST")
        extra = sorted(set(given) - set(_FILTER_KEYS))
        if extra:
            raise _bad(
                "filter." + extra[0],
                f"unknown filter field; known: {', '.join(_FILTER_KEYS)}",
                "INVALID_REQUEST",
            )
        flt = _filter(given, states=("dead", "delivered"), prefix="filter.", code="INVALID_REQUEST")
    replayed = await _store(
        request.config_dict[STORE].replay_deliveries(now=time.time(), ids=ids, flt=flt, limit=limit)
    )
    if replayed:
        request.config_dict[ENGINE].notify()
    return json_response({"replayed": len(replayed), "ids": replayed})


# -- lanes -----------------------------------------------------------------------------------


def _lane_view(
    key: tuple[str, str],
    live: dict[str, Any] | None,
    stats: LaneStats | None,
    declared: Any,
    paused: bool,
    now: float,
) -> dict[str, Any]:
    """One lane from the three sources: the engine, the store, the live mapping."""
    live = live or {}
    oldest = stats.oldest_pending_at if stats else None
    return {
        "group_key": key[0],
        "integration": key[1],
        "type": declared.type.name if declared is not None else (live.get("type") or None),
        "in_mapping": declared is not None,
        "enabled": declared.enabled if declared is not None else None,
        "paused": paused or bool(live.get("paused")),
        "breaker": live.get("breaker", "closed"),
        "breaker_retry_in": live.get("breaker_retry_in"),
        "held_until_in": live.get("held_until_in"),
        "queued": live.get("queued", 0),
        "in_flight": live.get("in_flight", 0),
        "backlog": {
            "pending": stats.pending if stats else 0,
            "due": stats.due if stats else 0,
            "dead": stats.dead if stats else 0,
            "oldest_pending_at": iso(oldest),
            "oldest_pending_age": round(max(0.0, now - oldest), 3) if oldest is not None else None,
        },
        "since_start": {
            "delivered": live.get("delivered", 0),
            "retried": live.get("retried", 0),
            "dead": live.get("dead", 0),
            "requests": live.get("requests", 0),
        },
        "last_error": live.get("last_error"),
        "last_error_at": iso(live.get("last_error_at")),
        "last_success_at": iso(live.get("last_success_at")),
    }


def ordering_views(blocked: list[BlockedKey]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Keys held by a dead delivery (``ordering_on_dead: block``), per lane, as the lanes
    listing shows them: the key, its oldest dead record and how many wait behind it."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for b in blocked:
        out.setdefault((b.group_key, b.integration), []).append(
            {
                "ordering_key": b.ordering_key,
                "record_id": b.record_id,
                "delivery_id": b.delivery_id,
                "since": iso(b.since),
                "waiting": b.waiting,
            }
        )
    return out


async def _lanes(request: web.Request, only: tuple[str, str] | None = None) -> list[dict[str, Any]]:
    config = request.config_dict
    store, registry = config[STORE], config[MAPPINGS]
    now = time.time()
    stats = {(s.group_key, s.integration): s for s in await _store(store.lane_stats(now))}
    paused = await _store(store.paused_lanes())
    live = {(s["group_key"], s["integration"]): s for s in config[ENGINE].status()}
    declared: dict[tuple[str, str], Any] = {}
    for group in registry.groups():
        mapping = registry.get(group)
        if mapping is not None:
            for integration in mapping.integrations:
                declared[(group, integration.name)] = integration
    keys = sorted(set(stats) | set(live) | set(declared))
    if only is not None:
        keys = [only]
    blocked = ordering_views(await _store(store.blocked_keys()))  # per-key ordering
    return [
        {
            **_lane_view(k, live.get(k), stats.get(k), declared.get(k), k in paused, now),
            "blocked_keys": blocked.get(k, []),
        }
        for k in keys
    ]


async def list_lanes(request: web.Request) -> web.Response:
    """``GET /admin/v1/lanes``: every lane (group, integration) known to the mappings, the
    store or this process's engine: breaker, pause, queue, backlog, counters, last error."""
    return json_response(
        {
            "lanes": await _lanes(request),
            "delivery_engine": request.config_dict[SETTINGS].delivery,
        }
    )


def _declared_lane(request: web.Request) -> tuple[str, str]:
    group, name = request.match_info["group"], request.match_info["integration"]
    mapping = request.config_dict[MAPPINGS].get(group)
    if mapping is None:
        raise ApiError(404, "UNKNOWN_LANE", f"group {group!r} has no live mapping")
    if mapping.integration(name) is None:
        known = ", ".join(i.name for i in mapping.integrations) or "none"
        raise ApiError(
            404,
            "UNKNOWN_LANE",
            f"the mapping of group {group!r} (version {mapping.version}) has no integration "
            f"{name!r}; it has: {known}",
        )
    return group, name


async def pause_lane(request: web.Request) -> web.Response:
    """``POST /admin/v1/lanes/{group}/{integration}/pause``: stop sending on the lane (kept
    across restarts); its deliveries stay pending. Answers the lane's status."""
    key = _declared_lane(request)
    await _store(request.config_dict[ENGINE].pause(*key))
    [lane] = await _lanes(request, only=key)
    return json_response(lane)


async def resume_lane(request: web.Request) -> web.Response:
    """``POST /admin/v1/lanes/{group}/{integration}/resume``: send again; every pending
    delivery of the lane is due now. Answers the lane's status."""
    key = _declared_lane(request)
    await _store(request.config_dict[ENGINE].resume(*key))
    [lane] = await _lanes(request, only=key)
    return json_response(lane)


def add_routes(app: web.Application) -> None:
    """Register the delivery and lane routes on the admin sub-application."""
    app.router.add_get("/deliveries", list_deliveries)
    app.router.add_post("/deliveries/replay", replay)
    app.router.add_get("/deliveries/{id}", get_delivery)
    app.router.add_get("/lanes", list_lanes)
    app.router.add_post("/lanes/{group}/{integration}/pause", pause_lane)
    app.router.add_post("/lanes/{group}/{integration}/resume", resume_lane)
