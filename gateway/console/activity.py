"""Deliveries per minute for the overview: sampled from the delivery engine's lane counters.

The admin API's lanes show each lane's counters since the process started (``since_start``).
A background task samples the same counters every :data:`SAMPLE_SECONDS` and keeps the
increase per minute for the last hour, per lane; the overview's chart and its "last hour"
columns read them. They count what this process sent: they start empty after a restart, and
with several worker processes each shows its own share.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup, escape

#: Seconds between two samples of the engine's counters.
SAMPLE_SECONDS = 10.0
#: Minutes kept (the chart's width).
MINUTES = 60

Lane = tuple[str, str]


@dataclass(slots=True)
class Minute:
    """One minute of one lane: deliveries delivered, attempts failed, deliveries dead."""

    delivered: int = 0
    failed: int = 0
    dead: int = 0


class Activity:
    """Per-minute increases of the engine's counters, per lane, for the last hour."""

    def __init__(self) -> None:
        self._last: dict[Lane, tuple[int, int, int]] = {}
        self._minutes: dict[int, dict[Lane, Minute]] = {}

    def sample(self, lanes: Iterable[dict[str, Any]], now: float | None = None) -> None:
        """Record the counters of ``lanes`` (the engine's ``status()``) as seen at ``now``."""
        at = time.time() if now is None else now
        minute = int(at // 60)
        bucket = self._minutes.setdefault(minute, {})
        for lane in lanes:
            key = (str(lane["group_key"]), str(lane["integration"]))
            counters = (
                int(lane.get("delivered", 0)),
                int(lane.get("retried", 0)) + int(lane.get("dead", 0)),
                int(lane.get("dead", 0)),
            )
            before = self._last.get(key, (0, 0, 0))
            self._last[key] = counters
            delta = [max(0, c - b) for c, b in zip(counters, before, strict=True)]
            if any(delta):
                m = bucket.setdefault(key, Minute())
                m.delivered += delta[0]
                m.failed += delta[1]
                m.dead += delta[2]
        for old in [k for k in self._minutes if k <= minute - MINUTES]:
            del self._minutes[old]

    def series(
        self, now: float | None = None, keep: Callable[[Lane], bool] | None = None
    ) -> list[Minute]:
        """The last :data:`MINUTES` minutes, oldest first, over the lanes ``keep`` accepts."""
        at = time.time() if now is None else now
        minute = int(at // 60)
        out = []
        for m in range(minute - MINUTES + 1, minute + 1):
            total = Minute()
            for key, v in self._minutes.get(m, {}).items():
                if keep is None or keep(key):
                    total.delivered += v.delivered
                    total.failed += v.failed
                    total.dead += v.dead
            out.append(total)
        return out

    def last_hour(self, key: Lane, now: float | None = None) -> Minute:
        """The lane's totals over the last hour."""
        total = Minute()
        for m in self.series(now, keep=lambda k: k == key):
            total.delivered += m.delivered
            total.failed += m.failed
            total.dead += m.dead
        return total


def chart_svg(series: list[Minute], width: int = 600, height: int = 120) -> Markup:
    """A bar chart of delivered (up) and failed (down) per minute, as inline SVG."""
    top = max([1] + [m.delivered for m in series])
    bottom = max([1] + [m.failed for m in series])
    mid = round(height * top / (top + bottom)) if series else height // 2
    mid = min(max(mid, 20), height - 20)
    step = width / max(1, len(series))
    bars = []
    for i, m in enumerate(series):
        x = round(i * step, 2)
        w = round(max(1.0, step - 1), 2)
        if m.delivered:
            h = round((mid - 2) * m.delivered / top, 2)
            bars.append(
                f'<rect class="ok" x="{x}" y="{round(mid - h, 2)}" width="{w}" height="{h}">'
                f"<title>{MINUTES - i} min ago: {m.delivered} delivered</title></rect>"
            )
        if m.failed:
            h = round((height - mid - 2) * m.failed / bottom, 2)
            bars.append(
                f'<rect class="fail" x="{x}" y="{mid}" width="{w}" height="{h}">'
                f"<title>{MINUTES - i} min ago: {m.failed} failed attempts</title></rect>"
            )
    delivered = sum(m.delivered for m in series)
    failed = sum(m.failed for m in series)
    label = escape(f"Last {len(series)} minutes: {delivered} delivered, {failed} failed attempts")
    return Markup(
        f'<svg class="chart" viewBox="0 0 {width} {height}" preserveAspectRatio="none" '
        f'role="img" aria-label="{label}"><title>{label}</title>'
        f'<line class="axis" x1="0" y1="{mid}" x2="{width}" y2="{mid}"/>' + "".join(bars) + "</svg>"
    )


async def sample_forever(activity: Activity, status: Callable[[], list[dict[str, Any]]]) -> None:
    """Sample ``status()`` into ``activity`` every :data:`SAMPLE_SECONDS` until cancelled."""
    while True:
        with contextlib.suppress(Exception):  # a failed sample is a gap in a chart, no more
            activity.sample(status())
        await asyncio.sleep(SAMPLE_SECONDS)


@contextlib.asynccontextmanager
async def sampling(
    activity: Activity, status: Callable[[], list[dict[str, Any]]]
) -> AsyncIterator[None]:
    """Run :func:`sample_forever` for the body's duration."""
    task = asyncio.create_task(sample_forever(activity, status), name="console-activity")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
