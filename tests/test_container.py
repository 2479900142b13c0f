"""Health probes (a container's HEALTHCHECK every few seconds, an orchestrator's liveness and
readiness checks) must not drown the request log: their successful answers are logged at debug
level only; a failing probe and every other request stay at info."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway import logs
from gateway.app import create_app
from gateway.config import load_settings


@pytest.fixture
async def client(aiohttp_client, tmp_path: Path):
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    (mappings / "demo.yaml").write_text("group_key: demo\nintegrations: []\n")
    settings = load_settings({"data_dir": tmp_path / "data", "mappings": mappings}, environ={})
    yield await aiohttp_client(create_app(settings))
    logs.set_level("info")  # create_app sets the process-wide level from the settings


def _request_lines(out: str) -> list[dict]:
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [line for line in lines if line["event"] == "request"]


async def test_successful_probes_are_not_logged_at_info(client, capfd) -> None:
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    assert (await client.get("/openapi.json")).status == 200
    logs.flush()
    paths = [line["path"] for line in _request_lines(capfd.readouterr().out)]
    assert paths == ["/openapi.json"]


async def test_probes_are_logged_at_debug_level(client, capfd) -> None:
    logs.set_level("debug")
    assert (await client.get("/healthz")).status == 200
    logs.flush()
    lines = _request_lines(capfd.readouterr().out)
    assert [(line["path"], line["level"]) for line in lines] == [("/healthz", "debug")]


async def test_a_failing_readiness_probe_is_logged(client, tmp_path: Path, capfd) -> None:
    (tmp_path / "mappings" / "demo.yaml").unlink()
    (tmp_path / "mappings").rmdir()
    assert (await client.get("/readyz")).status == 503
    logs.flush()
    lines = _request_lines(capfd.readouterr().out)
    assert [(line["path"], line["status"], line["level"]) for line in lines] == [
        ("/readyz", 503, "info")
    ]
