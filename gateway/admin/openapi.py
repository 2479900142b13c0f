"""Admin API: its own OpenAPI document, ``GET /admin/v1/openapi.json``."""

from __future__ import annotations

from importlib import resources

from aiohttp import web


def admin_openapi_document() -> bytes:
    """The OpenAPI 3.1 document of the admin API, as shipped in the package."""
    return resources.files("gateway.admin").joinpath("openapi.json").read_bytes()


async def openapi(request: web.Request) -> web.Response:
    """``GET /admin/v1/openapi.json``."""
    return web.Response(body=admin_openapi_document(), content_type="application/json")


def add_routes(app: web.Application) -> None:
    """Register the document's route on the admin sub-application."""
    app.router.add_get("/openapi.json", openapi)
