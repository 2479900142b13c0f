"""Start-up and clean-up of the application's resources: what had opened is closed when a later
resource fails to start (a damaged store, a wrong master key), in process and in a real
``gateway serve``."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from gateway import logs
from gateway.app import STORE, create_app, serve
from gateway.auth.keys import MasterKeyError, SecretBox, create_key, load_master_key
from gateway.config import Settings, load_settings
from gateway.store import open_store
from gateway.store.base import StoreError, StoreUnavailable
from tests.support.gateway_proc import GatewayProcess


def settings_for(tmp_path: Path, **more: Any) -> Settings:
    (tmp_path / "mappings").mkdir(exist_ok=True)
    (tmp_path / "mappings" / "shop.yaml").write_text("group_key: shop\nintegrations: []\n")
    return load_settings(
        {"data_dir": tmp_path / "data", "mappings": tmp_path / "mappings", "port": 0, **more},
        environ={},
    )


def damage_store(settings: Settings) -> None:
    """A store that opens (migrated) but lacks the table the engine reads when it starts."""

    async def make() -> None:
        store = open_store(settings.store_url)
        await store.open()
        await store.close()

    asyncio.run(make())
    with sqlite3.connect(settings.data_dir / "gateway.db") as db:
        db.execute("DROP TABLE paused_lanes")


@pytest.fixture
def events(monkeypatch) -> list[str]:
    seen: list[str] = []
    monkeypatch.setattr(logs, "log", lambda event, level="info", **f: seen.append(event))
    return seen


def test_engine_start_failure_closes_the_store_and_stops_the_watcher(
    tmp_path: Path, events: list[str]
) -> None:
    settings = settings_for(tmp_path)
    damage_store(settings)
    app = create_app(settings)
    with pytest.raises(StoreError, match="paused_lanes"):
        serve(app, host="127.0.0.1", port=0, handle_signals=False)
    # Store opened, key checked, mappings loaded and watched; the engine failed: everything
    # before it was closed again, in reverse, and the server never said it started.
    assert events[0] == "mappings_loaded"
    assert "started" not in events
    assert events[-1] == "stopped"
    with pytest.raises(StoreUnavailable, match="store is closed"):
        asyncio.run(app[STORE].list_access_keys())


def test_wrong_master_key_closes_the_store(tmp_path: Path, events: list[str]) -> None:
    settings = settings_for(tmp_path)

    async def key_under_the_key_file() -> None:
        store = open_store(settings.store_url)
        await store.open()
        await create_key(store, SecretBox(load_master_key(settings.data_dir, None)), ["shop"])
        await store.close()

    asyncio.run(key_under_the_key_file())
    app = create_app(
        settings.model_copy(update={"master_key": SecretStr("a different master key entirely")})
    )
    with pytest.raises(MasterKeyError):
        serve(app, host="127.0.0.1", port=0, handle_signals=False)
    assert events == ["stopped"]  # nothing else started
    with pytest.raises(StoreUnavailable, match="store is closed"):
        asyncio.run(app[STORE].list_access_keys())


@pytest.mark.e2e
def test_serve_reports_a_start_up_failure_and_cleans_up(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, groups=("shop",))
    damage_store(settings_for(tmp_path, data_dir=gw.data_dir, mappings=gw.mappings))
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "serve"],
        env=gw.env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 1, out.stderr
    assert "error: the store: SQLite: no such table: paused_lanes" in out.stderr
    assert '"event":"started"' not in out.stdout
    assert out.stdout.strip().splitlines()[-1].endswith('"event":"stopped"}')
