"""Transforms: every transform on ordinary values, None, empty text, non-ASCII text and lists;
wrong types; spec errors with their key paths; and the error types themselves."""

from __future__ import annotations

import hashlib
import pickle
import re
from pathlib import Path
from typing import Any

import pytest

from gateway.mapping.errors import (
    ErrorCollector,
    MappingError,
    SpecError,
    SpecErrors,
    format_key_path,
)
from gateway.mapping.transforms import (
    FALSE_WORDS,
    TRANSFORMS,
    TRUE_WORDS,
    Pipeline,
    Step,
    normalise_for_hash,
    parse_transforms,
)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "transforms.md"


def run(spec: Any, value: Any) -> Any:
    return parse_transforms(spec).apply(value)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def spec_errors(spec: Any, path: tuple[str | int, ...] = ()) -> list[SpecError]:
    with pytest.raises(SpecErrors) as info:
        parse_transforms(spec, path)
    return info.value.errors


# -- values ----------------------------------------------------------------------------------

CASES = [
    # lower / upper
    ("lower", "HeLLo", "hello"),
    ("lower", "ÅÄÖ ÉÜ", "åäö éü"),
    ("lower", "", ""),
    ("lower", "😀 OK", "😀 ok"),
    ("lower", ["A", None, "Ö"], ["a", None, "ö"]),
    ("upper", "åäö", "ÅÄÖ"),
    ("upper", "straße", "STRASSE"),
    ("upper", [], []),
    # trim
    ("trim", "  hi \t\n", "hi"),
    ("trim", "\u00a0\u2003Åsa\u3000", "Åsa"),  # no-break, em and ideographic spaces
    ("trim", "\ufeff\u200bx\u200b", "x"),  # BOM and zero-width space from pasted text
    ("trim", "   ", ""),
    ("trim", [" a ", " b"], ["a", "b"]),
    ("trim", "a  b", "a  b"),
    # first_word / rest_words
    ("first_word", "John Doe", "John"),
    ("first_word", "  Åsa-Britt   Öberg ", "Åsa-Britt"),
    ("first_word", "Anna\u00a0Lind", "Anna"),  # no-break space separates words
    ("first_word", "", ""),
    ("first_word", "   ", ""),
    ("first_word", "Madonna", "Madonna"),
    ("first_word", ["John Doe", "Åke Ström"], ["John", "Åke"]),
    ("rest_words", "John Doe", "Doe"),
    ("rest_words", "John  van\tder Berg ", "van der Berg"),
    ("rest_words", "Zoë\u2003Ünal 😀", "Ünal 😀"),
    ("rest_words", "Madonna", ""),
    ("rest_words", "", ""),
    ("rest_words", ["A B", "C"], ["B", ""]),
    # truncate
    ({"truncate": 3}, "abcdef", "abc"),
    ({"truncate": 3}, "åäöü", "åäö"),
    ({"truncate": 2}, "😀😁😂", "😀😁"),  # characters, not bytes
    ({"truncate": 10}, "short", "short"),
    ({"truncate": 0}, "abc", ""),
    ({"truncate": 2}, ["abc", "d"], ["ab", "d"]),
    # prefix / suffix
    ({"prefix": "ORD-"}, "123", "ORD-123"),
    ({"prefix": "ORD-"}, 123, "ORD-123"),
    ({"prefix": "ö-"}, "å", "ö-å"),
    ({"prefix": "x"}, "", ""),  # no value stays no value
    ({"prefix": 46}, "70", "4670"),
    ({"suffix": " AB"}, "Acme", "Acme AB"),
    ({"suffix": "!"}, ["a", "", None], ["a!", "", None]),
    ({"suffix": "🎉"}, 1.5, "1.5🎉"),
    # replace
    ({"replace": {"pattern": "\\s+", "with": " "}}, "a \t b\n c", "a b c"),
    ({"replace": {"pattern": "[^0-9]"}}, "070-123 45", "07012345"),  # with defaults to ""
    ({"replace": {"pattern": "(\\w+)@(\\w+)", "with": "\\2 at \\1"}}, "me@host", "host at me"),
    ({"replace": {"pattern": "(?P<d>\\d)", "with": "<\\g<d>>"}}, "a1", "a<1>"),
    ({"replace": {"pattern": "(?i)ö", "with": "oe"}}, "Öland ö", "oeland oe"),
    ({"replace": {"pattern": "x"}}, "", ""),
    ({"replace": {"pattern": "a", "with": "b"}}, ["aa", "ca"], ["bb", "cb"]),
    # split / join
    ("split", "a,b,,c", ["a", "b", "", "c"]),
    ({"split": ";"}, "x;å;😀", ["x", "å", "😀"]),
    ({"split": " | "}, "a | b", ["a", "b"]),
    ("split", "", []),
    ("split", ["a,b", None, "c"], ["a", "b", "c"]),  # lists: split each item and flatten
    ({"join": ";"}, ["TAG1", "TAG2"], "TAG1;TAG2"),
    ({"join": ", "}, ["å", 1, 2.5, True, None], "å, 1, 2.5, true"),
    ({"join": ";"}, [], ""),
    ({"join": ";"}, "single", "single"),  # a single value is a one-item list
    ({"join": ";"}, 7, "7"),
    ({"join": ""}, ["a", "b"], "ab"),
    # to_string
    ("to_string", 42, "42"),
    ("to_string", -1.5, "-1.5"),
    ("to_string", True, "true"),
    ("to_string", False, "false"),
    ("to_string", "åäö", "åäö"),
    ("to_string", [1, None, False], ["1", None, "false"]),
    # to_int
    ("to_int", "42", 42),
    ("to_int", " -7 ", -7),
    ("to_int", "+3", 3),
    ("to_int", "42.0", 42),
    ("to_int", "1e3", 1000),
    ("to_int", 4.0, 4),
    ("to_int", 12, 12),
    ("to_int", "", None),
    ("to_int", "  ", None),
    ("to_int", ["1", 2, None], [1, 2, None]),
    # to_float
    ("to_float", "4.2", 4.2),
    ("to_float", " -1e3 ", -1000.0),
    ("to_float", ".5", 0.5),
    ("to_float", 3, 3.0),
    ("to_float", "", None),
    ("to_float", ["1", 2.5], [1.0, 2.5]),
    # to_bool
    ("to_bool", "true", True),
    ("to_bool", " YES ", True),
    ("to_bool", "Ja", True),
    ("to_bool", "nej", False),
    ("to_bool", "off", False),
    ("to_bool", "0", False),
    ("to_bool", 1, True),
    ("to_bool", 0, False),
    ("to_bool", False, False),
    ("to_bool", "", None),
    ("to_bool", ["y", "n", None], [True, False, None]),
    # lookup
    ({"lookup": {"table": {"S": "small", "M": "medium"}}}, "S", "small"),
    ({"lookup": {"table": {"S": "small"}, "default": "other"}}, "XL", "other"),
    ({"lookup": {"table": {"S": "small"}, "default": None}}, "XL", None),
    ({"lookup": {"table": {1: "one", 2: "two"}}}, "1", "one"),  # keys compare as text
    ({"lookup": {"table": {"1": "one"}}}, 1, "one"),
    ({"lookup": {"table": {True: "yes"}}}, True, "yes"),
    ({"lookup": {"table": {"Göteborg": "GOT", "😀": 1}}}, "😀", 1),
    ({"lookup": {"table": {"": "blank"}}}, "", "blank"),
    ({"lookup": {"table": {"a": "A"}, "default": "?"}}, ["a", "b", None], ["A", "?", None]),
    # default
    ({"default": "unknown"}, None, "unknown"),
    ({"default": "unknown"}, "", "unknown"),
    ({"default": "unknown"}, "  ", "unknown"),
    ({"default": "unknown"}, [], "unknown"),
    ({"default": "unknown"}, "Åsa", "Åsa"),
    ({"default": 0}, 0, 0),  # zero and false are values, not blanks
    ({"default": True}, False, False),
    ({"default": ["a"]}, None, ["a"]),
    # sha256
    ("sha256", "  John.Doe@Example.COM ", sha("john.doe@example.com")),
    ("sha256", "+46 70-123 45 67", sha("46701234567")),
    ("sha256", "(070) 123.45/67", sha("0701234567")),
    ("sha256", 46701234567, sha("46701234567")),
    ("sha256", " Åsa ", sha("åsa")),
    ("sha256", "A\u030asa", sha("åsa")),  # decomposed å hashes like the composed one
    ("sha256", "Zoë 😀", sha("zoë 😀")),
    ("sha256", "12345", sha("12345")),
    ("sha256", "", None),
    ("sha256", "   ", None),
    ("sha256", sha("x").upper(), sha("x")),  # already hashed: kept, not hashed again
    ("sha256", ["a@B.se", None], [sha("a@b.se"), None]),
    ({"sha256": "email"}, " X@Y.Z ", sha("x@y.z")),
    ({"sha256": "phone"}, "+46 (0)70", sha("46070")),
    ({"sha256": "text"}, " Åsa 070-1234567 ", sha("åsa 070-1234567")),
    ({"sha256": "raw"}, " A ", sha(" A ")),
    ({"sha256": "raw"}, sha("x"), sha(sha("x"))),
    # e164
    ({"e164": "SE"}, "070-123 45 67", "+46701234567"),
    ({"e164": "se"}, "0701234567", "+46701234567"),
    ({"e164": "SE"}, "+47 412 34 567", "+4741234567"),  # an international number ignores region
    ({"e164": "SE"}, 701234567, "+46701234567"),
    ({"e164": "SE"}, "", None),
    ({"e164": "SE"}, ["0701234567", None], ["+46701234567", None]),
    ("e164", "+46 70 123 45 67", "+46701234567"),
    ({"e164": "SE"}, "٠٧٠١٢٣٤٥٦٧", "+46701234567"),  # Arabic-Indic digits
    # date
    ("date", "2024-05-01T12:30:00Z", "2024-05-01T12:30:00+00:00"),
    ("date", "2024-05-01", "2024-05-01T00:00:00+00:00"),
    ({"date": {"tz": "Europe/Stockholm"}}, "2024-07-01T12:00:00", "2024-07-01T12:00:00+02:00"),
    ({"date": {"tz": "Europe/Stockholm"}}, "2024-01-15T12:00:00", "2024-01-15T12:00:00+01:00"),
    (
        {"date": {"tz": "Europe/Stockholm"}},
        "2024-07-01T12:00:00+00:00",  # aware input: converted, not reinterpreted
        "2024-07-01T14:00:00+02:00",
    ),
    (
        {"date": {"input": "%d/%m/%Y %H:%M", "tz": "Europe/Stockholm", "output_tz": "UTC"}},
        "01/07/2024 00:30",
        "2024-06-30T22:30:00+00:00",
    ),
    (
        {"date": {"input": ["%d/%m/%Y", "iso8601"], "output": "%Y-%m-%d"}},
        "31/12/2023",
        "2023-12-31",
    ),
    (
        {"date": {"input": ["%d/%m/%Y", "iso8601"], "output": "%Y-%m-%d"}},
        "2023-12-31",
        "2023-12-31",
    ),
    ({"date": {"input": "epoch_s"}}, 1700000000, "2023-11-14T22:13:20+00:00"),
    ({"date": {"input": "epoch_s"}}, "1700000000", "2023-11-14T22:13:20+00:00"),
    ({"date": {"input": "epoch_s"}}, 1700000000.5, "2023-11-14T22:13:20.500000+00:00"),
    ({"date": {"input": "epoch_ms"}}, 1700000000123, "2023-11-14T22:13:20.123000+00:00"),
    ({"date": {"input": "epoch_ms"}}, -1000, "1969-12-31T23:59:59+00:00"),
    ({"date": {"output": "epoch_s"}}, "2023-11-14T22:13:20.9Z", 1700000000),
    ({"date": {"output": "epoch_ms"}}, "2023-11-14T23:13:20.123+01:00", 1700000000123),
    ({"date": {"input": "%d %B %Y", "output": "%Y-%m-%d"}}, "3 March 2024", "2024-03-03"),
    ({"date": {"output": "%d.%m.%Y kl. %H:%M"}}, "2024-05-01T08:05:00Z", "01.05.2024 kl. 08:05"),
    ("date", "", None),
    ("date", ["2024-05-01", None], ["2024-05-01T00:00:00+00:00", None]),
]


@pytest.mark.parametrize(("spec", "value", "expected"), CASES)
def test_transform_values(spec: Any, value: Any, expected: Any) -> None:
    result = run(spec, value)
    assert result == expected
    assert type(result) is type(expected)  # e.g. 42 and not 42.0, True and not 1


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_none_passes_through_every_transform_but_default(name: str) -> None:
    spec = TRANSFORMS[name].example
    if name == "default":
        assert run(spec, None) == "unknown"
    else:
        assert run(spec, None) is None


def test_every_transform_is_covered_by_value_cases() -> None:
    covered = {next(iter(s)) if isinstance(s, dict) else s for s, _, _ in CASES}
    assert covered == set(TRANSFORMS)


def test_pipeline_applies_in_order() -> None:
    assert run(["trim", "lower", {"prefix": "x-"}], "  ÅB ") == "x-åb"
    assert run([{"prefix": "x-"}, "upper"], "åb") == "X-ÅB"
    assert run([{"split": ";"}, "trim", "lower", {"join": ","}], " A ; Ö ;c") == "a,ö,c"
    assert run([{"default": "SE"}, "lower"], None) == "se"


def test_single_transform_without_list_and_none_spec() -> None:
    assert run("upper", "a") == "A"
    assert run({"join": "-"}, ["a", "b"]) == "a-b"
    assert parse_transforms(None).apply("x") == "x"
    assert parse_transforms([]).apply("x") == "x"
    assert not parse_transforms(None)
    assert parse_transforms(["lower", {"join": ";"}]).names == ("lower", "join")


def test_null_argument_to_a_transform_without_one_is_accepted() -> None:
    # `- lower:` in YAML reads as {lower: None}
    assert run([{"lower": None}], "A") == "a"


def test_lists_from_split_feed_item_transforms() -> None:
    assert run([{"split": ","}, "trim", {"e164": "SE"}], "0701234567, 0709876543") == [
        "+46701234567",
        "+46709876543",
    ]


def test_to_bool_words_are_disjoint_and_each_parses() -> None:
    assert not TRUE_WORDS & FALSE_WORDS
    for word in TRUE_WORDS:
        assert run("to_bool", word.upper()) is True
    for word in FALSE_WORDS:
        assert run("to_bool", word.title()) is False


def test_default_list_is_a_fresh_copy() -> None:
    pipeline = parse_transforms({"default": ["a"]})
    first = pipeline.apply(None)
    first.append("changed")
    assert pipeline.apply(None) == ["a"]


def test_date_dst_gap_and_fold_do_not_crash() -> None:
    spec = {"date": {"tz": "Europe/Stockholm"}}
    # 02:30 on 2024-03-31 does not exist in Stockholm; zoneinfo picks the earlier offset.
    assert run(spec, "2024-03-31T02:30:00") == "2024-03-31T02:30:00+01:00"
    assert run(spec, "2024-10-27T02:30:00") == "2024-10-27T02:30:00+02:00"


def test_normalise_for_hash_modes() -> None:
    assert normalise_for_hash(" A@B.SE ") == "a@b.se"
    assert normalise_for_hash("+46 70 123 45 67") == "46701234567"
    assert (
        normalise_for_hash("\uff11\uff12\uff13\uff14\uff15\uff16\uff17", "phone") == "1234567"
    )  # full-width digits
    assert normalise_for_hash("Åsa") == "åsa"
    assert normalise_for_hash("   ") is None
    assert normalise_for_hash(" X ", "raw") == " X "


# -- wrong types and bad values ----------------------------------------------------------------

FAILURES = [
    ("lower", 42, "lower expects text, got a number"),
    ("upper", True, "upper expects text, got a boolean"),
    ("trim", ["a", 1], "trim expects text, got a number"),
    ("first_word", 3.5, "first_word expects text"),
    ("rest_words", [["nested"]], "rest_words expects text, got a list"),
    ({"truncate": 2}, 12345, "truncate expects text"),
    ({"prefix": "x"}, True, "prefix expects text or a number, got a boolean"),
    ({"suffix": "x"}, {"a": 1}, "suffix expects text or a number, got an object"),
    ({"replace": {"pattern": "a"}}, 1, "replace expects text"),
    ("split", 12, "split expects text, got a number"),
    ("split", ["a", 1], "split expects text, got a number"),
    ({"join": ";"}, ["a", ["b"]], "join expects a list of text or numbers"),
    ({"join": ";"}, {"a": 1}, "join expects a list"),
    ("to_string", {"a": 1}, "to_string expects text, a number or a boolean"),
    ("to_int", "4.2", "to_int: not a whole number"),
    ("to_int", "abc", "to_int: not a whole number"),
    ("to_int", "1_000", "to_int: not a whole number"),
    ("to_int", 4.5, "to_int: not a whole number"),
    ("to_int", True, "to_int expects a number or text, got a boolean"),
    ("to_int", "٤٢", "to_int: not a whole number"),  # non-ASCII digits are not read as numbers
    ("to_float", "4,2", "to_float: not a decimal number"),
    ("to_float", "nan", "to_float: not a decimal number"),
    ("to_float", "1e999", "to_float: not a decimal number"),
    ("to_float", False, "to_float expects a number or text, got a boolean"),
    ("to_float", 10**400, "to_float: number too large"),
    ("to_bool", "maybe", "to_bool: not a boolean word"),
    ("to_bool", 2, "to_bool: only the numbers 1 and 0"),
    ("to_bool", 1.0, "to_bool: only the numbers 1 and 0"),
    ("to_bool", [None, "x"], "to_bool: not a boolean word"),
    ({"lookup": {"table": {"a": 1}}}, "b", "lookup: not in the table and no default"),
    ({"lookup": {"table": {"a": 1}}}, ["a", "c"], "lookup: not in the table"),
    ({"lookup": {"table": {"a": 1}}}, {"x": 1}, "lookup expects text or a number, got an object"),
    ("sha256", 1.5, "sha256 expects text or a whole number, got a number"),
    ("sha256", True, "sha256 expects text or a whole number, got a boolean"),
    ({"sha256": "phone"}, "no digits", "sha256: a phone number needs digits"),
    ({"e164": "SE"}, "not a phone", "e164: not a phone number"),
    ({"e164": "SE"}, "12", "e164: not a"),
    ({"e164": "SE"}, "+46 70 12", "e164: not a valid phone number"),
    ("e164", "0701234567", "e164: not a phone number (no country code"),
    ({"e164": "SE"}, True, "e164 expects text or a number, got a boolean"),
    ({"e164": "SE"}, "1" * 300, "e164: not a phone number"),
    ("date", "01/02/2024", "date: does not match any input format (iso8601)"),
    ("date", "2024-13-01", "date: does not match any input format"),
    ("date", 1700000000, "date: a number needs input epoch_s or epoch_ms"),
    ("date", True, "date expects text or a number, got a boolean"),
    ({"date": {"input": "epoch_s"}}, 10**20, "date: epoch_s timestamp out of range"),
    ({"date": {"input": "epoch_ms"}}, "9" * 30, "date: epoch_ms timestamp out of range"),
    ({"date": {"input": "epoch_s"}}, "soon", "date: does not match any input format"),
    ({"date": {"output_tz": "Pacific/Kiritimati"}}, "9999-12-31T23:00:00", "date: out of range"),
]


@pytest.mark.parametrize(("spec", "value", "message"), FAILURES)
def test_transform_failures_are_mapping_errors(spec: Any, value: Any, message: str) -> None:
    with pytest.raises(MappingError) as info:
        run(spec, value)
    assert message in info.value.message
    assert info.value.value is not None  # the offending value is named


def test_failure_names_the_item_not_the_whole_list() -> None:
    with pytest.raises(MappingError) as info:
        run("lower", ["ok", 7])
    assert info.value.value == "7"


def test_pipeline_turns_unexpected_exceptions_into_mapping_errors() -> None:
    def broken(value: Any) -> Any:
        raise ZeroDivisionError("boom")

    pipeline = Pipeline([Step("lower", "lower", str.lower), Step("odd", "odd", broken)])
    with pytest.raises(MappingError) as info:
        pipeline.apply("ABC")
    assert "odd: internal error: ZeroDivisionError: boom" in str(info.value)
    assert info.value.value == "'abc'"


# -- spec errors -----------------------------------------------------------------------------

P = ("fields", "firstname", "transform")

SPEC_ERRORS = [
    (["lowr"], (*P, 0), "unknown transform 'lowr' (did you mean 'lower'?)"),
    (["upper", "nosuch"], (*P, 1), "unknown transform 'nosuch'"),
    ([42], (*P, 0), "a transform is a name"),
    ([{"join": ";", "lower": None}], (*P, 0), "got keys 'join', 'lower'"),
    ([{}], (*P, 0), "got keys none"),
    ([{1: "x"}], (*P, 0), "a transform name must be text"),
    ([{"lower": True}], (*P, 0, "lower"), "lower takes no argument"),
    (["join"], (*P, 0), "join needs an argument, e.g. {join: ';'}"),
    ([{"join": None}], (*P, 0), "join needs an argument"),
    ([{"join": 5}], (*P, 0, "join"), "join needs a separator text"),
    ([{"split": ""}], (*P, 0, "split"), "split needs a non-empty separator"),
    ([{"split": ["a"]}], (*P, 0, "split"), "split needs a non-empty separator"),
    ([{"truncate": -1}], (*P, 0, "truncate"), "truncate needs a whole number"),
    ([{"truncate": "10"}], (*P, 0, "truncate"), "truncate needs a whole number"),
    ([{"truncate": True}], (*P, 0, "truncate"), "truncate needs a whole number"),
    ([{"prefix": ["a"]}], (*P, 0, "prefix"), "prefix needs text"),
    ([{"suffix": True}], (*P, 0, "suffix"), "suffix needs text"),
    (["replace"], (*P, 0), "replace needs an argument"),
    ([{"replace": "a"}], (*P, 0, "replace"), "replace needs {pattern"),
    ([{"replace": {"with": "x"}}], (*P, 0, "replace", "pattern"), "replace needs a pattern"),
    ([{"replace": {"pattern": "("}}], (*P, 0, "replace", "pattern"), "invalid regular expression"),
    (
        [{"replace": {"pattern": "a", "with": 1}}],
        (*P, 0, "replace", "with"),
        "replace 'with' must be text",
    ),
    ([{"replace": {"pattern": "a", "with": "\\1"}}], (*P, 0, "replace", "with"), "invalid group"),
    (
        [{"replace": {"pattern": "(?P<x>a)", "with": "\\g<y>"}}],
        (*P, 0, "replace", "with"),
        "invalid replacement",
    ),
    (
        [{"replace": {"pattern": "a", "whit": "b"}}],
        (*P, 0, "replace", "whit"),
        "unknown key 'whit' for replace; allowed: pattern, with (did you mean 'with'?)",
    ),
    ([{"date": "%Y"}], (*P, 0, "date"), "date needs {input"),
    ([{"date": {"tz": "Mars/Olympus"}}], (*P, 0, "date", "tz"), "unknown time zone"),
    ([{"date": {"tz": 1}}], (*P, 0, "date", "tz"), "time zone must be an IANA name"),
    ([{"date": {"output_tz": "Nowhere"}}], (*P, 0, "date", "output_tz"), "unknown time zone"),
    ([{"date": {"output": "yyyy-MM-dd"}}], (*P, 0, "date", "output"), "has no % directives"),
    ([{"date": {"output": 5}}], (*P, 0, "date", "output"), "output must be a format"),
    ([{"date": {"input": "%Q-%d"}}], (*P, 0, "date", "input"), "invalid date format"),
    ([{"date": {"input": ["iso8601", "%Y-%"]}}], (*P, 0, "date", "input", 1), "invalid date"),
    ([{"date": {"input": [3]}}], (*P, 0, "date", "input", 0), "an input format must be text"),
    ([{"date": {"input": []}}], (*P, 0, "date", "input"), "non-empty list of formats"),
    ([{"date": {"inputs": "iso8601"}}], (*P, 0, "date", "inputs"), "did you mean 'input'?"),
    ([{"e164": "XX"}], (*P, 0, "e164"), "unknown phone region 'XX'"),
    ([{"e164": 46}], (*P, 0, "e164"), "unknown phone region 46"),
    ([{"e164": False}], (*P, 0, "e164"), 'must be quoted text (YAML read it as false): "NO"'),
    ([{"sha256": "md5"}], (*P, 0, "sha256"), "sha256 takes one of auto, email, phone, text, raw"),
    (["lookup"], (*P, 0), "lookup needs an argument"),
    ([{"lookup": {"a": "b"}}], (*P, 0, "lookup"), "lookup needs {table"),
    ([{"lookup": {"table": {}}}], (*P, 0, "lookup", "table"), "non-empty mapping"),
    ([{"lookup": {"table": ["a"]}}], (*P, 0, "lookup", "table"), "non-empty mapping"),
    ([{"lookup": {"table": {None: "x"}}}], (*P, 0, "lookup", "table", "None"), "null is never"),
    ([{"lookup": {"table": {1: "x", "1": "y"}}}], (*P, 0, "lookup", "table", "1"), "twice"),
    ([{"lookup": {"table": {"a": ["x"]}}}], (*P, 0, "lookup", "table", "a"), "a table value"),
    ([{"lookup": {"table": {"a": 1}, "default": [1]}}], (*P, 0, "lookup", "default"), "default"),
    ([{"lookup": {"table": {"a": 1}, "deflt": 1}}], (*P, 0, "lookup", "deflt"), "unknown key"),
    (["default"], (*P, 0), "default needs an argument"),
    ([{"default": {"a": 1}}], (*P, 0, "default"), "default needs a value"),
    ("lowr", P, "unknown transform 'lowr'"),  # a single transform, not in a list
]


@pytest.mark.parametrize(("spec", "path", "message"), SPEC_ERRORS)
def test_spec_errors_name_their_key_path(spec: Any, path: tuple[Any, ...], message: str) -> None:
    errors = spec_errors(spec, P)
    assert len(errors) == 1, errors
    assert errors[0].path == path
    assert message in errors[0].message


def test_all_spec_errors_are_reported_together() -> None:
    spec = [
        "lowr",
        "trim",
        {"join": 1},
        {"replace": {"pattern": "(", "with": 2}},
        {"date": {"tz": "X/Y", "output": "dd"}},
    ]
    errors = spec_errors(spec, P)
    assert [e.path for e in errors] == [
        (*P, 0),
        (*P, 2, "join"),
        (*P, 3, "replace", "with"),
        (*P, 3, "replace", "pattern"),
        (*P, 4, "date", "output"),
        (*P, 4, "date", "tz"),
    ]


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_every_example_is_a_valid_spec(name: str) -> None:
    info = TRANSFORMS[name]
    assert parse_transforms(info.example).names == (name,)
    assert info.summary


def test_docs_describe_every_transform() -> None:
    text = DOCS.read_text(encoding="utf-8")
    headings = set(re.findall(r"^### `([a-z0-9_]+)`", text, flags=re.MULTILINE))
    assert set(TRANSFORMS) <= headings


def doc_examples(text: str) -> list[tuple[str, Any, list[tuple[str, str]]]]:
    """``(section, yaml block, [(left cell, right cell), ...])`` for each YAML example of the
    docs and the two-column table rows that follow it."""
    import yaml

    out: list[tuple[str, Any, list[tuple[str, str]]]] = []
    section = ""
    lines = iter(text.splitlines())
    for line in lines:
        if line.startswith("#"):
            section = line.lstrip("#").strip().strip("`")
        elif line.strip() == "```yaml":
            block = []
            for inner in lines:
                if inner.strip() == "```":
                    break
                block.append(inner)
            out.append((section, yaml.safe_load("\n".join(block)), []))
        elif line.startswith("| ") and out:
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            if len(cells) == 2 and not cells[0].startswith("---"):
                out[-1][2].append((cells[0], cells[1]))
    return out


def _json_cell(cell: str) -> Any:
    """The JSON value of a cell that is exactly one `code` span, else a marker to skip."""
    import json

    match = re.fullmatch(r"`([^`]*)`", cell)
    if match is None:
        return _SKIP
    try:
        return json.loads(match.group(1))
    except ValueError:
        return _SKIP


_SKIP = object()


def test_docs_transform_examples_give_the_documented_output() -> None:
    """Each transform's YAML example, run on every input of the table below it."""
    from gateway.mapping.sources import MISSING, parse_source

    checked: set[str] = set()
    rows_checked = 0
    for section, block, rows in doc_examples(DOCS.read_text(encoding="utf-8")):
        if section not in TRANSFORMS or not isinstance(block, dict) or len(block) != 1:
            continue
        (spec,) = block.values()
        source = parse_source(spec)
        checked.update(source.pipeline.names)
        (attribute,) = source.attributes
        for left, right in rows:
            value = {} if left == "missing" else {attribute: _json_cell(left)}
            if value.get(attribute) is _SKIP:
                continue
            rows_checked += 1
            if right.startswith("error"):
                with pytest.raises(MappingError) as info:
                    source.evaluate(value)
                assert right.removeprefix("error").strip(": ") in info.value.message
                continue
            expected = _json_cell(right)
            assert expected is not _SKIP, (section, left, right)
            result = source.evaluate(value)
            assert result is not MISSING
            assert result == expected, (section, left)
    assert checked == set(TRANSFORMS)
    assert rows_checked >= 2 * len(TRANSFORMS)


# -- the error types ---------------------------------------------------------------------------


def test_mapping_error_names_everything_and_truncates_the_value() -> None:
    err = MappingError("not a number", value="x" * 500, source="namn")
    err.with_context(field="firstname", source="other", integration="crm")
    assert err.source == "namn"  # set closer to the failure: kept
    assert err.field == "firstname"
    assert len(err.value or "") == 100
    assert err.value is not None
    assert err.value.endswith("...")
    text = str(err)
    assert "integration 'crm'" in text
    assert "field 'firstname'" in text
    assert "source 'namn'" in text
    assert "'xxx" in text
    assert text.endswith(": not a number")
    assert err.to_dict()["message"] == "not a number"


def test_mapping_error_without_value_or_context() -> None:
    err = MappingError("required attribute is missing")
    assert err.value is None
    assert str(err) == "required attribute is missing"
    assert MappingError("m", value=None).value == "None"  # an explicit null is a value


def test_errors_pickle() -> None:
    err = MappingError("bad", value=[1], field="f", source="s", integration="i")
    copy = pickle.loads(pickle.dumps(err))
    assert copy.to_dict() == err.to_dict()
    errors = SpecErrors([SpecError(("a", 0), "m")])
    assert pickle.loads(pickle.dumps(errors)).errors == errors.errors


def test_spec_error_paths_and_prefixes() -> None:
    err = SpecError(["transform", 0, "join"], "bad")
    assert str(err) == "transform[0].join: bad"
    assert err.prefixed(("integrations", 2, "fields", "tags")).path == (
        "integrations",
        2,
        "fields",
        "tags",
        "transform",
        0,
        "join",
    )
    from_generator = SpecError((k for k in ("a", 1)), "m")
    assert from_generator.path == ("a", 1)
    assert from_generator.args == (("a", 1), "m")
    assert format_key_path(()) == "(top level)"
    assert format_key_path([0, "a"]) == "[0].a"
    many = SpecErrors([SpecError(("a",), "one"), SpecError(("b",), "two")])
    assert str(many) == "2 errors:\n  a: one\n  b: two"
    assert [e.path for e in many.prefixed(["x"])] == [("x", "a"), ("x", "b")]


def test_error_collector_gathers_from_parsers() -> None:
    errors = ErrorCollector()
    assert errors.collect(parse_transforms, ["lowr"], ("f1",)) is None
    assert errors.collect(parse_transforms, ["lower"], ("f2",)) is not None
    assert errors.collect(parse_transforms, [{"join": 1}], ("f3",)) is None
    errors.add(("other",), "custom")
    with pytest.raises(SpecErrors) as info:
        errors.raise_if_any()
    assert [e.path[0] for e in info.value] == ["f1", "f3", "other"]
    ErrorCollector().raise_if_any()  # nothing recorded: no exception
