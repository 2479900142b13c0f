"""Field types: coercing a mapped value to what an integration field declares.

Only safe conversions happen; anything that would need a guess is a MappingError naming the
field, the source and the value (a permanent failure of that delivery, never a retry).

* Every type: null stays null. For every type but ``string`` and ``any``, empty or
  whitespace-only text is null too (a form's unfilled input is "no value", not a bad one).
* ``any``: unchanged.
* ``string``: text as is; numbers and booleans written as text (``42``, ``4.5``, ``true``);
  a list is an error (use ``join``).
* ``integer``: whole numbers; ``4.0`` (a number) becomes 4; text must be a plain integer
  (``"42"``, ``" -7 "``): ``"4.2"`` and ``"4.0"`` are errors; booleans are errors.
* ``number``: numbers, or decimal text (``"4.2"``, ``"-1e3"``; integer text stays an integer);
  no ``nan``/``inf``, no decimal comma; booleans are errors.
* ``boolean``: booleans; the numbers 1 and 0; the words of ``to_bool`` (true/false, yes/no,
  y/n, t/f, on/off, 1/0, ja/nej, any case).
* ``datetime``: ISO 8601 text (a date alone means midnight; no offset means UTC), written per
  the field's format: ``iso8601`` (default), ``epoch_s``, ``epoch_ms`` or a strftime format.
  Numbers are errors: say which epoch with the ``date`` transform.
* ``email``: one ``@``, a non-empty local part without spaces, a domain of at least two
  dot-separated labels (letters, digits, hyphens; Unicode letters allowed); the domain is
  lower-cased, the local part kept as is. Quoted local parts and IP-address domains are refused.
* ``e164``: a valid phone number, written in E.164; the field's format, if any, is the
  default region for numbers written without ``+``.
* ``uri``: an absolute ``http``/``https`` URL with a host and no spaces.
* ``list_of_strings``: a list, each item written as text (null items dropped); a single value
  becomes a one-item list.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from datetime import UTC
from typing import Any, get_args
from urllib.parse import urlsplit

from gateway.integrations.base import FieldType
from gateway.mapping.errors import MappingError
from gateway.mapping.sources import MISSING
from gateway.mapping.transforms import (
    bool_of_text,
    check_region,
    check_strftime,
    format_datetime,
    kind_of,
    parse_float_text,
    parse_int_text,
    parse_iso8601,
    phone_to_e164,
    text_of,
)

# One list of field types: the declarations' own.
FIELD_TYPES: tuple[str, ...] = get_args(FieldType)

Coercer = Callable[[Any], Any]


def _wrong(type_label: str, value: Any) -> MappingError:
    return MappingError(f"expected {type_label}, got {kind_of(value)}", value=value)


def _blank_text(value: Any) -> bool:
    return isinstance(value, str) and (not value or value.isspace())


def _string(value: Any) -> Any:
    if isinstance(value, str | int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise MappingError("expected text, got a number that is not finite", value=value)
        return text_of(value)
    if isinstance(value, list):
        raise MappingError("expected text, got a list (use the join transform)", value=value)
    raise _wrong("text", value)


def _integer(value: Any) -> Any:
    if isinstance(value, bool):
        raise _wrong("an integer", value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise MappingError("expected an integer, got a number with a fraction", value=value)
    if isinstance(value, str):
        number = parse_int_text(value.strip())
        if number is None:
            raise MappingError("expected an integer, got text that is not one", value=value)
        return number
    raise _wrong("an integer", value)


def _number(value: Any) -> Any:
    if isinstance(value, bool):
        raise _wrong("a number", value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise MappingError("expected a finite number", value=value)
        return value
    if isinstance(value, str):
        text = value.strip()
        whole = parse_int_text(text)
        if whole is not None:
            return whole
        number = parse_float_text(text)
        if number is None:
            raise MappingError(
                "expected a number, got text that is not one (use . for decimals)", value=value
            )
        return number
    raise _wrong("a number", value)


def _boolean(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return value == 1
    if isinstance(value, str):
        result = bool_of_text(value)
        if result is None:
            raise MappingError("expected a boolean (true/false, yes/no, 1/0)", value=value)
        return result
    raise _wrong("a boolean", value)


def _datetime(output: str) -> Coercer:
    def coerce_datetime(value: Any) -> Any:
        if not isinstance(value, str):
            hint = (
                " (use the date transform with epoch_s or epoch_ms)"
                if isinstance(value, int | float) and not isinstance(value, bool)
                else ""
            )
            raise MappingError(
                f"expected an ISO 8601 date-time, got {kind_of(value)}{hint}", value=value
            )
        dt = parse_iso8601(value.strip())
        if dt is None:
            raise MappingError(
                "expected an ISO 8601 date-time (use the date transform for other formats)",
                value=value,
            )
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        try:
            return format_datetime(dt, output)
        except (OverflowError, ValueError) as exc:
            raise MappingError(f"date-time out of range ({exc})", value=value) from None

    return coerce_datetime


def _email(value: Any) -> Any:
    if not isinstance(value, str):
        raise _wrong("an e-mail address", value)
    text = value.strip()
    local, at, domain = text.rpartition("@")
    problem = None
    if not at or not local or not domain:
        problem = "needs a name, @ and a domain"
    elif "@" in local:
        problem = "has more than one @"
    elif len(text) > 254 or len(local) > 64:
        problem = "is too long"
    elif any(c.isspace() or not c.isprintable() for c in text):
        problem = "contains spaces or control characters"
    elif local.startswith(".") or local.endswith(".") or ".." in local:
        problem = "has a misplaced dot before the @"
    else:
        labels = domain.split(".")
        if len(labels) < 2:
            problem = "needs a domain with a dot (example.com)"
        elif any(
            not label
            or len(label) > 63
            or label[0] == "-"
            or label[-1] == "-"
            or not all(c.isalnum() or c == "-" for c in label)
            for label in labels
        ):
            problem = "has an invalid domain"
        elif labels[-1].isdigit():
            problem = "has an IP address as domain"
    if problem:
        raise MappingError(f"not an e-mail address: it {problem}", value=value)
    return f"{local}@{domain.lower()}"


def _e164(region: str | None) -> Coercer:
    def coerce_e164(value: Any) -> Any:
        return phone_to_e164(value, region, "phone number")

    return coerce_e164


def _uri(value: Any) -> Any:
    if not isinstance(value, str):
        raise _wrong("a URL", value)
    text = value.strip()
    if any(c.isspace() for c in text):
        raise MappingError("not a URL: contains spaces", value=value)
    try:
        parts = urlsplit(text)
        host = parts.hostname
        parts.port  # noqa: B018 - reading it validates the port
    except ValueError as exc:
        raise MappingError(f"not a URL: {exc}", value=value) from None
    if parts.scheme.lower() not in ("http", "https"):
        raise MappingError("not an http or https URL", value=value)
    if not host:
        raise MappingError("not a URL: no host", value=value)
    return text


def _list_of_strings(value: Any) -> Any:
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if item is None:
            continue
        if not isinstance(item, str | int | float):
            raise MappingError(
                f"expected a list of text, got an item that is {kind_of(item)}", value=value
            )
        out.append(text_of(item))
    return out


def make_coercer(type_name: str, format: str | None = None) -> Coercer:
    """The function that coerces a value to ``type_name`` (and ``format``); resolve it once.

    Raises ValueError for an unknown type or a bad format: those are mistakes in an
    integration's declaration, found when it is loaded, not per record. The returned function
    raises MappingError (without field or source: :func:`coerce` adds them).
    """
    message = check_format(type_name, format)
    if message:
        raise ValueError(message)
    if type_name == "any":
        return _identity
    if type_name == "string":
        return _none_passes(_string, blank_is_none=False)
    if type_name == "datetime":
        inner = _datetime(format or "iso8601")
    elif type_name == "e164":
        inner = _e164(check_region(format)[0] if format else None)
    else:
        inner = _SIMPLE[type_name]
    return _none_passes(inner, blank_is_none=True)


def check_format(type_name: str, format: str | None) -> str | None:
    """Why ``format`` cannot be used with ``type_name`` (or the type is unknown), else None."""
    if type_name not in FIELD_TYPES:
        return f"unknown field type {type_name!r}; types: {', '.join(FIELD_TYPES)}"
    if format is None:
        return None
    if type_name == "datetime":
        if format in ("iso8601", "epoch_s", "epoch_ms"):
            return None
        return check_strftime(format, parsing=False)
    if type_name == "e164":
        return check_region(format)[1]
    return None  # other types have no format; a descriptive one is harmless


def _identity(value: Any) -> Any:
    return value


#: The coercer of type ``any``: callers may skip calling it.
IDENTITY: Coercer = _identity


def _none_passes(inner: Coercer, *, blank_is_none: bool) -> Coercer:
    def coerce_value(value: Any) -> Any:
        if value is None or value is MISSING:
            return value
        if blank_is_none and _blank_text(value):
            return None
        return inner(value)

    return coerce_value


_SIMPLE: dict[str, Coercer] = {
    "integer": _integer,
    "number": _number,
    "boolean": _boolean,
    "email": _email,
    "uri": _uri,
    "list_of_strings": _list_of_strings,
}


@functools.lru_cache(maxsize=256)
def _cached_coercer(type_name: str, format: str | None) -> Coercer:
    return make_coercer(type_name, format)


def coerce(
    value: Any,
    type_name: str,
    *,
    field: str | None = None,
    source: str | None = None,
    format: str | None = None,
) -> Any:
    """``value`` coerced to the field type ``type_name``; MappingError naming field, source
    and value when it cannot be. None (and MISSING) pass through unchanged.

    ValueError for an unknown type or a bad format (a declaration mistake).
    """
    try:
        return _cached_coercer(type_name, format)(value)
    except MappingError as exc:
        raise exc.with_context(field=field, source=source) from None


__all__ = ["FIELD_TYPES", "check_format", "coerce", "make_coercer"]
