"""The ``automatum_metering`` type: usage reports to Automatum's metering API.

``POST {base_url}/api/v1/metering`` with ``{"vendor", "listingId", "details": {"customer":
{"id"}, "reportingDate", "charged", "usages": [{"apiKey", "units", "title", "description",
"per", "price"}]}}``, one report a request, and an ``Idempotency-Key`` header: the delivery
id, the same for every resend of the same report (a report made by a rollup keeps its id for
good, so the key never changes; see docs/links-and-rollups.md). ``reportingDate`` is the UTC
date of the report's window (with a rollup; without one, of the record's arrival) unless the
mapping sets ``reporting_date``.

Auth: OAuth2 client credentials, form-encoded, against ``{base_url}/oauth/token`` (or
``connection.token_url``) with scope ``write:metering``. The delivery engine's token cache
keeps the token until 60 seconds before ``expires_in`` runs out and, on a ``401``, fetches one
new token and sends the report once more.

Answers: 2xx delivered; 429 waits for ``Retry-After`` (the whole lane holds); 5xx retries;
Automatum's error envelope ``{"error": {"type", "message", "code", "errors": [{"field",
"message"}]}}`` becomes the delivery's last error with the field messages, permanent for
other 4xx.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

from gateway.integrations import _saas
from gateway.integrations.base import (
    Action,
    Field,
    IntegrationType,
    OutboundRequest,
    Outcome,
    Param,
    Response,
    TokenProvider,
    register,
)
from gateway.mapping.errors import MappingError

DEFAULT_BASE_URL = "https://api.automatum.io"
PATH = "/api/v1/metering"
DEFAULT_SCOPE = "write:metering"
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
#: Usage fields: the mapping's name -> Automatum's.
_USAGE = (
    ("api_key", "apiKey"),
    ("units", "units"),
    ("title", "title"),
    ("description", "description"),
    ("per", "per"),
    ("price", "price"),
)


def oauth2(connection: dict[str, Any]) -> dict[str, Any]:
    """The client-credentials parameters, as the token cache reads them."""
    base = str(connection.get("base_url") or DEFAULT_BASE_URL).rstrip("/")
    return {
        "type": "oauth2_client_credentials",
        "token_url": connection.get("token_url") or f"{base}/oauth/token",
        "client_id": connection.get("client_id"),
        "client_secret": connection.get("client_secret"),
        "scope": connection.get("scope") or DEFAULT_SCOPE,
        # Automatum's token endpoint takes the client's id and secret in the form body.
        "client_auth": "body",
    }


def window_date(delivery_id: str, now: float | None) -> str:
    """The UTC date in a delivery id (its first 12 hex digits are milliseconds: a report's
    window start, or an ordinary delivery's creation); the date of ``now`` when the id holds
    none (a preview's)."""
    digits = delivery_id.removeprefix("dlv_")[:12]
    try:
        seconds = int(digits, 16) / 1000
    except ValueError:
        seconds = datetime.datetime.now(datetime.UTC).timestamp() if now is None else now
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).date().isoformat()


def _body(settings: dict[str, Any], fields: dict[str, Any], date: str) -> dict[str, Any]:
    usage = {theirs: fields[ours] for ours, theirs in _USAGE if fields.get(ours) is not None}
    details: dict[str, Any] = {"customer": {"id": str(fields["customer_id"])}}
    details["reportingDate"] = date
    if fields.get("charged") is not None:
        details["charged"] = fields["charged"]
    details["usages"] = [usage]
    return {"vendor": settings["vendor"], "listingId": settings["listing_id"], "details": details}


def build(
    integration: Any,
    batch: list[tuple[str, dict[str, Any]]],
    *,
    now: float | None = None,
    tokens: TokenProvider | None = None,
) -> list[OutboundRequest]:
    """One POST a report, keyed by its delivery id."""
    settings = integration.settings.value
    url = _saas.base_url(integration, DEFAULT_BASE_URL) + PATH
    failed: dict[str, Any] = {}
    bodies: list[tuple[str, dict[str, Any]]] = []
    for delivery_id, fields in batch:
        try:
            _saas.need(fields, "customer_id", "a report is for one customer")
            _saas.need(fields, "units", "a usage needs its units")
            date = fields.get("reporting_date")
            if date is None:
                date = window_date(delivery_id, now)
            elif not _DATE.match(str(date)):
                raise MappingError(
                    f"{date!r} is not a date like 2026-01-31", field="reporting_date"
                )
        except MappingError as exc:
            failed[delivery_id] = exc
            continue
        bodies.append((delivery_id, _body(settings, fields, str(date))))
    _saas.raise_failed(failed, integration)
    if not bodies:
        return []
    if tokens is None:
        raise ValueError("the automatum_metering type needs an OAuth2 token provider")
    token = tokens(integration)
    return [
        OutboundRequest(
            "POST",
            url,
            {
                "Content-Type": "application/json",
                "Authorization": f"Bearer {token}",
                "Idempotency-Key": delivery_id,
            },
            _saas.dumps(body),
            [delivery_id],
            frozenset({"Authorization"}),
        )
        for delivery_id, body in bodies
    ]


def error_message(doc: Any) -> str:
    """Automatum's error envelope as one line: code, message, then each field's message."""
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(err, dict):
        return ""
    head = ": ".join(str(err[k]) for k in ("code", "message") if err.get(k))
    parts = [head] if head else []
    for item in err.get("errors") or []:
        if isinstance(item, dict):
            where = f"{item['field']}: " if item.get("field") else ""
            parts.append(f"{where}{item.get('message') or ''}".strip())
    return "; ".join(p for p in parts if p)


def read(request: OutboundRequest, response: Response) -> list[Outcome]:
    """2xx delivered; otherwise the error envelope's messages, retried for 408/425/429
    (after ``Retry-After``) and 5xx, permanent for the rest (401 after the engine's one token
    refresh among them)."""
    status = response.status
    if 200 <= status < 300:
        return _saas.delivered(request, status)
    message = error_message(_saas.loads(response.body)) or _saas.body_text(response)
    return _saas.whole_request(request, response, message)  # the engine reads Retry-After


AUTOMATUM_METERING = register(
    IntegrationType(
        name="automatum_metering",
        description="Reports product usage to Automatum's metering API (one report a "
        "request, an Idempotency-Key that stays the same for every resend), with OAuth2 "
        "client credentials. Usually combined with options.rollup, which sums the "
        "records per customer and window into one report (docs/links-and-rollups.md). "
        "Automatum's error envelope becomes the delivery's last error with its field "
        "messages.",
        connection=(
            _saas.base_url_param(DEFAULT_BASE_URL),
            Param(
                "token_url",
                "url",
                "The OAuth2 token endpoint; unset: {base_url}/oauth/token.",
            ),
            Param(
                "client_id",
                description="The API client's id.",
                required=True,
                example="${AUTOMATUM_CLIENT_ID}",
            ),
            Param(
                "client_secret",
                description="The API client's secret.",
                required=True,
                secret=True,
                example="${AUTOMATUM_CLIENT_SECRET}",
            ),
            Param("scope", description="The OAuth2 scope asked for.", default=DEFAULT_SCOPE),
            *_saas.TIMEOUT_PARAMS,
        ),
        settings=(
            Param("vendor", description="Your vendor id at Automatum.", required=True),
            Param(
                "listing_id",
                description="The listing the usage is reported for (listingId).",
                required=True,
            ),
        ),
        actions=(
            Action(
                "report",
                "Report one customer's usage: one usage entry a report. With a rollup, the "
                "sums of the window's records; reportingDate is the window's UTC date.",
                fields=(
                    Field("customer_id", "string", "The customer's id (customer.id).", True),
                    Field("units", "number", "Units used (usages[].units).", True),
                    Field("charged", "number", "Amount charged for the period (charged)."),
                    Field("api_key", "string", "The API key the usage was made with (apiKey)."),
                    Field("title", "string", "The usage's title."),
                    Field("description", "string", "The usage's description."),
                    Field("per", "string", "The unit the price is per (e.g. request)."),
                    Field("price", "number", "The price per unit."),
                    Field(
                        "reporting_date",
                        "string",
                        "reportingDate; unset: the UTC date of the report's window.",
                        format="YYYY-MM-DD",
                    ),
                ),
            ),
        ),
        # Automatum's guide: 1,000 requests an hour and 50 a minute. 1000/h is the tighter
        # of the two over any minute (under 17 a minute), so it keeps both.
        # 0.2777/s: 999.7 an hour (rounded down, so never over).
        default_options={"batch_size": 1, "concurrency": 2, "rate_limit": 0.2777},
        build=build,
        read=read,
        oauth2=oauth2,
    )
)
