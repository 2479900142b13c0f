"""Versioned schema migrations, shared by the store backends.

Migrations are plain SQL files under ``gateway/store/migrations/<dialect>/``, named
``NNNN_description.sql`` (``0001_initial.sql``, ``0002_...``). Each is applied once, in version
order, inside a transaction, and recorded in ``schema_migrations(version, name, applied_at)``.
A released migration is never edited: schema changes are new files.

The backend-neutral parts (finding, ordering and splitting the files, planning what is pending)
are here for every backend; :func:`apply_sqlite` drives them for SQLite and
``gateway.store.postgres.apply_migrations`` for PostgreSQL (dialect ``postgres``: the same plan
with asyncpg, under an advisory lock instead of ``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import re
import sqlite3
import time
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

SCHEMA_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at REAL NOT NULL
)
"""


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


def apply_sqlite(conn: sqlite3.Connection, migrations: list[Migration] | None = None) -> list[int]:
    """Apply pending migrations to ``conn`` (autocommit mode); return the versions applied.

    ``migrations`` defaults to the packaged SQLite ones. Everything runs in one
    ``BEGIN IMMEDIATE`` transaction: concurrent openers of the same file serialise on the
    write lock, and the second finds nothing left to do. A failing migration rolls back
    whole, leaving the database at its previous version.
    """
    if migrations is None:
        migrations = load_migrations("sqlite")
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(SCHEMA_TABLE_SQL)
        applied = [row[0] for row in conn.execute("SELECT version FROM schema_migrations")]
        todo = plan(applied, migrations)
        for mig in todo:
            for stmt in mig.statements():
                conn.execute(stmt)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (mig.version, mig.name, time.time()),
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return [m.version for m in todo]


def applied_versions_sqlite(conn: sqlite3.Connection) -> list[int]:
    """The versions recorded in ``schema_migrations`` (empty before the first migration)."""
    try:
        return [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
