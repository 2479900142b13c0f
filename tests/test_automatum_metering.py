"""The ``automatum_metering`` type and rollups through the real delivery engine, against a
local fake of Automatum's token and metering endpoints (tests/support/automatum_fake.py)."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import json
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.delivery.rollup import amount, bucket_of, window_of
from gateway.mapping.options import RollupOptions
from gateway.preview import preview
from gateway.store.base import DeliveryState
from tests.support.automatum_fake import CLIENT_ID, CLIENT_SECRET, METERING_PATH, AutomatumFake
from tests.support.delivery_rig import Rig
from tests.support.receiver import Receiver


def entry(url: str, options: str = "", fields: str = "") -> str:
    return f"""\
- name: metering
  type: automatum_metering
  connection:
    base_url: "{url}"
    client_id: {CLIENT_ID}
    client_secret: "${{ATM_SECRET}}"
  settings: {{vendor: acme, listing_id: lst_42}}
  fields:
    customer_id: customer_id
    units: units
    charged: charged
    api_key: api_key
    title: {{value: API calls}}
    per: {{value: request}}
    price: {{value: 0.002}}
{fields}  options: {{retry: {{base: 20ms, cap: 100ms}}, rate_limit: 100/s{options}}}
"""


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATM_SECRET", CLIENT_SECRET)


async def start(tmp_path: Path, fake: AutomatumFake, **kw: str) -> tuple[Receiver, Rig]:
    rec = await Receiver(fake).start()
    rig = await Rig.create(tmp_path, [entry(rec.url, **kw)])
    return rec, rig


def metering(rec: Receiver) -> list[Any]:
    return [r for r in rec.requests if r.path == METERING_PATH]


USAGE = {"customer_id": "cus_1", "units": 3, "charged": 0.75, "api_key": "key_a"}


async def test_a_report_is_posted_with_its_idempotency_key_and_one_token(tmp_path: Path) -> None:
    fake = AutomatumFake()
    rec, rig = await start(tmp_path, fake)
    try:
        ids = [d for _ in range(3) for d in await rig.add(["metering"], USAGE)]
        done = await rig.wait_settled(ids)
        assert [d.state for d in done] == [DeliveryState.DELIVERED] * 3
    finally:
        await rig.close()
        await rec.stop()
    assert len(fake.token_requests) == 1  # cached for the three reports
    form = fake.token_requests[0]
    assert form["grant_type"] == ["client_credentials"]
    assert form["scope"] == ["write:metering"]
    assert sorted(fake.reports) == sorted(ids)  # Idempotency-Key: the delivery id
    body = fake.reports[ids[0]].body
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    assert body == {
        "vendor": "acme",
        "listingId": "lst_42",
        "details": {
            "customer": {"id": "cus_1"},
            "reportingDate": today,
            "charged": 0.75,
            "usages": [
                {
                    "apiKey": "key_a",
                    "units": 3,
                    "title": "API calls",
                    "per": "request",
                    "price": 0.002,
                }
            ],
        },
    }
    for r in metering(rec):
        assert r.headers["Authorization"] == "Bearer atm-token-1"
        assert r.headers["Content-Type"] == "application/json"


async def test_a_401_fetches_one_new_token_and_resends_with_the_same_key(tmp_path: Path) -> None:
    fake = AutomatumFake()
    fake.script.append("expire")
    rec, rig = await start(tmp_path, fake)
    try:
        ids = await rig.add(["metering"], USAGE)
        [done] = await rig.wait_settled(ids)
    finally:
        await rig.close()
        await rec.stop()
    assert done.state == DeliveryState.DELIVERED
    assert len(fake.token_requests) == 2
    sent = metering(rec)
    assert [r.headers["Idempotency-Key"] for r in sent] == [ids[0], ids[0]]
    assert [r.headers["Authorization"] for r in sent] == [
        "Bearer atm-token-1",
        "Bearer atm-token-2",
    ]
    assert done.attempts == 1  # the resend belongs to the same attempt


async def test_a_429_waits_for_retry_after_and_resends_the_same_report(tmp_path: Path) -> None:
    fake = AutomatumFake(retry_after="1")
    fake.script.append("rate_limit")
    rec, rig = await start(tmp_path, fake)
    try:
        ids = await rig.add(["metering"], USAGE)
        [done] = await rig.wait_settled(ids)
    finally:
        await rig.close()
        await rec.stop()
    assert done.state == DeliveryState.DELIVERED
    sent = metering(rec)
    assert [r.headers["Idempotency-Key"] for r in sent] == [ids[0], ids[0]]
    assert sent[0].body == sent[1].body
    assert sent[1].at - sent[0].at >= 0.95  # Retry-After: 1, not the 20 ms backoff


async def test_the_error_envelope_becomes_last_error_with_the_field_messages(
    tmp_path: Path,
) -> None:
    fake = AutomatumFake()
    rec, rig = await start(tmp_path, fake)
    try:
        ids = await rig.add(["metering"], {**USAGE, "units": -5})
        [done] = await rig.wait_settled(ids)
    finally:
        await rig.close()
        await rec.stop()
    assert done.state == DeliveryState.DEAD
    assert done.last_status == 422
    assert done.last_error == (
        "HTTP 422: invalid_report: The report is invalid; "
        "details.usages[0].units: must be a number, zero or more"
    )
    assert len(metering(rec)) == 1  # permanent: not retried


async def test_rollup_sums_per_key_and_window_into_one_report_each(tmp_path: Path) -> None:
    fake = AutomatumFake()
    rec, rig = await start(
        tmp_path,
        fake,
        options=", rollup: {window: 1s, by: [customer_id, api_key], sum: [units, charged], "
        "grace: 1s}",
        fields="    description: rollup_window_start\n",
    )
    try:
        sent: dict[tuple[str, str], list[dict[str, Any]]] = {}
        ids = []
        for n in range(30):
            data = {
                "customer_id": f"cus_{n % 3}",
                "units": n,
                "charged": "0.10",
                "api_key": "key_a" if n % 2 else "key_b",
            }
            ids += await rig.add(["metering"], data)
            # The window each record lands in: its arrival (read back from the store).
            sent.setdefault((data["customer_id"], data["api_key"]), []).append(data)
            await asyncio.sleep(0.05)
        await rig.wait_settled(ids)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            buckets = await rig.store.rollup_buckets()
            if buckets and all(b.state == "sent" for b in buckets):
                reports = [await rig.store.get_delivery(b.delivery_id or "") for b in buckets]
                if all(r is not None and r.state != DeliveryState.PENDING for r in reports):
                    break
            await asyncio.sleep(0.1)
        buckets = await rig.store.rollup_buckets()
    finally:
        await rig.close()
        await rec.stop()
    assert all(b.seq == 0 for b in buckets)  # nothing arrived late
    assert len(fake.reports) == len(buckets)
    assert sum(b.records for b in buckets) == 30
    by_bucket = {
        (b.by_values["customer_id"], b.by_values["api_key"], b.window_start): b for b in buckets
    }
    for report in fake.reports.values():
        d = report.body["details"]
        [usage] = d["usages"]
        w_start = datetime.datetime.fromisoformat(usage["description"]).timestamp()
        b = by_bucket[(d["customer"]["id"], usage["apiKey"], w_start)]
        assert usage["units"] == int(b.sums["units"])
        assert d["charged"] == pytest.approx(float(b.sums["charged"]))
        day = datetime.datetime.fromtimestamp(w_start, datetime.UTC).date().isoformat()
        assert d["reportingDate"] == day
        assert report.key == b.delivery_id
    # Every record counted once, exactly: the totals per key match what was sent.
    for (cus, key), records in sent.items():
        got = [
            r.body["details"]["usages"][0]["units"]
            for r in fake.reports.values()
            if r.body["details"]["customer"]["id"] == cus
            and r.body["details"]["usages"][0]["apiKey"] == key
        ]
        assert sum(got) == sum(int(x["units"]) for x in records)


def test_windows_are_aligned_to_utc_and_amounts_are_exact() -> None:
    assert window_of(3600 * 5 + 12.5, 3600) == (3600 * 5, 3600 * 6)
    assert window_of(7.9, 2) == (6, 8)
    assert amount(0.1) + amount(0.2) == amount("0.3")
    for bad in (True, "abc", [1], float("nan"), None):
        with pytest.raises(ValueError, match="is not a number"):
            amount(bad)
    with pytest.raises(ValueError, match="too large"):
        amount("1e15")
    assert amount("-999999999999999.99") == decimal.Decimal("-999999999999999.99")
    opts = RollupOptions.model_validate(
        {"window": "1h", "by": ["customer_id"], "sum": ["units", "charged"], "grace": "5m"}
    )
    assert (opts.window, opts.grace) == (3600, 300)
    by, start, end, sums = bucket_of({"units": "2", "x": 1}, 7200.5, opts)
    assert by == {"customer_id": None}
    assert (start, end, sums) == (7200, 10800, {"units": "2"})
    with pytest.raises(ValueError, match="'charged'"):
        bucket_of({"units": 1, "charged": "lots"}, 0, opts)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"window": "500ms", "sum": ["u"]}, "at least 1s"),
        ({"window": "1h", "sum": []}, "at least 1 item"),
        ({"window": "1h", "sum": ["u"], "by": ["u"]}, "either a key"),
        ({"window": "1h", "sum": ["u"], "extra": 1}, "Extra inputs"),
    ],
)
def test_bad_rollup_options_are_refused(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RollupOptions.model_validate(raw)


async def test_preview_shows_the_bucket_a_record_would_join(tmp_path: Path) -> None:
    rec, rig = await start(
        tmp_path,
        AutomatumFake(),
        options=", rollup: {window: 1h, by: [customer_id], sum: [units, charged], grace: 5m}",
    )
    try:
        mapping = rig.registry.get("shop")
        assert mapping is not None
        now = datetime.datetime(2026, 3, 1, 10, 42, 7, tzinfo=datetime.UTC).timestamp()
        doc = preview(mapping, USAGE, now=now)
    finally:
        await rig.close()
        await rec.stop()
    [e] = doc["integrations"]
    assert e["rollup"] == {
        "key": {"customer_id": "cus_1"},
        "window_start": "2026-03-01T10:00:00Z",
        "window_end": "2026-03-01T11:00:00Z",
        "reported_after": "2026-03-01T11:05:00Z",
        "adds": {"units": 3, "charged": 0.75},
    }
    body = e["request"]["body"]
    assert body["details"]["reportingDate"] == "2026-03-01"
    assert body["details"]["usages"][0]["units"] == 3
    assert e["request"]["headers"]["Authorization"] == "Bearer ***"


async def test_a_record_that_cannot_be_summed_is_dead_not_counted(tmp_path: Path) -> None:
    fake = AutomatumFake()
    rec, rig = await start(
        tmp_path,
        fake,
        options=", rollup: {window: 1h, by: [customer_id], sum: [units, charged]}",
    )
    try:
        bad = await rig.add(["metering"], {**USAGE, "units": "lots"})
        good = await rig.add(["metering"], USAGE)
        done = await rig.wait_settled(bad + good)
        buckets = await rig.store.rollup_buckets()
        mapping = rig.registry.get("shop")
        assert mapping is not None
        shown = preview(mapping, {**USAGE, "units": "lots"})
    finally:
        await rig.close()
        await rec.stop()
    assert [d.state for d in done] == [DeliveryState.DEAD, DeliveryState.DELIVERED]
    assert done[0].last_error == "rollup sum attribute 'units': 'lots' is not a number"
    assert [(b.records, b.sums) for b in buckets] == [(1, {"units": "3", "charged": "0.75"})]
    assert not metering(rec)  # nothing is sent per record, and the hour has not ended
    [e] = shown["integrations"]
    assert e["rollup"] == {"error": "rollup sum attribute 'units': 'lots' is not a number"}
    assert "request" not in e


async def test_the_token_is_kept_until_60_seconds_before_it_expires(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """expires_in 3600: reports sent 3538 s later still use the first token; from 3541 s on
    (less than 60 s left) a new one is fetched, once."""
    from gateway.integrations import oauth2

    offset = 0.0

    class Clock:
        @staticmethod
        def monotonic() -> float:
            return time.monotonic() + offset

    monkeypatch.setattr(oauth2, "time", Clock)
    fake = AutomatumFake(expires_in=3600)
    rec, rig = await start(tmp_path, fake)
    try:
        for at in (0.0, 3538.0, 3541.0, 3545.0):
            offset = at
            ids = await rig.add(["metering"], USAGE)
            [done] = await rig.wait_settled(ids)
            assert done.state == DeliveryState.DELIVERED
    finally:
        await rig.close()
        await rec.stop()
    auth = [r.headers["Authorization"] for r in metering(rec)]
    assert auth == ["Bearer atm-token-1"] * 2 + ["Bearer atm-token-2"] * 2
    assert len(fake.token_requests) == 2


def test_gateway_preview_prints_the_bucket_and_fails_on_a_bad_sum(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import main

    mappings = tmp_path / "mappings"
    mappings.mkdir()
    Rig.write_mapping(
        mappings,
        "shop",
        [entry("http://127.0.0.1:9", options=", rollup: {window: 1h, by: [customer_id], "
               "sum: [units], grace: 5m}")],
    )  # fmt: skip
    args = ["preview", "--mappings", str(mappings), "--group", "shop", "--data"]
    assert main([*args, json.dumps(USAGE)]) == 0
    out = capsys.readouterr().out
    assert 'rollup: adds {"units": 3} to {"customer_id": "cus_1"} in ' in out
    assert "the report of this record alone:" in out
    assert "POST http://127.0.0.1:9/api/v1/metering" in out
    assert main([*args, json.dumps({**USAGE, "units": "x"})]) == 1
    out = capsys.readouterr().out
    assert "rollup error: rollup sum attribute 'units': 'x' is not a number" in out
    assert "request:" not in out
