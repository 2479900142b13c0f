"""The ``options`` block of an integration entry: delivery behaviour, the same for every type."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_PER = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}


def parse_rate(value: Any) -> float:
    """``10/s``, ``600/min``, ``1000/h`` or a number (per second) -> requests per second."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        rate = float(value)
    else:
        m = _RATE.match(str(value))
        if not m:
            raise ValueError("a rate is like 10/s, 600/min or 1000/h")
        rate = float(m.group(1)) / _PER[m.group(2)]
    if rate <= 0:
        raise ValueError("a rate must be above zero")
    return rate


def parse_duration(value: Any) -> float:
    """``250ms``, ``5s``, ``10m``, ``24h`` or a number of seconds -> seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError("a duration is like 250ms, 5s, 10m or 24h")
        seconds = float(m.group(1)) * _UNIT[m.group(2)]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


class RetryOptions(BaseModel):
    """Retry policy: exponential backoff with full jitter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: float = Field(default=1.0, description="First backoff, seconds.")
    cap: float = Field(default=600.0, description="Longest backoff, seconds.")
    max_attempts: int = Field(default=30, ge=1, description="Give up after this many attempts.")
    max_age: float = Field(
        default=86400.0, description="Give up this long after the record arrived."
    )

    @field_validator("base", "cap", "max_age", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float:
        return parse_duration(v)


class BreakerOptions(BaseModel):
    """Circuit breaker: stop sending to an integration that keeps failing, probe it later."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    failures: int = Field(default=5, ge=1, description="Consecutive failed requests that open it.")
    failure_ratio: float = Field(
        default=0.5, gt=0, le=1, description="Share of failed requests in the window that opens it."
    )
    window: float = Field(default=60.0, description="Window of the failure ratio (60s).")
    min_requests: int = Field(
        default=20, ge=1, description="Requests in the window before the ratio counts."
    )
    cooldown: float = Field(default=30.0, description="Open this long before a probe (30s).")
    max_cooldown: float = Field(
        default=600.0, description="Probes that all fail double the cooldown, up to this (10m)."
    )
    probes: int = Field(
        default=5, ge=1, le=100, description="Requests let through half-open, judged by the ratio."
    )

    @field_validator("window", "cooldown", "max_cooldown", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float:
        return parse_duration(v)


class DestinationOptions(BaseModel):
    """Address ranges this entry may (not) deliver to; it can only narrow the gateway's own
    destination policy (docs/security.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow: list[str] = Field(
        default_factory=list, description="Ranges allowed despite a broader deny of this entry."
    )
    deny: list[str] = Field(default_factory=list, description="Ranges denied (CIDRs or aliases).")

    @field_validator("allow", "deny")
    @classmethod
    def _ranges(cls, v: list[str]) -> list[str]:
        from gateway.integrations.destinations import parse_ranges

        parse_ranges(v)  # a ValueError names the bad item
        return v


_ATTR = re.compile(r"^[^\s]+$")


class RollupOptions(BaseModel):
    """Sum the lane's records per key and UTC-aligned window; send one report per bucket
    (``gateway.delivery.rollup``, docs/links-and-rollups.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window: float = Field(description="Window length, aligned to UTC (1h, 5m, 2s); at least 1s.")
    by: list[str] = Field(
        default_factory=list, description="Attributes whose values make a bucket's key."
    )
    sum: list[str] = Field(min_length=1, description="Numeric attributes added up per bucket.")
    grace: float = Field(
        default=0.0, description="Wait this long after the window ends before sending (5m)."
    )

    @field_validator("window", "grace", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float:
        return parse_duration(v)

    @field_validator("window")
    @classmethod
    def _window(cls, v: float) -> float:
        if v < 1 or v != int(v):
            raise ValueError("a rollup window is a whole number of seconds, at least 1s")
        return v

    @field_validator("by", "sum")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not _ATTR.match(name):
                raise ValueError(f"{name!r} is not an attribute name")
        if len(set(v)) != len(v):
            raise ValueError("an attribute is named twice")
        return v

    @model_validator(mode="after")
    def _apart(self) -> RollupOptions:
        both = sorted(set(self.by) & set(self.sum))
        if both:
            raise ValueError(f"{', '.join(both)}: an attribute is either a key (by) or summed")
        return self


class DeliveryOptions(BaseModel):
    """Delivery behaviour of one integration entry; unset values take the type's defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_limit: float | None = Field(
        default=None, description="Requests per second (10/s, 600/min)."
    )
    concurrency: int | None = Field(default=None, ge=1, le=1000, description="Requests in flight.")
    batch_size: int | None = Field(default=None, ge=1, le=10000, description="Records per request.")
    batch_wait: float | None = Field(
        default=None, description="Longest wait to fill a batch (250ms)."
    )
    timeout: float | None = Field(default=None, description="Request timeout (30s).")
    retry: RetryOptions = Field(default_factory=RetryOptions)
    breaker: BreakerOptions = Field(default_factory=BreakerOptions)
    ordering_key: str | None = Field(
        default=None,
        description="Mapped field or attribute whose equal values are delivered one at a time, "
        "in record order.",
    )
    ordering_on_dead: Literal["continue", "block"] = Field(
        default="continue",
        description="A dead record of an ordering key: the next one goes (continue) or the key "
        "waits until it is replayed (block).",
    )
    destinations: DestinationOptions | None = Field(
        default=None, description="This entry's destination policy, within the gateway's."
    )
    rollup: RollupOptions | None = Field(
        default=None, description="Sum records per key and window; one report per bucket."
    )

    @field_validator("rate_limit", mode="before")
    @classmethod
    def _rate(cls, v: Any) -> float | None:
        return None if v is None else parse_rate(v)

    @field_validator("batch_wait", "timeout", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float | None:
        return None if v is None else parse_duration(v)
