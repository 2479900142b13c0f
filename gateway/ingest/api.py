"""The producer API: ``POST /v1/records``, ``POST /v1/records/batch``, ``GET /v1/records/{id}``.

Every request is SigV4-authenticated and rate limited per access key. A record is answered 202
only after it and its deliveries are committed (group commit in the store).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from gateway import logs
from gateway.appkeys import INGEST
from gateway.auth.keys import KeyRing
from gateway.auth.request import Principal, authenticate_body, authenticate_head
from gateway.auth.sigv4 import SigV4Verifier
from gateway.errors import ApiError, json_response
from gateway.ids import delivery_id, record_id
from gateway.ingest import idempotency, jsonbody
from gateway.ingest.body import BodyBudget, Held, content_encoding, decode, read_body
from gateway.ingest.ratelimit import KeyedLimiter
from gateway.ingest.validate import MAX_LISTED, Limits, validate_record
from gateway.integrations.redact import for_producer
from gateway.mapping import ordering
from gateway.mapping.loader import MappingRegistry
from gateway.store.base import (
    Delivery,
    IngestResult,
    IngestWrite,
    NewRecord,
    Store,
    StoreOverloaded,
    StoreUnavailable,
)
from gateway.store.queries import PARKED_AT


@dataclass(slots=True)
class Ingest:
    """What the producer API needs, built once by the application factory."""

    store: Store
    keys: KeyRing
    verifier: SigV4Verifier
    limiter: KeyedLimiter
    mappings: MappingRegistry
    limits: Limits
    max_body_bytes: int
    max_batch_bytes: int
    max_batch_records: int
    idempotency_ttl: float
    signature_ttl: float
    budget: BodyBudget
    body_timeout: float
    # Called with the number of records after each commit: wakes the delivery engine, counts.
    on_commit: Callable[[int], None] | None = None


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC with milliseconds."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _admit(
    ing: Ingest, request: web.Request, limit: int, held: Held
) -> tuple[Principal, bytes]:
    """Authenticate from the headers, read the body (capped, timed out, counted in ``held``),
    verify it as sent, rate limit, then decompress it. Returns the caller and the body.

    Nothing costs memory before the headers' credentials check out, and nothing is
    decompressed before the signature over the bytes sent does (the AWS rule: a signer signs
    what it sends, so a gzip body is signed compressed).
    """
    claimant = await authenticate_head(ing.verifier, ing.keys, request)
    wbits = content_encoding(request)
    raw = await read_body(request, limit, held, ing.body_timeout)
    principal = authenticate_body(ing.verifier, claimant, request, raw)
    key = principal.key
    decision = ing.limiter.take(key.access_key_id, key.rate_limit, key.rate_burst)
    rate_headers = decision.headers()
    logs.info(request).headers.update(rate_headers)
    if not decision.allowed:
        raise ApiError(
            429,
            "RATE_LIMITED",
            f"Rate limit of {decision.limit} requests exceeded for this access key; retry "
            f"after {decision.retry_after} s",
            headers=rate_headers,
        )
    if wbits is None:
        return principal, raw
    return principal, decode(raw, wbits, limit, held)


_UTF8 = frozenset({"utf-8", "utf8"})
_PLAIN_JSON = frozenset({"application/json", "application/json; charset=utf-8"})


def _parse_json(request: web.Request, body: bytes) -> Any:
    if request.headers.get("Content-Type") in _PLAIN_JSON:
        return jsonbody.loads(body)  # what nearly every producer sends: nothing to parse
    if "Content-Type" not in request.headers:
        # aiohttp reports a missing Content-Type as application/octet-stream: say it is missing.
        raise ApiError(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            "Content-Type is missing; send Content-Type: application/json (UTF-8)",
        )
    ctype = request.content_type
    if ctype != "application/json":
        raise ApiError(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            f"Content-Type must be application/json, not {ctype[:100]}",
        )
    charset = request.charset
    if charset is not None and charset.lower() not in _UTF8:
        raise ApiError(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            f"charset {charset[:40]!r} is not supported: JSON bodies must be UTF-8",
        )
    return jsonbody.loads(body)


def _check_record(
    ing: Ingest, principal: Principal, obj: Any, cap: int = MAX_LISTED
) -> tuple[str, dict[str, Any], list[str], str | None]:
    """Validate one record and its group; raise ApiError; return what storing it needs. At
    most ``cap`` problems are listed; ``error_count`` counts them all."""
    group_key, data, errors = validate_record(obj, ing.limits, cap)
    if group_key is not None and group_key not in principal.key.groups:
        raise ApiError(
            403,
            "GROUP_NOT_ALLOWED",
            f"Access key {principal.access_key_id} may not send records to group '{group_key}'",
        )
    if errors.total or group_key is None:
        raise errors.invalid("the record is not valid")
    mapping = ing.mappings.get(group_key)
    if mapping is None:
        if ing.mappings.problems_of(group_key):
            raise ApiError(
                422,
                "UNKNOWN_GROUP",
                f"Group '{group_key}' is not live: its mapping file has errors (the operator "
                "sees them in /readyz and `gateway check`)",
                errors=[{"field": "group_key", "message": "mapping file has errors"}][:cap],
            )
        raise ApiError(
            422,
            "UNKNOWN_GROUP",
            f"Unknown group '{group_key}': there is no mapping file for it",
            errors=[{"field": "group_key", "message": "no such group"}][:cap],
        )
    return group_key, data, mapping.fan_out(data), mapping.version


def _new_record(
    principal: Principal,
    group_key: str,
    data: dict[str, Any],
    integrations: list[str],
    version: str | None,
    now: float,
) -> NewRecord:
    return NewRecord(
        id=record_id(),
        group_key=group_key,
        access_key_id=principal.access_key_id,
        data_json=orjson.dumps(data),
        received_at=now,
        integrations=integrations,
        delivery_ids=[delivery_id() for _ in integrations],
        mapping_version=version,
    )


def store_unavailable(exc: StoreUnavailable) -> ApiError:
    """The producer's answer when the store cannot be reached: 503, retry in a few seconds."""
    return ApiError(
        503,
        "STORE_UNAVAILABLE",
        f"The store is unavailable: {exc}",
        headers={"Retry-After": "5"},
    )


async def commit_write(ing: Ingest, write: IngestWrite) -> IngestResult:
    """Commit ``write`` (202 only after this returns); a busy or unreachable store becomes the
    producer's 503 with the wait it should take."""
    try:
        return await ing.store.commit_ingest(write)
    except StoreOverloaded:
        raise ApiError(
            503,
            "OVERLOADED",
            "The gateway is busy storing records; retry shortly",
            headers={"Retry-After": "1"},
        ) from None
    except StoreUnavailable as exc:
        raise store_unavailable(exc) from None


async def _commit(
    ing: Ingest,
    request: web.Request,
    principal: Principal,
    records: list[NewRecord],
    status: int,
    body: dict[str, Any],
    idem_keys: list[tuple[str, float]],
    req_hash: str,
) -> web.Response:
    """Commit records with their idempotency entries; answer, or replay the earlier answer."""
    payload = orjson.dumps(body)
    write = IngestWrite(
        records,
        idempotency.entries(principal.access_key_id, idem_keys, req_hash, status, payload),
    )
    result = await commit_write(ing, write)
    if not result.committed:
        assert result.replay is not None
        return idempotency.replay_response(result.replay, req_hash)
    if ing.on_commit is not None:
        ing.on_commit(len(records))
    return web.Response(body=payload, status=status, content_type="application/json")


async def _idempotency_keys(
    ing: Ingest, request: web.Request, principal: Principal, body: bytes
) -> tuple[list[tuple[str, float]], str, web.Response | None]:
    """The write's idempotency keys, its request hash, and an earlier answer if one exists."""
    req_hash = idempotency.request_hash(request.method, request.path, body)
    keys = [("sig:" + principal.signature, ing.signature_ttl)]
    header_key = idempotency.header_key(request)
    replay = None
    if header_key is not None:
        keys.append((header_key, ing.idempotency_ttl))
        replay = await idempotency.find_replay(
            ing.store, principal.access_key_id, [header_key], req_hash
        )
    return keys, req_hash, replay


async def post_record(request: web.Request) -> web.Response:
    """``POST /v1/records``: store one record, 202 once committed."""
    ing = request.app[INGEST]
    held = Held(ing.budget)
    try:
        return await _post_record(ing, request, held)
    finally:
        held.release()


async def _post_record(ing: Ingest, request: web.Request, held: Held) -> web.Response:
    principal, body = await _admit(ing, request, ing.max_body_bytes, held)
    obj = _parse_json(request, body)
    keys, req_hash, replay = await _idempotency_keys(ing, request, principal, body)
    if replay is not None:
        return replay
    group_key, data, integrations, version = _check_record(ing, principal, obj)
    logs.info(request).group_key = group_key
    rec = _new_record(principal, group_key, data, integrations, version, time.time())
    ordering.stamp(rec, ing.mappings.get(group_key), data)  # per-key ordering
    logs.info(request).record_id = rec.id
    answer = {"id": rec.id, "status": "accepted", "integrations": integrations}
    return await _commit(ing, request, principal, [rec], 202, answer, keys, req_hash)


async def post_batch(request: web.Request) -> web.Response:
    """``POST /v1/records/batch``: validate each record; store the valid ones; 200 per item."""
    ing = request.app[INGEST]
    held = Held(ing.budget)
    try:
        return await _post_batch(ing, request, held)
    finally:
        held.release()


async def _post_batch(ing: Ingest, request: web.Request, held: Held) -> web.Response:
    principal, body = await _admit(ing, request, ing.max_batch_bytes, held)
    obj = _parse_json(request, body)
    if not isinstance(obj, dict) or not isinstance(obj.get("records"), list):
        raise ApiError(
            400, "INVALID_REQUEST", 'a batch body is {"records": [{"data": ..., "group_key": ...}]}'
        )
    extra = obj.keys() - {"records"}
    if extra:
        raise ApiError(
            400, "INVALID_REQUEST", f"unknown batch fields: {', '.join(sorted(map(str, extra)))}"
        )
    items = obj["records"]
    if len(items) > ing.max_batch_records:
        raise ApiError(
            413,
            "BATCH_TOO_LARGE",
            f"batch holds {len(items)} records; at most {ing.max_batch_records} allowed",
        )
    keys, req_hash, replay = await _idempotency_keys(ing, request, principal, body)
    if replay is not None:
        return replay
    now = time.time()
    records: list[NewRecord] = []
    results: list[dict[str, Any]] = []
    # At most MAX_LISTED problems in the whole answer, however many records are rejected.
    listable = MAX_LISTED
    for index, item in enumerate(items):
        try:
            group_key, data, integrations, version = _check_record(ing, principal, item, listable)
        except ApiError as err:
            listable -= len(err.errors or ())
            results.append(
                {"index": index, "status": "rejected", **err.body(), "http_status": err.status}
            )
            continue
        rec = _new_record(principal, group_key, data, integrations, version, now)
        ordering.stamp(rec, ing.mappings.get(group_key), data)  # per-key ordering
        records.append(rec)
        results.append(
            {"index": index, "status": "accepted", "id": rec.id, "integrations": integrations}
        )
    logs.info(request).records = len(records)
    answer = {"accepted": len(records), "rejected": len(items) - len(records), "results": results}
    if not records:
        return json_response(answer)
    return await _commit(ing, request, principal, records, 200, answer, keys, req_hash)


def delivery_view(d: Delivery) -> dict[str, Any]:
    """A delivery as the API shows it."""
    return {
        "id": d.id,
        "integration": d.integration,
        "state": str(d.state),
        "attempts": d.attempts,
        "last_error": d.last_error,
        "last_status": d.last_status,
        # None too while it waits for an earlier record of its ordering key (parked).
        "next_attempt_at": (
            iso(d.next_attempt_at)
            if d.state == "pending" and d.next_attempt_at < PARKED_AT
            else None
        ),
        "created_at": iso(d.created_at),
        "updated_at": iso(d.updated_at),
        "delivered_at": iso(d.delivered_at),
    }


async def get_record(request: web.Request) -> web.Response:
    """``GET /v1/records/{id}``: the record and its deliveries, for keys allowed on its group."""
    ing = request.app[INGEST]
    held = Held(ing.budget)
    try:
        principal, _ = await _admit(ing, request, ing.max_body_bytes, held)
    finally:
        held.release()
    rid = request.match_info["id"]
    try:
        rec = await ing.store.get_record(rid)
    except StoreUnavailable as exc:
        raise store_unavailable(exc) from None
    # A record of a group the key may not see is answered as absent, so ids cannot be probed.
    if rec is None or rec.group_key not in principal.key.groups:
        raise ApiError(404, "RECORD_NOT_FOUND", f"No record with id '{rid}'")
    logs.info(request).group_key = rec.group_key
    logs.info(request).record_id = rec.id
    return json_response(
        {
            "id": rec.id,
            "group_key": rec.group_key,
            "received_at": iso(rec.received_at),
            "mapping_version": rec.mapping_version,
            "data": orjson.Fragment(rec.data_json),
            # Producers get a code and a short reason, never the integration's answer.
            "deliveries": [for_producer(delivery_view(d)) for d in rec.deliveries],
        }
    )


def add_routes(app: web.Application) -> None:
    """Register the producer API's routes."""
    app.router.add_post("/v1/records", post_record)
    app.router.add_post("/v1/records/batch", post_batch)
    # "batch" is a path of its own, not a record id: OPTIONS or GET on it is 405, Allow: POST.
    app.router.add_get("/v1/records/{id:(?!batch$)[^/]+}", get_record)
