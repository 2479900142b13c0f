"""Token buckets: per access key at ingest, and (later) per lane in the delivery engine."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass


@dataclass(slots=True)
class Decision:
    """The outcome of taking a token, with what the ``X-RateLimit-*`` headers report."""

    allowed: bool
    limit: int  # bucket size
    remaining: int  # whole tokens left
    reset: int  # seconds until the bucket is full again
    retry_after: int  # seconds until a token is available (0 when allowed)

    def headers(self) -> dict[str, str]:
        """``X-RateLimit-Limit``, ``-Remaining``, ``-Reset`` and, when refused, ``Retry-After``."""
        h = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }
        if not self.allowed:
            h["Retry-After"] = str(self.retry_after)
        return h


class TokenBucket:
    """``rate`` tokens a second, holding at most ``burst``; starts full."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: int, now: float | None = None) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = time.monotonic() if now is None else now

    def take(self, n: float = 1.0, now: float | None = None) -> Decision:
        """Take ``n`` tokens if there are that many."""
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        allowed = self.tokens >= n
        if allowed:
            self.tokens -= n
        missing_for_next = 0.0 if allowed else n - self.tokens
        return Decision(
            allowed=allowed,
            limit=self.burst,
            remaining=int(self.tokens),
            reset=math.ceil((self.burst - self.tokens) / self.rate),
            retry_after=math.ceil(missing_for_next / self.rate) if not allowed else 0,
        )


class KeyedLimiter:
    """One bucket per key (an access key id), each with its own rate or the default."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self._max = max_keys
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, key: str, rate: float | None = None, burst: int | None = None) -> Decision:
        """Take a token from ``key``'s bucket; its rate and burst may change between calls."""
        rate = rate or self.rate
        burst = burst or self.burst
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max:
                self._buckets.clear()
            bucket = self._buckets[key] = TokenBucket(rate, burst)
        elif bucket.rate != rate or bucket.burst != burst:
            bucket.rate, bucket.burst = rate, burst
        return bucket.take()
