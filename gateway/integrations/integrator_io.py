"""The ``integrator_io`` type: provisions, updates, expires and deletes integrator.io
SmartConnector licences, one person (e-mail) a licence.

The licence id integrator.io gives on creation is remembered as a **link** (link key: the
lower-cased e-mail; docs/links-and-rollups.md), so a later record for the same e-mail updates
that licence instead of creating another:

- ``license``: ``POST /v1/connectors/{connector_id}/licenses`` with ``email``, ``expires`` and
  ``opts`` the first time (``201`` with ``_id``: the link), ``PUT .../licenses/{_id}`` without
  ``email`` afterwards.
- ``expire``: ``PUT .../licenses/{_id}`` with ``expires`` = the record's arrival time.
- ``delete``: ``DELETE .../licenses/{_id}`` (``204``; ``404`` counts as done); the link goes.

Without a link (a licence made elsewhere, or before the gateway), or when the linked licence
answers ``404`` (deleted elsewhere), the send step finds the licence with ``GET .../licenses``
by ``user.email`` first, and creates it anew for ``license`` when there is none. Times
count from the record's arrival, never from the send, so a retry never moves a date.

Errors: ``invalid_user`` on create (no integrator.io account for the e-mail yet) retries on a
slow schedule of its own (``invalid_user_retry_every``, ``invalid_user_retry_for``), then the
delivery is dead with the vendor's message; ``401`` is permanent and counts against the
breaker; ``429`` and 5xx retry.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from gateway.integrations import _saas
from gateway.integrations.base import (
    Action,
    Field,
    IntegrationType,
    LinkResult,
    OutboundRequest,
    Outcome,
    OutcomeKind,
    Param,
    RecordContext,
    Response,
    TokenProvider,
    register,
)
from gateway.integrations.transport import SendContext
from gateway.mapping.errors import MappingError

DEFAULT_BASE_URL = "https://api.integrator.io"
DEFAULT_RETRY_EVERY = 3600.0  # invalid_user: once an hour...
DEFAULT_RETRY_FOR = 7 * 86400.0  # ...for a week
_DAY = 86400.0


def link_key(fields: dict[str, Any]) -> str | None:
    """The link key of a mapped record: its e-mail, trimmed and lower-cased (integrator.io
    compares e-mails without case)."""
    email = fields.get("email")
    if not isinstance(email, str) or not email.strip():
        return None
    return email.strip().lower()


@dataclass(frozen=True, slots=True)
class _Context:
    """What send and read need to know of a request (OutboundRequest.context)."""

    action: str
    email: str
    key: str
    external_id: str | None
    received_at: float
    collection: str  # .../v1/connectors/{id}/licenses
    retry_every: float
    retry_for: float


def iso(ts: float) -> str:
    """Epoch seconds as integrator.io writes times: ISO 8601 in UTC with milliseconds."""
    dt = datetime.fromtimestamp(ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _normal_time(text: str) -> str:
    """A mapped ISO 8601 time written as :func:`iso` writes (no offset: UTC); other text as
    it is (integrator.io's answer then says what is wrong)."""
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return iso(dt.timestamp())


def _headers(integration: Any) -> dict[str, str]:
    token = str(integration.connection.value["token"])
    return {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Accept": "application/json",
    }


def _number(settings: Mapping[str, Any], name: str, default: float) -> float:
    value = settings.get(name)
    return default if value is None else float(value)


def _license_body(
    fields: dict[str, Any], settings: Mapping[str, Any], arrival: float
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    expires = fields.get("expires")
    if expires not in (None, ""):
        body["expires"] = _normal_time(str(expires))
    elif settings.get("trial_days") is not None:
        body["expires"] = iso(arrival + float(settings["trial_days"]) * _DAY)
    opts: dict[str, Any] = {}
    if fields.get("connectorEdition") not in (None, ""):
        opts["connectorEdition"] = str(fields["connectorEdition"])
    add_type, add_edition = fields.get("addOnType"), fields.get("addOnEdition")
    if add_type not in (None, "") and add_edition not in (None, ""):
        opts["addonLicenses"] = [
            {"type": str(add_type), "licenses": [{"addOnEdition": str(add_edition)}]}
        ]
    if opts:
        body["opts"] = opts
    return body


def build(
    integration: Any,
    batch: list[tuple[str, dict[str, Any]]],
    *,
    now: float | None = None,
    tokens: TokenProvider | None = None,
    records: Mapping[str, RecordContext] | None = None,
) -> list[OutboundRequest]:
    """One request a record: POST (no link yet), PUT or DELETE of the linked licence."""
    conn = integration.connection.value
    settings = integration.settings.value
    action = integration.action.name
    base = _saas.base_url(integration, DEFAULT_BASE_URL)
    collection = f"{base}/v1/connectors/{quote(str(conn['connector_id']), safe='')}/licenses"
    headers = _headers(integration)
    out: list[OutboundRequest] = []
    failed: dict[str, Any] = {}
    for did, fields in batch:
        try:
            email = str(_saas.need(fields, "email", "integrator.io licences are per e-mail"))
        except MappingError as exc:
            failed[did] = exc
            continue
        rec = (records or {}).get(did)
        arrival = rec.received_at if rec else (time.time() if now is None else now)
        ext = rec.external_id if rec else None
        ctx = _Context(
            action,
            email.strip(),
            link_key(fields) or email,
            ext,
            arrival,
            collection,
            _number(settings, "invalid_user_retry_every", DEFAULT_RETRY_EVERY),
            _number(settings, "invalid_user_retry_for", DEFAULT_RETRY_FOR),
        )
        if action == "license":
            body = _license_body(fields, settings, arrival)
            if ext is None:
                method, url = "POST", collection
                body = {"email": ctx.email, **body}
            else:
                method, url = "PUT", f"{collection}/{quote(ext, safe='')}"
            payload = _saas.dumps(body)
        elif action == "expire":
            method = "PUT"
            url = f"{collection}/{quote(ext, safe='')}" if ext else collection
            payload = _saas.dumps({"expires": iso(arrival)})
        else:  # delete
            method = "DELETE"
            url = f"{collection}/{quote(ext, safe='')}" if ext else collection
            payload = b""
        hdrs = (
            dict(headers) if payload else {k: v for k, v in headers.items() if k != "Content-Type"}
        )
        out.append(
            OutboundRequest(
                method,
                url,
                hdrs,
                payload,
                [did],
                frozenset({"Authorization"}),
                context=ctx,
            )
        )
    _saas.raise_failed(failed, integration)
    return out


def _find(doc: Any, email: str) -> str | None:
    """The id of the licence whose user has ``email``, in a GET .../licenses answer."""
    items = (
        doc
        if isinstance(doc, list)
        else (doc or {}).get("licenses")
        if isinstance(doc, dict)
        else None
    )
    for lic in items or []:
        if not isinstance(lic, dict):
            continue
        user = lic.get("user") or {}
        found = user.get("email") if isinstance(user, dict) else None
        if isinstance(found, str) and found.strip().lower() == email.strip().lower():
            return str(lic.get("_id")) if lic.get("_id") else None
    return None


async def send(integration: Any, request: OutboundRequest, ctx: SendContext) -> Response:
    """Send as built when the licence id is known. Otherwise, or when the linked licence is
    gone (``404``: deleted elsewhere), find the licence by e-mail first (``GET .../licenses``)
    and address it, or create it (``license``), or call it done (``delete``), or refuse
    (``expire``: nothing to expire)."""
    c = request.context
    if not isinstance(c, _Context):
        return await ctx.http(request)
    if c.external_id is not None:
        answer = await ctx.http(request)
        if answer.status != 404 or c.action == "delete":
            return answer
    lookup = OutboundRequest(
        "GET",
        c.collection,
        {k: v for k, v in request.headers.items() if k != "Content-Type"},
        b"",
        list(request.delivery_ids),
        request.secret_headers,
    )
    found = await ctx.http(lookup)
    if found.status != 200:
        return replace(found, detail={"phase": "lookup"})
    lic_id = _find(_saas.loads(found.body), c.email)
    doc = _saas.loads(request.body) if request.body else None
    if lic_id is None:
        if c.action == "license":
            create = {"email": c.email, **{k: v for k, v in (doc or {}).items() if k != "email"}}
            answer = await ctx.http(
                replace(request, method="POST", url=c.collection, body=_saas.dumps(create))
            )
            return replace(answer, detail={"created": True})
        if c.action == "delete":
            return Response(204, {}, b"", detail={"absent": True})
        message = f"no integrator.io licence for {c.email} to expire"
        return Response(404, {}, _saas.dumps({"message": message}), detail={"absent": True})
    url = f"{c.collection}/{quote(lic_id, safe='')}"
    body = request.body
    if c.action == "license":
        update = {k: v for k, v in (doc or {}).items() if k != "email"}  # never on an update
        body = _saas.dumps(update)
    method = "PUT" if c.action != "delete" else "DELETE"
    answer = await ctx.http(replace(request, method=method, url=url, body=body))
    return replace(answer, detail={"external_id": lic_id})


def _errors(doc: Any) -> list[dict[str, Any]]:
    errs = doc.get("errors") if isinstance(doc, dict) else None
    return [e for e in errs if isinstance(e, dict)] if isinstance(errs, list) else []


def _message(doc: Any, response: Response) -> str:
    errs = _errors(doc)
    if errs:
        return "; ".join(
            f"{e.get('code')}: {e.get('message')}" if e.get("code") else str(e.get("message"))
            for e in errs
        )
    if isinstance(doc, dict) and doc.get("message"):
        return str(doc["message"])
    return _saas.body_text(response)


def read(request: OutboundRequest, response: Response) -> list[Outcome]:
    """The licence's outcome, with the link to remember when it went through."""
    c = request.context
    status = response.status
    did = request.delivery_ids[0]
    doc = _saas.loads(response.body)
    detail = response.detail if isinstance(response.detail, dict) else {}
    if not isinstance(c, _Context):
        return _saas.whole_request(request, response, _message(doc, response))
    if 200 <= status < 300 or (status == 404 and c.action == "delete"):
        if c.action == "delete":
            link = LinkResult(c.key, None)
        else:
            created = detail.get("created") or request.method == "POST"
            ext = detail.get("external_id") or (None if created else c.external_id)
            if ext is None and isinstance(doc, dict) and doc.get("_id"):
                ext = str(doc["_id"])
            if ext is None:
                return [
                    Outcome(
                        did,
                        OutcomeKind.RETRY,
                        status,
                        f"HTTP {status}: integrator.io answered without the licence's _id",
                    )
                ]
            link = LinkResult(c.key, str(ext))
        return [Outcome(did, OutcomeKind.DELIVERED, status, link=link)]
    message = _message(doc, response)
    if any(e.get("code") == "invalid_user" for e in _errors(doc)):
        # No integrator.io account for the e-mail yet: people sign up in their own time.
        return [
            Outcome(
                did,
                OutcomeKind.RETRY,
                status,
                f"HTTP {status}: {_saas.shorten(message)}",
                retry_after=c.retry_every,
                retry_until=c.received_at + c.retry_for,
            )
        ]
    return _saas.whole_request(request, response, message)  # the engine reads Retry-After


def check(
    connection: dict[str, Any], settings: dict[str, Any], fields: list[str]
) -> list[tuple[str, str]]:
    """When the mapping loads: the e-mail is mapped; the add-on fields come as a pair."""
    out: list[tuple[str, str]] = []
    if "email" not in fields:
        out.append(("fields.email", "integrator.io licences are per e-mail: map email"))
    if ("addOnType" in fields) != ("addOnEdition" in fields):
        out.append(("fields", "map addOnType and addOnEdition together (one add-on licence)"))
    for name in ("invalid_user_retry_every", "invalid_user_retry_for", "trial_days"):
        value = settings.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
            out.append((f"settings.{name}", f"{name} must be positive"))
    return out


_EMAIL = Field(
    "email",
    "email",
    "The licensee's e-mail (the link key: one licence an e-mail).",
    required=True,
    example="ada@example.com",
)

INTEGRATOR_IO = register(
    IntegrationType(
        name="integrator_io",
        description="Provisions, updates, expires and deletes integrator.io SmartConnector "
        "licences, one an e-mail. The licence id from the first POST is kept as a link, so "
        "later records update the same licence (PUT); without a link the licence is found by "
        "e-mail. invalid_user (no account yet) retries on a slow schedule of its own; 401 "
        "is permanent and opens the breaker; 429 and 5xx retry.",
        connection=(
            Param(
                "token",
                description="An integrator.io API token (Bearer) allowed to manage the "
                "connector's licences.",
                required=True,
                secret=True,
                example="${INTEGRATOR_IO_TOKEN}",
            ),
            Param(
                "connector_id",
                description="The SmartConnector's _id (licences are per connector).",
                required=True,
                example="5f0c3a2b1e9d4c0012345678",
            ),
            _saas.base_url_param(DEFAULT_BASE_URL),
            *_saas.TIMEOUT_PARAMS,
        ),
        settings=(
            Param(
                "link_scope",
                description="Another entry of the group whose links (e-mail -> licence id) "
                "this entry reads and writes: set it on expire and delete entries to the name "
                "of the license entry, so they address the licences it created.",
                example="licences",
            ),
            Param(
                "invalid_user_retry_every",
                "number",
                "Seconds between retries of a licence refused with invalid_user (the "
                "e-mail has no integrator.io account yet).",
                default=DEFAULT_RETRY_EVERY,
            ),
            Param(
                "invalid_user_retry_for",
                "number",
                "Seconds after the record's arrival to keep retrying invalid_user; then "
                "the delivery is dead with integrator.io's message.",
                default=DEFAULT_RETRY_FOR,
            ),
        ),
        actions=(
            Action(
                "license",
                "Provision the e-mail's licence (POST, first time) or update it (PUT to the "
                "linked licence, without email). expires is the mapped time, or trial_days "
                "after the record's arrival; neither: integrator.io's default.",
                fields=(
                    _EMAIL,
                    Field("expires", "datetime", "When the licence expires (ISO 8601)."),
                    Field(
                        "connectorEdition", "string", "opts.connectorEdition.", example="premium"
                    ),
                    Field("addOnType", "string", "An add-on licence's type (with addOnEdition)."),
                    Field("addOnEdition", "string", "The add-on licence's edition."),
                ),
                settings=(
                    Param(
                        "trial_days",
                        "integer",
                        "Days from the record's arrival to expires, when expires is not mapped.",
                        example=30,
                    ),
                ),
            ),
            Action(
                "expire",
                "Expire the e-mail's licence now: PUT expires = the record's arrival time.",
                fields=(_EMAIL,),
            ),
            Action(
                "delete",
                "Delete the e-mail's licence (DELETE; a licence already gone counts as done) "
                "and forget its link.",
                fields=(_EMAIL,),
            ),
        ),
        # One licence a request, one request at a time: two records for one e-mail in flight
        # together would both create (a second licence or a refusal). link_key is the default
        # ordering key; once the engine orders by key, concurrency may rise.
        default_options={"batch_size": 1, "concurrency": 1, "rate_limit": 5},
        build=build,
        read=read,
        send=send,
        check=check,
        link_key=link_key,
        breaker_statuses=frozenset({401}),
    )
)
