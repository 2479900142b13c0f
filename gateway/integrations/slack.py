"""The ``slack`` type: a message a record, posted to a Slack incoming webhook.

``POST <webhook URL>`` with ``{"text": ..., "blocks": [...]}``. The text comes from
``settings.text``, a template whose ``{field}`` placeholders are filled from mapped fields (or
from a mapped ``text`` field); ``settings.blocks`` is optional Block Kit JSON whose strings are
templates likewise. Filled-in values are escaped as Slack's markup asks (``&``, ``<``, ``>``),
so a record cannot ping ``<!channel>`` or forge a link; the template's own markup stays.

The webhook URL is the credential (it must come from ``${ENV}`` or ``${file:...}``); previews
hide it. Slack answers in plain text: ``ok``, or an error word (``invalid_payload``,
``channel_is_archived``, ``no_service``...), which becomes the delivery's error.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

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

DEFAULT_BASE_URL = "https://hooks.slack.com"
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z0-9_]+)\}")
#: Slack's limits: 40,000 characters of text; 50 blocks a message.
MAX_TEXT = 40_000
MAX_BLOCKS = 50


def escape(text: str) -> str:
    """Text safe inside Slack markup: ``&``, ``<`` and ``>`` as entities."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def fill(template: str, fields: dict[str, Any]) -> str:
    """The template with ``{field}`` replaced by the escaped mapped value (lists joined with
    ``, ``; no value: empty) and ``{{``/``}}`` by braces."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "{{":
            return "{"
        if m.group(0) == "}}":
            return "}"
        value = fields.get(m.group(1))
        if value is None:
            return ""
        if isinstance(value, list):
            return escape(", ".join(_saas.text_value(v) for v in value))
        return escape(_saas.text_value(value))

    return _PLACEHOLDER.sub(one, template)


def placeholders(template: str) -> list[str]:
    """The field names a template uses."""
    return [m.group(1) for m in _PLACEHOLDER.finditer(template) if m.group(1)]


def _fill_blocks(value: Any, fields: dict[str, Any]) -> Any:
    if isinstance(value, str):
        return fill(value, fields)
    if isinstance(value, list):
        return [_fill_blocks(v, fields) for v in value]
    if isinstance(value, dict):
        return {k: _fill_blocks(v, fields) for k, v in value.items()}
    return value


def _url(integration: Any) -> str:
    conn = integration.connection.value
    hook = str(conn["webhook_url"])
    base = conn.get("base_url")
    if not base:
        return hook
    parts = urlsplit(hook)
    return str(base).rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")


def payload(settings: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """The webhook's JSON body for one record."""
    template = settings.get("text")
    if template:
        text = fill(str(template), fields)
    else:
        text = escape(_saas.text_value(fields.get("text") or ""))
    blocks = settings.get("blocks")
    if not text.strip() and not blocks:
        raise MappingError("the Slack message would have no text", field="text")
    if len(text) > MAX_TEXT:
        raise MappingError(
            f"the Slack message text is {len(text)} characters; Slack takes at most {MAX_TEXT}",
            field="text",
        )
    body: dict[str, Any] = {"text": text}
    if blocks:
        body["blocks"] = _fill_blocks(blocks, fields)
    return body


def build(
    integration: Any,
    batch: list[tuple[str, dict[str, Any]]],
    *,
    now: float | None = None,
    tokens: TokenProvider | None = None,
) -> list[OutboundRequest]:
    """One POST a record (incoming webhooks take one message a request)."""
    settings = integration.settings.value
    url = _url(integration)
    out = []
    failed: dict[str, Any] = {}
    for delivery_id, fields in batch:
        try:
            body = _saas.dumps(payload(settings, fields))
        except MappingError as exc:
            failed[delivery_id] = exc
            continue
        out.append(
            OutboundRequest("POST", url, {"Content-Type": "application/json"}, body, [delivery_id])
        )
    _saas.raise_failed(failed, integration)
    return out


def read(request: OutboundRequest, response: Response) -> list[Outcome]:
    """``ok`` delivered; Slack's error word as the error: 429 and 5xx retry (after Slack's
    Retry-After), every other refusal (invalid_payload, channel_is_archived, no_service,
    action_prohibited) is permanent."""
    if 200 <= response.status < 300:
        return _saas.delivered(request, response.status)
    # A 429's Retry-After is the engine's to read, as for every type.
    return _saas.whole_request(request, response, _saas.body_text(response))


def check(
    connection: dict[str, Any], settings: dict[str, Any], fields: list[str]
) -> list[tuple[str, str]]:
    """When the mapping loads: a text (template or field), placeholders that are mapped, at
    most 50 blocks."""
    out = []
    template = settings.get("text")
    if not template and "text" not in fields and not settings.get("blocks"):
        out.append(("settings.text", "required (or map a field named text, or give blocks)"))
    strings: list[str] = [str(template)] if template else []

    def collect(v: Any) -> None:
        if isinstance(v, str):
            strings.append(v)
        elif isinstance(v, list):
            for x in v:
                collect(x)
        elif isinstance(v, dict):
            for x in v.values():
                collect(x)

    blocks = settings.get("blocks")
    if blocks is not None:
        if not isinstance(blocks, list):
            out.append(("settings.blocks", "must be a list of Block Kit blocks"))
        elif len(blocks) > MAX_BLOCKS:
            out.append(("settings.blocks", f"Slack takes at most {MAX_BLOCKS} blocks"))
        collect(blocks)
    for s in strings:
        for name in placeholders(s):
            if name not in fields:
                where = "settings.text" if s == template else "settings.blocks"
                out.append((where, f"placeholder {{{name}}} is not a mapped field"))
    return out


SLACK = register(
    IntegrationType(
        name="slack",
        description="Posts a message a record to a Slack channel through an incoming webhook "
        "(text from a template of mapped fields, optional Block Kit blocks). Record "
        "values are escaped for Slack's markup; Slack's error word (invalid_payload, "
        "channel_is_archived, no_service) is the delivery's error; 429 waits for "
        "Retry-After.",
        connection=(
            Param(
                "webhook_url",
                "url",
                "The incoming webhook's URL (https://hooks.slack.com/services/...): it is the "
                "credential.",
                required=True,
                secret=True,
                example="${SLACK_WEBHOOK_URL}",
            ),
            Param(
                "base_url",
                "url",
                "Send to this scheme and host instead of the webhook URL's own (a proxy, "
                f"tests); the URL's path is kept. Unset: the webhook URL as it is "
                f"({DEFAULT_BASE_URL}).",
            ),
            *_saas.TIMEOUT_PARAMS,
        ),
        actions=(
            Action(
                "message",
                "Post one message. Any mapped field can be a {placeholder} of the text or "
                "blocks; values are escaped for Slack's markup.",
                settings=(
                    Param(
                        "text",
                        description="The message: Slack mrkdwn with {field} placeholders "
                        "({{ and }} for braces). Unset: the mapped field text.",
                        example="Ny kund: *{namn}* ({epost})",
                    ),
                    Param(
                        "blocks",
                        "list",
                        "Block Kit blocks (at most 50); their strings take {field} "
                        "placeholders. The text is then the notification's fallback.",
                    ),
                ),
                fields=(Field("text", "string", "The message text, when settings.text is unset."),),
                open_fields=True,
            ),
        ),
        # Slack allows about one message a second a webhook (short bursts tolerated).
        default_options={"batch_size": 1, "concurrency": 1, "rate_limit": 1},
        build=build,
        read=read,
        check=check,
    )
)
