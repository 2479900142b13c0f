"""Per-key ordering (options.ordering_key): the store's head-only claims, the key worked out
at ingest, the mapping check, and the engine keeping a key's records in order."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gateway.delivery.engine import EngineSettings
from gateway.ids import delivery_id, record_id
from gateway.mapping import ordering
from gateway.mapping.errors import SpecErrors
from gateway.mapping.model import compile_mapping
from gateway.store import open_store
from gateway.store.base import (
    ClaimedDelivery,
    DeliveryState,
    DeliveryUpdate,
    IngestWrite,
    NewRecord,
    Store,
)
from tests.support.delivery_rig import Rig
from tests.support.receiver import Answer, Received, Receiver

AK = "AKTEST"


def ordered_rec(
    key: str | None, *, at: float, block: bool = False, integ: str = "crm", n: int = 0
) -> NewRecord:
    """A record with one delivery to ``integ``, ordered by ``key`` (None: unordered)."""
    return NewRecord(
        id=record_id(),
        group_key="g",
        access_key_id=AK,
        data_json=orjson.dumps({"n": n, "key": key}),
        received_at=at,
        integrations=[integ],
        delivery_ids=[delivery_id()],
        ordering=[None if key is None else (key, block)],
    )


async def claim(
    store: Store, owner: str, now: float, lease: float = 300.0
) -> list[ClaimedDelivery]:
    return await store.claim_deliveries(owner, limit=100, lease_seconds=lease, now=now)


def numbers(claimed: list[ClaimedDelivery]) -> list[int]:
    return sorted(orjson.loads(c.data_json)["n"] for c in claimed)


async def settle(store: Store, c: ClaimedDelivery, state: DeliveryState, at: float) -> None:
    owner = c.delivery.lease_owner
    assert owner is not None
    update = DeliveryUpdate(
        c.delivery.id, owner, state, at, ordered=c.delivery.ordering_key is not None
    )
    applied = await store.update_deliveries([update])
    assert applied == 1


# -- the store ----------------------------------------------------------------------------------
async def test_a_claim_takes_only_the_head_of_each_key(store: Store) -> None:
    t = time.time() - 10
    recs = [
        ordered_rec("a", at=t, n=1),
        ordered_rec("a", at=t + 1, n=2),
        ordered_rec("b", at=t + 1, n=3),
        ordered_rec("a", at=t + 2, n=4),
        ordered_rec(None, at=t + 2, n=5),
        ordered_rec(None, at=t + 3, n=6),
        ordered_rec("b", at=t + 3, n=7),
    ]
    assert (await store.commit_ingest(IngestWrite(recs))).committed
    now = time.time()
    first = await claim(store, "w1", now)
    # Heads of a and b, and every unordered delivery; nothing else of a or b.
    assert numbers(first) == [1, 3, 5, 6]
    assert {c.delivery.ordering_key for c in first} == {"a", "b", None}
    # While a's head is leased (in flight), a's next waits; so does b's.
    assert await claim(store, "w2", now) == []
    by_n = {orjson.loads(c.data_json)["n"]: c for c in first}
    await settle(store, by_n[1], DeliveryState.DELIVERED, now)
    # b's head goes back to wait for a retry: b waits with it, a does not.
    await settle(store, by_n[3], DeliveryState.PENDING, now + 60)
    assert numbers(await claim(store, "w2", now)) == [2]
    assert await claim(store, "w3", now) == []
    # Once b's retry is due, b's head (not its next record) comes back.
    assert numbers(await claim(store, "w3", now + 61)) == [3]


async def test_records_of_one_receive_time_go_in_id_order(store: Store) -> None:
    at = time.time() - 5
    recs = [ordered_rec("k", at=at, n=i) for i in range(5)]
    assert (await store.commit_ingest(IngestWrite(recs))).committed
    got = []
    for _ in range(5):
        claimed = await claim(store, "w", time.time())
        assert len(claimed) == 1
        got += numbers(claimed)
        await settle(store, claimed[0], DeliveryState.DELIVERED, time.time())
    assert got == [0, 1, 2, 3, 4]


async def test_an_expired_lease_gives_the_head_again_never_the_next(store: Store) -> None:
    t = time.time()
    await store.commit_ingest(IngestWrite([ordered_rec("k", at=t - 2, n=1)]))
    await store.commit_ingest(IngestWrite([ordered_rec("k", at=t - 1, n=2)]))
    assert numbers(await claim(store, "dead-process", t, lease=5)) == [1]
    assert await claim(store, "other", t + 4) == []
    again = await claim(store, "other", t + 6)
    assert numbers(again) == [1]
    # The first owner's late answer no longer counts; the new owner's does.
    await settle(store, again[0], DeliveryState.DELIVERED, t + 6)
    assert numbers(await claim(store, "other", t + 6)) == [2]


async def test_a_dead_head_holds_its_key_only_with_block(store: Store) -> None:
    t = time.time() - 10
    recs = [
        ordered_rec("cont", at=t, n=1),
        ordered_rec("cont", at=t + 1, n=2),
        ordered_rec("blk", at=t, n=3, block=True),
        ordered_rec("blk", at=t + 1, n=4, block=True),
        ordered_rec("blk", at=t + 2, n=5, block=True),
        ordered_rec("free", at=t + 1, n=6, block=True),
    ]
    await store.commit_ingest(IngestWrite(recs))
    now = time.time()
    first = {orjson.loads(c.data_json)["n"]: c for c in await claim(store, "w", now)}
    assert sorted(first) == [1, 3, 6]
    for n in (1, 3):
        await settle(store, first[n], DeliveryState.DEAD, now)
    await settle(store, first[6], DeliveryState.DELIVERED, now)
    # continue: the next record goes; block: the key waits, other keys do not.
    assert numbers(await claim(store, "w", now)) == [2]
    blocked = await store.blocked_keys()
    assert [(b.ordering_key, b.record_id, b.waiting) for b in blocked] == [("blk", recs[2].id, 2)]
    # A replay puts the dead head back first: it goes, then its key's next.
    assert await store.replay_deliveries(now=now, ids=[first[3].delivery.id]) == [
        first[3].delivery.id
    ]
    assert await store.blocked_keys() == []
    head = await claim(store, "w", now)
    assert numbers(head) == [3]
    await settle(store, head[0], DeliveryState.DELIVERED, now)
    assert numbers(await claim(store, "w", now)) == [4]


# -- property: no interleaving sends a later record of a key before an earlier one is done ----
class ClaimMachine(RuleBasedStateMachine):
    """Records of a few keys, several owners claiming, outcomes (delivered, retry, dead with
    and without block), lease expiries and replays, against the real SQLite store with a
    simulated clock. A claim is a send: when it hands out a record, every earlier record of
    its key must be done (delivered, or dead without block)."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store: Store | None = None
        self.now = 1_000_000.0
        self.last_at = self.now
        self.n = 0
        self.order: dict[str, list[str]] = {}  # key -> delivery ids in record order
        self.state: dict[str, DeliveryState] = {}
        self.block: dict[str, bool] = {}
        self.key_of: dict[str, str] = {}
        self.held: dict[str, ClaimedDelivery] = {}  # claims not settled, by delivery id

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    @initialize(path=st.just(None))
    def open(self, path: None) -> None:
        import tempfile

        self.dir = tempfile.TemporaryDirectory()
        self.store = open_store(f"sqlite:///{self.dir.name}/s.db")
        self.run(self.store.open())

    def teardown(self) -> None:
        if self.store is not None:
            self.run(self.store.close())
        self.loop.close()
        self.dir.cleanup()

    @rule(key=st.sampled_from(["a", "b", "c"]), block=st.booleans(), same_time=st.booleans())
    def ingest(self, key: str, block: bool, same_time: bool) -> None:
        assert self.store is not None
        self.n += 1
        # Received in ingest order: the same instant as the last record, or later.
        if not same_time:
            self.last_at = max(self.last_at + 1e-3, self.now)
        at = self.last_at
        r = ordered_rec(key, at=at, block=block, n=self.n)
        self.run(self.store.commit_ingest(IngestWrite([r])))
        did = r.delivery_ids[0]
        self.order.setdefault(key, []).append(did)
        self.state[did] = DeliveryState.PENDING
        self.block[did] = block
        self.key_of[did] = key

    @rule(owner=st.sampled_from(["p1", "p2"]), lease=st.sampled_from([1.0, 5.0]))
    def claim(self, owner: str, lease: float) -> None:
        assert self.store is not None
        claimed = self.run(
            self.store.claim_deliveries(owner, limit=50, lease_seconds=lease, now=self.now)
        )
        for c in claimed:
            did = c.delivery.id
            key = self.key_of[did]
            for earlier in self.order[key][: self.order[key].index(did)]:
                st_ = self.state[earlier]
                done = st_ == DeliveryState.DELIVERED or (
                    st_ == DeliveryState.DEAD and not self.block[earlier]
                )
                assert done, f"{did} of key {key} sent while {earlier} is {st_}"
            self.held[did] = c

    @precondition(lambda self: bool(self.held))
    @rule(
        pick=st.integers(min_value=0),
        outcome=st.sampled_from(
            [DeliveryState.DELIVERED, DeliveryState.PENDING, DeliveryState.DEAD]
        ),
    )
    def settle(self, pick: int, outcome: DeliveryState) -> None:
        assert self.store is not None
        did = sorted(self.held)[pick % len(self.held)]
        c = self.held.pop(did)
        owner = c.delivery.lease_owner
        assert owner is not None
        at = self.now + (0.5 if outcome == DeliveryState.PENDING else 0.0)
        update = DeliveryUpdate(did, owner, outcome, at, ordered=True)
        applied = self.run(self.store.update_deliveries([update]))
        if applied:  # a lease another owner took since is not ours to settle
            self.state[did] = outcome

    @rule()
    def sweep(self) -> None:
        assert self.store is not None
        self.run(self.store.unpark_heads(self.now))

    @rule(seconds=st.sampled_from([0.3, 2.0, 6.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds  # leases expire, retries come due

    @precondition(lambda self: any(s == DeliveryState.DEAD for s in self.state.values()))
    @rule(pick=st.integers(min_value=0))
    def replay(self, pick: int) -> None:
        assert self.store is not None
        dead = sorted(d for d, s in self.state.items() if s == DeliveryState.DEAD)
        did = dead[pick % len(dead)]
        self.run(self.store.replay_deliveries(now=self.now, ids=[did]))
        self.state[did] = DeliveryState.PENDING

    @invariant()
    def at_most_one_in_flight_per_key(self) -> None:
        # Held claims whose lease is still live: never two of one key.
        live = [
            self.key_of[d]
            for d, c in self.held.items()
            if (c.delivery.lease_expires_at or 0) > self.now
            and self.state[d] == DeliveryState.PENDING
        ]
        assert len(live) == len(set(live)), live


ClaimMachine.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestClaimOrdering = ClaimMachine.TestCase


# -- the mapping: the key at ingest, gateway check -----------------------------------------------
def _mapping(options: str, fields: str = "email: {path: epost, transform: lower}") -> Any:
    text = f"""
group_key: g
integrations:
  - name: crm
    type: http
    connection: {{url: "http://127.0.0.1:9/x"}}
    when: {{plan: {{in: [pro, free]}}}}
    fields: {{{fields}}}
    options: {{{options}}}
"""
    import yaml

    return compile_mapping(yaml.safe_load(text), text.encode(), expected_group="g")


def test_the_key_is_the_mapped_value_or_the_raw_attribute() -> None:
    m = _mapping("ordering_key: email")
    r = NewRecord("rec_1", "g", AK, b"{}", 1.0, ["crm"], ["dlv_1"])
    ordering.stamp(r, m, {"epost": "Ann@X.se", "plan": "pro"})
    assert r.ordering == [("ann@x.se", False)]  # after the field's transform
    m = _mapping("ordering_key: plan, ordering_on_dead: block")
    r = NewRecord("rec_2", "g", AK, b"{}", 1.0, ["crm"], ["dlv_2"])
    ordering.stamp(r, m, {"epost": "a@x.se", "plan": "pro"})
    assert r.ordering == [("pro", True)]  # an attribute the condition reads
    r = NewRecord("rec_3", "g", AK, b"{}", 1.0, ["crm"], ["dlv_3"])
    ordering.stamp(r, m, {"epost": "a@x.se"})
    assert r.ordering == []  # no value: not ordered
    unordered = _mapping("{}".strip("{}") or "concurrency: 2")
    r = NewRecord("rec_4", "g", AK, b"{}", 1.0, ["crm"], ["dlv_4"])
    ordering.stamp(r, unordered, {"epost": "a@x.se"})
    assert r.ordering == []


def test_check_refuses_an_ordering_key_naming_nothing_mapped() -> None:
    with pytest.raises(SpecErrors) as err:
        _mapping("ordering_key: emial")
    (problem,) = err.value.errors
    assert problem.path == ("integrations", 0, "options", "ordering_key")
    assert "emial" in problem.message
    assert "email" in problem.message
    with pytest.raises(SpecErrors):
        _mapping("ordering_on_dead: stop")
    _mapping("ordering_key: epost")  # an attribute a field reads


# -- the engine ---------------------------------------------------------------------------------
async def _add(rig: Rig, key: str, n: int, poison: bool = False) -> str:
    mapping = rig.registry.get("shop")
    data = {"email": key, "n": n, "poison": poison}
    r = NewRecord(
        record_id(), "shop", AK, orjson.dumps(data), time.time(), ["hook"], [delivery_id()]
    )
    ordering.stamp(r, mapping, data)
    assert r.ordering, "the entry is ordered"
    rig.record_of[r.delivery_ids[0]] = r.id
    assert (await rig.store.commit_ingest(IngestWrite([r]))).committed
    rig.engine.notify()
    return r.delivery_ids[0]


def _entry(url: str, on_dead: str) -> str:
    return f"""\
- name: hook
  type: http
  connection:
    url: "{url}"
  fields:
    email: email
    n: n
    poison: poison
  options:
    concurrency: 8
    ordering_key: email
    ordering_on_dead: {on_dead}
    retry: {{base: 20ms, cap: 60ms, max_attempts: 3}}
    breaker: {{failures: 1000}}
"""


@pytest.mark.parametrize("on_dead", ["block", "continue"])
async def test_a_dead_record_holds_only_its_own_key(tmp_path: Path, on_dead: str) -> None:
    refuse = {"on": True}
    arrived: list[tuple[str, int]] = []  # (key, n) of each successful request, as they come

    def answer(r: Received) -> Answer:
        body = r.json()
        if body["poison"] and refuse["on"]:
            return Answer(status=400)  # permanent: the record is dead at once
        arrived.append((body["email"], body["n"]))
        # Uneven answer times: with concurrency 8, unordered sending would overtake.
        return Answer(delay=0.03 * (body["n"] % 3))

    rx = await Receiver(answer).start()
    rig = await Rig.create(
        tmp_path,
        [_entry(rx.url, on_dead)],
        settings=EngineSettings(lease_seconds=30, poll_interval=0.05),
    )
    try:
        a = [await _add(rig, "a@x", 0, poison=True)]
        a += [await _add(rig, "a@x", n) for n in (1, 2)]
        b = [await _add(rig, "b@x", n) for n in range(10, 16)]
        await rig.wait_settled(b)
        assert [n for k, n in arrived if k == "b@x"] == list(range(10, 16))
        assert (await rig.deliveries(a[:1]))[0].state == DeliveryState.DEAD
        if on_dead == "continue":
            await rig.wait_settled(a)
            assert [n for k, n in arrived if k == "a@x"] == [1, 2]
            assert await rig.store.blocked_keys() == []
            return
        # block: a waits on its dead head; b went on regardless.
        await asyncio.sleep(0.5)
        ds = await rig.deliveries(a)
        assert [d.state for d in ds[1:]] == [DeliveryState.PENDING] * 2
        assert [n for k, n in arrived if k == "a@x"] == []
        blocked = await rig.store.blocked_keys()
        assert [(k.ordering_key, k.delivery_id, k.waiting) for k in blocked] == [("a@x", a[0], 2)]
        refuse["on"] = False
        await rig.store.replay_deliveries(now=time.time(), ids=[a[0]])
        rig.engine.notify()
        await rig.wait_settled(a)
        # The replayed head went first, then the records it held, in order.
        assert [n for k, n in arrived if k == "a@x"] == [0, 1, 2]
    finally:
        await rig.close()
        await rx.stop()


def _sqs(options: str) -> Any:
    import yaml

    text = f"""
group_key: g
integrations:
  - name: q
    type: aws_sqs
    connection:
      queue_url: "http://127.0.0.1:9/123456789012/orders.fifo"
      region: eu-north-1
    fields: {{email: epost, n: n}}
    options: {{{options}}}
"""
    return compile_mapping(yaml.safe_load(text), text.encode(), expected_group="g")


def test_a_fifo_queue_groups_by_the_ordering_key_by_default() -> None:
    m = _sqs("ordering_key: email")
    assert m.integrations[0].settings.value["message_group_id"] == "email"
    with pytest.raises(SpecErrors) as err:
        _sqs("concurrency: 2")  # neither a group nor an ordering key
    assert [e.path[-1] for e in err.value.errors] == ["message_group_id"]


async def test_the_sweep_brings_back_a_parked_head_whose_release_was_lost(store: Store) -> None:
    t = time.time() - 5
    await store.commit_ingest(IngestWrite([ordered_rec("k", at=t, n=1)]))
    await store.commit_ingest(IngestWrite([ordered_rec("k", at=t + 1, n=2)]))
    (head,) = await claim(store, "w", time.time())  # passes over record 2: parks it
    owner = head.delivery.lease_owner
    assert owner is not None
    # Settled without bringing the next back (a process died between the two statements).
    update = DeliveryUpdate(head.delivery.id, owner, DeliveryState.DELIVERED, time.time())
    assert await store.update_deliveries([update]) == 1
    assert await claim(store, "w", time.time()) == []
    assert await store.unpark_heads(time.time()) == 1
    assert numbers(await claim(store, "w", time.time())) == [2]


async def test_a_waiting_record_shows_no_next_attempt(store: Store) -> None:
    from gateway.ingest.api import delivery_view

    t = time.time() - 5
    recs = [ordered_rec("k", at=t, n=1), ordered_rec("k", at=t + 1, n=2)]
    await store.commit_ingest(IngestWrite(recs))
    assert numbers(await claim(store, "w", time.time())) == [1]  # record 2 is parked
    stored = await store.get_record(recs[1].id)
    assert stored is not None
    (waiting,) = stored.deliveries
    view = delivery_view(waiting)
    assert view["state"] == "pending"
    assert view["next_attempt_at"] is None


async def test_replay_of_a_key_resends_in_record_order(store: Store) -> None:
    t = time.time() - 10
    recs = [ordered_rec("k", at=t + i, n=i) for i in range(4)]
    await store.commit_ingest(IngestWrite(recs))
    for _ in range(4):  # each dies in turn (continue: the next goes)
        (c,) = await claim(store, "w", time.time())
        await settle(store, c, DeliveryState.DEAD, time.time())
    ids = [r.delivery_ids[0] for r in recs]
    # Replayed newest first: the claims still go oldest first, one at a time.
    assert sorted(await store.replay_deliveries(now=time.time(), ids=ids[::-1])) == sorted(ids)
    sent = []
    for _ in range(4):
        claimed = await claim(store, "w", time.time())
        assert len(claimed) == 1
        sent += numbers(claimed)
        await settle(store, claimed[0], DeliveryState.DELIVERED, time.time())
    assert sent == [0, 1, 2, 3]


def test_an_action_can_default_the_ordering_key() -> None:
    import dataclasses

    m = _mapping("concurrency: 2")
    integ = m.integrations[0]
    assert ordering.spec_of(integ) is None
    linked = dataclasses.replace(
        integ, action=dataclasses.replace(integ.action, ordering_key="email")
    )
    spec = ordering.spec_of(linked)
    assert spec is not None
    assert spec.name == "email"
    assert spec.key({"epost": "B@x"}) == "b@x"
    # The entry's own ordering_key wins over the action's default.
    own = _mapping("ordering_key: plan")
    mine = dataclasses.replace(
        own.integrations[0], action=dataclasses.replace(integ.action, ordering_key="email")
    )
    assert ordering.key_name(mine) == "plan"
