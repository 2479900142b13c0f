"""Admin API: mapping groups, reload and preview."""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway.appkeys import MAPPINGS, RELOADER, SETTINGS
from gateway.errors import ApiError, json_response
from gateway.preview import limits_of, preview_group


async def reload_mappings(request: web.Request) -> web.Response:
    """``POST /admin/v1/reload``: reload changed mapping files now; what changed and failed."""
    result = await request.config_dict[RELOADER].reload("admin")
    return json_response(result.to_dict())


async def list_groups(request: web.Request) -> web.Response:
    """``GET /admin/v1/groups``: every live group, its version and integrations, and every
    mapping file whose latest version failed to load."""
    registry = request.config_dict[MAPPINGS]
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
    """``POST /admin/v1/preview`` ``{"group_key": G, "data": {...}}``: what each integration of
    the group would get for the record (the document ``gateway preview --json`` prints);
    nothing is sent or stored. 404 when the group has no live mapping (with its file's errors
    when the file is broken)."""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "MALFORMED_JSON", f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("group_key"), str):
        raise ApiError(
            400,
            "INVALID_REQUEST",
            'the body is {"group_key": "...", "data": {...}}',
            errors=[{"field": "group_key", "message": "required, a string"}],
        )
    group = body["group_key"]
    registry = request.config_dict[MAPPINGS]
    settings = request.config_dict[SETTINGS]
    doc = preview_group(registry, group, body.get("data"), limits=limits_of(settings))
    if doc is None:
        problems = registry.problems_of(group)
        raise ApiError(
            404,
            "UNKNOWN_GROUP",
            f"group {group!r} is not live: its mapping file has errors"
            if problems
            else f"no mapping for group {group!r}",
            errors=[{"field": "group_key", "message": str(p)} for p in problems] or None,
        )
    return json_response(doc)


def add_routes(app: web.Application) -> None:
    """Register the mapping routes (groups, reload, preview) on the admin sub-application."""
    # GET /groups is gateway.admin.groups' (the management API), with pagination.
    app.router.add_post("/reload", reload_mappings)
    app.router.add_post("/preview", preview_record)
