"""The web console in a real headless Chromium against a real ``gateway serve``.

An operator signs in, finds a dead delivery by the customer's e-mail, reads its attempts,
fixes the mapping in the editor, sees the fixed field in the live preview, saves it, replays
the delivery and the sink gets it. Also: a form posted without
the CSRF token (from the console's own page and from another origin) changes nothing, and
sign-out ends the session, the old cookie included. Every step saves a screenshot under
tests/artifacts/console/ and the main pages pass axe-core with no critical violation.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from requests_aws4auth import AWS4Auth

from tests.support.browser import (
    Sink,
    axe_violations,
    chromium,
    console_gateway,
    describe,
    screenshot,
    wait_for,
)
from tests.support.gateway_proc import GatewayProcess

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

TOKEN = "console-test-token-0123456789"
EMAIL = "asa.lund@example.com"

# The mistake to fix: the vendor wants "email", the mapping sends "e_mail".
MAPPING = """\
group_key: shop
description: Sign-ups to the CRM
integrations:
  - name: crm
    type: http
    connection:
      url: "{url}/contacts"
    fields:
      e_mail: epost
      name: namn
    options:
      retry: {{base: 50ms, cap: 200ms}}
"""


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink(require="email")
    yield s
    s.stop()


@pytest.fixture
def gateway(tmp_path: Path, sink: Sink) -> Iterator[GatewayProcess]:
    with console_gateway(tmp_path, TOKEN, MAPPING.format(url=sink.url)) as gw:
        yield gw


def _admin(gw: GatewayProcess, path: str) -> Any:
    return gw.request("GET", "/admin/v1" + path, headers={"Authorization": f"Bearer {TOKEN}"})[1]


def _send(gw: GatewayProcess, data: dict[str, Any]) -> str:
    key, secret = gw.create_key("shop")
    r = requests.post(
        gw.url + "/v1/records",
        data=json.dumps({"group_key": "shop", "data": data}).encode(),
        auth=AWS4Auth(key, secret, "us-east-1", "execute-api"),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def _dead(gw: GatewayProcess) -> list[dict[str, Any]]:
    return list(_admin(gw, "/deliveries?state=dead&group=shop")["deliveries"])


def _sign_in(driver: Any, gw: GatewayProcess) -> None:
    from selenium.webdriver.common.by import By

    driver.get(gw.url + "/console/")
    wait_for(lambda: driver.current_url.endswith("/console/signin"), what="the sign-in page")
    driver.find_element(By.ID, "token").send_keys(TOKEN)
    driver.find_element(By.CSS_SELECTOR, "form.signin button[type=submit]").click()
    wait_for(lambda: driver.current_url.endswith("/console/"), what="the overview")


def _accessible(driver: Any, page: str) -> None:
    bad = axe_violations(driver)
    assert not bad, f"critical accessibility violations on {page}:\n{describe(bad)}"


def test_find_fix_preview_replay(gateway: GatewayProcess, sink: Sink) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    gw = gateway
    record_id = _send(gw, {"epost": EMAIL, "namn": "Åsa Lund"})
    wait_for(lambda: _dead(gw), what="the delivery to die (422 from the sink)")
    assert sink.refused
    assert "email" not in sink.refused[0]
    [dead] = _dead(gw)

    with chromium() as driver:
        driver.get(gw.url + "/console/")
        wait_for(lambda: driver.find_elements(By.ID, "token"), what="the sign-in form")
        screenshot(driver, "01-signin")
        _accessible(driver, "sign-in")
        _sign_in(driver, gw)

        # Overview: the lane with its dead delivery, refreshed by htmx.
        lanes = wait_for(lambda: driver.find_element(By.ID, "lanes"), what="the lanes")
        assert "crm" in lanes.text
        assert "shop" in lanes.text
        assert "field 'email' is required" in lanes.text  # the lane's last error
        screenshot(driver, "02-overview")
        _accessible(driver, "overview")

        # It refreshes itself, but not from under a keyboard user's focus.
        def updated() -> str:
            return str(driver.find_element(By.CSS_SELECTOR, "#lanes .meta").text)

        first = updated()
        wait_for(lambda: updated() != first, timeout=12, what="the overview to refresh")
        pause = driver.find_element(By.CSS_SELECTOR, 'button[aria-label="Pause shop / crm"]')
        driver.execute_script("arguments[0].focus()", pause)
        held = updated()
        time.sleep(6)
        assert driver.execute_script("return document.activeElement") == pause
        assert updated() == held

        # Search by the e-mail: the record, then its page with the attempt and the vendor answer.
        driver.find_element(By.LINK_TEXT, "Search").click()
        box = wait_for(lambda: driver.find_element(By.ID, "q"), what="the search form")
        box.send_keys(EMAIL, Keys.ENTER)
        link = wait_for(lambda: driver.find_element(By.LINK_TEXT, record_id), what="the hit")
        screenshot(driver, "03-search")
        _accessible(driver, "search")
        # The time range bounds the search; a bad time is refused in the API's words.
        link_href = link.get_attribute("href")
        driver.get(
            gw.url + f"/console/search?q={EMAIL}&created_after=2000-01-01T00:00"
            "&created_before=2000-01-02T00:00"
        )
        assert "Nothing found." in driver.find_element(By.TAG_NAME, "main").text
        driver.get(gw.url + f"/console/search?q={EMAIL}&created_after=yesterday")
        assert "created_after" in driver.find_element(By.CSS_SELECTOR, "p.error").text
        driver.get(link_href)
        section = wait_for(lambda: driver.find_element(By.ID, dead["id"]), what="the delivery")
        assert "dead" in section.text
        assert "422" in section.text
        assert "field 'email' is required" in section.text  # the vendor's answer
        assert EMAIL in driver.find_element(By.TAG_NAME, "main").text
        screenshot(driver, "04-record")
        _accessible(driver, "record")

        # The mapping, with this record in the preview: the wrong field shows.
        driver.find_element(By.PARTIAL_LINK_TEXT, "Open the mapping of shop").click()
        preview = wait_for(
            lambda: driver.find_element(By.CSS_SELECTOR, '#draft-result [data-integration="crm"]'),
            what="the preview",
        )
        assert "e_mail" in preview.text

        # A broken line is reported as `gateway check` reports the same file, line included.
        broken = MAPPING.format(url=sink.url).replace("type: http", "type: htttp")
        check_dir = gw.root / "check"
        check_dir.mkdir()
        (check_dir / "shop.yaml").write_text(broken)
        checked = json.loads(gw.cli("check", "--json", str(check_dir), check=False).stdout)
        [expected] = checked["problems"]
        assert expected["line"] == 5
        editor = driver.find_element(By.ID, "yaml")
        editor.send_keys(Keys.CONTROL, "a")
        editor.send_keys(broken)
        problems = wait_for(
            lambda: driver.find_element(By.CSS_SELECTOR, "#problems li"), what="a problem"
        )
        assert problems.text == f"line 5: {expected['path']}: {expected['message']}"
        screenshot(driver, "05-mapping-problem")

        # The fix: the preview shows the vendor's field.
        fixed = MAPPING.format(url=sink.url).replace("e_mail: epost", "email: epost")
        editor.send_keys(Keys.CONTROL, "a")
        editor.send_keys(fixed)

        def fixed_preview() -> bool:
            text = driver.find_element(By.CSS_SELECTOR, '#draft-result [data-integration="crm"]')
            return '"email": "asa.lund@example.com"' in text.text.replace('"email":"', '"email": "')

        wait_for(fixed_preview, what="the fixed field in the preview")
        assert "No problems" in driver.find_element(By.ID, "problems").text
        screenshot(driver, "06-mapping-fixed")
        _accessible(driver, "mapping editor")

        # Save: written through the management API (with the version check), live at once.
        driver.find_element(By.ID, "save").click()
        flash = wait_for(lambda: driver.find_element(By.CLASS_NAME, "flash"), what="saved")
        assert flash.text.startswith("Saved as version ")
        assert flash.text.endswith(", now live.")
        assert "email: epost" in (gw.mappings / "shop.yaml").read_text()

        # Dead letters: select it and replay; the count is shown and the sink gets the fix.
        driver.find_element(By.LINK_TEXT, "Dead letters").click()
        box = wait_for(
            lambda: driver.find_element(By.CSS_SELECTOR, f'input[name=ids][value="{dead["id"]}"]'),
            what="the dead delivery in the list",
        )
        screenshot(driver, "07-dead-letters")
        _accessible(driver, "dead letters")
        box.send_keys(Keys.SPACE)  # by keyboard
        assert box.is_selected()
        driver.find_element(By.CSS_SELECTOR, "button[value=selected]").click()
        flash = wait_for(lambda: driver.find_element(By.CLASS_NAME, "flash"), what="replayed")
        assert flash.text == "Replayed 1 delivery."
        wait_for(lambda: sink.accepted, what="the sink to receive the replayed delivery")
        assert sink.accepted[0]["email"] == EMAIL
        screenshot(driver, "08-replayed")

        # On a phone: the overview still shows every lane.
        driver.set_window_size(390, 844)
        driver.get(gw.url + "/console/")
        wait_for(lambda: driver.find_element(By.ID, "lanes"), what="the overview")
        screenshot(driver, "09-overview-phone")
    assert _admin(gw, f"/deliveries/{dead['id']}")["state"] == "delivered"


def test_csrf_and_sign_out(gateway: GatewayProcess, sink: Sink) -> None:
    from selenium.webdriver.common.by import By

    gw = gateway
    _send(gw, {"epost": EMAIL, "namn": "Åsa Lund"})
    [dead] = wait_for(lambda: _dead(gw), what="a dead delivery")

    # A page of another origin posting to the console in the operator's browser.
    sink.pages["/evil"] = (
        f'<!doctype html><title>win a prize</title><form id="f" method="post" '
        f'action="{gw.url}/console/dead/replay"><input name="one" value="{dead["id"]}">'
        '</form><script>document.getElementById("f").submit()</script>'
    )
    with chromium() as driver:
        _sign_in(driver, gw)

        # The console's own origin, the session cookie sent, but no CSRF token: refused.
        status = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch('/console/dead/replay', {method: 'POST', body: new URLSearchParams("
            "{one: arguments[0]})}).then(r => done(r.status), e => done(String(e)));",
            dead["id"],
        )
        assert status == 403

        driver.get(sink.url + "/evil")
        wait_for(lambda: "/console/" in driver.current_url, what="the cross-site post")
        body = driver.find_element(By.TAG_NAME, "main").text
        assert "refused" in body.lower()
        screenshot(driver, "10-csrf-refused")
        time.sleep(0.5)
        assert _admin(gw, f"/deliveries/{dead['id']}")["state"] == "dead"
        assert not sink.accepted

        # Sign-out: the console is closed to this browser and to the old cookie.
        old = {c["name"]: c["value"] for c in driver.get_cookies()}["gateway_console"]
        driver.get(gw.url + "/console/")
        driver.find_element(By.CSS_SELECTOR, "form.signout button").click()
        wait_for(lambda: driver.current_url.endswith("/console/signin"), what="signed out")
        assert "gateway_console" not in {c["name"] for c in driver.get_cookies()}
        driver.get(gw.url + "/console/dead")
        assert driver.current_url.endswith("/console/signin")
        screenshot(driver, "11-signed-out")

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    req = urllib.request.Request(
        gw.url + "/console/dead", headers={"Cookie": f"gateway_console={old}"}
    )
    with pytest.raises(urllib.error.HTTPError) as answer:
        opener.open(req, timeout=10)
    assert answer.value.code == 303
    assert answer.value.headers["Location"] == "/console/signin"
