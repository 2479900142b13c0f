"""The store: records, deliveries, access keys and idempotency keys (see ``base``).

:func:`open_store` picks the backend from a URL.
"""

from __future__ import annotations

from gateway.store.base import Store

SUPPORTED_SCHEMES = ("sqlite", "postgresql", "postgres")
_SQLITE_PREFIX = "sqlite:///"

__all__ = ["SUPPORTED_SCHEMES", "Store", "open_store"]


def open_store(url: str, *, synchronous: str = "FULL", max_pending_writes: int = 50000) -> Store:
    """The store that ``url`` names, not yet opened (call ``await store.open()``).

    ``sqlite:///var/gateway.db`` is a path relative to the working directory and
    ``sqlite:////srv/gateway.db`` an absolute one (the usual SQLAlchemy spelling); missing
    parent directories are created on open. ``synchronous`` (``FULL`` or ``NORMAL``) applies to
    SQLite only.

    ``postgresql://user:password@host:5432/dbname`` (or ``postgres://``) is a PostgreSQL
    database shared by any number of gateway processes; its query may set the pool's size and
    timeouts: ``?pool_min=1&pool_max=10&connect_timeout=10&command_timeout=60`` (the defaults;
    see gateway.store.postgres). Other query parameters go to asyncpg (``sslmode=require``...).

    Raises ValueError for a malformed URL or an unsupported scheme.
    """
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ValueError(
            f"store URL {url!r} has no scheme; supported: "
            + ", ".join(f"{s}://" for s in SUPPORTED_SCHEMES)
        )
    scheme = scheme.lower()
    if scheme == "sqlite":
        if not url.lower().startswith(_SQLITE_PREFIX) or len(url) == len(_SQLITE_PREFIX):
            raise ValueError(
                f"SQLite store URL {url!r} must look like sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db"
            )
        from gateway.store.sqlite import SQLiteStore

        return SQLiteStore(
            url[len(_SQLITE_PREFIX) :],
            synchronous=synchronous,
            max_pending_writes=max_pending_writes,
        )
    if scheme in ("postgresql", "postgres"):
        if synchronous.upper() not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        from gateway.store.postgres import PostgresStore

        return PostgresStore.from_url(url, max_pending_writes=max_pending_writes)
    raise ValueError(
        f"unsupported store URL scheme {scheme!r} in {url!r}; supported: "
        + ", ".join(f"{s}://" for s in SUPPORTED_SCHEMES)
    )
