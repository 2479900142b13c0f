"""The console's client of the admin API, called over loopback with the operator's token.

Each page asks the same process's ``/admin/v1`` exactly as ``curl`` or ``gateway deliveries``
would, on the socket the browser's request arrived on, so the API's checks (token, scope,
validation) and its error messages are the console's too: nothing of its logic is repeated here.
"""

from __future__ import annotations

import socket
from typing import Any

import aiohttp
import orjson
from aiohttp import web

PREFIX = "/admin/v1"


class AdminError(Exception):
    """The admin API refused a call: its status and envelope."""

    def __init__(
        self, status: int, code: str, message: str, errors: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors or []


def base_url(request: web.Request) -> str:
    """``http://host:port`` of the socket ``request`` came in on (loopback for a wildcard)."""
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if not isinstance(sockname, tuple) or len(sockname) < 2:
        raise AdminError(503, "CONSOLE_NO_SOCKET", "the console needs a TCP listener")
    host, port = str(sockname[0]), int(sockname[1])
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return f"http://[{host}]:{port}" if family == socket.AF_INET6 else f"http://{host}:{port}"


class AdminApi:
    """Calls for one console request, authenticated with the session's token."""

    def __init__(self, http: aiohttp.ClientSession, base: str, token: str) -> None:
        self._http = http
        self._base = base + PREFIX
        self._token = token

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """The JSON answer of a 2xx (None for 204); an error envelope raises AdminError."""
        answer, _ = await self.call_with_headers(
            method, path, params=params, body=body, headers=headers
        )
        return answer

    async def call_with_headers(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[Any, dict[str, str]]:
        """As :meth:`call`, with the answer's headers (an ETag, say)."""
        sent = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        sent.update(headers or {})
        data = None
        if body is not None:
            data = orjson.dumps(body)
            sent["Content-Type"] = "application/json"
        try:
            async with self._http.request(
                method, self._base + path, params=params, data=data, headers=sent
            ) as resp:
                raw = await resp.read()
                status, got = resp.status, dict(resp.headers)
        except aiohttp.ClientError as exc:
            raise AdminError(502, "CONSOLE_ADMIN_UNREACHABLE", f"admin API: {exc}") from None
        if status == 204 or not raw:
            doc: Any = None
        else:
            try:
                doc = orjson.loads(raw)
            except orjson.JSONDecodeError:
                doc = None
        if status >= 400:
            err = doc.get("error", {}) if isinstance(doc, dict) else {}
            raise AdminError(
                status,
                str(err.get("code", "HTTP_ERROR")),
                str(err.get("message", f"the admin API answered {status}")),
                err.get("errors") if isinstance(err.get("errors"), list) else None,
            )
        return doc, got
