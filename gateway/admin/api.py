"""The admin API: a sub-application mounted at ``/admin/v1``, behind a bearer token.

Every route of the sub-application (:mod:`gateway.admin.mappings`,
:mod:`gateway.admin.groups`, :mod:`gateway.admin.keys`, :mod:`gateway.admin.deliveries`,
:mod:`gateway.admin.openapi`, :mod:`gateway.admin.tokens`, :mod:`gateway.admin.links`) is
guarded by one middleware, :func:`admin_auth`: the ``GATEWAY_ADMIN_TOKEN`` bearer token,
compared in constant time, or a scoped token (:mod:`gateway.admin.tokens`) limited by role and
groups; the API answers ``403 ADMIN_API_DISABLED`` when the gateway runs without a token.
Handlers read the main application's state through ``request.config_dict``.
"""

from __future__ import annotations

import hmac

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.admin import deliveries, groups, keys, links, mappings, openapi, tokens
from gateway.appkeys import ADMIN_TOKEN, RELOADER
from gateway.errors import ApiError

#: Where the sub-application is mounted.
PREFIX = "/admin/v1"


def require_admin(request: web.Request) -> None:
    """Raise unless the request carries the admin bearer token (compared in constant time)."""
    token = request.config_dict.get(ADMIN_TOKEN)
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
    # aiohttp decodes header bytes as UTF-8 with surrogateescape: encoding back the same way
    # gives the bytes the client sent, whatever they are (a plain .encode() raised on bytes
    # that are not UTF-8, and the request answered 500).
    given_bytes = given.strip().encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(given_bytes, token.encode()):
        raise ApiError(401, "INVALID_ADMIN_TOKEN", "The admin token is not valid")


async def authenticate(request: web.Request) -> None:
    """The full admin token, or a scoped token (gateway.admin.tokens) and what it may do."""
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    given_bytes = given.strip().encode("utf-8", "surrogateescape")
    full = request.config_dict.get(ADMIN_TOKEN)
    if (
        full
        and scheme.lower() == "bearer"
        and given_bytes.startswith(tokens.PREFIX)
        and not hmac.compare_digest(given_bytes, full.encode())
    ):
        await tokens.authenticate(request, given_bytes)
        tokens.authorize(request)
        return
    require_admin(request)


@web.middleware
async def admin_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Check the admin token before any admin handler runs.

    A path or method the admin API does not have is passed on to answer 404 or 405 as
    anywhere else (its match carries the HTTP error), token or not.
    """
    if request.match_info.http_exception is None:
        await authenticate(request)
    return await handler(request)


def create_admin_app(admin_token: str | None) -> web.Application:
    """The admin sub-application; ``admin_token`` None or empty turns the API off (403)."""
    admin = web.Application(middlewares=[admin_auth])
    admin[ADMIN_TOKEN] = admin_token or ""
    mappings.add_routes(admin)
    groups.add_routes(admin)
    keys.add_routes(admin)
    deliveries.add_routes(admin)
    openapi.add_routes(admin)
    tokens.add_routes(admin)
    links.add_routes(admin)
    return admin


def mount(app: web.Application, admin_token: str | None) -> None:
    """Mount the admin API on ``app`` at :data:`PREFIX`."""
    admin = create_admin_app(admin_token)
    app[RELOADER].listeners.append(groups.history_listener(app, admin))
    app.add_subapp(PREFIX, admin)
