"""A mapping file being edited in the console: checked and previewed before it is saved.

The draft goes through :func:`gateway.mapping.loader.load_file`, the function ``gateway check``
and the live reload use, so the problems (with their line numbers) read exactly as they do
there; a draft that compiles is previewed with :func:`gateway.preview.preview`, as
``POST /admin/v1/preview`` does for the live mapping. Nothing is saved or sent.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.ingest.validate import Limits
from gateway.mapping.loader import Problem, load_file
from gateway.mapping.model import CompiledMapping
from gateway.preview import preview

#: The largest draft the console checks (a mapping file is a few kilobytes).
MAX_DRAFT_BYTES = 512 * 1024


@dataclass(slots=True)
class Checked:
    """A draft's problems, and its compiled mapping when it has none."""

    problems: list[Problem] = field(default_factory=list)
    mapping: CompiledMapping | None = None


def check_draft(group_key: str, text: str) -> Checked:
    """Every problem of ``text`` as the mapping file of ``group_key``."""
    if not group_key or "/" in group_key or "\\" in group_key or group_key.startswith("."):
        raise ValueError(f"{group_key!r} cannot be a group's file name")
    raw = text.encode("utf-8", "surrogatepass")
    name = f"{group_key}.yaml"
    if len(raw) > MAX_DRAFT_BYTES:
        return Checked([Problem(name, None, "(file)", f"larger than {MAX_DRAFT_BYTES} bytes")])
    # load_file reads a path and takes the group from the file's name: a private directory
    # holding only this draft, named as the group's file, checks it exactly as a saved one.
    with tempfile.TemporaryDirectory(prefix="gateway-console-") as tmp:
        path = Path(tmp) / name
        path.write_bytes(raw)
        mapping, problems = load_file(path)
    # The temporary directory means nothing to the operator: the group's own file name does.
    problems = [Problem(name, p.line, p.path, p.message) for p in problems]
    return Checked(problems, mapping)


def preview_draft(mapping: CompiledMapping, data: Any, limits: Limits) -> dict[str, Any]:
    """The preview document of ``data`` through a draft that compiled."""
    return preview(mapping, data, limits=limits)
