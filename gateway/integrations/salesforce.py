"""The ``salesforce`` type: records upserted by an external id (sObject Collections).

``PATCH {instance_url}/services/data/v{api_version}/composite/sobjects/{sobject}/{id_field}``
(``id_field`` being ``settings.external_id_field``) with ``{"allOrNone": false, "records":
[{"attributes": {"type": sobject}, <fields>}]}``, up to 200 records a request. Salesforce
answers with one result a record, in order: ``success`` records are delivered, failed ones
dead with their ``statusCode`` and message (a locked row or a server-side hiccup retries).

Auth: OAuth2 client credentials against ``{instance_url}/services/oauth2/token`` (or
``connection.token_url``), with the connected app's consumer key and secret. The delivery
engine fetches the token, caches it and, when Salesforce answers ``401 INVALID_SESSION_ID``,
fetches a new one and sends the request once more.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from gateway.integrations import _saas
from gateway.integrations.base import (
    Action,
    Field,
    IntegrationType,
    OutboundRequest,
    Outcome,
    OutcomeKind,
    Param,
    Response,
    TokenProvider,
    register,
)
from gateway.mapping.errors import MappingError

API_VERSION = "62.0"
MAX_RECORDS = 200
MAX_BYTES = 5_000_000
#: Field and object API names: a letter, then letters, digits and single underscores;
#: custom ones end in __c.
API_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*(_[A-Za-z0-9]+)*(__c)?")
#: Record errors that may pass by trying again.
RETRY_CODES = frozenset({"UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"})
#: Salesforce's API limit is per rolling 24 hours; its answer names no reset time.
LIMIT_WAIT = 300.0


def oauth2(connection: dict[str, Any]) -> dict[str, Any]:
    """The client-credentials parameters, as the token cache reads them."""
    instance = str(connection.get("instance_url") or "").rstrip("/")
    return {
        "type": "oauth2_client_credentials",
        "token_url": connection.get("token_url") or f"{instance}/services/oauth2/token",
        "client_id": connection.get("client_id"),
        "client_secret": connection.get("client_secret"),
        # Salesforce's token endpoint takes the consumer key and secret in the form body.
        "client_auth": "body",
    }


def _text(value: Any) -> Any:
    # Multi-select picklists take their values joined with ; (Salesforce's form).
    return ";".join(_saas.text_value(v) for v in value) if isinstance(value, list) else value


def build(
    integration: Any,
    batch: list[tuple[str, dict[str, Any]]],
    *,
    now: float | None = None,
    tokens: TokenProvider | None = None,
) -> list[OutboundRequest]:
    """Collection upserts of at most 200 records, no external id twice in one request."""
    conn = integration.connection.value
    settings = integration.settings.value
    sobject = str(settings["sobject"])
    ext = str(settings["external_id_field"])
    records: list[tuple[str, dict[str, Any]]] = []
    failed: dict[str, Any] = {}
    for delivery_id, fields in batch:
        try:
            _saas.need(fields, ext, f"the external id field {ext!r} is")
        except MappingError as exc:
            failed[delivery_id] = exc
            continue
        record: dict[str, Any] = {"attributes": {"type": sobject}}
        record.update({k: _text(v) for k, v in fields.items() if v is not None})
        records.append((delivery_id, record))
    _saas.raise_failed(failed, integration)
    if tokens is None:
        raise ValueError("the salesforce type needs an OAuth2 token provider")
    token = tokens(integration)
    version = str(conn.get("api_version") or API_VERSION)
    url = (
        f"{str(conn['instance_url']).rstrip('/')}/services/data/v{version}/composite/sobjects/"
        f"{quote(sobject, safe='')}/{quote(ext, safe='')}"
    )
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    out = []
    for run in _saas.distinct_rounds(records, lambda r: str(r[ext]).lower()):
        for group in _saas.chunks(run, max_count=MAX_RECORDS, max_bytes=MAX_BYTES):
            body = _saas.dumps({"allOrNone": False, "records": [r for _, r in group]})
            ids = [d for d, _ in group]
            out.append(
                OutboundRequest(
                    "PATCH", url, dict(headers), body, ids, frozenset({"Authorization"})
                )
            )
    return out


def _errors(items: Any) -> tuple[str, set[str]]:
    parts, codes = [], set()
    for e in items if isinstance(items, list) else []:
        if not isinstance(e, dict):
            continue
        code = str(e.get("statusCode") or e.get("errorCode") or "")
        codes.add(code)
        fields = e.get("fields")
        where = f" ({', '.join(map(str, fields))})" if fields else ""
        parts.append(f"{code}: {e.get('message') or ''}{where}")
    return "; ".join(parts), codes


def read(request: OutboundRequest, response: Response) -> list[Outcome]:
    """One result a record, in order: ``success`` delivered; errors dead with Salesforce's
    statusCode and message, retried for UNABLE_TO_LOCK_ROW and the like. A failed request:
    401 (after the engine's one token refresh) and 400/404 permanent, 403
    REQUEST_LIMIT_EXCEEDED retried after a pause, 5xx retried."""
    doc = _saas.loads(response.body)
    status = response.status
    if status >= 300:
        message, codes = _errors(doc)
        if "REQUEST_LIMIT_EXCEEDED" in codes:
            return _saas.whole_request(
                request, response, message, retry_after=LIMIT_WAIT, permanent=False
            )
        return _saas.whole_request(request, response, message or _saas.body_text(response))
    if not isinstance(doc, list) or len(doc) != len(request.delivery_ids):
        return _saas.whole_request(
            request,
            response,
            "the answer does not hold one result a record: " + _saas.body_text(response),
            permanent=False,
        )
    out = []
    for d, result in zip(request.delivery_ids, doc, strict=True):
        if isinstance(result, dict) and result.get("success"):
            out.append(Outcome(d, OutcomeKind.DELIVERED, status))
            continue
        message, codes = _errors(result.get("errors") if isinstance(result, dict) else None)
        kind = OutcomeKind.RETRY if codes & RETRY_CODES else OutcomeKind.PERMANENT
        out.append(Outcome(d, kind, status, _saas.shorten(message or "failed")))
    return out


def check(
    connection: dict[str, Any], settings: dict[str, Any], fields: list[str]
) -> list[tuple[str, str]]:
    """When the mapping loads: API names Salesforce accepts; the external id mapped."""
    out = _saas.check_names(
        fields, API_NAME, "a Salesforce field API name is letters, digits and _ (custom: __c)"
    )
    for key in ("sobject", "external_id_field"):
        value = settings.get(key)
        if isinstance(value, str) and not API_NAME.fullmatch(value):
            out.append((f"settings.{key}", f"{value!r} is not a Salesforce API name"))
    ext = settings.get("external_id_field")
    if isinstance(ext, str) and ext not in fields:
        out.append(("settings.external_id_field", f"{ext!r} is not a mapped field"))
    return out


SALESFORCE = register(
    IntegrationType(
        name="salesforce",
        description="Upserts Salesforce records by an external id (sObject Collections, 200 a "
        "request, per-record results), with OAuth2 client credentials. Records "
        "Salesforce refuses fail alone with its statusCode and message; the token is "
        "fetched with the connected app's key and secret and fetched again once on "
        "401 INVALID_SESSION_ID.",
        connection=(
            Param(
                "instance_url",
                "url",
                "Your org's My Domain URL (https://<domain>.my.salesforce.com): the API root. "
                "Tests set a local one.",
                required=True,
                example="https://acme.my.salesforce.com",
            ),
            Param(
                "client_id",
                description="The connected app's consumer key.",
                required=True,
                example="${SALESFORCE_CLIENT_ID}",
            ),
            Param(
                "client_secret",
                description="The connected app's consumer secret.",
                required=True,
                secret=True,
                example="${SALESFORCE_CLIENT_SECRET}",
            ),
            Param(
                "token_url",
                "url",
                "The OAuth2 token endpoint; unset: {instance_url}/services/oauth2/token.",
            ),
            Param("api_version", description="REST API version.", default=API_VERSION),
            *_saas.TIMEOUT_PARAMS,
        ),
        settings=(
            Param(
                "sobject", description="The object's API name.", required=True, example="Contact"
            ),
            Param(
                "external_id_field",
                description="The external id (or idLookup) field that finds the record; it "
                "must be a mapped field.",
                required=True,
                example="Email",
            ),
        ),
        actions=(
            Action(
                "upsert",
                "Create the record, or update the one whose external id field has this value. "
                "Fields are field API names (custom ones end in __c); lists are joined with ; "
                "(multi-select picklists).",
                fields=(
                    Field("Email", "email", "Contact or Lead: e-mail address."),
                    Field("FirstName", "string", "First name."),
                    Field("LastName", "string", "Last name (required to create a Contact)."),
                    Field("Phone", "string", "Phone number."),
                    Field("MobilePhone", "string", "Mobile phone number."),
                    Field("Title", "string", "Job title."),
                    Field("Company", "string", "Lead: company (required to create a Lead)."),
                    Field("LeadSource", "string", "Lead source picklist value."),
                    Field("MailingCity", "string", "Contact: mailing city."),
                    Field("MailingCountry", "string", "Contact: mailing country."),
                    Field("Description", "string", "Description."),
                ),
                open_fields=True,
            ),
        ),
        # 200 records a collection request; Salesforce allows 25 concurrent long requests
        # an org, and a daily API-call allowance: few, full requests.
        default_options={"batch_size": 200, "batch_wait": 1.0, "concurrency": 4},
        build=build,
        read=read,
        check=check,
        oauth2=oauth2,
    )
)
