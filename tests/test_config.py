"""Settings from flags and GATEWAY_* variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import SettingsError, load_settings


def test_defaults_env_and_flags_in_that_order() -> None:
    s = load_settings({}, environ={})
    assert (s.port, s.region, s.service, s.data_dir) == (
        8080,
        "us-east-1",
        "execute-api",
        Path("var"),
    )
    assert s.store_url == "sqlite:///var/gateway.db"
    s = load_settings({}, environ={"GATEWAY_PORT": "9000", "GATEWAY_REGION": "eu-north-1"})
    assert (s.port, s.region) == (9000, "eu-north-1")
    s = load_settings({"port": "9100"}, environ={"GATEWAY_PORT": "9000"})
    assert s.port == 9100


def test_bad_settings_name_their_source() -> None:
    with pytest.raises(SettingsError) as exc:
        load_settings({"port": "x"}, environ={"GATEWAY_SQLITE_SYNCHRONOUS": "OFF"})
    text = str(exc.value)
    assert "--port" in text
    assert "GATEWAY_SQLITE_SYNCHRONOUS" in text
    with pytest.raises(SettingsError, match="max_pending_writes"):
        load_settings({"max_pending_writes": 10, "max_batch_records": 100}, environ={})
