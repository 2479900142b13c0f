"""Signed producer load for fault tests and the soak benchmark.

:class:`SignedLoad` runs threads that send SigV4-signed records (botocore's signer) to one or
more gateways until stopped: single records (``POST /v1/records``) and, if asked, batches
(``POST /v1/records/batch``). Every answer is kept as an :class:`Outcome` (when, status, error
code, ``Retry-After``, the record ids it acknowledged), so a test can say exactly what the
producers were told while a fault was on, and check afterwards that every acknowledged record
is really stored (:func:`missing_records`).

Each record carries a unique ``tag`` in its data; a receiver finds records by it.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import requests

from tests.support.botocore_auth import BotocoreSigV4


@dataclass(slots=True)
class Outcome:
    """One answer (or a failure to get one) as a producer saw it."""

    started: float  # time.monotonic() when sent
    ended: float  # when the answer (or the error) came
    kind: str  # "single" or "batch"
    status: int | None  # None: no HTTP answer (connection refused, reset, timeout)
    code: str | None = None  # the error envelope's code
    retry_after: str | None = None
    error: str | None = None  # the exception, when status is None
    acked: dict[str, str] = field(default_factory=dict)  # record id -> tag, acknowledged


class SignedLoad:
    """Threads posting signed records to ``urls`` (round robin) until :meth:`stop`.

    ``batch_every``: every n-th request of a thread is a batch of ``batch_size`` records (0:
    single records only). ``pad``: bytes of filler in each record (to fill a disk sooner).
    ``pause``: seconds each thread waits between requests (0: as fast as answers come).
    ``idempotency_keys``: every request carries an ``Idempotency-Key`` of its own (so the
    gateway's idempotency lookup runs before each write).
    """

    def __init__(
        self,
        urls: Sequence[str],
        key: str,
        secret: str,
        group: str,
        *,
        threads: int = 2,
        batch_every: int = 0,
        batch_size: int = 10,
        pad: int = 0,
        pause: float = 0.0,
        timeout: float = 10.0,
        idempotency_keys: bool = False,
    ) -> None:
        self.urls = list(urls)
        self.auth = BotocoreSigV4(key, secret)
        self.group = group
        self.batch_every = batch_every
        self.batch_size = batch_size
        self.pad = "x" * pad
        self.pause = pause
        self.timeout = timeout
        self.idempotency_keys = idempotency_keys
        self.outcomes: list[Outcome] = []
        self.acked: dict[str, str] = {}  # record id -> tag
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._counter = itertools.count()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)
        ]

    def start(self) -> SignedLoad:
        """Start sending."""
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        """Stop sending and wait for the requests in flight to finish."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout + 5)

    def __enter__(self) -> SignedLoad:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- reading the results ---------------------------------------------------------------

    def count_acked(self) -> int:
        """How many records were acknowledged so far."""
        with self._lock:
            return len(self.acked)

    def wait_acked(self, n: int, within: float = 30.0) -> bool:
        """Wait until ``n`` records in all were acknowledged; False if the time ran out."""
        deadline = time.monotonic() + within
        while self.count_acked() < n:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def between(self, start: float, end: float) -> list[Outcome]:
        """Answers to requests sent at or after ``start`` and answered by ``end``."""
        with self._lock:
            return [o for o in self.outcomes if o.started >= start and o.ended <= end]

    def snapshot(self) -> list[Outcome]:
        """Every outcome so far."""
        with self._lock:
            return list(self.outcomes)

    # -- the senders -----------------------------------------------------------------------

    def _record(self) -> tuple[str, dict[str, Any]]:
        tag = uuid.uuid4().hex
        data: dict[str, Any] = {"tag": tag, "n": next(self._counter)}
        if self.pad:
            data["pad"] = self.pad
        return tag, {"group_key": self.group, "data": data}

    def _run(self, index: int) -> None:
        session = requests.Session()
        for i in itertools.count():
            if self._stop.is_set():
                break
            url = self.urls[(index + i) % len(self.urls)]
            batch = self.batch_every > 0 and i % self.batch_every == self.batch_every - 1
            if batch:
                records = [self._record() for _ in range(self.batch_size)]
                outcome = self._send(
                    session,
                    url + "/v1/records/batch",
                    {"records": [r for _, r in records]},
                    "batch",
                    [t for t, _ in records],
                )
            else:
                tag, record = self._record()
                outcome = self._send(session, url + "/v1/records", record, "single", [tag])
            with self._lock:
                self.outcomes.append(outcome)
                self.acked.update(outcome.acked)
            if outcome.status is None:
                time.sleep(0.05)  # nothing listens: do not spin
            elif self.pause:
                time.sleep(self.pause)

    def _send(
        self, session: requests.Session, url: str, body: Any, kind: str, tags: list[str]
    ) -> Outcome:
        headers = {"Content-Type": "application/json"}
        if self.idempotency_keys:
            headers["Idempotency-Key"] = uuid.uuid4().hex
        started = time.monotonic()
        try:
            r = session.post(
                url,
                data=orjson.dumps(body),
                headers=headers,
                auth=self.auth,
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            return Outcome(started, time.monotonic(), kind, None, error=repr(exc))
        outcome = Outcome(
            started, time.monotonic(), kind, r.status_code, retry_after=r.headers.get("Retry-After")
        )
        try:
            answer = r.json()
        except ValueError:
            outcome.error = f"not JSON: {r.text[:200]!r}"
            return outcome
        if r.status_code == 202 and kind == "single":
            outcome.acked[answer["id"]] = tags[0]
        elif r.status_code == 200 and kind == "batch":
            for item in answer["results"]:
                if item["status"] == "accepted":
                    outcome.acked[item["id"]] = tags[item["index"]]
        elif isinstance(answer, dict) and isinstance(answer.get("error"), dict):
            outcome.code = answer["error"].get("code")
        return outcome


def summary(outcomes: Iterable[Outcome]) -> dict[str, int]:
    """Counts by ``status code`` (``"202"``, ``"503 STORE_UNAVAILABLE"``, ``"None"``...)."""
    counts: dict[str, int] = {}
    for o in outcomes:
        label = f"{o.status} {o.code}" if o.code else str(o.status)
        counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items()))


def missing_records(url: str, key: str, secret: str, ids: Iterable[str]) -> list[str]:
    """The ids that ``GET /v1/records/{id}`` does not answer 200 for (signed; 4 threads)."""
    auth = BotocoreSigV4(key, secret)
    local = threading.local()

    def absent(rid: str) -> str | None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        for _ in range(3):
            try:
                r = session.get(f"{url}/v1/records/{rid}", auth=auth, timeout=10)
            except requests.RequestException:
                time.sleep(0.2)
                continue
            if r.status_code == 200 and r.json().get("id") == rid:
                return None
            if r.status_code == 404:
                return rid
            time.sleep(0.2)  # 503 or 429: ask again
        return rid

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return [rid for rid in pool.map(absent, list(ids)) if rid is not None]
