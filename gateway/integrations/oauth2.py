"""OAuth2 client-credentials tokens (RFC 6749 section 4.4) for the ``http`` type's auth.

Tokens are cached per (token URL, client id, scope) until shortly before they expire and
fetched by one caller at a time (concurrent requests of a lane wait for the same fetch). A 401
from the integration drops the cached token so the next build fetches a fresh one; the engine
retries that request once.

Token requests never follow redirects: a ``3xx`` would have the client re-send its secret to
wherever the ``Location`` points (aiohttp keeps the body of a 307/308 and, to the same
origin, the ``Authorization`` header). A redirect is a permanent error that names the status.
The access tokens handed out are remembered (the current and a few refused ones) so errors
that echo them can be scrubbed (:mod:`gateway.integrations.redact`).
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from gateway.integrations import redact
from gateway.integrations.destinations import DestinationRefused

#: Refresh this long before the token's stated expiry (clocks and in-flight requests).
EXPIRY_MARGIN = 60.0
DEFAULT_LIFETIME = 3600.0
#: Refused tokens remembered per key for scrubbing (a late echo of an old token).
_REMEMBERED = 4


class TokenError(Exception):
    """The token endpoint refused (``permanent``) or could not be reached (retry)."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(slots=True)
class _Token:
    value: str
    expires_at: float  # monotonic


def auth_of(integration: Any) -> dict[str, Any]:
    """The integration's OAuth2 parameters: its type's mapping of its connection (see
    ``IntegrationType.oauth2``), or ``connection.auth``."""
    conn = integration.connection.value
    own = getattr(integration.type, "oauth2", None)
    if own is not None:
        return dict(own(conn))
    auth = conn.get("auth") or {}
    return auth if isinstance(auth, dict) else {}


def _key(auth: dict[str, Any]) -> tuple[str, str, str]:
    return (
        str(auth.get("token_url", "")),
        str(auth.get("client_id", "")),
        str(auth.get("scope") or ""),
    )


class TokenCache:
    """Cached client-credentials tokens, fetched with the transport's session."""

    def __init__(self, session: aiohttp.ClientSession | None = None) -> None:
        self._session = session
        self._tokens: dict[tuple[str, str, str], _Token] = {}
        self._locks: dict[tuple[str, str, str], asyncio.Lock] = {}
        self._old: dict[tuple[str, str, str], list[str]] = {}
        self.fetches = 0  # token requests made (tests, metrics)

    @staticmethod
    def needs_token(integration: Any) -> bool:
        """Whether the integration's auth is OAuth2 client credentials."""
        return auth_of(integration).get("type") == "oauth2_client_credentials"

    def get(self, integration: Any) -> str:
        """The cached token (the builder's token provider); :meth:`ensure` must come first."""
        token = self._tokens.get(_key(auth_of(integration)))
        if token is None:
            raise TokenError("no OAuth2 token was fetched", permanent=False)
        return token.value

    def invalidate(self, integration: Any, refused: str | None = None) -> None:
        """Forget the integration's token (it was refused with a 401). With ``refused``,
        only if the cached token is still that one: many requests refused together, or a
        401 read after another request already fetched a new token, cost one fetch."""
        key = _key(auth_of(integration))
        token = self._tokens.get(key)
        if token is not None and (refused is None or token.value == refused):
            del self._tokens[key]
            self._old[key] = [*self._old.get(key, []), token.value][-_REMEMBERED:]

    def known(self, integration: Any) -> list[str]:
        """The access tokens handed out for the integration that may still be echoed: the
        current one and the last few refused ones (for scrubbing error texts)."""
        if not self.needs_token(integration):
            return []
        # auth_of: a type may map its own connection keys (salesforce, automatum_metering).
        key = _key(auth_of(integration))
        token = self._tokens.get(key)
        return [*self._old.get(key, []), *([token.value] if token is not None else [])]

    async def ensure(self, integration: Any, session: aiohttp.ClientSession) -> None:
        """Have a token that is good for a while yet, fetching one if needed."""
        auth = auth_of(integration)
        key = _key(auth)
        token = self._tokens.get(key)
        if token is not None and token.expires_at > time.monotonic():
            return
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            token = self._tokens.get(key)
            if token is not None and token.expires_at > time.monotonic():
                return  # another request fetched it while this one waited
            self._tokens[key] = await self._fetch(auth, session)

    async def _fetch(self, auth: dict[str, Any], session: aiohttp.ClientSession) -> _Token:
        url = auth.get("token_url")
        client_id = auth.get("client_id")
        secret = auth.get("client_secret")
        if not url or not client_id or not secret:
            raise TokenError(
                "connection.auth needs token_url, client_id and client_secret for "
                "oauth2_client_credentials",
                permanent=True,
            )
        form = {"grant_type": "client_credentials"}
        if auth.get("scope"):
            form["scope"] = str(auth["scope"])
        headers = {"Accept": "application/json"}
        if auth.get("client_auth", "basic") == "body":
            form.update(client_id=str(client_id), client_secret=str(secret))
        else:
            raw = f"{client_id}:{secret}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        self.fetches += 1
        try:
            async with session.post(
                str(url),
                data=form,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=30),
                # Following a redirect would re-send client_secret to another origin.
                allow_redirects=False,
            ) as resp:
                body = await resp.read()
                status = resp.status
        except DestinationRefused as exc:
            raise TokenError(f"OAuth2 token endpoint: {exc}", permanent=True) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TokenError(
                f"OAuth2 token endpoint: {exc or type(exc).__name__}", permanent=False
            ) from None
        if 300 <= status < 400:
            raise TokenError(
                f"OAuth2 token endpoint answered HTTP {status} (a redirect); token requests "
                "do not follow redirects: set connection.auth.token_url to the final URL",
                permanent=True,
            )
        if status != 200:
            text = redact.scrub(body[:300].decode("utf-8", "replace"), _secrets(auth)) or ""
            # 400/401 (invalid_client, invalid_scope...) will not pass by waiting; the rest may.
            permanent = status in (400, 401, 403)
            raise TokenError(
                f"OAuth2 token endpoint answered HTTP {status}: {text}", permanent=permanent
            )
        try:
            doc = orjson.loads(body)
            value = str(doc["access_token"])
            lifetime = float(doc.get("expires_in") or DEFAULT_LIFETIME)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise TokenError(
                "OAuth2 token endpoint answered without an access_token", permanent=False
            ) from None
        margin = min(EXPIRY_MARGIN, lifetime / 10)
        return _Token(value, time.monotonic() + lifetime - margin)


def _secrets(auth: dict[str, Any]) -> frozenset[str]:
    """The client secret as a token endpoint's answer might echo it (the engine scrubs the
    recorded error again with every secret of the entry)."""
    secret = str(auth.get("client_secret") or "")
    return redact.variants([secret, f"{auth.get('client_id', '')}:{secret}"] if secret else [])
