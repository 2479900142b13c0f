-- The management API's history (issue 14). Applied by gateway.store.migrations inside one
-- transaction; never edit a released migration, add a new numbered file instead.

-- Every version of every mapping file: its whole text, when, by whom, and how it came
-- (create, update, rollback, clone, delete, or "file" when a hand edit was noticed).
-- number counts 1, 2, 3, ... per group; version is the content hash deliveries record.
CREATE TABLE mapping_versions (
    group_key  TEXT NOT NULL,
    number     INTEGER NOT NULL,
    version    TEXT NOT NULL,
    content    TEXT NOT NULL,
    created_at REAL NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    PRIMARY KEY (group_key, number)
) WITHOUT ROWID;

-- Who changed what: mapping changes and key operations, newest last. detail is a JSON object
-- (never a secret).
CREATE TABLE audit_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         REAL NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL,
    detail     TEXT NOT NULL
);

-- Scoped admin tokens (besides GATEWAY_ADMIN_TOKEN): only a SHA-256 of the secret is kept.
-- role is read, write or admin; groups a JSON array of group keys, NULL for every group.
CREATE TABLE admin_tokens (
    token_id    TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    role        TEXT NOT NULL,
    groups      TEXT,
    name        TEXT,
    created_at  REAL NOT NULL,
    revoked_at  REAL
) WITHOUT ROWID;
