"""Retry policy and circuit breaker: the pure logic, with a fake clock."""

from __future__ import annotations

import email.utils
import random

from hypothesis import given
from hypothesis import strategies as st

from gateway.delivery import policy
from gateway.delivery.breaker import BreakerState, CircuitBreaker
from gateway.mapping.options import BreakerOptions, RetryOptions

RETRY = RetryOptions(base=1, cap=600, max_attempts=30, max_age=86400)


@given(st.integers(min_value=1, max_value=200), st.integers(min_value=0, max_value=2**32))
def test_backoff_is_full_jitter_under_the_capped_exponential(attempts: int, seed: int) -> None:
    wait = policy.backoff(attempts, RETRY, random.Random(seed))
    assert 0 <= wait <= min(600, 2 ** (attempts - 1))


def test_backoff_spreads_over_its_whole_range() -> None:
    rng = random.Random(1)
    waits = [policy.backoff(5, RETRY, rng) for _ in range(2000)]  # ceiling 16 s
    assert min(waits) < 1.6
    assert max(waits) > 14.4  # not a fixed fraction: full jitter


def test_retry_after_seconds_and_http_date() -> None:
    now = 1_800_000_000.0
    assert policy.parse_retry_after("120", now) == 120
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert policy.parse_retry_after(date, now) == 30
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert policy.parse_retry_after(past, now) == 0
    for bad in ("", "soon", "-5", "nan", "Mon, 99 Foo 2026"):
        assert policy.parse_retry_after(bad, now) is None, bad


def test_reset_headers_seconds_or_epoch_longest_wins() -> None:
    now = 1_800_000_000.0
    assert policy.wait_from_headers({"X-RateLimit-Reset": "7"}, now) == 7
    assert policy.wait_from_headers({"X-RateLimit-Reset": str(int(now) + 42)}, now) == 42
    assert policy.wait_from_headers({"Retry-After": "3", "RateLimit-Reset": "9"}, now) == 9
    assert policy.wait_from_headers({"X-RateLimit-Reset": "x"}, now) is None
    assert policy.wait_from_headers({}, now) is None


def test_next_attempt_gives_up_on_attempts_and_on_age() -> None:
    rng = random.Random(0)
    now = 1000.0
    assert policy.next_attempt(29, RETRY, now, now, rng=rng) is not None
    assert policy.next_attempt(30, RETRY, now, now, rng=rng) is None
    # The server's wait is a floor ...
    at = policy.next_attempt(1, RETRY, now, now, server_wait=50, rng=rng)
    assert at is not None
    assert at >= now + 50
    # ... and a wait that would land past max_age gives up.
    assert policy.next_attempt(1, RETRY, now, now - 86390, server_wait=60, rng=rng) is None


def test_status_classes() -> None:
    assert all(policy.is_retryable_status(s) for s in (408, 425, 429, 500, 502, 503, 504))
    assert not any(policy.is_retryable_status(s) for s in (400, 401, 403, 404, 409, 422))


OPTS = BreakerOptions(
    failures=3,
    failure_ratio=0.5,
    window=60,
    min_requests=10,
    cooldown=30,
    max_cooldown=100,
    probes=1,
)
PROBES = BreakerOptions(
    failures=3, failure_ratio=0.5, window=60, min_requests=10, cooldown=30, max_cooldown=100
)


def opened(options: BreakerOptions) -> CircuitBreaker:
    """A breaker that opened at t=0..2 and is half-open from t=32."""
    b = CircuitBreaker(options)
    for t in range(3):
        b.record(False, now=t)
    assert b.state(32) == BreakerState.HALF_OPEN
    return b


def test_breaker_opens_on_consecutive_failures_and_probes_once() -> None:
    b = CircuitBreaker(OPTS)
    for t in range(2):
        b.record(False, now=t)
    assert b.state(2) == BreakerState.CLOSED
    b.record(False, now=2)
    assert b.state(3) == BreakerState.OPEN
    assert not b.allow(now=31)
    assert b.wait(now=10) == 22
    assert b.state(32) == BreakerState.HALF_OPEN
    assert b.allow(now=32)  # the probe
    assert not b.allow(now=32)  # only one
    b.record(True, now=33)
    assert b.state(33) == BreakerState.CLOSED
    assert b.allow(now=33)


def test_failed_probes_double_the_cooldown_up_to_the_cap() -> None:
    b = CircuitBreaker(OPTS)
    for t in range(3):
        b.record(False, now=t)
    cooldowns = []
    for _ in range(4):
        now = b.open_until
        assert b.allow(now=now)
        b.record(False, now=now)
        cooldowns.append(b.open_until - now)
    assert cooldowns == [60, 100, 100, 100]
    # Success resets the cooldown for the next time.
    now = b.open_until
    assert b.allow(now=now)
    b.record(True, now=now)
    for t in range(3):
        b.record(False, now=now + t)
    assert b.open_until - (now + 2) == 30


def test_breaker_opens_on_the_failure_ratio_over_the_window() -> None:
    b = CircuitBreaker(OPTS)
    # Alternating: never three failures in a row, but half of them fail.
    for t in range(9):
        b.record(t % 2 == 0, now=t)
    assert b.state(9) == BreakerState.CLOSED  # below min_requests
    b.record(False, now=9)  # 10 requests, 5 failed
    assert b.state(10) == BreakerState.OPEN


def test_old_failures_leave_the_window() -> None:
    b = CircuitBreaker(OPTS)
    for t in range(9):
        b.record(t % 2 == 0, now=t)
    # Much later: the earlier failures no longer count toward the ratio.
    for t in range(100, 110):
        b.record(True, now=t)
    b.record(False, now=110)
    assert b.state(111) == BreakerState.CLOSED


def test_half_open_lets_several_probes_through_and_closes_below_the_ratio() -> None:
    b = opened(PROBES)
    assert PROBES.probes == 5
    assert all(b.allow(now=32) for _ in range(5))
    assert not b.allow(now=32)  # five in flight
    assert b.probing
    b.record(False, now=33)
    b.record(True, now=33)
    assert b.state(33) == BreakerState.HALF_OPEN  # 1 of 2 failed: undecided
    b.record(True, now=33)
    assert b.state(33) == BreakerState.HALF_OPEN
    b.record(True, now=33)  # 1 failed of 4; even if the fifth fails, 2 of 5 < 0.5
    assert b.state(33) == BreakerState.CLOSED
    assert b.cooldown == 30


def test_only_probes_that_all_fail_grow_the_cooldown() -> None:
    b = opened(PROBES)
    for _ in range(4):
        assert b.allow(now=32)
        b.record(False, now=32)
    assert b.state(32) == BreakerState.HALF_OPEN  # a fifth answer could still get through
    assert b.allow(now=32)
    b.record(False, now=33)
    assert b.state(33) == BreakerState.OPEN
    assert b.open_until == 33 + 60


def test_a_flaky_integration_stays_half_open_without_a_cooldown() -> None:
    b = opened(PROBES)
    # Two of three fail, round after round: answering but struggling. Each round decides as
    # soon as three of five failed and one got through; the next starts at once.
    for round_ in range(4):
        for ok in (False, False, True):
            b.probe_returned()
            assert b.allow(now=40 + round_)
            b.record(ok, now=40 + round_)
        assert b.state(40 + round_) == BreakerState.HALF_OPEN
        b.record(False, now=40 + round_)
        assert b.state(40 + round_) == BreakerState.HALF_OPEN, round_
    assert b.opened == 1
    assert b.cooldown == 30
    # ... and when it goes down for good, a round of five failures opens it again.
    for _ in range(5):
        b.record(False, now=50)
    assert b.state(50) == BreakerState.OPEN


def test_a_probe_that_sent_nothing_gives_its_place_back() -> None:
    # A probe batch can end without a request (every record a mapping error): its place
    # goes to the next probe instead of leaving the lane waiting for an answer.
    b = opened(BreakerOptions(failures=3, cooldown=30, probes=1))
    assert b.allow(now=32)
    assert not b.allow(now=32)
    b.probe_returned()
    assert b.allow(now=32)
