"""Field types: safe coercions succeed, unsafe ones are MappingErrors naming field, source and
value; formats; the list of types matches the integration declarations'."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import pytest

from gateway.integrations.base import FieldType
from gateway.mapping.errors import MappingError
from gateway.mapping.fieldtypes import FIELD_TYPES, check_format, coerce, make_coercer
from gateway.mapping.sources import MISSING

DOCS = Path(__file__).resolve().parent.parent / "docs" / "transforms.md"

OK = [
    # any
    ("any", {"x": 1}, None, {"x": 1}),
    ("any", "", None, ""),
    # string
    ("string", "Åsa 😀", None, "Åsa 😀"),
    ("string", "", None, ""),  # empty text is a string value
    ("string", "  ", None, "  "),
    ("string", 42, None, "42"),
    ("string", 4.5, None, "4.5"),
    ("string", True, None, "true"),
    # integer
    ("integer", 42, None, 42),
    ("integer", "42", None, 42),
    ("integer", " -7 ", None, -7),
    ("integer", "+3", None, 3),
    ("integer", 4.0, None, 4),
    ("integer", "", None, None),
    ("integer", "  ", None, None),
    ("integer", 2**70, None, 2**70),
    # number
    ("number", 42, None, 42),
    ("number", 4.2, None, 4.2),
    ("number", "4.2", None, 4.2),
    ("number", "42", None, 42),
    ("number", " -1e3 ", None, -1000.0),
    ("number", "", None, None),
    # boolean
    ("boolean", True, None, True),
    ("boolean", False, None, False),
    ("boolean", 1, None, True),
    ("boolean", 0, None, False),
    ("boolean", "true", None, True),
    ("boolean", "FALSE", None, False),
    ("boolean", "1", None, True),
    ("boolean", "0", None, False),
    ("boolean", "yes", None, True),
    ("boolean", "nej", None, False),
    ("boolean", "", None, None),
    # datetime
    ("datetime", "2024-05-01T12:00:00+02:00", None, "2024-05-01T12:00:00+02:00"),
    ("datetime", "2024-05-01T12:00:00Z", None, "2024-05-01T12:00:00+00:00"),
    ("datetime", "2024-05-01T12:00:00", None, "2024-05-01T12:00:00+00:00"),  # naive is UTC
    ("datetime", "2024-05-01", None, "2024-05-01T00:00:00+00:00"),
    ("datetime", " 2024-05-01 ", "%Y-%m-%d", "2024-05-01"),
    ("datetime", "2023-11-14T22:13:20Z", "epoch_s", 1700000000),
    ("datetime", "2023-11-14T22:13:20.123Z", "epoch_ms", 1700000000123),
    ("datetime", "2024-05-01T12:00:00Z", "iso8601", "2024-05-01T12:00:00+00:00"),
    ("datetime", "", None, None),
    # email
    ("email", "john.doe@example.com", None, "john.doe@example.com"),
    ("email", " John.Doe@EXAMPLE.Com ", None, "John.Doe@example.com"),  # domain lower-cased
    ("email", "åsa+tag@exempel.se", None, "åsa+tag@exempel.se"),
    ("email", "info@ÅÄÖ.se", None, "info@åäö.se"),
    ("email", "a@b-c.d.museum", None, "a@b-c.d.museum"),
    ("email", "", None, None),
    # e164
    ("e164", "+46701234567", None, "+46701234567"),
    ("e164", "+46 70-123 45 67", None, "+46701234567"),
    ("e164", "070-123 45 67", "SE", "+46701234567"),
    ("e164", 701234567, "SE", "+46701234567"),
    ("e164", "", None, None),
    # uri
    ("uri", "https://example.com/a?b=c", None, "https://example.com/a?b=c"),
    ("uri", " HTTP://Example.com:8080 ", None, "HTTP://Example.com:8080"),
    ("uri", "https://exempel.se/åäö", None, "https://exempel.se/åäö"),
    ("uri", "", None, None),
    # list_of_strings
    ("list_of_strings", ["a", "å", "😀"], None, ["a", "å", "😀"]),
    ("list_of_strings", ["a", 1, 2.5, True, None], None, ["a", "1", "2.5", "true"]),
    ("list_of_strings", [], None, []),
    ("list_of_strings", "single", None, ["single"]),
    ("list_of_strings", 7, None, ["7"]),
    ("list_of_strings", "", None, None),
]


@pytest.mark.parametrize(("type_name", "value", "fmt", "expected"), OK)
def test_coercions(type_name: str, value: Any, fmt: str | None, expected: Any) -> None:
    result = coerce(value, type_name, field="f", source="s", format=fmt)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize("type_name", FIELD_TYPES)
def test_null_and_missing_pass_every_type(type_name: str) -> None:
    assert coerce(None, type_name) is None
    assert coerce(MISSING, type_name) is MISSING


BAD = [
    ("string", ["a"], "got a list (use the join transform)"),
    ("string", {"a": 1}, "expected text, got an object"),
    ("string", float("nan"), "not finite"),
    ("integer", "4.2", "expected an integer, got text that is not one"),
    ("integer", "4.0", "expected an integer, got text"),
    ("integer", "42abc", "expected an integer"),
    ("integer", "٤٢", "expected an integer"),
    ("integer", 4.5, "a number with a fraction"),
    ("integer", True, "expected an integer, got a boolean"),
    ("integer", [1], "expected an integer, got a list"),
    ("number", "4,2", "use . for decimals"),
    ("number", "nan", "expected a number"),
    ("number", "inf", "expected a number"),
    ("number", float("inf"), "expected a finite number"),
    ("number", False, "expected a number, got a boolean"),
    ("number", [1], "expected a number, got a list"),
    ("boolean", 2, "expected a boolean, got a number"),
    ("boolean", 1.0, "expected a boolean, got a number"),
    ("boolean", "maybe", "expected a boolean"),
    ("boolean", ["true"], "expected a boolean, got a list"),
    ("datetime", "01/05/2024", "expected an ISO 8601 date-time"),
    ("datetime", 1700000000, "use the date transform with epoch_s or epoch_ms"),
    ("datetime", True, "expected an ISO 8601 date-time, got a boolean"),
    ("email", "john.doe", "needs a name, @ and a domain"),
    ("email", "@example.com", "needs a name, @ and a domain"),
    ("email", "a@", "needs a name, @ and a domain"),
    ("email", "a@b@c.se", "more than one @"),
    ("email", "a b@c.se", "contains spaces"),
    ("email", "a@localhost", "needs a domain with a dot"),
    ("email", "a@-x.se", "invalid domain"),
    ("email", "a@x..se", "invalid domain"),
    ("email", "a@x_y.se", "invalid domain"),
    ("email", "a@example.com.", "invalid domain"),
    ("email", ".a@x.se", "misplaced dot"),
    ("email", "a..b@x.se", "misplaced dot"),
    ("email", "a@1.2.3.4", "IP address"),
    ("email", "x" * 65 + "@a.se", "too long"),
    ("email", 5, "expected an e-mail address, got a number"),
    ("e164", "0701234567", "no country code"),
    ("e164", "+46 70 12", "not a valid phone number"),
    ("e164", "hello", "not a phone number"),
    ("e164", ["+46701234567"], "phone number expects text or a number, got a list"),
    ("uri", "ftp://example.com", "not an http or https URL"),
    ("uri", "example.com/path", "not an http or https URL"),
    ("uri", "https://", "no host"),
    ("uri", "https://exa mple.com", "contains spaces"),
    ("uri", "http://[::1", "not a URL"),
    ("uri", "http://example.com:99999", "not a URL"),
    ("uri", 5, "expected a URL, got a number"),
    ("list_of_strings", ["a", ["b"]], "got an item that is a list"),
    ("list_of_strings", {"a": 1}, "got an item that is an object"),
]


@pytest.mark.parametrize(("type_name", "value", "message"), BAD)
def test_bad_values_name_field_source_and_value(type_name: str, value: Any, message: str) -> None:
    with pytest.raises(MappingError) as info:
        coerce(value, type_name, field="firstname", source="namn")
    err = info.value
    assert message in err.message
    assert err.field == "firstname"
    assert err.source == "namn"
    assert err.value is not None
    text = str(err)
    assert "field 'firstname'" in text
    assert "source 'namn'" in text


def test_mapping_error_from_a_source_keeps_its_source() -> None:
    err = MappingError("x", source="epost")
    with pytest.raises(MappingError):
        raise err.with_context(field="email", source="other")
    assert (err.field, err.source) == ("email", "epost")


def test_field_types_match_the_integration_declarations() -> None:
    assert set(FIELD_TYPES) == set(typing.get_args(FieldType))


def test_check_format() -> None:
    assert check_format("datetime", "%Y-%m-%d") is None
    assert check_format("datetime", "epoch_ms") is None
    assert check_format("datetime", None) is None
    assert "no % directives" in (check_format("datetime", "yyyy-MM-dd") or "")
    assert check_format("e164", "SE") is None
    assert "unknown phone region" in (check_format("e164", "XX") or "")
    assert "unknown field type 'text'" in (check_format("text", None) or "")
    assert check_format("string", "free text") is None


def test_make_coercer_refuses_declaration_mistakes() -> None:
    with pytest.raises(ValueError, match="unknown field type"):
        make_coercer("decimal")
    with pytest.raises(ValueError, match="unknown phone region"):
        make_coercer("e164", "ZZ")
    assert make_coercer("integer")("5") == 5


def test_docs_describe_every_field_type() -> None:
    text = DOCS.read_text(encoding="utf-8")
    headings = set(re.findall(r"^### `([a-z0-9_]+)`", text, flags=re.MULTILINE))
    assert set(FIELD_TYPES) <= headings
