"""An integration down for a long outage under load, then back (issue 11, failure tests).

A real ``gateway serve`` delivers to a deduplicating receiver (keyed by Idempotency-Key, as a
downstream system with at-least-once input must be). Signed single records and batches keep
coming while the receiver first answers 503 and then goes away altogether (connections refused
and dropped). Clocks are accelerated through the mapping's own options, not a test hook: a
retry cap of 200 ms and a breaker cooldown of at most 1 s make the 16-second outage as many
retry and probe rounds as hours at the defaults (cap 10 min, cooldown up to 10 min).

Asserted: every acknowledged record arrives, once after deduplication and under a single
Idempotency-Key; none goes dead during the outage; the gateway's memory (VmRSS from /proc)
after the outage and the drain is within a bound of what it was after a warm-up with the same
kind of load and a short outage (a leak per record or per attempt would show: the outage makes
tens of thousands of attempts).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.dedup_receiver import DedupReceiver
from tests.support.gateway_proc import GatewayProcess
from tests.support.load import SignedLoad, summary

pytestmark = pytest.mark.e2e

MAPPING = """\
group_key: shop
integrations:
  - name: hook
    type: http
    connection:
      url: "{url}/in"
      connect_timeout: 1
      read_timeout: 2
    fields:
      tag: tag
      n: n
    options:
      concurrency: 16
      retry: {{base: 20ms, cap: 200ms, max_attempts: 100000, max_age: 1h}}
      breaker: {{failures: 5, cooldown: 200ms, max_cooldown: 1s}}
"""
OUTAGE_FAILING = 8.0  # seconds answering 503
OUTAGE_DOWN = 8.0  # then seconds not listening at all
RSS_GROWTH_LIMIT_MB = 24.0


def rss_mb(pid: int) -> float:
    """The process's resident set size in MiB (``VmRSS`` in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def drained(rx: DedupReceiver, load: SignedLoad, within: float) -> set[str]:
    """Wait until every record acknowledged so far arrived; return the ones that did not."""
    acked = set(load.acked.values())
    return acked - rx.wait_for_tags(acked, within).keys()


def test_long_outage_under_load_every_record_arrives_once_and_memory_stays_flat(
    tmp_path: Path,
) -> None:
    with DedupReceiver() as rx:
        gw = GatewayProcess(
            tmp_path,
            groups=(),
            GATEWAY_DELIVERY_POLL_INTERVAL="0.1",
            GATEWAY_MASTER_KEY="k" * 43 + "=",
        )
        (gw.mappings / "shop.yaml").write_text(MAPPING.format(url=rx.url))
        gw.start()
        assert gw.proc is not None
        pid = gw.proc.pid
        key, secret = gw.create_key("shop")
        load = SignedLoad(
            [gw.url], key, secret, "shop", threads=2, batch_every=4, pause=0.03
        ).start()
        t0 = time.monotonic()
        phases: dict[str, float] = {}
        try:
            # Warm-up: the same load, a short outage and a recovery, so that caches, pools,
            # the breaker and allocator arenas reach their working size before measuring.
            assert load.wait_acked(300), summary(load.snapshot())
            rx.fail()
            time.sleep(2.0)
            rx.bring_up()
            assert not drained(rx, load, within=30), "warm-up records not delivered"
            phases["warm-up"] = time.monotonic() - t0
            rss_before = rss_mb(pid)
            acked_before = load.count_acked()
            requests_before = rx.requests

            rx.fail()
            time.sleep(OUTAGE_FAILING)
            rx.go_down()
            time.sleep(OUTAGE_DOWN)
            rx.bring_up()
            during = load.count_acked() - acked_before
            attempts = rx.requests - requests_before
        finally:
            load.stop()

        try:
            t1 = time.monotonic()
            lost = drained(rx, load, within=90)
            phases["drain"] = time.monotonic() - t1
            acked = set(load.acked.values())
            assert not lost, f"{len(lost)} of {len(acked)} acknowledged records never arrived"
            arrived = rx.tags()
            twice = [t for t, keys in arrived.items() if len(keys) > 1]
            assert not twice, f"{len(twice)} records arrived under two idempotency keys"
            assert set(arrived) == acked  # and nothing that was not acknowledged
            assert during >= 300, f"too little load during the outage: {during} records"
            # The outage was really retried (not just parked): attempts reached the receiver
            # while it answered 503 (the down phase refuses them before they count). The breaker
            # keeps them few: a probe at most every max_cooldown.
            assert attempts >= 10, f"only {attempts} attempts during the outage"
            time.sleep(1.0)  # let the last updates settle before measuring
            rss_after = rss_mb(pid)
            growth = rss_after - rss_before
            assert growth < RSS_GROWTH_LIMIT_MB, (
                f"RSS grew {growth:.1f} MiB ({rss_before:.1f} -> {rss_after:.1f}) over an "
                f"outage with {during} records and {attempts} attempts"
            )
            assert gw.proc.poll() is None
            assert '"internal_error"' not in gw.output()
            assert '"delivery_record_lost"' not in gw.output()
            print(
                f"outage: {during} records acked, {attempts} attempts answered 503 or dropped, "
                f"{rx.repeats} repeats deduplicated, RSS {rss_before:.1f} -> {rss_after:.1f} MiB; "
                f"seconds: {phases}"
            )
        finally:
            assert gw.stop() == 0, gw.output()[-3000:]
