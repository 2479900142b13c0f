"""The console's pages. Each handler asks the admin API (:mod:`gateway.console.adminapi`)
with the operator's token and renders what it answers; errors it answers are shown as it
words them."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp_jinja2
import orjson
from aiohttp import web

from gateway.appkeys import MAPPINGS, SETTINGS, STORE
from gateway.console import drafts
from gateway.console.activity import Lane, chart_svg
from gateway.console.adminapi import AdminApi, AdminError, base_url
from gateway.console.keys import ACTIVITY, HTTP, SESSION_OF, SESSIONS
from gateway.console.session import COOKIE, PRE_COOKIE, Session, clear_cookie, set_cookie
from gateway.ingest.api import iso
from gateway.mapping.model import content_version
from gateway.preview import limits_of
from gateway.store.base import StoreError

PREFIX = "/console"
#: Deliveries a search by value looks through at most (newest time range first).
SEARCH_SCAN = 5000
#: Records a search by value lists at most.
SEARCH_HITS = 100
#: Dead deliveries listed on one page.
DEAD_PAGE = 200


# -- helpers ---------------------------------------------------------------------------------


def redirect(location: str) -> web.Response:
    """A 303 to ``location`` (a GET, whatever the request was)."""
    return web.Response(status=303, headers={"Location": location})


def refusal(request: web.Request, status: int, message: str) -> web.Response:
    """An error page."""
    return render("error.html", request, {"status": status, "problem": message}, status=status)


def render(name: str, request: web.Request, ctx: dict[str, Any], status: int = 200) -> web.Response:
    """Render a template with what every page gets: the prefix, whether signed in, the
    session's CSRF token, the current path (``ctx`` may override the token: sign-in)."""
    session = request.get(SESSION_OF)
    base = {
        "prefix": PREFIX,
        "signed_in": session is not None,
        "limited": session is not None and session.limited,
        "csrf": session.csrf if session is not None else "",
        "path": request.path,
    }
    return aiohttp_jinja2.render_template(name, request, {**base, **ctx}, status=status)


def session_of(request: web.Request) -> Session:
    """The request's session (the guard let only signed-in requests through)."""
    session = request[SESSION_OF]
    if session is None:  # pragma: no cover - the guard middleware stops these first
        raise web.HTTPUnauthorized()
    return session


def api(request: web.Request) -> AdminApi:
    """The admin API, as the signed-in operator."""
    return AdminApi(request.config_dict[HTTP], base_url(request), session_of(request).token)


def _filters(query: Any, names: tuple[str, ...]) -> dict[str, str]:
    """The named, non-empty fields of a query or form, passed to the API as they are: a
    ``datetime-local`` time (``2025-05-01T12:00``) has no offset, which the API reads as UTC,
    as the forms' labels say."""
    return {n: str(query[n]).strip() for n in names if str(query.get(n) or "").strip()}


def age(seconds: float | None) -> str:
    """``3 s``, ``4 min``, ``2 h 5 min``."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


def when(iso: str | None) -> str:
    """An API time as ``2025-05-01 12:00:03 UTC``."""
    if not iso:
        return "-"
    return iso.replace("T", " ").replace("Z", " UTC")


# -- sign-in ---------------------------------------------------------------------------------


async def signin_page(request: web.Request, message: str = "", status: int = 200) -> web.Response:
    """The sign-in form, its CSRF token also set as a cookie (there is no session yet)."""
    token = secrets.token_urlsafe(32)
    # Said before anyone types a token: without GATEWAY_ADMIN_TOKEN there is nothing to sign
    # in to (the admin API answers 403 ADMIN_API_DISABLED).
    disabled = request.config_dict[SETTINGS].admin_token is None
    response = render(
        "signin.html",
        request,
        {"problem": message, "csrf": token, "disabled": disabled},
        status=status,
    )
    set_cookie(response, request, PRE_COOKIE, token)
    return response


async def signin_get(request: web.Request) -> web.Response:
    """``GET /console/signin``."""
    if request[SESSION_OF] is not None:
        return redirect(f"{PREFIX}/")
    return await signin_page(request)


async def signin_post(request: web.Request) -> web.Response:
    """``POST /console/signin``: check the token against the admin API, start a session."""
    form = await request.post()
    token = form.get("token")
    if not isinstance(token, str) or not token.strip():
        return await signin_page(request, "Enter an admin token.", 400)
    token = token.strip()
    probe = AdminApi(request.config_dict[HTTP], base_url(request), token)
    try:
        await probe.call("GET", "/groups")
    except AdminError as exc:
        if exc.status in (401, 403):
            return await signin_page(request, exc.message, 401)
        return await signin_page(request, f"The admin API answered: {exc.message}", 502)
    # A token limited to some groups may not read the lanes (nor deliveries): its console
    # starts on the mappings and leaves out the pages it would only be refused.
    limited = False
    try:
        await probe.call("GET", "/lanes")
    except AdminError as exc:
        limited = exc.code == "TOKEN_NOT_ALLOWED"
    _, cookie = request.config_dict[SESSIONS].new(token, limited=limited)
    response = redirect(f"{PREFIX}/mappings" if limited else f"{PREFIX}/")
    set_cookie(response, request, COOKIE, cookie)
    clear_cookie(response, PRE_COOKIE)
    return response


async def signout(request: web.Request) -> web.Response:
    """``POST /console/signout``: end the session here and in the browser."""
    request.config_dict[SESSIONS].end(session_of(request))
    response = redirect(f"{PREFIX}/signin")
    clear_cookie(response, COOKIE)
    return response


# -- overview --------------------------------------------------------------------------------


def lane_state(lane: dict[str, Any]) -> str:
    """flowing, retrying, failing, breaker open, paused, disabled or removed."""
    if lane.get("paused"):
        return "paused"
    if not lane.get("in_mapping"):
        return "removed"
    if lane.get("enabled") is False:
        return "disabled"
    if lane.get("breaker") == "open":
        return "breaker open"
    if lane.get("breaker") == "half_open":
        return "breaker half-open"
    err_at, ok_at = lane.get("last_error_at"), lane.get("last_success_at")
    if err_at and (not ok_at or err_at > ok_at):
        # The latest attempt failed: waiting to try again, or nothing left to try (dead).
        return "retrying" if lane["backlog"]["pending"] else "failing"
    return "flowing"


async def _overview(request: web.Request) -> dict[str, Any]:
    doc = await api(request).call("GET", "/lanes")
    activity = request.config_dict[ACTIVITY]
    now = time.time()
    rows = []
    keys: set[Lane] = set()
    # The API's per-lane counters since the process started, sampled now as well as in the
    # background: the page shows what happened up to this second.
    activity.sample(
        [
            {"group_key": lane["group_key"], "integration": lane["integration"]}
            | lane.get("since_start", {})
            for lane in doc["lanes"]
        ],
        now,
    )
    for lane in doc["lanes"]:
        key = (lane["group_key"], lane["integration"])
        keys.add(key)
        hour = activity.last_hour(key, now)
        rows.append(
            {
                **lane,
                "state": lane_state(lane),
                "oldest": age(lane["backlog"]["oldest_pending_age"]),
                "hour": hour,
            }
        )
    series = activity.series(now, keep=lambda k: k in keys)
    return {
        "lanes": rows,
        "chart": chart_svg(series),
        "delivery_engine": doc.get("delivery_engine", True),
        "updated": datetime.fromtimestamp(now, UTC).strftime("%H:%M:%S UTC"),
    }


async def overview(request: web.Request) -> web.Response:
    """``GET /console/``: every lane and the last hour's chart."""
    ctx = await _overview(request)
    ctx["message"] = request.query.get("message", "")
    return render("overview.html", request, ctx)


async def overview_lanes(request: web.Request) -> web.Response:
    """``GET /console/lanes``: the overview's self-refreshing part."""
    return render("lanes.html", request, await _overview(request))


async def lane_action(request: web.Request) -> web.Response:
    """``POST /console/lanes/{group}/{integration}/{pause|resume}``."""
    group = request.match_info["group"]
    integration = request.match_info["integration"]
    action = request.match_info["action"]
    path = f"/lanes/{seg(group)}/{seg(integration)}/{action}"
    try:
        await api(request).call("POST", path)
    except AdminError as exc:
        return redirect(f"{PREFIX}/?" + urlencode({"message": exc.message}))
    done = "paused" if action == "pause" else "resumed"
    return redirect(f"{PREFIX}/?" + urlencode({"message": f"{group} / {integration}: {done}"}))


def seg(value: str) -> str:
    """``value`` as one URL path segment."""
    return quote(value, safe="")


# -- search and records ----------------------------------------------------------------------


async def visible_groups(request: web.Request) -> set[str]:
    """The groups the operator's token may see: the admin API's answer (live groups and
    files that failed to load)."""
    pages = await _group_pages(request)
    return {g["group_key"] for page in pages for g in page.get("groups", [])} | set(_broken(pages))


async def _group_pages(request: web.Request) -> list[dict[str, Any]]:
    """Every page of ``GET /groups`` (it is paginated by ``next_cursor`` when it says so)."""
    client = api(request)
    pages: list[dict[str, Any]] = []
    params: dict[str, str] = {}
    while True:
        doc = await client.call("GET", "/groups", params=params or None)
        pages.append(doc)
        cursor = doc.get("next_cursor")
        if not cursor or len(pages) >= 100:
            return pages
        params = {"cursor": cursor}


async def all_groups(request: web.Request) -> list[dict[str, Any]]:
    """Every group the token may see, as ``GET /groups`` lists them."""
    return [g for page in await _group_pages(request) for g in page.get("groups", [])]


def _broken(pages: list[dict[str, Any]]) -> list[str]:
    """Groups named by the problems ``GET /groups`` reports (files that failed to load)."""
    names = []
    for page in pages:
        for p in page.get("problems", []):
            stem = str(p.get("file", "")).rsplit("/", 1)[-1]
            if stem.endswith((".yaml", ".yml")):
                names.append(stem.rsplit(".", 1)[0])
    return names


def _matches(value: Any, needle: str) -> bool:
    if isinstance(value, str):
        return needle in value.casefold()
    if isinstance(value, list):
        return any(_matches(v, needle) for v in value)
    return value is not None and needle == str(value).casefold()


async def search(request: web.Request) -> web.Response:
    """``GET /console/search``: by record id, delivery id, or a value in a time range."""
    q = request.query.get("q", "").strip()
    filters = _filters(request.query, ("group", "state", "created_after", "created_before"))
    ctx: dict[str, Any] = {"q": q, "filters": filters, "hits": None, "problem": ""}
    if q.startswith("rec_") and " " not in q:
        return redirect(f"{PREFIX}/records/{seg(q)}")
    if q.startswith("dlv_") and " " not in q:
        try:
            d = await api(request).call("GET", f"/deliveries/{seg(q)}")
        except AdminError as exc:
            ctx["problem"] = exc.message
            return render("search.html", request, ctx, status=exc.status)
        return redirect(f"{PREFIX}/records/{seg(d['record_id'])}#{d['id']}")
    if not q:
        return render("search.html", request, ctx)
    if "created_after" not in filters:
        filters["created_after"] = datetime.fromtimestamp(time.time() - 86400, UTC).isoformat(
            timespec="seconds"
        )[:19]
        ctx["defaulted"] = True
    try:
        hits, scanned, more = await _search_value(request, q.casefold(), filters)
    except AdminError as exc:
        ctx["problem"] = exc.message
        return render("search.html", request, ctx, status=exc.status)
    ctx.update(hits=hits, scanned=scanned, more=more)
    return render("search.html", request, ctx)


async def _search_value(
    request: web.Request, needle: str, filters: dict[str, str]
) -> tuple[list[dict[str, Any]], int, bool]:
    """Records whose data holds ``needle`` among the deliveries the filter lists (the API's
    list, so the token's scope applies), newest records' data read from the store."""
    client = api(request)
    store = request.config_dict[STORE]
    seen: set[str] = set()
    hits: list[dict[str, Any]] = []
    scanned = 0
    cursor: str | None = None
    while scanned < SEARCH_SCAN and len(hits) < SEARCH_HITS:
        params = {**filters, "limit": "1000"}
        if cursor:
            params["cursor"] = cursor
        page = await client.call("GET", "/deliveries", params=params)
        for d in page["deliveries"]:
            scanned += 1
            if d["record_id"] in seen:
                continue
            seen.add(d["record_id"])
            try:
                rec = await store.get_record(d["record_id"])
            except StoreError as exc:
                raise AdminError(503, "STORE_UNAVAILABLE", str(exc)) from None
            if rec is None:
                continue
            data = orjson.loads(rec.data_json)
            fields = [k for k, v in data.items() if _matches(v, needle)]
            if fields:
                hits.append(
                    {
                        "id": rec.id,
                        "group_key": rec.group_key,
                        "received_at": when(_iso(rec.received_at)),
                        "fields": {k: data[k] for k in fields},
                        "states": sorted({str(x.state) for x in rec.deliveries}),
                    }
                )
                if len(hits) >= SEARCH_HITS:
                    break
        cursor = page.get("next_cursor")
        if not cursor:
            break
    return hits, scanned, bool(cursor)


def _iso(ts: float | None) -> str | None:
    return iso(ts)


async def record(request: web.Request) -> web.Response:
    """``GET /console/records/{id}``: the data, the deliveries and every attempt."""
    rid = request.match_info["id"]
    try:
        rec = await request.config_dict[STORE].get_record(rid)
    except StoreError as exc:
        return refusal(request, 503, f"The store is unavailable: {exc}")
    # Out of the token's groups reads exactly as missing: the page tells nothing.
    if rec is None or rec.group_key not in await visible_groups(request):
        return refusal(request, 404, f"No record with id '{rid}'.")
    client = api(request)
    deliveries = []
    for d in rec.deliveries:
        try:
            deliveries.append(await client.call("GET", f"/deliveries/{seg(d.id)}"))
        except AdminError as exc:
            if exc.status != 404:
                raise
    data = orjson.loads(rec.data_json)
    return render(
        "record.html",
        request,
        {
            "rec": rec,
            "received_at": when(_iso(rec.received_at)),
            "data": [(k, orjson.dumps(v).decode()) for k, v in data.items()],
            "deliveries": deliveries,
            "when": when,
        },
    )


# -- dead letters ----------------------------------------------------------------------------

_DEAD_FILTERS = ("group", "integration", "created_after", "created_before")


async def dead(request: web.Request) -> web.Response:
    """``GET /console/dead``: dead deliveries matching the filter, a page at a time."""
    filters = _filters(request.query, _DEAD_FILTERS)
    params = {**filters, "state": "dead", "limit": str(DEAD_PAGE)}
    if request.query.get("cursor"):
        params["cursor"] = request.query["cursor"]
    ctx: dict[str, Any] = {
        "filters": filters,
        "items": [],
        "next_cursor": None,
        "message": request.query.get("message", ""),
        "error": "",
        "when": when,
        "groups": [],
    }
    client = api(request)
    try:
        ctx["groups"] = await all_groups(request)
        page = await client.call("GET", "/deliveries", params=params)
    except AdminError as exc:
        ctx["error"] = exc.message
        return render("dead.html", request, ctx, status=exc.status)
    ctx["items"] = page["deliveries"]
    ctx["next_cursor"] = page["next_cursor"]
    ctx["next_query"] = urlencode({**filters, "cursor": page["next_cursor"] or ""})
    return render("dead.html", request, ctx)


async def dead_replay(request: web.Request) -> web.Response:
    """``POST /console/dead/replay``: one (``one``), the checked ones (``ids``), or every
    dead delivery the filter matches (``action=filter``); back to the list with the count."""
    form = await request.post()
    filters = _filters(form, _DEAD_FILTERS)
    one = form.get("one")
    body: dict[str, Any]
    if isinstance(one, str) and one:
        body = {"ids": [one]}
    elif form.get("action") == "filter":
        body = {"filter": {**filters, "state": "dead"}}
    else:
        ids = [i for i in form.getall("ids", []) if isinstance(i, str) and i]
        if not ids:
            return redirect(
                f"{PREFIX}/dead?"
                + urlencode({**filters, "message": "Select at least one delivery to replay."})
            )
        body = {"ids": ids}
    try:
        answer = await api(request).call("POST", "/deliveries/replay", body=body)
        n = int(answer["replayed"])
        message = f"Replayed {n} deliver{'y' if n == 1 else 'ies'}."
    except AdminError as exc:
        message = f"Not replayed: {exc.message}"
    return redirect(f"{PREFIX}/dead?" + urlencode({**filters, "message": message}))


# -- mappings --------------------------------------------------------------------------------


async def mappings(request: web.Request) -> web.Response:
    """``GET /console/mappings``: every group, its integrations and its file's problems."""
    pages = await _group_pages(request)
    return render(
        "mappings.html",
        request,
        {
            "groups": [g for page in pages for g in page.get("groups", [])],
            "problems": [p for page in pages for p in page.get("problems", [])],
            "message": request.query.get("message", ""),
        },
    )


async def mapping_reload(request: web.Request) -> web.Response:
    """``POST /console/mappings/reload``: reload changed mapping files now."""
    back = f"{PREFIX}/mappings"
    form = await request.post()
    group = form.get("group")
    if isinstance(group, str) and group:
        back = f"{PREFIX}/mappings/{seg(group)}"
    try:
        result = await api(request).call("POST", "/reload")
    except AdminError as exc:
        return redirect(back + "?" + urlencode({"message": exc.message}))
    loaded = len(result.get("loaded", []))
    failed = result.get("failed", [])
    message = f"Reloaded: {loaded} file(s) loaded" + (f", {len(failed)} failed" if failed else "")
    return redirect(back + "?" + urlencode({"message": message}))


async def _group_or_404(request: web.Request) -> str | web.Response:
    group = request.match_info["group"]
    if group not in await visible_groups(request):
        return refusal(request, 404, f"No mapping for group '{group}'.")
    return group


async def editor_context(
    request: web.Request, group: str, *, text: str | None = None, version: str | None = None
) -> dict[str, Any]:
    """What the editor page shows: ``text`` (default: the file as it is now) and the
    ``version`` a save must match (default: the file's)."""
    registry = request.config_dict[MAPPINGS]
    path = registry.directory / f"{group}.yaml"
    if text is None:
        try:
            raw = path.read_bytes()
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AdminError(
                404, "CONSOLE_FILE_UNREADABLE", f"Cannot read the file of '{group}': {exc}"
            ) from None
        version = content_version(raw)
    live = registry.get(group)
    return {
        "group": group,
        "text": text,
        "file": str(path),
        "version": version or "",
        "live_version": live.version if live else None,
        "sample": "{}",
        "record_id": "",
        "save_error": "",
        "save_problems": [],
        "save_conflict": False,
        "message": request.query.get("message", ""),
    }


async def mapping_edit(request: web.Request) -> web.Response:
    """``GET /console/mappings/{group}``: the file in an editor, checked and previewed as
    it is typed; ``?record=rec_...`` fills the preview with that record's data."""
    group = await _group_or_404(request)
    if isinstance(group, web.Response):
        return group
    ctx = await editor_context(request, group)
    rid = request.query.get("record", "")
    if rid:
        try:
            rec = await request.config_dict[STORE].get_record(rid)
        except StoreError:
            rec = None
        if rec is not None and rec.group_key == group:
            ctx["sample"] = orjson.dumps(
                orjson.loads(rec.data_json), option=orjson.OPT_INDENT_2
            ).decode()
            ctx["record_id"] = rid
    return render("mapping.html", request, ctx)


async def mapping_draft(request: web.Request) -> web.Response:
    """``POST /console/mappings/{group}/draft``: the draft's problems and its preview of the
    sample record (an htmx fragment)."""
    group = await _group_or_404(request)
    if isinstance(group, web.Response):
        return group
    form = await request.post()
    text = form.get("yaml")
    sample = form.get("record")
    checked = drafts.check_draft(group, text if isinstance(text, str) else "")
    ctx: dict[str, Any] = {"problems": checked.problems, "preview": None, "record_error": ""}
    if checked.mapping is not None and isinstance(sample, str) and sample.strip():
        try:
            data = orjson.loads(sample)
        except orjson.JSONDecodeError as exc:
            ctx["record_error"] = f"The record is not valid JSON: {exc}"
        else:
            limits = limits_of(request.config_dict[SETTINGS])
            doc = drafts.preview_draft(checked.mapping, data, limits)
            for entry in doc["integrations"]:
                for r in [entry["request"]] if "request" in entry else entry.get("requests", []):
                    if not isinstance(r.get("body"), str):
                        r["body"] = orjson.dumps(r["body"], option=orjson.OPT_INDENT_2).decode()
                if "fields" in entry:
                    entry["fields"] = [
                        (k, orjson.dumps(v).decode()) for k, v in entry["fields"].items()
                    ]
            ctx["preview"] = doc
    return render("draft.html", request, ctx)


def add_routes(app: web.Application) -> None:
    """Register the console's pages on its sub-application."""
    r = app.router
    r.add_get("/", overview)
    r.add_get("/lanes", overview_lanes)
    r.add_post("/lanes/{group}/{integration}/{action:pause|resume}", lane_action)
    r.add_get("/signin", signin_get)
    r.add_post("/signin", signin_post)
    r.add_post("/signout", signout)
    r.add_get("/search", search)
    r.add_get("/records/{id}", record)
    r.add_get("/dead", dead)
    r.add_post("/dead/replay", dead_replay)
    r.add_get("/mappings", mappings)
    r.add_post("/mappings/reload", mapping_reload)
    r.add_get("/mappings/{group}", mapping_edit)
    r.add_post("/mappings/{group}/draft", mapping_draft)
