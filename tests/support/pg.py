"""Throwaway PostgreSQL stores for tests (the store tests run against every backend).

The server is the one at ``GATEWAY_TEST_POSTGRES`` (default: the local server as user
``postgres``, database ``postgres``, trust auth). A test session creates one database,
``gw_test_<random>`` (dropped when the session ends), and each test gets a schema of its own in
it, ``gw_s_<random>``, named by the store URL's ``search_path`` (a server setting asyncpg
passes on): the store's tables land there. Measured: CREATE DATABASE + DROP costs about 140 ms
a test on this machine, CREATE SCHEMA + DROP about 7 ms. :func:`throwaway_database` still makes
a whole database where a test wants one.

Without a server that answers, PostgreSQL tests are skipped with the reason; under CI (``CI``
set) they fail instead, so a CI run can never pass without them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

T = TypeVar("T")

ADMIN_URL = os.environ.get("GATEWAY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
DB_PREFIX = "gw_test_"
SCHEMA_PREFIX = "gw_s_"

_problem: list[str | None] = []  # cached probe result: [None] when the server answers
_session: list[str] = []  # the session database's URL, once made


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a loop of its own (callable inside a running loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def url_for(database: str) -> str:
    """ADMIN_URL with another database."""
    parts = urlsplit(ADMIN_URL)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, ""))


async def _admin() -> asyncpg.Connection:
    return await asyncpg.connect(ADMIN_URL, timeout=5)


async def _probe() -> str | None:
    try:
        conn = await _admin()
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


def require_server() -> None:
    """Skip (fail under CI) unless a PostgreSQL server answers at ADMIN_URL."""
    if not _problem:
        _problem.append(_run(_probe()))
    problem = _problem[0]
    if problem is None:
        return
    message = f"no PostgreSQL server answers at {ADMIN_URL} ({problem}); set GATEWAY_TEST_POSTGRES"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI must run the PostgreSQL store tests)", pytrace=False)
    pytest.skip(message)


async def create_database() -> str:
    """A new empty database; its URL."""
    name = DB_PREFIX + secrets.token_hex(6)
    conn = await _admin()
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return url_for(name)


async def drop_database(url: str) -> None:
    """Drop the database ``url`` names, closing whatever connections it still has."""
    name = urlsplit(url).path.lstrip("/")
    assert name.startswith(DB_PREFIX), name
    conn = await _admin()
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def create_database_sync() -> str:
    require_server()
    return _run(create_database())


def drop_database_sync(url: str) -> None:
    _run(drop_database(url))


async def create_schema() -> str:
    """A new empty schema in the session's database; a store URL whose tables go there."""
    if not _session:
        _session.append(await create_database())
    name = SCHEMA_PREFIX + secrets.token_hex(6)
    conn = await asyncpg.connect(_session[0], timeout=5)
    try:
        await conn.execute(f'CREATE SCHEMA "{name}"')
    finally:
        await conn.close()
    return f"{_session[0]}?search_path={name}"


async def drop_schema(url: str) -> None:
    """Drop the schema of a create_schema() URL with everything in it."""
    base, _, query = url.partition("?search_path=")
    assert query.startswith(SCHEMA_PREFIX), url
    conn = await asyncpg.connect(base, timeout=5)
    try:
        await conn.execute("SET lock_timeout = '5s'")
        await conn.execute(f'DROP SCHEMA IF EXISTS "{query}" CASCADE')
    except asyncpg.PostgresError:
        pass  # something still holds it: it goes with the session's database
    finally:
        await conn.close()


def create_schema_sync() -> str:
    require_server()
    return _run(create_schema())


def drop_schema_sync(url: str) -> None:
    _run(drop_schema(url))


def drop_session_database() -> None:
    """At the end of the test session."""
    if _session:
        _run(drop_database(_session.pop()))


@contextlib.asynccontextmanager
async def throwaway_schema() -> AsyncIterator[str]:
    """``async with throwaway_schema() as url``: a fresh store URL, dropped afterwards."""
    url = await create_schema()
    try:
        yield url
    finally:
        await drop_schema(url)


@contextlib.asynccontextmanager
async def throwaway_database() -> AsyncIterator[str]:
    """``async with throwaway_database() as url``: a fresh database, dropped afterwards."""
    url = await create_database()
    try:
        yield url
    finally:
        await drop_database(url)


async def terminate_backends(url: str) -> int:
    """Kill every other connection to ``url``'s database (an outage as the store sees it)."""
    conn = await asyncpg.connect(url, timeout=5)
    try:
        return await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
