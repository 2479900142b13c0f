"""Which groups exist, and what a record of each fans out to.

A group exists when ``<mappings>/<group_key>.yaml`` exists. This registry rescans the directory
at most every ``rescan_seconds``, so adding a mapping file needs no restart. The full mapping
model (integrations, conditions, versions) replaces :meth:`GroupMapping.fan_out` in the mapping
issue; ingest already calls it, so nothing else changes then.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class GroupMapping:
    """One group's mapping as ingest needs it."""

    group_key: str
    version: str  # hash of the file's content

    def fan_out(self, data: dict[str, Any]) -> list[str]:
        """Names of the integrations that get a delivery for ``data``.

        No integration is enabled until the mapping model lands (mapping issue).
        """
        return []


class GroupRegistry:
    """The live set of groups, read from the mappings directory."""

    def __init__(self, directory: Path, rescan_seconds: float = 2.0) -> None:
        self.directory = directory
        self._rescan = rescan_seconds
        self._groups: dict[str, GroupMapping] = {}
        self._seen: dict[str, float] = {}
        self._next_scan = 0.0
        self.error: str | None = None

    def scan(self) -> None:
        """Reread the directory now."""
        groups: dict[str, GroupMapping] = {}
        try:
            paths = sorted(self.directory.glob("*.yaml"))
        except OSError as exc:
            self.error = f"cannot read mappings directory {self.directory}: {exc}"
            return
        for path in paths:
            key = path.stem
            try:
                mtime = path.stat().st_mtime
                old = self._groups.get(key)
                if old is not None and self._seen.get(key) == mtime:
                    groups[key] = old
                    continue
                version = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            except OSError:
                continue
            self._seen[key] = mtime
            groups[key] = GroupMapping(key, version)
        self._groups = groups
        self.error = None if self.directory.is_dir() else f"{self.directory} is not a directory"
        self._next_scan = time.monotonic() + self._rescan

    def get(self, group_key: str) -> GroupMapping | None:
        """The group's mapping, or None when the group does not exist."""
        if time.monotonic() >= self._next_scan:
            self.scan()
        return self._groups.get(group_key)

    def __len__(self) -> int:
        return len(self._groups)
