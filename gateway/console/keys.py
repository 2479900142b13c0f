"""Typed keys of the console sub-application's state and of its requests."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

if TYPE_CHECKING:
    from gateway.console.activity import Activity
    from gateway.console.session import Session, SessionBox

#: Seals and opens session cookies.
SESSIONS: web.AppKey[SessionBox] = web.AppKey("console_sessions")
#: Per-minute delivery counts for the overview.
ACTIVITY: web.AppKey[Activity] = web.AppKey("console_activity")
#: The HTTP client the console calls the admin API with.
HTTP: web.AppKey[aiohttp.ClientSession] = web.AppKey("console_http", aiohttp.ClientSession)
#: The request's session (None on the sign-in page).
SESSION_OF: web.RequestKey[Session | None] = web.RequestKey("console_session")
