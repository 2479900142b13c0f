"""Destination policy rules, URL template checks, secret scrubbing and what producers see of
an error (pure functions; the real-server tests are in test_security_e2e.py)."""

from __future__ import annotations

import base64
import textwrap

import pytest
import yaml

from gateway.config import SettingsError, load_settings
from gateway.integrations import destinations, oauth2
from gateway.integrations.base import get_type
from gateway.integrations.destinations import Policy, Rules, parse_ranges
from gateway.integrations.http import url_problem
from gateway.integrations.oauth2 import TokenCache
from gateway.integrations.redact import CODES, producer_error, scrub, secret_values
from gateway.mapping.errors import SpecErrors
from gateway.mapping.model import compile_mapping


def _policy(
    allow: str = "", deny: str = "", entry: tuple[list[str], list[str]] | None = None
) -> Policy:
    builtin = Rules(deny=parse_ranges(destinations.BUILTIN_DENY))
    gateway = Rules(parse_ranges(allow), parse_ranges(deny)).over(builtin)
    return Policy(gateway, None if entry is None else Rules(*map(parse_ranges, entry)))


@pytest.mark.parametrize(
    "addr",
    ["169.254.169.254", "169.254.170.2", "fe80::1", "fd00:ec2::254", "100.100.100.200",
     "0.0.0.0", "::ffff:169.254.169.254"],
)  # fmt: skip
def test_metadata_and_link_local_are_denied_by_default(addr: str) -> None:
    assert _policy().refusal(addr) is not None


@pytest.mark.parametrize("addr", ["127.0.0.1", "::1", "10.1.2.3", "192.168.0.9", "93.184.215.14"])
def test_loopback_private_and_public_are_allowed_by_default(addr: str) -> None:
    assert _policy().refusal(addr) is None


def test_most_specific_range_decides_and_deny_wins_a_tie() -> None:
    p = _policy(allow="169.254.169.254/32")
    assert p.refusal("169.254.169.254") is None  # the operator opened exactly this one
    assert p.refusal("169.254.169.253") is not None
    assert _policy(allow="10.0.0.0/8", deny="10.0.0.0/8").refusal("10.0.0.1") is not None
    allowlist = _policy(allow="203.0.113.0/24", deny="any")
    assert allowlist.refusal("203.0.113.7") is None
    assert allowlist.refusal("198.51.100.1") is not None
    assert allowlist.refusal("127.0.0.1") is not None


def test_an_entry_can_narrow_but_not_widen_the_gateway_policy() -> None:
    narrowed = _policy(entry=([], ["private"]))
    assert narrowed.refusal("10.0.0.1") is not None
    assert narrowed.refusal("127.0.0.1") is None
    widened = _policy(deny="loopback", entry=(["loopback", "metadata"], []))
    assert widened.refusal("127.0.0.1") is not None
    assert widened.refusal("169.254.169.254") is not None
    allowlist = _policy(entry=(["10.9.0.0/16"], ["any"]))
    assert allowlist.refusal("10.9.1.1") is None
    assert allowlist.refusal("10.8.1.1") is not None


def test_bad_ranges_name_the_item_in_settings_and_mapping_files() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings({}, environ={"GATEWAY_DESTINATIONS_ALLOW": "10.0.0.0/8, nonsense"})
    assert "GATEWAY_DESTINATIONS_ALLOW" in str(err.value)
    assert "nonsense" in str(err.value)
    text = textwrap.dedent(
        """\
        group_key: g
        integrations:
          - name: h
            type: http
            connection: {url: "https://example.com/x"}
            fields: {a: a}
            options: {destinations: {deny: [loopback, 300.1.1.1]}}
        """
    )
    with pytest.raises(SpecErrors) as spec:
        compile_mapping(yaml.safe_load(text), text.encode(), expected_group="g")
    assert "300.1.1.1" in str(spec.value)
    assert "destinations" in str(spec.value)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://api.example.com/v1/{id}", None),
        ("http://127.0.0.1:8080/{a}/{b}?x={c}", None),
        ("https://${HOST}/x/{id}", None),
        ("${WEBHOOK_URL}", None),  # checked once resolved, when the request is built
        ("http://{host}/x", "placeholders may not fill"),
        ("https://api.example.com:{port}/x", "placeholders may not fill"),
        ("https://{user}@api.example.com/x", "placeholders may not fill"),
        ("{scheme}://api.example.com/x", "placeholders may not fill"),
        ("file:///etc/passwd", "not file:"),
        ("ftp://example.com/x", "not ftp:"),
        ("http:/x", "with a host"),
        ("example.com/x", "with a host"),
    ],
)
def test_url_templates(url: str, problem: str | None) -> None:
    got = url_problem(url)
    assert (got is None) if problem is None else (got is not None and problem in got), got


def test_opt_in_allows_host_placeholders_but_not_other_schemes() -> None:
    assert url_problem("http://{host}:18555/x", allow_host_placeholders=True) is None
    assert "not file:" in (url_problem("file:///{x}", allow_host_placeholders=True) or "")


def _integration(auth: str, headers: str = "{}") -> object:
    text = textwrap.dedent(
        f"""\
        group_key: g
        integrations:
          - name: h
            type: http
            connection: {{url: "https://example.com/x", auth: {auth}}}
            settings: {{headers: {headers}}}
            fields: {{a: a}}
        """
    )
    env = {"TOKEN": "tok/en+value=1", "PASS": "p@ss word", "SIG": "hdr-secret-777"}
    return compile_mapping(yaml.safe_load(text), text.encode(), environ=env).integrations[0]


def test_scrub_covers_raw_encoded_and_basic_forms() -> None:
    integ = _integration('{type: basic, username: svc, password: "${PASS}"}', '{X-Sig: "v=${SIG}"}')
    secrets = secret_values(integ)
    basic = base64.b64encode(b"svc:p@ss word").decode()
    echo = (
        f'HTTP 400: {{"auth": "Basic {basic}", "pw": "p@ss word", "form": "pw=p%40ss+word", '
        f'"q": "p%40ss%20word", "sig": "v=hdr-secret-777"}}'
    )
    out = scrub(echo, secrets) or ""
    for leaked in (basic, "p@ss word", "p%40ss+word", "p%40ss%20word", "v=hdr-secret-777"):
        assert leaked not in out
    assert out.startswith("HTTP 400: ")
    assert out.count("***") >= 5
    assert "svc" not in secrets  # a user name alone is not a secret


def test_a_reference_inside_a_longer_value_is_scrubbed_on_its_own() -> None:
    integ = _integration("{type: none}", '{Authorization: "Token ${SIG}-and-more"}')
    out = scrub('HTTP 403: {"unknown token": "hdr-secret-777-and-more"}', secret_values(integ))
    assert out == 'HTTP 403: {"unknown token": "***"}'


def test_scrub_covers_tokens_handed_out_and_json_escapes() -> None:
    integ = _integration('{type: bearer, token: "${TOKEN}"}')
    secrets = secret_values(integ, ["oauth-access-token-xyz"])
    text = 'HTTP 401: {"got": "Bearer tok\\/en+value=1", "t": "oauth-access-token-xyz"}'
    # orjson does not escape "/", other encoders do: both forms are caught.
    assert "tok/en+value=1" in secrets
    out = scrub(text.replace("\\/", "/"), secrets) or ""
    assert "tok/en+value=1" not in out
    assert "oauth-access-token-xyz" not in out
    assert scrub(None, secrets) is None
    assert scrub("", secrets) == ""


@pytest.mark.parametrize(
    ("error", "status", "code", "reason"),
    [
        ('HTTP 400: {"key": "sk_live"}', 400, "HTTP_STATUS", "the integration answered HTTP 400"),
        ("timed out (connect 5s, read 30s)", None, "TIMEOUT", None),
        ("cannot connect: [Errno 111] Connect call failed", None, "CONNECTION_FAILED", None),
        ("destination refused: 10.0.0.1: ...", None, "DESTINATION_REFUSED", None),
        ("mapping error: field email: not an email", None, "MAPPING_ERROR", None),
        ("OAuth2 token endpoint answered HTTP 401: x", None, "CREDENTIALS_ERROR", None),
        ("internal error: KeyError('x')", None, "INTERNAL_ERROR", None),
        ("SQS refused entry 3: AccessDenied", 200, "DELIVERY_FAILED", None),
    ],
)
def test_producers_get_a_code_and_a_short_reason_never_the_text(
    error: str, status: int | None, code: str, reason: str | None
) -> None:
    got_code, got_reason = producer_error(error, status)
    assert got_code == code
    assert got_reason is not None
    assert error not in got_reason
    if reason is not None:
        assert got_reason == reason
    gave_up = producer_error(f"gave up after 7 attempts: {error}", status)
    assert gave_up[0] == code
    assert (gave_up[1] or "").startswith("gave up after 7 attempts: ")
    assert producer_error(None, None) == (None, None)


def test_openapi_lists_every_code_producers_may_see() -> None:
    import json
    from importlib import resources

    doc = json.loads(resources.files("gateway").joinpath("openapi.json").read_text())
    enum = doc["components"]["schemas"]["Delivery"]["properties"]["last_error_code"]["enum"]
    assert set(enum) == {*CODES, None}


class _Entry:
    """What the token cache reads of an entry: its type and ``connection.value``."""

    def __init__(self, type_name: str, connection: dict[str, object]) -> None:
        self.type = get_type(type_name)
        self.connection = type("C", (), {"value": connection})()


@pytest.mark.parametrize(
    ("type_name", "connection"),
    [
        (
            "http",
            {
                "url": "https://api.example.com/x",
                "auth": {
                    "type": "oauth2_client_credentials",
                    "token_url": "https://auth.example.com/token",
                    "client_id": "cid",
                    "client_secret": "csecret",
                },
            },
        ),
        # Types that map their own connection keys to OAuth2 (no connection.auth at all).
        (
            "salesforce",
            {
                "instance_url": "https://acme.my.example.com",
                "client_id": "cid",
                "client_secret": "s",
            },
        ),
    ],
)
def test_issued_tokens_are_known_for_scrubbing_whatever_the_type(
    type_name: str, connection: dict[str, object]
) -> None:
    cache = TokenCache()
    entry = _Entry(type_name, connection)
    assert cache.known(entry) == []
    cache._tokens[oauth2._key(oauth2.auth_of(entry))] = oauth2._Token("issued-tok-123", 1e12)
    assert cache.known(entry) == ["issued-tok-123"]
    cache.invalidate(entry, "issued-tok-123")
    assert "issued-tok-123" in cache.known(entry)  # a refused token may still be echoed
