"""A local fake of integrator.io's connector licence API (a real aiohttp server).

``GET/POST /v1/connectors/{connector_id}/licenses`` and ``PUT/DELETE .../licenses/{_id}`` keep
licences in memory as integrator.io shapes them (``_id``, ``user.email``, ``expires``,
``opts``). A create for an e-mail that is not in ``accounts`` is refused with
``{"errors":[{"code":"invalid_user",...}]}`` (no integrator.io account yet); a request without
the right bearer token gets ``401``; ``plan`` forces the next answers (``"401"``, ``"429"``,
``"500"``), one a request. Every request is logged in ``calls``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

JSON = "application/json"


@dataclass
class Call:
    """One request as the fake saw it."""

    method: str
    path: str
    authorization: str | None
    body: Any  # parsed JSON, or None


@dataclass
class IntegratorFake:
    """Start with ``await IntegratorFake(...).start()``; ``url`` is its base URL."""

    token: str = "iio-token"
    connector_id: str = "conn1"
    accounts: set[str] | None = None  # e-mails with an account; None: everybody has one
    plan: list[str] = field(default_factory=list)
    licenses: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    port: int = 0
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def by_email(self, email: str) -> dict[str, Any] | None:
        """The licence of ``email``, if any."""
        for lic in self.licenses.values():
            if lic["user"]["email"].lower() == email.lower():
                return lic
        return None

    def count(self, method: str) -> int:
        """Requests of ``method`` answered so far."""
        return sum(1 for c in self.calls if c.method == method)

    async def start(self) -> IntegratorFake:
        app = web.Application()
        base = "/v1/connectors/{cid}/licenses"
        app.router.add_route("*", base, self._handle)
        app.router.add_route("*", base + "/{lid}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = orjson.loads(raw) if raw else None
        self.calls.append(
            Call(request.method, request.path, request.headers.get("Authorization"), body)
        )
        if self.plan:
            forced = self.plan.pop(0)
            if forced == "401":
                return _json(401, {"message": "Unauthorized", "code": "unauthorized"})
            if forced == "429":
                return _json(429, {"message": "Too many requests"}, {"Retry-After": "1"})
            return _json(500, {"message": "Internal error"})
        sent = request.headers.get("Authorization")
        if sent != f"Bearer {self.token}":
            # Echoes the credential refused, as careless APIs do: what the gateway stores of
            # this answer must not carry it.
            return _json(401, {"message": f"Unauthorized: {sent}", "code": "unauthorized"})
        if request.match_info["cid"] != self.connector_id:
            return _json(404, {"errors": [{"code": "not_found", "message": "No connector"}]})
        lid = request.match_info.get("lid")
        if lid is None and request.method == "GET":
            return _json(200, list(self.licenses.values()))
        if lid is None and request.method == "POST":
            return self._create(body or {})
        lic = self.licenses.get(lid or "")
        if lic is None:
            return _json(404, {"errors": [{"code": "not_found", "message": "License not found"}]})
        if request.method == "PUT":
            doc = body or {}
            if "email" in doc:
                return _json(400, {"errors": [{"code": "invalid_field", "message": "email"}]})
            lic.update({k: v for k, v in doc.items() if k in ("expires", "opts")})
            return _json(200, lic)
        if request.method == "DELETE":
            del self.licenses[lic["_id"]]
            return web.Response(status=204)
        return _json(405, {"message": "Method not allowed"})

    def _create(self, doc: dict[str, Any]) -> web.Response:
        email = doc.get("email")
        if not isinstance(email, str) or not email:
            return _json(400, {"errors": [{"code": "missing_required_field", "message": "email"}]})
        if self.accounts is not None and email.lower() not in self.accounts:
            return _json(
                400,
                {
                    "errors": [
                        {
                            "code": "invalid_user",
                            "message": f"No integrator.io user found with email {email}",
                        }
                    ]
                },
            )
        if self.by_email(email) is not None:
            return _json(400, {"errors": [{"code": "duplicate", "message": "License exists"}]})
        lid = f"lic{next(self._ids):04d}"
        lic = {
            "_id": lid,
            "type": "connector",
            "user": {"email": email},
            "expires": doc.get("expires"),
            "opts": doc.get("opts") or {},
        }
        self.licenses[lid] = lic
        return _json(201, lic)


def _json(status: int, doc: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(doc), content_type=JSON, headers=headers or {}
    )
