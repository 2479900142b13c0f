"""Plain-text tables and the short forms of times and texts the commands print."""

from __future__ import annotations

from datetime import UTC, datetime


def table(headers: list[str], rows: list[list[str]]) -> None:
    """Print columns as wide as their widest cell; the last column is not padded."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    for row in [headers, *rows]:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())


def age(seconds: float | None) -> str:
    """A duration for people: 45s, 3m05s, 2h01m, 3d04h."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def cut(text: str | None, width: int) -> str:
    """``text`` on one line, at most ``width`` characters (``…`` marks a cut); ``-`` if none."""
    if not text:
        return "-"
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def utc(value: float | None) -> str | None:
    """Epoch seconds as ``2025-05-01T12:00:00Z``; None stays None."""
    if value is None:
        return None
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
