"""The ``brevo`` type: contacts created or updated in Brevo (API v3).

``POST {base_url}/contacts`` with ``{"email", "ext_id", "attributes", "listIds",
"updateEnabled": true}``, one contact a request, the key in the ``api-key`` header. Brevo's
batch endpoint (``/contacts/import``) answers with a background job id and no per-contact
result, so the gateway sends one request a record and reads each answer: 201 (created) and
204 (updated) are delivered, a 400 is dead with Brevo's code and message, and a 429 waits for
``x-sib-ratelimit-reset``.

Field names: ``email``, ``ext_id``, ``emailBlacklisted``, ``smsBlacklisted`` and attribute names
as Brevo spells them (upper case: ``FIRSTNAME``, ``LASTNAME``, ``SMS``, your own).
"""

from __future__ import annotations

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

DEFAULT_BASE_URL = "https://api.brevo.com/v3"
#: Attribute names: upper-case letters, digits and _ (Brevo upper-cases what it is given).
ATTRIBUTE = re.compile(r"[A-Z][A-Z0-9_]*")
CONTACT_KEYS = {"email": "email", "ext_id": "ext_id"}
FLAGS = ("emailBlacklisted", "smsBlacklisted")


def contact(fields: dict[str, Any], list_ids: list[int]) -> dict[str, Any]:
    """The request body for one record."""
    if not fields.get("email") and not fields.get("ext_id") and not fields.get("SMS"):
        raise MappingError("Brevo needs email, ext_id or the SMS attribute, and none has a value")
    body: dict[str, Any] = {}
    attributes: dict[str, Any] = {}
    for name, value in fields.items():
        if value is None:
            continue
        if name in CONTACT_KEYS or name in FLAGS:
            body[name] = value
        else:
            attributes[name] = value
    if attributes:
        body["attributes"] = attributes
    if list_ids:
        body["listIds"] = list_ids
    body["updateEnabled"] = True
    return body


def build(
    integration: Any,
    batch: list[tuple[str, dict[str, Any]]],
    *,
    now: float | None = None,
    tokens: TokenProvider | None = None,
) -> list[OutboundRequest]:
    """One ``POST /contacts`` a record."""
    list_ids = [int(x) for x in integration.settings.value.get("list_ids") or []]
    url = _saas.base_url(integration, DEFAULT_BASE_URL) + "/contacts"
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "api-key": str(integration.connection.value["api_key"]),
    }
    out = []
    failed: dict[str, Any] = {}
    for delivery_id, fields in batch:
        try:
            body = _saas.dumps(contact(fields, list_ids))
        except MappingError as exc:
            failed[delivery_id] = exc
            continue
        out.append(
            OutboundRequest("POST", url, dict(headers), body, [delivery_id], frozenset({"api-key"}))
        )
    _saas.raise_failed(failed, integration)
    return out


def read(request: OutboundRequest, response: Response) -> list[Outcome]:
    """201/204 delivered; otherwise Brevo's ``code: message``: 429 retries after
    ``x-sib-ratelimit-reset`` seconds, 5xx retries, 400/401/403/404 are permanent."""
    if 200 <= response.status < 300:
        return _saas.delivered(request, response.status)
    doc = _saas.loads(response.body)
    if isinstance(doc, dict) and doc.get("message"):
        message = f"{doc.get('code') or 'error'}: {doc['message']}"
    else:
        message = _saas.body_text(response)
    retry_after = (
        _saas.header_seconds(response.headers, "x-sib-ratelimit-reset")
        if response.status == 429
        else None
    )
    return _saas.whole_request(request, response, message, retry_after=retry_after)


def check(
    connection: dict[str, Any], settings: dict[str, Any], fields: list[str]
) -> list[tuple[str, str]]:
    """When the mapping loads: attribute names Brevo accepts; list ids that are numbers."""
    out = _saas.check_names(
        fields,
        ATTRIBUTE,
        "a Brevo attribute name is upper-case letters, digits and _ "
        f"(other keys: {', '.join([*CONTACT_KEYS, *FLAGS])})",
        skip=[*CONTACT_KEYS, *FLAGS],
    )
    ids = settings.get("list_ids")
    if ids is not None and (
        not isinstance(ids, list) or not all(isinstance(x, int) and x > 0 for x in ids)
    ):
        out.append(("settings.list_ids", "a list of Brevo list ids (positive numbers)"))
    return out


BREVO = register(
    IntegrationType(
        name="brevo",
        description="Creates or updates Brevo contacts (API v3, one a request) with their "
        "attributes, and adds them to lists. Brevo's code and message become the "
        "error of a refused contact; a 429 waits for x-sib-ratelimit-reset; 401/403 "
        "are permanent.",
        connection=(
            Param(
                "api_key",
                description="A Brevo API v3 key (xkeysib-...).",
                required=True,
                secret=True,
                example="${BREVO_API_KEY}",
            ),
            _saas.base_url_param(DEFAULT_BASE_URL),
            *_saas.TIMEOUT_PARAMS,
        ),
        settings=(
            Param("list_ids", "list", "Ids of the lists to add each contact to.", example=[7]),
        ),
        actions=(
            Action(
                "upsert_contact",
                "Create the contact, or update the one with this e-mail (updateEnabled). "
                "Fields other than email, ext_id, emailBlacklisted and smsBlacklisted are "
                "attributes (upper case, as defined in your Brevo account); lists are sent "
                "as lists (multiple-choice attributes).",
                fields=(
                    Field("email", "email", "The contact's e-mail address."),
                    Field("ext_id", "string", "Your id of the contact."),
                    Field("emailBlacklisted", "boolean", "Block e-mails to the contact."),
                    Field("smsBlacklisted", "boolean", "Block SMS to the contact."),
                    Field("FIRSTNAME", "string", "Attribute: first name."),
                    Field("LASTNAME", "string", "Attribute: last name."),
                    Field("SMS", "e164", "Attribute: mobile number (E.164)."),
                ),
                open_fields=True,
            ),
        ),
        # Brevo's contacts endpoints allow about 10 requests a second on standard plans.
        default_options={"batch_size": 1, "concurrency": 4, "rate_limit": 10},
        build=build,
        read=read,
        check=check,
    )
)
