"""The admin API's token check on a real in-process server: bytes that are not UTF-8, routes it
does not have, and tokens too weak to start with."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.app import create_app
from gateway.config import MIN_ADMIN_TOKEN_LENGTH, SettingsError, load_settings
from tests.support.gateway_proc import GatewayProcess

TOKEN = "admin-token-for-auth-tests"


@pytest.fixture
async def client(aiohttp_client, tmp_path: Path):
    settings = load_settings(
        {
            "data_dir": tmp_path / "data",
            "mappings": tmp_path,
            "admin_token": TOKEN,
            "delivery": False,
        },
        environ={},
    )
    return await aiohttp_client(create_app(settings))


async def raw_request(port: int, authorization: bytes) -> tuple[int, dict]:
    """``GET /admin/v1/groups`` with the Authorization header's bytes exactly as given."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /admin/v1/groups HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Authorization: " + authorization + b"\r\n\r\n"
    )
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


@pytest.mark.parametrize(
    "given",
    [
        b"Bearer \xff\xfe\xfd",  # not UTF-8 at all
        b"Bearer " + TOKEN.encode()[:-1] + b"\xe9",  # the token with its last byte in Latin-1
        "Bearer " + TOKEN[:-1] + "é",  # valid UTF-8, not ASCII
    ],
)
async def test_a_token_that_is_not_ascii_is_refused_in_the_envelope(client, given) -> None:
    raw = given if isinstance(given, bytes) else given.encode()
    status, body = await raw_request(client.server.port, raw)
    assert status == 401
    assert body["error"]["type"] == "authentication_error"
    assert body["error"]["code"] == "INVALID_ADMIN_TOKEN"


async def test_the_raw_request_with_the_right_token_passes(client) -> None:
    status, body = await raw_request(client.server.port, b"Bearer " + TOKEN.encode())
    assert status == 200
    assert body == {"groups": [], "next_cursor": None, "problems": []}


async def test_paths_and_methods_the_admin_api_lacks_answer_404_and_405(client) -> None:
    # As before the admin API was a sub-application: the token is checked on its routes only.
    r = await client.get("/admin/v1/nothing-here")
    assert r.status == 404
    assert (await r.json())["error"]["code"] == "NOT_FOUND"
    r = await client.get("/admin/v1/reload")
    assert r.status == 405
    assert r.headers["Allow"] == "POST"
    assert (await r.json())["error"]["code"] == "METHOD_NOT_ALLOWED"


def test_weak_admin_tokens_are_refused_without_showing_them() -> None:
    for weak, reason in [
        ("s3cr3t", "too short"),
        ("x" * (MIN_ADMIN_TOKEN_LENGTH - 1), "too short"),
        ("correct horse battery staple", "visible ASCII"),  # spaces
        ("é" * MIN_ADMIN_TOKEN_LENGTH, "visible ASCII"),
    ]:
        with pytest.raises(SettingsError) as exc:
            load_settings({}, environ={"GATEWAY_ADMIN_TOKEN": weak})
        text = str(exc.value)
        assert text.startswith("GATEWAY_ADMIN_TOKEN: "), text
        assert reason in text
        assert weak not in text
    strong = load_settings({}, environ={"GATEWAY_ADMIN_TOKEN": "x" * MIN_ADMIN_TOKEN_LENGTH})
    assert strong.admin_token is not None
    assert load_settings({}, environ={}).admin_token is None  # unset: admin API off, fine


@pytest.mark.e2e
def test_serve_refuses_a_weak_admin_token_before_it_makes_anything(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, groups=(), GATEWAY_ADMIN_TOKEN="secret123")
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "serve"],
        env=gw.env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 2
    assert out.stderr.startswith("error: GATEWAY_ADMIN_TOKEN: the admin token is too short")
    assert "secret123" not in out.stderr + out.stdout
    assert not gw.data_dir.exists()
