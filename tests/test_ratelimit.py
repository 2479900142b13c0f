"""Token buckets and their headers."""

from __future__ import annotations

from gateway.ingest.ratelimit import KeyedLimiter, TokenBucket


def test_bucket_allows_burst_then_refuses_with_retry_after() -> None:
    b = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [b.take(now=0.0).allowed for _ in range(4)] == [True, True, True, False]
    refused = b.take(now=0.0)
    assert refused.retry_after == 1
    assert refused.headers()["Retry-After"] == "1"
    assert refused.headers()["X-RateLimit-Remaining"] == "0"
    assert refused.headers()["X-RateLimit-Limit"] == "3"
    assert refused.reset == 2  # 3 tokens at 2/s
    # Half a second later one token is back.
    ok = b.take(now=0.5)
    assert ok.allowed
    assert "Retry-After" not in ok.headers()


def test_slow_rate_retry_after_covers_the_wait() -> None:
    b = TokenBucket(rate=0.1, burst=1, now=0.0)
    assert b.take(now=0.0).allowed
    d = b.take(now=1.0)
    assert not d.allowed
    assert d.retry_after == 9


def test_keyed_limiter_separates_keys_and_honours_per_key_rates() -> None:
    lim = KeyedLimiter(rate=1000, burst=1000)
    assert all(lim.take("a", rate=1, burst=1).allowed for _ in range(1))
    assert not lim.take("a", rate=1, burst=1).allowed
    assert lim.take("b").allowed
    assert lim.take("b").limit == 1000
