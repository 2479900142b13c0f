"""The delivery engine against real local HTTP servers: outcomes, retries, lanes, breakers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gateway.store.base import DeliveryState, DeliveryUpdate, StoreError
from tests.support.delivery_rig import Rig, http_entry
from tests.support.receiver import Answer, Receiver


@pytest.fixture
async def receiver():
    r = await Receiver().start()
    yield r
    await r.stop()


async def test_delivered_once_on_200(tmp_path: Path, receiver: Receiver) -> None:
    rig = await Rig.create(tmp_path, [http_entry("hook", receiver.url + "/in")])
    try:
        ids = await rig.add(["hook"], {"email": "a@example.com", "n": 1})
        [d] = await rig.wait_settled(ids)
        assert d.state == DeliveryState.DELIVERED
        assert d.attempts == 1
        assert d.last_status == 200
        await asyncio.sleep(0.2)
        assert len(receiver.requests) == 1
        got = receiver.requests[0]
        assert got.method == "POST"
        assert got.path == "/in"
        assert got.json() == {"email": "a@example.com", "n": 1}
        assert got.headers["Idempotency-Key"] == ids[0]
        attempts = await rig.store.list_attempts(ids[0])
        assert [a.status for a in attempts] == [200]
        assert attempts[0].mapping_version == rig.registry.get("shop").version
    finally:
        await rig.close()


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429])
async def test_retried_on_transient_status_then_delivered(
    tmp_path: Path, receiver: Receiver, status: int
) -> None:
    answers = iter([Answer(status), Answer(status)])
    receiver.answer = lambda r: next(answers, Answer(200))
    rig = await Rig.create(tmp_path, [http_entry("hook", receiver.url)])
    try:
        ids = await rig.add(["hook"])
        [d] = await rig.wait_settled(ids)
        assert d.state == DeliveryState.DELIVERED
        assert d.attempts == 3
        assert [a.status for a in await rig.store.list_attempts(ids[0])] == [status, status, 200]
        # Same delivery, same idempotency key on every try.
        assert {r.headers["Idempotency-Key"] for r in receiver.seen} == {ids[0]}
    finally:
        await rig.close()


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_permanent_status_goes_dead_at_once(
    tmp_path: Path, receiver: Receiver, status: int
) -> None:
    receiver.answer = lambda r: Answer(status, body=b'{"error":"nope"}')
    rig = await Rig.create(tmp_path, [http_entry("hook", receiver.url)])
    try:
        ids = await rig.add(["hook"])
        [d] = await rig.wait_settled(ids)
        assert d.state == DeliveryState.DEAD
        assert d.attempts == 1
        assert d.last_status == status
        assert d.last_error == f'HTTP {status}: {{"error":"nope"}}'
        await asyncio.sleep(0.3)
        assert len(receiver.seen) == 1
    finally:
        await rig.close()


async def test_replay_after_fixing_the_mapping_sends_through_the_new_version(
    tmp_path: Path, receiver: Receiver
) -> None:
    # Version 1 requires an attribute the records do not have.
    broken = http_entry("hook", receiver.url).replace("n: n", "n: {path: count, required: true}")
    rig = await Rig.create(tmp_path, [broken])
    try:
        v1 = rig.registry.get("shop").version
        ids = [
            (await rig.add(["hook"], {"email": f"{i}@example.com", "n": "x"}))[0] for i in range(3)
        ]
        for d in await rig.wait_settled(ids):
            assert d.state == DeliveryState.DEAD
            assert d.last_error.startswith("mapping error")
        assert receiver.seen == []
        # The fix: map the attribute the records do have.
        Rig.write_mapping(tmp_path / "mappings", "shop", [http_entry("hook", receiver.url)])
        rig.registry.reload()
        v2 = rig.registry.get("shop").version
        assert v2 != v1
        replayed = await rig.store.replay_deliveries(now=time.time(), ids=ids)
        assert sorted(replayed) == sorted(ids)
        rig.engine.notify()
        for d in await rig.wait_settled(ids):
            assert d.state == DeliveryState.DELIVERED
        assert sorted(r.json()["email"] for r in receiver.requests) == [
            "0@example.com",
            "1@example.com",
            "2@example.com",
        ]
        versions = [a.mapping_version for a in await rig.store.list_attempts(ids[0])]
        assert versions == [v1, v2]
    finally:
        await rig.close()


async def test_delivered_records_are_purged_after_retention_dead_ones_stay(
    aiohttp_client, tmp_path: Path, receiver: Receiver
) -> None:
    from gateway.app import STORE, create_app
    from gateway.config import load_settings
    from gateway.delivery.engine import ENGINE

    receiver.answer = lambda r: Answer(400) if r.json()["email"] == "bad" else Answer(200)
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    Rig.write_mapping(mappings, "shop", [http_entry("hook", receiver.url)])
    settings = load_settings(
        {
            "data_dir": tmp_path / "data",
            "mappings": mappings,
            "retention": 2,
            "delivery_poll_interval": 0.05,
        },
        environ={},
    )
    client = await aiohttp_client(create_app(settings))
    app = client.server.app
    rig = Rig(app[STORE], None, app[ENGINE])  # type: ignore[arg-type]
    good = await rig.add(["hook"], {"email": "ok", "n": 1})
    bad = await rig.add(["hook"], {"email": "bad", "n": 2})
    [d_good, d_bad] = await rig.wait_settled(good + bad)
    assert d_good.state == DeliveryState.DELIVERED
    assert d_bad.state == DeliveryState.DEAD
    deadline = time.monotonic() + 15
    while await app[STORE].get_record(rig.record_of[good[0]]) is not None:
        assert time.monotonic() < deadline, "the delivered record was never purged"
        await asyncio.sleep(0.2)
    assert await app[STORE].get_record(rig.record_of[bad[0]]) is not None


async def test_the_engines_count_of_claimed_deliveries_matches_its_lanes(
    tmp_path: Path, receiver: Receiver
) -> None:
    # One lane delivers, the other fails until its breaker opens and gives its queue back:
    # the running count the dispatcher sizes claims by must follow both paths.
    receiver.answer = lambda r: Answer(500) if r.path.startswith("/bad") else Answer(200)
    rig = await Rig.create(
        tmp_path,
        [
            http_entry("good", receiver.url + "/good"),
            http_entry(
                "bad",
                receiver.url + "/bad",
                "concurrency: 1, breaker: {failures: 2, cooldown: 30s}",
            ),
        ],
    )
    try:
        good = [d for _ in range(20) for d in await rig.add(["good"])]
        bad = [d for _ in range(20) for d in await rig.add(["bad"])]
        for d in await rig.wait_settled(good):
            assert d.state == DeliveryState.DELIVERED
        deadline = time.monotonic() + 10
        engine = rig.engine
        while engine.lanes[("shop", "bad")].breaker.opened == 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert engine._in_hand == sum(lane.held() for lane in engine.lanes.values())
        assert engine._in_hand == 0  # the good lane is done, the open one gave its work back
        assert {d.state for d in await rig.deliveries(bad)} == {DeliveryState.PENDING}
    finally:
        await rig.close()


async def test_outcomes_finishing_during_a_store_write_share_the_next_and_fall_back_alone(
    tmp_path: Path, receiver: Receiver
) -> None:
    rig = await Rig.create(tmp_path, [http_entry("hook", receiver.url, "concurrency: 8")])
    real = rig.store.update_deliveries
    calls: list[list[str]] = []  # the delivery ids of each store call, in order
    failed: list[str] = []  # those of the joint call made to fail

    async def slow_store(updates: list[DeliveryUpdate]) -> int:
        ids = [u.delivery_id for u in updates]
        calls.append(ids)
        await asyncio.sleep(0.05)  # attempts finishing meanwhile gather for the next call
        if len(ids) > 1 and not failed:
            failed.extend(ids)  # the first joint call fails: its attempts write alone
            raise StoreError("this joint call fails")
        return await real(updates)

    rig.store.update_deliveries = slow_store  # type: ignore[method-assign]
    try:
        ids = [(await rig.add(["hook"]))[0] for _ in range(20)]
        for d in await rig.wait_settled(ids):
            assert d.state == DeliveryState.DELIVERED
            assert d.attempts == 1  # recorded once
        assert len(failed) > 1, calls  # outcomes were gathered into one call
        # After the failure, each of its deliveries was written in a call of its own.
        after = calls[calls.index(failed) + 1 :]
        for did in failed:
            assert [did] in after, (did, calls)
        for did in ids:
            assert len(await rig.store.list_attempts(did)) == 1
    finally:
        await rig.close()


async def test_a_failed_outcome_write_is_retried_and_recorded_once(
    tmp_path: Path, receiver: Receiver
) -> None:
    # The store refuses the first writes of an outcome: the attempt's result is written
    # again after a pause, not lost and not sent again.
    rig = await Rig.create(tmp_path, [http_entry("hook", receiver.url)])
    real = rig.store.update_deliveries
    refused: list[int] = []

    async def flaky_store(updates: list[DeliveryUpdate]) -> int:
        if len(refused) < 2:
            refused.append(len(updates))
            raise StoreError("the disk is full")
        return await real(updates)

    rig.store.update_deliveries = flaky_store  # type: ignore[method-assign]
    try:
        [did] = await rig.add(["hook"])
        [d] = await rig.wait_settled([did])
        assert d.state == DeliveryState.DELIVERED
        assert d.attempts == 1
        assert len(receiver.seen) == 1  # written late, not sent twice
        assert len(await rig.store.list_attempts(did)) == 1
        assert len(refused) == 2  # the joint call, then the write alone; the third wrote
    finally:
        await rig.close()
