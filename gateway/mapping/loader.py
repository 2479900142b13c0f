"""Loading a directory of mapping files, keeping the last good version of each group live.

Every ``*.yaml`` in the directory is one group; the file name must equal its ``group_key``.
A file that fails to load never replaces a good live version: its errors are kept (for
``/readyz``, the admin API and ``gateway check``) and the old version stays in force. Reloads
compile only files whose size or modification time changed.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.mapping.errors import SpecErrors, format_key_path
from gateway.mapping.model import CompiledMapping, compile_mapping
from gateway.mapping.yamlsrc import YamlError, line_of, load_with_lines


@dataclass(frozen=True, slots=True)
class Problem:
    """One error in one mapping file."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"file": self.file, "line": self.line, "path": self.path, "message": self.message}


def load_file(
    path: Path, environ: Mapping[str, str] | None = None
) -> tuple[CompiledMapping | None, list[Problem]]:
    """Compile one mapping file; return it, or None and every problem found."""
    name = str(path)
    try:
        content = path.read_bytes()
    except OSError as exc:
        return None, [Problem(name, None, "(file)", f"cannot read: {exc.strerror}")]
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [Problem(name, None, "(file)", f"not UTF-8: {exc}")]
    try:
        data, lines = load_with_lines(text)
    except YamlError as exc:
        return None, [Problem(name, exc.line, "(yaml)", exc.message)]
    try:
        compiled = compile_mapping(data, content, expected_group=path.stem, environ=environ)
    except SpecErrors as exc:
        problems = [
            Problem(name, line_of(lines, e.path), format_key_path(e.path), e.message)
            for e in exc.errors
        ]
        problems.sort(key=lambda p: (p.line or 0, p.path))
        return None, problems
    return compiled, []


@dataclass(slots=True)
class ReloadResult:
    """What a reload did."""

    loaded: list[str] = field(default_factory=list)  # groups (re)loaded from changed files
    removed: list[str] = field(default_factory=list)  # groups whose file is gone
    failed: dict[str, list[Problem]] = field(default_factory=dict)  # file -> its problems
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "loaded": self.loaded,
            "removed": self.removed,
            "failed": {f: [p.to_dict() for p in ps] for f, ps in self.failed.items()},
            "seconds": round(self.seconds, 3),
        }


Stamp = tuple[int, int]  # a file's (mtime in ns, size): "changed" when it differs


def yaml_files(directory: Path) -> dict[str, os.DirEntry[str]]:
    """The ``*.yaml`` entries of ``directory`` by name; OSError when it cannot be read."""
    return {e.name: e for e in os.scandir(directory) if e.name.endswith(".yaml")}


def changes(
    entries: Mapping[str, os.DirEntry[str]],
    stamps: dict[str, Stamp],
    retry: Container[str] = (),
) -> tuple[list[os.DirEntry[str]], list[str]]:
    """The entries added or changed since ``stamps`` was last updated (and those whose path
    is in ``retry``), in name order, and the names gone since; ``stamps`` is brought up to
    date. An entry that cannot be stat'ed (removed meanwhile) is left for the next scan."""
    changed = []
    for name in sorted(entries):
        entry = entries[name]
        try:
            st = entry.stat()
        except OSError:
            continue
        stamp = (st.st_mtime_ns, st.st_size)
        if stamps.get(name) == stamp and entry.path not in retry:
            continue
        stamps[name] = stamp
        changed.append(entry)
    gone = [name for name in stamps if name not in entries]
    for name in gone:
        del stamps[name]
    return changed, gone


class MappingRegistry:
    """The live mappings of every group, from one directory."""

    def __init__(self, directory: Path, environ: Mapping[str, str] | None = None) -> None:
        self.directory = directory
        self._environ = environ
        self._live: dict[str, CompiledMapping] = {}
        self._stamps: dict[str, Stamp] = {}  # file name -> (mtime_ns, size)
        self.problems: dict[str, list[Problem]] = {}  # file -> problems of its latest version
        self.error: str | None = None  # the directory itself cannot be read

    def get(self, group_key: str) -> CompiledMapping | None:
        """The group's live mapping, or None when the group does not exist."""
        return self._live.get(group_key)

    def problems_of(self, group_key: str) -> list[Problem]:
        """Problems of the group's file when its latest version failed to load."""
        return self.problems.get(str(self.directory / f"{group_key}.yaml"), [])

    def groups(self) -> list[str]:
        """Every live group key, sorted."""
        return sorted(self._live)

    def __len__(self) -> int:
        return len(self._live)

    def reload(self) -> ReloadResult:
        """Pick up added, changed and removed files. Bad files leave their old version live.

        Compiled mappings live until the next change, and there can be many (about 50 tracked
        objects a field): the cyclic garbage collector is paused while they are built, and
        once they are in place everything alive is frozen out of its reach. Otherwise every
        full collection walks them all: with 10,000 groups that was a third of the load time
        and ~200 ms pauses of the event loop under load (bench/README.md).
        """
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            result = self._reload()
        finally:
            if was_enabled:
                gc.enable()
        if result.loaded or result.removed:
            # Unfreeze first, so superseded mappings caught in reference cycles are freed.
            gc.unfreeze()
            gc.collect()
            gc.freeze()
        return result

    def _reload(self) -> ReloadResult:
        started = time.perf_counter()
        result = ReloadResult()
        try:
            entries = yaml_files(self.directory)
        except OSError as exc:
            self.error = f"cannot read mappings directory {self.directory}: {exc.strerror}"
            result.seconds = time.perf_counter() - started
            return result
        self.error = None
        live = dict(self._live)
        changed, gone = changes(entries, self._stamps)
        for entry in changed:
            compiled, problems = load_file(Path(entry.path), self._environ)
            if compiled is None:
                self.problems[entry.path] = problems
                result.failed[entry.path] = problems
                continue
            self.problems.pop(entry.path, None)
            live[compiled.group_key] = compiled
            result.loaded.append(compiled.group_key)
        for name in gone:
            group = name[: -len(".yaml")]
            self.problems.pop(str(self.directory / name), None)
            if live.pop(group, None) is not None:
                result.removed.append(group)
        # One assignment: a reader sees the old set or the new one, never a mix.
        self._live = live
        result.seconds = time.perf_counter() - started
        return result

    def all_problems(self) -> list[Problem]:
        """Problems of every file whose latest version failed to load."""
        return [p for ps in self.problems.values() for p in ps]
