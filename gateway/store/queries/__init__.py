"""The store's SQL, by name: here what every dialect spells the same way, in
:mod:`.sqlite` and :mod:`.postgres` what differs.

Shared statements use ``?`` placeholders; the PostgreSQL backend numbers them
(``gateway.store.core.numbered``). None holds a ``?`` anywhere else. Statements that depend on a
call's arguments are assembled from these pieces where they are used.
"""

from __future__ import annotations

# Column order matches the positional fields of base.Delivery (see core.delivery()).
DELIVERY_COLS = (
    "id, record_id, group_key, integration, state, attempts, next_attempt_at, created_at, "
    "updated_at, lease_owner, lease_expires_at, last_error, last_status, delivered_at"
)


def delivery_cols(alias: str) -> str:
    """DELIVERY_COLS qualified by a table alias."""
    return ", ".join(f"{alias}.{c.strip()}" for c in DELIVERY_COLS.split(","))


# Matches base.IdempotencyEntry (core.idempotency_entry()).
IDEM_COLS = "access_key_id, key, request_hash, status, response, created_at, expires_at"
# Matches base.AccessKey (core.access_key()).
KEY_COLS = (
    "access_key_id, secret_ciphertext, groups, name, created_at, revoked_at, rate_limit, rate_burst"
)
RECORD_INSERT_COLS = "id, group_key, access_key_id, data, received_at, mapping_version"
# state, attempts and the lease columns take their defaults (pending, 0, NULL): fewer bound
# parameters per row on the hottest insert.
DELIVERY_INSERT_COLS = (
    "id, record_id, group_key, integration, next_attempt_at, created_at, updated_at"
)
# Matches base.Attempt.
ATTEMPT_COLS = "delivery_id, started_at, duration_ms, status, error, mapping_version, link"
# Matches base.Link (core.link()).
LINK_COLS = "group_key, integration, link_key, external_id, delivery_id, created_at, updated_at"

# gateway.ids.record_id(): this prefix, then the creation time in milliseconds as 12 hex
# digits, then random digits.
RECORD_ID_PREFIX = "rec_"

SELECT_IDEM = (
    f"SELECT {IDEM_COLS} FROM idempotency_keys "
    "WHERE access_key_id = ? AND key = ? AND expires_at > ?"
)
SELECT_RECORD = f"SELECT {RECORD_INSERT_COLS} FROM records WHERE id = ?"
SELECT_RECORD_DELIVERIES = (
    f"SELECT {DELIVERY_COLS} FROM deliveries WHERE record_id = ? ORDER BY integration, id"
)
SELECT_DELIVERIES = f"SELECT {DELIVERY_COLS} FROM deliveries"
SELECT_DELIVERY = f"SELECT {DELIVERY_COLS} FROM deliveries WHERE id = ?"
LIST_ATTEMPTS = f"SELECT {ATTEMPT_COLS} FROM attempts WHERE delivery_id = ? ORDER BY id"

# Links: followed by conditions built in core.list_links() / core.get_links().
SELECT_LINKS = f"SELECT {LINK_COLS} FROM links"
# A link keeps its first created_at; the delivery that wrote it last and when are updated.
UPSERT_LINK = (
    f"INSERT INTO links ({LINK_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (group_key, integration, link_key) DO UPDATE SET "
    "external_id = excluded.external_id, delivery_id = excluded.delivery_id, "
    "updated_at = excluded.updated_at"
)
DELETE_LINK = "DELETE FROM links WHERE group_key = ? AND integration = ? AND link_key = ?"

INSERT_ACCESS_KEY = f"INSERT INTO access_keys ({KEY_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
SELECT_ACCESS_KEY = f"SELECT {KEY_COLS} FROM access_keys WHERE access_key_id = ?"
LIST_ACCESS_KEYS = f"SELECT {KEY_COLS} FROM access_keys ORDER BY created_at, access_key_id"
# Keeps the earliest time: revoking a key that a rotation set to expire later ends it now;
# revoking an already revoked key changes nothing. Parameters: at, at, access_key_id.
REVOKE_ACCESS_KEY = (
    "UPDATE access_keys SET revoked_at = CASE WHEN revoked_at IS NULL OR revoked_at > ? "
    "THEN ? ELSE revoked_at END WHERE access_key_id = ?"
)

# The management API's history (migration 0003). Matches base.MappingVersion.
VERSION_COLS = "group_key, number, version, content, created_at, actor, action"
INSERT_MAPPING_VERSION = (
    f"INSERT INTO mapping_versions ({VERSION_COLS}) "
    # Cast: in INSERT ... SELECT, PostgreSQL cannot infer a parameter's type from the column.
    "SELECT CAST(? AS TEXT), coalesce(max(number), 0) + 1, CAST(? AS TEXT), CAST(? AS TEXT), "
    "CAST(? AS DOUBLE PRECISION), CAST(? AS TEXT), CAST(? AS TEXT) FROM mapping_versions "
    "WHERE group_key = ?"
)
LIST_MAPPING_VERSIONS = (
    f"SELECT {VERSION_COLS} FROM mapping_versions WHERE group_key = ? ORDER BY number"
)
SELECT_MAPPING_VERSION = (
    f"SELECT {VERSION_COLS} FROM mapping_versions WHERE group_key = ? AND number = ?"
)
LATEST_MAPPING_VERSION = (
    f"SELECT {VERSION_COLS} FROM mapping_versions WHERE group_key = ? ORDER BY number DESC LIMIT 1"
)
# Matches base.AuditEntry.
AUDIT_COLS = "id, at, actor, action, target, detail"
INSERT_AUDIT = "INSERT INTO audit_log (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)"
LIST_AUDIT = f"SELECT {AUDIT_COLS} FROM audit_log WHERE id > ? ORDER BY id LIMIT ?"
# Matches base.AdminToken (core.admin_token()).
TOKEN_COLS = "token_id, secret_hash, role, groups, name, created_at, revoked_at"
INSERT_ADMIN_TOKEN = f"INSERT INTO admin_tokens ({TOKEN_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
SELECT_ADMIN_TOKEN = f"SELECT {TOKEN_COLS} FROM admin_tokens WHERE token_id = ?"
LIST_ADMIN_TOKENS = f"SELECT {TOKEN_COLS} FROM admin_tokens ORDER BY created_at, token_id"
REVOKE_ADMIN_TOKEN = (
    "UPDATE admin_tokens SET revoked_at = coalesce(revoked_at, ?) WHERE token_id = ?"
)

# Followed by the optional lane conditions of core.reschedule_query().
RESCHEDULE_LANE = (
    "UPDATE deliveries SET next_attempt_at = ?, updated_at = ? "
    "WHERE state = 'pending' AND group_key = ? AND integration = ? "
    "AND (lease_owner IS NULL OR lease_expires_at <= ?)"
)
PAUSE_LANE = (
    "INSERT INTO paused_lanes (group_key, integration, paused_at) VALUES (?, ?, ?) "
    "ON CONFLICT DO NOTHING"
)
RESUME_LANE = "DELETE FROM paused_lanes WHERE group_key = ? AND integration = ?"
LIST_PAUSED_LANES = "SELECT group_key, integration FROM paused_lanes"

SCHEMA_MIGRATIONS_VERSIONS = "SELECT version FROM schema_migrations"
INSERT_SCHEMA_MIGRATION = (
    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)"
)

# -- per-key ordering (options.ordering_key) ---------------------------------------------------
# Ordered deliveries carry their key and whether they hold it when dead (ordering_on_dead:
# block); unordered ones take the columns' defaults (NULL, 0) through DELIVERY_INSERT_COLS, so
# the hot insert is unchanged for lanes without ordering.
ORDERED_DELIVERY_INSERT_COLS = DELIVERY_INSERT_COLS + ", ordering_key, ordering_block"


def holds(alias: str) -> str:
    """A delivery that holds its key: every later one of its lane and key waits. Spelled as
    the partial index deliveries_key_holders (migration 0004_ordering), so planners use it."""
    a = alias
    return f"({a}.state = 'pending' OR ({a}.state = 'dead' AND {a}.ordering_block = 1))"


HOLDS_KEY = holds("e")


def is_head(outer: str) -> str:
    """The claim condition of per-key ordering, on the delivery ``outer`` (a table name or
    alias): unordered, or no earlier delivery of its lane and key holds the key. Earlier is
    record order: ``created_at`` (the record's ``received_at``), ties by id."""
    d = outer
    return (
        f"({d}.ordering_key IS NULL OR NOT EXISTS (SELECT 1 FROM deliveries e "
        f"WHERE e.group_key = {d}.group_key AND e.integration = {d}.integration "
        f"AND e.ordering_key = {d}.ordering_key AND {HOLDS_KEY} "
        f"AND (e.created_at, e.id) < ({d}.created_at, {d}.id)))"
    )


# Parking: a pending ordered delivery that is not the head of its key is moved out of the due
# range (next_attempt_at = PARKED_AT) when a claim walks past it, so later claims do not walk
# past it again (a claim otherwise rereads the whole backlog of keys in flight each time). The
# delivery settling its key's head brings the next one back (UNPARK_NEXT, same transaction),
# and a periodic sweep (UNPARK_HEADS) catches any a race between processes left parked.
# Seconds since the epoch: never due (year 8307), yet a date every datetime can show.
PARKED_AT = 2.0e11
_ORDERED_PENDING = "d.ordering_key IS NOT NULL AND " + holds("d") + " AND d.state = 'pending' "
# A parked delivery comes back due since it was received (created_at): it was held, not
# failing, and the oldest due go first.


# Parking what a claim passed over: due, unleased, not the head of its key. It walks the due
# range (deliveries_due) as the claim did, so it costs at most what that claim cost, and only
# runs after a claim that came back short (one that walked the whole due range). Parameters:
# now (due), now (lease).
PARK_FOLLOWERS = (
    f"UPDATE deliveries SET next_attempt_at = {PARKED_AT:.0f} WHERE id IN (SELECT d.id "
    f"FROM deliveries d WHERE {_ORDERED_PENDING}AND d.next_attempt_at <= ? "
    "AND (d.lease_expires_at IS NULL OR d.lease_expires_at <= ?) AND NOT " + is_head("d") + ")"
)
# The sweep brings back every parked delivery that heads its key (no parameters).
UNPARK_HEADS = (
    "UPDATE deliveries SET next_attempt_at = created_at WHERE id IN (SELECT d.id FROM "
    f"deliveries d WHERE {_ORDERED_PENDING}AND d.next_attempt_at >= {PARKED_AT:.0f} AND "
    + is_head("d")
    + ")"
)


def unpark_next(settled: str) -> str:
    """Bring back the next delivery of the key of each settled delivery (``settled``: a
    condition on ``s.id``, the dialect's way of saying "one of these ids"), if it is parked and
    now the head. Parameters: ``settled``'s."""
    return (
        "UPDATE deliveries SET next_attempt_at = created_at WHERE state = 'pending' "
        f"AND next_attempt_at >= {PARKED_AT:.0f} AND id IN (SELECT (SELECT e.id FROM "
        "deliveries e WHERE e.group_key = s.group_key AND e.integration = s.integration "
        f"AND e.ordering_key = s.ordering_key AND {HOLDS_KEY} ORDER BY e.created_at, e.id "
        f"LIMIT 1) FROM deliveries s WHERE s.ordering_key IS NOT NULL AND {settled})"
    )


# Keys held by a dead delivery (ordering_on_dead: block): per lane and key, the oldest dead
# delivery and how many deliveries of the key wait behind it. Parameter: a row limit.
BLOCKED_KEYS = (
    "SELECT e.group_key, e.integration, e.ordering_key, e.record_id, e.id, e.created_at, "
    "(SELECT count(*) FROM deliveries w WHERE w.group_key = e.group_key "
    "AND w.integration = e.integration AND w.ordering_key = e.ordering_key "
    "AND w.state = 'pending') "
    "FROM deliveries e WHERE e.ordering_key IS NOT NULL AND " + HOLDS_KEY + " "
    "AND e.state = 'dead' AND NOT EXISTS (SELECT 1 FROM deliveries f "
    "WHERE f.group_key = e.group_key AND f.integration = e.integration "
    "AND f.ordering_key = e.ordering_key AND f.state = 'dead' AND f.ordering_block = 1 "
    "AND (f.created_at, f.id) < (e.created_at, e.id)) "
    "ORDER BY e.group_key, e.integration, e.created_at, e.id LIMIT ?"
)


# -- rollups (core.rollup_absorb_steps / rollup_close_steps) ----------------------------------
ROLLUP_COLS = (
    "group_key, integration, bucket_key, window_start, seq, window_end, close_at, state, "
    "by_values, sums, records, opened_at, updated_at, delivery_id"
)
ROLLUP_IS_REPORT = "SELECT 1 FROM rollup_buckets WHERE delivery_id = ?"
# A delivery of a rollup lane is done once its record is in a bucket: in the same transaction.
ROLLUP_DELIVERED = (
    "UPDATE deliveries SET state = 'delivered', attempts = attempts + 1, next_attempt_at = ?, "
    "delivered_at = ?, last_error = NULL, last_status = NULL, lease_owner = NULL, "
    "lease_expires_at = NULL, updated_at = ? "
    "WHERE id = ? AND lease_owner = ? AND state = 'pending'"
)
ROLLUP_DEAD = (
    "UPDATE deliveries SET state = 'dead', attempts = attempts + 1, next_attempt_at = ?, "
    "last_error = ?, last_status = NULL, lease_owner = NULL, lease_expires_at = NULL, "
    "updated_at = ? WHERE id = ? AND lease_owner = ? AND state = 'pending'"
)
# The latest bucket of a key and window (the dialects add their row lock).
ROLLUP_LATEST = (
    "SELECT seq, state, sums FROM rollup_buckets WHERE group_key = ? AND integration = ? "
    "AND bucket_key = ? AND window_start = ? ORDER BY seq DESC LIMIT 1"
)
# A concurrent opener of the same bucket wins; the caller reads the latest bucket again.
ROLLUP_OPEN = (
    "INSERT INTO rollup_buckets (group_key, integration, bucket_key, window_start, seq, "
    "window_end, close_at, state, by_values, sums, records, opened_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, 'open', ?, '{}', 0, ?, ?) ON CONFLICT DO NOTHING"
)
ROLLUP_ADD = (
    "UPDATE rollup_buckets SET sums = ?, records = records + 1, updated_at = ? "
    "WHERE group_key = ? AND integration = ? AND bucket_key = ? AND window_start = ? "
    "AND seq = ? AND state = 'open'"
)
ROLLUP_DUE_COLS = (
    "group_key, integration, bucket_key, window_start, seq, window_end, by_values, sums, records"
)
ROLLUP_ANY_DUE = "SELECT 1 FROM rollup_buckets WHERE state = 'open' AND close_at <= ? LIMIT 1"
ROLLUP_SENT = (
    "UPDATE rollup_buckets SET state = 'sent', delivery_id = ?, updated_at = ? "
    "WHERE group_key = ? AND integration = ? AND bucket_key = ? AND window_start = ? AND seq = ?"
)
INSERT_RECORD_ROW = f"INSERT INTO records ({RECORD_INSERT_COLS}) VALUES (?, ?, ?, ?, ?, ?)"
INSERT_DELIVERY_ROW = (
    f"INSERT INTO deliveries ({DELIVERY_INSERT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
SELECT_ROLLUPS = f"SELECT {ROLLUP_COLS} FROM rollup_buckets"
ROLLUPS_ORDER = " ORDER BY group_key, integration, window_start, bucket_key, seq"
