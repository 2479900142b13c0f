"""Webhook source files (loading, ``gateway check``), the flattening of events, and the
verification of each scheme against the Standard Webhooks reference library; offline."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from gateway.cli import main
from gateway.errors import ApiError
from gateway.ingest import webhooks
from gateway.ingest.validate import Limits
from gateway.mapping.loader import MappingRegistry
from gateway.mapping.webhook_sources import SourceRegistry, compile_source, load_source

REPO = Path(__file__).resolve().parent.parent
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
ENV = {"WH_SECRET": SECRET, "TOKEN": "t0ken-value", "HUBSPOT_TOKEN": "pat-x"}

GOOD = """\
group_key: shop
verify:
  scheme: standard_webhooks
  secret: ${WH_SECRET}
events:
  accept: [customer.created]
"""


def layout(tmp_path: Path, **sources: str) -> Path:
    (tmp_path / "shop.yaml").write_text("group_key: shop\nintegrations: []\n")
    (tmp_path / "sources").mkdir()
    for name, text in sources.items():
        (tmp_path / "sources" / f"{name}.yaml").write_text(text)
    return tmp_path


# -- source files ----------------------------------------------------------------------------


def test_every_problem_is_named_with_file_line_and_key(tmp_path: Path) -> None:
    bad = """\
group_key: shop
colour: blue
verify:
  scheme: standard_webhooks
  secret: whsec_writteninthefile
  header: X-Sig
events:
  accept: []
  timestamp: ts
"""
    path = tmp_path / "bad.yaml"
    path.write_text(bad)
    source, problems = load_source(path, ENV)
    assert source is None
    assert [(p.line, p.path) for p in problems] == [
        (2, "colour"),
        (5, "verify.secret"),
        (6, "verify.header"),
        (8, "events.accept"),
        (9, "events.timestamp"),
    ]
    # The literal secret is refused without being echoed.
    assert all("writteninthefile" not in p.message for p in problems)


def test_unset_secret_and_unknown_group_are_problems(tmp_path: Path) -> None:
    d = layout(
        tmp_path,
        nosecret=GOOD.replace("WH_SECRET", "NOT_SET_ANYWHERE"),
        nogroup=GOOD.replace("group_key: shop", "group_key: ghost"),
        badkey=GOOD.replace("${WH_SECRET}", "${TOKEN}"),  # not base64 after whsec_
        ok=GOOD,
    )
    reg = SourceRegistry(MappingRegistry(d, ENV), environ=ENV)
    reg.mappings.reload()
    result = reg.reload()
    assert result.loaded == ["ok"]
    found = {
        Path(f).stem: [(p.line, p.path, p.message) for p in ps] for f, ps in result.failed.items()
    }
    assert found["nosecret"] == [
        (4, "verify.secret", "environment variable NOT_SET_ANYWHERE is not set")
    ]
    assert found["nogroup"][0][:2] == (1, "group_key")
    assert "no mapping file for group 'ghost'" in found["nogroup"][0][2]
    assert found["badkey"] == [
        (4, "verify.secret", "a Standard Webhooks secret is whsec_ followed by base64")
    ]
    assert ENV["TOKEN"] not in json.dumps(found)
    # A failed file that has not changed is retried but not reported again.
    assert reg.reload().failed == {}


def test_a_broken_version_leaves_the_live_one(tmp_path: Path) -> None:
    d = layout(tmp_path, hook=GOOD)
    reg = SourceRegistry(MappingRegistry(d, ENV), environ=ENV)
    reg.mappings.reload()
    assert reg.reload().loaded == ["hook"]
    (d / "sources" / "hook.yaml").write_text(GOOD.replace("standard_webhooks", "nope") + "\n")
    assert list(reg.reload().failed) == [str(d / "sources" / "hook.yaml")]
    live = reg.get("hook")
    assert live is not None
    assert live.scheme == "standard_webhooks"
    (d / "sources" / "hook.yaml").unlink()
    assert reg.reload().removed == ["hook"]
    assert reg.get("hook") is None


def test_secret_is_not_in_the_repr() -> None:
    source, errors = compile_source(
        {
            "group_key": "g",
            "verify": {"scheme": "bearer", "token": "${TOKEN}"},
            "events": {"accept": ["x"]},
        },
        "s",
        ENV,
    )
    assert errors == []
    assert source is not None
    assert source.key == b"t0ken-value"
    assert "t0ken" not in repr(source)


def test_check_command_lists_source_problems_and_counts_sources(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    d = layout(tmp_path, good=GOOD, bad=GOOD.replace("accept: [customer.created]", "accept: 3"))
    assert main(["check", str(d)]) == 1
    out = capsys.readouterr().out
    assert f"{d / 'sources' / 'bad.yaml'}:6: events.accept: required: a non-empty list" in out
    assert "1 problem(s) in 1 of 3 file(s)" in out
    (d / "sources" / "bad.yaml").unlink()
    assert main(["check", str(d), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    assert report["webhook_sources"] == 1


def test_the_repository_example_passes_check(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUBSPOT_TOKEN", "pat-x")
    monkeypatch.setenv("AUTOMATUM_WEBHOOK_SECRET", SECRET)
    assert main(["check", str(REPO / "mappings" / "examples")]) == 0
    assert "1 webhook source(s)" in capsys.readouterr().out


# -- flattening ------------------------------------------------------------------------------


def test_flatten_rules() -> None:
    deep: dict[str, Any] = {"leaf": 1}
    for i in range(10):
        deep = {f"l{i}": deep}
    data, problems = webhooks.flatten(
        {
            "customer": {"email": "a@b.se", "address": {"city": "Malmö"}, "empty": {}},
            "tags": ["a", 1, None, True],
            "none": [],
            "lines": [{"sku": "A"}, "x"],
            "matrix": [[1, 2]],
            "deep": deep,
        },
        Limits(),
    )
    assert problems.total == 0
    assert data["customer.email"] == "a@b.se"
    assert data["customer.address.city"] == "Malmö"
    assert "customer.empty" not in data
    assert data["tags"] == ["a", 1, None, True]
    assert data["none"] == []
    assert data["lines"] == '[{"sku":"A"},"x"]'
    assert data["matrix"] == "[[1,2]]"
    # Eight levels are names; what is deeper is the JSON text of the object found there.
    name = "deep." + ".".join(f"l{i}" for i in range(9, 2, -1))
    assert json.loads(data[name]) == {"l2": {"l1": {"l0": {"leaf": 1}}}}


def test_flatten_refuses_colliding_names() -> None:
    _, problems = webhooks.flatten({"a.b": 1, "a": {"b": 2}}, Limits())
    assert problems == [
        {"field": "data.a.b", "message": "two parts of the event flatten to this name"}
    ]


def test_flatten_stops_early_on_huge_events() -> None:
    data, _ = webhooks.flatten({f"k{i}": {"x": i} for i in range(10_000)}, Limits())
    assert len(data) <= Limits().max_attributes + 1


# -- verification against the reference library ---------------------------------------------


def _source(**over: Any) -> Any:
    spec: dict[str, Any] = {
        "group_key": "g",
        "verify": {"scheme": "standard_webhooks", "secret": "${WH_SECRET}"},
        "events": {"accept": ["x"]},
        **over,
    }
    source, errors = compile_source(spec, "s", ENV)
    assert errors == [], errors
    return source


def _request(headers: dict[str, str]) -> web.Request:
    return make_mocked_request("POST", "/v1/webhooks/s", headers=headers)


@pytest.mark.parametrize("secret", [SECRET, SECRET.rstrip("=")])
def test_standard_webhooks_agrees_with_the_reference(secret: str) -> None:
    from datetime import UTC, datetime

    env = {**ENV, "WH_SECRET": secret}
    source, _ = compile_source(
        {
            "group_key": "g",
            "verify": {"scheme": "standard_webhooks", "secret": "${WH_SECRET}"},
            "events": {"accept": ["x"]},
        },
        "s",
        env,
    )
    assert source is not None
    lib = Webhook(SECRET)
    body = b'{"type":"x","data":{"a":1}}'
    now = datetime.now(UTC)
    for rotated in (False, True):
        sig = lib.sign("msg_1", now, body)
        if rotated:  # several signatures while a secret is rotated; one matching is enough
            sig = "v1,AAAA " + "v1a,xyz " + sig
        headers = {
            "webhook-id": "msg_1",
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": sig,
        }
        lib.verify(body, headers)  # the oracle accepts it...
        req = _request(headers)
        webhooks.verify_head(source, req, now.timestamp())
        webhooks.verify_body(source, req, body)  # ...and so does the gateway
    for tampered in (body + b" ", body.replace(b"1", b"2")):
        with pytest.raises(WebhookVerificationError):
            lib.verify(tampered, headers)
        with pytest.raises(ApiError) as err:
            webhooks.verify_body(source, req, tampered)
        assert err.value.code == "WEBHOOK_SIGNATURE_INVALID"


def test_standard_webhooks_timestamp_tolerance() -> None:
    source = _source()
    now = 1_800_000_000.0
    for skew, ok in ((-300, True), (300, True), (-301, False), (301, False)):
        req = _request(
            {
                "webhook-id": "m",
                "webhook-timestamp": str(int(now + skew)),
                "webhook-signature": "v1,x",
            }
        )
        if ok:
            webhooks.verify_head(source, req, now)
        else:
            with pytest.raises(ApiError) as err:
                webhooks.verify_head(source, req, now)
            assert err.value.code == "WEBHOOK_TIMESTAMP_EXPIRED"
    with pytest.raises(ApiError) as err:
        webhooks.verify_head(
            source,
            _request({"webhook-id": "m", "webhook-timestamp": "1e9", "webhook-signature": "v1,x"}),
            now,
        )
    assert err.value.code == "WEBHOOK_TIMESTAMP_INVALID"


@pytest.mark.parametrize(
    ("encoding", "prefix"), [("hex", "sha256="), ("hex", ""), ("base64", ""), ("base64", "v1=")]
)
def test_hmac_header_encodings(encoding: str, prefix: str) -> None:
    import hashlib
    import hmac as hmac_mod

    source = _source(
        verify={
            "scheme": "hmac_sha256",
            "secret": "${TOKEN}",
            "header": "X-Sig",
            "encoding": encoding,
            "prefix": prefix,
        }
    )
    body = os.urandom(64)
    digest = hmac_mod.new(b"t0ken-value", body, hashlib.sha256).digest()
    sig = digest.hex().upper() if encoding == "hex" else base64.b64encode(digest).decode()
    req = _request({"X-Sig": prefix + sig})
    webhooks.verify_head(source, req, 0)
    webhooks.verify_body(source, req, body)
    with pytest.raises(ApiError):
        webhooks.verify_body(source, req, body[1:])
    with pytest.raises(ApiError) as err:
        webhooks.verify_head(source, _request({}), 0)
    assert err.value.code == "WEBHOOK_SIGNATURE_MISSING"


def test_openapi_documents_the_webhook_route() -> None:
    from gateway.app import openapi_document

    doc = json.loads(openapi_document())
    op = doc["paths"]["/v1/webhooks/{source}"]["post"]
    assert op["security"] == []
    for status in ("202", "400", "401", "404", "409", "413", "415", "422", "429", "503"):
        assert status in op["responses"], status
