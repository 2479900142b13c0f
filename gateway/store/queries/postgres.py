"""SQL only PostgreSQL runs (``$n`` placeholders, arrays, data-modifying CTEs, row locks)."""

from __future__ import annotations

from gateway.store import queries
from gateway.store.queries import (
    DELIVERY_INSERT_COLS,
    IDEM_COLS,
    ORDERED_DELIVERY_INSERT_COLS,
    RECORD_INSERT_COLS,
    delivery_cols,
    unpark_next,
)

SELECT_IDEM_MANY = (
    "SELECT i.access_key_id, i.key, i.request_hash, i.status, i.response, i.created_at, "
    "i.expires_at FROM unnest($1::text[], $2::text[]) AS k(a, k) "
    "JOIN idempotency_keys AS i ON i.access_key_id = k.a AND i.key = k.k "
    "WHERE i.expires_at > $3"
)
# One statement for a whole group: records, their deliveries (state, attempts and lease take
# their defaults) and the idempotency entries. An entry replaces only an expired one; the keys
# it wrote come back, so a key taken meanwhile by another process is noticed.
INSERT_GROUP = (
    f"WITH r AS (INSERT INTO records ({RECORD_INSERT_COLS}) "
    "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], "
    "$5::float8[], $6::text[])), "
    f"d AS (INSERT INTO deliveries ({DELIVERY_INSERT_COLS}) "
    "SELECT x.id, x.rid, x.g, x.i, x.t, x.t, $12 FROM unnest("
    "$7::text[], $8::text[], $9::text[], $10::text[], $11::float8[]) AS x(id, rid, g, i, t)) "
    f"INSERT INTO idempotency_keys ({IDEM_COLS}) SELECT * FROM unnest($13::text[], "
    "$14::text[], $15::text[], $16::int[], $17::bytea[], $18::float8[], $19::float8[]) "
    "ON CONFLICT (access_key_id, key) DO UPDATE SET request_hash = excluded.request_hash, "
    "status = excluded.status, response = excluded.response, created_at = excluded.created_at, "
    "expires_at = excluded.expires_at WHERE idempotency_keys.expires_at <= $12 "
    "RETURNING access_key_id, key"
)
# Ordered deliveries (per-key ordering), inserted beside INSERT_GROUP only when a group has
# any, so groups without ordering run exactly the statement they ran before.
INSERT_ORDERED_DELIVERIES = (
    f"INSERT INTO deliveries ({ORDERED_DELIVERY_INSERT_COLS}) "
    "SELECT x.id, x.rid, x.g, x.i, x.t, x.t, $6, x.k, x.b FROM unnest("
    "$1::text[], $2::text[], $3::text[], $4::text[], $5::float8[], $7::text[], $8::int[]) "
    "AS x(id, rid, g, i, t, k, b)"
)
PURGE_IDEM_CHUNK = (
    "DELETE FROM idempotency_keys WHERE (access_key_id, key) IN (SELECT access_key_id, "
    "key FROM idempotency_keys WHERE expires_at <= ? LIMIT ? FOR UPDATE SKIP LOCKED)"
)

# claim_deliveries: {where} is core.claim_where() numbered from $5 ($1 now, $2 limit, $3 owner,
# $4 lease expiry).
CLAIM = (
    "WITH c AS (SELECT id FROM deliveries WHERE {where} "
    "ORDER BY next_attempt_at, id LIMIT $2 FOR UPDATE SKIP LOCKED), "
    "u AS (UPDATE deliveries AS d SET lease_owner = $3, lease_expires_at = $4, "
    f"updated_at = $1 FROM c WHERE d.id = c.id RETURNING {delivery_cols('d')}, d.ordering_key) "
    f"SELECT {delivery_cols('u')}, r.data, r.received_at, u.ordering_key FROM u "
    "JOIN records AS r ON r.id = u.record_id ORDER BY u.next_attempt_at, u.id"
)
# The updates whose lease is still held, and the attempts of those, in one statement.
UPDATE_DELIVERIES = (
    "WITH u AS (UPDATE deliveries AS d SET state = x.state, next_attempt_at = x.next, "
    "last_error = x.err, last_status = x.status, attempts = d.attempts + x.inc, "
    "delivered_at = CASE WHEN x.delivered THEN $9 ELSE d.delivered_at END, "
    "lease_owner = NULL, lease_expires_at = NULL, updated_at = $9 "
    "FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::text[], $6::int[], "
    "$7::int[], $8::bool[]) AS x(id, owner, state, next, err, status, inc, delivered) "
    "WHERE d.id = x.id AND d.lease_owner = x.owner RETURNING d.id), "
    "a AS (INSERT INTO attempts (delivery_id, started_at, duration_ms, status, error, "
    "mapping_version, link) SELECT y.did, y.started, y.ms, y.status, y.err, y.mv, y.link "
    "FROM unnest($10::text[], $11::float8[], $12::float8[], $13::int[], $14::text[], "
    "$15::text[], $16::text[]) WITH ORDINALITY AS y(did, started, ms, status, err, mv, link, n) "
    "WHERE y.did IN (SELECT id FROM u) ORDER BY y.n) "
    "SELECT count(*) FROM u"
)
# Per-key ordering: the settled deliveries' keys' next ones, if parked (queries.unpark_next).
UNPARK_NEXT = unpark_next("s.id = ANY(?::text[])")
# After UPDATE_DELIVERIES in the same transaction: which of the given deliveries that update
# marked delivered (it set updated_at to $2 and released the lease), so only those write links.
DELIVERED_NOW = (
    "SELECT id FROM deliveries WHERE id = ANY($1::text[]) AND state = 'delivered' "
    "AND updated_at = $2 AND lease_owner IS NULL"
)
RELEASE_DELIVERIES = (
    "UPDATE deliveries SET next_attempt_at = ?, lease_owner = NULL, lease_expires_at = NULL, "
    "updated_at = ? WHERE id = ANY(?::text[]) AND lease_owner = ?"
)
# replay_deliveries: {where} selects the candidates (parameters: now twice, the selection's,
# the limit); the state guard is checked again on the locked rows.
REPLAY = (
    "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?, "
    "delivered_at = NULL, lease_owner = NULL, lease_expires_at = NULL, updated_at = ? "
    "WHERE id IN (SELECT id FROM deliveries WHERE {where} ORDER BY id LIMIT ? FOR UPDATE) "
    "AND (state = 'dead' OR state = 'delivered') RETURNING id"
)
REPLAY_IDS = "id = ANY(?::text[])"
# One statement, so one snapshot; rows as core.merge_lanes() takes them.
LANE_STATS = (
    "SELECT group_key, integration, count(*), count(*) FILTER (WHERE next_attempt_at <= ?), "
    "min(created_at), 0::bigint FROM deliveries WHERE state = 'pending' "
    "GROUP BY group_key, integration "
    "UNION ALL "
    "SELECT group_key, integration, 0, 0, NULL, count(*) "
    "FROM deliveries WHERE state = 'dead' GROUP BY group_key, integration",
)
_UNFINISHED = (
    "EXISTS (SELECT 1 FROM deliveries AS d WHERE d.record_id = r.id "
    "AND (d.state = 'pending' OR d.state = 'dead'))"
)
PURGE_CANDIDATES = (
    "SELECT r.id FROM records AS r WHERE r.id < $1 AND r.received_at < $2 "
    f"AND NOT {_UNFINISHED} ORDER BY r.id LIMIT $3 FOR UPDATE OF r SKIP LOCKED"
)
PURGE_LOCK_DELIVERIES = (
    "SELECT 1 FROM deliveries WHERE record_id = ANY($1::text[]) ORDER BY id FOR UPDATE"
)
PURGE_RECORDS = f"DELETE FROM records AS r WHERE r.id = ANY($1::text[]) AND NOT {_UNFINISHED}"

# pg_advisory_xact_lock key serialising migrations ("gw_migr" in ASCII).
MIGRATION_LOCK = 0x67775F6D69677200
LOCK_MIGRATIONS = "SELECT pg_advisory_xact_lock($1)"
SCHEMA_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at double precision NOT NULL
)
"""

# Rollups: the bucket row is locked so two processes adding to it (or one closing it) take
# turns; the closer skips buckets someone is adding to (it comes back on its next round).
ROLLUP_LATEST = queries.ROLLUP_LATEST + " FOR UPDATE"
ROLLUP_DUE = (
    f"SELECT {queries.ROLLUP_DUE_COLS} FROM rollup_buckets WHERE state = 'open' "
    "AND close_at <= ? ORDER BY close_at LIMIT ? FOR UPDATE SKIP LOCKED"
)
