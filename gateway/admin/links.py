"""Admin API: links, what integrations called the records' subjects (``GET /admin/v1/links``).

A link is (group, integration, link key) -> the id the integration gave (an integrator.io
licence id for an e-mail), written when the delivery that created it was marked delivered
(docs/links-and-rollups.md). Listed in (group, integration, link key) order, a page at a time.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.admin.deliveries import _bad, _limit, _store
from gateway.appkeys import STORE
from gateway.errors import json_response
from gateway.ingest.api import iso
from gateway.store.base import Link, LinkFilter

#: Page size of ``GET /admin/v1/links``: default and largest.
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

_PARAMS = ("group", "integration", "key", "cursor", "limit")


def link_view(link: Link) -> dict[str, Any]:
    """One link as the admin API shows it."""
    return {
        "group_key": link.group_key,
        "integration": link.integration,
        "link_key": link.link_key,
        "external_id": link.external_id,
        "delivery_id": link.delivery_id,
        "created_at": iso(link.created_at),
        "updated_at": iso(link.updated_at),
    }


def _params(request: web.Request) -> dict[str, str]:
    """The query parameters, each at most once, none unknown, none empty."""
    out: dict[str, str] = {}
    for key in request.query:
        if key not in _PARAMS:
            raise _bad(key, f"unknown parameter; known: {', '.join(_PARAMS)}", "UNKNOWN_PARAMETER")
        values = request.query.getall(key)
        if len(values) > 1:
            raise _bad(key, "given more than once")
        if not values[0]:
            raise _bad(key, "empty; leave it out instead")
        out[key] = values[0]
    return out


async def list_links(request: web.Request) -> web.Response:
    """``GET /admin/v1/links?group=&integration=&key=&cursor=&limit=``: links matching the
    filter; ``next_cursor`` continues (null on the last page)."""
    q = _params(request)
    flt = LinkFilter(q.get("group"), q.get("integration"), q.get("key"))
    limit = _limit("limit", q["limit"], MAX_LIMIT, "INVALID_PARAMETER") if "limit" in q else None
    try:
        page = await _store(
            request.config_dict[STORE].list_links(
                flt, cursor=q.get("cursor"), limit=limit or DEFAULT_LIMIT
            )
        )
    except ValueError:
        raise _bad("cursor", "not a cursor this API gave out (next_cursor)") from None
    return json_response(
        {"links": [link_view(x) for x in page.items], "next_cursor": page.next_cursor}
    )


def add_routes(app: web.Application) -> None:
    """Register the links route on the admin sub-application."""
    app.router.add_get("/links", list_links)
