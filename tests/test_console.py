"""The console on a real in-process server (aiohttp's test server, a real socket): the switch,
sign-in, the session cookie, CSRF, sign-out, and the draft check against `gateway check`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.app import create_app
from gateway.config import load_settings
from gateway.console.drafts import check_draft
from gateway.console.session import SessionBox
from gateway.mapping.loader import MappingRegistry

TOKEN = "admin-token-for-console-tests"
DEMO = (Path(__file__).resolve().parents[1] / "mappings" / "demo.yaml").read_text()


def _settings(tmp_path: Path, **more: object):
    (tmp_path / "maps").mkdir(exist_ok=True)
    (tmp_path / "maps" / "demo.yaml").write_text(DEMO)
    return load_settings(
        {
            "data_dir": tmp_path / "data",
            "mappings": tmp_path / "maps",
            "admin_token": TOKEN,
            "delivery": False,
            **more,
        },
        environ={},
    )


@pytest.fixture
async def client(aiohttp_client, tmp_path: Path):
    return await aiohttp_client(create_app(_settings(tmp_path)))


async def _csrf_of(resp) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', await resp.text())
    assert match, "no CSRF field in the page"
    return match.group(1)


async def _sign_in(client) -> str:
    """Sign in; the session's CSRF token."""
    form = await client.get("/console/signin")
    resp = await client.post(
        "/console/signin",
        data={"csrf": await _csrf_of(form), "token": TOKEN},
        allow_redirects=False,
    )
    assert resp.status == 303, await resp.text()
    page = await client.get("/console/")
    assert page.status == 200
    return await _csrf_of(page)


async def test_the_console_can_be_turned_off(aiohttp_client, tmp_path: Path) -> None:
    client = await aiohttp_client(create_app(_settings(tmp_path, console=False)))
    for path in ("/console", "/console/", "/console/signin", "/console/static/htmx.min.js"):
        assert (await client.get(path, allow_redirects=False)).status == 404, path


async def test_pages_need_a_session(client) -> None:
    for path in ("/console/", "/console/dead", "/console/search?q=x", "/console/mappings/demo"):
        resp = await client.get(path, allow_redirects=False)
        assert resp.status == 303, path
        assert resp.headers["Location"] == "/console/signin"
    resp = await client.get("/console/lanes", headers={"HX-Request": "true"})
    assert resp.status == 401
    assert resp.headers["HX-Redirect"] == "/console/signin"


async def test_a_wrong_token_is_refused_with_the_apis_words(client) -> None:
    form = await client.get("/console/signin")
    resp = await client.post(
        "/console/signin", data={"csrf": await _csrf_of(form), "token": TOKEN + "x"}
    )
    assert resp.status == 401
    assert "The admin token is not valid" in await resp.text()
    assert "gateway_console" not in {c.key for c in client.session.cookie_jar}


async def test_sign_in_needs_the_forms_csrf_token(client) -> None:
    await client.get("/console/signin")
    resp = await client.post("/console/signin", data={"token": TOKEN}, allow_redirects=False)
    assert resp.status == 403
    assert "gateway_console" not in {c.key for c in client.session.cookie_jar}


async def test_session_cookie_flags_and_no_token_in_pages(client) -> None:
    form = await client.get("/console/signin")
    resp = await client.post(
        "/console/signin",
        data={"csrf": await _csrf_of(form), "token": TOKEN},
        allow_redirects=False,
    )
    cookie = resp.cookies["gateway_console"]
    assert cookie["httponly"]
    assert cookie["samesite"] == "Strict"
    assert cookie["path"] == "/console"
    assert not cookie["secure"]  # plain HTTP here
    assert TOKEN not in cookie.value
    for path in ("/console/", "/console/lanes", "/console/dead", "/console/mappings"):
        page = await client.get(path)
        assert page.status == 200, path
        assert TOKEN not in await page.text()
        assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
        assert page.headers["Cache-Control"] == "no-store"


async def test_cookie_is_secure_behind_tls(client) -> None:
    form = await client.get("/console/signin", headers={"X-Forwarded-Proto": "https"})
    assert form.cookies["gateway_console_signin"]["secure"]


async def test_posts_without_the_csrf_token_change_nothing(client) -> None:
    csrf = await _sign_in(client)
    # Pausing a lane: refused without the token, with a wrong one, and from another origin.
    path = "/console/lanes/demo/local_file/pause"
    assert (await client.post(path, data={})).status == 403
    assert (await client.post(path, data={"csrf": csrf + "x"})).status == 403
    evil = {"Origin": "http://evil.example"}
    assert (await client.post(path, data={"csrf": csrf}, headers=evil)).status == 403
    lanes = await client.get("/admin/v1/lanes", headers={"Authorization": f"Bearer {TOKEN}"})
    [lane] = (await lanes.json())["lanes"]
    assert lane["paused"] is False
    # With it, the lane pauses (through the admin API).
    resp = await client.post(path, data={"csrf": csrf}, allow_redirects=False)
    assert resp.status == 303
    lanes = await client.get("/admin/v1/lanes", headers={"Authorization": f"Bearer {TOKEN}"})
    assert (await lanes.json())["lanes"][0]["paused"] is True


async def test_sign_out_ends_the_session_even_for_a_kept_cookie(client) -> None:
    csrf = await _sign_in(client)
    kept = next(c.value for c in client.session.cookie_jar if c.key == "gateway_console")
    resp = await client.post("/console/signout", data={"csrf": csrf}, allow_redirects=False)
    assert resp.status == 303
    resp = await client.get("/console/", allow_redirects=False)
    assert resp.status == 303
    client.session.cookie_jar.update_cookies({"gateway_console": kept})
    resp = await client.get("/console/", allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == "/console/signin"


def test_sealed_sessions_resist_tampering_and_expire() -> None:
    box = SessionBox("m" * 32)
    session, value = box.new("secret-token", now=1000.0)
    assert box.open(value, now=1001.0) == session
    flipped = value[:-2] + ("A" if value[-2] != "A" else "B") + value[-1]
    assert box.open(flipped, now=1001.0) is None
    assert box.open(value, now=session.expires_at) is None
    assert SessionBox("n" * 32).open(value, now=1001.0) is None  # another master key
    assert box.open("not a cookie") is None


def test_a_draft_is_checked_exactly_as_gateway_check_checks_the_file(tmp_path: Path) -> None:
    broken = DEMO.replace("transform: [first_word]", "transform: [first_wrd]").replace(
        "type: file", "type: fil"
    )
    (tmp_path / "demo.yaml").write_text(broken)
    registry = MappingRegistry(tmp_path)
    registry.reload()
    expected = [(p.line, p.path, p.message) for p in registry.all_problems()]
    got = check_draft("demo", broken)
    assert expected
    assert [(p.line, p.path, p.message) for p in got.problems] == expected
    assert got.mapping is None
    ok = check_draft("demo", DEMO)
    assert ok.problems == []
    assert ok.mapping is not None
    with pytest.raises(ValueError, match="file name"):
        check_draft("../etc/passwd", DEMO)


async def test_the_editor_checks_and_previews_a_draft(client) -> None:
    csrf = await _sign_in(client)
    fixed = DEMO.replace("email: epost", "e_mail: epost")
    resp = await client.post(
        "/console/mappings/demo/draft",
        data={"yaml": fixed, "record": '{"epost": "a@example.com", "namn": "Asa Lund"}'},
        headers={"X-CSRF-Token": csrf},
    )
    page = await resp.text()
    assert resp.status == 200
    assert "No problems" in page
    assert "e_mail" in page
    assert "a@example.com" in page
    resp = await client.post(
        "/console/mappings/demo/draft",
        data={"yaml": "group_key: demo\nintegrations: [", "record": "{}"},
        headers={"X-CSRF-Token": csrf},
    )
    assert '<span class="line">line 3</span>' in await resp.text()
    # A group the token cannot see reads as missing, and nothing is checked.
    resp = await client.post(
        "/console/mappings/nope/draft", data={"yaml": DEMO}, headers={"X-CSRF-Token": csrf}
    )
    assert resp.status == 404


def test_activity_counts_increases_per_minute_and_forgets_after_an_hour() -> None:
    from gateway.console.activity import MINUTES, Activity, chart_svg

    act = Activity()
    lane = {"group_key": "shop", "integration": "crm"}
    t0 = 1_000_000 * 60.0  # the start of a minute
    act.sample([{**lane, "delivered": 0, "retried": 0, "dead": 0}], t0)
    act.sample([{**lane, "delivered": 5, "retried": 2, "dead": 1}], t0 + 10)
    act.sample([{**lane, "delivered": 7, "retried": 2, "dead": 1}], t0 + 70)
    series = act.series(t0 + 70)
    assert len(series) == MINUTES
    assert (series[-2].delivered, series[-2].failed, series[-2].dead) == (5, 3, 1)
    assert (series[-1].delivered, series[-1].failed) == (2, 0)
    hour = act.last_hour(("shop", "crm"), t0 + 70)
    assert (hour.delivered, hour.dead) == (7, 1)
    assert act.last_hour(("shop", "other"), t0 + 70).delivered == 0
    # A restarted engine's counters start again from 0: no negative minute.
    act.sample([{**lane, "delivered": 1, "retried": 0, "dead": 0}], t0 + 80)
    assert act.series(t0 + 80)[-1].delivered == 2
    svg = str(chart_svg(act.series(t0 + 80)))
    assert 'aria-label="Last 60 minutes: 7 delivered, 3 failed attempts"' in svg
    assert svg.count('class="ok"') == 2
    # An hour later it is all gone.
    act.sample([{**lane, "delivered": 1, "retried": 0, "dead": 0}], t0 + 80 + 3600)
    assert act.last_hour(("shop", "crm"), t0 + 80 + 3600).delivered == 0


async def test_a_save_the_api_refuses_keeps_the_text_and_lists_the_problems(
    client, tmp_path: Path
) -> None:
    csrf = await _sign_in(client)
    page = await client.get("/console/mappings/demo")
    version = re.search(r'name="version" value="([0-9a-f]+)"', await page.text())
    assert version
    bad = DEMO.replace("type: file", "type: fil")
    resp = await client.post(
        "/console/mappings/demo/save",
        data={"csrf": csrf, "yaml": bad, "version": version.group(1), "record": "{}"},
        allow_redirects=False,
    )
    text = await resp.text()
    assert resp.status == 422
    assert "unknown integration type &#39;fil&#39;" in text
    assert '<span class="line">line 10</span>' in text
    assert "type: fil" in text  # still in the editor
    assert (tmp_path / "maps" / "demo.yaml").read_text() == DEMO
    resp = await client.post(
        "/console/mappings/demo/save",
        data={"csrf": csrf, "yaml": "integrations: [", "version": version.group(1)},
        allow_redirects=False,
    )
    assert resp.status == 422
    assert "not valid YAML" in await resp.text()
    assert (tmp_path / "maps" / "demo.yaml").read_text() == DEMO


async def test_a_token_revoked_meanwhile_ends_the_session(client) -> None:
    admin = {"Authorization": f"Bearer {TOKEN}"}
    made = await client.post("/admin/v1/tokens", json={"role": "read"}, headers=admin)
    assert made.status == 201
    token = (await made.json())["token"]
    form = await client.get("/console/signin")
    resp = await client.post(
        "/console/signin",
        data={"csrf": await _csrf_of(form), "token": token},
        allow_redirects=False,
    )
    assert resp.status == 303
    assert (await client.get("/console/mappings")).status == 200
    token_id = token.split("_")[1]
    assert (await client.delete(f"/admin/v1/tokens/{token_id}", headers=admin)).status == 204
    resp = await client.get("/console/mappings", allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == "/console/signin"
    assert resp.cookies["gateway_console"].value == ""
