"""Preview: a record run through a group's mapping, nothing sent and nothing stored.

For each integration: whether its ``when`` matched, whether it is enabled, the mapped fields or
the mapping error, and the request that would be sent, built by the type's own ``build`` (the
one delivery uses) with every secret redacted. ``gateway preview`` and ``POST
/admin/v1/preview`` both answer :func:`preview_group`'s document.

Redaction, applied to the built request: the values of the headers a builder marks as
credentials (``Authorization``, an API key header, a SigV4 session token), and of well-known
credential headers whoever set them, become ``***`` (an ``Authorization`` keeps its scheme:
``Bearer ***``); every value that came from a ``${...}``
reference (the ``secret_paths`` of the entry's connection and settings) is replaced by ``***``
wherever it appears in the URL, the headers and the body; when such a value is a URL template,
its literal parts are hidden in the URL and only the placeholder values show. OAuth2 tokens
are never fetched.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from gateway.ingest.validate import Limits, validate_data
from gateway.integrations.base import BuildErrors, OutboundRequest
from gateway.mapping.errors import MappingError
from gateway.mapping.loader import MappingRegistry
from gateway.mapping.model import CompiledIntegration, CompiledMapping
from gateway.mapping.secrets import REDACTED, Resolved

#: The delivery id a preview builds with (it shows as the Idempotency-Key and webhook-id).
PREVIEW_DELIVERY_ID = "dlv_preview"
#: Authorization schemes kept in front of a redacted credential.
_SCHEMES = ("Bearer", "Basic", "AWS4-HMAC-SHA256")
_PLACEHOLDER = re.compile(r"\{[A-Za-z0-9_]+\}")
#: Headers hidden whoever set them (e.g. a literal Authorization in settings.headers).
_CREDENTIAL_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "x-api-key",
        "api-key",
        "x-amz-security-token",
    }
)


def limits_of(settings: Any) -> Limits:
    """The per-record limits ingest applies, from the gateway's settings."""
    return Limits(
        max_attributes=settings.max_attributes,
        max_key_length=settings.max_key_length,
        max_value_length=settings.max_value_length,
        max_list_items=settings.max_list_items,
    )


def _secret_values(*blocks: Resolved) -> tuple[list[str], list[str]]:
    """Every value that came from a reference (with its percent-encoded forms), and, for such
    values that are URL templates, their literal parts between ``{field}`` placeholders (a
    template is filled before use, so the whole value never appears in the URL); each list
    longest first, so a secret holding another is replaced whole."""
    values: set[str] = set()
    fragments: set[str] = set()
    for block in blocks:
        for path in block.secret_paths:
            value: Any = block.value
            for key in path:
                value = value[key]
            if not isinstance(value, str) or not value:
                continue
            values.update((value, quote(value, safe=""), quote(value)))
            if _PLACEHOLDER.search(value):
                fragments.update(part for part in _PLACEHOLDER.split(value) if part)
            # A secret URL's path is a credential of its own (a Slack webhook's): a type may
            # send it to another host (connection.base_url: a proxy, a test server).
            parts = urlsplit(value)
            if parts.scheme in ("http", "https") and len(parts.path) > 1:
                fragments.add(parts.path + (f"?{parts.query}" if parts.query else ""))
    return sorted(values, key=len, reverse=True), sorted(fragments, key=len, reverse=True)


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


def _credential(value: str) -> str:
    scheme, _, rest = value.partition(" ")
    return f"{scheme} {REDACTED}" if scheme in _SCHEMES and rest else REDACTED


def redact_request(
    req: OutboundRequest, secrets: list[str], url_fragments: Sequence[str] = ()
) -> dict[str, Any]:
    """The request as a preview shows it: method, url, headers, body (parsed when it is JSON,
    else text), credentials and referenced secrets replaced by ``***``; ``url_fragments`` are
    hidden in the URL only (the literal parts of a URL template that came from a reference:
    its placeholder values stay visible)."""
    headers = {
        name: _credential(value)
        if name in req.secret_headers or name.lower() in _CREDENTIAL_HEADERS
        else _scrub(value, secrets)
        for name, value in req.headers.items()
    }
    text = _scrub(req.body.decode("utf-8", "replace"), secrets)
    body: Any = text
    content_type = next((v for k, v in req.headers.items() if k.lower() == "content-type"), "")
    if content_type.split(";")[0].strip() == "application/json":
        with contextlib.suppress(orjson.JSONDecodeError):
            body = orjson.loads(text)
    url = _scrub(_scrub(req.url, secrets), list(url_fragments))
    return {"method": req.method, "url": url, "headers": headers, "body": body}


def _preview_tokens(integration: Any) -> str:
    return REDACTED  # previews never fetch an OAuth2 token


def _entry(integ: CompiledIntegration, data: dict[str, Any], now: float) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": integ.name,
        "type": integ.type.name,
        "action": integ.action.name,
        "enabled": integ.enabled,
        "matched": integ.condition is None or integ.condition.matches(data),
    }
    if not (integ.enabled and entry["matched"]):
        return entry  # no delivery: nothing mapped, nothing built
    if integ.options.rollup is not None:
        # Nothing is sent per record: show its bucket, and the report of a bucket holding
        # only this record (what a real report maps and builds from).
        from gateway.delivery import rollup

        entry["rollup"], report = rollup.preview(data, integ.options.rollup, now)
        if report is None:
            return entry
        data = report
    try:
        fields = integ.map(data)
    except MappingError as exc:
        entry["error"] = exc.to_dict()
        return entry
    entry["fields"] = fields
    try:
        requests = integ.type.build(
            integ, [(PREVIEW_DELIVERY_ID, fields)], now=now, tokens=_preview_tokens
        )
    except BuildErrors as exc:
        entry["error"] = exc.errors[PREVIEW_DELIVERY_ID].to_dict()
        return entry
    except ValueError as exc:  # the entry's connection cannot make a request (e.g. its auth)
        entry["error"] = MappingError(str(exc), integration=integ.name).to_dict()
        return entry
    secrets, fragments = _secret_values(integ.connection, integ.settings)
    shown = [redact_request(r, secrets, fragments) for r in requests]
    # One record makes one request for every type so far; a type that needs several (e.g. a
    # lookup then a write) shows them all.
    entry["request" if len(shown) == 1 else "requests"] = shown[0] if len(shown) == 1 else shown
    return entry


def preview(
    mapping: CompiledMapping,
    data: Any,
    *,
    now: float | None = None,
    limits: Limits | None = None,
) -> dict[str, Any]:
    """The preview document of ``data`` through ``mapping``.

    ``data`` is checked as ingest checks it (``data_errors``); a record ingest would refuse
    gets no integrations. ``now`` (epoch seconds) pins signing times.
    """
    problems = validate_data(data, limits or Limits())
    doc: dict[str, Any] = {
        "group_key": mapping.group_key,
        "version": mapping.version,
        "data_errors": problems,
        "integrations": [],
    }
    if not problems:
        at = time.time() if now is None else now
        doc["integrations"] = [_entry(i, data, at) for i in mapping.integrations]
    # Exactly what JSON carries: the CLI and the admin API print the same document.
    plain: dict[str, Any] = orjson.loads(orjson.dumps(doc, default=str))
    return plain


def preview_group(
    registry: MappingRegistry,
    group_key: str,
    data: Any,
    *,
    now: float | None = None,
    limits: Limits | None = None,
) -> dict[str, Any] | None:
    """The preview through the group's live mapping, with ``problems``: the errors of the
    group's file when its latest version failed to load (the preview then shows the version
    still live). None when the group has no live mapping."""
    mapping = registry.get(group_key)
    if mapping is None:
        return None
    doc = preview(mapping, data, now=now, limits=limits)
    doc["problems"] = [p.to_dict() for p in registry.problems_of(group_key)]
    return doc
