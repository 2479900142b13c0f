"""The management API's history in both store backends: mapping versions numbered per group,
the audit log in order with cursors, and key revocation keeping the earliest time (a rotation's
overlap ended by a revoke)."""

from __future__ import annotations

import time

from gateway.store.base import AccessKey, Store


async def test_mapping_versions_are_numbered_per_group(store: Store) -> None:
    assert await store.latest_mapping_version("shop") is None
    await store.add_mapping_version("shop", "aaaa", "group_key: shop\n", 1.0, "admin", "create")
    await store.add_mapping_version("shop", "bbbb", "group_key: shop # b\n", 2.0, "file", "file")
    await store.add_mapping_version("other", "cccc", "group_key: other\n", 3.0, "admin", "create")
    await store.add_mapping_version("shop", "aaaa", "group_key: shop\n", 4.0, "admin", "rollback")
    versions = await store.list_mapping_versions("shop")
    assert [(v.number, v.version, v.actor, v.action) for v in versions] == [
        (1, "aaaa", "admin", "create"),
        (2, "bbbb", "file", "file"),
        (3, "aaaa", "admin", "rollback"),
    ]
    two = await store.get_mapping_version("shop", 2)
    assert two is not None
    assert two.content == "group_key: shop # b\n"
    assert two.created_at == 2.0
    assert await store.get_mapping_version("shop", 9) is None
    latest = await store.latest_mapping_version("shop")
    assert latest is not None
    assert latest.number == 3
    assert [v.number for v in await store.list_mapping_versions("other")] == [1]


async def test_audit_log_in_order_with_cursor(store: Store) -> None:
    for i in range(5):
        await store.add_audit(float(i), "admin", "group.update", f"g{i}", f'{{"n": {i}}}')
    first = await store.list_audit(0, 3)
    assert [e.target for e in first] == ["g0", "g1", "g2"]
    rest = await store.list_audit(first[-1].id, 10)
    assert [e.target for e in rest] == ["g3", "g4"]
    assert rest[0].detail == '{"n": 3}'


async def test_revoke_keeps_the_earliest_time(store: Store) -> None:
    now = time.time()
    await store.create_access_key(AccessKey("AKGWTESTTESTTESTTEST", b"x", ["shop"], None, now))
    # A rotation: valid for another hour.
    assert await store.revoke_access_key("AKGWTESTTESTTESTTEST", now + 3600)
    key = await store.get_access_key("AKGWTESTTESTTESTTEST")
    assert key is not None
    assert key.revoked_at == now + 3600
    # A revoke now ends the overlap...
    await store.revoke_access_key("AKGWTESTTESTTESTTEST", now)
    key = await store.get_access_key("AKGWTESTTESTTESTTEST")
    assert key is not None
    assert key.revoked_at == now
    # ... and a later revocation never extends a key's life.
    await store.revoke_access_key("AKGWTESTTESTTESTTEST", now + 100)
    key = await store.get_access_key("AKGWTESTTESTTESTTEST")
    assert key is not None
    assert key.revoked_at == now
    assert not await store.revoke_access_key("AKGWNOSUCHKEYNOSUCHK", now)
