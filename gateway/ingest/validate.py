"""Flat-data validation: the record shape producers must send (DESIGN.md section 3).

``data`` is flat: each value is a string, number, boolean, null, or a list of those. Every
offending attribute is named, not only the first, so a producer fixes a record in one round.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# Group keys name mapping files, so they must be safe file names.
GROUP_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_RECORD_FIELDS = frozenset({"data", "group_key"})
_SCALARS = (str, int, float, bool)


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


def _check_scalar(value: Any, field: str, limits: Limits, errors: list[dict[str, str]]) -> None:
    if isinstance(value, str) and len(value) > limits.max_value_length:
        errors.append(
            {
                "field": field,
                "message": f"value is {len(value)} characters long; at most "
                f"{limits.max_value_length} allowed",
            }
        )


def validate_data(data: Any, limits: Limits, prefix: str = "data") -> list[dict[str, str]]:
    """Every problem with a record's ``data``, as ``{"field", "message"}`` entries."""
    if not isinstance(data, dict):
        return [{"field": prefix, "message": f"must be an object, not {_type_name(data)}"}]
    errors: list[dict[str, str]] = []
    if len(data) > limits.max_attributes:
        errors.append(
            {
                "field": prefix,
                "message": f"has {len(data)} attributes; at most {limits.max_attributes} allowed",
            }
        )
    for key, value in data.items():
        field = f"{prefix}.{key}"
        if not key:
            errors.append({"field": field, "message": "attribute names must not be empty"})
        elif len(key) > limits.max_key_length:
            errors.append(
                {
                    "field": f"{prefix}.{key[:32]}...",
                    "message": f"attribute name is {len(key)} characters long; at most "
                    f"{limits.max_key_length} allowed",
                }
            )
        if value is None or isinstance(value, _SCALARS):
            _check_scalar(value, field, limits, errors)
        elif isinstance(value, dict):
            errors.append({"field": field, "message": "nested objects are not supported"})
        elif isinstance(value, list):
            if len(value) > limits.max_list_items:
                errors.append(
                    {
                        "field": field,
                        "message": f"list has {len(value)} items; at most "
                        f"{limits.max_list_items} allowed",
                    }
                )
            for i, item in enumerate(value):
                if item is None or isinstance(item, _SCALARS):
                    _check_scalar(item, f"{field}[{i}]", limits, errors)
                else:
                    errors.append(
                        {
                            "field": f"{field}[{i}]",
                            "message": "lists may hold only strings, numbers, booleans and "
                            f"null, not {_type_name(item)}",
                        }
                    )
        else:  # pragma: no cover - JSON cannot produce other types
            errors.append({"field": field, "message": f"unsupported type {_type_name(value)}"})
    return errors


def validate_record(
    obj: Any, limits: Limits
) -> tuple[str | None, dict[str, Any], list[dict[str, str]]]:
    """Check one ``{"data": ..., "group_key": ...}`` object.

    Returns ``(group_key, data, errors)``; the record is valid when ``errors`` is empty.
    """
    if not isinstance(obj, dict):
        return (
            None,
            {},
            [{"field": "", "message": f"a record must be an object, not {_type_name(obj)}"}],
        )
    errors: list[dict[str, str]] = []
    for extra in obj.keys() - _RECORD_FIELDS:
        errors.append(
            {"field": str(extra), "message": "unknown field; a record has data and group_key"}
        )
    group_key = obj.get("group_key")
    if group_key is None:
        errors.append({"field": "group_key", "message": "required"})
        group_key = None
    elif not isinstance(group_key, str) or not GROUP_KEY_RE.fullmatch(group_key):
        errors.append(
            {
                "field": "group_key",
                "message": "must be 1 to 128 letters, digits, '_', '-' or '.', starting with a "
                "letter or digit",
            }
        )
        group_key = None
    if "data" not in obj:
        errors.append({"field": "data", "message": "required"})
        data: Any = {}
    else:
        data = obj["data"]
        errors.extend(validate_data(data, limits))
    return group_key, data if isinstance(data, dict) else {}, errors
