"""Reading a store's tables directly, the way an operator's SQL client would: on a connection of
its own, never through the store under test (so a test sees what is committed, not what the
store believes)."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import asyncpg

from gateway.store.base import Store
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SQLiteStore


async def scalar(store: Store, sql: str) -> Any:
    """The first column of the first row of ``sql`` run on a fresh connection to ``store``'s
    database (SQLite: its file, read-only; PostgreSQL: its DSN, schema included)."""
    if isinstance(store, SQLiteStore):
        path = store.path

        def read() -> Any:
            con = sqlite3.connect(path, isolation_level=None)
            try:
                con.execute("PRAGMA query_only = ON")
                return con.execute(sql).fetchone()[0]
            finally:
                con.close()

        return await asyncio.to_thread(read)
    if isinstance(store, PostgresStore):
        conn = await asyncpg.connect(store.dsn, timeout=10)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()
    raise TypeError(f"no direct reader for {type(store).__name__}")


async def count_records(store: Store) -> int:
    """How many records ``store``'s database holds (committed)."""
    n: int = await scalar(store, "SELECT count(*) FROM records")
    return n


def sqlite_schema_versions(con: sqlite3.Connection) -> list[int]:
    """The versions recorded in ``schema_migrations`` (empty before the first migration)."""
    try:
        return [r[0] for r in con.execute("SELECT version FROM schema_migrations ORDER BY 1")]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
