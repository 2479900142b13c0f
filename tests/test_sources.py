"""Sources: path, value, template, first_of, with default, transform and required; MISSING
versus null; attributes; spec errors with their key paths."""

from __future__ import annotations

import pickle
import re
from typing import Any

import pytest

from gateway.mapping.errors import MappingError, SpecErrors
from gateway.mapping.sources import MISSING, parse_source, parse_template

RECORD: dict[str, Any] = {
    "epost": "john.doe@example.com",
    "namn": "John Doe",
    "ort": "Göteborg",
    "some_tags": ["TAG1", "TAG2"],
    "n": 42,
    "blank": "",
    "spaces": "   ",
    "null": None,
    "none_list": [],
    "emoji": "😀",
}


def ev(spec: Any, data: dict[str, Any] | None = None) -> Any:
    return parse_source(spec).evaluate(RECORD if data is None else data)


CASES = [
    # attribute names and path
    ("epost", "john.doe@example.com"),
    ("ort", "Göteborg"),
    ("missing", MISSING),
    ("null", None),  # an explicit null is kept apart from a missing attribute
    ("blank", ""),
    ({"path": "namn"}, "John Doe"),
    ({"path": "some_tags"}, ["TAG1", "TAG2"]),
    ({"path": "namn", "transform": ["first_word"]}, "John"),
    ({"path": "namn", "transform": ["rest_words"]}, "Doe"),
    ({"path": "some_tags", "transform": [{"join": ";"}]}, "TAG1;TAG2"),
    ({"path": "missing", "transform": ["lower"]}, MISSING),
    ({"path": "null", "transform": ["lower"]}, None),
    ({"path": "missing", "transform": [{"default": "x"}, "upper"]}, "X"),
    # value
    ({"value": "lead"}, "lead"),
    ({"value": 0}, 0),
    ({"value": False}, False),
    ({"value": None}, None),
    ({"value": ["a", 1]}, ["a", 1]),
    ({"value": "Ödla", "transform": ["upper"]}, "ÖDLA"),
    # template
    ({"template": "{namn} <{epost}>"}, "John Doe <john.doe@example.com>"),
    ({"template": "Hej {ort} {emoji}"}, "Hej Göteborg 😀"),
    ({"template": "{{literal}} {n}"}, "{literal} 42"),
    ({"template": "}}{{"}, "}{"),
    ({"template": "{ namn }"}, "John Doe"),  # spaces around the name are ignored
    ({"template": "tags: {some_tags}"}, "tags: TAG1, TAG2"),
    ({"template": "{namn} {missing}"}, "John Doe "),  # missing renders as empty
    ({"template": "{namn}{null}"}, "John Doe"),
    ({"template": "x{missing}y{null}"}, MISSING),  # every placeholder blank: missing
    ({"template": "{blank}"}, MISSING),
    ({"template": "constant"}, "constant"),
    ({"template": ""}, ""),
    ({"template": "{namn}", "transform": ["upper"]}, "JOHN DOE"),
    # first_of
    ({"first_of": ["missing", "null", "blank", "spaces", "none_list", "ort"]}, "Göteborg"),
    ({"first_of": ["epost", "ort"]}, "john.doe@example.com"),
    ({"first_of": ["missing", "null"]}, MISSING),
    ({"first_of": ["n"]}, 42),
    # default: used for blank results, untransformed
    ({"path": "missing", "default": "SE"}, "SE"),
    ({"path": "null", "default": "SE"}, "SE"),
    ({"path": "blank", "default": "SE"}, "SE"),
    ({"path": "spaces", "default": "SE"}, "SE"),
    ({"path": "none_list", "default": ["x"]}, ["x"]),
    ({"path": "ort", "default": "SE"}, "Göteborg"),
    ({"path": "missing", "default": "se", "transform": ["upper"]}, "se"),
    ({"path": "blank", "transform": ["to_int"], "default": 0}, 0),
    ({"path": "namn", "transform": [{"replace": {"pattern": ".*"}}], "default": "-"}, "-"),
    ({"path": "missing", "default": None}, None),
    ({"template": "{missing}", "default": "anon"}, "anon"),
    ({"first_of": ["missing"], "default": 1}, 1),
    # required with a value: no effect
    ({"path": "namn", "required": True}, "John Doe"),
    ({"path": "missing", "required": True, "default": "d"}, "d"),
    ({"path": "missing", "required": False}, MISSING),
]


@pytest.mark.parametrize(("spec", "expected"), CASES)
def test_source_values(spec: Any, expected: Any) -> None:
    result = ev(spec)
    if expected is MISSING:
        assert result is MISSING
    else:
        assert result == expected
        assert type(result) is type(expected)


REQUIRED_FAILURES = [
    ({"path": "missing", "required": True}, "missing", "required attribute is missing", None),
    ({"path": "null", "required": True}, "null", "required attribute has no value", "None"),
    ({"path": "blank", "required": True}, "blank", "required attribute has no value", "''"),
    ({"path": "spaces", "required": True}, "spaces", "has no value", "'   '"),
    ({"path": "none_list", "required": True}, "none_list", "has no value", "[]"),
    (
        {"path": "namn", "transform": [{"replace": {"pattern": ".*"}}], "required": True},
        "namn",
        "required attribute has no value",
        "''",
    ),
    (
        {"template": "{missing}", "required": True},
        "template: {missing}",
        "required source is missing",
        None,
    ),
    ({"first_of": ["a", "b"], "required": True}, "first_of: a, b", "source is missing", None),
]


@pytest.mark.parametrize(("spec", "label", "message", "value"), REQUIRED_FAILURES)
def test_required_sources_fail_when_blank(
    spec: Any, label: str, message: str, value: str | None
) -> None:
    with pytest.raises(MappingError) as info:
        ev(spec)
    assert info.value.source == label
    assert message in info.value.message
    assert info.value.value == value


def test_transform_failure_names_the_source() -> None:
    with pytest.raises(MappingError) as info:
        ev({"path": "ort", "transform": ["to_int"]})
    assert info.value.source == "ort"
    assert info.value.value == "'Göteborg'"
    assert "to_int" in info.value.message
    assert str(info.value).startswith("source 'ort', value 'Göteborg': to_int")


def test_template_with_an_unwritable_value_is_a_mapping_error() -> None:
    # Flat data has no objects, but a template must fail as a mapping error if it meets one.
    with pytest.raises(MappingError) as info:
        ev({"template": "x {obj}"}, {"obj": {"a": 1}})
    assert info.value.source == "template: x {obj}"


def test_template_writes_values_like_to_string() -> None:
    data = {"b": True, "f": 1.5, "l": [1, None, False], "u": "ÅÄÖ"}
    assert ev({"template": "{b}|{f}|{l}|{u}"}, data) == "true|1.5|1, false|ÅÄÖ"


def test_value_constants_are_fresh_each_time() -> None:
    source = parse_source({"value": ["a"]})
    first = source.evaluate({})
    first.append("b")
    assert source.evaluate({}) == ["a"]
    with_default = parse_source({"path": "x", "default": ["d"]})
    with_default.evaluate({}).append("e")
    assert with_default.evaluate({}) == ["d"]


def test_attributes_read() -> None:
    assert parse_source("epost").attributes == ("epost",)
    assert parse_source({"path": "namn"}).attributes == ("namn",)
    assert parse_source({"value": 1}).attributes == ()
    assert parse_source({"template": "{a} {b} {a} {{c}}"}).attributes == ("a", "b")
    assert parse_source({"first_of": ["x", "y"]}).attributes == ("x", "y")


def test_source_metadata() -> None:
    source = parse_source({"path": "n", "transform": ["to_string"], "required": True})
    assert source.kind == "path"
    assert source.required is True
    assert source.pipeline.names == ("to_string",)
    assert source.has_default is False
    assert parse_source({"value": None}).kind == "value"


def test_missing_is_a_falsy_singleton_that_pickles() -> None:
    assert not MISSING
    assert repr(MISSING) == "MISSING"
    assert pickle.loads(pickle.dumps(MISSING)) is MISSING
    assert type(MISSING)() is MISSING


def test_parse_template_parts() -> None:
    assert parse_template("a{b}c{{d}}") == ["a", ("b",), "c{d}"]
    assert parse_template("{x}") == [("x",)]
    for bad, message in [
        ("{", "unclosed {"),
        ("a{b", "unclosed {"),
        ("}", "single }"),
        ("a}b", "single }"),
        ("{}", "empty or malformed placeholder"),
        ("{ }", "empty or malformed placeholder"),
        ("{a{b}", "empty or malformed placeholder"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_template(bad)


# -- spec errors -----------------------------------------------------------------------------

F = ("integrations", 0, "fields", "email")

SPEC_ERRORS = [
    ("", F, "an attribute name cannot be empty"),
    (5, F, "a source is an attribute name or a mapping"),
    (5, F, "for a constant write {value: 5}"),
    (None, F, "got null"),
    (["a"], F, "got a list"),
    ({}, F, "exactly one of path, value, template, first_of; got none"),
    ({"path": "a", "value": 1}, F, "got path, value"),
    ({"required": True}, F, "got none"),
    ({"path": ""}, (*F, "path"), "path must be an attribute name"),
    ({"path": 3}, (*F, "path"), "path must be an attribute name, got a number"),
    ({"value": {"a": 1}}, (*F, "value"), "value must be text, a number"),
    ({"value": [[1]]}, (*F, "value"), "value must be text, a number"),
    ({"template": 5}, (*F, "template"), "template must be text"),
    ({"template": "{a"}, (*F, "template"), "invalid template: unclosed {"),
    ({"template": "a}"}, (*F, "template"), "invalid template: single }"),
    ({"template": "{}"}, (*F, "template"), "empty or malformed placeholder"),
    ({"first_of": []}, (*F, "first_of"), "first_of needs a non-empty list"),
    ({"first_of": "a"}, (*F, "first_of"), "first_of needs a non-empty list"),
    ({"first_of": ["a", 2]}, (*F, "first_of", 1), "an attribute name must be non-empty text"),
    ({"path": "a", "required": "yes"}, (*F, "required"), "required is true or false"),
    ({"path": "a", "default": {"x": 1}}, (*F, "default"), "default must be text"),
    ({"path": "a", "transform": ["nope"]}, (*F, "transform", 0), "unknown transform 'nope'"),
    ({"path": "a", "transfrom": ["lower"]}, (*F, "transfrom"), "did you mean 'transform'?"),
    ({"path": "a", "defualt": 1}, (*F, "defualt"), "did you mean 'default'?"),
]


@pytest.mark.parametrize(("spec", "path", "message"), SPEC_ERRORS)
def test_spec_errors(spec: Any, path: tuple[Any, ...], message: str) -> None:
    with pytest.raises(SpecErrors) as info:
        parse_source(spec, F)
    assert len(info.value.errors) == 1, info.value.errors
    assert info.value.errors[0].path == path
    assert message in info.value.errors[0].message


def test_all_source_errors_are_reported_together() -> None:
    spec = {
        "template": "{oops",
        "transform": ["lowr", {"join": 1}],
        "required": "no",
        "default": {"x": 1},
        "extra": 1,
    }
    with pytest.raises(SpecErrors) as info:
        parse_source(spec, F)
    assert sorted(map(str, (e.path for e in info.value))) == sorted(
        map(
            str,
            [
                (*F, "extra"),
                (*F, "transform", 0),
                (*F, "transform", 1, "join"),
                (*F, "default"),
                (*F, "required"),
                (*F, "template"),
            ],
        )
    )
