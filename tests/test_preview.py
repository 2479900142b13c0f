"""Preview and the http/file request builders: what each integration would get, secrets hidden."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path

import pytest

from gateway.app import create_app
from gateway.cli import main
from gateway.config import load_settings
from gateway.mapping.loader import load_file
from gateway.mapping.preview import preview

SECRET = "s3cr3t-token-value"
HOOK = """\
group_key: shop
integrations:
  - name: hook
    type: http
    when: {consent: {eq: true}}
    connection:
      url: https://hooks.example.com/users/{email}
      auth: {type: bearer, token: "${PREVIEW_TEST_TOKEN}"}
    settings: {headers: {X-Source: gateway}}
    fields:
      email: {path: epost, required: true}
      name: namn
  - name: archive
    type: file
    connection: {path: ./out.ndjson}
    fields: {email: epost}
"""


@pytest.fixture
def mapping_dir(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("PREVIEW_TEST_TOKEN", SECRET)
    d = tmp_path / "mappings"
    d.mkdir()
    (d / "shop.yaml").write_text(HOOK)
    return d


def compiled(mapping_dir: Path):
    mapping, problems = load_file(mapping_dir / "shop.yaml")
    assert mapping is not None, problems
    return mapping


def test_preview_shows_fields_and_requests_with_secrets_redacted(mapping_dir: Path) -> None:
    doc = preview(compiled(mapping_dir), {"epost": "å@example.com", "namn": "Åsa", "consent": True})
    assert SECRET not in json.dumps(doc)
    hook, archive = doc["integrations"]
    assert hook["matched"] is True
    assert hook["fields"] == {"email": "å@example.com", "name": "Åsa"}
    (req,) = hook["requests"]
    assert req["method"] == "POST"
    assert req["url"] == "https://hooks.example.com/users/%C3%A5%40example.com"
    assert req["headers"]["Authorization"] == "Bearer ***"
    assert req["headers"]["X-Source"] == "gateway"
    assert req["headers"]["Idempotency-Key"] == "dlv_preview"
    assert req["body"] == {"email": "å@example.com", "name": "Åsa"}
    assert archive["requests"][0]["method"] == "APPEND"


def test_preview_of_unmatched_and_failing_records(mapping_dir: Path) -> None:
    doc = preview(compiled(mapping_dir), {"namn": "x", "consent": False})
    hook, archive = doc["integrations"]
    assert hook["matched"] is False
    assert "fields" not in hook
    assert archive["fields"] == {}
    doc = preview(compiled(mapping_dir), {"namn": "x", "consent": True})
    err = doc["integrations"][0]["error"]
    assert (err["integration"], err["field"], err["source"]) == ("hook", "email", "epost")
    doc = preview(compiled(mapping_dir), {"nested": {"a": 1}})
    assert doc["data_errors"][0]["field"] == "data.nested"


def _with_auth(mapping_dir: Path, auth: str):
    (mapping_dir / "shop.yaml").write_text(
        HOOK.replace('{type: bearer, token: "${PREVIEW_TEST_TOKEN}"}', auth)
    )
    integ = compiled(mapping_dir).integration("hook")
    assert integ is not None
    return integ


def test_real_builds_for_each_auth_type(mapping_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("PW", "pa:ss")
    fields = {"email": "a@b.se", "name": "A"}
    integ = _with_auth(mapping_dir, '{type: basic, username: u, password: "${PW}"}')
    (req,) = integ.type.build(integ, [("dlv_1", fields)])
    assert base64.b64decode(req.headers["Authorization"].split()[1]) == b"u:pa:ss"
    assert req.headers["Idempotency-Key"] == "dlv_1"
    integ = _with_auth(mapping_dir, '{type: api_key, header: X-Api-Key, value: "${PW}"}')
    (req,) = integ.type.build(integ, [("dlv_1", fields)])
    assert req.headers["X-Api-Key"] == "pa:ss"
    key = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    monkeypatch.setenv("WH", f"whsec_{key}")
    integ = _with_auth(mapping_dir, '{type: standard_webhooks, secret: "${WH}"}')
    (req,) = integ.type.build(integ, [("dlv_9", fields)])
    signed = f"dlv_9.{req.headers['webhook-timestamp']}.".encode() + req.body
    expected = base64.b64encode(
        hmac.new(b"0123456789abcdef0123456789abcdef", signed, hashlib.sha256).digest()
    ).decode()
    assert req.headers["webhook-id"] == "dlv_9"
    assert req.headers["webhook-signature"] == f"v1,{expected}"


def test_sigv4_build_verifies_with_the_projects_own_verifier(
    mapping_dir: Path, monkeypatch
) -> None:
    import time
    from urllib.parse import urlsplit

    from gateway.auth.sigv4 import SigV4Request, SigV4Verifier

    monkeypatch.setenv("AK", "AKIDEXAMPLE")
    monkeypatch.setenv("SK", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    integ = _with_auth(
        mapping_dir,
        '{type: sigv4, access_key_id: "${AK}", secret_access_key: "${SK}", '
        "region: eu-north-1, service: lambda}",
    )
    (req,) = integ.type.build(integ, [("dlv_1", {"email": "a b@c.se", "name": "N"})])
    parts = urlsplit(req.url)
    sreq = SigV4Request(
        req.method,
        parts.path,
        parts.query,
        [("Host", parts.netloc), *req.headers.items()],
        req.body,
    )
    verifier = SigV4Verifier("eu-north-1", "lambda")
    verifier.verify(
        sreq, verifier.parse(sreq, time.time()), "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
    )


def test_array_bodies_carry_the_whole_batch(mapping_dir: Path) -> None:
    (mapping_dir / "shop.yaml").write_text(
        HOOK.replace("settings: {headers: {X-Source: gateway}}", "settings: {body: array}")
    )
    integ = compiled(mapping_dir).integration("hook")
    assert integ is not None
    reqs = integ.type.build(integ, [("dlv_1", {"email": "a"}), ("dlv_2", {"email": "b"})])
    assert len(reqs) == 1
    assert json.loads(reqs[0].body) == [{"email": "a"}, {"email": "b"}]
    assert reqs[0].delivery_ids == ["dlv_1", "dlv_2"]
    assert reqs[0].headers["Idempotency-Key"].startswith("batch_")


async def test_cli_and_admin_api_answer_the_same_document(
    mapping_dir: Path, tmp_path: Path, aiohttp_client, capsys
) -> None:
    data = {"epost": "a@example.com", "namn": "A", "consent": True}
    assert (
        main(
            [
                "preview",
                "--group",
                "shop",
                "--data",
                json.dumps(data),
                "--json",
                "--mappings",
                str(mapping_dir),
            ]
        )
        == 0
    )
    from_cli = json.loads(capsys.readouterr().out)
    settings = load_settings(
        {"data_dir": tmp_path / "data", "mappings": mapping_dir, "admin_token": "t" * 20},
        environ={},
    )
    client = await aiohttp_client(create_app(settings))
    r = await client.post("/admin/v1/preview", json={"group_key": "shop", "data": data})
    assert r.status == 401
    r = await client.post(
        "/admin/v1/preview",
        json={"group_key": "shop", "data": data},
        headers={"Authorization": "Bearer " + "t" * 20},
    )
    assert r.status == 200
    assert await r.json() == from_cli
    assert main(["preview", "--group", "nope", "--data", "{}", "--mappings", str(mapping_dir)]) == 1
