"""The ``hubspot`` type: CRM records upserted by a unique property (batch upsert, CRM v3).

``POST {base_url}/crm/v3/objects/{object_type}/batch/upsert`` with
``{"inputs": [{"idProperty", "id", "objectWriteTraceId", "properties"}]}``, up to 100 inputs a
request, bearer auth with a private app's token. ``id`` is the value of the mapped field that
``settings.id_property`` names (email by default); ``objectWriteTraceId`` is the delivery id,
which HubSpot names in the error of an input it refused. Property values are text, as HubSpot
takes them (lists joined with ``;``, HubSpot's multi-select form).

HubSpot refuses a batch that holds one id twice, so records with the same id go to separate
requests. A 207 answer lists the inputs that failed: those, and only those, fail (invalid ones
dead with HubSpot's message); the others are delivered.
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

DEFAULT_BASE_URL = "https://api.hubapi.com"
MAX_INPUTS = 100
#: HubSpot's request body limit is about 3 MB; stay well under it.
MAX_BYTES = 2_500_000
#: Internal property names: lowercase letters, digits and underscores, starting with a letter.
PROPERTY_NAME = re.compile(r"[a-z][a-z0-9_]*")
#: Error categories that may pass by waiting; every other category is the input's own fault.
RETRY_CATEGORIES = frozenset({"RATE_LIMITS", "INTERNAL_ERROR", "SERVICE_UNAVAILABLE", "TIMEOUT"})


def _object_type(integration: Any) -> str:
    return str(integration.settings.value.get("object_type") or "contacts")


def _id_property(integration: Any) -> str:
    return str(integration.settings.value.get("id_property") or "email")


def build(
    integration: Any,
    batch: list[tuple[str, dict[str, Any]]],
    *,
    now: float | None = None,
    tokens: TokenProvider | None = None,
) -> list[OutboundRequest]:
    """Batch upsert requests of at most 100 inputs, no id twice in one request."""
    id_property = _id_property(integration)
    inputs: list[tuple[str, dict[str, Any]]] = []
    failed: dict[str, Any] = {}
    for delivery_id, fields in batch:
        try:
            id_value = _saas.need(fields, id_property, f"the id property {id_property!r} is")
        except MappingError as exc:
            failed[delivery_id] = exc
            continue
        properties = {k: _saas.text_value(v) for k, v in fields.items() if v is not None}
        inputs.append(
            (
                delivery_id,
                {
                    "idProperty": id_property,
                    "id": _saas.text_value(id_value),
                    "objectWriteTraceId": delivery_id,
                    "properties": properties,
                },
            )
        )
    _saas.raise_failed(failed, integration)

    rounds = _saas.distinct_rounds(inputs, lambda e: str(e["id"]).lower())

    url = (
        f"{_saas.base_url(integration, DEFAULT_BASE_URL)}/crm/v3/objects/"
        f"{quote(_object_type(integration), safe='')}/batch/upsert"
    )
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {integration.connection.value['token']}",
    }
    out = []
    for r in rounds:
        for group in _saas.chunks(r, max_count=MAX_INPUTS, max_bytes=MAX_BYTES):
            body = _saas.dumps({"inputs": [e for _, e in group]})
            out.append(
                OutboundRequest(
                    "POST",
                    url,
                    dict(headers),
                    body,
                    [d for d, _ in group],
                    frozenset({"Authorization"}),
                )
            )
    return out


def _message(doc: Any, response: Response) -> str:
    if isinstance(doc, dict) and doc.get("message"):
        category = doc.get("category") or doc.get("errorType")
        return f"{category}: {doc['message']}" if category else str(doc["message"])
    return _saas.body_text(response)


def _rate_wait(response: Response) -> float | None:
    # HubSpot's 429 names its rolling window (X-HubSpot-RateLimit-Interval-Milliseconds);
    # with nothing left in it, waiting out one window is what its docs advise.
    if response.headers.get("X-HubSpot-RateLimit-Remaining") not in (None, "0"):
        return None
    return _saas.header_seconds(
        response.headers, "X-HubSpot-RateLimit-Interval-Milliseconds", scale=0.001
    )


def read(request: OutboundRequest, response: Response) -> list[Outcome]:
    """Per input: an error naming its ``objectWriteTraceId`` (or its id) fails that input,
    retried only for rate-limit and server categories; the others are delivered. An error
    naming no input leaves the inputs the results confirm (by ``objectWriteTraceId`` or id)
    delivered and retries the rest. A failure of
    the whole request (429, 401/403, 5xx, 400) applies to every input with HubSpot's message."""
    doc = _saas.loads(response.body)
    status = response.status
    if status >= 300:
        retry_after = _rate_wait(response) if status == 429 else None
        return _saas.whole_request(
            request, response, _message(doc, response), retry_after=retry_after
        )
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not errors:
        return _saas.delivered(request, status)
    sent = _saas.loads(request.body)["inputs"]
    by_trace = {e["objectWriteTraceId"]: d for d, e in zip(request.delivery_ids, sent, strict=True)}
    by_id = {e["id"].lower(): d for d, e in zip(request.delivery_ids, sent, strict=True)}
    outcomes: dict[str, Outcome] = {}
    unattributed: list[str] = []
    for err in errors:
        if not isinstance(err, dict):
            continue
        ctx = err.get("context") or {}
        named = [str(x) for x in (ctx.get("objectWriteTraceId") or [])]
        ids = [str(x).lower() for x in (ctx.get("ids") or ctx.get("id") or [])]
        hit = {by_trace[t] for t in named if t in by_trace} | {by_id[i] for i in ids if i in by_id}
        category = str(err.get("category") or "")
        text = _saas.shorten(f"{category}: {err.get('message') or ''}".strip(": "))
        if not hit:
            unattributed.append(text)
            continue
        kind = OutcomeKind.RETRY if category in RETRY_CATEGORIES else OutcomeKind.PERMANENT
        for d in hit:
            outcomes[d] = Outcome(d, kind, status, f"HTTP {status}: {text}")
    if unattributed:
        # An error that names no input: the inputs HubSpot confirmed are delivered, the rest
        # retry (a duplicate write is an upsert, harmless).
        done: set[str] = set()
        for r in doc.get("results") or []:
            if isinstance(r, dict):
                done.add(str(r.get("objectWriteTraceId") or ""))
                props = r.get("properties") or {}
                done.add(str(props.get(sent[0]["idProperty"]) or "").lower())
        for d, e in zip(request.delivery_ids, sent, strict=True):
            if d not in outcomes and d not in done and e["id"].lower() not in done:
                outcomes[d] = Outcome(
                    d, OutcomeKind.RETRY, status, f"HTTP {status}: {'; '.join(unattributed)}"
                )
    return [
        outcomes.get(d) or Outcome(d, OutcomeKind.DELIVERED, status) for d in request.delivery_ids
    ]


def check(
    connection: dict[str, Any], settings: dict[str, Any], fields: list[str]
) -> list[tuple[str, str]]:
    """When the mapping loads: property names HubSpot accepts, the id property mapped."""
    out = _saas.check_names(
        fields, PROPERTY_NAME, "HubSpot property names are lowercase letters, digits and _"
    )
    id_property = str(settings.get("id_property") or "email")
    if id_property not in fields:
        out.append(
            ("settings.id_property", f"the id property {id_property!r} is not a mapped field")
        )
    return out


_CONTACT_FIELDS = (
    Field("email", "email", "Contact: e-mail address (the default id property).", example="a@b.se"),
    Field("firstname", "string", "Contact: first name."),
    Field("lastname", "string", "Contact: last name."),
    Field("phone", "string", "Contact: phone number."),
    Field("mobilephone", "string", "Contact: mobile phone number."),
    Field("company", "string", "Contact: company name."),
    Field("jobtitle", "string", "Contact: job title."),
    Field("website", "uri", "Contact or company: website URL."),
    Field("address", "string", "Street address."),
    Field("city", "string", "City."),
    Field("zip", "string", "Postal code."),
    Field("country", "string", "Country."),
    Field("lifecyclestage", "string", "Lifecycle stage (subscriber, lead, customer, ...)."),
    Field("hs_lead_status", "string", "Contact: lead status."),
    Field("hubspot_owner_id", "string", "Owner's user id."),
    Field("name", "string", "Company: name."),
    Field("domain", "string", "Company: domain (the usual id property of companies)."),
    Field("dealname", "string", "Deal: name."),
    Field("amount", "number", "Deal: amount."),
    Field("dealstage", "string", "Deal: stage id."),
    Field("pipeline", "string", "Deal: pipeline id."),
    Field("closedate", "datetime", "Deal: close date (ISO 8601)."),
)

HUBSPOT = register(
    IntegrationType(
        name="hubspot",
        description="Upserts CRM records (contacts, companies, deals, custom objects) in HubSpot "
        "by a unique property (CRM v3 batch upsert, 100 a request). Inputs HubSpot "
        "refuses in its answer fail alone with HubSpot's message; a 429 waits out "
        "HubSpot's rate-limit window; 401/403 are permanent; 5xx and timeouts retry.",
        connection=(
            Param(
                "token",
                description="A private app's access token (scopes to write the object type).",
                required=True,
                secret=True,
                example="${HUBSPOT_TOKEN}",
            ),
            _saas.base_url_param(DEFAULT_BASE_URL),
            *_saas.TIMEOUT_PARAMS,
        ),
        settings=(
            Param(
                "object_type",
                description="The CRM object type: contacts, companies, deals, or a custom "
                "object's type id (2-1234567) or name.",
                default="contacts",
                example="contacts",
            ),
            Param(
                "id_property",
                description="The unique property that finds the record (email for contacts, "
                "domain for companies, or a custom unique property); it must be a mapped field.",
                default="email",
            ),
        ),
        actions=(
            Action(
                "upsert",
                "Create the record, or update the one whose id property has this value. "
                "Fields are HubSpot internal property names; custom properties are allowed "
                "(lowercase letters, digits and _). Lists are sent joined with ; "
                "(multi-select properties).",
                fields=_CONTACT_FIELDS,
                open_fields=True,
            ),
        ),
        # 100 inputs a batch; private apps get 100 (Free/Starter) to 190 (Pro/Enterprise)
        # requests per 10 s: 10/s stays under the lower limit.
        default_options={"batch_size": 100, "batch_wait": 1.0, "concurrency": 4, "rate_limit": 10},
        build=build,
        read=read,
        check=check,
    )
)
