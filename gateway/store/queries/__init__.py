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
ATTEMPT_COLS = "delivery_id, started_at, duration_ms, status, error, mapping_version"

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

INSERT_ACCESS_KEY = f"INSERT INTO access_keys ({KEY_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
SELECT_ACCESS_KEY = f"SELECT {KEY_COLS} FROM access_keys WHERE access_key_id = ?"
LIST_ACCESS_KEYS = f"SELECT {KEY_COLS} FROM access_keys ORDER BY created_at, access_key_id"
REVOKE_ACCESS_KEY = (
    "UPDATE access_keys SET revoked_at = coalesce(revoked_at, ?) WHERE access_key_id = ?"
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
