"""Flat-data validation: every offending attribute is named; valid data always passes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.ingest.validate import Limits, validate_data, validate_record

LIMITS = Limits(max_attributes=5, max_key_length=10, max_value_length=20, max_list_items=3)


def fields(errors: list[dict[str, str]]) -> list[str]:
    return [e["field"] for e in errors]


def test_flat_record_is_valid() -> None:
    data = {"epost": "a@b.se", "n": 1, "f": 1.5, "ok": True, "none": None}
    assert validate_record({"group_key": "demo", "data": data}, LIMITS) == ("demo", data, [])


def test_every_offending_attribute_is_named() -> None:
    data = {
        "address": {"street": "x"},
        "tags": ["a", {"b": 1}, ["c"]],
        "fine": "yes",
        "long": "x" * 21,
    }
    errors = validate_data(data, LIMITS)
    assert fields(errors) == ["data.address", "data.tags[1]", "data.tags[2]", "data.long"]
    assert errors[0]["message"] == "nested objects are not supported"
    assert "not an object" in errors[1]["message"]
    assert "not a list" in errors[2]["message"]


def test_limits_are_enforced_and_named() -> None:
    too_many = {f"k{i}": i for i in range(6)}
    assert fields(validate_data(too_many, LIMITS)) == ["data"]
    long_key = {"k" * 11: 1}
    err = validate_data(long_key, LIMITS)
    assert "11 characters" in err[0]["message"]
    long_list = {"l": [1, 2, 3, 4]}
    assert "4 items" in validate_data(long_list, LIMITS)[0]["message"]
    long_item = {"l": ["x" * 21]}
    assert fields(validate_data(long_item, LIMITS)) == ["data.l[0]"]
    assert fields(validate_data({"": 1}, LIMITS)) == ["data."]


def test_non_ascii_is_counted_in_characters() -> None:
    assert validate_data({"namn": "å" * 20}, LIMITS) == []
    assert validate_data({"namn": "😀" * 21}, LIMITS) != []


def test_record_shape_errors() -> None:
    g, _, errors = validate_record({"data": {}, "extra": 1}, LIMITS)
    assert g is None
    assert sorted(fields(errors)) == ["extra", "group_key"]
    _, _, errors = validate_record({"group_key": "../etc/passwd", "data": {}}, LIMITS)
    assert fields(errors) == ["group_key"]
    _, _, errors = validate_record({"group_key": "demo"}, LIMITS)
    assert fields(errors) == ["data"]
    _, _, errors = validate_record({"group_key": "demo", "data": [1]}, LIMITS)
    assert errors == [{"field": "data", "message": "must be an object, not a list"}]
    _, _, errors = validate_record([], LIMITS)
    assert "must be an object" in errors[0]["message"]


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
flat_values = scalars | st.lists(scalars, max_size=3)
json_values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=10,
)


@given(st.dictionaries(st.text(min_size=1, max_size=10), flat_values, max_size=5))
def test_any_flat_data_within_limits_passes(data: dict) -> None:
    assert validate_data(data, LIMITS) == []


@given(st.dictionaries(st.text(max_size=12), json_values, max_size=8))
def test_validator_names_exactly_the_non_flat_attributes(data: dict) -> None:
    errors = validate_data(data, Limits())
    bad = set()
    for k, v in data.items():
        if k == "" or isinstance(v, dict):
            bad.add(f"data.{k}")
        if isinstance(v, list):
            bad.update(f"data.{k}[{i}]" for i, x in enumerate(v) if isinstance(x, dict | list))
    assert set(fields(errors)) == bad


@given(
    st.dictionaries(
        st.text(max_size=12),
        json_values | st.text(max_size=25) | st.lists(scalars | st.text(max_size=25), max_size=5),
        max_size=7,
    ),
    st.sampled_from(["demo", "", "bad key", 7, None]),
)
def test_fast_path_agrees_with_the_full_walk(data: dict, group_key: object) -> None:
    # Valid records skip the walk that names problems; they must be exactly the records
    # that walk finds nothing in (LIMITS is small, so limits are hit often).
    from gateway.ingest.validate import Problems, _clean, _walk

    full = _walk(data, LIMITS, "data", Problems()).total
    assert _clean(data, LIMITS) == (full == 0)
    key, _, errors = validate_record({"group_key": group_key, "data": data}, LIMITS)
    assert errors.total == full + (0 if group_key == "demo" else 1)
    assert key == (group_key if group_key == "demo" else None)
