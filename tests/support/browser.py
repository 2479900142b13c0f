"""A real headless Chromium (Debian's ``chromium`` and ``chromium-driver``) under Selenium, for
the console's browser tests: screenshots, an axe-core accessibility check, a sink server.

The browser runs offline-friendly: no first-run, sync, component updates or background
networking, a fresh empty profile per driver, and (as root in CI containers) no sandbox.
"""

from __future__ import annotations

import http.server
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.gateway_proc import GatewayProcess

REPO = Path(__file__).resolve().parents[2]
AXE = Path(__file__).parent / "axe" / "axe.min.js"
#: Screenshots land here (kept out of git by its own .gitignore); GATEWAY_TEST_ARTIFACTS moves it.
ARTIFACTS = Path(os.environ.get("GATEWAY_TEST_ARTIFACTS") or REPO / "tests" / "artifacts")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def require_browser() -> None:
    """Skip when chromium or chromedriver is missing (CI installs both: .ci/run); fail
    under CI."""
    if Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists():
        return
    message = "chromium and chromium-driver are needed (apt-get install chromium chromium-driver)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A Selenium driver for a fresh headless Chromium; quit and its profile removed after."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="console-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(driver: Any, name: str) -> Path:
    """Save the viewport as ARTIFACTS/console/<name>.png."""
    folder = ARTIFACTS / "console"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"no screenshot saved at {path}"
    return path


def axe_violations(driver: Any, impacts: tuple[str, ...] = ("critical",)) -> list[dict[str, Any]]:
    """axe-core's violations on the current page with one of ``impacts``."""
    driver.execute_script(AXE.read_text())
    violations = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']})"
        ".then(r => done(r.violations), e => done([{id: 'axe-error', impact: 'critical',"
        " help: String(e), nodes: []}]));"
    )
    return [v for v in violations if v.get("impact") in impacts]


def describe(violations: list[dict[str, Any]]) -> str:
    """One line per violation and the first nodes it names."""
    return "\n".join(
        f"{v['id']} ({v['impact']}): {v['help']} at "
        + ", ".join(str(n.get("target")) for n in v.get("nodes", [])[:3])
        for v in violations
    )


def wait_for(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something true; its value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # e.g. a stale element while htmx swaps
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


class Sink:
    """A local HTTP server standing for a vendor: it refuses a JSON body without ``require``
    (422 with a vendor-like message) and records each body it accepts. ``pages`` maps a GET
    path to the HTML it serves (for a page of another origin)."""

    def __init__(self, require: str) -> None:
        self.require = require
        self.accepted: list[dict[str, Any]] = []
        self.refused: list[dict[str, Any]] = []
        self.pages: dict[str, str] = {}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                body = orjson.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                if isinstance(body, dict) and outer.require in body:
                    outer.accepted.append(body)
                    self._send(200, b'{"ok":true}', "application/json")
                else:
                    outer.refused.append(body)
                    message = {"error": f"field '{outer.require}' is required"}
                    self._send(422, orjson.dumps(message), "application/json")

            def do_GET(self) -> None:
                page = outer.pages.get(self.path)
                if page is None:
                    self._send(404, b"not here", "text/plain")
                else:
                    self._send(200, page.encode(), "text/html; charset=utf-8")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def console_gateway(tmp_path: Path, token: str, shop_mapping: str) -> Iterator[GatewayProcess]:
    """A real ``gateway serve`` for the console tests: admin token ``token``, the groups
    ``other`` (the demo mapping) and ``shop`` (``shop_mapping``), deliveries polled often."""
    require_browser()
    gw = GatewayProcess(
        tmp_path,
        groups=("other",),
        GATEWAY_ADMIN_TOKEN=token,
        GATEWAY_DELIVERY_POLL_INTERVAL="0.1",
    )
    (gw.mappings / "shop.yaml").write_text(shop_mapping)
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()
