"""The store interface: what every backend (SQLite, PostgreSQL) provides.

The store holds records, their deliveries (one per integration), delivery attempts, access keys
and idempotency keys. Writes from ingest go through :meth:`Store.commit_ingest`, which backends
implement with *group commit*: concurrent callers share one transaction and each call returns only
after the transaction holding its write is durably committed. The delivery engine uses
claim-with-lease (:meth:`Store.claim_deliveries`) and batched state updates
(:meth:`Store.update_deliveries`); operators list with cursor pagination.

Both backends build on ``gateway.store.core`` (the group-commit queue, the shared reads, row
mapping and cursors), each adding its connection and its dialect's SQL
(``gateway.store.queries``). All times are float seconds since the Unix epoch (UTC).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, TypeVar

T = TypeVar("T")


class StoreError(Exception):
    """Base of the store's errors."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or written (disk full, database down). Answer 503."""


class StoreOverloaded(StoreError):
    """Too many writes are waiting for a commit; shed load (503 with Retry-After)."""


class DeliveryState(StrEnum):
    """Where a delivery is in its life."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


@dataclass(slots=True)
class NewRecord:
    """A record accepted at ingest, with the integrations it fans out to (one delivery each)."""

    id: str
    group_key: str
    access_key_id: str
    data_json: bytes  # the record's flat data, serialised once at ingest
    received_at: float
    integrations: list[str] = field(default_factory=list)
    delivery_ids: list[str] = field(default_factory=list)  # same length as integrations
    mapping_version: str | None = None
    # Per-key ordering: empty when no delivery is ordered; else, per integration, None or
    # (ordering key, whether a dead delivery holds the key) (gateway.delivery.ordering).
    ordering: list[tuple[str, bool] | None] = field(default_factory=list)


@dataclass(slots=True)
class IdempotencyEntry:
    """A remembered answer, keyed per access key.

    ``key`` is the client's ``Idempotency-Key`` header, or ``sig:<signature>`` for replay
    protection of signed requests. ``request_hash`` identifies the request the answer belongs
    to, so the same key with another body can be told apart (409).
    """

    access_key_id: str
    key: str
    request_hash: str
    status: int
    response: bytes
    created_at: float
    expires_at: float


@dataclass(slots=True)
class IngestWrite:
    """One caller's unit of work for a group commit: records plus their idempotency entries."""

    records: list[NewRecord]
    idempotency: list[IdempotencyEntry] = field(default_factory=list)


@dataclass(slots=True)
class IngestResult:
    """What happened to an :class:`IngestWrite`.

    ``replay`` is set (and nothing was written) when one of the write's idempotency keys was
    already stored and unexpired; it holds that stored entry.
    """

    committed: bool
    replay: IdempotencyEntry | None = None


@dataclass(slots=True)
class AccessKey:
    """A producer's access key. The secret is stored encrypted (see gateway.auth.keys)."""

    access_key_id: str
    secret_ciphertext: bytes
    groups: list[str]
    name: str | None
    created_at: float
    revoked_at: float | None = None
    rate_limit: float | None = None  # requests per second; None: the server default
    rate_burst: int | None = None


@dataclass(slots=True)
class Delivery:
    """One record's delivery to one integration."""

    id: str
    record_id: str
    group_key: str
    integration: str
    state: DeliveryState
    attempts: int
    next_attempt_at: float
    created_at: float
    updated_at: float
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    last_error: str | None = None
    last_status: int | None = None
    delivered_at: float | None = None
    ordering_key: str | None = None  # set on claimed deliveries (per-key ordering)


@dataclass(slots=True)
class ClaimedDelivery:
    """A delivery claimed under a lease, with what sending needs of its record."""

    delivery: Delivery
    data_json: bytes
    received_at: float


@dataclass(slots=True)
class Attempt:
    """One delivery attempt, recorded for status and audit."""

    delivery_id: str
    started_at: float
    duration_ms: float
    status: int | None
    error: str | None
    mapping_version: str | None
    link: str | None = None  # the link this attempt wrote or forgot, e.g. "a@b.se -> lic_1"


@dataclass(slots=True)
class Link:
    """What an integration called a record's subject: (group, integration, link key) ->
    ``external_id`` (a licence id, a contact id), set by the delivery that created it."""

    group_key: str
    integration: str
    link_key: str
    external_id: str
    delivery_id: str | None
    created_at: float
    updated_at: float


@dataclass(slots=True)
class LinkWrite:
    """A link to store with a delivered update: ``external_id`` None forgets the link (the
    integration deleted what it named)."""

    group_key: str
    integration: str
    link_key: str
    external_id: str | None

    def describe(self) -> str:
        """The link as the attempt history shows it."""
        return f"{self.link_key} -> {self.external_id if self.external_id else '(forgotten)'}"


@dataclass(slots=True)
class LinkFilter:
    """Which links to list. Every field set narrows the result."""

    group_key: str | None = None
    integration: str | None = None
    link_key: str | None = None


@dataclass(slots=True)
class DeliveryUpdate:
    """A state change for a delivery held under ``lease_owner``'s lease.

    Applied only while the lease is still that owner's, so a worker whose lease expired cannot
    overwrite the work of the one that took over. The lease is released.
    """

    delivery_id: str
    lease_owner: str
    state: DeliveryState
    next_attempt_at: float
    last_error: str | None = None
    last_status: int | None = None
    attempt: Attempt | None = None
    ordered: bool = False  # the delivery has an ordering key (its settling frees the next)
    # Written in the same transaction when the update marks the delivery delivered and still
    # holds the lease (ignored otherwise).
    link: LinkWrite | None = None


@dataclass(slots=True)
class StoredRecord:
    """A record as stored, with its deliveries."""

    id: str
    group_key: str
    access_key_id: str
    data_json: bytes
    received_at: float
    mapping_version: str | None
    deliveries: list[Delivery]


@dataclass(slots=True)
class DeliveryFilter:
    """Which deliveries to list. Every field set narrows the result."""

    state: DeliveryState | None = None
    group_key: str | None = None
    integration: str | None = None
    created_after: float | None = None
    created_before: float | None = None


@dataclass(slots=True)
class LaneStats:
    """Where one lane (group, integration) stands in the store."""

    group_key: str
    integration: str
    pending: int  # pending deliveries, due or not
    due: int  # pending ones with next_attempt_at <= now
    dead: int
    oldest_pending_at: float | None  # created_at of the oldest pending delivery


@dataclass(slots=True)
class MappingVersion:
    """One recorded version of a group's mapping file (the management API's history)."""

    group_key: str
    number: int  # 1, 2, 3, ... per group
    version: str  # the content hash, as deliveries record it
    content: str  # the file's whole text
    created_at: float
    actor: str  # "admin", "token:<id>", or "file" for a hand edit
    action: str  # create, update, rollback, clone, delete, file


@dataclass(slots=True)
class AuditEntry:
    """One change made through the management API (or noticed in the files)."""

    id: int
    at: float
    actor: str
    action: str
    target: str
    detail: str  # a JSON object, never a secret


@dataclass(slots=True)
class AdminToken:
    """A scoped admin token; only a hash of its secret is stored (see gateway.admin.tokens)."""

    token_id: str
    secret_hash: str
    role: str  # read, write, admin
    groups: list[str] | None  # None: every group
    name: str | None
    created_at: float
    revoked_at: float | None = None


@dataclass(slots=True)
class BlockedKey:
    """An ordering key held by a dead delivery (``ordering_on_dead: block``): its later
    deliveries wait until that one is replayed."""

    group_key: str
    integration: str
    ordering_key: str
    record_id: str  # the oldest dead record of the key
    delivery_id: str
    since: float  # that record's received_at
    waiting: int  # pending deliveries of the key behind it


@dataclass(slots=True)
class Page(Generic[T]):
    """One page of a listing; ``next_cursor`` is None on the last page."""

    items: list[T]
    next_cursor: str | None


@dataclass(slots=True)
class RollupAdd:
    """A claimed delivery of a rollup lane, to add to its bucket (see
    :meth:`Store.rollup_absorb`). ``error``: the record cannot be added (a sum that is not a
    number); its delivery becomes dead with this reason instead."""

    delivery_id: str
    lease_owner: str
    group_key: str
    integration: str
    by_values: dict[str, object]  # `by` attribute -> the record's value (None when missing)
    window_start: float
    window_end: float
    grace: float
    sums: dict[str, str]  # `sum` attribute -> exact decimal, as a string
    error: str | None = None


@dataclass(slots=True)
class RollupAbsorbed:
    """What :meth:`Store.rollup_absorb` did with each delivery."""

    added: list[str] = field(default_factory=list)  # in a bucket; the delivery is delivered
    reports: list[str] = field(default_factory=list)  # a bucket's report: send it
    dead: list[str] = field(default_factory=list)  # refused (RollupAdd.error)
    lost: list[str] = field(default_factory=list)  # no longer leased to the caller


@dataclass(slots=True)
class RollupBucket:
    """One bucket of a rollup lane: a key's sums in one window (``seq`` 0) or a correction
    of it (``seq`` 1, 2...)."""

    group_key: str
    integration: str
    by_values: dict[str, object]
    window_start: float
    window_end: float
    seq: int
    state: str  # open | sent
    sums: dict[str, str]
    records: int
    close_at: float
    delivery_id: str | None


class Store(abc.ABC):
    """The store interface. Every method may raise :class:`StoreUnavailable`."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, apply pending schema migrations, start background writers."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish every pending commit, then release the store."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the store answers a trivial query."""

    # -- ingest ---------------------------------------------------------------------------
    @abc.abstractmethod
    async def commit_ingest(self, write: IngestWrite) -> IngestResult:
        """Store records, their deliveries and idempotency entries atomically (group commit).

        Returns after the transaction holding this write is durably committed. If any of the
        write's idempotency keys already exists unexpired, writes nothing and returns that
        entry as ``replay``. Raises :class:`StoreOverloaded` instead of queueing without bound.
        """

    @abc.abstractmethod
    async def get_idempotency(
        self, access_key_id: str, key: str, now: float
    ) -> IdempotencyEntry | None:
        """The unexpired entry for ``key``, if any (a fast path before :meth:`commit_ingest`)."""

    @abc.abstractmethod
    async def purge_idempotency(self, now: float) -> int:
        """Delete expired idempotency entries; return how many."""

    @abc.abstractmethod
    def pending_writes(self) -> int:
        """Records waiting for a commit (for load shedding and metrics)."""

    # -- records --------------------------------------------------------------------------
    @abc.abstractmethod
    async def get_record(self, record_id: str) -> StoredRecord | None:
        """The record and its deliveries, or None."""

    # -- access keys ----------------------------------------------------------------------
    @abc.abstractmethod
    async def create_access_key(self, key: AccessKey) -> None:
        """Store a new access key."""

    @abc.abstractmethod
    async def get_access_key(self, access_key_id: str) -> AccessKey | None:
        """The key, revoked or not, or None."""

    @abc.abstractmethod
    async def list_access_keys(self) -> list[AccessKey]:
        """Every key, oldest first."""

    @abc.abstractmethod
    async def revoke_access_key(self, access_key_id: str, now: float) -> bool:
        """Mark the key revoked at ``now`` (or keep an earlier revocation time; a later one,
        set by a rotation, is brought forward); False when there is no such key."""

    # -- mapping versions and audit (the management API) ----------------------------------
    @abc.abstractmethod
    async def add_mapping_version(
        self, group_key: str, version: str, content: str, at: float, actor: str, action: str
    ) -> None:
        """Record the next version of a group's mapping file."""

    @abc.abstractmethod
    async def list_mapping_versions(self, group_key: str) -> list[MappingVersion]:
        """Every recorded version of the group's file, oldest first."""

    @abc.abstractmethod
    async def get_mapping_version(self, group_key: str, number: int) -> MappingVersion | None:
        """Version ``number`` of the group's file, or None."""

    @abc.abstractmethod
    async def latest_mapping_version(self, group_key: str) -> MappingVersion | None:
        """The newest recorded version of the group's file, or None."""

    @abc.abstractmethod
    async def add_audit(self, at: float, actor: str, action: str, target: str, detail: str) -> None:
        """Append one entry to the audit log."""

    @abc.abstractmethod
    async def list_audit(self, after: int = 0, limit: int = 100) -> list[AuditEntry]:
        """Audit entries with an id above ``after``, oldest first."""

    @abc.abstractmethod
    async def create_admin_token(self, token: AdminToken) -> None:
        """Store a new scoped admin token."""

    @abc.abstractmethod
    async def get_admin_token(self, token_id: str) -> AdminToken | None:
        """The token, revoked or not, or None."""

    @abc.abstractmethod
    async def list_admin_tokens(self) -> list[AdminToken]:
        """Every scoped admin token, oldest first."""

    @abc.abstractmethod
    async def revoke_admin_token(self, token_id: str, now: float) -> bool:
        """Mark the token revoked; False when there is no such token."""

    # -- deliveries -----------------------------------------------------------------------
    @abc.abstractmethod
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
        """Lease up to ``limit`` due pending deliveries (oldest due first) to ``owner``.

        Due: state pending, ``next_attempt_at <= now``, and no lease or an expired one.
        """

    @abc.abstractmethod
    async def update_deliveries(self, updates: list[DeliveryUpdate]) -> int:
        """Apply state changes in one transaction; return how many still held their lease."""

    @abc.abstractmethod
    async def list_deliveries(
        self, flt: DeliveryFilter, *, cursor: str | None = None, limit: int = 100
    ) -> Page[Delivery]:
        """Deliveries matching ``flt``, oldest first, one page at a time."""

    @abc.abstractmethod
    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        """One delivery by id, whatever its state, or None."""

    @abc.abstractmethod
    async def list_attempts(self, delivery_id: str) -> list[Attempt]:
        """Every recorded attempt of a delivery, oldest first."""

    @abc.abstractmethod
    async def release_deliveries(self, owner: str, ids: list[str], at: float) -> int:
        """Give leased deliveries back without an attempt: due again at ``at``, lease cleared,
        state, attempts and last error untouched. Only those still leased to ``owner``;
        returns how many."""

    #: True where only one process delivers from the store (SQLite): a lease held by another
    #: owner when the delivery engine starts belongs to a process that is gone.
    single_deliverer: bool = False

    async def release_foreign_leases(self, owner: str, now: float) -> int:
        """Clear the leases of pending deliveries held by any owner but ``owner`` (due as
        they were), so they are claimed at once; return how many. Only for a
        :attr:`single_deliverer` store, at the start of its one delivering process: anywhere
        else a lease is the rule and this refuses."""
        raise NotImplementedError("leases are only released at start where one process delivers")

    @abc.abstractmethod
    async def reschedule_lane(
        self,
        group_key: str,
        integration: str,
        *,
        at: float,
        only_earlier: bool,
        before: float | None = None,
    ) -> int:
        """Move the lane's unleased pending deliveries to ``at`` (with ``only_earlier``, only
        those due before ``at``: a deferral that never brings a retry forward; with
        ``before``, only those due before that time); return how many. One statement, for
        breaker openings and recoveries, pauses and resumes."""

    @abc.abstractmethod
    async def replay_deliveries(
        self,
        *,
        now: float,
        ids: list[str] | None = None,
        flt: DeliveryFilter | None = None,
        limit: int = 10000,
    ) -> list[str]:
        """Put dead (or, asked by ``flt.state``, delivered) deliveries back to pending, due
        ``now``, with ``attempts`` reset to 0 and ``delivered_at`` cleared (their attempt
        history stays). By ``ids`` (those that are dead or delivered; pending ones and
        unknown ids are skipped) or by ``flt`` (state defaults to dead), at most ``limit``.
        Returns the ids replayed."""

    @abc.abstractmethod
    async def lane_stats(self, now: float) -> list[LaneStats]:
        """Per lane with any pending or dead delivery: counts and the oldest pending."""

    async def unpark_heads(self, now: float) -> int:
        """Per-key ordering's safety net: make every parked delivery that is the head of its
        key due at ``now``; return how many."""
        return 0

    async def blocked_keys(self, limit: int = 1000) -> list[BlockedKey]:
        """Ordering keys held by a dead delivery, per lane, oldest first (at most ``limit``)."""
        return []

    @abc.abstractmethod
    async def set_lane_paused(
        self, group_key: str, integration: str, paused: bool, now: float
    ) -> bool:
        """Record a lane as paused or not (kept across restarts); True when it changed."""

    @abc.abstractmethod
    async def paused_lanes(self) -> set[tuple[str, str]]:
        """Every paused lane as (group_key, integration)."""

    # -- links --------------------------------------------------------------------------------
    @abc.abstractmethod
    async def get_links(
        self, group_key: str, integration: str, link_keys: list[str]
    ) -> dict[str, Link]:
        """The stored links of one integration entry for ``link_keys``, by link key (keys
        without a link are absent)."""

    @abc.abstractmethod
    async def list_links(
        self, flt: LinkFilter, *, cursor: str | None = None, limit: int = 100
    ) -> Page[Link]:
        """Links matching ``flt`` ordered by (group, integration, link key), one page at a
        time."""

    # -- rollups --------------------------------------------------------------------------
    async def rollup_absorb(self, adds: list[RollupAdd], now: float) -> RollupAbsorbed:
        """In one transaction, for each delivery still leased to its owner: a bucket's report
        is left alone (listed in ``reports``, to be sent); any other is added to the open
        bucket of its key and window (a correction bucket when that window's report is
        already made) and marked delivered, or marked dead when it carries an error."""
        raise NotImplementedError

    async def rollup_close_due(self, now: float, limit: int = 100) -> list[str]:
        """Turn up to ``limit`` open buckets whose close time has come into reports: each
        becomes a record and one pending delivery (its id returned), in one transaction."""
        raise NotImplementedError

    async def rollup_buckets(
        self, group_key: str | None = None, integration: str | None = None
    ) -> list[RollupBucket]:
        """The buckets (of one group / lane when given), by lane, window, key and seq."""
        raise NotImplementedError

    @abc.abstractmethod
    async def purge_delivered(self, before: float, limit: int = 5000) -> int:
        """Delete up to ``limit`` records received before ``before`` whose deliveries are all
        delivered (or that have none), with their deliveries and attempts. Dead and pending
        ones are kept. Returns how many records went."""
