"""The integrator_io type through the real delivery engine against a local fake of
integrator.io: one POST creates a licence and its link, later records PUT to the same id,
expire and delete address it through a shared link scope, a licence made elsewhere is found by
e-mail, invalid_user retries on its own slow schedule, 401 is permanent and opens the breaker,
429 retries."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.delivery.breaker import BreakerState
from gateway.integrations.integrator_io import iso, link_key
from gateway.store.base import DeliveryState, LinkFilter
from tests.support.delivery_rig import Rig
from tests.support.integrator_fake import IntegratorFake

pytestmark = pytest.mark.e2e  # a real local server and the delivery engine

TOKEN = "iio-secret-token"
RETRY = "retry: {base: 20ms, cap: 100ms, max_attempts: 3}"


def _entry(
    name: str, url: str, action: str, settings: str = "", options: str = RETRY, fields: str = ""
) -> str:
    extra = f"\n  settings: {{{settings}}}" if settings else ""
    more = "".join(f"\n    {f}" for f in fields.split(";") if f)
    return f"""\
- name: {name}
  type: integrator_io
  action: {action}
  connection: {{token: "${{IIO_TOKEN}}", connector_id: conn1, base_url: "{url}"}}{extra}
  fields:
    email: email{more}
  options: {{{options}}}
"""


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IIO_TOKEN", TOKEN)


async def _setup(tmp_path: Path, fake: IntegratorFake, entries: list[str]) -> Rig:
    await fake.start()
    return await Rig.create(tmp_path, [e.replace("{url}", fake.url) for e in entries])


async def _received_at(rig: Rig, did: str) -> float:
    rec = await rig.store.get_record(rig.record_of[did])
    assert rec is not None
    return rec.received_at


def test_link_key_is_the_trimmed_lower_cased_email() -> None:
    assert link_key({"email": " Ada@Example.COM "}) == "ada@example.com"
    assert link_key({"email": ""}) is None
    assert link_key({}) is None


async def test_licence_lifecycle_one_post_then_puts_and_delete(tmp_path: Path) -> None:
    fake = IntegratorFake(token=TOKEN)
    rig = await _setup(
        tmp_path,
        fake,
        [
            _entry(
                "licences",
                "{url}",
                "license",
                "trial_days: 30",
                fields="connectorEdition: edition;addOnType: addon;addOnEdition: addon_edition",
            ),
            _entry("expiry", "{url}", "expire", "link_scope: licences"),
            _entry("removal", "{url}", "delete", "link_scope: licences"),
        ],
    )
    try:
        (signup,) = await rig.add(["licences"], {"email": "Ada@Example.com", "edition": "starter"})
        (d,) = await rig.wait_settled([signup])
        assert d.state == DeliveryState.DELIVERED, d.last_error
        # No link yet: a lookup by e-mail (a licence made elsewhere would be updated), then
        # the create.
        lookup, post = fake.calls
        assert (lookup.method, lookup.path) == ("GET", "/v1/connectors/conn1/licenses")
        assert (post.method, post.path) == ("POST", "/v1/connectors/conn1/licenses")
        assert post.authorization == f"Bearer {TOKEN}"
        arrival = await _received_at(rig, signup)
        assert post.body == {
            "email": "Ada@example.com",  # the email field type lower-cases the domain
            "expires": iso(arrival + 30 * 86400),
            "opts": {"connectorEdition": "starter"},
        }
        [lic_id] = fake.licenses
        links = await rig.store.get_links("shop", "licences", ["ada@example.com"])
        assert links["ada@example.com"].external_id == lic_id
        assert links["ada@example.com"].delivery_id == signup
        attempts = await rig.store.list_attempts(signup)
        assert attempts[-1].link == f"ada@example.com -> {lic_id}"

        (upgrade,) = await rig.add(
            ["licences"],
            {
                "email": "ada@example.com",
                "edition": "premium",
                "addon": "store",
                "addon_edition": "pro",
            },
        )
        (d,) = await rig.wait_settled([upgrade])
        assert d.state == DeliveryState.DELIVERED, d.last_error
        put = fake.calls[-1]
        assert (put.method, put.path) == ("PUT", f"/v1/connectors/conn1/licenses/{lic_id}")
        assert "email" not in put.body
        assert put.body["opts"] == {
            "connectorEdition": "premium",
            "addonLicenses": [{"type": "store", "licenses": [{"addOnEdition": "pro"}]}],
        }
        assert put.body["expires"] == iso(await _received_at(rig, upgrade) + 30 * 86400)

        (cancel,) = await rig.add(["expiry"], {"email": "ADA@example.com"})
        (d,) = await rig.wait_settled([cancel])
        assert d.state == DeliveryState.DELIVERED, d.last_error
        put = fake.calls[-1]
        assert (put.method, put.path) == ("PUT", f"/v1/connectors/conn1/licenses/{lic_id}")
        assert put.body == {"expires": iso(await _received_at(rig, cancel))}
        assert fake.licenses[lic_id]["expires"] == put.body["expires"]
        # The link answers from now on: no more lookups.
        assert [c.method for c in fake.calls] == ["GET", "POST", "PUT", "PUT"]

        (gone,) = await rig.add(["removal"], {"email": "ada@example.com"})
        (d,) = await rig.wait_settled([gone])
        assert d.state == DeliveryState.DELIVERED, d.last_error
        assert (fake.calls[-1].method, fake.calls[-1].path) == (
            "DELETE",
            f"/v1/connectors/conn1/licenses/{lic_id}",
        )
        assert fake.licenses == {}
        assert await rig.store.get_links("shop", "licences", ["ada@example.com"]) == {}
        page = await rig.store.list_links(LinkFilter(group_key="shop"))
        assert page.items == []
    finally:
        await rig.close()
        await fake.stop()


async def test_licence_made_elsewhere_is_found_by_email_and_linked(tmp_path: Path) -> None:
    fake = IntegratorFake(token=TOKEN)
    fake.licenses["old1"] = {"_id": "old1", "user": {"email": "bo@example.com"}, "opts": {}}
    fake.licenses["old2"] = {"_id": "old2", "user": {"email": "cy@example.com"}, "opts": {}}
    rig = await _setup(
        tmp_path,
        fake,
        [
            _entry("licences", "{url}", "license", fields="expires: ends"),
            _entry("removal", "{url}", "delete", "link_scope: licences"),
        ],
    )
    try:
        (d1,) = await rig.add(["licences"], {"email": "Bo@example.com", "ends": "2027-01-31"})
        (d,) = await rig.wait_settled([d1])
        assert d.state == DeliveryState.DELIVERED, d.last_error
        assert [(c.method, c.path) for c in fake.calls] == [
            ("GET", "/v1/connectors/conn1/licenses"),
            ("PUT", "/v1/connectors/conn1/licenses/old1"),
        ]
        assert fake.calls[1].body == {"expires": "2027-01-31T00:00:00.000Z"}
        links = await rig.store.get_links("shop", "licences", ["bo@example.com"])
        assert links["bo@example.com"].external_id == "old1"

        # Nothing to delete for an e-mail without a licence: done after the lookup alone.
        (d2,) = await rig.add(["removal"], {"email": "nobody@example.com"})
        (d,) = await rig.wait_settled([d2])
        assert d.state == DeliveryState.DELIVERED, d.last_error
        assert fake.calls[-1].method == "GET"
        assert set(fake.licenses) == {"old1", "old2"}
    finally:
        await rig.close()
        await fake.stop()


async def test_a_licence_deleted_elsewhere_is_created_anew_and_relinked(tmp_path: Path) -> None:
    fake = IntegratorFake(token=TOKEN)
    rig = await _setup(tmp_path, fake, [_entry("licences", "{url}", "license")])
    try:
        (first,) = await rig.add(["licences"], {"email": "dee@example.com"})
        assert (await rig.wait_settled([first]))[0].state == DeliveryState.DELIVERED
        [old] = fake.licenses
        fake.licenses.clear()  # someone deleted it in integrator.io
        fake.calls.clear()

        (second,) = await rig.add(["licences"], {"email": "dee@example.com"})
        (d,) = await rig.wait_settled([second])
        assert d.state == DeliveryState.DELIVERED, d.last_error
        assert [(c.method, c.path.rsplit("/", 1)[-1]) for c in fake.calls] == [
            ("PUT", old),
            ("GET", "licenses"),
            ("POST", "licenses"),
        ]
        assert fake.calls[-1].body["email"] == "dee@example.com"
        [new] = fake.licenses
        assert new != old
        links = await rig.store.get_links("shop", "licences", ["dee@example.com"])
        assert links["dee@example.com"].external_id == new
    finally:
        await rig.close()
        await fake.stop()


async def test_invalid_user_retries_on_its_slow_schedule_until_the_user_appears(
    tmp_path: Path,
) -> None:
    # The entry's own retry would give up after 3 attempts; invalid_user follows its setting.
    fake = IntegratorFake(token=TOKEN, accounts=set())
    rig = await _setup(
        tmp_path,
        fake,
        [
            _entry(
                "licences",
                "{url}",
                "license",
                "invalid_user_retry_every: 0.3, invalid_user_retry_for: 60",
            )
        ],
    )
    try:
        (did,) = await rig.add(["licences"], {"email": "new@example.com"})
        for _ in range(300):  # up to 15 s
            if fake.count("POST") >= 5:
                break
            await asyncio.sleep(0.05)
        (d,) = await rig.deliveries([did])
        assert d.state == DeliveryState.PENDING
        assert d.attempts >= 4  # past the entry's max_attempts of 3
        assert "invalid_user" in (d.last_error or "")
        posts = [c for c in fake.calls if c.method == "POST"]
        gaps = [
            b - a
            for a, b in zip(
                [a.started_at for a in await rig.store.list_attempts(did)][:-1],
                [a.started_at for a in await rig.store.list_attempts(did)][1:],
                strict=True,
            )
        ]
        assert all(g >= 0.29 for g in gaps), gaps  # the schedule, not the fast backoff
        assert len(posts) >= 5

        fake.accounts = {"new@example.com"}
        (d,) = await rig.wait_settled([did])
        assert d.state == DeliveryState.DELIVERED, d.last_error
        assert fake.by_email("new@example.com") is not None
    finally:
        await rig.close()
        await fake.stop()


async def test_invalid_user_dead_with_the_vendors_message_when_the_time_is_up(
    tmp_path: Path,
) -> None:
    fake = IntegratorFake(token=TOKEN, accounts=set())
    rig = await _setup(
        tmp_path,
        fake,
        [
            _entry(
                "licences",
                "{url}",
                "license",
                "invalid_user_retry_every: 0.2, invalid_user_retry_for: 0.9",
            )
        ],
    )
    try:
        (did,) = await rig.add(["licences"], {"email": "late@example.com"})
        (d,) = await rig.wait_settled([did])
        assert d.state == DeliveryState.DEAD
        assert "No integrator.io user found with email late@example.com" in (d.last_error or "")
        assert d.last_error.startswith("gave up after")
        assert 2 <= fake.count("POST") <= 6
    finally:
        await rig.close()
        await fake.stop()


async def test_401_is_permanent_and_opens_the_breaker_429_retries(tmp_path: Path) -> None:
    fake = IntegratorFake(token=TOKEN, plan=["429"])
    rig = await _setup(
        tmp_path,
        fake,
        [
            _entry(
                "licences",
                "{url}",
                "license",
                options=RETRY + ", breaker: {failures: 2, cooldown: 60s}",
            )
        ],
    )
    try:
        (ok,) = await rig.add(["licences"], {"email": "a@example.com"})
        (d,) = await rig.wait_settled([ok])
        assert d.state == DeliveryState.DELIVERED, d.last_error
        assert d.attempts == 2  # the 429 (to the lookup), then the lookup and the POST
        assert [c.method for c in fake.calls] == ["GET", "GET", "POST"]

        fake.token = "rotated"  # the gateway's token is refused from now on
        ids: list[Any] = []
        for n in range(2):
            ids += await rig.add(["licences"], {"email": f"b{n}@example.com"})
        done = await rig.wait_settled(ids)
        assert all(d.state == DeliveryState.DEAD for d in done)
        assert all((d.last_error or "").startswith("HTTP 401") for d in done)
        assert all(d.attempts == 1 for d in done)
        lane = rig.engine.lanes[("shop", "licences")]
        assert lane.breaker.state(time.monotonic()) == BreakerState.OPEN
        # The fake echoed the refused token; the gateway stored it scrubbed.
        assert all("Unauthorized: " in (d.last_error or "") for d in done)
        assert all(TOKEN not in (d.last_error or "") for d in done)
    finally:
        await rig.close()
        await fake.stop()
