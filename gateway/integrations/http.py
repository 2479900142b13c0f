"""The ``http`` type: any HTTP endpoint, JSON body of the mapped fields."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from typing import Any
from urllib.parse import quote

import orjson

from gateway.integrations.base import Action, IntegrationType, OutboundRequest, Param, register
from gateway.mapping.secrets import REDACTED

_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_]+)\}")


def _url(template: str, fields: dict[str, Any]) -> str:
    """The URL with ``{field}`` placeholders filled from mapped fields, each URL-encoded."""

    def fill(m: re.Match[str]) -> str:
        value = fields.get(m.group(1), "")
        return quote("" if value is None else str(value), safe="")

    return _PLACEHOLDER.sub(fill, template)


def _auth_headers(
    auth: dict[str, Any],
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes,
    message_id: str,
    redact: bool,
) -> dict[str, str]:
    """Headers an auth type adds. ``redact`` hides every credential-bearing value."""
    kind = auth.get("type", "none")
    if kind == "none":
        return {}
    if kind == "bearer":
        return {"Authorization": f"Bearer {REDACTED if redact else auth['token']}"}
    if kind == "basic":
        raw = f"{auth.get('username', '')}:{auth.get('password', '')}".encode()
        return {
            "Authorization": "Basic " + (REDACTED if redact else base64.b64encode(raw).decode())
        }
    if kind == "api_key":
        return {str(auth.get("header", "X-API-Key")): REDACTED if redact else str(auth["value"])}
    if kind == "oauth2_client_credentials":
        # The token comes from the token endpoint at send time (delivery engine); a preview
        # never fetches one.
        return {"Authorization": f"Bearer {REDACTED}"}
    if kind == "standard_webhooks":
        # Standard Webhooks: HMAC-SHA256 over "{id}.{timestamp}.{body}" with the secret's
        # base64 part (after "whsec_"), sent as "v1,<base64 signature>".
        ts = str(int(time.time()))
        if redact:
            signature = REDACTED
        else:
            secret = str(auth["secret"]).removeprefix("whsec_")
            mac = hmac.new(
                base64.b64decode(secret), f"{message_id}.{ts}.".encode() + body, hashlib.sha256
            )
            signature = "v1," + base64.b64encode(mac.digest()).decode()
        return {"webhook-id": message_id, "webhook-timestamp": ts, "webhook-signature": signature}
    if kind == "sigv4":
        if redact:
            return {"Authorization": f"AWS4-HMAC-SHA256 {REDACTED}", "X-Amz-Date": REDACTED}
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        req = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
        creds = Credentials(
            auth["access_key_id"], auth["secret_access_key"], auth.get("session_token")
        )
        SigV4Auth(
            creds, auth.get("service", "execute-api"), auth.get("region", "us-east-1")
        ).add_auth(req)
        return {k: v for k, v in req.headers.items() if k not in headers}
    raise ValueError(f"unknown auth type {kind!r}")


def build(
    integration: Any, batch: list[tuple[str, dict[str, Any]]], *, redact: bool = False
) -> list[OutboundRequest]:
    """Requests for a batch: one per record (``settings.body: object``) or one JSON array."""
    conn = integration.connection.redacted() if redact else integration.connection.value
    settings = integration.settings.redacted() if redact else integration.settings.value
    method = str(conn.get("method", "POST"))
    auth = conn.get("auth") or {}
    extra = {str(k): str(v) for k, v in (settings.get("headers") or {}).items()}
    groups = [batch] if settings.get("body", "object") == "array" else [[item] for item in batch]
    out = []
    for group in groups:
        ids = [d for d, _ in group]
        # The first record's fields fill URL placeholders of an array request.
        url = _url(str(conn["url"]), group[0][1])
        array = settings.get("body", "object") == "array"
        payload: Any = [f for _, f in group] if array else group[0][1]
        body = orjson.dumps(payload)
        # A stable key per request: the delivery id, or a digest of a batch's ids.
        key = (
            ids[0]
            if len(ids) == 1
            else "batch_" + hashlib.sha256(",".join(ids).encode()).hexdigest()[:32]
        )
        headers = {"Content-Type": "application/json", "Idempotency-Key": key, **extra}
        headers.update(_auth_headers(auth, method, url, headers, body, key, redact))
        out.append(OutboundRequest(method, url, headers, body, ids))
    return out


HTTP = register(
    IntegrationType(
        name="http",
        description="Sends mapped records to any HTTP endpoint as JSON (webhooks, own APIs).",
        connection=(
            Param(
                "url",
                "url",
                "Endpoint URL; may use {field} placeholders filled from mapped fields.",
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
                "Authentication: {type: none|bearer|basic|api_key|oauth2_client_credentials|"
                "standard_webhooks|sigv4, ...its parameters}.",
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
    )
)
