"""Issue 11 (items 2-4) against a real ``gateway serve`` and real local receivers: integration
credentials never reach producers through a delivery's error, records cannot steer
deliveries to other hosts, and OAuth2 token requests do not follow redirects."""

from __future__ import annotations

import base64
import http.server
import json
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.integrations.base import get_type
from gateway.integrations.oauth2 import TokenCache, TokenError
from gateway.integrations.transport import Transport
from tests.support.gateway_proc import GatewayProcess
from tests.support.receiver import Answer, Receiver
from tests.support.signing import sign

pytestmark = pytest.mark.e2e

ADMIN_TOKEN = "admin-token-for-security-tests"
API_KEY = "sk_live_echoed_api_key_4711"
PASSWORD = "hunter2-basic-password"
BEARER = "bearer-token-of-the-integration-99"


class EchoServer:
    """A real HTTP server that answers ``status`` with the request's headers as JSON: the
    receiver of the bug report, which echoed the integration's credentials."""

    def __init__(self, status: int = 400) -> None:
        self.status = status
        self.hits: list[tuple[str, dict[str, str]]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.hits.append((self.path, dict(self.headers)))
                body = json.dumps({"error": "bad", "you_sent": dict(self.headers)}).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class TokenServer:
    """A real OAuth2 token endpoint handing out ``ACCESS_TOKEN``."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.dumps({"access_token": ACCESS_TOKEN, "expires_in": 3600}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


ACCESS_TOKEN = "oauth-access-token-from-the-endpoint-5150"


@pytest.fixture
def tokens() -> Iterator[TokenServer]:
    server = TokenServer()
    yield server
    server.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


def _gateway(tmp_path: Path, mapping: str, **env: str) -> GatewayProcess:
    gw = GatewayProcess(
        tmp_path,
        groups=("sec",),
        GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN,
        GATEWAY_DELIVERY_POLL_INTERVAL="0.05",
        **env,
    )
    (gw.mappings / "sec.yaml").write_text(mapping)
    return gw


def _post(gw: GatewayProcess, key: tuple[str, str], data: dict[str, Any]) -> str:
    body = json.dumps({"group_key": "sec", "data": data}).encode()
    url, headers = sign(
        "POST",
        gw.url + "/v1/records",
        body,
        {"Content-Type": "application/json"},
        key=key[0],
        secret=key[1],
    )
    status, doc = gw.request("POST", url.removeprefix(gw.url), body, headers)
    assert status == 202, doc
    return str(doc["id"])


def _record(gw: GatewayProcess, key: tuple[str, str], rid: str) -> dict[str, Any]:
    url, headers = sign("GET", f"{gw.url}/v1/records/{rid}", key=key[0], secret=key[1])
    status, doc = gw.request("GET", url.removeprefix(gw.url), None, headers)
    assert status == 200, doc
    return doc


def _settled(
    gw: GatewayProcess, key: tuple[str, str], rid: str, within: float = 15.0
) -> dict[str, Any]:
    """The record once none of its deliveries is pending."""
    deadline = time.monotonic() + within
    while True:
        doc = _record(gw, key, rid)
        if all(d["state"] != "pending" for d in doc["deliveries"]):
            return doc
        assert time.monotonic() < deadline, doc
        time.sleep(0.1)


def _admin_delivery(gw: GatewayProcess, delivery_id: str) -> dict[str, Any]:
    status, doc = gw.request(
        "GET",
        f"/admin/v1/deliveries/{delivery_id}",
        None,
        {"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert status == 200, doc
    return doc


NO_RETRY = "options: {retry: {max_attempts: 1}}"


def test_echoed_credentials_never_reach_producers_and_are_scrubbed_for_operators(
    tmp_path: Path, echo: EchoServer, tokens: TokenServer
) -> None:
    mapping = textwrap.dedent(
        f"""\
        group_key: sec
        integrations:
          - name: apikey
            type: http
            connection:
              url: "{echo.url}/hook"
              auth: {{type: api_key, value: "${{SEC_API_KEY}}"}}
            fields: {{email: email}}
            {NO_RETRY}
          - name: basic
            type: http
            connection:
              url: "{echo.url}/hook"
              auth: {{type: basic, username: svc, password: "${{SEC_PASSWORD}}"}}
            fields: {{email: email}}
            {NO_RETRY}
          - name: oauth
            type: http
            connection:
              url: "{echo.url}/hook"
              auth:
                type: oauth2_client_credentials
                token_url: "{tokens.url}/token"
                client_id: gw
                client_secret: "${{SEC_PASSWORD}}"
            fields: {{email: email}}
            {NO_RETRY}
        """
    )
    gw = _gateway(tmp_path, mapping, SEC_API_KEY=API_KEY, SEC_PASSWORD=PASSWORD)
    key = gw.create_key("sec")
    gw.start()
    try:
        rid = _post(gw, key, {"email": "a@example.com"})
        doc = _settled(gw, key, rid)
        raw = json.dumps(doc)
        basic = base64.b64encode(f"svc:{PASSWORD}".encode()).decode()
        # The receiver really got (and echoed) the credentials: the scenario of the report.
        assert API_KEY in {h.get("X-API-Key") for _, h in echo.hits}
        assert f"Basic {basic}" in {h.get("Authorization") for _, h in echo.hits}
        assert f"Bearer {ACCESS_TOKEN}" in {h.get("Authorization") for _, h in echo.hits}
        assert len(doc["deliveries"]) == 3
        for secret in (API_KEY, PASSWORD, basic, ACCESS_TOKEN):
            assert secret not in raw
        for d in doc["deliveries"]:
            assert d["state"] == "dead"
            assert d["last_status"] == 400
            assert d["last_error_code"] == "HTTP_STATUS"
            assert d["last_error"] == "the integration answered HTTP 400"
            admin = _admin_delivery(gw, d["id"])
            text = json.dumps(admin)
            for secret in (API_KEY, PASSWORD, basic, ACCESS_TOKEN):
                assert secret not in text
            # The operator still sees what the integration said, minus the secret.
            assert admin["last_error"].startswith("HTTP 400: ")
            assert "you_sent" in admin["last_error"]
            assert "***" in admin["last_error"]
            assert all("***" in (a["error"] or "") for a in admin["attempt_history"])
        assert API_KEY not in gw.output()
        assert basic not in gw.output()
    finally:
        gw.stop()


def test_check_refuses_placeholders_in_the_host_and_non_http_urls(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, groups=("sec",))
    cases = {
        "http://{host}:18555/x": "placeholders may not fill the scheme, host or port",
        "http://127.0.0.1:{port}/x": "placeholders may not fill the scheme, host or port",
        "{scheme}://127.0.0.1/x": "placeholders may not fill the scheme, host or port",
        "file:///tmp/out.ndjson": "must be an http:// or https:// URL, not file:",
        "http:relative/{host}": "must be an http:// or https:// URL with a host",
    }
    for url, message in cases.items():
        (gw.mappings / "sec.yaml").write_text(
            textwrap.dedent(
                f"""\
                group_key: sec
                integrations:
                  - name: hook
                    type: http
                    connection: {{url: "{url}"}}
                    fields: {{host: host, port: port, scheme: scheme}}
                """
            )
        )
        out = gw.cli("check", check=False)
        assert out.returncode != 0, (url, out.stdout)
        assert message in out.stdout + out.stderr, (url, out.stdout, out.stderr)
        assert "connection.url" in out.stdout + out.stderr
    # The explicit opt-in, documented, lets a record choose the host again; a path
    # placeholder never needed one.
    (gw.mappings / "sec.yaml").write_text(
        textwrap.dedent(
            """\
            group_key: sec
            integrations:
              - name: hook
                type: http
                connection:
                  url: "http://{host}:18555/x/{id}"
                  allow_host_placeholders: true
                fields: {host: host, id: id}
            """
        )
    )
    out = gw.cli("check", check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_records_cannot_send_credentials_to_denied_addresses(tmp_path: Path) -> None:
    """A record-chosen host with the bearer token: the loopback receiver is reached only
    where loopback is allowed; metadata is refused by default; a refusal is a dead letter
    with a clear reason and no secret."""
    with EchoServerOK() as ok:
        mapping = textwrap.dedent(
            f"""\
            group_key: sec
            integrations:
              - name: steered
                type: http
                connection:
                  url: "http://{{host}}:{ok.port}/steered"
                  allow_host_placeholders: true
                  auth: {{type: bearer, token: "${{SEC_BEARER}}"}}
                fields: {{host: host}}
                options: {{retry: {{max_attempts: 5, base: 50ms}}}}
              - name: narrowed
                type: http
                connection:
                  url: "http://{{host}}:{ok.port}/narrowed"
                  allow_host_placeholders: true
                  auth: {{type: bearer, token: "${{SEC_BEARER}}"}}
                fields: {{host: host}}
                options:
                  retry: {{max_attempts: 5, base: 50ms}}
                  destinations: {{deny: [loopback]}}
            """
        )
        gw = _gateway(tmp_path, mapping, SEC_BEARER=BEARER)
        key = gw.create_key("sec")
        gw.start()
        try:
            loop_doc = _settled(gw, key, _post(gw, key, {"host": "127.0.0.1"}))
            meta_doc = _settled(gw, key, _post(gw, key, {"host": "169.254.169.254"}))
            by_name = {d["integration"]: d for d in loop_doc["deliveries"]}
            # Loopback is allowed by default (demo, tests): delivered, with the token...
            assert by_name["steered"]["state"] == "delivered"
            assert [p for p, _ in ok.hits] == ["/steered"]
            assert ok.hits[0][1]["Authorization"] == f"Bearer {BEARER}"
            # ...unless the entry denies it: dead at once, nothing sent.
            narrowed = by_name["narrowed"]
            assert (narrowed["state"], narrowed["attempts"]) == ("dead", 1), narrowed
            assert narrowed["last_error_code"] == "DESTINATION_REFUSED"
            for d in meta_doc["deliveries"]:  # metadata: refused for every entry by default
                assert (d["state"], d["attempts"]) == ("dead", 1), d
                assert d["last_error_code"] == "DESTINATION_REFUSED"
                admin = _admin_delivery(gw, d["id"])
                assert admin["last_error"].startswith("destination refused: 169.254.169.254")
                assert "169.254.169.254/32" in admin["last_error"]
                assert BEARER not in json.dumps(admin)
        finally:
            gw.stop()
        assert len(ok.hits) == 1
        assert BEARER not in gw.output()


def test_gateway_wide_deny_setting_applies_to_every_entry(tmp_path: Path) -> None:
    with EchoServerOK() as ok:
        mapping = textwrap.dedent(
            f"""\
            group_key: sec
            integrations:
              - name: hook
                type: http
                connection: {{url: "{ok.url}/hook"}}
                fields: {{email: email}}
            """
        )
        gw = _gateway(tmp_path, mapping, GATEWAY_DESTINATIONS_DENY="loopback")
        key = gw.create_key("sec")
        gw.start()
        try:
            rid = _post(gw, key, {"email": "a@example.com"})
            doc = _settled(gw, key, rid)
        finally:
            gw.stop()
        (d,) = doc["deliveries"]
        assert d["state"] == "dead"
        assert d["last_error_code"] == "DESTINATION_REFUSED"
        assert ok.hits == []


def test_a_bad_destination_setting_stops_the_gateway_with_its_name(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, groups=("sec",), GATEWAY_DESTINATIONS_DENY="loopback,10.0.0.0/33")
    with pytest.raises(RuntimeError) as err:
        gw.start(timeout=10)
    assert "GATEWAY_DESTINATIONS_DENY" in str(err.value)
    assert "10.0.0.0/33" in str(err.value)


class EchoServerOK(EchoServer):
    def __init__(self) -> None:
        super().__init__(status=200)

    def __enter__(self) -> EchoServerOK:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- OAuth2 token requests against real local receivers ------------------------------------


class _Integration:
    """What the token cache reads of an entry of the ``http`` type: its type and
    ``connection.value['auth']``."""

    def __init__(self, auth: dict[str, Any]) -> None:
        self.type = get_type("http")
        self.connection = type("C", (), {"value": {"auth": auth}})()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_token_request_does_not_follow_a_redirect(status: int) -> None:
    elsewhere = await Receiver(lambda r: Answer(200, body=b'{"access_token": "stolen"}')).start()
    token_ep = await Receiver(
        lambda r: Answer(status, headers={"Location": elsewhere.url + "/token"}, body=b"")
    ).start()
    transport = Transport()
    secret = "client-secret-of-the-gateway-123"
    integ = _Integration(
        {
            "type": "oauth2_client_credentials",
            "token_url": token_ep.url + "/oauth/token",
            "client_id": "gw",
            "client_secret": secret,
            "client_auth": "body",
        }
    )
    try:
        with pytest.raises(TokenError) as err:
            await TokenCache().ensure(integ, transport.client())
        assert err.value.permanent
        assert f"HTTP {status}" in str(err.value)
        assert "redirect" in str(err.value)
        assert secret not in str(err.value)
        assert len(token_ep.requests) == 1
        assert elsewhere.seen == []  # the secret went nowhere else
    finally:
        await transport.close()
        await token_ep.stop()
        await elsewhere.stop()


async def test_token_endpoint_echoing_the_secret_is_scrubbed() -> None:
    secret = "client/secret+with=signs"
    token_ep = await Receiver(lambda r: Answer(401, body=b"invalid_client: " + r.body)).start()
    transport = Transport()
    integ = _Integration(
        {
            "type": "oauth2_client_credentials",
            "token_url": token_ep.url + "/token",
            "client_id": "gw",
            "client_secret": secret,
            "client_auth": "body",
        }
    )
    try:
        with pytest.raises(TokenError) as err:
            await TokenCache().ensure(integ, transport.client())
        assert err.value.permanent
        assert "HTTP 401" in str(err.value)
        assert "client_id=gw" in str(err.value)  # the echo is there, the secret is not
        assert "client%2Fsecret%2Bwith%3Dsigns" in token_ep.requests[0].body.decode()
        assert "client%2Fsecret%2Bwith%3Dsigns" not in str(err.value)
        assert secret not in str(err.value)
    finally:
        await transport.close()
        await token_ep.stop()
