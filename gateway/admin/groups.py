"""Admin API: groups and their integrations, versioned, written through to the mapping files.

The files in the mappings directory stay the source of truth. Every write here:

1. takes the directory's write lock (this process's and a file lock shared with every gateway
   process on the directory);
2. compares ``If-Match`` with the version of the file as it is now (the ETag of GET): none is
   ``428``, another is ``412`` -- so a writer never overwrites a change it has not seen, made
   through the API or by hand;
3. checks the new text exactly like ``gateway check`` (``422`` listing every problem with its
   key path and line), so a refused change writes nothing;
4. writes the file atomically, keeping comments and order of what did not change
   (:mod:`gateway.mapping.writer`), records the new version's text and an audit entry in the
   store, and reloads the mappings so the change is live when the answer comes.

A version is the SHA-256 prefix of the file's bytes, the same one deliveries record. A hand
edit is recorded (actor ``file``) when a reload picks it up (:func:`history_listener`), or, if
it was made while the gateway was stopped, when the API next reads or writes the group.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from gateway.admin.common import (
    actor_of,
    audit,
    iso,
    parse_body,
    principal,
    read_limit,
    store_errors,
)
from gateway.appkeys import ENGINE, MAPPINGS, RELOADER, SECRET_BOX, STORE
from gateway.auth.keys import create_key
from gateway.errors import ApiError, json_response
from gateway.ids import GROUP_KEY_RE
from gateway.mapping import writer
from gateway.mapping.loader import MappingRegistry, Problem, ReloadResult
from gateway.store.base import MappingVersion, Store, StoreError

#: Serialises API writes in this process (the file lock serialises processes).
WRITE_LOCK: web.AppKey[asyncio.Lock] = web.AppKey("admin_write_lock", asyncio.Lock)

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


# -- files -----------------------------------------------------------------------------------


def _directory(request: web.Request) -> Path:
    return request.config_dict[MAPPINGS].directory


def _path(request: web.Request, group: str) -> Path:
    """The group's file; 404 for a name that cannot be a group (never a path outside)."""
    # A group outside a scoped token's groups is answered exactly like a missing one.
    if not GROUP_KEY_RE.fullmatch(group) or not principal(request).sees(group):
        raise _no_group(group)
    return _directory(request) / f"{group}.yaml"


def _no_group(group: str) -> ApiError:
    return ApiError(404, "UNKNOWN_GROUP", f"no group {group!r}")


def _read(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return None


def _existing(request: web.Request, group: str) -> tuple[Path, str]:
    path = _path(request, group)
    text = _read(path)
    if text is None:
        raise _no_group(group)
    return path, text


def _problems_error(problems: list[Problem], what: str) -> ApiError:
    return ApiError(
        422,
        "INVALID_MAPPING",
        f"{what}: {len(problems)} problem(s); nothing was written",
        errors=[{"field": p.path, "line": p.line, "message": p.message} for p in problems],
    )


def _etag(version: str) -> dict[str, str]:
    return {"ETag": f'"{version}"'}


def _check_if_match(request: web.Request, current: str) -> None:
    given = request.headers.get("If-Match")
    if given is None:
        raise ApiError(
            428,
            "PRECONDITION_REQUIRED",
            "this write needs 'If-Match: <version>' (the ETag of GET on the group)",
            extra={"current_version": current},
        )
    wanted = {t.strip().removeprefix("W/").strip('"') for t in given.split(",")}
    if "*" not in wanted and current not in wanted:
        raise ApiError(
            412,
            "VERSION_MISMATCH",
            f"the group changed: it is at version {current}, not {given.strip()}; "
            "read it again and reapply your change",
            extra={"current_version": current},
        )


@contextlib.asynccontextmanager
async def _write_lock(request: web.Request) -> AsyncIterator[None]:
    async with request.app[WRITE_LOCK]:
        fd = await asyncio.to_thread(writer.lock_directory, _directory(request))
        try:
            yield
        finally:
            writer.unlock_directory(fd)


async def _record_file_version(store: Store, group: str, text: str) -> None:
    """Record ``text`` as the group's next version (actor ``file``) unless the history ends
    with it already: the file was created or edited by hand."""
    version = writer.version_of(text)
    latest = await store.latest_mapping_version(group)
    if latest is None or latest.version != version or latest.action == "delete":
        now = time.time()
        await store.add_mapping_version(group, version, text, now, "file", "file")
        await store.add_audit(
            now, "file", "group.file", group, orjson.dumps({"version": version}).decode()
        )


async def _sync_history(request: web.Request, group: str, text: str | None) -> None:
    """Record a hand edit the reload listener has not recorded yet (one made while the
    gateway was stopped, or by another gateway process)."""
    if text is not None:
        await _record_file_version(request.config_dict[STORE], group, text)


def history_listener(
    app: web.Application, admin: web.Application
) -> Callable[[ReloadResult, str], Awaitable[None]]:
    """A reload listener that records every group a reload loaded from a changed file as a
    new version, when the history does not end with it (a hand edit; the API records its
    own writes under the same lock, so they are never recorded twice).

    The start-up reload is left out: it loads every file, and with many groups that would be
    a store read each; a file changed while the gateway was stopped is recorded when the API
    first reads or writes its group.
    """

    async def on_reload(result: ReloadResult, reason: str) -> None:
        if reason == "start" or not result.loaded:
            return
        registry, store = app[MAPPINGS], app[STORE]
        # Both locks, as a write holds them: so a write by this or another gateway process
        # sharing the directory (whose watchers also see it) is recorded once, as its own.
        async with admin[WRITE_LOCK]:
            fd = await asyncio.to_thread(writer.lock_directory, registry.directory)
            try:
                await _record_loaded(registry, store, result.loaded)
            finally:
                writer.unlock_directory(fd)

    return on_reload


async def _record_loaded(registry: MappingRegistry, store: Store, groups: list[str]) -> None:
    for group in groups:
        live = registry.get(group)
        text = _read(registry.directory / f"{group}.yaml")
        # Only the text that was loaded: a newer one is the next reload's.
        if live is not None and text is not None and writer.version_of(text) == live.version:
            await _record_file_version(store, group, text)


async def _reload(request: web.Request) -> None:
    await request.config_dict[RELOADER].reload("admin")


async def _write(
    request: web.Request,
    group: str,
    text: str,
    *,
    action: str,
    expect_new: bool = False,
    detail: dict[str, Any] | None = None,
) -> str:
    """Check and write ``text`` as the group's file; return its version.

    ``expect_new``: the group must not exist yet (409); otherwise it must, and If-Match must
    name its current version.
    """
    path = _path(request, group)
    store = request.config_dict[STORE]
    async with _write_lock(request):
        current = _read(path)
        if expect_new:
            if current is not None:
                raise ApiError(409, "GROUP_EXISTS", f"group {group!r} exists already")
        else:
            if current is None:
                raise _no_group(group)
            _check_if_match(request, writer.version_of(current))
        problems = writer.check_text(text, group, path.name)
        if problems:
            raise _problems_error(problems, f"the new mapping of group {group!r} is invalid")
        await _sync_history(request, group, current)
        if text == current:
            # Nothing changes: no write, no new version (a repeated PUT is idempotent).
            return writer.version_of(text)
        await asyncio.to_thread(writer.atomic_write, path, text)
        version = writer.version_of(text)
        await store.add_mapping_version(
            group, version, text, time.time(), actor_of(request), action
        )
        await audit(request, f"group.{action}", group, {"version": version, **(detail or {})})
    await _reload(request)
    return version


def _render(content: dict[str, Any], previous: str | None) -> str:
    try:
        return writer.render(content, previous)
    except writer.WriteError as exc:
        raise ApiError(422, "INVALID_MAPPING", str(exc)) from None


# -- views -----------------------------------------------------------------------------------


def _mtime(path: Path) -> str | None:
    try:
        return iso(path.stat().st_mtime)
    except OSError:
        return None


def _group_view(request: web.Request, group: str, path: Path, text: str) -> dict[str, Any]:
    registry = request.config_dict[MAPPINGS]
    live = registry.get(group)
    version = writer.version_of(text)
    problems = writer.check_text(text, group, path.name)
    return {
        "group_key": group,
        "version": version,
        "live_version": live.version if live else None,
        "updated_at": _mtime(path),
        "content": writer.parse(text),
        "problems": [p.to_dict() for p in problems],
    }


def _summary(request: web.Request, group: str, path: Path, text: str) -> dict[str, Any]:
    registry = request.config_dict[MAPPINGS]
    live = registry.get(group)
    content = writer.parse(text)
    entries = content.get("integrations") if isinstance(content, dict) else None
    return {
        "group_key": group,
        "version": writer.version_of(text),
        "live_version": live.version if live else None,
        "updated_at": _mtime(path),
        "description": content.get("description") if isinstance(content, dict) else None,
        "integrations": [
            {
                "name": str(e.get("name")),
                "type": str(e.get("type")),
                "action": e.get("action") if isinstance(e.get("action"), str) else None,
                "enabled": e.get("enabled", True) is not False,
            }
            for e in (entries if isinstance(entries, list) else [])
            if isinstance(e, dict)
        ],
        "problems": [p.to_dict() for p in registry.problems_of(group)],
    }


def _version_view(v: MappingVersion, *, text: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "number": v.number,
        "version": v.version,
        "created_at": iso(v.created_at),
        "actor": v.actor,
        "action": v.action,
    }
    if text:
        out["text"] = v.content
        out["content"] = writer.parse(v.content)
    return out


def _encode_cursor(last: str) -> str:
    return base64.urlsafe_b64encode(last.encode()).rstrip(b"=").decode()


def _bad_cursor() -> ApiError:
    return ApiError(
        400,
        "INVALID_PARAMETER",
        "cursor: not a cursor this API returned",
        errors=[{"field": "cursor", "message": "not a cursor this API returned"}],
    )


def _decode_cursor(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise _bad_cursor() from None


# -- groups ----------------------------------------------------------------------------------


async def list_groups(request: web.Request) -> web.Response:
    """``GET /groups``: every group (every ``*.yaml`` in the mappings directory, broken ones
    too), by key, a page at a time (``cursor``, ``limit``; ``next_cursor`` null on the last)."""
    limit = read_limit(request, DEFAULT_LIMIT, MAX_LIMIT)
    cursor = request.query.get("cursor")
    after = _decode_cursor(cursor) if cursor else None
    registry = request.config_dict[MAPPINGS]
    try:
        names = sorted(
            p.name[: -len(".yaml")]
            for p in _directory(request).iterdir()
            if p.name.endswith(".yaml") and not p.name.startswith(".")
        )
    except OSError as exc:
        raise ApiError(
            503, "MAPPINGS_UNREADABLE", f"cannot read the mappings directory: {exc.strerror}"
        ) from None
    who = principal(request)
    names = [n for n in names if who.sees(n) and (after is None or n > after)]
    page, more = names[:limit], len(names) > limit
    groups = []
    for name in page:
        path = _directory(request) / f"{name}.yaml"
        text = _read(path)
        if text is not None:
            groups.append(_summary(request, name, path, text))
    return json_response(
        {
            "groups": groups,
            "next_cursor": _encode_cursor(page[-1]) if more and page else None,
            "problems": [
                p.to_dict() for p in registry.all_problems() if who.sees(Path(p.file).stem)
            ],
        }
    )


async def get_group(request: web.Request) -> web.Response:
    """``GET /groups/{group}``: the file's content as JSON, its version (also the ETag), when
    it changed, the live version and every problem of the file."""
    group = request.match_info["group"]
    path, text = _existing(request, group)
    await _sync_history(request, group, text)
    view = _group_view(request, group, path, text)
    return json_response(view, headers=_etag(view["version"]))


def _json_object(body: Any, shape: str) -> dict[str, Any]:
    """A copy of ``body`` when it is a JSON object; else 422 naming the ``shape`` expected."""
    if not isinstance(body, dict):
        raise ApiError(
            422,
            "INVALID_MAPPING",
            f"the body is {shape}",
            errors=[{"field": "(top level)", "message": "must be a JSON object"}],
        )
    return dict(body)


def _mapping_body(body: Any, group: str | None) -> dict[str, Any]:
    content = _json_object(body, "a mapping file as JSON: {group_key?, description?, integrations}")
    if group is not None:
        content.setdefault("group_key", group)
    return content


async def _created(
    request: web.Request, group: str, version: str, *, create: bool, key_name: Any
) -> web.Response:
    path, text = _existing(request, group)
    view = _group_view(request, group, path, text)
    if create:
        created = await create_key(
            request.config_dict[STORE],
            request.config_dict[SECRET_BOX],
            [group],
            key_name if isinstance(key_name, str) else None,
        )
        await audit(
            request,
            "key.create",
            created.access_key_id,
            {"groups": created.groups, "name": created.name},
        )
        view["access_key"] = {
            "access_key_id": created.access_key_id,
            "secret_access_key": created.secret_access_key,
            "groups": created.groups,
            "name": created.name,
        }
    headers = {**_etag(version), "Location": str(request.app.router["group"].url_for(group=group))}
    return json_response(view, status=201, headers=headers)


def _options(body: dict[str, Any]) -> tuple[bool, Any]:
    create = body.pop("create_key", False)
    key_name = body.pop("key_name", None)
    if not isinstance(create, bool):
        raise ApiError(
            422,
            "INVALID_REQUEST",
            "create_key must be true or false",
            errors=[{"field": "create_key", "message": "must be a boolean"}],
        )
    if key_name is not None and not isinstance(key_name, str):
        raise ApiError(
            422,
            "INVALID_REQUEST",
            "key_name must be a string",
            errors=[{"field": "key_name", "message": "must be a string"}],
        )
    return create, key_name


def _new_group_key() -> str:
    return "g" + secrets.token_hex(6)


async def create_group(request: web.Request) -> web.Response:
    """``POST /groups``: a new group from its content (201). ``group_key`` is generated when
    absent; ``"create_key": true`` also makes an access key for it, its secret shown once."""
    body = _mapping_body(await parse_body(request), None)
    create, key_name = _options(body)
    group = body.get("group_key")
    if group is None:
        group = body["group_key"] = _new_group_key()
    if not isinstance(group, str) or not GROUP_KEY_RE.fullmatch(group):
        raise ApiError(
            422,
            "INVALID_MAPPING",
            "group_key: letters, digits, '_', '.', '-' (up to 128), starting with a letter "
            "or digit",
            errors=[{"field": "group_key", "message": "not a valid group key"}],
        )
    version = await _write(request, group, _render(body, None), action="create", expect_new=True)
    return await _created(request, group, version, create=create, key_name=key_name)


async def replace_group(request: web.Request) -> web.Response:
    """``PUT /groups/{group}`` (If-Match): replace the group's content."""
    group = request.match_info["group"]
    _, text = _existing(request, group)
    body = _mapping_body(await parse_body(request), group)
    version = await _write(request, group, _render(body, text), action="update")
    path, text = _existing(request, group)
    return json_response(_group_view(request, group, path, text), headers=_etag(version))


async def delete_group(request: web.Request) -> web.Response:
    """``DELETE /groups/{group}`` (If-Match): remove the file (204). With deliveries pending,
    ``409`` unless ``?pending=drop`` (they end dead: no mapping) or ``?pending=keep`` (their
    lanes are paused, so they wait for the group to come back)."""
    group = request.match_info["group"]
    pending_param = request.query.get("pending")
    if pending_param not in (None, "drop", "keep"):
        raise ApiError(
            400,
            "INVALID_PARAMETER",
            "pending: 'drop' or 'keep'",
            errors=[{"field": "pending", "message": "must be drop or keep"}],
        )
    path = _path(request, group)
    store = request.config_dict[STORE]
    async with _write_lock(request):
        current = _read(path)
        if current is None:
            raise _no_group(group)
        _check_if_match(request, writer.version_of(current))
        lanes = [
            s for s in await store.lane_stats(time.time()) if s.group_key == group and s.pending > 0
        ]
        pending = sum(s.pending for s in lanes)
        if pending and pending_param is None:
            raise ApiError(
                409,
                "PENDING_DELIVERIES",
                f"group {group!r} has {pending} pending deliveries: say what to do with them "
                "with ?pending=drop or ?pending=keep",
                extra={"pending": pending},
            )
        await _sync_history(request, group, current)
        await asyncio.to_thread(writer.delete, path)
        if pending and pending_param == "keep":
            for s in lanes:
                await request.config_dict[ENGINE].pause(group, s.integration)
        await store.add_mapping_version(group, "", "", time.time(), actor_of(request), "delete")
        await audit(
            request,
            "group.delete",
            group,
            {
                "version": writer.version_of(current),
                "pending": pending,
                "pending_action": pending_param,
            },
        )
    await _reload(request)
    return web.Response(status=204)


async def clone_group(request: web.Request) -> web.Response:
    """``POST /groups/{group}/clone`` ``{"group_key"?, "create_key"?}``: a new group with the
    same integrations (201). Secrets stay the ``${ENV}`` references the file holds."""
    group = request.match_info["group"]
    _, text = _existing(request, group)
    raw = await parse_body(request, allow_empty=True)
    body = _mapping_body(raw if raw is not None else {}, None)
    create, key_name = _options(body)
    new = body.get("group_key", None)
    if new is None:
        new = _new_group_key()
    if not isinstance(new, str) or not GROUP_KEY_RE.fullmatch(new):
        raise ApiError(
            422,
            "INVALID_MAPPING",
            "group_key: not a valid group key",
            errors=[{"field": "group_key", "message": "not a valid group key"}],
        )
    content = writer.parse(text, raw=True)
    if not isinstance(content, dict):
        raise ApiError(
            422, "INVALID_MAPPING", f"group {group!r}'s file is not a valid mapping to clone"
        )
    content["group_key"] = new
    version = await _write(
        request,
        new,
        _render(content, text),
        action="clone",
        expect_new=True,
        detail={"from": group},
    )
    return await _created(request, new, version, create=create, key_name=key_name)


async def list_versions(request: web.Request) -> web.Response:
    """``GET /groups/{group}/versions``: every recorded version, oldest first."""
    group = request.match_info["group"]
    _, text = _existing(request, group)
    await _sync_history(request, group, text)
    versions = await request.config_dict[STORE].list_mapping_versions(group)
    return json_response(
        {
            "group_key": group,
            "current_version": writer.version_of(text),
            "versions": [_version_view(v) for v in versions],
        }
    )


def _number(field: str, value: Any) -> int:
    # Bounded: a number past the store's integers is no version, not a store error.
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**31:
        return value
    if isinstance(value, str) and value.isdigit() and len(value) < 10 and int(value) > 0:
        return int(value)
    raise ApiError(
        400 if field == "path" else 422,
        "INVALID_PARAMETER" if field == "path" else "INVALID_REQUEST",
        f"{field}: a version number (1, 2, ...) from GET .../versions",
        errors=[{"field": "version", "message": "a positive version number"}],
    )


async def _version(request: web.Request, group: str, number: int) -> MappingVersion:
    found = await request.config_dict[STORE].get_mapping_version(group, number)
    if found is None or found.action == "delete":
        raise ApiError(404, "UNKNOWN_VERSION", f"group {group!r} has no version {number}")
    return found


async def get_version(request: web.Request) -> web.Response:
    """``GET /groups/{group}/versions/{number}``: one version with its whole text."""
    group = request.match_info["group"]
    _existing(request, group)
    found = await _version(request, group, _number("path", request.match_info["number"]))
    return json_response(_version_view(found, text=True))


async def rollback_group(request: web.Request) -> web.Response:
    """``POST /groups/{group}/rollback`` ``{"version": N}`` (If-Match): write version N's text
    back as a new version (checked like any change)."""
    group = request.match_info["group"]
    _existing(request, group)
    body = await parse_body(request)
    if not isinstance(body, dict) or "version" not in body:
        raise ApiError(
            422,
            "INVALID_REQUEST",
            'the body is {"version": N}',
            errors=[{"field": "version", "message": "required"}],
        )
    old = await _version(request, group, _number("version", body["version"]))
    version = await _write(
        request, group, old.content, action="rollback", detail={"to": old.number}
    )
    path, text = _existing(request, group)
    return json_response(_group_view(request, group, path, text), headers=_etag(version))


# -- integrations of a group -----------------------------------------------------------------


def _entries(text: str, group: str) -> tuple[dict[str, Any], list[Any]]:
    content = writer.parse(text, raw=True)
    if not isinstance(content, dict):
        raise ApiError(
            409,
            "GROUP_FILE_INVALID",
            f"group {group!r}'s file is not a YAML mapping: fix it (PUT the group) first",
        )
    entries = content.get("integrations")
    if entries is None:
        entries = content["integrations"] = []
    if not isinstance(entries, list):
        raise ApiError(
            409,
            "GROUP_FILE_INVALID",
            f"group {group!r}'s integrations are not a list: fix it (PUT the group) first",
        )
    return content, entries


def _find(entries: list[Any], name: str, group: str) -> int:
    for i, e in enumerate(entries):
        if isinstance(e, dict) and e.get("name") == name:
            return i
    raise ApiError(404, "UNKNOWN_INTEGRATION", f"group {group!r} has no integration {name!r}")


def _entry_body(body: Any, name: str | None) -> dict[str, Any]:
    entry = _json_object(body, "an integration entry as JSON: {name, type, fields, ...}")
    if name is not None:
        entry.setdefault("name", name)
        if entry["name"] != name:
            raise ApiError(
                422,
                "INVALID_MAPPING",
                "name: the entry's name must equal the one in the path",
                errors=[{"field": "name", "message": f"must be {name!r}"}],
            )
    return entry


async def _write_entries(
    request: web.Request, group: str, text: str, content: dict[str, Any], action: str, name: str
) -> str:
    return await _write(
        request, group, _render(content, text), action=action, detail={"integration": name}
    )


async def list_integrations(request: web.Request) -> web.Response:
    """``GET /groups/{group}/integrations``: the entries as written (secrets as references)."""
    group = request.match_info["group"]
    _, text = _existing(request, group)
    _, entries = _entries(text, group)
    version = writer.version_of(text)
    return json_response(
        {"group_key": group, "version": version, "integrations": writer.jsonable(entries)},
        headers=_etag(version),
    )


async def add_integration(request: web.Request) -> web.Response:
    """``POST /groups/{group}/integrations`` (If-Match): add an entry (201; 409 if its name is
    taken)."""
    group = request.match_info["group"]
    _, text = _existing(request, group)
    entry = _entry_body(await parse_body(request), None)
    content, entries = _entries(text, group)
    name = entry.get("name")
    if isinstance(name, str) and any(
        isinstance(e, dict) and e.get("name") == name for e in entries
    ):
        raise ApiError(
            409, "INTEGRATION_EXISTS", f"group {group!r} has an integration {name!r} already"
        )
    entries.append(entry)
    version = await _write_entries(request, group, text, content, "integration.create", str(name))
    return json_response(
        {"group_key": group, "version": version, "integration": writer.jsonable(entry)},
        status=201,
        headers=_etag(version),
    )


async def get_integration(request: web.Request) -> web.Response:
    """``GET /groups/{group}/integrations/{name}``: one entry as written."""
    group, name = request.match_info["group"], request.match_info["name"]
    _, text = _existing(request, group)
    _, entries = _entries(text, group)
    version = writer.version_of(text)
    return json_response(
        {
            "group_key": group,
            "version": version,
            "integration": writer.jsonable(entries[_find(entries, name, group)]),
        },
        headers=_etag(version),
    )


async def replace_integration(request: web.Request) -> web.Response:
    """``PUT /groups/{group}/integrations/{name}`` (If-Match): replace one entry."""
    group, name = request.match_info["group"], request.match_info["name"]
    _, text = _existing(request, group)
    entry = _entry_body(await parse_body(request), name)
    content, entries = _entries(text, group)
    entries[_find(entries, name, group)] = entry
    version = await _write_entries(request, group, text, content, "integration.update", name)
    return json_response(
        {"group_key": group, "version": version, "integration": writer.jsonable(entry)},
        headers=_etag(version),
    )


async def patch_integration(request: web.Request) -> web.Response:
    """``PATCH /groups/{group}/integrations/{name}`` (If-Match): change single fields
    (``enabled``, ``options``, ...). Objects are merged key by key (JSON Merge Patch,
    RFC 7396): ``null`` removes a key."""
    group, name = request.match_info["group"], request.match_info["name"]
    _, text = _existing(request, group)
    patch = _entry_body(await parse_body(request), None)
    if "name" in patch and patch["name"] != name:
        raise ApiError(
            422,
            "INVALID_MAPPING",
            "name: an integration cannot be renamed with PATCH",
            errors=[{"field": "name", "message": f"must be {name!r}"}],
        )
    content, entries = _entries(text, group)
    i = _find(entries, name, group)
    entries[i] = _merge_patch(entries[i], patch)
    version = await _write_entries(request, group, text, content, "integration.update", name)
    return json_response(
        {"group_key": group, "version": version, "integration": writer.jsonable(entries[i])},
        headers=_etag(version),
    )


def _merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge_patch(out.get(k), v)
    return out


async def delete_integration(request: web.Request) -> web.Response:
    """``DELETE /groups/{group}/integrations/{name}`` (If-Match): remove one entry (204)."""
    group, name = request.match_info["group"], request.match_info["name"]
    _, text = _existing(request, group)
    content, entries = _entries(text, group)
    del entries[_find(entries, name, group)]
    await _write_entries(request, group, text, content, "integration.delete", name)
    return web.Response(status=204)


# -- audit -----------------------------------------------------------------------------------


async def list_audit(request: web.Request) -> web.Response:
    """``GET /audit``: changes and key operations, oldest first, a page at a time."""
    limit = read_limit(request, DEFAULT_LIMIT, MAX_LIMIT)
    cursor = request.query.get("cursor")
    after = 0
    if cursor:
        raw = _decode_cursor(cursor)
        if not raw.isdigit() or len(raw) > 18:
            raise _bad_cursor()
        after = int(raw)
    try:
        entries = await request.config_dict[STORE].list_audit(after, limit + 1)
    except StoreError as exc:
        raise ApiError(503, "STORE_UNAVAILABLE", f"store unavailable: {exc}") from None
    page = entries[:limit]
    return json_response(
        {
            "entries": [
                {
                    "id": e.id,
                    "at": iso(e.at),
                    "actor": e.actor,
                    "action": e.action,
                    "target": e.target,
                    "detail": orjson.loads(e.detail),
                }
                for e in page
            ],
            "next_cursor": _encode_cursor(str(page[-1].id)) if len(entries) > limit else None,
        }
    )


def add_routes(app: web.Application) -> None:
    """Register the group, integration, version and audit routes on the admin sub-app."""
    app[WRITE_LOCK] = asyncio.Lock()
    r = app.router
    r.add_get("/groups", store_errors(list_groups))
    r.add_post("/groups", store_errors(create_group))
    r.add_get("/groups/{group}", store_errors(get_group), name="group")
    r.add_put("/groups/{group}", store_errors(replace_group))
    r.add_delete("/groups/{group}", store_errors(delete_group))
    r.add_post("/groups/{group}/clone", store_errors(clone_group))
    r.add_get("/groups/{group}/versions", store_errors(list_versions))
    r.add_get("/groups/{group}/versions/{number}", store_errors(get_version))
    r.add_post("/groups/{group}/rollback", store_errors(rollback_group))
    r.add_get("/groups/{group}/integrations", store_errors(list_integrations))
    r.add_post("/groups/{group}/integrations", store_errors(add_integration))
    r.add_get("/groups/{group}/integrations/{name}", store_errors(get_integration))
    r.add_put("/groups/{group}/integrations/{name}", store_errors(replace_integration))
    r.add_patch("/groups/{group}/integrations/{name}", store_errors(patch_integration))
    r.add_delete("/groups/{group}/integrations/{name}", store_errors(delete_integration))
    r.add_get("/audit", store_errors(list_audit))
