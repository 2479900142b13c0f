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
