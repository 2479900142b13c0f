"""The requests the http and file types build: auth headers (each checked by an independent
verifier), URL templating, object and array bodies, idempotency keys, NDJSON appends."""

from __future__ import annotations

import base64
import binascii
import calendar
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pytest
import yaml

from gateway.integrations.base import BuildErrors, OutboundRequest
from gateway.integrations.http import fill_url, idempotency_key, standard_webhooks_signature
from gateway.mapping.errors import SpecErrors
from gateway.mapping.model import CompiledIntegration, compile_mapping

NOW = 1_795_350_000.0  # 2026-11-22T...: every build in these tests signs at this time

ENV = {
    "TOKEN": "tok-3f9a",
    "PASSWORD": "pa:ss wörd",
    "API_KEY": "key-77c1",
    "WH_SECRET": "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode(),
    "AK": "AKIDEXAMPLE",
    "SK": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    "ST": "session/token+value=",
}


def http(
    auth: str = "{type: none}",
    url: str = "https://hooks.example.com/users/{email}",
    settings: str = "{}",
    method: str = "POST",
) -> CompiledIntegration:
    """An ``http`` entry compiled from its YAML pieces (secrets from ENV)."""
    text = f"""\
group_key: shop
integrations:
  - name: hook
    type: http
    connection:
      url: "{url}"
      method: {method}
      auth: {auth}
    settings: {settings}
    fields:
      email: epost
      name: namn
      n: {{path: n}}
"""
    mapping = compile_mapping(yaml.safe_load(text), text.encode(), environ=ENV)
    return mapping.integrations[0]


def build(integ: CompiledIntegration, batch: list[tuple[str, dict[str, Any]]], **kw: Any):
    assert integ.type.build is not None
    return integ.type.build(integ, batch, now=NOW, **kw)


def one(integ: CompiledIntegration, fields: dict[str, Any] | None = None, **kw: Any):
    (req,) = build(integ, [("dlv_1", fields or {"email": "a@b.se", "name": "A"})], **kw)
    return req


# -- auth ---------------------------------------------------------------------------------


def test_no_auth_adds_no_credentials() -> None:
    req = one(http())
    assert req.method == "POST"
    assert req.headers == {"Content-Type": "application/json", "Idempotency-Key": "dlv_1"}
    assert req.secret_headers == frozenset()


def test_bearer() -> None:
    req = one(http('{type: bearer, token: "${TOKEN}"}'))
    assert req.headers["Authorization"] == "Bearer tok-3f9a"
    assert req.secret_headers == {"Authorization"}


def test_basic_decodes_to_user_and_password() -> None:
    req = one(http('{type: basic, username: "ülla", password: "${PASSWORD}"}'))
    scheme, _, encoded = req.headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(encoded).decode() == "ülla:pa:ss wörd"
    assert req.secret_headers == {"Authorization"}


def test_api_key_header_name_and_value() -> None:
    req = one(http('{type: api_key, header: X-Shop-Key, value: "${API_KEY}"}'))
    assert req.headers["X-Shop-Key"] == "key-77c1"
    assert "Authorization" not in req.headers
    assert req.secret_headers == {"X-Shop-Key"}
    req = one(http('{type: api_key, value: "${API_KEY}"}'))
    assert req.headers["X-API-Key"] == "key-77c1"


def test_oauth2_takes_the_token_from_the_provider_and_never_fetches() -> None:
    integ = http(
        "{type: oauth2_client_credentials, token_url: https://auth.example.com/token, "
        'client_id: gw, client_secret: "${TOKEN}"}'
    )
    asked: list[Any] = []

    def tokens(i: Any) -> str:
        asked.append(i)
        return "at-123"

    req = one(integ, tokens=tokens)
    assert req.headers["Authorization"] == "Bearer at-123"
    assert asked == [integ]
    assert req.secret_headers == {"Authorization"}
    with pytest.raises(ValueError, match="token provider"):
        one(integ)


def test_missing_auth_parameter_and_unknown_auth_type_are_clear_errors() -> None:
    # Refused when the mapping loads, with the key path (gateway check shows file and line) ...
    with pytest.raises(SpecErrors, match=r"connection\.auth\.token: required for auth type"):
        http("{type: bearer}")
    with pytest.raises(SpecErrors, match=r"connection\.auth\.type: unknown auth type 'hmac'"):
        http("{type: hmac}")
    with pytest.raises(SpecErrors, match=r"connection\.url: placeholder \{nope\} is not"):
        http("{type: none}", url="https://x.example/{nope}")


# -- Standard Webhooks --------------------------------------------------------------------


def test_signature_matches_the_standard_webhooks_reference_vector() -> None:
    # The test vector of the Standard Webhooks reference library (libraries/python tests,
    # test_sign_function): secret, message id, timestamp, payload and expected signature.
    assert (
        standard_webhooks_signature(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            b'{"test": 2432232314}',
        )
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )
    # The prefix is optional: the key is the base64 part either way.
    assert standard_webhooks_signature(
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
        b'{"test": 2432232314}',
    ) == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="  # fmt: skip
    with pytest.raises(ValueError, match="whsec_ and base64"):
        standard_webhooks_signature("whsec_not base64!", "m", 1, b"{}")


def verify_standard_webhook(
    secret: str, headers: dict[str, str], body: bytes, now: float, tolerance: int = 300
) -> bool:
    """A receiver written from the spec text: the three headers must be there; the timestamp
    within tolerance; the key is the base64 part after whsec_; HMAC-SHA256 over
    "{id}.{timestamp}.{body}"; the header is a space-separated list of "v1,<base64>", any one
    matching (compared in constant time)."""
    try:
        msg_id = headers["webhook-id"]
        ts = headers["webhook-timestamp"]
        listed = headers["webhook-signature"].split(" ")
    except KeyError:
        return False
    if not ts.isdigit() or abs(now - int(ts)) > tolerance:
        return False
    try:
        key = base64.b64decode(secret.split("_", 1)[1] if secret.startswith("whsec_") else secret)
    except binascii.Error:
        return False
    expected = hmac.new(key, msg_id.encode() + b"." + ts.encode() + b"." + body, hashlib.sha256)
    for item in listed:
        version, _, sig = item.partition(",")
        if version == "v1" and hmac.compare_digest(
            sig.encode(), base64.b64encode(expected.digest())
        ):
            return True
    return False


def test_standard_webhooks_headers_verify_per_the_spec() -> None:
    integ = http('{type: standard_webhooks, secret: "${WH_SECRET}"}')
    req = one(integ, {"email": "å@b.se", "name": "Åsa 😀"})
    assert req.headers["webhook-id"] == "dlv_1"
    assert req.headers["webhook-timestamp"] == str(int(NOW))
    assert req.headers["webhook-signature"].startswith("v1,")
    assert req.secret_headers == frozenset()  # the signature is no secret (see http.py)
    assert verify_standard_webhook(ENV["WH_SECRET"], req.headers, req.body, NOW)
    # ... and the check can fail: another body, id, time or secret does not verify.
    assert not verify_standard_webhook(ENV["WH_SECRET"], req.headers, req.body + b" ", NOW)
    assert not verify_standard_webhook(
        ENV["WH_SECRET"], {**req.headers, "webhook-id": "dlv_2"}, req.body, NOW
    )
    assert not verify_standard_webhook(ENV["WH_SECRET"], req.headers, req.body, NOW + 301)
    other = "whsec_" + base64.b64encode(b"x" * 32).decode()
    assert not verify_standard_webhook(other, req.headers, req.body, NOW)


def test_standard_webhooks_id_of_an_array_request_is_its_idempotency_key() -> None:
    integ = http('{type: standard_webhooks, secret: "${WH_SECRET}"}', settings="{body: array}")
    (req,) = build(integ, [("dlv_1", {"email": "a"}), ("dlv_2", {"email": "a"})])
    assert req.headers["webhook-id"] == req.headers["Idempotency-Key"]
    assert "." not in req.headers["webhook-id"]  # the spec: ids must not hold a full stop
    assert verify_standard_webhook(ENV["WH_SECRET"], req.headers, req.body, NOW)


# -- SigV4 --------------------------------------------------------------------------------


def sigv4_request(req: OutboundRequest):
    from gateway.auth.sigv4 import SigV4Request

    parts = urlsplit(req.url)
    return SigV4Request(
        req.method,
        parts.path,
        parts.query,
        [("Host", parts.netloc), *req.headers.items()],
        req.body,
    )


@pytest.mark.parametrize("session", [False, True])
def test_sigv4_verifies_with_the_projects_own_verifier(session: bool) -> None:
    sigv4 = pytest.importorskip("gateway.auth.sigv4", reason="gateway.auth.sigv4 not built yet")
    token = ', session_token: "${ST}"' if session else ""
    integ = http(
        '{type: sigv4, access_key_id: "${AK}", secret_access_key: "${SK}", '
        f"region: eu-north-1, service: lambda{token}}}",
        url="https://abc.lambda-url.eu-north-1.on.aws/users/{email}?src={name}&v=1",
    )
    req = one(integ, {"email": "å b/c@d.se", "name": "Åsa Ö+1"})
    assert req.headers["X-Amz-Date"] == time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(NOW))
    assert req.headers["Authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261122/eu-north-1/lambda/aws4_request"
    )
    assert "Authorization" in req.secret_headers
    if session:
        assert req.headers["X-Amz-Security-Token"] == ENV["ST"]
        assert "X-Amz-Security-Token" in req.secret_headers
    verifier = sigv4.SigV4Verifier("eu-north-1", "lambda")
    sreq = sigv4_request(req)
    auth = verifier.parse(sreq, NOW)
    assert "idempotency-key" in auth.signed_headers
    assert "content-type" in auth.signed_headers
    assert auth.session_token == (ENV["ST"] if session else None)
    verifier.verify(sreq, auth, ENV["SK"])
    # ... and the check can fail: a changed body or a wrong secret is refused.
    req.body += b" "
    tampered = sigv4_request(req)
    with pytest.raises(sigv4.SigV4Error):
        verifier.verify(tampered, verifier.parse(tampered, NOW), ENV["SK"])
    with pytest.raises(sigv4.SigV4Error):
        verifier.verify(sreq, verifier.parse(sreq, NOW), "another-secret")


def test_sigv4_signs_at_the_clock_without_now() -> None:
    integ = http('{type: sigv4, access_key_id: "${AK}", secret_access_key: "${SK}"}')
    assert integ.type.build is not None
    before = time.time()
    (req,) = integ.type.build(integ, [("dlv_1", {"email": "a"})])
    signed = calendar.timegm(time.strptime(req.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ"))
    assert abs(signed - before) < 5


# -- URL, method, headers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("Åsa Öberg", "%C3%85sa%20%C3%96berg"),
        ("😀", "%F0%9F%98%80"),
        ("a/b?c&d#e=f", "a%2Fb%3Fc%26d%23e%3Df"),
        ("100% + x", "100%25%20%2B%20x"),
        ("..", ".."),
        ("~a_b-c.d", "~a_b-c.d"),
        (42, "42"),
        (True, "true"),
        (["a b", "c"], "a%20b%2Cc"),
    ],
)
def test_url_placeholders_are_filled_percent_encoded(value: Any, encoded: str) -> None:
    req = one(http(url="https://h.example.com/u/{email}/x?q={email}"), {"email": value})
    assert req.url == f"https://h.example.com/u/{encoded}/x?q={encoded}"
    if isinstance(value, str):
        assert unquote(urlsplit(req.url).path.split("/")[2]) == value


def test_the_literal_part_of_the_url_is_kept_as_written() -> None:
    assert fill_url("https://h.example.com/a%20b/{x}?k=v&z", {"x": "é"}) == (
        "https://h.example.com/a%20b/%C3%A9?k=v&z"
    )


@pytest.mark.parametrize("fields", [{}, {"email": None}, {"email": ""}, {"email": []}])
def test_a_placeholder_without_a_value_fails_that_record(fields: dict[str, Any]) -> None:
    integ = http()
    with pytest.raises(BuildErrors) as caught:
        build(integ, [("dlv_1", {"email": "ok"}), ("dlv_2", fields), ("dlv_3", fields)])
    assert set(caught.value.errors) == {"dlv_2", "dlv_3"}
    err = caught.value.errors["dlv_2"].to_dict()
    assert (err["integration"], err["field"], err["source"]) == ("hook", "email", "connection.url")
    assert "{email}" in err["message"]


def test_method_and_settings_headers() -> None:
    integ = http(
        method="PUT",
        settings="{headers: {X-Source: gateway, content-type: application/json; charset=utf-8}}",
    )
    req = one(integ)
    assert req.method == "PUT"
    assert req.headers["X-Source"] == "gateway"
    # A settings header replaces a default of the same name, whatever its case.
    assert req.headers["content-type"] == "application/json; charset=utf-8"
    assert "Content-Type" not in req.headers


def test_settings_header_values_from_references() -> None:
    req = one(http(settings='{headers: {X-Token: "t ${TOKEN}"}}'))
    assert req.headers["X-Token"] == "t tok-3f9a"


# -- bodies and idempotency keys ----------------------------------------------------------


def test_object_bodies_one_request_per_record() -> None:
    integ = http()
    batch = [("dlv_1", {"email": "a", "name": "Åsa"}), ("dlv_2", {"email": "b", "n": 2})]
    reqs = build(integ, batch)
    assert [r.delivery_ids for r in reqs] == [["dlv_1"], ["dlv_2"]]
    assert [r.headers["Idempotency-Key"] for r in reqs] == ["dlv_1", "dlv_2"]
    assert [json.loads(r.body) for r in reqs] == [f for _, f in batch]
    assert "Åsa".encode() in reqs[0].body  # UTF-8, not \u escapes
    assert [r.url for r in reqs] == [
        "https://hooks.example.com/users/a",
        "https://hooks.example.com/users/b",
    ]


def test_array_bodies_one_request_per_batch_with_a_stable_key() -> None:
    integ = http(url="https://hooks.example.com/bulk", settings="{body: array}")
    batch = [("dlv_1", {"email": "a"}), ("dlv_2", {"email": "b"}), ("dlv_3", {"email": "c"})]
    (req,) = build(integ, batch)
    assert json.loads(req.body) == [{"email": "a"}, {"email": "b"}, {"email": "c"}]
    assert req.delivery_ids == ["dlv_1", "dlv_2", "dlv_3"]
    key = req.headers["Idempotency-Key"]
    assert key == idempotency_key(["dlv_1", "dlv_2", "dlv_3"])
    assert key.startswith("batch_")
    assert len(key) == len("batch_") + 32
    # The same batch again: the same key; other records or another order: another key.
    assert build(integ, batch)[0].headers["Idempotency-Key"] == key
    assert build(integ, batch[:2])[0].headers["Idempotency-Key"] != key
    assert build(integ, batch[::-1])[0].headers["Idempotency-Key"] != key
    # A batch of one is keyed by its delivery id, like an object body.
    assert build(integ, batch[:1])[0].headers["Idempotency-Key"] == "dlv_1"


def test_array_batches_split_by_url() -> None:
    integ = http(url="https://hooks.example.com/lists/{name}", settings="{body: array}")
    batch = [
        ("dlv_1", {"email": "a", "name": "x"}),
        ("dlv_2", {"email": "b", "name": "y"}),
        ("dlv_3", {"email": "c", "name": "x"}),
    ]
    reqs = build(integ, batch)
    assert [(r.url.rsplit("/", 1)[1], r.delivery_ids) for r in reqs] == [
        ("x", ["dlv_1", "dlv_3"]),
        ("y", ["dlv_2"]),
    ]


# -- file ---------------------------------------------------------------------------------


def test_file_build_is_an_ndjson_append_and_writes_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = """\
group_key: demo
integrations:
  - name: out
    type: file
    connection: {path: ./var/out file.ndjson}
    fields: {email: epost, name: namn}
"""
    integ = compile_mapping(yaml.safe_load(text), text.encode(), environ={}).integrations[0]
    assert integ.type.build is not None
    reqs = integ.type.build(integ, [("dlv_1", {"email": "a", "name": "Åsa"}), ("dlv_2", {})])
    (req,) = reqs
    assert req.method == "APPEND"
    target = tmp_path / "var" / "out file.ndjson"
    assert req.url == target.as_uri() == "file://" + quote(str(target))
    assert req.body == '{"email":"a","name":"Åsa"}\n{}\n'.encode()
    assert [json.loads(line) for line in req.body.splitlines()] == [
        {"email": "a", "name": "Åsa"},
        {},
    ]
    assert req.delivery_ids == ["dlv_1", "dlv_2"]
    assert not (tmp_path / "var").exists()
