"""Parsing a request body as JSON without silent changes to what the producer sent.

orjson (fast, strict) is the parser; two of its liberties are refused here, each with a 400
naming the field:

- an object with the same key twice (orjson keeps the last value silently): DUPLICATE_KEY;
- an integer outside -2**63 .. 2**64-1 (orjson turns it into a float, 18446744073709551616
  into 1.8446744073709552e+19): INTEGER_OUT_OF_RANGE. Integers inside that range are kept
  exactly; numbers with a fraction or exponent are IEEE 754 doubles, as JSON parsers read them.

Both checks cost next to nothing on the common body: the number of ``:`` in a body is at
least the number of object keys in it, and at most the number of keys parsed, unless a key was
dropped or a string holds a colon; and no run of 19 digits means no integer near the 64-bit
edge (bytes.count and bytes.translate/find run at memory speed). A body failing either is
parsed a second time by the standard library's json (about twice orjson's time) to find the
culprit or clear it: a record with a time or URL in a string value takes that path.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from gateway.errors import ApiError

# One translation for every test below: digits become '0' (so one find spots a run of 19: an
# integer long enough to leave 64 bits, or a long fraction, which the slow path clears) and
# white space becomes ' ' (so a key's colon follows '"' or ' ').
_FOLD = bytes.maketrans(b"123456789\n\r\t", b"000000000   ")
_LONG_RUN = b"0" * 19
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
    folded = body.translate(_FOLD)
    long_digits = folded.find(_LONG_RUN) >= 0
    if not long_digits:
        keys = count_keys(obj)
        # Keys parsed <= keys written <= any count that includes every key's colon: all colons;
        # or (fewer when strings hold times or URLs) colons right after a quote or white space.
        if folded.count(b":") == keys or folded.count(b'":') + folded.count(b" :") == keys:
            return
        # Without escaped quotes every '"' delimits a string: the pieces before the 1st, between
        # the 2nd and 3rd, ... are outside strings, and their colons are the keys'.
        if b'\\"' not in body and b"".join(body.split(b'"')[::2]).count(b":") == keys:
            return
    finder = _Finder()
    doc = json.loads(
        body, object_pairs_hook=finder.pairs, parse_int=finder.integer if long_digits else None
    )
    if not finder.found:
        return
    found = _walk(doc, "")
    if found is None:  # pragma: no cover - the finder saw one, so the walk meets it
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


class _Big:
    """An integer literal outside 64 bits, found by the slow path."""

    __slots__ = ()


class _Dup(dict[str, Any]):
    """An object that had a key twice (``key``), found by the slow path."""

    key = ""


class _Finder:
    """json.loads hooks that mark duplicate keys and out-of-range integers where they are."""

    __slots__ = ("found",)

    def __init__(self) -> None:
        self.found = False

    def integer(self, text: str) -> Any:
        value = int(text)
        if _INT_MIN <= value <= _INT_MAX:
            return value
        self.found = True
        return _Big()

    def pairs(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) == len(pairs):
            return out
        self.found = True
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                dup = _Dup(out)
                dup.key = k
                return dup
            seen.add(k)
        return out  # pragma: no cover - a shorter dict means a repeated key


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
