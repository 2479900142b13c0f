"""The ``mailchimp`` type: audience members added or updated in batches (Marketing API 3.0).

``POST {base_url}/lists/{list_id}`` with ``{"members": [...], "update_existing": true}``, up to
500 members a request, basic auth with the API key. The base URL's data centre comes from the
key's ``-usNN`` suffix (``https://us19.api.mailchimp.com/3.0``). Each member has
``email_address``, ``status`` (``settings.status_if_new`` unless a ``status`` field is mapped),
``merge_fields`` (every mapped field named like a merge tag: ``FNAME``, ``PHONE``, ...) and
``tags``.

Mailchimp answers 200 with the members it refused in ``errors`` (by e-mail address): those
go dead with Mailchimp's message, the rest are delivered.
"""

from __future__ import annotations

import base64
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

MAX_MEMBERS = 500
MAX_BYTES = 4_000_000  # well under Mailchimp's 10 MB request limit
#: A merge tag: upper-case letters, digits and _, at most 10 characters (Mailchimp's rule).
MERGE_TAG = re.compile(r"[A-Z][A-Z0-9_]{0,9}")
MEMBER_KEYS = (
    "email_address",
    "status",
    "email_type",
    "language",
    "vip",
    "tags",
    "ip_signup",
    "timestamp_signup",
    "ip_opt",
    "timestamp_opt",
)
STATUSES = ("subscribed", "pending", "unsubscribed", "cleaned", "transactional")
_DC = re.compile(r"-([a-z]+[0-9]+)$")


def base_url(integration: Any) -> str:
    """``connection.base_url``, or the production root of the key's data centre."""
    conn = integration.connection.value
    if conn.get("base_url"):
        return str(conn["base_url"]).rstrip("/")
    m = _DC.search(str(conn["api_key"]))
    if m is None:
        raise ValueError(
            "connection.api_key: a Mailchimp API key ends in its data centre (-us19); "
            "without one, set connection.base_url"
        )
    return f"https://{m.group(1)}.api.mailchimp.com/3.0"


def member(fields: dict[str, Any], status_if_new: str) -> dict[str, Any]:
    """One member of the batch from a record's mapped fields."""
    _saas.need(fields, "email_address", "Mailchimp needs the member's email_address")
    out: dict[str, Any] = {
        "email_address": fields["email_address"],
        "status": fields.get("status") or status_if_new,
    }
    if out["status"] not in STATUSES:
        raise MappingError(
            f"Mailchimp's member status is one of {', '.join(STATUSES)}",
            value=out["status"],
            field="status",
        )
    merge: dict[str, Any] = {}
    for name, value in fields.items():
        if value is None or name in ("email_address", "status"):
            continue
        if name in MEMBER_KEYS:
            out[name] = value
        elif isinstance(value, list):
            merge[name] = ", ".join(_saas.text_value(v) for v in value)
        else:
            merge[name] = value
    if merge:
        out["merge_fields"] = merge
    return out


def build(
    integration: Any,
    batch: list[tuple[str, dict[str, Any]]],
    *,
    now: float | None = None,
    tokens: TokenProvider | None = None,
) -> list[OutboundRequest]:
    """Batch requests of at most 500 members, no address twice in one request."""
    settings = integration.settings.value
    status_if_new = str(settings.get("status_if_new") or "subscribed")
    members: list[tuple[str, dict[str, Any]]] = []
    failed: dict[str, Any] = {}
    for delivery_id, fields in batch:
        try:
            members.append((delivery_id, member(fields, status_if_new)))
        except MappingError as exc:
            failed[delivery_id] = exc
    _saas.raise_failed(failed, integration)

    url = f"{base_url(integration)}/lists/{quote(str(settings['list_id']), safe='')}"
    key = str(integration.connection.value["api_key"])
    headers = {
        "Content-Type": "application/json",
        # Mailchimp takes any user name with the key as the password.
        "Authorization": "Basic " + base64.b64encode(f"gateway:{key}".encode()).decode(),
    }
    out = []
    for run in _saas.distinct_rounds(members, lambda m: str(m["email_address"]).lower()):
        for group in _saas.chunks(run, max_count=MAX_MEMBERS, max_bytes=MAX_BYTES):
            body = _saas.dumps({"members": [m for _, m in group], "update_existing": True})
            ids = [d for d, _ in group]
            out.append(
                OutboundRequest("POST", url, dict(headers), body, ids, frozenset({"Authorization"}))
            )
    return out


def _problem(doc: Any, response: Response) -> str:
    # Mailchimp's errors are RFC 7807 problem documents: title, detail, errors.
    if isinstance(doc, dict) and (doc.get("title") or doc.get("detail")):
        text = f"{doc.get('title') or ''}: {doc.get('detail') or ''}".strip(": ")
        for e in doc.get("errors") or []:
            if isinstance(e, dict):
                text += f"; {e.get('field') or ''}: {e.get('message') or ''}"
        return text
    return _saas.body_text(response)


def read(request: OutboundRequest, response: Response) -> list[Outcome]:
    """Per member: one named in ``errors`` is dead with Mailchimp's message, the others are
    delivered. A failed request (401 bad key, 403, 404 unknown list, 429 too many
    connections, 5xx) applies to every member with Mailchimp's title and detail."""
    doc = _saas.loads(response.body)
    if response.status >= 300:
        return _saas.whole_request(request, response, _problem(doc, response))
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not errors:
        return _saas.delivered(request, response.status)
    sent = _saas.loads(request.body)["members"]
    by_email = {
        str(m["email_address"]).lower(): d for d, m in zip(request.delivery_ids, sent, strict=True)
    }
    out: dict[str, Outcome] = {}
    for err in errors:
        if not isinstance(err, dict):
            continue
        d = by_email.get(str(err.get("email_address") or "").lower())
        if d is None:
            continue
        code = err.get("error_code")
        text = _saas.shorten(f"{code}: {err.get('error')}" if code else str(err.get("error")))
        out[d] = Outcome(d, OutcomeKind.PERMANENT, response.status, text)
    return [
        out.get(d) or Outcome(d, OutcomeKind.DELIVERED, response.status)
        for d in request.delivery_ids
    ]


def check(
    connection: dict[str, Any], settings: dict[str, Any], fields: list[str]
) -> list[tuple[str, str]]:
    """When the mapping loads: every field is a member key or a valid merge tag."""
    return _saas.check_names(
        fields,
        MERGE_TAG,
        "a Mailchimp merge tag is upper-case letters, digits and _, at most 10 characters "
        f"(member keys: {', '.join(MEMBER_KEYS)})",
        skip=MEMBER_KEYS,
    )


MAILCHIMP = register(
    IntegrationType(
        name="mailchimp",
        description="Adds or updates members of a Mailchimp audience (Marketing API batch "
        "subscribe, 500 a request), with merge fields and tags. Members Mailchimp "
        "refuses in its answer fail alone with its message; a bad key (401) is "
        "permanent; 429 (over 10 connections) and 5xx retry.",
        connection=(
            Param(
                "api_key",
                description="A Mailchimp API key; its -usNN suffix names the data centre.",
                required=True,
                secret=True,
                example="${MAILCHIMP_API_KEY}",
            ),
            Param(
                "base_url",
                "url",
                "The API root as Mailchimp documents it; unset: "
                "https://<dc>.api.mailchimp.com/3.0 with the data centre from the key. "
                "Tests and proxies set it.",
            ),
            *_saas.TIMEOUT_PARAMS,
        ),
        settings=(
            Param(
                "list_id",
                description="The audience (list) id.",
                required=True,
                example="a1b2c3d4e5",
            ),
            Param(
                "status_if_new",
                description="The status a member is sent with unless a status field is mapped. "
                "Mailchimp's batch endpoint applies it to existing members too; pending sends "
                "a double opt-in e-mail.",
                default="subscribed",
                choices=STATUSES,
            ),
        ),
        actions=(
            Action(
                "upsert_member",
                "Add the member, or update the one with this address. Any field named like a "
                "merge tag (FNAME, LNAME, PHONE, or your own) goes into merge_fields; lists "
                "are joined with , there.",
                fields=(
                    Field("email_address", "email", "The member's address.", required=True),
                    Field("status", "string", "Status for this record (see status_if_new)."),
                    Field("email_type", "string", "html or text."),
                    Field("language", "string", "The member's language code (sv, en...)."),
                    Field("vip", "boolean", "VIP member."),
                    Field("tags", "list_of_strings", "Tag names to add."),
                    Field("ip_signup", "string", "IP address the member signed up from."),
                    Field("timestamp_signup", "datetime", "When the member signed up."),
                    Field("ip_opt", "string", "IP address the member confirmed from."),
                    Field("timestamp_opt", "datetime", "When the member confirmed."),
                    Field("FNAME", "string", "Merge field: first name."),
                    Field("LNAME", "string", "Merge field: last name."),
                    Field("PHONE", "string", "Merge field: phone number."),
                    Field("BIRTHDAY", "string", "Merge field: birthday (MM/DD)."),
                    Field("ADDRESS", "any", "Merge field: address (object of addr1, city...)."),
                ),
                open_fields=True,
            ),
        ),
        # 500 members a batch; Mailchimp allows 10 simultaneous connections an account.
        default_options={"batch_size": 500, "batch_wait": 1.0, "concurrency": 10},
        build=build,
        read=read,
        check=check,
    )
)
