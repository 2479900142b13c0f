"""Retry policy: which answers retry, how long to wait, when to give up.

Exponential backoff with full jitter (a uniformly random wait up to ``base * 2**n``, capped),
so that many deliveries failing together do not come back together. A server's own word
(``Retry-After``, a rate-limit reset header) is a floor under the wait.
"""

from __future__ import annotations

import email.utils
import random
from collections.abc import Mapping

from gateway.mapping.options import RetryOptions

#: Headers whose value says when a rate limit resets: seconds from now, or an epoch time.
RESET_HEADERS = ("Retry-After", "RateLimit-Reset", "X-RateLimit-Reset", "X-Rate-Limit-Reset")
# A reset value above this is an epoch time, not a number of seconds (about year 2001).
_EPOCH_THRESHOLD = 1_000_000_000


def backoff(attempts: int, retry: RetryOptions, rng: random.Random | None = None) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (1 for the first)."""
    ceiling = min(retry.cap, retry.base * 2.0 ** max(attempts - 1, 0))
    return (rng or random).uniform(0, ceiling)


def parse_retry_after(value: str, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP date. None when
    the value is neither (a malformed header is ignored, not obeyed)."""
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        return max(0.0, when.timestamp() - now)
    if seconds != seconds or seconds < 0:  # NaN, negative
        return None
    return seconds


def wait_from_headers(headers: Mapping[str, str], now: float) -> float | None:
    """The longest wait any rate-limit header asks for, in seconds, or None.

    ``Retry-After`` is seconds or an HTTP date; the ``*-Reset`` headers are seconds from now
    or, when large, the epoch second of the reset (GitHub and Twitter send epochs; the IETF
    draft and most others send seconds).
    """
    waits = []
    for name in RESET_HEADERS:
        raw = headers.get(name)
        if raw is None:
            continue
        if name == "Retry-After":
            wait = parse_retry_after(raw, now)
        else:
            try:
                number = float(raw.strip())
            except ValueError:
                continue
            if number != number or number < 0:
                continue
            wait = max(0.0, number - now) if number > _EPOCH_THRESHOLD else number
        if wait is not None:
            waits.append(wait)
    return max(waits) if waits else None


def next_attempt(
    attempts: int,
    retry: RetryOptions,
    now: float,
    received_at: float,
    server_wait: float | None = None,
    rng: random.Random | None = None,
) -> float | None:
    """When to try again after ``attempts`` failed attempts, or None to give up.

    Gives up after ``retry.max_attempts`` attempts, or when the next try would come later
    than ``retry.max_age`` after the record arrived.
    """
    if attempts >= retry.max_attempts:
        return None
    wait = backoff(attempts, retry, rng)
    if server_wait is not None:
        wait = max(wait, server_wait)
    at = now + wait
    if at - received_at > retry.max_age:
        return None
    return at
