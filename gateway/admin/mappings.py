"""Admin API: mapping groups, reload and preview."""

from __future__ import annotations

from aiohttp import web


def add_routes(app: web.Application) -> None:
    """Register the mapping routes (``/admin/v1/groups``, ``/reload``, ``/preview``)."""
