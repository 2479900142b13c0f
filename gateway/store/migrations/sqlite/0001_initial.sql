-- Initial schema of the SQLite store. Applied by gateway.store.migrations inside one
-- transaction; never edit a released migration, add a new numbered file instead.

-- Records: large-ish rows (the data blob), so a rowid table; `id` is a ULID-based text key.
CREATE TABLE records (
    id              TEXT PRIMARY KEY,
    group_key       TEXT NOT NULL,
    access_key_id   TEXT NOT NULL,
    data            BLOB NOT NULL,
    received_at     REAL NOT NULL,
    mapping_version TEXT
);

-- Deliveries: small rows read and updated by key, so WITHOUT ROWID (one B-tree, not two).
-- Ids are ULIDs, so primary-key order is creation order (listing and pagination use it).
CREATE TABLE deliveries (
    id               TEXT PRIMARY KEY,
    record_id        TEXT NOT NULL REFERENCES records(id) ON DELETE CASCADE,
    group_key        TEXT NOT NULL,
    integration      TEXT NOT NULL,
    -- Spelled with OR, not IN (...): SQLite evaluates an IN list through a temporary
    -- table per row, which more than doubled the cost of inserting a delivery.
    state            TEXT NOT NULL DEFAULT 'pending'
                     CHECK (state = 'pending' OR state = 'delivered' OR state = 'dead'),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL,
    lease_owner      TEXT,
    lease_expires_at REAL,
    last_error       TEXT,
    last_status      INTEGER,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    delivered_at     REAL
) WITHOUT ROWID;

-- Claiming: only pending deliveries are ever claimed, so partial indexes keep delivered and
-- dead ones out of the claim path entirely (they stay small however much history piles up).
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending';
-- The dispatcher claims per lane (group, integration).
CREATE INDEX deliveries_lane_due ON deliveries (group_key, integration, next_attempt_at)
    WHERE state = 'pending';
-- Listing dead deliveries (rare, so a scan of the primary key would be slow) in id order.
-- Partial: a delivery enters it only when it dies, so ingest never pays for it. Listing
-- pending or delivered ones walks the primary key, where they are dense.
CREATE INDEX deliveries_dead ON deliveries (id) WHERE state = 'dead';
-- The foreign key's child side: get_record, ON DELETE CASCADE.
CREATE INDEX deliveries_record ON deliveries (record_id);

-- Attempts: append-only audit rows; the error text can be long, so a rowid table.
CREATE TABLE attempts (
    id              INTEGER PRIMARY KEY,
    delivery_id     TEXT NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,
    started_at      REAL NOT NULL,
    duration_ms     REAL NOT NULL,
    status          INTEGER,
    error           TEXT,
    mapping_version TEXT
);
CREATE INDEX attempts_delivery ON attempts (delivery_id, id);

CREATE TABLE access_keys (
    access_key_id     TEXT PRIMARY KEY,
    secret_ciphertext BLOB NOT NULL,
    groups            TEXT NOT NULL,  -- JSON array of group keys
    name              TEXT,
    created_at        REAL NOT NULL,
    revoked_at        REAL,
    rate_limit        REAL,
    rate_burst        INTEGER
) WITHOUT ROWID;

-- Idempotency answers; the response can be a whole batch answer, so a rowid table.
CREATE TABLE idempotency_keys (
    access_key_id TEXT NOT NULL,
    key           TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    status        INTEGER NOT NULL,
    response      BLOB NOT NULL,
    created_at    REAL NOT NULL,
    expires_at    REAL NOT NULL,
    PRIMARY KEY (access_key_id, key)
);
-- Purging expired entries without scanning the table.
CREATE INDEX idempotency_expiry ON idempotency_keys (expires_at);
