"""Admin API: mapping groups and reload."""

from __future__ import annotations

from aiohttp import web

from gateway.admin.api import require_admin
from gateway.errors import json_response


async def reload_mappings(request: web.Request) -> web.Response:
    """``POST /admin/v1/reload``: reload changed mapping files now; what changed and failed."""
    from gateway.app import RELOADER

    require_admin(request)
    result = await request.app[RELOADER].reload("admin")
    return json_response(result.to_dict())


async def list_groups(request: web.Request) -> web.Response:
    """``GET /admin/v1/groups``: every live group, its version and integrations, and every
    mapping file whose latest version failed to load."""
    from gateway.app import MAPPINGS

    require_admin(request)
    registry = request.app[MAPPINGS]
    groups = []
    for key in registry.groups():
        mapping = registry.get(key)
        if mapping is None:
            continue
        groups.append(
            {
                "group_key": key,
                "version": mapping.version,
                "description": mapping.description,
                "integrations": [
                    {
                        "name": i.name,
                        "type": i.type.name,
                        "action": i.action.name,
                        "enabled": i.enabled,
                    }
                    for i in mapping.integrations
                ],
                "problems": [p.to_dict() for p in registry.problems_of(key)],
            }
        )
    return json_response(
        {"groups": groups, "problems": [p.to_dict() for p in registry.all_problems()]}
    )


async def preview_record(request: web.Request) -> web.Response:
    """``POST /admin/v1/preview`` ``{"group_key", "data"}``: the preview document."""
    import orjson

    from gateway.app import MAPPINGS
    from gateway.errors import ApiError
    from gateway.mapping.preview import preview

    require_admin(request)
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "MALFORMED_JSON", f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("group_key"), str):
        raise ApiError(400, "INVALID_REQUEST", 'the body is {"group_key": ..., "data": {...}}')
    mapping = request.app[MAPPINGS].get(body["group_key"])
    if mapping is None:
        raise ApiError(404, "UNKNOWN_GROUP", f"no live mapping for group {body['group_key']!r}")
    return json_response(preview(mapping, body.get("data")))


def add_routes(app: web.Application) -> None:
    """Register the mapping routes (``/admin/v1/groups``, ``/admin/v1/reload``)."""
    app.router.add_get("/admin/v1/groups", list_groups)
    app.router.add_post("/admin/v1/reload", reload_mappings)
    app.router.add_post("/admin/v1/preview", preview_record)
