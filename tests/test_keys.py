"""Access keys: shapes, encryption at rest, the master key file."""

from __future__ import annotations

import re
import stat

import pytest

from gateway.auth.keys import (
    MasterKeyError,
    SecretBox,
    load_master_key,
    new_access_key_id,
    new_secret_access_key,
)


def test_ids_and_secrets_look_like_aws() -> None:
    ids = {new_access_key_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"AKGW[A-Z2-7]{16}", i) for i in ids)
    secret = new_secret_access_key()
    assert len(secret) == 40
    assert re.fullmatch(r"[A-Za-z0-9+/]{40}", secret)


def test_secret_round_trip_and_binding_to_key_id() -> None:
    box = SecretBox("a master key of some length")
    blob = box.encrypt("AKGWAAAAAAAAAAAAAAAA", "s3cr3t")
    assert b"s3cr3t" not in blob
    assert box.decrypt("AKGWAAAAAAAAAAAAAAAA", blob) == "s3cr3t"
    with pytest.raises(MasterKeyError):
        box.decrypt("AKGWBBBBBBBBBBBBBBBB", blob)  # moved to another key
    with pytest.raises(MasterKeyError, match="master key is not the one"):
        SecretBox("another master key, different").decrypt("AKGWAAAAAAAAAAAAAAAA", blob)
    with pytest.raises(MasterKeyError):
        SecretBox("short")


def test_master_key_file_is_created_once_with_mode_0600(tmp_path) -> None:
    first = load_master_key(tmp_path / "data", None)
    path = tmp_path / "data" / "master.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_master_key(tmp_path / "data", None) == first
    assert load_master_key(tmp_path / "data", "configured-key-wins") == "configured-key-wins"
