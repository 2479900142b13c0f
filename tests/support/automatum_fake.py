"""A local fake of Automatum's API: the OAuth2 token endpoint and the metering endpoint.

- ``POST /oauth/token`` (form-encoded client credentials) hands out a new token each time and
  counts the requests (``token_requests``); a token lives ``expires_in`` seconds.
- ``POST /api/v1/metering`` takes a report from a holder of a live token (else ``401``),
  requires an ``Idempotency-Key`` and keeps the first report of each key (``reports``); a
  resend with a key it has accepted is answered the same, and counted in ``replays``. A report
  it refuses gets Automatum's error envelope. ``script`` queues answers for the next reports:
  ``"rate_limit"`` (429 with ``Retry-After``), ``"expire"`` (the token dies: 401),
  ``"server_error"`` (503).
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import orjson

from tests.support.receiver import Answer, Received

CLIENT_ID = "automatum-client"
CLIENT_SECRET = "automatum-secret-e2e"
TOKEN_PATH = "/oauth/token"
METERING_PATH = "/api/v1/metering"


def _json(status: int, doc: Any, headers: dict[str, str] | None = None) -> Answer:
    return Answer(
        status, {"Content-Type": "application/json", **(headers or {})}, orjson.dumps(doc)
    )


def envelope(status: int, code: str, message: str, errors: list[tuple[str, str]]) -> Answer:
    """Automatum's error envelope."""
    return _json(
        status,
        {
            "error": {
                "type": "invalid_request_error" if status < 500 else "api_error",
                "message": message,
                "code": code,
                "errors": [{"field": f, "message": m} for f, m in errors],
            }
        },
    )


@dataclass
class Report:
    """One accepted report."""

    key: str
    body: dict[str, Any]
    at: float


@dataclass
class AutomatumFake:
    """Use as a :class:`tests.support.receiver.Receiver`'s answer function."""

    expires_in: int = 3600
    retry_after: str = "1"
    delay: float = 0.0  # seconds before answering an accepted report (after keeping it)
    delayed: list[str] = field(default_factory=list)  # keys of reports answered with a delay
    token_requests: list[dict[str, list[str]]] = field(default_factory=list)
    tokens: dict[str, float] = field(default_factory=dict)  # token -> monotonic expiry
    reports: dict[str, Report] = field(default_factory=dict)  # Idempotency-Key -> first report
    replays: int = 0
    answers: list[tuple[str | None, int]] = field(default_factory=list)  # (key, status)
    script: collections.deque[str] = field(default_factory=collections.deque)

    def __call__(self, r: Received) -> Answer:
        if r.path == TOKEN_PATH:
            return self._token(r)
        if r.path == METERING_PATH and r.method == "POST":
            key = r.headers.get("Idempotency-Key")
            answer = self._metering(r, key)
            self.answers.append((key, answer.status))
            return answer
        return envelope(404, "not_found", f"no route {r.method} {r.path}", [])

    # -- token endpoint -------------------------------------------------------------------
    def _token(self, r: Received) -> Answer:
        form = parse_qs(r.body.decode())
        self.token_requests.append(form)
        if r.headers.get("Content-Type", "").split(";")[0] != "application/x-www-form-urlencoded":
            return _json(400, {"error": "invalid_request", "error_description": "form only"})
        if (
            form.get("grant_type") != ["client_credentials"]
            or form.get("client_id") != [CLIENT_ID]
            or form.get("client_secret") != [CLIENT_SECRET]
        ):
            return _json(401, {"error": "invalid_client"})
        if form.get("scope") != ["write:metering"]:
            return _json(400, {"error": "invalid_scope"})
        token = f"atm-token-{len(self.token_requests)}"
        self.tokens[token] = time.monotonic() + self.expires_in
        return _json(
            200,
            {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in},
        )

    # -- metering endpoint ----------------------------------------------------------------
    def _metering(self, r: Received, key: str | None) -> Answer:
        token = r.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.tokens.get(token, 0.0) <= time.monotonic():
            return envelope(401, "invalid_token", "The access token is invalid or expired", [])
        if self.script:
            step = self.script.popleft()
            if step == "rate_limit":
                limited = envelope(429, "rate_limited", "Too many requests", [])
                limited.headers["Retry-After"] = self.retry_after
                return limited
            if step == "expire":
                self.tokens.clear()
                return envelope(401, "invalid_token", "The access token expired", [])
            if step == "server_error":
                return envelope(503, "unavailable", "Try again later", [])
        if not key:
            return envelope(400, "missing_idempotency_key", "Idempotency-Key is required", [])
        if key in self.reports:
            self.replays += 1
            return _json(200, {"id": f"rep_{key}", "status": "accepted", "replayed": True})
        body = r.json()
        problems = _problems(body)
        if problems:
            return envelope(422, "invalid_report", "The report is invalid", problems)
        self.reports[key] = Report(key, body, time.monotonic())
        answer = _json(200, {"id": f"rep_{key}", "status": "accepted"})
        answer.delay = self.delay
        if self.delay:
            self.delayed.append(key)
        return answer


def _problems(body: Any) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if not isinstance(body, dict):
        return [("", "must be an object")]
    for name in ("vendor", "listingId"):
        if not isinstance(body.get(name), str) or not body[name]:
            out.append((name, "is required"))
    details = body.get("details")
    if not isinstance(details, dict):
        return [*out, ("details", "is required")]
    customer = details.get("customer")
    if not isinstance(customer, dict) or not customer.get("id"):
        out.append(("details.customer.id", "is required"))
    date = details.get("reportingDate")
    if not isinstance(date, str) or len(date) != 10:
        out.append(("details.reportingDate", "must be a date (YYYY-MM-DD)"))
    usages = details.get("usages")
    if not isinstance(usages, list) or not usages:
        out.append(("details.usages", "must hold at least one usage"))
    else:
        for n, u in enumerate(usages):
            units = u.get("units") if isinstance(u, dict) else None
            if not isinstance(units, int | float) or units < 0:
                out.append((f"details.usages[{n}].units", "must be a number, zero or more"))
    return out
