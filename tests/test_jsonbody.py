"""Exact JSON parsing and body decoding, in process: what the e2e tests show on a server,
checked here over generated documents (the fast paths must never let a duplicate through nor
refuse a clean body)."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import ApiError
from gateway.ingest import jsonbody
from gateway.ingest.body import BodyBudget, Held, decode
from gateway.ingest.validate import MAX_LISTED, Limits, validate_record

# Keys and strings full of what trips naive scanners: colons, quotes, backslashes, spaces.
text = st.text(alphabet=st.sampled_from('ab:" \\\n\t1é'), max_size=8)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(text, c, max_size=3),
    max_leaves=12,
)
records = st.fixed_dictionaries(
    {"group_key": st.just("demo"), "data": st.dictionaries(text, values)}
)
bodies = records | st.fixed_dictionaries({"records": st.lists(records, max_size=3)})


def dumps(obj: Any, pretty: bool) -> bytes:
    return json.dumps(obj, indent=1 if pretty else None, ensure_ascii=False).encode()


@given(bodies, st.booleans())
def test_clean_documents_parse_to_what_orjson_reads(doc: Any, pretty: bool) -> None:
    body = dumps(doc, pretty)
    assert jsonbody.loads(body) == orjson.loads(body)


@given(records, text, scalars, st.booleans())
def test_a_duplicated_key_is_always_caught(
    doc: dict[str, Any], key: str, value: Any, pretty: bool
) -> None:
    data = {**doc["data"], key: value}
    body = dumps({"group_key": "demo", "data": data}, pretty)
    # Insert the key a second time as the data object's first member.
    marker = b'"data": {'
    at = body.index(marker) + len(marker)
    dup = json.dumps(key, ensure_ascii=False).encode() + b": 1" + (b", " if data else b"")
    body = body[:at] + dup + body[at:]
    with pytest.raises(ApiError) as exc:
        jsonbody.loads(body)
    assert exc.value.code == "DUPLICATE_KEY"
    field = exc.value.errors[0]["field"]  # type: ignore[index]
    assert field.startswith("data.")


@pytest.mark.parametrize(
    "literal", [b"18446744073709551616", b"-9223372036854775809", b"1" + b"0" * 40]
)
def test_integers_beyond_64_bits_are_refused(literal: bytes) -> None:
    with pytest.raises(ApiError) as exc:
        jsonbody.loads(b'{"records": [{"data": {"x": [1, %s]}}]}' % literal)
    assert exc.value.code == "INTEGER_OUT_OF_RANGE"
    assert exc.value.errors == [
        {"field": "records[0].data.x[1]", "message": "integer out of range"}
    ]


@pytest.mark.parametrize(
    "literal",
    [b"18446744073709551615", b"-9223372036854775808", b"0.12345678901234567890123", b"1e19"],
)
def test_numbers_within_range_or_floats_pass(literal: bytes) -> None:
    assert jsonbody.loads(b'{"x": %s}' % literal) == orjson.loads(b'{"x": %s}' % literal)


def test_malformed_json_is_400() -> None:
    with pytest.raises(ApiError) as exc:
        jsonbody.loads(b'{"a": ')
    assert exc.value.code == "MALFORMED_JSON"


def held(limit: int = 1 << 30) -> Held:
    return Held(BodyBudget(limit))


def test_decode_gzip_multi_member_deflate_and_limits() -> None:
    gz = 16 + zlib.MAX_WBITS
    assert decode(gzip.compress(b"abc") + gzip.compress(b"def"), gz, 100, held()) == b"abcdef"
    assert decode(zlib.compress(b"xyz"), zlib.MAX_WBITS, 100, held()) == b"xyz"
    assert decode(gzip.compress(b"a" * 100), gz, 100, held()) == b"a" * 100
    for bad, code in [
        (gzip.compress(b"a" * 101), "PAYLOAD_TOO_LARGE"),
        (gzip.compress(b"a" * 100)[:-4], "MALFORMED_CONTENT_ENCODING"),
        (b"plain", "MALFORMED_CONTENT_ENCODING"),
    ]:
        with pytest.raises(ApiError) as exc:
            decode(bad, gz, 100, held())
        assert exc.value.code == code


def test_decoded_bytes_count_against_the_budget() -> None:
    h = held(50)
    with pytest.raises(ApiError) as exc:
        decode(gzip.compress(b"a" * 60), 16 + zlib.MAX_WBITS, 100, h)
    assert exc.value.status == 503
    h2 = held(100)
    decode(gzip.compress(b"a" * 60), 16 + zlib.MAX_WBITS, 100, h2)
    assert h2.budget.used == 60
    h2.release()
    assert h2.budget.used == 0


def test_validation_lists_at_most_the_cap_and_counts_all() -> None:
    data = {f"k{i}": {} for i in range(500)}
    _, _, errors = validate_record({"group_key": "demo", "data": data}, Limits())
    assert len(errors) == MAX_LISTED
    assert errors.total == 501
    _, _, errors = validate_record({"group_key": "demo", "data": data}, Limits(), cap=0)
    assert errors == []
    assert errors.total == 501


def test_over_long_unknown_field_names_are_shortened() -> None:
    _, _, errors = validate_record({"group_key": "demo", "data": {}, "x" * 10000: 1}, Limits())
    assert len(errors[0]["field"]) < 40
