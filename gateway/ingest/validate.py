"""Flat-data validation: the record shape producers must send (docs/producers.md).

``data`` is flat: each value is a string, number, boolean, null, or a list of those. Every
offending attribute is named, not only the first, so a producer fixes a record in one round;
but at most :data:`MAX_LISTED` of them, then a count (:class:`Problems`), so that a large
record cannot turn into an answer many times its size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.errors import ApiError
from gateway.ids import GROUP_KEY_RE

# Group keys name mapping files, so they must be safe file names.
_RECORD_FIELDS = frozenset({"data", "group_key"})
_SCALARS = (str, int, float, bool)
MAX_LISTED = 100  # problems listed per record (and per batch answer); the rest are counted
_NAME_ECHO = 32  # how much of an over-long name a message quotes back


class Problems(list[dict[str, str]]):
    """``{"field", "message"}`` entries, listing the first ``cap`` and counting all."""

    __slots__ = ("cap", "total")

    def __init__(self, cap: int = MAX_LISTED) -> None:
        # A list starts empty: list.__init__ has nothing to do (one call less a record).
        self.cap = cap
        self.total = 0

    def add(self, field: str, message: str) -> None:
        """Count a problem; list it while fewer than ``cap`` are listed."""
        self.total += 1
        if len(self) < self.cap:
            self.append({"field": field, "message": message})

    def invalid(self, lead: str) -> ApiError:
        """422 INVALID_DATA: ``lead``, how many problems, the listed ones and the count of
        all (``error_count``)."""
        listed = "" if len(self) == self.total else f"; the first {len(self)} are listed"
        return ApiError(
            422,
            "INVALID_DATA",
            f"{lead}: {self.total} problem(s){listed}",
            errors=self,
            extra={"error_count": self.total},
        )


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-record limits (documented in docs/limits.md; set with ``GATEWAY_MAX_*``)."""

    max_attributes: int = 200
    max_key_length: int = 128
    max_value_length: int = 16384
    max_list_items: int = 1000


def _type_name(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _check_scalar(value: Any, field: str, limits: Limits, errors: Problems) -> None:
    if isinstance(value, str) and len(value) > limits.max_value_length:
        errors.add(
            field,
            f"value is {len(value)} characters long; at most {limits.max_value_length} allowed",
        )


def _clean(data: Any, limits: Limits) -> bool:
    """True when ``data`` has no problem at all: the check every valid record takes, with no
    field names or messages made. Exact types only (what orjson makes); anything else, and
    any record with a problem, takes :func:`validate_data`'s full walk, which names them."""
    if type(data) is not dict or len(data) > limits.max_attributes:
        return False
    max_key, max_value = limits.max_key_length, limits.max_value_length
    for key, value in data.items():
        if not key or len(key) > max_key:
            return False
        kind = type(value)
        if kind is str:
            if len(value) > max_value:
                return False
        elif kind is list:
            if len(value) > limits.max_list_items:
                return False
            for item in value:
                if type(item) is str:
                    if len(item) > max_value:
                        return False
                elif item is not None and type(item) not in _EXACT_SCALARS:
                    return False
        elif value is not None and kind not in _EXACT_SCALARS:
            return False
    return True


_EXACT_SCALARS = frozenset({int, float, bool})


def validate_data(
    data: Any, limits: Limits, prefix: str = "data", errors: Problems | None = None
) -> Problems:
    """The problems with a record's ``data`` (added to ``errors`` when given): the first
    :data:`MAX_LISTED` as ``{"field", "message"}`` entries, all of them counted."""
    if errors is None:
        errors = Problems()
    if _clean(data, limits):
        return errors
    return _walk(data, limits, prefix, errors)


def _walk(data: Any, limits: Limits, prefix: str, errors: Problems) -> Problems:
    """Every problem of ``data``, named (the full walk :func:`validate_data` does for data
    that is not clean)."""
    if not isinstance(data, dict):
        errors.add(prefix, f"must be an object, not {_type_name(data)}")
        return errors
    if len(data) > limits.max_attributes:
        errors.add(prefix, f"has {len(data)} attributes; at most {limits.max_attributes} allowed")
    for key, value in data.items():
        field = f"{prefix}.{key}"
        if not key:
            errors.add(field, "attribute names must not be empty")
        elif len(key) > limits.max_key_length:
            field = f"{prefix}.{key[:_NAME_ECHO]}..."
            errors.add(
                field,
                f"attribute name is {len(key)} characters long; at most "
                f"{limits.max_key_length} allowed",
            )
        if value is None or isinstance(value, _SCALARS):
            _check_scalar(value, field, limits, errors)
        elif isinstance(value, dict):
            errors.add(field, "nested objects are not supported")
        elif isinstance(value, list):
            if len(value) > limits.max_list_items:
                errors.add(
                    field, f"list has {len(value)} items; at most {limits.max_list_items} allowed"
                )
            for i, item in enumerate(value):
                if item is None or isinstance(item, _SCALARS):
                    _check_scalar(item, f"{field}[{i}]", limits, errors)
                else:
                    errors.add(
                        f"{field}[{i}]",
                        "lists may hold only strings, numbers, booleans and null, not "
                        f"{_type_name(item)}",
                    )
        else:  # pragma: no cover - JSON cannot produce other types
            errors.add(field, f"unsupported type {_type_name(value)}")
    return errors


def validate_record(
    obj: Any, limits: Limits, cap: int = MAX_LISTED
) -> tuple[str | None, dict[str, Any], Problems]:
    """Check one ``{"data": ..., "group_key": ...}`` object, listing at most ``cap`` problems.

    Returns ``(group_key, data, errors)``; the record is valid when ``errors.total`` is 0.
    """
    errors = Problems(cap)
    # The common case first: exactly the two fields, a well-formed key, clean data.
    if type(obj) is dict and len(obj) == 2:
        key: Any = obj.get("group_key")
        values: Any = obj.get("data")
        if type(key) is str and GROUP_KEY_RE.fullmatch(key) and _clean(values, limits):
            return key, values, errors
    if not isinstance(obj, dict):
        errors.add("", f"a record must be an object, not {_type_name(obj)}")
        return None, {}, errors
    for extra in obj.keys() - _RECORD_FIELDS:
        name = str(extra)
        if len(name) > _NAME_ECHO:
            name = name[:_NAME_ECHO] + "..."
        errors.add(name, "unknown field; a record has data and group_key")
    group_key = obj.get("group_key")
    if group_key is None:
        errors.add("group_key", "required")
        group_key = None
    elif not isinstance(group_key, str) or not GROUP_KEY_RE.fullmatch(group_key):
        errors.add(
            "group_key",
            "must be 1 to 128 letters, digits, '_', '-' or '.', starting with a letter or digit",
        )
        group_key = None
    if "data" not in obj:
        errors.add("data", "required")
        data: Any = {}
    else:
        data = obj["data"]
        validate_data(data, limits, errors=errors)
    return group_key, data if isinstance(data, dict) else {}, errors
