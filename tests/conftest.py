"""Shared fixtures. Keep each area in its own section."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from gateway.store import open_store
from gateway.store.base import Store
from tests.support import pg

# -- hypothesis -----------------------------------------------------------------------------
# Property tests assert behaviour, not speed: on a shared, loaded CI machine a slow example must
# not fail the run (timing is measured by bench/, never by tests).
settings.register_profile("gateway", deadline=None)
settings.load_profile("gateway")

# -- store ----------------------------------------------------------------------------------
# Every backend the store tests run against. A backend joins by adding its name here and a
# branch in store_url_for(). PostgreSQL: a schema per test in a database per session on the
# local server (tests/pg.py: skipped when no server answers, failing instead under CI).
STORE_BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session", autouse=True)
def _postgres_session_database() -> Iterator[None]:
    """Drops the session's PostgreSQL test database, if a test made it."""
    yield
    pg.drop_session_database()


def store_url_for(backend: str, tmp_path: Path) -> str:
    """A URL for a fresh, empty store of ``backend`` private to one test (see
    drop_store_url to clean up)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'gateway.db'}"
    if backend == "postgresql":
        return pg.create_schema_sync()
    raise ValueError(f"no test store URL for backend {backend!r}")


def drop_store_url(url: str) -> None:
    """Remove what store_url_for() made outside the test's tmp_path."""
    if url.startswith("postgresql://"):
        pg.drop_schema_sync(url)


@pytest.fixture(params=STORE_BACKENDS)
def store_backend(request: pytest.FixtureRequest) -> str:
    """The store backend under test (parametrised)."""
    return request.param


@pytest.fixture
def store_url(store_backend: str, tmp_path: Path) -> Iterator[str]:
    """The URL of this test's store; open it again to test what survives a restart."""
    url = store_url_for(store_backend, tmp_path)
    try:
        yield url
    finally:
        drop_store_url(url)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """An opened, empty store (closed after the test, unless the test closed it)."""
    s = open_store(store_url)
    await s.open()
    try:
        yield s
    finally:
        await s.close()
