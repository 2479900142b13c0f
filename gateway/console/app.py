"""The console sub-application: mounting, sessions, CSRF and the security headers.

Mounted at ``/console`` by :func:`mount` unless ``GATEWAY_CONSOLE=false``. Every page but
the sign-in form needs a session (:mod:`gateway.console.session`); every POST needs the
session's CSRF token (a form field ``csrf`` or the ``X-CSRF-Token`` header htmx sends) and,
when the browser says where it comes from, an ``Origin`` of this very site.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp_jinja2
import jinja2
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.appkeys import ENGINE
from gateway.console import manage, views
from gateway.console.activity import Activity, sampling
from gateway.console.adminapi import AdminError
from gateway.console.keys import ACTIVITY, HTTP, SESSION_OF, SESSIONS
from gateway.console.session import COOKIE, PRE_COOKIE, SessionBox, clear_cookie

#: Where the console is mounted.
PREFIX = "/console"
HERE = Path(__file__).parent

#: Sent with every console answer: scripts and styles from the console itself only, no
#: framing, no referrer to other sites (URLs carry record ids; "no-referrer" would also make
#: the browser send "Origin: null" on the console's own forms), nothing cached (pages carry
#: record data).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}

#: Paths answered without a session.
_OPEN = ("/console/signin", "/console/static/")


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        # Browsers send Origin on every POST; a missing one is a non-browser client, which has
        # no ambient cookie to abuse. "null" (a sandboxed or privacy-stripped origin) is
        # refused: it cannot be this site.
        return origin is None
    host = request.headers.get("X-Forwarded-Host") or request.host
    return origin.split("://", 1)[-1].rstrip("/") == host


async def _form_csrf(request: web.Request) -> str:
    header = request.headers.get("X-CSRF-Token")
    if header:
        return header
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()
        value = form.get("csrf")
        return value if isinstance(value, str) else ""
    return ""


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Session, CSRF and security headers for every console request."""
    try:
        response = await _guarded(request, handler)
    except AdminError as exc:
        session = request.get(SESSION_OF)
        if exc.status == 401 and session is not None:
            # The token itself is no longer accepted (revoked, or GATEWAY_ADMIN_TOKEN changed):
            # the session is over, and the operator is asked for a token again.
            request.config_dict[SESSIONS].end(session)
            if request.headers.get("HX-Request"):
                response = web.Response(status=401, headers={"HX-Redirect": f"{PREFIX}/signin"})
            else:
                response = views.redirect(f"{PREFIX}/signin")
            clear_cookie(response, COOKIE)
        else:
            # Whatever else the admin API refused (a scoped token on /lanes, a store outage),
            # the page says it in the API's words, with its status.
            response = views.refusal(request, exc.status, exc.message)
    except web.HTTPException as exc:
        if exc.status >= 400:
            raise
        response = web.Response(status=exc.status, headers=exc.headers)
    response.headers.update(SECURITY_HEADERS)
    if not request.path.startswith("/console/static/"):
        response.headers["Cache-Control"] = "no-store"
    return response


async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    open_path = request.path.startswith(_OPEN)
    session = request.config_dict[SESSIONS].open(request.cookies.get(COOKIE))
    request[SESSION_OF] = session
    unsafe = request.method not in ("GET", "HEAD", "OPTIONS")
    if unsafe and not _same_origin(request):
        return views.refusal(request, 403, "This form came from another site: refused.")
    if not open_path and session is None:
        if request.headers.get("HX-Request"):
            # htmx follows HX-Redirect with a full page load: the sign-in form.
            return web.Response(status=401, headers={"HX-Redirect": f"{PREFIX}/signin"})
        if unsafe:
            return views.refusal(request, 401, "Your session has ended: sign in again.")
        return views.redirect(f"{PREFIX}/signin")
    if unsafe:
        given = await _form_csrf(request)
        if session is not None and not request.path.startswith("/console/signin"):
            expected = session.csrf
        else:
            expected = request.cookies.get(PRE_COOKIE, "")
        if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
            return views.refusal(
                request, 403, "The form's security token is missing or stale: reload the page."
            )
    return await handler(request)


async def _http_client(app: web.Application) -> AsyncIterator[None]:
    # One connection pool for the console's calls to the admin API.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        app[HTTP] = http
        yield


def create_console_app(
    master_key: str, lane_status: Callable[[], list[dict[str, Any]]]
) -> web.Application:
    """The console sub-application; sessions are sealed with a key derived from
    ``master_key``; ``lane_status`` (the engine's) is sampled for the overview's charts."""
    console = web.Application(middlewares=[guard])
    console[SESSIONS] = SessionBox(master_key)
    console[ACTIVITY] = Activity()

    async def _activity(app: web.Application) -> AsyncIterator[None]:
        async with sampling(app[ACTIVITY], lane_status):
            yield

    aiohttp_jinja2.setup(
        console,
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=jinja2.select_autoescape(default=True),
    )
    views.add_routes(console)
    manage.add_routes(console)
    console.router.add_static("/static/", HERE / "static", name="static")
    console.cleanup_ctx.extend([_http_client, _activity])
    return console


async def _to_console(request: web.Request) -> web.StreamResponse:
    return views.redirect(f"{PREFIX}/")


def mount(app: web.Application, master_key: str) -> None:
    """Mount the console on ``app`` at :data:`PREFIX` (``/console`` redirects to it)."""
    app.router.add_get(PREFIX, _to_console)
    app.add_subapp(PREFIX, create_console_app(master_key, app[ENGINE].status))
