"""Parsing a request body as JSON without silent changes to what the producer sent.

orjson (fast, strict) is the parser; two of its liberties are refused here, each with a 400
naming the field:

- an object with the same key twice (orjson keeps the last value silently): DUPLICATE_KEY;
- an integer outside -2**63 .. 2**64-1 (orjson turns it into a float, 18446744073709551616
  into 1.8446744073709552e+19): INTEGER_OUT_OF_RANGE. Integers inside that range are kept
  exactly; numbers with a fraction or exponent are IEEE 754 doubles, as JSON parsers read them.

Both checks cost next to nothing on the common body: the count of ``:`` in the body (strings
removed, when they hold any) is the number of object keys it has, which must equal the number
of keys parsed; and no run of 19 digits outside strings means no integer near the 64-bit edge.
Only a body failing one of those is parsed a second time (stdlib json) to find the culprit.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from gateway.errors import ApiError

# A JSON string (the body is already known to be valid JSON, so this never misreads one).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
# 19 digits that do not follow a '.' or a digit: an integer part long enough to leave 64 bits.
_LONG_INT = re.compile(rb"(?<![.\d])\d{19}")
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
_NAME_ECHO = 64  # how much of a producer's key a message quotes back


def loads(body: bytes) -> Any:
    """Parse ``body``; raise :class:`ApiError` 400 MALFORMED_JSON, DUPLICATE_KEY or
    INTEGER_OUT_OF_RANGE."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "MALFORMED_JSON", f"request body is not valid JSON: {exc}") from None
    check_exact(body, obj)
    return obj


def count_keys(obj: Any) -> int:
    """Keys in the objects a record or batch body is made of: the top object, each record, each
    record's data. Deeper objects (refused by validation anyway) send :func:`check_exact` down
    its slow path, which is still correct."""
    if not isinstance(obj, dict):
        return 0
    n = len(obj)
    records = obj.get("records")
    items = records if isinstance(records, list) and "data" not in obj else [obj]
    for item in items:
        if isinstance(item, dict):
            if item is not obj:
                n += len(item)
            data = item.get("data")
            if isinstance(data, dict):
                n += len(data)
    return n


def check_exact(body: bytes, obj: Any) -> None:
    """Raise 400 when parsing ``body`` into ``obj`` dropped a duplicate key or rounded an
    integer (see the module docstring)."""
    if not isinstance(obj, dict | list):
        if _LONG_INT.search(body):
            _find_problem(body)
        return
    keys = count_keys(obj)
    if body.count(b":") == keys and not _LONG_INT.search(body):
        return
    bare = _STRING.sub(b'""', body)
    if bare.count(b":") == keys and not _LONG_INT.search(bare):
        return
    _find_problem(body)


class _Big:
    """An integer literal outside 64 bits, found by the slow path."""

    __slots__ = ()


class _Dup(dict[str, Any]):
    """An object that had a key twice (``key``), found by the slow path."""

    key = ""


def _int(text: str) -> Any:
    value = int(text)
    return _Big() if not _INT_MIN <= value <= _INT_MAX else value


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            dup = _Dup(out)
            dup.key = k
            return dup
        out[k] = v
    return out


def _find_problem(body: bytes) -> None:
    doc = json.loads(body, object_pairs_hook=_pairs, parse_int=_int)
    found = _walk(doc, "")
    if found is None:
        return
    field, kind = found
    if kind == "dup":
        raise ApiError(
            400,
            "DUPLICATE_KEY",
            f"the key '{field}' appears more than once in the same object",
            errors=[{"field": field, "message": "duplicate key"}],
        )
    raise ApiError(
        400,
        "INTEGER_OUT_OF_RANGE",
        f"the integer at '{field}' is outside -2^63 .. 2^64-1 and cannot be kept exactly; "
        "send it as a string",
        errors=[{"field": field, "message": "integer out of range"}],
    )


def _join(path: str, key: str) -> str:
    name = key if len(key) <= _NAME_ECHO else key[:_NAME_ECHO] + "..."
    return f"{path}.{name}" if path else name


def _walk(node: Any, path: str) -> tuple[str, str] | None:
    """The first duplicate key or out-of-range integer in document order, with its path."""
    if isinstance(node, _Big):
        return path, "big"
    if isinstance(node, dict):
        if isinstance(node, _Dup):
            return _join(path, node.key), "dup"
        for k, v in node.items():
            found = _walk(v, _join(path, k))
            if found is not None:
                return found
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found = _walk(v, f"{path}[{i}]")
            if found is not None:
                return found
    return None
