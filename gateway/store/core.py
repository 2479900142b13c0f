"""The store's shared core: everything the backends do the same way, written once.

A backend (``gateway.store.sqlite``, ``gateway.store.postgres``) is a thin layer over its
database driver: how to connect, how to run a transaction, and the SQL of its dialect
(``gateway.store.queries``). Everything else lives here:

- **Group commit.** :meth:`commit_ingest` queues an :class:`IngestJob`; the backend's single
  writer (SQLite's thread, PostgreSQL's task) takes the first queued job, drains whatever else
  is already queued (:meth:`GroupCommitStore._take_batch`: up to ``max_batch_records`` records
  and :data:`MAX_CALLS_PER_COMMIT` other writes), applies them all in one transaction and only
  then answers each caller. No timer: the next group starts as soon as the previous commit ends,
  so a lone write is never delayed and a burst shares one commit. Writes beyond
  ``max_pending_writes`` queued records are refused (:class:`StoreOverloaded`) rather than
  queued without bound.
- **Replays inside a group.** :func:`plan_group` turns each write whose idempotency key is
  already stored (or taken by an earlier write of the same group) into a replay of that entry.
- **Reads** that both dialects spell the same way (modulo placeholders) run through two hooks,
  :meth:`GroupCommitStore._fetch` and :meth:`GroupCommitStore._fetch_snapshot`; writes that are
  one statement run through :meth:`GroupCommitStore._execute`.
- Row mappers, pagination cursors, filters and the argument checks every backend shares.

Shared SQL is written with ``?`` placeholders; PostgreSQL numbers them (:func:`numbered`).
"""

from __future__ import annotations

import abc
import asyncio
import base64
import binascii
import collections
import contextlib
import datetime
import decimal
import functools
import hashlib
import re
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from gateway.ids import time_id
from gateway.store import queries
from gateway.store.base import (
    AccessKey,
    AdminToken,
    Attempt,
    AuditEntry,
    BlockedKey,
    ClaimedDelivery,
    Delivery,
    DeliveryFilter,
    DeliveryState,
    IdempotencyEntry,
    IngestResult,
    IngestWrite,
    LaneStats,
    Link,
    LinkFilter,
    LinkWrite,
    MappingVersion,
    Page,
    RollupAbsorbed,
    RollupAdd,
    RollupBucket,
    Store,
    StoredRecord,
    StoreError,
    StoreOverloaded,
    StoreUnavailable,
)

R = TypeVar("R")
Row = Sequence[Any]
Params = Sequence[Any]
Key = tuple[str, str]  # (access_key_id, idempotency key)

PURGE_CHUNK = 5000  # expired idempotency entries deleted per transaction
# Other writes (claims, delivery updates) sharing one commit with ingest groups; bounded so a
# flood of them cannot hold ingest's commit (and its 202s) for long.
MAX_CALLS_PER_COMMIT = 64


@dataclass(slots=True)
class CommitStats:
    """Counters of the writer, for tests and metrics (read without locking)."""

    commits: int = 0  # write transactions committed (ingest groups and other writes)
    ingest_commits: int = 0  # group-commit transactions of commit_ingest
    ingest_writes: int = 0  # IngestWrites answered from a committed transaction
    ingest_records: int = 0  # records those writes carried (replays included)
    failed_transactions: int = 0  # transactions lost to StoreUnavailable
    last_commit_seconds: float = 0.0  # BEGIN to COMMIT of the last ingest group
    last_batch_writes: int = 0  # writes in the last ingest group
    max_batch_writes: int = 0  # the largest ingest group so far


@dataclass(frozen=True, slots=True)
class Claim:
    """What :meth:`Store.claim_deliveries` asks of a backend: lease up to ``limit`` due
    deliveries (of one lane, where given) to ``owner`` until ``expires``."""

    owner: str
    limit: int
    now: float
    expires: float
    group_key: str | None
    integration: str | None


# -- the writer's jobs ------------------------------------------------------------------------
class Job:
    """A unit of work for the writer and how to answer its caller (on the caller's loop)."""

    __slots__ = ("error", "future", "loop", "result")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()
        self.result: Any = None
        self.error: BaseException | None = None


class IngestJob(Job):
    """One :meth:`Store.commit_ingest` call: a write and its idempotency keys."""

    __slots__ = ("_keys", "n", "write")

    def __init__(self, loop: asyncio.AbstractEventLoop, write: IngestWrite) -> None:
        super().__init__(loop)
        self.write = write
        self.n = len(write.records)
        self._keys: set[Key] | None = None

    @property
    def keys(self) -> set[Key]:
        """The write's idempotency keys (made on first use: the hot SQLite path needs none)."""
        if self._keys is None:
            self._keys = {(e.access_key_id, e.key) for e in self.write.idempotency}
        return self._keys


class CallJob(Job):
    """Any other write: ``fn`` runs on the writer's connection inside the group transaction
    (its argument is the backend's connection; its result, or a coroutine of it for an async
    backend, answers the caller)."""

    __slots__ = ("fn",)

    def __init__(self, loop: asyncio.AbstractEventLoop, fn: Callable[[Any], Any]) -> None:
        super().__init__(loop)
        self.fn = fn


def resolve(jobs: Iterable[Job]) -> None:
    """Answer callers; runs on their event loop."""
    for job in jobs:
        fut = job.future
        if fut.done():  # the caller was cancelled; its write is committed all the same
            continue
        if job.error is not None:
            fut.set_exception(job.error)
        else:
            fut.set_result(job.result)


def fail(jobs: Iterable[Job], error: BaseException) -> None:
    """Every job of a group hears ``error`` (nothing of the group is committed)."""
    for job in jobs:
        job.result = None
        job.error = error


def first_replay(
    write: IngestWrite, stored: dict[Key, IdempotencyEntry]
) -> IdempotencyEntry | None:
    """The stored entry of the first of the write's keys that has one."""
    for e in write.idempotency:
        hit = stored.get((e.access_key_id, e.key))
        if hit is not None:
            return hit
    return None


def plan_group(
    jobs: list[IngestJob], stored: dict[Key, IdempotencyEntry], *, keys: bool = False
) -> tuple[list[IngestWrite], set[Key]]:
    """Answer each job as a replay or as committed (to be inserted); return the writes to
    insert and (with ``keys``) the idempotency keys they carry.

    ``stored`` (the unexpired entries stored for the group's keys) is extended with each
    inserted write's entries, so a later write of the same group with the same key replays the
    earlier one.
    """
    to_insert: list[IngestWrite] = []
    expected: set[Key] = set()
    for job in jobs:
        write = job.write
        replay = first_replay(write, stored)
        if replay is not None:
            job.result = IngestResult(committed=False, replay=replay)
            continue
        job.result = IngestResult(committed=True)
        for e in write.idempotency:
            stored[(e.access_key_id, e.key)] = e
        if keys:
            expected |= job.keys
        to_insert.append(write)
    return to_insert, expected


# -- rows ---------------------------------------------------------------------------------------
def delivery(row: Row) -> Delivery:
    """A Delivery from a row of ``queries.DELIVERY_COLS``."""
    return Delivery(
        row[0],
        row[1],
        row[2],
        row[3],
        DeliveryState(row[4]),
        row[5],
        row[6],
        row[7],
        row[8],
        row[9],
        row[10],
        row[11],
        row[12],
        row[13],
    )


def idempotency_entry(row: Row) -> IdempotencyEntry:
    """An IdempotencyEntry from a row of ``queries.IDEM_COLS``."""
    return IdempotencyEntry(row[0], row[1], row[2], row[3], bytes(row[4]), row[5], row[6])


def access_key(row: Row) -> AccessKey:
    """An AccessKey from a row of ``queries.KEY_COLS``."""
    return AccessKey(
        access_key_id=row[0],
        secret_ciphertext=bytes(row[1]),
        groups=orjson.loads(row[2]),
        name=row[3],
        created_at=row[4],
        revoked_at=row[5],
        rate_limit=row[6],
        rate_burst=row[7],
    )


def admin_token(row: Row) -> AdminToken:
    """A row of TOKEN_COLS as an AdminToken."""
    groups = orjson.loads(row[3]) if row[3] is not None else None
    return AdminToken(row[0], row[1], row[2], groups, row[4], row[5], row[6])


def link(row: Row) -> Link:
    """A Link from a row of ``queries.LINK_COLS``."""
    return Link(row[0], row[1], row[2], row[3], row[4], row[5], row[6])


def link_writes(
    updates: Iterable[tuple[str, LinkWrite]], now: float
) -> tuple[list[Row], list[Row]]:
    """``(delivery_id, link)`` pairs of delivered updates as rows of ``queries.UPSERT_LINK``
    and ``queries.DELETE_LINK``. One row per link: when one group of updates names a link
    twice, the last one wins (an upsert may not touch a row twice in one statement)."""
    last: dict[tuple[str, str, str], tuple[str, LinkWrite]] = {}
    for did, w in updates:
        last[(w.group_key, w.integration, w.link_key)] = (did, w)
    upserts: list[Row] = []
    deletes: list[Row] = []
    for (g, i, k), (did, w) in last.items():
        if w.external_id:
            upserts.append((g, i, k, w.external_id, did, now, now))
        else:
            deletes.append((g, i, k))
    return upserts, deletes


def access_key_params(key: AccessKey) -> tuple[Any, ...]:
    """``key`` as the parameters of ``queries.INSERT_ACCESS_KEY``."""
    return (
        key.access_key_id,
        key.secret_ciphertext,
        orjson.dumps(list(key.groups)).decode(),
        key.name,
        key.created_at,
        key.revoked_at,
        key.rate_limit,
        key.rate_burst,
    )


def record_params(
    writes: Iterable[IngestWrite], now: float, ordered: list[Row] | None = None
) -> tuple[list[Row], list[Row]]:
    """The records and deliveries of ``writes`` as rows of ``queries.RECORD_INSERT_COLS`` and
    ``queries.DELIVERY_INSERT_COLS`` (state, attempts and the lease take their defaults).

    Ordered deliveries (per-key ordering) go to ``ordered`` instead, as rows of
    ``queries.ORDERED_DELIVERY_INSERT_COLS``; a caller that gives no list gets them all as
    plain rows, their keys dropped."""
    records: list[Row] = []
    deliveries: list[Row] = []
    for w in writes:
        for r in w.records:
            records.append(
                (r.id, r.group_key, r.access_key_id, r.data_json, r.received_at, r.mapping_version)
            )
            at = r.received_at
            if r.ordering and ordered is not None:
                for did, integ, key in zip(r.delivery_ids, r.integrations, r.ordering, strict=True):
                    if key is None:
                        deliveries.append((did, r.id, r.group_key, integ, at, at, now))
                    else:
                        row = (did, r.id, r.group_key, integ, at, at, now, key[0], int(key[1]))
                        ordered.append(row)
                continue
            for did, integ in zip(r.delivery_ids, r.integrations, strict=True):
                deliveries.append((did, r.id, r.group_key, integ, at, at, now))
    return records, deliveries


def idempotency_params(entry: IdempotencyEntry) -> Row:
    """``entry`` as a row of ``queries.IDEM_COLS``."""
    e = entry
    return (e.access_key_id, e.key, e.request_hash, e.status, e.response, e.created_at,
            e.expires_at)  # fmt: skip


def merge_lanes(rows: Iterable[Row]) -> list[LaneStats]:
    """LaneStats from rows ``(group, integration, pending, due, oldest_pending, dead)``; a lane
    may come in several rows (its pending side and its dead side). Sorted by lane."""
    lanes: dict[Key, LaneStats] = {}
    for g, i, pending, due, oldest, dead in rows:
        stats = lanes.get((g, i))
        if stats is None:
            lanes[(g, i)] = LaneStats(g, i, pending, due, dead, oldest)
            continue
        stats.pending += pending
        stats.due += due
        stats.dead += dead
        if oldest is not None:
            stats.oldest_pending_at = oldest
    return [lanes[k] for k in sorted(lanes)]


# -- cursors, filters, checks -------------------------------------------------------------------
def encode_cursor(last_id: str) -> str:
    """An opaque pagination cursor: the last delivery id seen, URL-safe base64."""
    return base64.urlsafe_b64encode(last_id.encode()).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> str:
    """The delivery id inside ``cursor``; ValueError if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = raw.decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError(f"invalid cursor {cursor!r}") from None
    if not value or not value.isprintable():
        raise ValueError(f"invalid cursor {cursor!r}")
    return value


def encode_link_cursor(last: Link) -> str:
    """A links page cursor: the last (group, integration, link key) seen."""
    raw = orjson.dumps([last.group_key, last.integration, last.link_key])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_link_cursor(cursor: str) -> tuple[str, str, str]:
    """The (group, integration, link key) inside a links cursor; ValueError if not ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = orjson.loads(raw)
    except (binascii.Error, ValueError):
        raise ValueError(f"invalid cursor {cursor!r}") from None
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, str) for v in value)):
        raise ValueError(f"invalid cursor {cursor!r}")
    return value[0], value[1], value[2]


def narrow(flt: DeliveryFilter, where: list[str], params: list[Any]) -> None:
    """Add the filter's group, integration and creation-time conditions (its state is each
    caller's: they spell it so the planner picks their index)."""
    for value, clause in (
        (flt.group_key, "group_key = ?"),
        (flt.integration, "integration = ?"),
        (flt.created_after, "created_at > ?"),
        (flt.created_before, "created_at < ?"),
    ):
        if value is not None:
            where.append(clause)
            params.append(value)


def claim_where(claim: Claim, prefix: str = "") -> tuple[list[str], list[Any]]:
    """The conditions of a due, unleased pending delivery (of the claim's lane, if given).

    ``state = 'pending'`` is written literally so the planner can use the partial indexes
    (deliveries_due, deliveries_lane_due).
    """
    p = prefix
    where = [
        f"{p}state = 'pending'",
        f"{p}next_attempt_at <= ?",
        f"({p}lease_expires_at IS NULL OR {p}lease_expires_at <= ?)",
    ]
    params: list[Any] = [claim.now, claim.now]
    for value, column in ((claim.group_key, "group_key"), (claim.integration, "integration")):
        if value is not None:
            where.append(f"{p}{column} = ?")
            params.append(value)
    # Per-key ordering: only the head of each key (see queries.is_head).
    where.append(queries.is_head(p.rstrip(".") or "deliveries"))
    return where, params


def check_replay(ids: list[str] | None, flt: DeliveryFilter | None, limit: int) -> None:
    """ValueError unless exactly one of ``ids`` and ``flt`` is given and ``limit`` > 0."""
    if (ids is None) == (flt is None):
        raise ValueError("replay by ids or by filter: give exactly one of ids and flt")
    if limit <= 0:
        raise ValueError("limit must be positive")


def replay_filter(flt: DeliveryFilter) -> tuple[list[str], list[Any]]:
    """The conditions of the deliveries a replay by filter selects (state defaults to dead).

    Literal states (from this fixed choice, never from the caller's text): dead ones come from
    the partial index deliveries_dead in id order; delivered ones walk the primary key, where
    they are dense.
    """
    state = DeliveryState.DEAD if flt.state is None else flt.state
    if state == DeliveryState.PENDING:
        raise ValueError("pending deliveries cannot be replayed (they are in flight)")
    where = ["state = 'dead'" if state == DeliveryState.DEAD else "state = 'delivered'"]
    params: list[Any] = []
    narrow(flt, where, params)
    return where, params


def reschedule_query(
    group_key: str, integration: str, at: float, only_earlier: bool, before: float | None
) -> tuple[str, Callable[[], list[Any]]]:
    """The statement moving a lane's unleased pending deliveries to ``at``, and its parameters
    as a function: it reads the clock when the transaction runs, not when the call was queued.

    `state = 'pending'` literal and the lane's equality columns first: the planner walks the
    partial index deliveries_lane_due for this lane only (and, with only_earlier, only its
    entries before `at`).
    """
    sql = queries.RESCHEDULE_LANE + (" AND next_attempt_at < ?" if only_earlier else "")
    sql += " AND next_attempt_at < ?" if before is not None else ""

    def params() -> list[Any]:
        now = time.time()
        out: list[Any] = [at, now, group_key, integration, now]
        if only_earlier:
            out.append(at)
        if before is not None:
            out.append(before)
        return out

    return sql, params


def purge_bound(before: float) -> str:
    """The record id below which every record was received before ``before``.

    Record ids begin with ``rec_`` and their creation time in milliseconds as 12 hex digits
    (gateway/ids.py), and ingest takes ``received_at`` before it makes the id. Purges check
    ``received_at < before`` as well, so a record whose id does not follow that scheme is never
    purged early.
    """
    ms = min(max(int(before * 1000), 0), 16**12 - 1)
    return f"{queries.RECORD_ID_PREFIX}{ms:012x}"


# -- rollups: the logic once, as steps each backend drives on its own connection --------------
#: A step: ("fetch", sql, params) is answered with the rows, ("exec", sql, params) with the
#: count of rows changed. Written once here; SQLite drives it in its writer thread, PostgreSQL
#: on its writer task (see :func:`drive`).
Step = tuple[str, str, Params]
Steps = Generator[Step, Any, R]

#: ``records.access_key_id`` of a report: no producer's key ever looks like this.
ROLLUP_SOURCE = "gateway:rollup"
#: Rounds of "read the latest bucket, open one if needed" before giving up (only concurrent
#: openers and closers of the same bucket make a second round).
ROLLUP_ROUNDS = 5


def drive(steps: Steps[R], run: Callable[[str, str, Params], Any]) -> R:
    """Run ``steps`` with a synchronous ``run(op, sql, params)``; their result."""
    try:
        step = next(steps)
        while True:
            step = steps.send(run(*step))
    except StopIteration as stop:
        result: R = stop.value
        return result


def bucket_key(add: RollupAdd) -> str:
    """A bucket's key column: the ``by`` values in order, as JSON."""
    return orjson.dumps(list(add.by_values.values())).decode()


def add_sums(stored: str, more: dict[str, str]) -> str:
    """``stored`` (JSON of exact decimals) plus ``more``, exactly, as JSON again."""
    sums = {k: decimal.Decimal(v) for k, v in orjson.loads(stored).items()}
    for k, v in more.items():
        sums[k] = sums.get(k, decimal.Decimal(0)) + decimal.Decimal(v)
    return orjson.dumps({k: str(v) for k, v in sums.items()}).decode()


def report_delivery_id(group_key: str, integration: str, key: str, start: float, seq: int) -> str:
    """A report's delivery id (its idempotency key): ``dlv_``, the window's start in
    milliseconds (so a builder can tell the window from the id, like any delivery id's time),
    then 20 hex digits that only this bucket has."""
    digest = hashlib.sha256(
        "\0".join((group_key, integration, key, repr(start), str(seq))).encode()
    ).hexdigest()
    return f"dlv_{int(start * 1000):012x}{digest[:20]}"


def _number(value: decimal.Decimal) -> int | float:
    # JSON has numbers only: whole sums stay integers (up to 64 bits, where JSON encoders
    # stop), others the nearest float, whose shortest repr is the decimal for any sum of up
    # to 15 significant digits.
    whole = value == value.to_integral_value() and abs(value) < 2**63
    return int(value) if whole else float(value)


def _utc(t: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(t, datetime.UTC)


def report_data(
    by_values: dict[str, Any], sums: dict[str, str], start: float, end: float, records: int,
    seq: int,
) -> dict[str, Any]:  # fmt: skip
    """The record a bucket becomes: its ``by`` attributes and sums, and what it covers."""
    data: dict[str, Any] = dict(by_values)
    data.update({k: _number(decimal.Decimal(v)) for k, v in sums.items()})
    data.update(
        rollup_window_start=_utc(start).isoformat().replace("+00:00", "Z"),
        rollup_window_end=_utc(end).isoformat().replace("+00:00", "Z"),
        rollup_date=_utc(start).date().isoformat(),
        rollup_records=records,
        rollup_sequence=seq,
        rollup_correction=seq > 0,
    )
    return data


def rollup_absorb_steps(
    adds: list[RollupAdd], now: float, latest_sql: str
) -> Steps[RollupAbsorbed]:
    """The steps of :meth:`Store.rollup_absorb` (``latest_sql``: the dialect's read of a
    key's latest bucket, locking it where the dialect needs that)."""
    out = RollupAbsorbed()
    # One order for every process: two adding to the same buckets lock them in turn.
    for a in sorted(adds, key=lambda a: (a.group_key, a.integration, bucket_key(a),
                                          a.window_start, a.delivery_id)):  # fmt: skip
        if (yield ("fetch", queries.ROLLUP_IS_REPORT, (a.delivery_id,))):
            out.reports.append(a.delivery_id)
            continue
        if a.error is not None:
            n = yield (
                "exec",
                queries.ROLLUP_DEAD,
                (now, a.error, now, a.delivery_id, a.lease_owner),
            )
            (out.dead if n else out.lost).append(a.delivery_id)
            continue
        n = yield ("exec", queries.ROLLUP_DELIVERED, (now, now, now, a.delivery_id, a.lease_owner))
        if not n:
            out.lost.append(a.delivery_id)
            continue
        key = bucket_key(a)
        lane_key = (a.group_key, a.integration, key, a.window_start)
        by_json = orjson.dumps(a.by_values).decode()
        for _ in range(ROLLUP_ROUNDS):
            rows = yield ("fetch", latest_sql, lane_key)
            if rows and rows[0][1] == "open":
                seq, _state, sums = rows[0]
                yield ("exec", queries.ROLLUP_ADD, (add_sums(sums, a.sums), now, *lane_key, seq))
                out.added.append(a.delivery_id)
                break
            # No bucket yet: open the window's. Its report made already: open a correction,
            # due a grace after its first record (the window's own close time has passed).
            seq = rows[0][0] + 1 if rows else 0
            close_at = (
                a.window_end + a.grace if seq == 0 else max(a.window_end + a.grace, now + a.grace)
            )
            yield ("exec", queries.ROLLUP_OPEN,
                   (*lane_key, seq, a.window_end, close_at, by_json, now, now))  # fmt: skip
        else:
            raise StoreError(f"no open rollup bucket for delivery {a.delivery_id} after "
                             f"{ROLLUP_ROUNDS} rounds")  # fmt: skip
    return out


def rollup_close_steps(now: float, limit: int, due_sql: str) -> Steps[list[str]]:
    """The steps of :meth:`Store.rollup_close_due` (``due_sql``: the dialect's selection of
    due open buckets, skipping those another process holds where the dialect needs that)."""
    made: list[str] = []
    rows = yield ("fetch", due_sql, (now, limit))
    for g, i, key, start, seq, end, by_json, sums_json, records in rows:
        pk = (g, i, key, start, seq)
        did = report_delivery_id(g, i, key, start, seq)
        data = report_data(orjson.loads(by_json), orjson.loads(sums_json), start, end,
                           records, seq)  # fmt: skip
        rid = f"{queries.RECORD_ID_PREFIX}{time_id(int(now * 1000))}"
        yield ("exec", queries.INSERT_RECORD_ROW,
               (rid, g, ROLLUP_SOURCE, orjson.dumps(data), now, None))  # fmt: skip
        yield ("exec", queries.INSERT_DELIVERY_ROW, (did, rid, g, i, now, now, now))
        yield ("exec", queries.ROLLUP_SENT, (did, now, *pk))
        made.append(did)
    return made


def rollup_bucket(row: Row) -> RollupBucket:
    """A RollupBucket from a row of ``queries.ROLLUP_COLS``."""
    g, i, _key, start, seq, end, close_at, state, by_json, sums, records, _o, _u, did = row
    return RollupBucket(g, i, orjson.loads(by_json), start, end, seq, state,
                        orjson.loads(sums), records, close_at, did)  # fmt: skip


_QMARK = re.compile(r"\?")


@functools.lru_cache(maxsize=512)
def numbered(sql: str, start: int = 1) -> str:
    """``sql`` with its ``?`` placeholders numbered ``$start, $start+1...`` (PostgreSQL's
    spelling). Our SQL holds no ``?`` inside literals or comments, so each is a placeholder.
    """
    counter = iter(range(start, start + sql.count("?")))
    return _QMARK.sub(lambda _m: f"${next(counter)}", sql)


# -- the store ------------------------------------------------------------------------------------
class GroupCommitStore(Store):
    """What every backend shares: the group-commit queue, its statistics, and the reads and
    one-statement writes both dialects spell the same way. Subclasses connect, run the writer
    and provide the hooks (the ``_fetch``/``_execute`` family and :meth:`_wake_writer`)."""

    def __init__(self, *, max_pending_writes: int, max_batch_records: int) -> None:
        self.max_pending_writes = max_pending_writes
        self.max_batch_records = max_batch_records
        self.stats = CommitStats()
        # Called with each committed write transaction's duration (BEGIN to COMMIT, seconds):
        # metrics. Keep it cheap and thread-safe; its errors are swallowed, never the caller's.
        self.on_commit_seconds: Callable[[float], None] | None = None
        self.migrations_applied: list[int] = []  # versions the last open() applied
        self._queue: collections.deque[Job] = collections.deque()
        # Held while the queue and its counters change: a lock where the writer is a thread.
        self._guard: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        self._pending = 0  # records queued, not yet committed (guarded by _guard)
        self._accepting = False  # open and not closing
        self._stopping = False  # the writer exits once the queue is empty
        self._opened = False
        self._closed = False

    @property
    def commits(self) -> int:
        """Write transactions committed so far (see :attr:`stats` for the details)."""
        return self.stats.commits

    def pending_writes(self) -> int:
        """Records queued but not yet committed."""
        return self._pending

    # -- hooks ----------------------------------------------------------------------------
    @abc.abstractmethod
    def _wake_writer(self) -> None:
        """Tell the writer the queue has work (called under ``_guard``)."""

    def _caller_loop(self) -> asyncio.AbstractEventLoop:
        """The event loop to answer the caller on."""
        return asyncio.get_running_loop()

    @abc.abstractmethod
    async def _fetch(self, sql: str, params: Params = ()) -> list[Row]:
        """Every row of one read (``?`` placeholders)."""

    @abc.abstractmethod
    async def _fetch_snapshot(self, statements: list[tuple[str, Params]]) -> list[list[Row]]:
        """The rows of several reads that see one committed state."""

    @abc.abstractmethod
    async def _execute(self, sql: str, params: Params | Callable[[], Params] = ()) -> int:
        """Run one write statement in its own transaction; the rows it changed. ``params``
        may be a function, called when the statement runs."""

    # -- the queue ------------------------------------------------------------------------
    def _closed_error(self) -> StoreUnavailable:
        return StoreUnavailable("store is closed" if self._closed else "store is not open")

    def _submit(self, job: Job, n_records: int = 0) -> None:
        """Queue ``job`` for the writer, or raise (closed / overloaded)."""
        with self._guard:
            if not self._accepting:
                raise self._closed_error()
            if n_records and self._pending + n_records > self.max_pending_writes:
                raise StoreOverloaded(
                    f"{self._pending} records are waiting for a commit; accepting "
                    f"{n_records} more would exceed the limit of {self.max_pending_writes}"
                )
            self._pending += n_records
            self._queue.append(job)
            self._wake_writer()

    def _stop_accepting(self) -> bool:
        """Refuse new writes and tell the writer to finish the queue, then stop (close's
        first step); False when the store was already closed."""
        with self._guard:
            if self._closed:
                return False
            self._closed = True
            self._accepting = False
            self._stopping = True
            self._wake_writer()
        return True

    def _take_batch(self) -> tuple[list[Job], int]:
        """The next group from the queue (call under ``_guard``) and its record
        count: ingest writes up to ``max_batch_records`` records (a bigger write still goes,
        alone: it is never split) and up to :data:`MAX_CALLS_PER_COMMIT` other writes."""
        cap = self.max_batch_records
        queue = self._queue
        batch: list[Job] = []
        n = calls = 0
        while queue:
            nxt = queue[0]
            if isinstance(nxt, IngestJob):
                if batch and n + nxt.n > cap:
                    break
                n += nxt.n
            else:
                if calls >= MAX_CALLS_PER_COMMIT:
                    break
                calls += 1
            batch.append(queue.popleft())
        return batch, n

    def _served(self, n_records: int) -> None:
        """A group of ``n_records`` records has been answered (committed or not)."""
        if n_records:
            with self._guard:
                self._pending -= n_records

    def _observe(self, seconds: float) -> None:
        """Count a committed write transaction of ``seconds`` (BEGIN to COMMIT)."""
        self.stats.commits += 1
        observe = self.on_commit_seconds
        if observe is not None:
            with contextlib.suppress(Exception):
                observe(seconds)

    def _group_committed(self, jobs: list[Job], started: float) -> None:
        """Count a committed group begun at ``started`` (perf_counter) in :attr:`stats`."""
        n = 0
        records = 0
        for job in jobs:
            if isinstance(job, IngestJob):
                n += 1
                records += job.n
        if not n:
            return
        stats = self.stats
        stats.ingest_commits += 1
        stats.ingest_writes += n
        stats.ingest_records += records
        stats.last_commit_seconds = time.perf_counter() - started
        stats.last_batch_writes = n
        stats.max_batch_writes = max(stats.max_batch_writes, n)

    async def _write(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn`` on the writer's connection inside its next group transaction, in a
        savepoint of its own."""
        job = CallJob(self._caller_loop(), fn)
        self._submit(job)
        return await job.future

    # -- ingest ---------------------------------------------------------------------------
    async def commit_ingest(self, write: IngestWrite) -> IngestResult:
        """Queue ``write`` for the next group commit; return once it is durably committed."""
        for r in write.records:
            # Checked here, in the caller, so a malformed write never reaches a transaction.
            if len(r.delivery_ids) != len(r.integrations):
                raise ValueError(
                    f"record {r.id}: {len(r.integrations)} integrations but "
                    f"{len(r.delivery_ids)} delivery ids"
                )
        job = IngestJob(self._caller_loop(), write)
        self._submit(job, job.n)
        # Not shielded on purpose: a cancelled caller stops waiting, but its write stays
        # queued and is committed (it may already be in a transaction).
        result: IngestResult = await job.future
        return result

    async def get_idempotency(
        self, access_key_id: str, key: str, now: float
    ) -> IdempotencyEntry | None:
        """The unexpired entry for ``key``, if any."""
        rows = await self._fetch(queries.SELECT_IDEM, (access_key_id, key, now))
        return idempotency_entry(rows[0]) if rows else None

    async def purge_idempotency(self, now: float) -> int:
        """Delete expired idempotency entries in chunks (short transactions: ingest commits
        run between them)."""
        total = 0
        while True:
            n = await self._execute(self._purge_idempotency_sql, (now, PURGE_CHUNK))
            total += n
            if n < PURGE_CHUNK:
                return total

    _purge_idempotency_sql: str  # the dialect's chunked delete (now, chunk size)

    # -- records --------------------------------------------------------------------------
    async def get_record(self, record_id: str) -> StoredRecord | None:
        """The record and its deliveries (ordered by integration name), or None."""
        records, deliveries = await self._fetch_snapshot(
            [
                (queries.SELECT_RECORD, (record_id,)),
                (queries.SELECT_RECORD_DELIVERIES, (record_id,)),
            ]
        )
        if not records:
            return None
        r = records[0]
        return StoredRecord(
            r[0], r[1], r[2], bytes(r[3]), r[4], r[5], [delivery(d) for d in deliveries]
        )

    # -- access keys ----------------------------------------------------------------------
    async def create_access_key(self, key: AccessKey) -> None:
        """Store a new access key; StoreError if the id exists."""
        await self._execute(queries.INSERT_ACCESS_KEY, access_key_params(key))

    async def get_access_key(self, access_key_id: str) -> AccessKey | None:
        """The key, revoked or not, or None."""
        rows = await self._fetch(queries.SELECT_ACCESS_KEY, (access_key_id,))
        return access_key(rows[0]) if rows else None

    async def list_access_keys(self) -> list[AccessKey]:
        """Every key, oldest first."""
        return [access_key(r) for r in await self._fetch(queries.LIST_ACCESS_KEYS)]

    async def revoke_access_key(self, access_key_id: str, now: float) -> bool:
        """Mark the key revoked (keeping the first revocation time); False if unknown."""
        return await self._execute(queries.REVOKE_ACCESS_KEY, (now, now, access_key_id)) > 0

    # -- mapping versions and audit (the management API) ----------------------------------
    async def add_mapping_version(
        self, group_key: str, version: str, content: str, at: float, actor: str, action: str
    ) -> None:
        """Record the next version of a group's mapping file (numbered 1, 2, ... per group)."""
        await self._execute(
            queries.INSERT_MAPPING_VERSION,
            (group_key, version, content, at, actor, action, group_key),
        )

    async def list_mapping_versions(self, group_key: str) -> list[MappingVersion]:
        """Every recorded version of the group's file, oldest first."""
        rows = await self._fetch(queries.LIST_MAPPING_VERSIONS, (group_key,))
        return [MappingVersion(*r) for r in rows]

    async def get_mapping_version(self, group_key: str, number: int) -> MappingVersion | None:
        """Version ``number`` of the group's file, or None."""
        rows = await self._fetch(queries.SELECT_MAPPING_VERSION, (group_key, number))
        return MappingVersion(*rows[0]) if rows else None

    async def latest_mapping_version(self, group_key: str) -> MappingVersion | None:
        """The newest recorded version of the group's file, or None."""
        rows = await self._fetch(queries.LATEST_MAPPING_VERSION, (group_key,))
        return MappingVersion(*rows[0]) if rows else None

    async def add_audit(self, at: float, actor: str, action: str, target: str, detail: str) -> None:
        """Append one entry to the audit log (``detail``: a JSON object, never a secret)."""
        await self._execute(queries.INSERT_AUDIT, (at, actor, action, target, detail))

    async def list_audit(self, after: int = 0, limit: int = 100) -> list[AuditEntry]:
        """Audit entries with an id above ``after``, oldest first, at most ``limit``."""
        rows = await self._fetch(queries.LIST_AUDIT, (after, limit))
        return [AuditEntry(*r) for r in rows]

    async def create_admin_token(self, token: AdminToken) -> None:
        """Store a new scoped admin token; StoreError if the id exists."""
        groups = None if token.groups is None else orjson.dumps(sorted(set(token.groups))).decode()
        await self._execute(
            queries.INSERT_ADMIN_TOKEN,
            (
                token.token_id,
                token.secret_hash,
                token.role,
                groups,
                token.name,
                token.created_at,
                token.revoked_at,
            ),
        )

    async def get_admin_token(self, token_id: str) -> AdminToken | None:
        """The token, revoked or not, or None."""
        rows = await self._fetch(queries.SELECT_ADMIN_TOKEN, (token_id,))
        return admin_token(rows[0]) if rows else None

    async def list_admin_tokens(self) -> list[AdminToken]:
        """Every scoped admin token, oldest first."""
        return [admin_token(r) for r in await self._fetch(queries.LIST_ADMIN_TOKENS)]

    async def revoke_admin_token(self, token_id: str, now: float) -> bool:
        """Mark the token revoked (keeping the first time); False if unknown."""
        return await self._execute(queries.REVOKE_ADMIN_TOKEN, (now, token_id)) > 0

    # -- deliveries -----------------------------------------------------------------------
    async def list_deliveries(
        self, flt: DeliveryFilter, *, cursor: str | None = None, limit: int = 100
    ) -> Page[Delivery]:
        """Deliveries matching ``flt`` in id (creation) order, ``limit`` per page.

        The cursor is the last id of the previous page, so paging is stable while deliveries
        are added: nothing is skipped or repeated.
        """
        if limit <= 0:
            raise ValueError("limit must be positive")
        where: list[str] = []
        params: list[Any] = []
        if cursor is not None:
            where.append("id > ?")
            params.append(decode_cursor(cursor))
        if flt.state == DeliveryState.DEAD:
            # A literal, so the planner can use the partial index deliveries_dead.
            where.append("state = 'dead'")
        elif flt.state is not None:
            # Bound on purpose: no partial index matches, so the planner walks the primary
            # key in id order and stops after a page (instead of sorting every pending row).
            where.append("state = ?")
            params.append(str(flt.state))
        narrow(flt, where, params)
        params.append(limit + 1)  # one more than a page tells whether another page exists
        sql = (
            queries.SELECT_DELIVERIES
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + " ORDER BY id LIMIT ?"
        )
        rows = await self._fetch(sql, params)
        items = [delivery(r) for r in rows[:limit]]
        more = len(rows) > limit
        return Page(items, encode_cursor(items[-1].id) if more else None)

    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        """One delivery by id, whatever its state, or None."""
        rows = await self._fetch(queries.SELECT_DELIVERY, (delivery_id,))
        return delivery(rows[0]) if rows else None

    async def list_attempts(self, delivery_id: str) -> list[Attempt]:
        """Every recorded attempt of a delivery, oldest first."""
        return [Attempt(*r) for r in await self._fetch(queries.LIST_ATTEMPTS, (delivery_id,))]

    # -- links --------------------------------------------------------------------------------
    async def get_links(
        self, group_key: str, integration: str, link_keys: list[str]
    ) -> dict[str, Link]:
        """The stored links of one integration entry for ``link_keys``, by link key."""
        keys = sorted(set(link_keys))
        if not keys:
            return {}
        sql = (
            queries.SELECT_LINKS
            + " WHERE group_key = ? AND integration = ? AND link_key IN ("
            + ", ".join("?" * len(keys))
            + ")"
        )
        rows = await self._fetch(sql, [group_key, integration, *keys])
        return {r[2]: link(r) for r in rows}

    async def list_links(
        self, flt: LinkFilter, *, cursor: str | None = None, limit: int = 100
    ) -> Page[Link]:
        """Links matching ``flt`` by (group, integration, link key), ``limit`` per page; the
        cursor is the last key of the previous page (stable while links are added)."""
        if limit <= 0:
            raise ValueError("limit must be positive")
        where: list[str] = []
        params: list[Any] = []
        if cursor is not None:
            where.append("(group_key, integration, link_key) > (?, ?, ?)")
            params.extend(decode_link_cursor(cursor))
        for value, clause in (
            (flt.group_key, "group_key = ?"),
            (flt.integration, "integration = ?"),
            (flt.link_key, "link_key = ?"),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        params.append(limit + 1)
        sql = (
            queries.SELECT_LINKS
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + " ORDER BY group_key, integration, link_key LIMIT ?"
        )
        rows = await self._fetch(sql, params)
        items = [link(r) for r in rows[:limit]]
        more = len(rows) > limit
        return Page(items, encode_link_cursor(items[-1]) if more else None)

    async def claim_deliveries(
        self,
        owner: str,
        *,
        limit: int,
        lease_seconds: float,
        now: float,
        group_key: str | None = None,
        integration: str | None = None,
    ) -> list[ClaimedDelivery]:
        """Lease up to ``limit`` due pending deliveries to ``owner``, oldest due first (of one
        lane when ``group_key`` and ``integration`` are given)."""
        if limit <= 0:
            return []
        return await self._claim(
            Claim(owner, limit, now, now + lease_seconds, group_key, integration)
        )

    @abc.abstractmethod
    async def _claim(self, claim: Claim) -> list[ClaimedDelivery]:
        """The dialect's claim (see :func:`claim_where`)."""

    async def replay_deliveries(
        self,
        *,
        now: float,
        ids: list[str] | None = None,
        flt: DeliveryFilter | None = None,
        limit: int = 10000,
    ) -> list[str]:
        """Put dead (or delivered) deliveries back to pending, due ``now``; return their ids.

        Exactly one of ``ids`` and ``flt``. Attempts restart at 0 so the retry policy gives
        the replay its full budget; the attempt rows and ``last_error`` stay as history. The
        lease columns are cleared (a dead or delivered delivery has none, but a row must never
        come back pending with a stale owner). Pending deliveries are never touched: they are
        in flight, and resetting their attempts would defeat the retry limit.
        """
        check_replay(ids, flt, limit)
        if ids is not None:
            return await self._replay(now, limit, ids, [], []) if ids else []
        assert flt is not None
        where, params = replay_filter(flt)
        return await self._replay(now, limit, None, where, params)

    @abc.abstractmethod
    async def _replay(
        self, now: float, limit: int, ids: list[str] | None, where: list[str], params: list[Any]
    ) -> list[str]:
        """The dialect's replay of ``ids`` (those dead or delivered), or else of the deliveries
        matching ``where`` (``?`` placeholders, ``params``), at most ``limit``, in id order."""

    async def reschedule_lane(
        self,
        group_key: str,
        integration: str,
        *,
        at: float,
        only_earlier: bool,
        before: float | None = None,
    ) -> int:
        """Move the lane's unleased pending deliveries to ``at`` in one statement.

        Leased ones belong to a worker that decides their next time itself. A lease counts as
        gone once expired at the time of the statement; the expired lease itself is left in
        place, so the old owner's late update still lands if nobody claimed the delivery
        since. (PostgreSQL waits for a row a claimer holds, then re-checks it.)
        """
        sql, params = reschedule_query(group_key, integration, at, only_earlier, before)
        return await self._execute(sql, params)

    async def set_lane_paused(
        self, group_key: str, integration: str, paused: bool, now: float
    ) -> bool:
        """Pause or resume a lane durably; True when that changed something.

        Pausing a paused lane keeps its first ``paused_at`` (when the pause began).
        """
        if paused:
            changed = await self._execute(queries.PAUSE_LANE, (group_key, integration, now))
        else:
            changed = await self._execute(queries.RESUME_LANE, (group_key, integration))
        return changed > 0

    async def lane_stats(self, now: float) -> list[LaneStats]:
        """Per lane with any pending or dead delivery: counts and the oldest pending, sorted
        by lane. Both counts come from one snapshot."""
        statements: list[tuple[str, Params]] = [
            (sql, (now,) * sql.count("?")) for sql in self._lane_stats_sql
        ]
        results = await self._fetch_snapshot(statements)
        return merge_lanes(row for rows in results for row in rows)

    _lane_stats_sql: tuple[str, ...]  # the dialect's, each with ``now`` for its every ``?``

    async def unpark_heads(self, now: float) -> int:
        """Make every parked delivery that heads its key due again (one statement): the
        engine's periodic safety net behind the unparking done as heads settle. ``now`` is
        unused: they are due since they were received."""
        return await self._execute(queries.UNPARK_HEADS)

    async def blocked_keys(self, limit: int = 1000) -> list[BlockedKey]:
        """Ordering keys held by a dead delivery (``ordering_on_dead: block``), by lane then
        age: the oldest dead record of each and how many deliveries wait behind it."""
        rows = await self._fetch(queries.BLOCKED_KEYS, (limit,))
        return [BlockedKey(*r) for r in rows]

    async def paused_lanes(self) -> set[tuple[str, str]]:
        """Every paused lane as (group_key, integration)."""
        return {(r[0], r[1]) for r in await self._fetch(queries.LIST_PAUSED_LANES)}

    # -- rollups --------------------------------------------------------------------------
    _rollup_latest_sql: str  # the dialect's queries.ROLLUP_LATEST (locking where needed)
    _rollup_due_sql: str  # the dialect's selection of due open buckets

    @abc.abstractmethod
    async def _run_steps(self, steps: Callable[[], Steps[R]]) -> R:
        """Drive fresh ``steps()`` on the writer's connection inside its next group
        transaction (a savepoint of their own); their result. A fresh generator each time:
        a backend may run a group again after a serialization failure."""

    async def rollup_absorb(self, adds: list[RollupAdd], now: float) -> RollupAbsorbed:
        """See :meth:`Store.rollup_absorb`."""
        if not adds:
            return RollupAbsorbed()
        latest = self._rollup_latest_sql
        return await self._run_steps(lambda: rollup_absorb_steps(adds, now, latest))

    async def rollup_close_due(self, now: float, limit: int = 100) -> list[str]:
        """See :meth:`Store.rollup_close_due`."""
        if not await self._fetch(queries.ROLLUP_ANY_DUE, (now,)):
            return []  # the usual answer, without a write transaction
        due = self._rollup_due_sql
        return await self._run_steps(lambda: rollup_close_steps(now, limit, due))

    async def rollup_buckets(
        self, group_key: str | None = None, integration: str | None = None
    ) -> list[RollupBucket]:
        """See :meth:`Store.rollup_buckets`."""
        where: list[str] = []
        params: list[Any] = []
        for value, clause in ((group_key, "group_key = ?"), (integration, "integration = ?")):
            if value is not None:
                where.append(clause)
                params.append(value)
        sql = queries.SELECT_ROLLUPS + (f" WHERE {' AND '.join(where)}" if where else "")
        return [rollup_bucket(r) for r in await self._fetch(sql + queries.ROLLUPS_ORDER, params)]
