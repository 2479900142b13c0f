"""The console's pages on the management API, in a real headless Chromium against a real
``gateway serve``: saving a mapping with its version check, versions, diff and rollback,
enabling and disabling an integration, access keys, and a token limited to one group."""

from __future__ import annotations

import json
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

TOKEN = "console-manage-token-0123456789"
MAPPING = """\
group_key: shop
# Sign-ups go to the CRM.
integrations:
  - name: crm
    type: http
    connection:
      url: "{url}/contacts"
    fields:
      e_mail: epost
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


def _api(
    gw: GatewayProcess, method: str, path: str, body: Any = None, token: str = TOKEN
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    return gw.request(method, "/admin/v1" + path, data, headers)


def _sign_in(driver: Any, gw: GatewayProcess, token: str = TOKEN) -> None:
    from selenium.webdriver.common.by import By

    driver.get(gw.url + "/console/signin")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "form.signin button[type=submit]").click()
    wait_for(lambda: "/signin" not in driver.current_url, what="signed in")


def _accessible(driver: Any, page: str) -> None:
    bad = axe_violations(driver)
    assert not bad, f"critical accessibility violations on {page}:\n{describe(bad)}"


def _flash(driver: Any, expected: str | None = None) -> str:
    """The page's message; with ``expected``, once it says that (a click leaves the previous
    page, and its message, in place until the next one loads)."""
    from selenium.webdriver.common.by import By

    def text() -> str:
        found = str(driver.find_element(By.CLASS_NAME, "flash").text)
        return found if expected is None or found == expected else ""

    return str(wait_for(text, what=f"the message {expected!r}"))


def _type_into(driver: Any, element_id: str, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.ID, element_id)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(text)


def test_save_with_version_check_history_rollback_and_enable(
    gateway: GatewayProcess, sink: Sink
) -> None:
    from selenium.webdriver.common.by import By

    gw = gateway
    fixed = MAPPING.format(url=sink.url).replace("e_mail: epost", "email: epost")
    with chromium() as driver:
        _sign_in(driver, gw)

        # Save from the editor: checked, written through, live; the file's comment is kept.
        driver.get(gw.url + "/console/mappings/shop")
        _type_into(driver, "yaml", fixed)
        _type_into(driver, "record", '{"epost": "asa@example.com"}')
        wait_for(
            lambda: (
                '"asa@example.com"'
                in driver.find_element(By.CSS_SELECTOR, '[data-integration="crm"]').text
                and "email" in driver.find_element(By.CSS_SELECTOR, '[data-integration="crm"]').text
            ),
            what="the preview of the fixed mapping",
        )
        driver.find_element(By.ID, "save").click()
        flash = _flash(driver)
        status, group = _api(gw, "GET", "/groups/shop")
        assert status == 200
        assert flash == f"Saved as version {group['version']}, now live."
        on_disk = (gw.mappings / "shop.yaml").read_text()
        assert "email: epost" in on_disk
        assert "# Sign-ups go to the CRM." in on_disk
        assert group["live_version"] == group["version"]
        screenshot(driver, "m01-saved")

        # Someone edits the file by hand meanwhile: saving the stale editor is refused (412),
        # the operator's text stays in the editor, and the file keeps the hand edit.
        driver.get(gw.url + "/console/mappings/shop")
        stale = driver.find_element(By.NAME, "version").get_attribute("value")
        assert stale == group["version"]
        hand = fixed.replace("group_key: shop\n", "group_key: shop\ndescription: by hand\n")
        (gw.mappings / "shop.yaml").write_text(hand)
        wait_for(
            lambda: _api(gw, "GET", "/groups/shop")[1]["live_version"] != stale,
            what="the hand edit to go live",
        )
        mine = fixed.replace("email: epost", "email: epost\n      source: epost")
        _type_into(driver, "yaml", mine)
        driver.find_element(By.ID, "save").click()
        alert = wait_for(lambda: driver.find_element(By.CSS_SELECTOR, "div.error").text, what="412")
        assert "the group changed" in alert
        assert driver.find_element(By.ID, "yaml").get_attribute("value").rstrip() == mine.rstrip()
        assert (gw.mappings / "shop.yaml").read_text() == hand
        screenshot(driver, "m02-conflict")

        # History: every version, the diff of the save, and a rollback to the first one.
        driver.get(gw.url + "/console/mappings/shop/versions")
        rows = driver.find_elements(By.CSS_SELECTOR, "tbody tr")
        assert len(rows) >= 3, [r.text for r in rows]
        _accessible(driver, "versions")
        screenshot(driver, "m03-versions")
        status, listing = _api(gw, "GET", "/groups/shop/versions")
        [update] = [v for v in listing["versions"] if v["action"] == "update"]
        driver.find_element(By.LINK_TEXT, f"Diff of version {update['number']}").click()
        diff = wait_for(lambda: driver.find_element(By.CSS_SELECTOR, "pre.diff").text, what="diff")
        assert "-      e_mail: epost" in diff
        assert "+      email: epost" in diff
        _accessible(driver, "version diff")
        screenshot(driver, "m04-diff")
        first = listing["versions"][0]["number"]
        driver.get(gw.url + "/console/mappings/shop/versions")
        driver.find_element(
            By.CSS_SELECTOR, f'button[aria-label="Roll back to version {first}"]'
        ).click()
        assert _flash(driver).startswith(f"Rolled back to version {first}: now version ")
        assert "e_mail: epost" in (gw.mappings / "shop.yaml").read_text()

        # Disable the integration from the mappings page (a PATCH with If-Match).
        driver.get(gw.url + "/console/mappings")
        driver.find_element(By.CSS_SELECTOR, 'button[aria-label="Disable shop / crm"]').click()
        _flash(driver, "shop / crm: disabled.")
        status, entry = _api(gw, "GET", "/groups/shop/integrations/crm")
        assert entry["integration"]["enabled"] is False
        _accessible(driver, "mappings")
        screenshot(driver, "m05-disabled")
        driver.find_element(By.CSS_SELECTOR, 'button[aria-label="Enable shop / crm"]').click()
        _flash(driver, "shop / crm: enabled.")
        assert _api(gw, "GET", "/groups/shop/integrations/crm")[1]["integration"]["enabled"]


def test_keys_create_shows_the_secret_once_and_revoke_bites(gateway: GatewayProcess) -> None:
    from selenium.webdriver.common.by import By

    gw = gateway
    with chromium() as driver:
        _sign_in(driver, gw)
        driver.find_element(By.LINK_TEXT, "Keys").click()
        wait_for(lambda: driver.find_element(By.ID, "key-name"), what="the keys page")
        driver.find_element(By.CSS_SELECTOR, 'input[name=groups][value="shop"]').click()
        driver.find_element(By.ID, "key-name").send_keys("web shop")
        driver.find_element(By.CSS_SELECTOR, "form[action$='/keys'] button[type=submit]").click()
        key_id = wait_for(lambda: driver.find_element(By.ID, "new-key-id").text, what="new key")
        secret = driver.find_element(By.ID, "new-key-secret").text
        curl = driver.find_element(By.ID, "new-key-curl").text
        assert f"--user {key_id}:{secret}" in curl or f"--user '{key_id}:{secret}'" in curl
        assert f"{gw.url}/v1/records" in curl
        _accessible(driver, "keys")
        screenshot(driver, "m06-key-created")

        # The key works, exactly as shown.
        auth = AWS4Auth(key_id, secret, "us-east-1", "execute-api")
        body = json.dumps({"group_key": "shop", "data": {"epost": "a@example.com"}})
        r = requests.post(
            gw.url + "/v1/records",
            data=body,
            auth=auth,
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
        assert r.status_code == 202, r.text

        # Shown once: the list never holds it.
        driver.get(gw.url + "/console/keys")
        assert secret not in driver.page_source
        driver.find_element(By.CSS_SELECTOR, f'button[aria-label="Revoke {key_id}"]').click()
        _flash(driver, f"Key {key_id} revoked.")
        row = driver.find_element(By.XPATH, f"//tr[td/code[text()='{key_id}']]").text
        assert "revoked" in row

    def refused() -> bool:
        r = requests.post(
            gw.url + "/v1/records",
            data=body,
            auth=auth,
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
        return r.status_code in (401, 403)

    wait_for(refused, timeout=10, what="the revoked key to be refused")


def _sign_out(driver: Any) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "form.signout button").click()
    wait_for(lambda: driver.current_url.endswith("/console/signin"), what="signed out")


def test_a_token_limited_to_one_group_sees_only_it(gateway: GatewayProcess) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    gw = gateway
    status, other_key = _api(gw, "POST", "/keys", {"groups": ["other"], "name": "other's"})
    assert status == 201, other_key
    r = requests.post(
        gw.url + "/v1/records",
        data=json.dumps({"group_key": "other", "data": {"epost": "b@example.com"}}),
        auth=AWS4Auth(
            other_key["access_key_id"], other_key["secret_access_key"], "us-east-1", "execute-api"
        ),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 202, r.text
    other_record = r.json()["id"]
    with chromium() as driver:
        # The admin makes a write token for shop only, in the console.
        _sign_in(driver, gw)
        driver.find_element(By.LINK_TEXT, "Tokens").click()
        Select(wait_for(lambda: driver.find_element(By.ID, "token-role"))).select_by_value("write")
        driver.find_element(By.CSS_SELECTOR, 'input[name=groups][value="shop"]').click()
        driver.find_element(By.ID, "token-name").send_keys("shop team")
        driver.find_element(By.CSS_SELECTOR, "form[action$='/tokens'] button[type=submit]").click()
        token = wait_for(lambda: driver.find_element(By.ID, "new-token-secret").text, what="token")
        assert token.startswith("gwt_")
        row = driver.find_element(By.XPATH, "//tr[td[text()='shop team']]").text
        assert "write" in row
        assert "shop" in row
        _accessible(driver, "tokens")
        screenshot(driver, "m07-token-created")
        _sign_out(driver)

        _sign_in(driver, gw, token)
        wait_for(lambda: driver.current_url.endswith("/console/mappings"), what="mappings")
        main = driver.find_element(By.TAG_NAME, "main").text
        assert "shop" in main
        assert "other" not in main
        nav = driver.find_element(By.TAG_NAME, "nav").text
        assert "Dead letters" not in nav
        assert "Tokens" not in nav
        screenshot(driver, "m08-scoped-mappings")
        _accessible(driver, "mappings (scoped)")

        # The other group by direct URL: not found, as if it did not exist.
        for path in ("/console/mappings/other", "/console/mappings/other/versions"):
            driver.get(gw.url + path)
            assert driver.find_element(By.TAG_NAME, "h1").text == "Not found", path
        driver.get(gw.url + f"/console/records/{other_record}")
        assert driver.find_element(By.TAG_NAME, "h1").text == "Not found"
        assert "b@example.com" not in driver.page_source
        driver.get(gw.url + "/console/keys")
        assert other_key["access_key_id"] not in driver.page_source
        # Pages on every group's deliveries are refused with the API's reason.
        driver.get(gw.url + "/console/dead")
        assert "limited to some groups" in driver.find_element(By.TAG_NAME, "main").text
        screenshot(driver, "m09-scoped-refused")
        _sign_out(driver)

        # Revoked in the console, the token signs in no more.
        _sign_in(driver, gw)
        driver.get(gw.url + "/console/tokens")
        token_id = token.split("_")[1]
        revoke = f'button[aria-label="Revoke token {token_id}"]'
        driver.find_element(By.CSS_SELECTOR, revoke).click()
        _flash(driver, f"Token {token_id} revoked.")
        _sign_out(driver)
        driver.find_element(By.ID, "token").send_keys(token)
        driver.find_element(By.CSS_SELECTOR, "form.signin button[type=submit]").click()
        error = wait_for(lambda: driver.find_element(By.CSS_SELECTOR, "p.error").text, what="no")
        assert error == "The admin token is not valid"
