"""The console's pages on the management API: saving a mapping (with its version check),
versions with a diff and rollback, enabling and disabling an integration, access keys.

Every change goes through the admin API with ``If-Match`` set to the version the operator
was looking at, so a change made meanwhile (through the API or by hand in the file) is a
``412`` and is never overwritten unseen.
"""

from __future__ import annotations

import difflib
import json
import shlex
from typing import Any
from urllib.parse import urlencode

import yaml
from aiohttp import web

from gateway.appkeys import SETTINGS
from gateway.console.adminapi import AdminError
from gateway.console.views import (
    PREFIX,
    all_groups,
    api,
    editor_context,
    redirect,
    refusal,
    render,
    seg,
    when,
)
from gateway.mapping.loader import Problem


def _if_match(version: str) -> dict[str, str]:
    return {"If-Match": f'"{version}"'}


# -- saving ----------------------------------------------------------------------------------


async def mapping_save(request: web.Request) -> web.Response:
    """``POST /console/mappings/{group}/save``: ``PUT /groups/{group}`` with the editor's text
    as JSON and ``If-Match`` the version the editor was opened on. A refusal keeps the text."""
    group = request.match_info["group"]
    form = await request.post()
    text = form.get("yaml")
    version = form.get("version")
    sample = form.get("record")
    if not isinstance(text, str) or not isinstance(version, str) or not version:
        return refusal(request, 400, "The form lacks the mapping text or its version.")
    problems: list[Problem] = []
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problems = [Problem(f"{group}.yaml", line, "(yaml)", str(exc).splitlines()[0])]
        content = None
    if not problems:
        try:
            answer = await api(request).call(
                "PUT", f"/groups/{seg(group)}", body=content, headers=_if_match(version)
            )
        except AdminError as exc:
            problems = [
                Problem(f"{group}.yaml", e.get("line"), str(e.get("field", "")), e["message"])
                for e in exc.errors
                if isinstance(e, dict) and "message" in e
            ]
            ctx = await editor_context(request, group, text=text, version=version)
            ctx["save_error"] = exc.message
            ctx["save_problems"] = problems
            ctx["save_conflict"] = exc.status == 412
            if isinstance(sample, str):
                ctx["sample"] = sample
            return render("mapping.html", request, ctx, status=exc.status)
        live = answer.get("live_version")
        message = f"Saved as version {answer['version']}" + (
            ", now live."
            if live == answer["version"]
            else "; the live version is still " + str(live)
        )
        return redirect(f"{PREFIX}/mappings/{seg(group)}?" + urlencode({"message": message}))
    ctx = await editor_context(request, group, text=text, version=version)
    ctx["save_error"] = "Not saved: the text is not valid YAML."
    ctx["save_problems"] = problems
    return render("mapping.html", request, ctx, status=422)


# -- versions --------------------------------------------------------------------------------


async def versions(request: web.Request) -> web.Response:
    """``GET /console/mappings/{group}/versions``: every recorded version."""
    group = request.match_info["group"]
    doc = await api(request).call("GET", f"/groups/{seg(group)}/versions")
    rows = list(reversed(doc.get("versions", [])))
    return render(
        "versions.html",
        request,
        {
            "group": group,
            "current": doc.get("current_version"),
            "versions": rows,
            "when": when,
            "message": request.query.get("message", ""),
        },
    )


async def version(request: web.Request) -> web.Response:
    """``GET /console/mappings/{group}/versions/{number}``: its text and its diff with the
    version before it (or with another: ``?against=N``)."""
    group = request.match_info["group"]
    number = request.match_info["number"]
    client = api(request)
    this = await client.call("GET", f"/groups/{seg(group)}/versions/{seg(number)}")
    listing = await client.call("GET", f"/groups/{seg(group)}/versions")
    numbers = [v["number"] for v in listing.get("versions", [])]
    against_raw = request.query.get("against")
    earlier = [n for n in numbers if n < this["number"]]
    against = int(against_raw) if against_raw and against_raw.isdigit() else None
    if against is None and earlier:
        against = earlier[-1]
    old_text, old_label = "", "(nothing)"
    if against is not None:
        try:
            other = await client.call("GET", f"/groups/{seg(group)}/versions/{against}")
        except AdminError as exc:
            return refusal(request, exc.status, exc.message)
        old_text, old_label = other["text"], f"version {against} ({other['version']})"
    diff = list(
        difflib.unified_diff(
            old_text.splitlines(),
            this["text"].splitlines(),
            fromfile=old_label,
            tofile=f"version {this['number']} ({this['version']})",
            lineterm="",
        )
    )
    return render(
        "version.html",
        request,
        {
            "group": group,
            "this": this,
            "current": listing.get("current_version"),
            "numbers": numbers,
            "against": against,
            "diff": diff,
            "when": when,
        },
    )


async def rollback(request: web.Request) -> web.Response:
    """``POST /console/mappings/{group}/rollback``: ``POST /groups/{group}/rollback`` with
    ``If-Match`` the version the page showed as current."""
    group = request.match_info["group"]
    form = await request.post()
    number, current = form.get("number"), form.get("current")
    if not isinstance(number, str) or not number.isdigit() or not isinstance(current, str):
        return refusal(request, 400, "The form lacks the version to roll back to.")
    back = f"{PREFIX}/mappings/{seg(group)}/versions?"
    try:
        answer = await api(request).call(
            "POST",
            f"/groups/{seg(group)}/rollback",
            body={"version": int(number)},
            headers=_if_match(current),
        )
    except AdminError as exc:
        return redirect(back + urlencode({"message": f"Not rolled back: {exc.message}"}))
    message = f"Rolled back to version {number}: now version {answer['version']}."
    return redirect(back + urlencode({"message": message}))


# -- integrations ----------------------------------------------------------------------------


async def integration_enabled(request: web.Request) -> web.Response:
    """``POST /console/mappings/{group}/integrations/{name}/enabled``: ``PATCH`` the entry's
    ``enabled`` with ``If-Match`` the group's version the page showed."""
    group, name = request.match_info["group"], request.match_info["name"]
    form = await request.post()
    enabled, current = form.get("enabled"), form.get("version")
    if enabled not in ("true", "false") or not isinstance(current, str) or not current:
        return refusal(request, 400, "The form lacks the state or the group's version.")
    try:
        await api(request).call(
            "PATCH",
            f"/groups/{seg(group)}/integrations/{seg(name)}",
            body={"enabled": enabled == "true"},
            headers=_if_match(current),
        )
        message = f"{group} / {name}: {'enabled' if enabled == 'true' else 'disabled'}."
    except AdminError as exc:
        message = f"{group} / {name} unchanged: {exc.message}"
    return redirect(f"{PREFIX}/mappings?" + urlencode({"message": message}))


# -- keys ------------------------------------------------------------------------------------


async def _keys_context(request: web.Request) -> dict[str, Any]:
    client = api(request)
    doc = await client.call("GET", "/keys")
    return {
        "keys": doc.get("keys", []),
        "groups": [g["group_key"] for g in await all_groups(request)],
        "when": when,
        "created": None,
        "curl": "",
        "problem": "",
        "message": request.query.get("message", ""),
    }


async def keys(request: web.Request) -> web.Response:
    """``GET /console/keys``: every access key the token may see (never a secret)."""
    return render("keys.html", request, await _keys_context(request))


def curl_command(request: web.Request, key_id: str, secret: str, group: str) -> str:
    """A ready ``curl --aws-sigv4`` command sending a test record with the new key."""
    settings = request.config_dict[SETTINGS]
    url = f"{request.scheme}://{request.host}/v1/records"
    # The record's fields are the producer's to choose; one placeholder shows the shape.
    body = json.dumps({"group_key": group, "data": {"example": "value"}}, ensure_ascii=False)
    return (
        f"curl --aws-sigv4 {shlex.quote(f'aws:amz:{settings.region}:{settings.service}')} "
        f"--user {shlex.quote(f'{key_id}:{secret}')} \\\n"
        f"  -H 'Content-Type: application/json' \\\n"
        f"  -d {shlex.quote(body)} \\\n  {url}"
    )


async def key_create(request: web.Request) -> web.Response:
    """``POST /console/keys``: ``POST /keys``; the answer page is the only place the secret
    shows (never in a URL: this page is not a redirect and is not cached)."""
    form = await request.post()
    groups = [g for g in form.getall("groups", []) if isinstance(g, str) and g]
    name = form.get("name")
    body: dict[str, Any] = {"groups": groups}
    if isinstance(name, str) and name.strip():
        body["name"] = name.strip()
    try:
        created = await api(request).call("POST", "/keys", body=body)
    except AdminError as exc:
        ctx = await _keys_context(request)
        ctx["problem"] = exc.message
        return render("keys.html", request, ctx, status=exc.status)
    ctx = await _keys_context(request)
    ctx["created"] = created
    ctx["curl"] = curl_command(
        request, created["access_key_id"], created["secret_access_key"], created["groups"][0]
    )
    return render("keys.html", request, ctx, status=201)


async def _revoke(request: web.Request, noun: str, collection: str) -> web.Response:
    """``DELETE /{collection}/{id}``, then back to the list page saying what happened."""
    ident = request.match_info["id"]
    try:
        await api(request).call("DELETE", f"/{collection}/{seg(ident)}")
        message = f"{noun} {ident} revoked."
    except AdminError as exc:
        message = f"{noun} {ident} not revoked: {exc.message}"
    return redirect(f"{PREFIX}/{collection}?" + urlencode({"message": message}))


async def key_revoke(request: web.Request) -> web.Response:
    """``POST /console/keys/{id}/revoke``: ``DELETE /keys/{id}``."""
    return await _revoke(request, "Key", "keys")


# -- scoped admin tokens ---------------------------------------------------------------------


async def _tokens_context(request: web.Request) -> dict[str, Any]:
    doc = await api(request).call("GET", "/tokens")
    return {
        "tokens": doc.get("tokens", []),
        "groups": [g["group_key"] for g in await all_groups(request)],
        "when": when,
        "created": None,
        "problem": "",
        "message": request.query.get("message", ""),
    }


async def tokens(request: web.Request) -> web.Response:
    """``GET /console/tokens``: every scoped admin token (never a secret); only a token for
    every group with the admin role may see them (the API says so to any other)."""
    return render("tokens.html", request, await _tokens_context(request))


async def token_create(request: web.Request) -> web.Response:
    """``POST /console/tokens``: ``POST /tokens``; the new token shows on this page only."""
    form = await request.post()
    body: dict[str, Any] = {"role": form.get("role")}
    groups = [g for g in form.getall("groups", []) if isinstance(g, str) and g]
    if groups:
        body["groups"] = groups
    name = form.get("name")
    if isinstance(name, str) and name.strip():
        body["name"] = name.strip()
    try:
        created = await api(request).call("POST", "/tokens", body=body)
    except AdminError as exc:
        ctx = await _tokens_context(request)
        ctx["problem"] = exc.message
        return render("tokens.html", request, ctx, status=exc.status)
    ctx = await _tokens_context(request)
    ctx["created"] = created
    return render("tokens.html", request, ctx, status=201)


async def token_revoke(request: web.Request) -> web.Response:
    """``POST /console/tokens/{id}/revoke``: ``DELETE /tokens/{id}``."""
    return await _revoke(request, "Token", "tokens")


def add_routes(app: web.Application) -> None:
    """Register the management pages on the console's sub-application."""
    r = app.router
    r.add_post("/mappings/{group}/save", mapping_save)
    r.add_get("/mappings/{group}/versions", versions)
    r.add_get("/mappings/{group}/versions/{number:[0-9]+}", version)
    r.add_post("/mappings/{group}/rollback", rollback)
    r.add_post("/mappings/{group}/integrations/{name}/enabled", integration_enabled)
    r.add_get("/keys", keys)
    r.add_post("/keys", key_create)
    r.add_post("/keys/{id}/revoke", key_revoke)
    r.add_get("/tokens", tokens)
    r.add_post("/tokens", token_create)
    r.add_post("/tokens/{id}/revoke", token_revoke)
