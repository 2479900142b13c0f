"""``${ENV_VAR}`` and ``${file:/path}`` references in mapping files, resolved at load.

Secrets are never written in mapping files; a reference names where the value lives. The
resolved values are kept apart from the spec (see :class:`Resolved`) so previews and errors can
redact them: a value that came from a reference is never shown.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.mapping.errors import KeyPath, SpecError

REFERENCE = re.compile(r"\$\{(?:file:(?P<file>[^}]+)|(?P<env>[A-Za-z_][A-Za-z0-9_]*))\}")
REDACTED = "***"


@dataclass(slots=True)
class Resolved:
    """A block with its references resolved, and the key paths whose values are secret."""

    value: Any
    secret_paths: set[KeyPath] = field(default_factory=set)

    def redacted(self) -> Any:
        """The block with every value that came from a reference replaced by ``***``."""
        return _redact(self.value, (), self.secret_paths)


def _redact(value: Any, path: KeyPath, secret: set[KeyPath]) -> Any:
    if path in secret:
        return REDACTED
    if isinstance(value, dict):
        return {k: _redact(v, (*path, k), secret) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, (*path, i), secret) for i, v in enumerate(value)]
    return value


def has_reference(value: Any) -> bool:
    """Whether a string holds a ``${...}`` reference."""
    return isinstance(value, str) and REFERENCE.search(value) is not None


def resolve(
    value: Any,
    path: KeyPath,
    errors: list[SpecError],
    environ: Mapping[str, str] | None = None,
) -> Resolved:
    """Resolve every reference in ``value`` (a block of a mapping file).

    Unresolvable references become errors at their key path; the value is then left as is.
    """
    env = os.environ if environ is None else environ
    out = Resolved(None)
    out.value = _resolve(value, path, (), errors, env, out.secret_paths)
    return out


def _resolve(
    value: Any,
    base: KeyPath,
    path: KeyPath,
    errors: list[SpecError],
    env: Mapping[str, str],
    secret: set[KeyPath],
) -> Any:
    if isinstance(value, dict):
        return {k: _resolve(v, base, (*path, k), errors, env, secret) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, base, (*path, i), errors, env, secret) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    failed = False

    def sub(m: re.Match[str]) -> str:
        nonlocal failed
        if m.group("env"):
            name = m.group("env")
            if name not in env:
                errors.append(SpecError((*base, *path), f"environment variable {name} is not set"))
                failed = True
                return ""
            return env[name]
        file = Path(m.group("file").strip())
        try:
            return file.read_text().strip()
        except OSError as exc:
            errors.append(
                SpecError((*base, *path), f"cannot read secret file {file}: {exc.strerror}")
            )
            failed = True
            return ""

    resolved = REFERENCE.sub(sub, value)
    if failed:
        return value
    secret.add(path)
    return resolved
