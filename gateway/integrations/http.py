"""The ``http`` type: any HTTP endpoint, JSON body of the mapped fields.

``build`` makes the requests: the URL from ``connection.url`` with ``{field}`` placeholders
filled from the record's mapped fields (each value percent-encoded), ``connection.method``,
``settings.headers``, a JSON body (``settings.body``: ``object``, one record a request, or
``array``, one request a batch), an ``Idempotency-Key`` from the delivery id, and the headers of
``connection.auth``. Sending, retries and reading the answers belong to the delivery engine.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hashlib
import hmac
import re
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import orjson

from gateway.integrations.base import (
    Action,
    BuildErrors,
    IntegrationType,
    OutboundRequest,
    Param,
    TokenProvider,
    register,
)
from gateway.mapping.errors import MappingError

if TYPE_CHECKING:
    from gateway.mapping.model import CompiledIntegration

_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_]+)\}")
AUTH_TYPES = (
    "none",
    "bearer",
    "basic",
    "api_key",
    "oauth2_client_credentials",
    "standard_webhooks",
    "sigv4",
)


_AUTHORITY = re.compile(r"^(?P<scheme>[^:/?#]*):(?://(?P<authority>[^/?#]*))?")
_REFERENCE = re.compile(r"\$\{[^}]*\}")


@functools.lru_cache(maxsize=1024)  # build asks for every request of an entry's template
def url_problem(template: str, allow_host_placeholders: bool = False) -> str | None:
    """What is wrong with an ``http`` URL template, or None: it must be ``http://`` or
    ``https://`` with a host, and ``{field}`` placeholders may fill its scheme, host or port
    only when the entry opts in (else a record would choose where the credentials go).

    An unresolved ``${...}`` reference stands for operator-given text; a template that starts
    with one is checked once resolved (when the delivery is built)."""
    if template.startswith("${"):
        return None
    text = _REFERENCE.sub("ref", template)
    m = _AUTHORITY.match(text)
    head = m.group(0) if m else text.split("/", 1)[0]
    if placeholders(head) and not allow_host_placeholders:
        return (
            "{field} placeholders may not fill the scheme, host or port; set "
            "connection.allow_host_placeholders: true to let records choose the host (the "
            "destination policy still applies)"
        )
    scheme = m.group("scheme").lower() if m else ""
    if scheme and not placeholders(scheme) and scheme not in ("http", "https"):
        return f"must be an http:// or https:// URL, not {scheme}:"
    if m is None or not m.group("authority"):
        return "must be an http:// or https:// URL with a host"
    return None


def _filled_url_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "the URL filled from the record is not an http:// or https:// URL with a host"
    return None


def placeholders(template: str) -> list[str]:
    """The field names a URL template uses, in order."""
    return _PLACEHOLDER.findall(template)


def _url_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(_url_value(v) for v in value)
    return str(value)


def fill_url(template: str, fields: dict[str, Any]) -> str:
    """The URL with each ``{field}`` replaced by the mapped value, percent-encoded as one
    segment (``/``, ``?``, ``&``, ``#``, spaces and non-ASCII included); raises
    :class:`MappingError` when a placeholder's field has no value (never a URL with a hole)."""

    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        value = fields.get(name)
        if value is None or value == "" or value == []:
            raise MappingError(
                f"the URL placeholder {{{name}}} needs a value and the field has none",
                field=name,
            )
        return quote(_url_value(value), safe="")

    return _PLACEHOLDER.sub(fill, template)


def idempotency_key(delivery_ids: list[str]) -> str:
    """One delivery: its id. A batch: ``batch_`` and a digest of its ids, in order (the same
    batch retried gets the same key; a batch of other records another)."""
    if len(delivery_ids) == 1:
        return delivery_ids[0]
    return "batch_" + hashlib.sha256(",".join(delivery_ids).encode()).hexdigest()[:32]


def standard_webhooks_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks ``webhook-signature`` value: ``v1,`` and the base64 HMAC-SHA256
    of ``{msg_id}.{timestamp}.{body}``, keyed with the base64-decoded part of the secret after
    its ``whsec_`` prefix (https://www.standardwebhooks.com, "Signature scheme")."""
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except binascii.Error:
        raise ValueError(
            "connection.auth.secret: a Standard Webhooks secret is whsec_ and base64"
        ) from None
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def _need(auth: dict[str, Any], key: str) -> str:
    value = auth.get(key)
    if value is None or value == "":
        raise ValueError(f"connection.auth.{key} is required for auth type {auth.get('type')}")
    return str(value)


@functools.cache
def _pinned_sigv4() -> type:
    """botocore's SigV4Auth signing at a given time (botocore reads its clock in add_auth)."""
    from botocore.auth import SigV4Auth

    class PinnedSigV4Auth(SigV4Auth):  # type: ignore[misc]  # botocore ships no types
        when = ""  # X-Amz-Date form, e.g. 20261122T131200Z

        def _modify_request_before_signing(self, request: Any) -> None:
            request.context["timestamp"] = self.when
            super()._modify_request_before_signing(request)

    return PinnedSigV4Auth


def _sigv4_headers(
    auth: dict[str, Any], method: str, url: str, headers: dict[str, str], body: bytes, now: float
) -> dict[str, str]:
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    when = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    creds = Credentials(
        _need(auth, "access_key_id"),
        _need(auth, "secret_access_key"),
        auth.get("session_token") or None,
    )
    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
    signer = _pinned_sigv4()(
        creds, str(auth.get("service", "execute-api")), str(auth.get("region", "us-east-1"))
    )
    signer.when = when
    signer.add_auth(req)
    return {k: v for k, v in req.headers.items() if k not in headers}


def _auth_headers(
    integration: CompiledIntegration,
    auth: dict[str, Any],
    request: tuple[str, str, dict[str, str], bytes],
    message_id: str,
    now: float,
    tokens: TokenProvider | None,
) -> tuple[dict[str, str], frozenset[str]]:
    """The headers ``connection.auth`` adds, and which of them are credentials."""
    method, url, headers, body = request
    kind = auth.get("type", "none")
    if kind == "none":
        return {}, frozenset()
    if kind == "bearer":
        return {"Authorization": f"Bearer {_need(auth, 'token')}"}, frozenset({"Authorization"})
    if kind == "basic":
        raw = f"{_need(auth, 'username')}:{auth.get('password', '')}".encode()
        value = "Basic " + base64.b64encode(raw).decode()
        return {"Authorization": value}, frozenset({"Authorization"})
    if kind == "api_key":
        name = str(auth.get("header") or "X-API-Key")
        return {name: _need(auth, "value")}, frozenset({name})
    if kind == "oauth2_client_credentials":
        # The delivery engine fetches the token from auth.token_url and caches it; build only
        # reads it through the provider, so building stays free of I/O.
        if tokens is None:
            raise ValueError("auth type oauth2_client_credentials needs a token provider")
        token = tokens(integration)
        return {"Authorization": f"Bearer {token}"}, frozenset({"Authorization"})
    if kind == "standard_webhooks":
        ts = int(now)
        signature = standard_webhooks_signature(_need(auth, "secret"), message_id, ts, body)
        # webhook-signature is not a secret (an HMAC of this very request, worthless for any
        # other), so it is not listed as one: a preview shows it for comparison at a receiver.
        out = {
            "webhook-id": message_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": signature,
        }
        return out, frozenset()
    if kind == "sigv4":
        out = _sigv4_headers(auth, method, url, headers, body, now)
        return out, frozenset(
            k for k in out if k.lower() in ("authorization", "x-amz-security-token")
        )
    raise ValueError(
        f"connection.auth.type: unknown auth type {kind!r}; known: {', '.join(AUTH_TYPES)}"
    )


def _merge(base: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
    """``base`` updated with ``extra``; header names compare case-insensitively."""
    out = dict(base)
    for name, value in extra.items():
        for existing in [k for k in out if k.lower() == name.lower()]:
            del out[existing]
        out[name] = value
    return out


def build(
    integration: CompiledIntegration,
    batch: list[tuple[str, dict[str, Any]]],
    *,
    now: float | None = None,
    tokens: TokenProvider | None = None,
) -> list[OutboundRequest]:
    """The requests for a batch of mapped records (see the module docstring).

    ``settings.body: array`` puts the batch in one JSON array per distinct URL (records whose
    placeholders give different URLs go to different requests), in batch order.
    """
    conn = integration.connection.value
    settings = integration.settings.value
    method = str(conn.get("method") or "POST").upper()
    auth = conn.get("auth") or {"type": "none"}
    extra = {str(k): str(v) for k, v in (settings.get("headers") or {}).items()}
    array = settings.get("body", "object") == "array"
    when = time.time() if now is None else now

    template = str(conn["url"])
    opted_in = conn.get("allow_host_placeholders") is True
    problem = url_problem(template, opted_in)
    if problem is not None:  # a resolved ${...} may have brought it; refused for every record
        raise ValueError(f"connection.url {problem}")
    planned: list[tuple[str, list[tuple[str, dict[str, Any]]]]] = []  # (url, its records)
    by_url: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    failed: dict[str, Any] = {}
    for delivery_id, fields in batch:
        try:
            url = fill_url(template, fields)
        except MappingError as exc:
            failed[delivery_id] = exc.with_context(
                source="connection.url", integration=integration.name
            )
            continue
        if opted_in and (problem := _filled_url_problem(url)) is not None:
            failed[delivery_id] = MappingError(problem).with_context(
                source="connection.url", integration=integration.name
            )
            continue
        if not array:
            planned.append((url, [(delivery_id, fields)]))
            continue
        if url not in by_url:
            by_url[url] = []
            planned.append((url, by_url[url]))
        by_url[url].append((delivery_id, fields))
    if failed:
        raise BuildErrors(failed)

    out = []
    for url, group in planned:
        ids = [d for d, _ in group]
        body = orjson.dumps([f for _, f in group] if array else group[0][1])
        message_id = idempotency_key(ids)
        headers = _merge({"Content-Type": "application/json", "Idempotency-Key": message_id}, extra)
        added, secret = _auth_headers(
            integration, auth, (method, url, headers, body), message_id, when, tokens
        )
        headers = _merge(headers, added)
        out.append(OutboundRequest(method, url, headers, body, ids, secret))
    return out


#: What each auth type needs in ``connection.auth``.
AUTH_NEEDS = {
    "none": (),
    "bearer": ("token",),
    "basic": ("username",),
    "api_key": ("value",),
    "oauth2_client_credentials": ("token_url", "client_id", "client_secret"),
    "standard_webhooks": ("secret",),
    "sigv4": ("access_key_id", "secret_access_key"),
}


def check(
    connection: dict[str, Any], settings: dict[str, Any], fields: list[str]
) -> list[tuple[str, str]]:
    """When the mapping loads: a known auth type with what it needs, and URL placeholders
    that name mapped fields."""
    out = []
    auth = connection.get("auth") or {}
    if isinstance(auth, dict):
        kind = auth.get("type", "none")
        if kind not in AUTH_NEEDS:
            out.append(
                (
                    "connection.auth.type",
                    f"unknown auth type {kind!r}; known: " + ", ".join(AUTH_TYPES),
                )
            )
        else:
            for key in AUTH_NEEDS[kind]:
                if auth.get(key) in (None, ""):
                    out.append((f"connection.auth.{key}", f"required for auth type {kind}"))
    url = str(connection.get("url") or "")
    problem = url_problem(url, connection.get("allow_host_placeholders") is True) if url else None
    if problem is not None:
        out.append(("connection.url", problem))
    # As written, ${ENV} references are still in the URL; their braces are not placeholders.
    for name in placeholders(_REFERENCE.sub("", url)):
        if name not in fields:
            out.append(("connection.url", f"placeholder {{{name}}} is not a mapped field"))
    return out


HTTP = register(
    IntegrationType(
        name="http",
        description="Sends mapped records to any HTTP endpoint as JSON (webhooks, own APIs).",
        connection=(
            Param(
                "url",
                "url",
                "Endpoint URL; {field} placeholders are filled from mapped fields, each "
                "value percent-encoded (a placeholder without a value fails that record).",
                required=True,
                example="https://hooks.example.com/signup",
            ),
            Param(
                "method",
                description="HTTP method.",
                default="POST",
                choices=("POST", "PUT", "PATCH"),
            ),
            Param(
                "auth",
                "object",
                "Authentication, {type: ..., its parameters}: none; bearer (token); basic "
                "(username, password); api_key (header, default X-API-Key; value); "
                "oauth2_client_credentials (token_url, client_id, client_secret, scope); "
                "standard_webhooks (secret: whsec_...; sends webhook-id, webhook-timestamp, "
                "webhook-signature); sigv4 (access_key_id, secret_access_key, session_token, "
                "region, service: execute-api or lambda).",
                example={"type": "bearer", "token": "${WEBHOOK_TOKEN}"},
                secret_keys=(
                    "token",
                    "password",
                    "value",
                    "secret",
                    "client_secret",
                    "secret_access_key",
                    "session_token",
                ),
            ),
            Param("connect_timeout", "number", "Seconds to connect.", default=5),
            Param("read_timeout", "number", "Seconds to wait for the answer.", default=30),
            Param(
                "allow_host_placeholders",
                "boolean",
                "Let {field} placeholders fill the URL's scheme, host or port: records then "
                "choose where the request and its credentials go (the destination policy "
                "still applies; see docs/security.md).",
                default=False,
            ),
            Param(
                "insecure_skip_tls_verify",
                "boolean",
                "Turn off TLS certificate checks (logged as a warning; for tests only).",
                default=False,
            ),
        ),
        settings=(
            Param("headers", "object", "Extra request headers.", default={}),
            Param(
                "body",
                description="object: one record per request, the JSON object of mapped fields; "
                "array: a JSON array of records per batch.",
                default="object",
                choices=("object", "array"),
            ),
        ),
        actions=(Action("send", "Send the mapped fields as a JSON body.", open_fields=True),),
        default_options={"batch_size": 1, "concurrency": 8},
        build=build,
        check=check,
    )
)
