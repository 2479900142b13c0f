"""Conditions: every operator and combinator, missing attributes, type mismatches, lists,
non-ASCII text, and spec errors with their key paths."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gateway.mapping.conditions import (
    ALWAYS,
    COMBINATORS,
    OPERATORS,
    parse_condition,
    same,
)
from gateway.mapping.errors import SpecErrors

DOCS = Path(__file__).resolve().parent.parent / "docs" / "transforms.md"

DATA: dict[str, Any] = {
    "consent": True,
    "n": 5,
    "f": 2.5,
    "zero": 0,
    "s": "Åsa",
    "empty": "",
    "null": None,
    "tags": ["TAG1", "TAG2"],
    "mixed": [1, "a", None, True],
    "emoji": "hej 😀",
    "date": "2024-05-01",
}

CASES = [
    # eq / ne
    ({"consent": {"eq": True}}, True),
    ({"consent": {"eq": 1}}, False),  # a boolean is not a number
    ({"n": {"eq": 5}}, True),
    ({"n": {"eq": 5.0}}, True),  # numbers compare by value
    ({"n": {"eq": "5"}}, False),  # no conversion between text and numbers
    ({"zero": {"eq": False}}, False),
    ({"s": {"eq": "Åsa"}}, True),
    ({"s": {"eq": "åsa"}}, False),  # case matters
    ({"emoji": {"eq": "hej 😀"}}, True),
    ({"empty": {"eq": ""}}, True),
    ({"null": {"eq": None}}, True),
    ({"missing": {"eq": None}}, False),  # missing is not null
    ({"missing": {"eq": "x"}}, False),
    ({"tags": {"eq": ["TAG1", "TAG2"]}}, True),  # lists compare whole
    ({"tags": {"eq": ["TAG2", "TAG1"]}}, False),
    ({"tags": {"eq": "TAG1"}}, False),
    ({"mixed": {"eq": [1.0, "a", None, True]}}, True),
    ({"mixed": {"eq": [1, "a", None, 1]}}, False),
    ({"consent": {"ne": False}}, True),
    ({"consent": {"ne": True}}, False),
    ({"missing": {"ne": "x"}}, True),  # ne holds on a missing attribute
    ({"n": {"ne": "5"}}, True),
    ({"tags": {"ne": ["TAG1"]}}, True),
    # in / nin
    ({"s": {"in": ["Åsa", "Bo"]}}, True),
    ({"s": {"in": ["Bo"]}}, False),
    ({"n": {"in": [1, 5.0]}}, True),
    ({"n": {"in": ["5"]}}, False),
    ({"consent": {"in": [1]}}, False),
    ({"consent": {"in": [True]}}, True),
    ({"zero": {"in": [False]}}, False),
    ({"null": {"in": [None]}}, True),
    ({"missing": {"in": [None]}}, False),
    ({"tags": {"in": ["TAG2", "X"]}}, True),  # any item of a list attribute
    ({"tags": {"in": ["X"]}}, False),
    ({"mixed": {"in": [True]}}, True),
    ({"mixed": {"in": [2]}}, False),
    ({"s": {"nin": ["Bo"]}}, True),
    ({"s": {"nin": ["Åsa"]}}, False),
    ({"missing": {"nin": ["x"]}}, True),
    ({"tags": {"nin": ["X", "Y"]}}, True),  # no item is in
    ({"tags": {"nin": ["TAG1"]}}, False),
    ({"emoji": {"in": ["hej 😀"]}}, True),
    # gt / gte / lt / lte
    ({"n": {"gt": 4}}, True),
    ({"n": {"gt": 5}}, False),
    ({"n": {"gte": 5}}, True),
    ({"n": {"lt": 5.5}}, True),
    ({"n": {"lte": 4.9}}, False),
    ({"f": {"gt": 2}}, True),
    ({"n": {"gt": "4"}}, False),  # number against text: false, no error
    ({"s": {"gt": 1}}, False),
    ({"consent": {"gt": 0}}, False),  # booleans are not numbers
    ({"missing": {"lt": 10}}, False),
    ({"null": {"lt": 10}}, False),
    ({"tags": {"gt": "A"}}, False),  # lists are not ordered
    ({"date": {"gte": "2024-01-01"}}, True),  # ISO dates compare as text
    ({"date": {"lt": "2024-05-01"}}, False),
    ({"s": {"gt": "Z"}}, True),  # text compares by code point: Å sorts after Z
    ({"n": {"gt": 1, "lt": 10}}, True),  # several operators: all must hold
    ({"n": {"gt": 1, "lt": 5}}, False),
    # exists
    ({"s": {"exists": True}}, True),
    ({"empty": {"exists": True}}, True),  # empty text is a value
    ({"null": {"exists": True}}, False),  # null is not
    ({"null": {"exists": False}}, True),
    ({"missing": {"exists": False}}, True),
    ({"missing": {"exists": True}}, False),
    ({"tags": {"exists": False}}, False),
    # regex
    ({"s": {"regex": "^Å"}}, True),
    ({"s": {"regex": "s"}}, True),  # search, not a full match
    ({"s": {"regex": "^s"}}, False),
    ({"s": {"regex": "(?i)^åSA$"}}, True),
    ({"emoji": {"regex": "😀$"}}, True),
    ({"tags": {"regex": "2$"}}, True),  # any text item
    ({"tags": {"regex": "^X"}}, False),
    ({"mixed": {"regex": "^a$"}}, True),
    ({"n": {"regex": "5"}}, False),  # numbers are not text
    ({"missing": {"regex": ".*"}}, False),
    ({"null": {"regex": ".*"}}, False),
    ({"empty": {"regex": "^$"}}, True),
    # several attributes: all must hold
    ({"consent": {"eq": True}, "n": {"gt": 3}}, True),
    ({"consent": {"eq": True}, "n": {"gt": 30}}, False),
    # combinators
    ({"all": [{"consent": {"eq": True}}, {"s": {"exists": True}}]}, True),
    ({"all": [{"consent": {"eq": True}}, {"s": {"exists": False}}]}, False),
    ({"any": [{"consent": {"eq": False}}, {"s": {"exists": True}}]}, True),
    ({"any": [{"consent": {"eq": False}}, {"missing": {"exists": True}}]}, False),
    ({"any": [{"n": {"eq": 5}}]}, True),
    ({"not": {"consent": {"eq": True}}}, False),
    ({"not": {"missing": {"eq": 1}}}, True),
    ({"not": {"not": {"n": {"eq": 5}}}}, True),
    (
        {
            "any": [
                {"all": [{"n": {"gte": 5}}, {"not": {"tags": {"in": ["X"]}}}]},
                {"s": {"eq": "nope"}},
            ],
            "consent": {"eq": True},
        },
        True,
    ),
]


@pytest.mark.parametrize(("spec", "expected"), CASES)
def test_condition(spec: Any, expected: bool) -> None:
    assert parse_condition(spec).matches(DATA) is expected


def test_every_operator_and_combinator_is_covered() -> None:
    used: set[str] = set()

    def walk(spec: Any) -> None:
        if isinstance(spec, dict):
            for key, value in spec.items():
                if key in COMBINATORS:
                    used.add(key)
                    for item in value if isinstance(value, list) else [value]:
                        walk(item)
                else:
                    used.update(value)

    for spec, _ in CASES:
        walk(spec)
    assert used == set(OPERATORS) | set(COMBINATORS)


def test_empty_record_and_always() -> None:
    assert parse_condition({"x": {"ne": 1}}).matches({}) is True
    assert parse_condition({"x": {"eq": 1}}).matches({}) is False
    assert ALWAYS.matches({}) is True


def test_attributes_are_listed_in_order_without_duplicates() -> None:
    cond = parse_condition(
        {
            "b": {"eq": 1},
            "any": [{"a": {"gt": 1}}, {"not": {"b": {"exists": True}}}],
            "c": {"lt": 2},
        }
    )
    assert cond.attributes == ("b", "a", "c")


def test_same_is_strict() -> None:
    assert same(1, 1.0)
    assert not same(True, 1)
    assert not same(0, False)
    assert not same("1", 1)
    assert not same(None, "")
    assert same([1, ["a"]], [1.0, ["a"]])
    assert not same([1], [1, 2])
    assert not same({"a": 1}, {"a": 1})  # objects are never in flat data


def test_in_matches_nan_free_floats_and_big_ints() -> None:
    cond = parse_condition({"x": {"in": [2**70, 0.5]}})
    assert cond.matches({"x": 2**70})
    assert cond.matches({"x": 0.5})
    assert not cond.matches({"x": float("nan")})


def test_odd_values_in_data_do_not_raise() -> None:
    # Flat data is validated at ingest, but a condition must not crash on anything.
    odd = {"x": {"nested": 1}, "y": [[1], {"a": 2}], "z": float("nan"), "w": object()}
    for op, arg in [
        ("eq", 1),
        ("ne", [1]),
        ("in", [1, "a"]),
        ("nin", [None]),
        ("gt", 1),
        ("lte", "a"),
        ("exists", True),
        ("regex", "a"),
    ]:
        for attr in odd:
            # An answer, not an exception; and never a match of a nested value by equality.
            matched = parse_condition({attr: {op: arg}}).matches(odd)
            assert isinstance(matched, bool), (attr, op)
            if op == "eq":
                assert not matched, attr


# -- spec errors -----------------------------------------------------------------------------

W = ("integrations", 0, "when")

SPEC_ERRORS = [
    ({}, W, "a condition is a non-empty mapping"),
    ([{"a": {"eq": 1}}], W, "a condition is a non-empty mapping"),
    ("consent", W, "a condition is a non-empty mapping"),
    ({"consent": True}, (*W, "consent"), "must be a mapping of operators"),
    ({"consent": {}}, (*W, "consent"), "must be a mapping of operators"),
    ({"consent": {"equals": True}}, (*W, "consent", "equals"), "unknown operator 'equals'"),
    ({"n": {"gtt": 1}}, (*W, "n", "gtt"), "(did you mean 'gt'"),
    ({"n": {"all": []}}, (*W, "n", "all"), "all combines conditions"),
    ({1: {"eq": 1}}, (*W, "1"), "an attribute name must be text"),
    ({"a": {"eq": {"x": 1}}}, (*W, "a", "eq"), "eq compares with a value or a list"),
    ({"a": {"ne": [[1]]}}, (*W, "a", "ne"), "ne compares with a value or a list"),
    ({"a": {"in": "x"}}, (*W, "a", "in"), "in needs a non-empty list"),
    ({"a": {"in": []}}, (*W, "a", "in"), "in needs a non-empty list"),
    ({"a": {"nin": [{"x": 1}]}}, (*W, "a", "nin"), "nin needs a non-empty list"),
    ({"a": {"gt": True}}, (*W, "a", "gt"), "gt compares with a number or text"),
    ({"a": {"lt": None}}, (*W, "a", "lt"), "lt compares with a number or text"),
    ({"a": {"gte": [1]}}, (*W, "a", "gte"), "gte compares with a number or text"),
    ({"a": {"exists": "yes"}}, (*W, "a", "exists"), "exists takes true or false"),
    ({"a": {"regex": "("}}, (*W, "a", "regex"), "invalid regular expression"),
    ({"a": {"regex": 5}}, (*W, "a", "regex"), "regex needs a regular expression"),
    ({"all": []}, (*W, "all"), "all needs a non-empty list"),
    ({"any": {"a": {"eq": 1}}}, (*W, "any"), "any needs a non-empty list"),
    ({"all": [{"a": {"eq": 1}}, "x"]}, (*W, "all", 1), "a condition is a non-empty mapping"),
    ({"not": []}, (*W, "not"), "a condition is a non-empty mapping"),
    ({"not": {"a": {"bad": 1}}}, (*W, "not", "a", "bad"), "unknown operator"),
]


@pytest.mark.parametrize(("spec", "path", "message"), SPEC_ERRORS)
def test_spec_errors(spec: Any, path: tuple[Any, ...], message: str) -> None:
    with pytest.raises(SpecErrors) as info:
        parse_condition(spec, W)
    assert len(info.value.errors) == 1, info.value.errors
    assert info.value.errors[0].path == path
    assert message in info.value.errors[0].message


def test_all_condition_errors_are_reported_together() -> None:
    spec = {
        "a": {"eq": {"x": 1}, "gt": True},
        "b": "plain",
        "any": [{"c": {"regex": "("}}, {"d": {"exists": 1}}],
        "not": {"e": {"nope": 1}},
    }
    with pytest.raises(SpecErrors) as info:
        parse_condition(spec, W)
    assert [e.path for e in info.value] == [
        (*W, "a", "eq"),
        (*W, "a", "gt"),
        (*W, "b"),
        (*W, "any", 0, "c", "regex"),
        (*W, "any", 1, "d", "exists"),
        (*W, "not", "e", "nope"),
    ]


def test_docs_describe_every_operator() -> None:
    text = DOCS.read_text(encoding="utf-8")
    headings = set(re.findall(r"^### `([a-z0-9_]+)`", text, flags=re.MULTILINE))
    assert set(OPERATORS) | set(COMBINATORS) <= headings


def test_docs_condition_examples_give_the_documented_result() -> None:
    """Each ``when:`` example, run on every record of the table below it."""
    import json

    import yaml

    text = DOCS.read_text(encoding="utf-8")
    used: set[str] = set()
    rows = 0
    for block in re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL):
        spec = yaml.safe_load(block)
        if not isinstance(spec, dict) or "when" not in spec:
            continue
        cond = parse_condition(spec["when"])
        used.update(re.findall(r"\b(" + "|".join(OPERATORS + COMBINATORS) + r"):", block))
        table = text[text.index(block) + len(block) :].split("\n\n", 2)[1]
        for line in table.splitlines():
            match = re.fullmatch(r"\| `(\{.*\})` \| (matches|no match).*\|", line)
            if match:
                rows += 1
                expected = match.group(2) == "matches"
                assert cond.matches(json.loads(match.group(1))) is expected, line
    assert used == set(OPERATORS) | set(COMBINATORS)
    assert rows >= 20
