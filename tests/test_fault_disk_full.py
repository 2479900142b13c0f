"""The disk under the SQLite store fills up during load, then space returns (issue 11,
failure tests).

The store (``GATEWAY_DATA_DIR``) is on a small tmpfs mounted for the test
(tests/support/small_disk.py). A real ``gateway serve`` takes signed single records and batches
and delivers them to a deduplicating receiver; mid-load a filler file takes every free byte,
for a few seconds, then is deleted.

Asserted: while the disk is full producers get 503 ``STORE_UNAVAILABLE`` with ``Retry-After``
(never 500, never a 202 for something not stored); every acknowledged record is retrievable once
space returns and is delivered; ingest resumes in the same process without a restart.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.dedup_receiver import DedupReceiver
from tests.support.gateway_proc import GatewayProcess
from tests.support.load import SignedLoad, missing_records, summary
from tests.support.small_disk import NoSmallDisk, fill, free_bytes, small_disk

pytestmark = pytest.mark.e2e

MAPPING = """\
group_key: shop
integrations:
  - name: hook
    type: http
    connection:
      url: "{url}/in"
    fields:
      tag: tag
      n: n
    options:
      retry: {{base: 50ms, cap: 500ms, max_attempts: 1000}}
      breaker: {{failures: 5, cooldown: 300ms, max_cooldown: 1s}}
"""
FULL_SECONDS = 4.0


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    try:
        with small_disk(tmp_path / "disk", size_mb=24) as where:
            yield where
    except NoSmallDisk as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc} (CI runs as root and must run this test)", pytrace=False)
        pytest.skip(str(exc))


def test_disk_full_answers_503_keeps_every_acknowledged_record_and_recovers(
    tmp_path: Path, disk: Path
) -> None:
    with DedupReceiver() as rx:
        gw = GatewayProcess(
            tmp_path / "gw",
            groups=(),
            GATEWAY_DATA_DIR=str(disk),
            GATEWAY_DELIVERY_POLL_INTERVAL="0.1",
            GATEWAY_MASTER_KEY="k" * 43 + "=",
        )
        (gw.mappings / "shop.yaml").write_text(MAPPING.format(url=rx.url))
        gw.start()
        pid = gw.proc.pid if gw.proc else None
        key, secret = gw.create_key("shop")
        filler = disk / "filler"
        load = SignedLoad([gw.url], key, secret, "shop", threads=3, batch_every=4, pad=2000).start()
        try:
            assert load.wait_acked(300), summary(load.snapshot())

            fill(filler)
            full_at = time.monotonic()
            # SQLite reuses space its WAL already holds, so refusals may start a little later.
            deadline = full_at + 20
            while not any(o.status == 503 for o in load.between(full_at, time.monotonic())):
                assert time.monotonic() < deadline, (
                    f"no 503 with the disk full: {summary(load.between(full_at, 1e12))}"
                )
                fill(filler)  # whatever SQLite or the kernel freed meanwhile
                time.sleep(0.1)
            refusing_at = time.monotonic()
            time.sleep(FULL_SECONDS)
            assert free_bytes(disk) < 1 << 20
            freed_at = time.monotonic()
            filler.unlink()
            after = load.count_acked()
            assert load.wait_acked(after + 300), (
                f"ingest did not resume once space returned: {summary(load.snapshot())}"
            )
        finally:
            load.stop()

        outcomes = load.snapshot()
        while_full = load.between(refusing_at, freed_at)
        try:
            assert {o.status for o in outcomes} <= {200, 202, 503}, summary(outcomes)
            refused = [o for o in outcomes if o.status == 503]
            assert {o.code for o in refused} == {"STORE_UNAVAILABLE"}, summary(outcomes)
            assert all(o.retry_after for o in refused), "a 503 without Retry-After"
            assert sum(o.status == 503 for o in while_full) >= 5, summary(while_full)

            assert gw.proc is not None
            assert gw.proc.poll() is None
            assert gw.proc.pid == pid  # never restarted

            acked = dict(load.acked)
            missing = missing_records(gw.url, key, secret, acked)
            assert not missing, f"{len(missing)} of {len(acked)} acknowledged records not stored"
            arrived = rx.wait_for_tags(set(acked.values()), within=60)
            lost = set(acked.values()) - arrived.keys()
            assert not lost, f"{len(lost)} of {len(acked)} acknowledged records never delivered"
            assert '"internal_error"' not in gw.output()
        finally:
            assert gw.stop() == 0, gw.output()[-3000:]
