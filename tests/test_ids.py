"""Record and delivery ids: time-ordered, unique."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway import ids


@given(st.integers(min_value=0, max_value=2**48 - 1), st.integers(min_value=0, max_value=2**48 - 2))
def test_ids_order_by_their_millisecond(a: int, b: int) -> None:
    ia, ib = ids.time_id(a), ids.time_id(b)
    assert len(ia) == len(ib) == 32
    assert int(ia[:12], 16) == a
    if a < b:
        assert ia < ib


def test_ids_are_unique_and_prefixed() -> None:
    assert len({ids.record_id() for _ in range(10_000)}) == 10_000
    assert ids.record_id().startswith("rec_")
    assert ids.delivery_id().startswith("dlv_")
