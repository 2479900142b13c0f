"""Console sessions: an encrypted, self-contained cookie.

The cookie holds the admin token the operator signed in with, a CSRF token and an expiry,
sealed with AES-GCM under a key derived from the gateway's master key. Every process of the
gateway (``--workers``) can open it, and a restart keeps operators signed in. The browser
cannot read it (``HttpOnly``) and never sends it to another site (``SameSite=Strict``).

Sign-out clears the cookie and remembers the session id in this process until the session
would have expired anyway, so the same cookie presented again is refused.
"""

from __future__ import annotations

import base64
import os
import secrets
import time
from dataclasses import dataclass

import orjson
from aiohttp import web
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: The session cookie's name.
COOKIE = "gateway_console"
#: The sign-in form's double-submit cookie (there is no session yet to hold its CSRF token).
PRE_COOKIE = "gateway_console_signin"
#: Seconds a session lasts from sign-in.
LIFETIME = 8 * 3600
_AAD = b"gateway/console/session/v1"
#: The path every console cookie is limited to.
PATH = "/console"


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in operator."""

    sid: str
    token: str
    csrf: str
    expires_at: float
    #: The token is limited to some groups: the pages on every group's data are not for it.
    limited: bool = False


class SessionBox:
    """Seals sessions into cookie values and opens them again."""

    def __init__(self, master_key: str) -> None:
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=b"gateway/console", info=b"session v1"
        ).derive(master_key.encode())
        self._aead = AESGCM(key)
        self._ended: dict[str, float] = {}  # sid -> its expiry, for signed-out sessions

    def new(
        self, token: str, now: float | None = None, *, limited: bool = False
    ) -> tuple[Session, str]:
        """A fresh session for ``token`` and its cookie value."""
        at = time.time() if now is None else now
        session = Session(
            sid=secrets.token_urlsafe(16),
            token=token,
            csrf=secrets.token_urlsafe(32),
            expires_at=at + LIFETIME,
            limited=limited,
        )
        plain = orjson.dumps(
            {
                "sid": session.sid,
                "tok": token,
                "csrf": session.csrf,
                "exp": session.expires_at,
                "lim": limited,
            }
        )
        nonce = os.urandom(12)
        sealed = nonce + self._aead.encrypt(nonce, plain, _AAD)
        return session, base64.urlsafe_b64encode(sealed).decode().rstrip("=")

    def open(self, value: str | None, now: float | None = None) -> Session | None:
        """The session in a cookie value; None when absent, tampered, expired or ended."""
        if not value or len(value) > 8192:
            return None
        try:
            sealed = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
            plain = self._aead.decrypt(sealed[:12], sealed[12:], _AAD)
            doc = orjson.loads(plain)
            session = Session(
                sid=str(doc["sid"]),
                token=str(doc["tok"]),
                csrf=str(doc["csrf"]),
                expires_at=float(doc["exp"]),
                limited=bool(doc.get("lim", False)),
            )
        except (ValueError, InvalidTag, KeyError, TypeError):
            return None
        at = time.time() if now is None else now
        if session.expires_at <= at or session.sid in self._ended:
            return None
        return session

    def end(self, session: Session, now: float | None = None) -> None:
        """Refuse ``session`` from now on (in this process)."""
        at = time.time() if now is None else now
        # Forget sessions that have expired anyway: the set stays as small as the live ones.
        self._ended = {sid: exp for sid, exp in self._ended.items() if exp > at}
        self._ended[session.sid] = session.expires_at


def _secure(request: web.Request) -> bool:
    """Served over TLS: directly, or behind a proxy that says so."""
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def set_cookie(response: web.StreamResponse, request: web.Request, name: str, value: str) -> None:
    """A console cookie: HttpOnly, SameSite=Strict, Secure over TLS, path /console."""
    response.set_cookie(
        name,
        value,
        path=PATH,
        httponly=True,
        secure=_secure(request),
        samesite="Strict",
    )


def clear_cookie(response: web.StreamResponse, name: str) -> None:
    """Remove a console cookie from the browser."""
    response.del_cookie(name, path=PATH)
