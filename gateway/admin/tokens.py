"""Admin API: scoped admin tokens, and who a request acts as.

Besides ``GATEWAY_ADMIN_TOKEN`` (full access), an admin creates tokens with a role and
optionally a list of groups (``POST /tokens``). A token is ``gwt_<id>_<secret>``; the store
keeps only the SHA-256 of the secret (the secret has 256 random bits, so a plain hash is
enough), compared in constant time. Roles: ``read`` (GET only), ``write`` (also changes groups,
integrations and keys), ``admin`` (also manages tokens). A token limited to some groups sees
only those: any other group answers 404, exactly as a group that does not exist, so it learns
nothing; endpoints that are not about one group (deliveries, lanes, reload, preview, audit,
tokens) are refused to it (403).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from typing import Any

from aiohttp import web

from gateway.admin.common import (
    FULL,
    PRINCIPAL,
    Principal,
    audit,
    iso,
    parse_body,
    principal,
    store_errors,
)
from gateway.appkeys import STORE
from gateway.errors import ApiError, json_response
from gateway.mapping.writer import GROUP_KEY_RE
from gateway.store.base import AdminToken

ROLES = ("read", "write", "admin")
_RANK = {r: i for i, r in enumerate(ROLES)}
_TOKEN_RE = re.compile(r"gwt_([a-f0-9]{16})_([A-Za-z0-9_-]{43})")
#: How a scoped token starts (the full admin token is anything else).
PREFIX = b"gwt_"
#: Paths (below /admin/v1) a group-limited token may use.
_GROUP_PATHS = ("/groups", "/keys", "/openapi.json")


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def authenticate(request: web.Request, given: bytes) -> None:
    """Resolve a scoped token (``gwt_...``) to its principal; 401 unless valid and live."""
    match = _TOKEN_RE.fullmatch(given.decode("ascii", "replace"))
    if match is None:
        raise ApiError(401, "INVALID_ADMIN_TOKEN", "The admin token is not valid")
    token = await request.config_dict[STORE].get_admin_token(match.group(1))
    # Compared even for an unknown id, so timing does not tell which ids exist.
    stored = token.secret_hash if token is not None else "0" * 64
    ok = hmac.compare_digest(stored.encode(), _hash(match.group(2)).encode())
    if token is None or not ok or token.revoked_at is not None:
        raise ApiError(401, "INVALID_ADMIN_TOKEN", "The admin token is not valid")
    groups = frozenset(token.groups) if token.groups is not None else None
    request[PRINCIPAL] = Principal(f"token:{token.token_id}", token.role, groups)


def authorize(request: web.Request) -> None:
    """Refuse (403) what the principal's role or group limit does not allow."""
    who = principal(request)
    if who is FULL:
        return
    path = request.path.removeprefix("/admin/v1")
    if path.startswith("/tokens") and (who.role != "admin" or who.groups is not None):
        raise ApiError(
            403, "TOKEN_NOT_ALLOWED", "managing tokens needs an admin token for every group"
        )
    if who.groups is not None and not path.startswith(_GROUP_PATHS):
        raise ApiError(
            403, "TOKEN_NOT_ALLOWED", "a token limited to some groups cannot use this endpoint"
        )
    if request.method not in ("GET", "HEAD") and _RANK[who.role] < _RANK["write"]:
        raise ApiError(403, "TOKEN_READ_ONLY", "this token may only read")


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(
        422, "INVALID_REQUEST", f"{field}: {message}", errors=[{"field": field, "message": message}]
    )


def _view(t: AdminToken) -> dict[str, Any]:
    return {
        "token_id": t.token_id,
        "role": t.role,
        "groups": t.groups,
        "name": t.name,
        "created_at": iso(t.created_at),
        "revoked_at": iso(t.revoked_at),
    }


async def create_token(request: web.Request) -> web.Response:
    """``POST /tokens`` ``{"role", "groups"?, "name"?}``: a new token (201); the answer is the
    only place its secret appears."""
    body = await parse_body(request)
    if not isinstance(body, dict):
        raise _invalid("(top level)", "must be a JSON object")
    unknown = sorted(set(body) - {"role", "groups", "name"})
    if unknown:
        raise _invalid(unknown[0], "unknown field")
    role = body.get("role")
    if role not in ROLES:
        raise _invalid("role", "one of read, write, admin")
    groups = body.get("groups")
    if groups is not None and (
        not isinstance(groups, list)
        or not groups
        or not all(isinstance(g, str) and GROUP_KEY_RE.fullmatch(g) for g in groups)
    ):
        raise _invalid("groups", "a non-empty list of group keys (leave it out for every group)")
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        raise _invalid("name", "must be a string")
    token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    stored = AdminToken(
        token_id,
        _hash(secret),
        str(role),
        sorted(set(groups)) if groups is not None else None,
        name,
        time.time(),
    )
    await request.config_dict[STORE].create_admin_token(stored)
    await audit(request, "token.create", token_id, {"role": role, "groups": stored.groups})
    return json_response({**_view(stored), "token": f"gwt_{token_id}_{secret}"}, status=201)


async def list_tokens(request: web.Request) -> web.Response:
    """``GET /tokens``: every scoped token, never a secret."""
    tokens = await request.config_dict[STORE].list_admin_tokens()
    return json_response({"tokens": [_view(t) for t in tokens]})


async def revoke_token(request: web.Request) -> web.Response:
    """``DELETE /tokens/{token_id}``: revoke now (204)."""
    token_id = request.match_info["token_id"]
    store = request.config_dict[STORE]
    if await store.get_admin_token(token_id) is None:
        raise ApiError(404, "UNKNOWN_TOKEN", f"no token {token_id!r}")
    await store.revoke_admin_token(token_id, time.time())
    await audit(request, "token.revoke", token_id, {})
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    """Register the token routes on the admin sub-application."""
    app.router.add_get("/tokens", store_errors(list_tokens))
    app.router.add_post("/tokens", store_errors(create_token))
    app.router.add_delete("/tokens/{token_id}", store_errors(revoke_token))
