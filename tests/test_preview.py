"""Preview: what each integration would get for a record, secrets hidden, nothing sent;
``gateway preview`` and ``POST /admin/v1/preview`` answer the same document."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from urllib.parse import quote

import pytest

from gateway.app import create_app
from gateway.cli import main
from gateway.config import load_settings
from gateway.mapping.loader import MappingRegistry, load_file
from gateway.preview import preview, preview_group

ADMIN = "t" * 24
SECRETS = {
    "PV_TOKEN": "s3cr3t-token-value",
    "PV_PASSWORD": "pässword:with/odd chars",
    "PV_URL_KEY": "url key/with?reserved&chars",
    "PV_HEADER": "header-secret-9d1e",
    "PV_WH": "whsec_" + base64.b64encode(b"webhook-secret-of-32-bytes-long!").decode(),
    "PV_SK": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    "PV_ST": "session-token-5b7c",
    "PV_CS": "client-secret-0a4f",
}
HOOK = """\
group_key: shop
integrations:
  - name: hook
    type: http
    when: {consent: {eq: true}}
    connection:
      url: https://hooks.example.com/users/{email}
      auth: {type: bearer, token: "${PV_TOKEN}"}
    settings: {headers: {X-Source: gateway}}
    fields:
      email: {path: epost, required: true}
      name: namn
  - name: archive
    type: file
    connection: {path: ./out.ndjson}
    fields: {email: epost}
  - name: paused
    type: file
    enabled: false
    connection: {path: ./paused.ndjson}
    fields: {email: epost}
"""
AUTHS = {
    "bearer": '{type: bearer, token: "${PV_TOKEN}"}',
    "basic": '{type: basic, username: u, password: "${PV_PASSWORD}"}',
    "api_key": '{type: api_key, header: X-Api-Key, value: "${PV_TOKEN}"}',
    "standard_webhooks": '{type: standard_webhooks, secret: "${PV_WH}"}',
    "sigv4": '{type: sigv4, access_key_id: AKIDEXAMPLE, secret_access_key: "${PV_SK}", '
    'session_token: "${PV_ST}", region: eu-north-1, service: lambda}',
    "oauth2_client_credentials": "{type: oauth2_client_credentials, token_url: "
    'https://auth.example.com/token, client_id: gw, client_secret: "${PV_CS}"}',
}
GOOD = {"epost": "å@example.com", "namn": "Åsa", "consent": True}


@pytest.fixture
def mapping_dir(tmp_path: Path, monkeypatch) -> Path:
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "mappings"
    d.mkdir()
    (d / "shop.yaml").write_text(HOOK)
    return d


def compiled(mapping_dir: Path, text: str | None = None):
    if text is not None:
        (mapping_dir / "shop.yaml").write_text(text)
    mapping, problems = load_file(mapping_dir / "shop.yaml")
    assert mapping is not None, problems
    return mapping


def assert_no_secret(doc: dict) -> None:
    text = json.dumps(doc, ensure_ascii=False)
    for secret in SECRETS.values():
        for form in (secret, quote(secret, safe=""), quote(secret)):
            assert form not in text, form
        assert secret not in json.dumps(doc)  # nor in its \\u-escaped form
    basic = base64.b64encode(f"u:{SECRETS['PV_PASSWORD']}".encode()).decode()
    assert basic not in text


def test_preview_shows_fields_and_the_request(mapping_dir: Path) -> None:
    doc = preview(compiled(mapping_dir), GOOD, now=1_795_350_000)
    assert_no_secret(doc)
    assert doc["data_errors"] == []
    hook, archive, paused = doc["integrations"]
    assert hook == {
        "name": "hook",
        "type": "http",
        "action": "send",
        "enabled": True,
        "matched": True,
        "fields": {"email": "å@example.com", "name": "Åsa"},
        "request": {
            "method": "POST",
            "url": "https://hooks.example.com/users/%C3%A5%40example.com",
            "headers": {
                "Content-Type": "application/json",
                "Idempotency-Key": "dlv_preview",
                "X-Source": "gateway",
                "Authorization": "Bearer ***",
            },
            "body": {"email": "å@example.com", "name": "Åsa"},
        },
    }
    assert archive["request"] == {
        "method": "APPEND",
        "url": (mapping_dir.parent / "out.ndjson").as_uri(),
        "headers": {"Content-Type": "application/x-ndjson"},
        "body": '{"email":"å@example.com"}\n',
    }
    assert (paused["enabled"], paused["matched"]) == (False, True)
    assert "fields" not in paused
    assert "request" not in paused
    assert not (mapping_dir.parent / "out.ndjson").exists()  # nothing written, nothing sent


@pytest.mark.parametrize("kind", sorted(AUTHS))
def test_preview_redacts_every_secret(mapping_dir: Path, kind: str) -> None:
    text = (
        HOOK.replace(AUTHS["bearer"], AUTHS[kind])
        .replace("/users/{email}", '/users/{email}?key=${PV_URL_KEY}"')
        .replace("url: https://hooks", 'url: "https://hooks')
        .replace("X-Source: gateway", 'X-Source: gateway, X-Extra: "v=${PV_HEADER}"')
    )
    doc = preview(compiled(mapping_dir, text), GOOD)
    assert_no_secret(doc)
    req = doc["integrations"][0]["request"]
    # The URL template came from a reference as a whole: only the placeholder value shows.
    assert req["url"] == "***%C3%A5%40example.com***"
    assert req["headers"]["X-Extra"] == "***"
    assert req["headers"]["X-Source"] == "gateway"
    shown = {
        "bearer": ("Authorization", "Bearer ***"),
        "basic": ("Authorization", "Basic ***"),
        "api_key": ("X-Api-Key", "***"),
        "sigv4": ("Authorization", "AWS4-HMAC-SHA256 ***"),
        "oauth2_client_credentials": ("Authorization", "Bearer ***"),
    }
    if kind in shown:
        name, value = shown[kind]
        assert req["headers"][name] == value
    if kind == "sigv4":
        assert req["headers"]["X-Amz-Security-Token"] == "***"
        assert req["headers"]["X-Amz-Date"].endswith("Z")
    if kind == "standard_webhooks":
        # Shown: the signature is not a secret (it is good for this request only).
        assert req["headers"]["webhook-id"] == "dlv_preview"
        assert req["headers"]["webhook-signature"].startswith("v1,")
        assert "Authorization" not in req["headers"]


def test_preview_hides_credential_headers_written_as_literals(mapping_dir: Path) -> None:
    text = HOOK.replace(
        "X-Source: gateway", 'X-Source: gateway, authorization: "Token lit-1", Cookie: "s=lit-2"'
    ).replace(AUTHS["bearer"], "{type: none}")
    doc = preview(compiled(mapping_dir, text), GOOD)
    headers = doc["integrations"][0]["request"]["headers"]
    assert headers["authorization"] == "***"
    assert headers["Cookie"] == "***"
    assert "lit-" not in json.dumps(doc)


def test_preview_now_pins_signing_times(mapping_dir: Path) -> None:
    mapping = compiled(mapping_dir, HOOK.replace(AUTHS["bearer"], AUTHS["standard_webhooks"]))
    a = preview(mapping, GOOD, now=1_795_350_000)
    b = preview(mapping, GOOD, now=1_795_350_000)
    assert a == b
    assert a["integrations"][0]["request"]["headers"]["webhook-timestamp"] == "1795350000"


def test_preview_of_a_record_whose_condition_does_not_match(mapping_dir: Path) -> None:
    doc = preview(compiled(mapping_dir), {**GOOD, "consent": False})
    hook, archive, _ = doc["integrations"]
    assert (hook["enabled"], hook["matched"]) == (True, False)
    assert "fields" not in hook
    assert "request" not in hook
    assert "error" not in hook
    assert archive["matched"] is True
    assert archive["fields"] == {"email": "å@example.com"}


def test_preview_of_a_record_with_a_mapping_error_names_field_and_source(
    mapping_dir: Path,
) -> None:
    doc = preview(compiled(mapping_dir), {"namn": "x", "consent": True})
    hook, archive, _ = doc["integrations"]
    assert hook["error"]["integration"] == "hook"
    assert hook["error"]["field"] == "email"
    assert hook["error"]["source"] == "epost"
    assert hook["error"]["message"]
    assert "fields" not in hook
    assert "request" not in hook
    assert archive["fields"] == {}  # optional there: mapped to nothing, still delivered


def test_preview_of_a_url_placeholder_without_value(mapping_dir: Path) -> None:
    text = HOOK.replace("/users/{email}", "/users/{name}")
    doc = preview(compiled(mapping_dir, text), {"epost": "a@b.se", "consent": True})
    err = doc["integrations"][0]["error"]
    assert (err["field"], err["source"]) == ("name", "connection.url")
    assert "request" not in doc["integrations"][0]


def test_preview_of_an_auth_that_cannot_build(mapping_dir: Path, monkeypatch) -> None:
    # A missing auth parameter is refused when the file loads ...
    (mapping_dir / "shop.yaml").write_text(HOOK.replace(AUTHS["bearer"], "{type: bearer}"))
    mapping, problems = load_file(mapping_dir / "shop.yaml")
    assert mapping is None
    assert [(p.path, p.message) for p in problems] == [
        ("integrations[0].connection.auth.token", "required for auth type bearer")
    ]
    # ... a secret that is there but unusable only when the request is built.
    monkeypatch.setenv("PV_WH", "whsec_not base64!")
    doc = preview(
        compiled(mapping_dir, HOOK.replace(AUTHS["bearer"], AUTHS["standard_webhooks"])), GOOD
    )
    err = doc["integrations"][0]["error"]
    assert err["integration"] == "hook"
    assert "a Standard Webhooks secret is whsec_ and base64" in err["message"]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"nested": {"a": 1}, "consent": True}, "data.nested"),
        ({"l": [1, {"a": 1}]}, "data.l[1]"),
        ([1, 2], "data"),
    ],
)
def test_preview_reports_data_ingest_would_refuse(mapping_dir: Path, data, field: str) -> None:
    doc = preview(compiled(mapping_dir), data)
    assert doc["data_errors"]
    assert doc["data_errors"][0]["field"] == field
    assert doc["integrations"] == []


def test_preview_group_shows_the_live_version_and_the_broken_file(mapping_dir: Path) -> None:
    registry = MappingRegistry(mapping_dir)
    registry.reload()
    live = preview_group(registry, "shop", GOOD)
    assert live is not None
    assert live["problems"] == []
    (mapping_dir / "shop.yaml").write_text(HOOK.replace("type: file", "type: nope", 1) + "\n")
    registry.reload()
    doc = preview_group(registry, "shop", GOOD)
    assert doc is not None
    assert doc["version"] == live["version"]
    assert "unknown integration type 'nope'" in doc["problems"][0]["message"]
    assert preview_group(registry, "nope", GOOD) is None


# -- CLI and admin API --------------------------------------------------------------------


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["preview", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


async def admin_client(aiohttp_client, mapping_dir: Path, tmp_path: Path):
    settings = load_settings(
        {"data_dir": tmp_path / "data", "mappings": mapping_dir, "admin_token": ADMIN},
        environ={},
    )
    return await aiohttp_client(create_app(settings))


@pytest.mark.parametrize(
    "data",
    [
        GOOD,
        {**GOOD, "consent": False},
        {"namn": "x", "consent": True},
        {"nested": {"a": 1}},
    ],
)
async def test_cli_and_admin_api_answer_the_same_document(
    mapping_dir: Path, tmp_path: Path, aiohttp_client, capsys, data
) -> None:
    code, out, _ = cli(
        capsys,
        "--group",
        "shop",
        "--data",
        json.dumps(data),
        "--json",
        "--mappings",
        str(mapping_dir),
    )
    from_cli = json.loads(out)
    assert code == (0 if data in (GOOD, {**GOOD, "consent": False}) else 1)
    client = await admin_client(aiohttp_client, mapping_dir, tmp_path)
    r = await client.post(
        "/admin/v1/preview",
        json={"group_key": "shop", "data": data},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert r.status == 200
    assert await r.json() == from_cli
    assert from_cli["group_key"] == "shop"
    assert_no_secret(from_cli)


async def test_admin_preview_refuses_a_missing_or_wrong_token(
    mapping_dir: Path, tmp_path: Path, aiohttp_client
) -> None:
    client = await admin_client(aiohttp_client, mapping_dir, tmp_path)
    body = {"group_key": "shop", "data": GOOD}
    r = await client.post("/admin/v1/preview", json=body)
    assert r.status == 401
    assert (await r.json())["error"]["code"] == "MISSING_ADMIN_TOKEN"
    r = await client.post("/admin/v1/preview", json=body, headers={"Authorization": "Bearer x"})
    assert r.status == 401
    assert (await r.json())["error"]["code"] == "INVALID_ADMIN_TOKEN"


async def test_admin_preview_of_unknown_broken_and_malformed(
    mapping_dir: Path, tmp_path: Path, aiohttp_client
) -> None:
    (mapping_dir / "broken.yaml").write_text("group_key: broken\nintegrations: [{name: x}]\n")
    client = await admin_client(aiohttp_client, mapping_dir, tmp_path)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    r = await client.post("/admin/v1/preview", json={"group_key": "nope", "data": {}}, headers=auth)
    assert r.status == 404
    assert (await r.json())["error"]["code"] == "UNKNOWN_GROUP"
    r = await client.post(
        "/admin/v1/preview", json={"group_key": "broken", "data": {}}, headers=auth
    )
    assert r.status == 404
    err = (await r.json())["error"]
    assert "mapping file has errors" in err["message"]
    assert any("broken.yaml:2" in e["message"] for e in err["errors"])
    r = await client.post("/admin/v1/preview", data=b"{", headers=auth)
    assert r.status == 400
    r = await client.post("/admin/v1/preview", json={"data": {}}, headers=auth)
    assert r.status == 400


def test_cli_unknown_and_broken_groups_exit_1(mapping_dir: Path, capsys) -> None:
    code, _, err = cli(capsys, "--group", "nope", "--data", "{}", "--mappings", str(mapping_dir))
    assert code == 1
    assert "no mapping for group 'nope'" in err
    (mapping_dir / "broken.yaml").write_text("group_key: broken\nintegrations: [{name: x}]\n")
    code, _, err = cli(capsys, "--group", "broken", "--data", "{}", "--mappings", str(mapping_dir))
    assert code == 1
    assert "has errors" in err
    assert "broken.yaml:2" in err
    code, _, err = cli(capsys, "--group", "shop", "--data", "{", "--mappings", str(mapping_dir))
    assert code == 2
    assert "not valid JSON" in err


def test_cli_mappings_from_the_environment(mapping_dir: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("GATEWAY_MAPPINGS", str(mapping_dir))
    code, out, _ = cli(capsys, "--group", "shop", "--data", json.dumps(GOOD), "--json")
    assert code == 0
    assert json.loads(out)["integrations"][0]["name"] == "hook"


def test_cli_human_output(mapping_dir: Path, capsys) -> None:
    code, out, _ = cli(
        capsys, "--group", "shop", "--data", json.dumps(GOOD), "--mappings", str(mapping_dir)
    )
    assert code == 0
    assert SECRETS["PV_TOKEN"] not in out
    assert "hook (http, send): matched" in out
    assert '    email = "å@example.com"' in out
    assert "    POST https://hooks.example.com/users/%C3%A5%40example.com" in out
    assert "    Authorization: Bearer ***" in out
    assert '    {"email": "å@example.com", "name": "Åsa"}' in out
    assert "archive (file, append): matched" in out
    assert "    APPEND file://" in out
    assert "paused (file, append): disabled" in out
    code, out, _ = cli(
        capsys,
        "--group",
        "shop",
        "--data",
        json.dumps({"namn": "x", "consent": True}),
        "--mappings",
        str(mapping_dir),
    )
    assert code == 1
    assert "hook (http, send): matched" in out
    assert "  error: " in out
    assert "(field email, source epost)" in out
