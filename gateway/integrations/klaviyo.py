"""The ``klaviyo`` type: profiles created or updated in Klaviyo (JSON:API, dated revisions).

Without ``settings.list_id``: ``POST {base_url}/api/profile-import`` a record, body
``{"data": {"type": "profile", "attributes": {...}}}``; 200 (updated) and 201 (created) are
delivered, a 400 is dead with Klaviyo's error detail and the attribute it points at.

With ``settings.list_id``: ``POST {base_url}/api/profile-bulk-import-jobs`` a batch (up to 10,000
profiles and 5 MB), the profiles added to the list. Klaviyo accepts the job with 202 and checks
each profile later: the deliveries are delivered when the job is accepted, and a profile
Klaviyo refuses in the job is listed in the job's import errors in Klaviyo, not here.

Auth: ``Authorization: Klaviyo-API-Key <private key>``; every request names the API revision
(``connection.revision``). Fields: Klaviyo's profile attribute names (``email``,
``phone_number``, ``external_id``, ``first_name``...), ``location.<key>`` and
``properties.<name>`` for custom properties.
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

DEFAULT_BASE_URL = "https://a.klaviyo.com"
#: The API revision the requests are written for (Klaviyo's stable OpenAPI of this date).
REVISION = "2026-07-15"
MAX_JOB_PROFILES = 10_000
MAX_JOB_BYTES = 5_000_000
ATTRIBUTES = (
    "email",
    "phone_number",
    "external_id",
    "first_name",
    "last_name",
    "organization",
    "locale",
    "title",
    "image",
)
LOCATION = (
    "address1",
    "address2",
    "city",
    "country",
    "latitude",
    "longitude",
    "region",
    "zip",
    "timezone",
    "ip",
)
NAME = re.compile(
    r"(" + "|".join(ATTRIBUTES) + r"|location\.(" + "|".join(LOCATION) + r")|properties\.[^.\s]+)"
)
JSON_API = "application/vnd.api+json"


def profile(fields: dict[str, Any]) -> dict[str, Any]:
    """One profile resource (``{"type": "profile", "attributes": ...}``) from mapped fields."""
    if not any(fields.get(k) for k in ("email", "phone_number", "external_id")):
        raise MappingError("Klaviyo needs email, phone_number or external_id, and none has a value")
    attributes: dict[str, Any] = {}
    for name, value in fields.items():
        if value is None:
            continue
        if "." in name:
            group, key = name.split(".", 1)
            attributes.setdefault(group, {})[key] = value
        else:
            attributes[name] = value
    return {"type": "profile", "attributes": attributes}


def _identity(p: dict[str, Any]) -> str:
    # A job names each person once: a later record of the same person goes to a later job.
    a = p["attributes"]
    return (
        f"{str(a.get('email') or a.get('phone_number') or '').lower()}|{a.get('external_id') or ''}"
    )


def build(
    integration: Any,
    batch: list[tuple[str, dict[str, Any]]],
    *,
    now: float | None = None,
    tokens: TokenProvider | None = None,
) -> list[OutboundRequest]:
    """A profile-import request a record, or bulk import jobs when a list is set."""
    conn = integration.connection.value
    list_id = integration.settings.value.get("list_id")
    root = _saas.base_url(integration, DEFAULT_BASE_URL)
    headers = {
        "Content-Type": JSON_API,
        "Accept": JSON_API,
        "Authorization": f"Klaviyo-API-Key {conn['api_key']}",
        "revision": str(conn.get("revision") or REVISION),
    }
    secret = frozenset({"Authorization"})
    profiles: list[tuple[str, dict[str, Any]]] = []
    failed: dict[str, Any] = {}
    for delivery_id, fields in batch:
        try:
            profiles.append((delivery_id, profile(fields)))
        except MappingError as exc:
            failed[delivery_id] = exc
    _saas.raise_failed(failed, integration)

    if not list_id:
        url = root + "/api/profile-import"
        return [
            OutboundRequest("POST", url, dict(headers), _saas.dumps({"data": p}), [d], secret)
            for d, p in profiles
        ]
    url = root + "/api/profile-bulk-import-jobs"
    out = []
    for run in _saas.distinct_rounds(profiles, _identity):
        for group in _saas.chunks(run, max_count=MAX_JOB_PROFILES, max_bytes=MAX_JOB_BYTES):
            job = {
                "data": {
                    "type": "profile-bulk-import-job",
                    "attributes": {"profiles": {"data": [p for _, p in group]}},
                    "relationships": {"lists": {"data": [{"type": "list", "id": str(list_id)}]}},
                }
            }
            ids = [d for d, _ in group]
            out.append(OutboundRequest("POST", url, dict(headers), _saas.dumps(job), ids, secret))
    return out


def _errors(doc: Any, response: Response) -> str:
    # JSON:API errors: code, detail and the attribute the source pointer names.
    if isinstance(doc, dict) and isinstance(doc.get("errors"), list):
        parts = []
        for e in doc["errors"]:
            if not isinstance(e, dict):
                continue
            pointer = (e.get("source") or {}).get("pointer")
            text = f"{e.get('code') or e.get('title') or 'error'}: {e.get('detail') or ''}"
            parts.append(text + (f" ({pointer})" if pointer else ""))
        if parts:
            return "; ".join(parts)
    return _saas.body_text(response)


def read(request: OutboundRequest, response: Response) -> list[Outcome]:
    """200/201/202 delivered; otherwise Klaviyo's JSON:API errors: 429 retries (after
    Retry-After, which the engine reads), 5xx retries, 400/401/403 are permanent."""
    if 200 <= response.status < 300:
        return _saas.delivered(request, response.status)
    return _saas.whole_request(request, response, _errors(_saas.loads(response.body), response))


def check(
    connection: dict[str, Any], settings: dict[str, Any], fields: list[str]
) -> list[tuple[str, str]]:
    """When the mapping loads: every field is a Klaviyo profile attribute."""
    return _saas.check_names(
        fields,
        NAME,
        "Klaviyo fields are " + ", ".join(ATTRIBUTES) + ", location.<key> or properties.<name>",
    )


KLAVIYO = register(
    IntegrationType(
        name="klaviyo",
        description="Creates or updates Klaviyo profiles (profile import, or bulk import jobs "
        "that also add them to a list). Each profile import is answered on its own "
        "(a 400 fails that record with Klaviyo's detail); a 429 waits for "
        "Retry-After.",
        connection=(
            Param(
                "api_key",
                description="A private API key (pk_...) with profiles (and lists) write scope.",
                required=True,
                secret=True,
                example="${KLAVIYO_API_KEY}",
            ),
            _saas.base_url_param(DEFAULT_BASE_URL),
            Param(
                "revision",
                description="The API revision sent with every request.",
                default=REVISION,
            ),
            *_saas.TIMEOUT_PARAMS,
        ),
        settings=(
            Param(
                "list_id",
                description="Add the profiles to this list (bulk import jobs of up to "
                "options.batch_size profiles; set it up to 10000). Unset: one profile import "
                "a record, each answered on its own.",
                example="VRgFBd",
            ),
        ),
        actions=(
            Action(
                "upsert_profile",
                "Create the profile, or update the one with this email, phone_number or "
                "external_id. Custom properties: properties.<name>; location.<key>.",
                fields=(
                    Field("email", "email", "E-mail address."),
                    Field("phone_number", "e164", "Phone number (E.164)."),
                    Field("external_id", "string", "Your id of the profile."),
                    Field("first_name", "string", "First name."),
                    Field("last_name", "string", "Last name."),
                    Field("organization", "string", "Company or organisation."),
                    Field("locale", "string", "IETF BCP 47 locale (sv-SE)."),
                    Field("title", "string", "Job title."),
                    Field("image", "uri", "URL of a profile image."),
                    Field("location.city", "string", "City."),
                    Field("location.country", "string", "Country."),
                    Field("location.zip", "string", "Postal code."),
                ),
                open_fields=True,
            ),
        ),
        # Profile import allows 75 requests a second in bursts and 700 a minute steady.
        default_options={"batch_size": 1, "concurrency": 4, "rate_limit": 10},
        build=build,
        read=read,
        check=check,
    )
)
