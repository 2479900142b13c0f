"""Versioned schema migrations, shared by the store backends.

Migrations are plain SQL files under ``gateway/store/migrations/<dialect>/``, named
``NNNN_description.sql`` (``0001_initial.sql``, ``0002_...``). Each is applied once, in version
order, inside a transaction, and recorded in ``schema_migrations(version, name, applied_at)``.
A released migration is never edited: schema changes are new files.

The backend-neutral parts (finding, ordering and splitting the files, planning what is pending)
are here for every backend; each backend's ``apply_migrations`` drives them
(``gateway.store.sqlite`` under ``BEGIN IMMEDIATE``, ``gateway.store.postgres`` under an
advisory lock).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from gateway.store.base import StoreError

# The directory next to this module holding one sub-directory of SQL files per dialect.
_PACKAGE = "gateway.store"
_DIR = "migrations"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(StoreError):
    """The migration files or the database's recorded versions are inconsistent."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema migration: its version, name (from the file name) and SQL text."""

    version: int
    name: str
    sql: str

    def statements(self) -> list[str]:
        """The migration's SQL split into single statements (see :func:`split_statements`)."""
        return split_statements(self.sql)


def load_migrations(dialect: str, folder: Traversable | Path | None = None) -> list[Migration]:
    """Every migration file for ``dialect`` (``"sqlite"``, ``"postgres"``), by version.

    ``folder`` overrides where the files are (tests). Raises :class:`MigrationError` on a
    badly named file, a duplicate version, or a gap in the numbering (a gap usually means a
    file was lost in a merge).
    """
    if folder is None:
        folder = resources.files(_PACKAGE) / _DIR / dialect
    if not folder.is_dir():
        raise MigrationError(f"no migrations for dialect {dialect!r} in {folder}")
    found: dict[int, Migration] = {}
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        m = _NAME.match(entry.name)
        if m is None:
            raise MigrationError(f"migration file {entry.name!r} is not named NNNN_description.sql")
        version = int(m.group(1))
        if version in found:
            raise MigrationError(f"two migration files have version {version}")
        found[version] = Migration(version, m.group(2), entry.read_text(encoding="utf-8"))
    ordered = [found[v] for v in sorted(found)]
    for expected, mig in enumerate(ordered, start=1):
        if mig.version != expected:
            raise MigrationError(f"migration {expected:04d} is missing (found {mig.version:04d})")
    return ordered


def plan(applied: Iterable[int], migrations: list[Migration]) -> list[Migration]:
    """The migrations still to apply, given the versions a database has recorded.

    Refuses a database that has versions this code does not know: it was migrated by a newer
    gateway, and running older code against it could corrupt data.
    """
    done = set(applied)
    known = {m.version for m in migrations}
    unknown = sorted(done - known)
    if unknown:
        raise MigrationError(
            f"the database has schema versions {unknown} that this gateway does not know; "
            "it was migrated by a newer version"
        )
    return [m for m in migrations if m.version not in done]


def split_statements(sql: str) -> list[str]:
    """Split a SQL script into statements, keeping ``CREATE TRIGGER ... END`` bodies whole.

    Needed because ``sqlite3.Connection.executescript`` commits any open transaction first,
    which would break running a migration atomically; executing statement by statement keeps
    it inside our transaction. ``sqlite3.complete_statement`` knows about string literals,
    comments and trigger bodies, so this is exact rather than a naive split on ``;``.
    """
    out: list[str] = []
    buf: list[str] = []
    for line in sql.splitlines(keepends=True):
        buf.append(line)
        text = "".join(buf)
        if sqlite3.complete_statement(text):
            stmt = text.strip()
            if _has_code(stmt):
                out.append(stmt)
            buf = []
    rest = "".join(buf).strip()
    if _has_code(rest):
        raise MigrationError(f"incomplete SQL statement at the end of a migration: {rest[:80]!r}")
    return out


def _has_code(text: str) -> bool:
    """Whether ``text`` holds more than comments and whitespace."""
    without = re.sub(r"--[^\n]*", "", re.sub(r"/\*.*?\*/", "", text, flags=re.S))
    return bool(without.strip(" \t\r\n;"))
