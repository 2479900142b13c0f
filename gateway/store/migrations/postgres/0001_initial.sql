-- Initial schema of the PostgreSQL store, mirroring sqlite/0001_initial.sql. Applied by
-- gateway.store.postgres inside one transaction under an advisory lock; never edit a released
-- migration, add a new numbered file instead (same version numbers as the SQLite files).
--
-- Times are float seconds since the Unix epoch (double precision), as the store interface uses
-- them. Keys and lane names are COLLATE "C": ids sort byte by byte, as in SQLite, so id order
-- (listing, cursors, purge's id range) is the same on both backends whatever the database's
-- locale.

CREATE TABLE records (
    id              text COLLATE "C" PRIMARY KEY,
    group_key       text COLLATE "C" NOT NULL,
    access_key_id   text COLLATE "C" NOT NULL,
    data            bytea NOT NULL,
    received_at     double precision NOT NULL,
    mapping_version text
);

-- Ids are time-ordered, so primary-key order is creation order (listing and pagination use
-- it). fillfactor: claims and releases change only unindexed columns (the lease), so room on
-- the page lets PostgreSQL update those rows in place (HOT), without touching any index.
CREATE TABLE deliveries (
    id               text COLLATE "C" PRIMARY KEY,
    record_id        text COLLATE "C" NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    group_key        text COLLATE "C" NOT NULL,
    integration      text COLLATE "C" NOT NULL,
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  double precision NOT NULL,
    lease_owner      text,
    lease_expires_at double precision,
    last_error       text,
    last_status      integer,
    created_at       double precision NOT NULL,
    updated_at       double precision NOT NULL,
    delivered_at     double precision
) WITH (fillfactor = 80);

-- Claiming: only pending deliveries are ever claimed, so partial indexes keep delivered and
-- dead ones out of the claim path entirely. `id` last: claims order by (next_attempt_at, id).
CREATE INDEX deliveries_due ON deliveries (next_attempt_at, id) WHERE state = 'pending';
-- The dispatcher claims per lane (group, integration).
CREATE INDEX deliveries_lane_due ON deliveries (group_key, integration, next_attempt_at, id)
    WHERE state = 'pending';
-- Listing dead deliveries in id order; a delivery enters it only when it dies.
CREATE INDEX deliveries_dead ON deliveries (id) WHERE state = 'dead';
-- The foreign key's child side: get_record, ON DELETE CASCADE, purge.
CREATE INDEX deliveries_record ON deliveries (record_id);

CREATE TABLE attempts (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id     text COLLATE "C" NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    started_at      double precision NOT NULL,
    duration_ms     double precision NOT NULL,
    status          integer,
    error           text,
    mapping_version text
);
CREATE INDEX attempts_delivery ON attempts (delivery_id, id);

CREATE TABLE access_keys (
    access_key_id     text COLLATE "C" PRIMARY KEY,
    secret_ciphertext bytea NOT NULL,
    groups            text NOT NULL,  -- JSON array of group keys, as in SQLite
    name              text,
    created_at        double precision NOT NULL,
    revoked_at        double precision,
    rate_limit        double precision,
    rate_burst        integer
);

CREATE TABLE idempotency_keys (
    access_key_id text COLLATE "C" NOT NULL,
    key           text COLLATE "C" NOT NULL,
    request_hash  text NOT NULL,
    status        integer NOT NULL,
    response      bytea NOT NULL,
    created_at    double precision NOT NULL,
    expires_at    double precision NOT NULL,
    PRIMARY KEY (access_key_id, key)
);
-- Purging expired entries without scanning the table.
CREATE INDEX idempotency_expiry ON idempotency_keys (expires_at);
