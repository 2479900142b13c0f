"""Property tests of the mapping engine: whatever flat data a producer sends, evaluating a
valid source or pipeline raises nothing but MappingError and yields flat values; conditions
never raise; coercion raises nothing but MappingError; parsers raise nothing but SpecErrors."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.mapping.conditions import OPERATORS, parse_condition
from gateway.mapping.errors import MappingError, SpecErrors
from gateway.mapping.fieldtypes import FIELD_TYPES, coerce
from gateway.mapping.sources import MISSING, parse_source
from gateway.mapping.transforms import is_flat, parse_transforms

SETTINGS = settings(
    max_examples=300,
    deadline=None,  # the first phonenumbers / zoneinfo use loads metadata
    suppress_health_check=[HealthCheck.too_slow],
)

ATTRS = ["namn", "epost", "tel", "n", "tags", "datum", "å_ö", "😀"]

# Text that looks like what the transforms parse, so the interesting branches are reached,
# plus arbitrary Unicode (emoji, combining marks, odd whitespace).
looks_like = st.sampled_from(
    [
        "",
        " ",
        "\u00a0",
        "John Doe",
        "Åsa Öberg",
        "JOHN.DOE@Example.com",
        "070-123 45 67",
        "+46701234567",
        "+1 (555) 010-0000",
        "2024-05-01",
        "2024-05-01T12:30:00+02:00",
        "2024-03-31T02:30:00",
        "31/12/2023",
        "1700000000",
        "1700000000123",
        "-0",
        "4.2",
        "1e308",
        "1e999",
        "nan",
        "true",
        "Nej",
        "a,b,,c",
        "TAG1;TAG2",
        "😀👍🏽",
        "A\u030asa",
        "9" * 40,
        "ff" * 32,
    ]
)
text = st.one_of(looks_like, st.text(max_size=30))
scalar = st.one_of(
    text,
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
)
flat_value = st.one_of(scalar, st.lists(scalar, max_size=5))
record = st.dictionaries(st.one_of(st.sampled_from(ATTRS), st.text(max_size=5)), flat_value)

# -- valid transform specs ---------------------------------------------------------------------

_REGEXES = [
    ("\\s+", " "),
    ("[^0-9+]", ""),
    ("(\\w+)@(\\w+)", "\\2 at \\1"),
    ("(?P<first>\\S+)\\s+(?P<rest>.*)", "\\g<rest>, \\g<first>"),
    ("(?i)å|ä", "a"),
    ("^$", "empty"),
    ("x*", "-"),
]
_DATE_INPUTS = ["iso8601", "epoch_s", "epoch_ms", "%d/%m/%Y", "%Y-%m-%d %H:%M", "%d %B %Y"]
_DATE_OUTPUTS = ["iso8601", "epoch_s", "epoch_ms", "%Y-%m-%d", "%d.%m.%Y %H:%M %Z"]
_ZONES = ["UTC", "Europe/Stockholm", "America/New_York", "Pacific/Kiritimati", "Asia/Kolkata"]

transform_spec = st.one_of(
    st.sampled_from(
        [
            "lower",
            "upper",
            "trim",
            "first_word",
            "rest_words",
            "to_string",
            "to_int",
            "to_float",
            "to_bool",
            "sha256",
            "split",
            "e164",
            "date",
        ]
    ),
    st.builds(lambda n: {"truncate": n}, st.integers(0, 20)),
    st.builds(lambda t: {"prefix": t}, text),
    st.builds(lambda t: {"suffix": t}, text),
    st.builds(lambda t: {"join": t}, text),
    st.builds(lambda t: {"split": t}, text.filter(bool)),
    st.builds(lambda r: {"replace": {"pattern": r[0], "with": r[1]}}, st.sampled_from(_REGEXES)),
    st.builds(
        lambda i, o, tz, otz: {"date": {"input": i, "output": o, "tz": tz, "output_tz": otz}},
        st.lists(st.sampled_from(_DATE_INPUTS), min_size=1, max_size=3),
        st.sampled_from(_DATE_OUTPUTS),
        st.sampled_from(_ZONES),
        st.sampled_from(_ZONES),
    ),
    st.builds(lambda r: {"e164": r}, st.sampled_from(["SE", "US", "GB", "IN", "no"])),
    st.builds(lambda m: {"sha256": m}, st.sampled_from(["auto", "email", "phone", "text", "raw"])),
    st.builds(
        lambda table, default: {"lookup": {"table": table, **default}},
        st.dictionaries(
            st.one_of(text, st.integers(-5, 5)).map(str),
            st.one_of(text, st.integers(), st.booleans(), st.none()),
            min_size=1,
            max_size=4,
        ),
        st.one_of(st.just({}), st.builds(lambda d: {"default": d}, scalar)),
    ),
    st.builds(lambda d: {"default": d}, flat_value.filter(lambda v: v is not None)),
)
pipeline_spec = st.lists(transform_spec, max_size=5)

# -- valid source specs ------------------------------------------------------------------------

attr = st.sampled_from(ATTRS)
template = st.lists(
    st.one_of(
        attr.map(lambda a: "{" + a + "}"),
        st.text(max_size=8).map(lambda t: t.replace("{", "{{").replace("}", "}}")),
    ),
    max_size=4,
).map("".join)
base_source = st.one_of(
    st.builds(lambda a: {"path": a}, attr),
    st.builds(lambda v: {"value": v}, flat_value),
    st.builds(lambda t: {"template": t}, template),
    st.builds(lambda a: {"first_of": a}, st.lists(attr, min_size=1, max_size=3)),
)


@st.composite
def source_spec(draw: st.DrawFn) -> Any:
    if draw(st.booleans()):
        return draw(attr)
    spec = dict(draw(base_source))
    if draw(st.booleans()):
        spec["transform"] = draw(pipeline_spec)
    if draw(st.booleans()):
        spec["default"] = draw(flat_value)
    if draw(st.booleans()):
        spec["required"] = draw(st.booleans())
    return spec


def _check_result(value: Any) -> None:
    assert value is MISSING or is_flat(value), value


def _check_error(exc: MappingError, **context: str) -> None:
    # The pipeline's safety net reports unforeseen exceptions as "internal error"; reaching it
    # means a transform has a bug this test should expose.
    assert "internal error" not in exc.message, exc
    for name, expected in context.items():
        assert getattr(exc, name) == expected
    str(exc)


def _check_spec_errors(exc: SpecErrors, prefix: tuple[str, ...]) -> None:
    assert exc.errors
    assert all(e.path[: len(prefix)] == prefix for e in exc.errors)
    str(exc)


@SETTINGS
@given(spec=source_spec(), data=record)
def test_sources_raise_only_mapping_errors(spec: Any, data: dict[str, Any]) -> None:
    source = parse_source(spec)
    try:
        value = source.evaluate(data)
    except MappingError as exc:
        _check_error(exc, source=source.label)
    else:
        _check_result(value)


@SETTINGS
@given(spec=pipeline_spec, value=flat_value)
def test_pipelines_raise_only_mapping_errors(spec: Any, value: Any) -> None:
    pipeline = parse_transforms(spec)
    try:
        result = pipeline.apply(value)
    except MappingError as exc:
        _check_error(exc)
    else:
        _check_result(result)


@SETTINGS
@given(spec=transform_spec, value=flat_value)
def test_each_transform_alone_raises_only_mapping_errors(spec: Any, value: Any) -> None:
    # One transform at a time reaches inputs that a longer pipeline would have rejected earlier.
    try:
        result = parse_transforms([spec]).apply(value)
    except MappingError as exc:
        _check_error(exc)
    else:
        _check_result(result)


# -- conditions --------------------------------------------------------------------------------

op_and_arg = st.one_of(
    st.tuples(st.sampled_from(["eq", "ne"]), flat_value),
    st.tuples(st.sampled_from(["in", "nin"]), st.lists(scalar, min_size=1, max_size=4)),
    st.tuples(
        st.sampled_from(["gt", "gte", "lt", "lte"]),
        st.one_of(text, st.integers(), st.floats(allow_nan=True)),
    ),
    st.tuples(st.just("exists"), st.booleans()),
    st.tuples(
        st.just("regex"),
        st.sampled_from(["^a", "å", "\\d+", "(?i)^true$", "😀", "^$", ".", "(a|b)*c"]),
    ),
)
attribute_condition = st.builds(
    lambda a, ops: {a: dict(ops)},
    attr,
    st.lists(op_and_arg, min_size=1, max_size=3, unique_by=lambda t: t[0]),
)
condition_spec = st.recursive(
    attribute_condition,
    lambda inner: st.one_of(
        st.builds(lambda cs: {"all": cs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda cs: {"any": cs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda c: {"not": c}, inner),
    ),
    max_leaves=6,
)


@SETTINGS
@given(spec=condition_spec, data=record)
def test_conditions_never_raise(spec: Any, data: dict[str, Any]) -> None:
    result = parse_condition(spec).matches(data)
    assert isinstance(result, bool)


@SETTINGS
@given(spec=condition_spec, data=record)
def test_not_is_the_negation(spec: Any, data: dict[str, Any]) -> None:
    assert parse_condition({"not": spec}).matches(data) is not parse_condition(spec).matches(data)


@SETTINGS
@given(
    a=attr, ops=st.lists(op_and_arg, min_size=2, max_size=4, unique_by=lambda t: t[0]), data=record
)
def test_several_operators_mean_all_of_them(
    a: str, ops: list[tuple[str, Any]], data: dict[str, Any]
) -> None:
    together = parse_condition({a: dict(ops)}).matches(data)
    each = [parse_condition({a: {op: arg}}).matches(data) for op, arg in ops]
    assert together is all(each)


def test_every_operator_is_generated() -> None:
    seen: set[str] = set()

    @settings(max_examples=200, deadline=None)
    @given(op_and_arg)
    def collect(pair: tuple[str, Any]) -> None:
        seen.add(pair[0])

    collect()
    assert seen == set(OPERATORS)


# -- field types and parsers -------------------------------------------------------------------


@SETTINGS
@given(value=flat_value, type_name=st.sampled_from(FIELD_TYPES))
def test_coerce_raises_only_mapping_errors(value: Any, type_name: str) -> None:
    try:
        result = coerce(value, type_name, field="f", source="s")
    except MappingError as exc:
        _check_error(exc, field="f", source="s")
    else:
        assert result is None or is_flat(result)


# Arbitrary YAML-shaped values: what a mistyped mapping file can hold.
yaml_value = st.recursive(
    st.one_of(scalar, st.sampled_from(["lower", "join", "date", "eq", "in", "path", "all"])),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.one_of(
                st.sampled_from(
                    ["path", "value", "template", "first_of", "transform", "default", "required"]
                ),
                st.sampled_from(["all", "any", "not", *OPERATORS, "lookup", "table", "replace"]),
                st.sampled_from(["pattern", "with", "input", "output", "tz", "join", "e164"]),
                st.text(max_size=4),
                st.integers(-2, 2),
            ),
            inner,
            max_size=3,
        ),
    ),
    max_leaves=8,
)


@SETTINGS
@given(spec=yaml_value)
def test_parsers_raise_only_spec_errors(spec: Any) -> None:
    for parse in (parse_transforms, parse_source, parse_condition):
        try:
            parse(spec, ("x",))
        except SpecErrors as exc:
            _check_spec_errors(exc, ("x",))
