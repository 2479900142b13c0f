"""Admin API: producers' access keys -- list (never a secret), create (the secret shown once),
revoke, rotate (a new key; the old one stays valid until a given time)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway.admin.common import audit, iso, parse_body, principal, store_errors
from gateway.appkeys import MAPPINGS, SECRET_BOX, STORE
from gateway.auth.keys import CreatedKey, create_key
from gateway.errors import ApiError, json_response
from gateway.mapping.writer import GROUP_KEY_RE
from gateway.store.base import AccessKey

#: How long a rotated key stays valid when the request does not say.
DEFAULT_OVERLAP = 24 * 3600.0
#: The longest overlap a rotation may give the old key.
MAX_OVERLAP = 90 * 24 * 3600.0


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(
        422, "INVALID_REQUEST", f"{field}: {message}", errors=[{"field": field, "message": message}]
    )


def _key_view(key: AccessKey, now: float) -> dict[str, Any]:
    if key.revoked_at is None:
        state = "active"
    elif key.revoked_at > now:
        state = "expiring"  # rotated: valid until revoked_at
    else:
        state = "revoked"
    return {
        "access_key_id": key.access_key_id,
        "name": key.name,
        "groups": key.groups,
        "created_at": iso(key.created_at),
        "revoked_at": iso(key.revoked_at),
        "state": state,
        "rate_limit": key.rate_limit,
        "rate_burst": key.rate_burst,
    }


def _created_view(created: CreatedKey) -> dict[str, Any]:
    return {
        "access_key_id": created.access_key_id,
        "secret_access_key": created.secret_access_key,
        "groups": created.groups,
        "name": created.name,
    }


async def list_keys(request: web.Request) -> web.Response:
    """``GET /keys`` (``?group=G`` narrows): every access key, oldest first, never a secret."""
    group = request.query.get("group")
    now = time.time()
    keys = await request.config_dict[STORE].list_access_keys()
    return json_response(
        {
            "keys": [
                _key_view(k, now)
                for k in keys
                if (group is None or group in k.groups) and _visible(request, k)
            ]
        }
    )


def _visible(request: web.Request, key: AccessKey) -> bool:
    # A scoped token sees a key only when it sees every group of the key: otherwise the key
    # would tell it that the other groups exist.
    who = principal(request)
    return all(who.sees(g) for g in key.groups)


def _groups(request: web.Request, value: Any) -> list[str]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(g, str) and GROUP_KEY_RE.fullmatch(g) for g in value)
    ):
        raise _invalid("groups", "a non-empty list of group keys")
    directory = request.config_dict[MAPPINGS].directory
    who = principal(request)
    missing = [g for g in value if not who.sees(g) or not (directory / f"{g}.yaml").exists()]
    if missing:
        raise ApiError(
            422,
            "UNKNOWN_GROUP",
            f"no such group: {', '.join(missing)}",
            errors=[
                {"field": f"groups[{value.index(g)}]", "message": f"no group {g!r}"}
                for g in missing
            ],
        )
    return list(value)


async def create(request: web.Request) -> web.Response:
    """``POST /keys`` ``{"groups": [...], "name"?, "rate_limit"?, "rate_burst"?}``: a new
    access key (201); the answer is the only place its secret ever appears."""
    body = await parse_body(request)
    if not isinstance(body, dict):
        raise _invalid("(top level)", "must be a JSON object")
    unknown = sorted(set(body) - {"groups", "name", "rate_limit", "rate_burst"})
    if unknown:
        raise _invalid(unknown[0], "unknown field")
    groups = _groups(request, body.get("groups"))
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        raise _invalid("name", "must be a string")
    rate = body.get("rate_limit")
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 1e6
    ):
        raise _invalid("rate_limit", "requests per second, above 0")
    burst = body.get("rate_burst")
    if burst is not None and (
        isinstance(burst, bool) or not isinstance(burst, int) or not 0 < burst <= 1_000_000
    ):
        raise _invalid("rate_burst", "a whole number above 0")
    created = await create_key(
        request.config_dict[STORE],
        request.config_dict[SECRET_BOX],
        groups,
        name,
        float(rate) if rate is not None else None,
        burst,
    )
    await audit(request, "key.create", created.access_key_id, {"groups": created.groups})
    return json_response(_created_view(created), status=201)


async def _get(request: web.Request) -> AccessKey:
    key_id = request.match_info["key_id"]
    key = await request.config_dict[STORE].get_access_key(key_id)
    if key is None or not _visible(request, key):
        raise ApiError(404, "UNKNOWN_ACCESS_KEY", f"no access key {key_id!r}")
    return key


async def revoke(request: web.Request) -> web.Response:
    """``DELETE /keys/{key_id}``: revoke now (204); a rotated key's overlap ends too."""
    key = await _get(request)
    await request.config_dict[STORE].revoke_access_key(key.access_key_id, time.time())
    await audit(request, "key.revoke", key.access_key_id, {})
    return web.Response(status=204)


def _until(body: dict[str, Any], now: float) -> float:
    raw = body.get("old_key_valid_until")
    if raw is None:
        return now + DEFAULT_OVERLAP
    if not isinstance(raw, str):
        raise _invalid("old_key_valid_until", "an ISO 8601 time, e.g. 2025-05-01T12:00:00Z")
    try:
        t = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise _invalid(
            "old_key_valid_until", "an ISO 8601 time, e.g. 2025-05-01T12:00:00Z"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    until = t.timestamp()
    if not now <= until <= now + MAX_OVERLAP:
        raise _invalid("old_key_valid_until", "from now to at most 90 days ahead")
    return until


async def rotate(request: web.Request) -> web.Response:
    """``POST /keys/{key_id}/rotate`` ``{"old_key_valid_until"?}``: a new key with the same
    groups, name and limits (201, its secret shown once); the old key stays valid until the
    given time (default: 24 hours), then is revoked."""
    key = await _get(request)
    raw = await parse_body(request, allow_empty=True)
    body = raw if raw is not None else {}
    if not isinstance(body, dict):
        raise _invalid("(top level)", "must be a JSON object")
    now = time.time()
    if key.revoked_at is not None and key.revoked_at <= now:
        raise ApiError(
            409, "ACCESS_KEY_REVOKED", f"access key {key.access_key_id} is revoked already"
        )
    until = _until(body, now)
    created = await create_key(
        request.config_dict[STORE],
        request.config_dict[SECRET_BOX],
        key.groups,
        key.name,
        key.rate_limit,
        key.rate_burst,
    )
    await request.config_dict[STORE].revoke_access_key(key.access_key_id, until)
    await audit(
        request,
        "key.rotate",
        key.access_key_id,
        {"new_access_key_id": created.access_key_id, "old_key_valid_until": iso(until)},
    )
    out = _created_view(created)
    out["old_access_key_id"] = key.access_key_id
    out["old_key_valid_until"] = iso(until)
    return json_response(out, status=201)


def add_routes(app: web.Application) -> None:
    """Register the key routes on the admin sub-application."""
    app.router.add_get("/keys", store_errors(list_keys))
    app.router.add_post("/keys", store_errors(create))
    app.router.add_delete("/keys/{key_id}", store_errors(revoke))
    app.router.add_post("/keys/{key_id}/rotate", store_errors(rotate))
