"""What the management API's endpoint modules share: body and parameter parsing, times, the
acting identity and the audit log."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.appkeys import STORE
from gateway.errors import ApiError
from gateway.store.base import StoreError

#: Who made a change with the full-access ``GATEWAY_ADMIN_TOKEN``.
ADMIN_ACTOR = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as: the full admin token, or a scoped token."""

    actor: str  # "admin" or "token:<id>"
    role: str
    groups: frozenset[str] | None  # None: every group

    def sees(self, group: str) -> bool:
        """Whether the token may see (and, with its role, change) ``group``."""
        return self.groups is None or group in self.groups


FULL = Principal(ADMIN_ACTOR, "admin", None)

#: Where the admin middleware puts the request's :class:`Principal` (a typed request key
#: where aiohttp has them, 3.12 and later).
PRINCIPAL: Any = (
    web.RequestKey("admin_principal", Principal)
    if hasattr(web, "RequestKey")
    else "admin_principal"
)


def principal(request: web.Request) -> Principal:
    """The request's principal (set by the admin middleware; full access otherwise)."""
    found = request.get(PRINCIPAL)
    return found if isinstance(found, Principal) else FULL


def iso(t: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC (``2025-05-01T12:00:00.000Z``)."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def actor_of(request: web.Request) -> str:
    """The identity a change is recorded under: ``admin`` or ``token:<id>``."""
    return principal(request).actor


async def parse_body(request: web.Request, *, allow_empty: bool = False) -> Any:
    """The request's JSON body; 415 for another content type, 400 for malformed JSON."""
    raw = await request.read()
    if not raw.strip() and allow_empty:
        return None
    ctype = request.content_type
    if (
        raw
        and ctype not in ("application/json", "application/octet-stream")
        and not (ctype.startswith("application/") and ctype.endswith("+json"))
    ):
        raise ApiError(
            415, "UNSUPPORTED_MEDIA_TYPE", f"the body must be application/json, not {ctype}"
        )
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "MALFORMED_JSON", f"request body is not valid JSON: {exc}") from None


def read_limit(request: web.Request, default: int, largest: int) -> int:
    """The ``limit`` query parameter: 1 to ``largest``; 400 naming it otherwise."""
    raw = request.query.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw[:10]) <= largest:
        raise ApiError(
            400,
            "INVALID_PARAMETER",
            f"limit: a whole number from 1 to {largest}",
            errors=[{"field": "limit", "message": f"a whole number from 1 to {largest}"}],
        )
    return int(raw)


def store_errors(handler: Handler) -> Handler:
    """``handler`` with the store's and the file system's failures answered ``503`` (with
    ``Retry-After``) in the envelope instead of ``500``."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except StoreError as exc:
            raise ApiError(
                503, "STORE_UNAVAILABLE", f"store unavailable: {exc}", headers={"Retry-After": "5"}
            ) from None
        except OSError as exc:
            raise ApiError(
                503,
                "MAPPINGS_UNWRITABLE",
                f"cannot write the mappings directory: {exc.strerror or exc}",
                headers={"Retry-After": "5"},
            ) from None

    return wrapped


async def audit(request: web.Request, action: str, target: str, detail: dict[str, Any]) -> None:
    """Append to the audit log (``detail`` must never hold a secret)."""
    try:
        await request.config_dict[STORE].add_audit(
            time.time(), actor_of(request), action, target, orjson.dumps(detail).decode()
        )
    except StoreError as exc:
        raise ApiError(503, "STORE_UNAVAILABLE", f"store unavailable: {exc}") from None
