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


class CountingStore:
    """Just enough of a store for the key ring, counting reads."""

    def __init__(self, key) -> None:
        self.key = key
        self.reads = 0

    async def get_access_key(self, access_key_id: str):
        import asyncio

        self.reads += 1
        await asyncio.sleep(0.01)
        return self.key if self.key and access_key_id == self.key.access_key_id else None


def _stored(box: SecretBox, revoked: float | None = None):
    from gateway.store.base import AccessKey

    return AccessKey(
        "AKGWAAAAAAAAAAAAAAAA",
        box.encrypt("AKGWAAAAAAAAAAAAAAAA", "s3cr3t"),
        ["demo"],
        None,
        0.0,
        revoked,
    )


async def test_key_ring_reads_each_key_once_however_many_ask() -> None:
    import asyncio

    from gateway.auth.keys import KeyRing

    box = SecretBox("a master key of some length")
    store = CountingStore(_stored(box))
    ring = KeyRing(store, box, ttl=0.2)  # type: ignore[arg-type]
    keys = await asyncio.gather(*[ring.get("AKGWAAAAAAAAAAAAAAAA") for _ in range(50)])
    assert store.reads == 1
    assert {k.secret for k in keys} == {"s3cr3t"}
    assert await ring.get("AKGWNOSUCHKEY0000000") is None
    assert await ring.get("AKGWNOSUCHKEY0000000") is None
    assert store.reads == 2  # unknown ids are cached too


async def test_key_ring_serves_stale_while_one_refresh_sees_a_revocation() -> None:
    import asyncio
    import time

    from gateway.auth.keys import KeyRing

    box = SecretBox("a master key of some length")
    store = CountingStore(_stored(box))
    ring = KeyRing(store, box, ttl=0.05)  # type: ignore[arg-type]
    assert not (await ring.get("AKGWAAAAAAAAAAAAAAAA")).revoked
    store.key = _stored(box, revoked=time.time())
    await asyncio.sleep(0.06)  # past the TTL: the next gets answer from cache, refresh once
    stale = await asyncio.gather(*[ring.get("AKGWAAAAAAAAAAAAAAAA") for _ in range(20)])
    assert not any(k.revoked for k in stale)
    assert store.reads == 2
    await asyncio.sleep(0.02)  # the refresh has landed
    assert (await ring.get("AKGWAAAAAAAAAAAAAAAA")).revoked
