"""The admin API under ``/admin/v1``: bearer ``GATEWAY_ADMIN_TOKEN``; off when it is unset."""

from __future__ import annotations

import hmac

from aiohttp import web

from gateway.errors import ApiError

ADMIN_TOKEN = web.AppKey("admin_token", str)


def require_admin(request: web.Request) -> None:
    """Raise unless the request carries the admin bearer token (compared in constant time)."""
    token = request.app.get(ADMIN_TOKEN)
    if not token:
        raise ApiError(
            403,
            "ADMIN_API_DISABLED",
            "The admin API is off: set GATEWAY_ADMIN_TOKEN to turn it on",
        )
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise ApiError(
            401,
            "MISSING_ADMIN_TOKEN",
            "The admin API needs 'Authorization: Bearer <GATEWAY_ADMIN_TOKEN>'",
            headers={"WWW-Authenticate": 'Bearer realm="gateway-admin"'},
        )
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "INVALID_ADMIN_TOKEN", "The admin token is not valid")


def add_routes(app: web.Application, admin_token: str | None) -> None:
    """Register the admin API's routes; each handler module adds its own."""
    from gateway.admin import deliveries, mappings

    app[ADMIN_TOKEN] = admin_token or ""
    mappings.add_routes(app)
    deliveries.add_routes(app)
