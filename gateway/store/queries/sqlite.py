"""SQL only SQLite runs (``?`` placeholders, SQLite's functions and upserts)."""

from __future__ import annotations

from gateway.store import queries
from gateway.store.queries import (
    ATTEMPT_COLS,
    DELIVERY_INSERT_COLS,
    IDEM_COLS,
    ORDERED_DELIVERY_INSERT_COLS,
    RECORD_INSERT_COLS,
    delivery_cols,
    unpark_next,
)

INSERT_RECORD = f"INSERT INTO records ({RECORD_INSERT_COLS}) VALUES (?, ?, ?, ?, ?, ?)"
INSERT_DELIVERY = f"INSERT INTO deliveries ({DELIVERY_INSERT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
INSERT_ORDERED_DELIVERY = (
    f"INSERT INTO deliveries ({ORDERED_DELIVERY_INSERT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# OR REPLACE: the writer has already checked that no *unexpired* entry holds the key, so a
# conflicting row can only be an expired one, which a new answer replaces.
INSERT_IDEM = f"INSERT OR REPLACE INTO idempotency_keys ({IDEM_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
# Every idempotency key of a whole group looked up in one statement: one statement per group
# rather than one per write keeps the writer thread's share of the GIL small under load.
SELECT_IDEM_MANY = (
    "SELECT i.access_key_id, i.key, i.request_hash, i.status, i.response, i.created_at, "
    "i.expires_at FROM json_each(?) AS j JOIN idempotency_keys AS i "
    "ON i.access_key_id = j.value ->> 0 AND i.key = j.value ->> 1 WHERE i.expires_at > ?"
)
PURGE_IDEM_CHUNK = (
    "DELETE FROM idempotency_keys WHERE rowid IN (SELECT rowid FROM idempotency_keys "
    "WHERE expires_at <= ? LIMIT ?)"
)

# Followed by the claim conditions (core.claim_where(prefix="d.")).
CLAIM_SELECT = (
    f"SELECT {delivery_cols('d')}, r.data, r.received_at, d.ordering_key FROM deliveries d "
    "JOIN records r ON r.id = d.record_id WHERE "
)
CLAIM_ORDER = " ORDER BY d.next_attempt_at, d.id LIMIT ?"
# A whole claim leased in one statement: the ids as a JSON array.
LEASE_MANY = (
    "UPDATE deliveries SET lease_owner = ?, lease_expires_at = ?, updated_at = ? "
    "WHERE id IN (SELECT value FROM json_each(?))"
)
UPDATE_DELIVERY = (
    "UPDATE deliveries SET state = ?, next_attempt_at = ?, last_error = ?, last_status = ?, "
    "attempts = attempts + ?, delivered_at = CASE WHEN ? THEN ? ELSE delivered_at END, "
    "lease_owner = NULL, lease_expires_at = NULL, updated_at = ? "
    "WHERE id = ? AND lease_owner = ?"
)
# UPDATE_DELIVERY for many deliveries in one statement ({values}: rows of eight parameters,
# then the time twice); RETURNING names those whose lease was still the updater's.
UPDATE_DELIVERIES_FROM = (
    "WITH u(id, owner, state, next_attempt_at, last_error, last_status, inc, delivered) AS "
    "(VALUES {values}) "
    "UPDATE deliveries SET state = u.state, next_attempt_at = u.next_attempt_at, "
    "last_error = u.last_error, last_status = u.last_status, attempts = attempts + u.inc, "
    "delivered_at = CASE WHEN u.delivered THEN ? ELSE delivered_at END, "
    "lease_owner = NULL, lease_expires_at = NULL, updated_at = ? "
    "FROM u WHERE deliveries.id = u.id AND deliveries.lease_owner = u.owner "
    "RETURNING deliveries.id"
)
INSERT_ATTEMPT = f"INSERT INTO attempts ({ATTEMPT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
# Per-key ordering: the settled deliveries' keys' next ones, if parked (queries.unpark_next).
UNPARK_NEXT = unpark_next("s.id IN (SELECT value FROM json_each(?))")
# Gives a lease back unsent: no attempt, state and last error untouched.
RELEASE_DELIVERY = (
    "UPDATE deliveries SET next_attempt_at = ?, lease_owner = NULL, lease_expires_at = NULL, "
    "updated_at = ? WHERE id = ? AND lease_owner = ?"
)
REPLAY_BY_IDS = (
    "SELECT id FROM deliveries WHERE id IN (SELECT value FROM json_each(?)) "
    "AND (state = 'dead' OR state = 'delivered') ORDER BY id LIMIT ?"
)
# The state guard repeats the SELECT's, so a replay can never reset a pending delivery.
REPLAY_DELIVERY = (
    "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?, "
    "delivered_at = NULL, lease_owner = NULL, lease_expires_at = NULL, updated_at = ? "
    "WHERE id = ? AND (state = 'dead' OR state = 'delivered')"
)
# Literal states: the pending side is one ordered walk of deliveries_lane_due (grouped by its
# leading columns, so no sort), the dead side a scan of deliveries_dead. Neither touches
# delivered rows, however many pile up. Rows as core.merge_lanes() takes them.
LANE_STATS = (
    "SELECT group_key, integration, count(*), coalesce(sum(next_attempt_at <= ?), 0), "
    "min(created_at), 0 FROM deliveries WHERE state = 'pending' GROUP BY group_key, integration",
    "SELECT group_key, integration, 0, 0, NULL, count(*) FROM deliveries "
    "WHERE state = 'dead' GROUP BY group_key, integration",
)
# Oldest first (primary-key order), so the records past the retention go in the order they
# arrived. `state = 'pending' OR state = 'dead'` is spelled out (not `!= 'delivered'`) to state
# what keeps a record; deliveries_record finds its deliveries.
PURGE_DELIVERED = (
    "DELETE FROM records WHERE id IN (SELECT r.id FROM records r "
    "WHERE r.id < ? AND r.received_at < ? AND NOT EXISTS ("
    "SELECT 1 FROM deliveries d WHERE d.record_id = r.id "
    "AND (d.state = 'pending' OR d.state = 'dead')) "
    "ORDER BY r.id LIMIT ?)"
)
SCHEMA_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at REAL NOT NULL
)
"""
# At the start of the one delivering process: every other owner's lease is stale.
RELEASE_FOREIGN_LEASES = (
    "UPDATE deliveries SET lease_owner = NULL, lease_expires_at = NULL, updated_at = ? "
    "WHERE state = 'pending' AND lease_owner IS NOT NULL AND lease_owner <> ?"
)

# Rollups: SQLite has one writer, so a plain read inside BEGIN IMMEDIATE is already exclusive.
ROLLUP_LATEST = queries.ROLLUP_LATEST
ROLLUP_DUE = (
    f"SELECT {queries.ROLLUP_DUE_COLS} FROM rollup_buckets WHERE state = 'open' "
    "AND close_at <= ? ORDER BY close_at LIMIT ?"
)
