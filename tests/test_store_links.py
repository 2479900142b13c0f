"""Links in the store, on every backend: written only with a delivered update that still holds
its lease (in the same transaction), kept across a restart and a purge of the records, listed
with filters and cursors, forgotten by a delivered update that asks so."""

from __future__ import annotations

import time

import pytest

from gateway.ids import delivery_id, record_id
from gateway.store import open_store
from gateway.store.base import (
    Attempt,
    DeliveryState,
    DeliveryUpdate,
    IngestWrite,
    LinkFilter,
    LinkWrite,
    NewRecord,
    Store,
)


def _rec(group: str = "g", integration: str = "lic", received_at: float = 1000.0) -> NewRecord:
    return NewRecord(
        id=record_id(),
        group_key=group,
        access_key_id="AK",
        data_json=b'{"epost": "a@example.com"}',
        received_at=received_at,
        integrations=[integration],
        delivery_ids=[delivery_id()],
        mapping_version="v1",
    )


async def _claimed(store: Store, *records: NewRecord, owner: str = "w") -> list[str]:
    await store.commit_ingest(IngestWrite(list(records)))
    claimed = await store.claim_deliveries(owner, limit=100, lease_seconds=30, now=1001.0)
    return [c.delivery.id for c in claimed]


def _delivered(did: str, link: LinkWrite | None, owner: str = "w") -> DeliveryUpdate:
    attempt = Attempt(did, 1001.5, 3.0, 201, None, "v1", link.describe() if link else None)
    return DeliveryUpdate(
        did, owner, DeliveryState.DELIVERED, 1001.0, None, 201, attempt, link=link
    )


async def test_link_written_with_delivery_and_kept_across_restart(
    store: Store, store_url: str
) -> None:
    (did,) = await _claimed(store, _rec())
    assert await store.get_links("g", "lic", ["a@example.com"]) == {}
    t = time.time()
    link = LinkWrite("g", "lic", "a@example.com", "lic_1")
    assert await store.update_deliveries([_delivered(did, link)]) == 1

    got = await store.get_links("g", "lic", ["a@example.com", "b@example.com"])
    assert list(got) == ["a@example.com"]
    one = got["a@example.com"]
    assert (one.external_id, one.delivery_id) == ("lic_1", did)
    assert one.created_at >= t
    assert one.updated_at == one.created_at
    # Another entry or group never sees it.
    assert await store.get_links("g", "other", ["a@example.com"]) == {}
    assert await store.get_links("h", "lic", ["a@example.com"]) == {}
    (attempt,) = await store.list_attempts(did)
    assert attempt.link == "a@example.com -> lic_1"

    await store.close()
    again = open_store(store_url)
    await again.open()
    try:
        got = await again.get_links("g", "lic", ["a@example.com"])
        assert got["a@example.com"].external_id == "lic_1"
    finally:
        await again.close()


async def test_link_not_written_without_the_lease_or_without_delivery(store: Store) -> None:
    a, b = _rec(), _rec()
    ids = await _claimed(store, a, b)
    lost = DeliveryUpdate(
        ids[0], "someone-else", DeliveryState.DELIVERED, 0.0, link=LinkWrite("g", "lic", "x", "1")
    )
    retry = DeliveryUpdate(
        ids[1], "w", DeliveryState.PENDING, 2000.0, "HTTP 503", 503,
        link=LinkWrite("g", "lic", "y", "2"),
    )  # fmt: skip
    assert await store.update_deliveries([lost, retry]) == 1
    assert await store.get_links("g", "lic", ["x", "y"]) == {}


async def test_later_delivery_updates_link_keeping_created_at_and_delete_forgets(
    store: Store,
) -> None:
    (first,) = await _claimed(store, _rec())
    await store.update_deliveries([_delivered(first, LinkWrite("g", "lic", "k", "lic_1"))])
    created = (await store.get_links("g", "lic", ["k"]))["k"].created_at

    (second,) = await _claimed(store, _rec())
    await store.update_deliveries([_delivered(second, LinkWrite("g", "lic", "k", "lic_2"))])
    link = (await store.get_links("g", "lic", ["k"]))["k"]
    assert (link.external_id, link.delivery_id, link.created_at) == ("lic_2", second, created)
    assert link.updated_at >= created

    (third,) = await _claimed(store, _rec())
    await store.update_deliveries([_delivered(third, LinkWrite("g", "lic", "k", None))])
    assert await store.get_links("g", "lic", ["k"]) == {}
    (attempt,) = await store.list_attempts(third)
    assert attempt.link == "k -> (forgotten)"


async def test_two_updates_of_one_link_in_one_call_last_wins(store: Store) -> None:
    ids = await _claimed(store, _rec(), _rec())
    await store.update_deliveries(
        [
            _delivered(ids[0], LinkWrite("g", "lic", "k", "first")),
            _delivered(ids[1], LinkWrite("g", "lic", "k", "second")),
        ]
    )
    assert (await store.get_links("g", "lic", ["k"]))["k"].external_id == "second"


async def test_links_survive_purge_of_their_records(store: Store) -> None:
    r = _rec(received_at=1000.0)
    (did,) = await _claimed(store, r)
    await store.update_deliveries([_delivered(did, LinkWrite("g", "lic", "k", "lic_1"))])
    assert await store.purge_delivered(time.time() + 10) == 1
    assert await store.get_record(r.id) is None
    assert (await store.get_links("g", "lic", ["k"]))["k"].external_id == "lic_1"


async def test_list_links_filters_and_pages(store: Store) -> None:
    records = [_rec("g1", "lic"), _rec("g1", "lic"), _rec("g1", "crm"), _rec("g2", "lic")]
    ids = await _claimed(store, *records)
    by_record = {r.delivery_ids[0]: r for r in records}
    updates = []
    for n, did in enumerate(sorted(ids)):
        r = by_record[did]
        updates.append(_delivered(did, LinkWrite(r.group_key, r.integrations[0], f"k{n}", f"x{n}")))
    await store.update_deliveries(updates)

    everything = []
    cursor = None
    while True:
        page = await store.list_links(LinkFilter(), cursor=cursor, limit=3)
        everything.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    keys = [(x.group_key, x.integration, x.link_key) for x in everything]
    assert len(keys) == 4
    assert keys == sorted(keys)

    g1 = await store.list_links(LinkFilter(group_key="g1", integration="lic"))
    assert {(x.group_key, x.integration) for x in g1.items} == {("g1", "lic")}
    assert len(g1.items) == 2
    one = await store.list_links(LinkFilter(link_key=g1.items[0].link_key))
    assert [x.external_id for x in one.items] == [g1.items[0].external_id]
    with pytest.raises(ValueError, match="invalid cursor"):
        await store.list_links(LinkFilter(), cursor="not-a-cursor!")
