"""Keeping an integration's secrets out of error texts, and what producers see of an error.

An integration's answer is untrusted text: a receiver that echoes the request puts the
credentials it was sent into the error the gateway stores (``HTTP 400: {"headers": {"X-API-Key":
...}}``). :func:`scrub` replaces every secret value an integration's entry holds, as written and
in the encodings an echo typically uses, with ``***``; the delivery engine calls it on each
attempt's error before the error is stored, logged or counted.

Producers (``GET /v1/records/{id}``) see no error text at all, only :func:`for_producer`'s
code and short reason; the operator's admin API keeps the scrubbed excerpt.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus

import orjson

REDACTED = "***"
#: Shorter values are not scrubbed: they would garble every error (a 1-character password
#: would star out each of its occurrences) and protect nothing a guess would not find.
MIN_SECRET_CHARS = 4
_WORDS = re.compile(r"[\s/]+")
_WORD_CHARS = 8


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, list) and isinstance(key, int) and 0 <= key < len(value):
            value = value[key]
        else:
            return None
    return value


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret_values(integration: Any, tokens: Iterable[str] = ()) -> frozenset[str]:
    """Every secret an integration entry holds, with the forms it may be echoed in.

    The values of ``${ENV}`` / ``${file:}`` references (connection and settings), the
    parameters its type declares secret, the basic credentials as their ``Authorization``
    header carries them (base64 of ``user:password``; the OAuth2 client's likewise), and
    ``tokens`` (OAuth2 access tokens it was sent with). Each also URL-encoded, form-encoded,
    JSON-escaped and base64-encoded.
    """
    raw: set[str] = set(tokens)
    for block in (integration.connection, integration.settings):
        for path in block.secret_paths:
            raw.update(_strings(_at(block.value, tuple(path))))
    conn = integration.connection.value if isinstance(integration.connection.value, dict) else {}
    for param in integration.type.connection:
        value = conn.get(param.name)
        if param.secret:
            raw.update(_strings(value))
        if param.secret_keys and isinstance(value, dict):
            for key in param.secret_keys:
                raw.update(_strings(value.get(key)))
    # A reference inside a longer value ("Bearer ${TOKEN}", a URL path holding a token) is
    # kept only as the whole resolved string; its longer words stand in for the secret part.
    raw.update(
        part for value in list(raw) for part in _WORDS.split(value) if len(part) >= _WORD_CHARS
    )
    auth = conn.get("auth")
    if isinstance(auth, dict):
        if auth.get("username") is not None:
            raw.add(f"{auth['username']}:{auth.get('password') or ''}")
        if auth.get("client_id") is not None and auth.get("client_secret") is not None:
            raw.add(f"{auth['client_id']}:{auth['client_secret']}")
    return variants(raw)


def variants(values: Iterable[str]) -> frozenset[str]:
    """Each value of at least :data:`MIN_SECRET_CHARS` characters as written, URL-encoded,
    form-encoded, JSON-escaped and base64-encoded: the forms an echo shows it in."""
    out: set[str] = set()
    for value in values:
        if len(value) < MIN_SECRET_CHARS:
            continue
        out.update(
            (
                value,
                quote(value, safe=""),
                quote_plus(value, safe=""),
                orjson.dumps(value).decode()[1:-1],
                _b64(value),
            )
        )
    return frozenset(out)


def scrub(text: str | None, secrets: Iterable[str]) -> str | None:
    """``text`` with every occurrence of each secret replaced by ``***`` (longest first, so a
    secret inside another is not left half-visible)."""
    if not text:
        return text
    for value in sorted(secrets, key=len, reverse=True):
        if value in text:
            text = text.replace(value, REDACTED)
    return text


def secrets_of_lane(engine: Any, lane: Any) -> frozenset[str]:
    """:func:`secret_values` of the entry a delivery engine's lane sends to, as the engine's
    mapping registry has it now, with the OAuth2 tokens its cache handed out for it."""
    mapping = engine.mappings.get(lane.group_key)
    integration = mapping.integration(lane.integration) if mapping is not None else None
    if integration is None:
        return frozenset()
    # Every attempt asks; the entry's own secrets change only with a new mapping version.
    cached = _by_entry.get(id(integration))
    if cached is None or cached[0] is not integration:
        if len(_by_entry) > 1000:
            _by_entry.clear()
        cached = _by_entry[id(integration)] = (integration, secret_values(integration))
    tokens = engine.tokens.known(integration)
    return cached[1] | variants(tokens) if tokens else cached[1]


_by_entry: dict[int, tuple[Any, frozenset[str]]] = {}


# -- what producers see ------------------------------------------------------------------

_GAVE_UP = re.compile(r"^gave up after (\d+) attempts: ")
#: (prefix of the recorded error, code, short reason) in order; the first match wins.
_KINDS: tuple[tuple[str, str, str], ...] = (
    ("HTTP ", "HTTP_STATUS", "the integration answered with an error status"),
    ("cannot read the answer", "BAD_ANSWER", "the integration's answer could not be read"),
    ("destination refused", "DESTINATION_REFUSED", "the destination policy refused the address"),
    ("timed out", "TIMEOUT", "the integration did not answer in time"),
    ("cannot connect", "CONNECTION_FAILED", "the integration could not be reached"),
    ("connection failed", "CONNECTION_FAILED", "the integration could not be reached"),
    ("the server closed", "CONNECTION_FAILED", "the integration closed the connection"),
    ("the answer was cut off", "CONNECTION_FAILED", "the integration's answer was cut off"),
    ("mapping error", "MAPPING_ERROR", "the record could not be mapped for this integration"),
    ("OAuth2", "CREDENTIALS_ERROR", "the gateway could not get credentials for the integration"),
    ("no OAuth2", "CREDENTIALS_ERROR", "the gateway could not get credentials for the integration"),
    ("connection.auth", "CONFIGURATION_ERROR", "the integration is misconfigured"),
    ("cannot build the request", "CONFIGURATION_ERROR", "the integration is misconfigured"),
    ("integration type", "CONFIGURATION_ERROR", "the integration is misconfigured"),
    ("integration ", "INTEGRATION_UNAVAILABLE", "the integration is not live in the mapping"),
    ("group ", "INTEGRATION_UNAVAILABLE", "the group has no live mapping"),
    ("internal error", "INTERNAL_ERROR", "the gateway failed while sending"),
)

#: Every code producers may see (the OpenAPI document's ``last_error_code``).
CODES: tuple[str, ...] = (*dict.fromkeys(code for _, code, _ in _KINDS), "DELIVERY_FAILED")


def producer_error(error: str | None, status: int | None) -> tuple[str | None, str | None]:
    """(code, short reason) for a recorded error: never the error's text, which may quote the
    integration's answer. ``(None, None)`` when there was no error."""
    if not error:
        return None, None
    prefix = ""
    m = _GAVE_UP.match(error)
    if m:
        prefix = f"gave up after {m.group(1)} attempts: "
        error = error[m.end() :]
    for start, code, reason in _KINDS:
        if error.startswith(start):
            if code == "HTTP_STATUS" and status is not None:
                reason = f"the integration answered HTTP {status}"
            return code, prefix + reason
    return "DELIVERY_FAILED", prefix + "the integration refused or failed the delivery"


def for_producer(view: dict[str, Any]) -> dict[str, Any]:
    """A delivery's API view (``gateway.ingest.api.delivery_view``) as producers see it:
    ``last_error`` is the short reason and ``last_error_code`` its code."""
    code, reason = producer_error(view.get("last_error"), view.get("last_status"))
    out = dict(view)
    out["last_error"] = reason
    out["last_error_code"] = code
    return out
