"""Writing mapping files for the management API: check, round-trip YAML, atomic replace.

The files stay the source of truth: the admin API writes ``<mappings>/<group>.yaml`` and the
normal reload (watcher, SIGHUP, admin reload) makes it live. So that people editing files by
hand and tools using the API can share one directory:

- a change is merged into the file's existing YAML with ruamel.yaml's round-trip mode, so the
  comments, key order and quoting of every part that did not change are kept;
- the new text is checked exactly as ``gateway check`` checks a file (:func:`check_text`)
  before anything is written;
- the file is replaced atomically (temporary file in the same directory, fsync, rename, fsync
  of the directory), so the watcher, a reader or a crash sees the old file or the new one,
  never a torn one. The temporary file's name does not end in ``.yaml``, so the loader never
  picks it up.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from gateway.mapping.errors import SpecErrors, format_key_path
from gateway.mapping.loader import Problem
from gateway.mapping.model import compile_mapping, content_version
from gateway.mapping.yamlsrc import YamlError, line_of, load_with_lines

#: Group keys the API accepts: the same as ingest accepts, and always a plain file name.
GROUP_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

#: The lock file that serialises writers (several gateway processes may share a directory).
LOCK_FILE = ".gateway-admin.lock"


class WriteError(Exception):
    """The new content cannot be turned into YAML (a value YAML cannot hold)."""


def _yaml() -> YAML:
    y = YAML(typ="rt")
    y.indent(mapping=2, sequence=4, offset=2)
    y.width = 100
    y.preserve_quotes = True
    return y


def version_of(text: str) -> str:
    """The mapping version of a file's text (what the loader and deliveries record)."""
    return content_version(text.encode("utf-8"))


def render(data: Mapping[str, Any], previous: str | None = None) -> str:
    """``data`` (a mapping file as JSON) as YAML text.

    With ``previous`` (the file's current text) the change is merged into it, keeping the
    comments, order and quoting of what did not change; integration entries are matched by
    name, so reordering or removing one keeps the others' comments.
    """
    y = _yaml()
    doc: Any = None
    if previous is not None:
        # A file ruamel cannot read (PyYAML may be more lenient) is written afresh.
        with contextlib.suppress(Exception):
            doc = y.load(previous)
    doc = _merge(doc if isinstance(doc, CommentedMap) else CommentedMap(), data)
    out = io.StringIO()
    try:
        y.dump(doc, out)
    except (YAMLError, ValueError, TypeError) as exc:
        raise WriteError(f"cannot write the content as YAML: {exc}") from None
    return out.getvalue()


def _same_scalar(old: Any, new: Any) -> bool:
    # True == 1 in Python: a bool only equals a bool.
    if isinstance(old, bool) or isinstance(new, bool):
        return type(old) is type(new) and old == new
    if isinstance(old, str) != isinstance(new, str):
        return False
    try:
        return bool(old == new)
    except Exception:
        return False


def _merge(old: Any, new: Any) -> Any:
    """``new`` built on ``old``: containers updated in place, equal scalars kept as they were."""
    if isinstance(new, Mapping):
        if not isinstance(old, CommentedMap):
            old = CommentedMap()
        for k in [k for k in old if k not in new]:
            del old[k]
        for k, v in new.items():
            old[k] = _merge(old[k], v) if k in old else _merge(None, v)
        return old
    if isinstance(new, list):
        if not isinstance(old, CommentedSeq):
            old = CommentedSeq()
        named = {
            o["name"]: o
            for o in old
            if isinstance(o, CommentedMap) and isinstance(o.get("name"), str)
        }
        items = []
        for i, v in enumerate(new):
            if isinstance(v, Mapping) and isinstance(v.get("name"), str):
                base = named.get(v["name"])
            else:
                base = old[i] if i < len(old) else None
            items.append(_merge(base, v))
        # In place, so the sequence's own comments stay where they were.
        for i, item in enumerate(items):
            if i < len(old):
                old[i] = item
            else:
                old.append(item)
        del old[len(items) :]
        return old
    if old is not None and _same_scalar(old, new):
        return old
    return new


def check_text(
    text: str, group: str, file: str, environ: Mapping[str, str] | None = None
) -> list[Problem]:
    """Every problem ``gateway check`` would report for ``text`` as the file of ``group``."""
    try:
        data, lines = load_with_lines(text)
    except YamlError as exc:
        return [Problem(file, exc.line, "(yaml)", exc.message)]
    try:
        compile_mapping(data, text.encode("utf-8"), expected_group=group, environ=environ)
    except SpecErrors as exc:
        problems = [
            Problem(file, line_of(lines, e.path), format_key_path(e.path), e.message)
            for e in exc.errors
        ]
        problems.sort(key=lambda p: (p.line or 0, p.path))
        return problems
    return []


def parse(text: str, *, raw: bool = False) -> Any:
    """A file's text as JSON-ready data (the loader's safe parser); None when it is not YAML.

    ``raw``: as the loader reads it, to change and write back (a lookup table's integer
    keys stay integers); otherwise through :func:`jsonable`, to answer with.
    """
    try:
        data, _ = load_with_lines(text)
    except YamlError:
        return None
    return data if raw else jsonable(data)


def jsonable(value: Any) -> Any:
    """``value`` with what YAML can hold and JSON cannot turned into strings: keys that are
    not strings, integers beyond 64 bits, ``!!binary`` (base64), dates; a set becomes a
    list."""
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(str(v) for v in value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, bool) or value is None or isinstance(value, float | str):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    return str(value)  # dates and times: ISO 8601


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``: temporary file, fsync, rename, fsync of the directory.

    A crash at any point leaves the old file or the new one. The new file keeps the old one's
    permission bits (0644 for a new file).
    """
    directory = path.parent
    try:
        before = path.stat()
        mode, old_mtime = before.st_mode & 0o777, before.st_mtime_ns
    except FileNotFoundError:
        mode, old_mtime = 0o644, None
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fchmod(f.fileno(), mode)
            # The loader notices a change by (mtime, size): two writes of the same size within
            # one timestamp tick must still differ, or the second would never go live.
            st = os.fstat(f.fileno())
            if old_mtime is not None and st.st_mtime_ns <= old_mtime:
                os.utime(f.fileno(), ns=(st.st_atime_ns, old_mtime + 1))
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def delete(path: Path) -> None:
    """Remove ``path`` durably (unlink, fsync of the directory)."""
    path.unlink()
    _fsync_dir(path.parent)


def lock_directory(directory: Path) -> int:
    """Take an exclusive lock on the mappings directory's lock file (blocking); return the
    descriptor to hand to :func:`unlock_directory`.

    Serialises API writers across processes that share the directory; people editing by hand
    do not take it, which is why every write also compares versions (If-Match).
    """
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


def unlock_directory(fd: int) -> None:
    """Release a lock taken with :func:`lock_directory`."""
    os.close(fd)  # closing the descriptor releases the lock
