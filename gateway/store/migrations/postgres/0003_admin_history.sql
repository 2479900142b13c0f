-- The management API's history (issue 14). Applied by gateway.store.migrations inside one
-- transaction; never edit a released migration, add a new numbered file instead.

-- Every version of every mapping file: its whole text, when, by whom, and how it came
-- (create, update, rollback, clone, delete, or "file" when a hand edit was noticed).
-- number counts 1, 2, 3, ... per group; version is the content hash deliveries record.
CREATE TABLE mapping_versions (
    group_key  text COLLATE "C" NOT NULL,
    number     integer NOT NULL,
    version    text NOT NULL,
    content    text NOT NULL,
    created_at double precision NOT NULL,
    actor      text NOT NULL,
    action     text NOT NULL,
    PRIMARY KEY (group_key, number)
);

-- Who changed what: mapping changes and key operations, newest last. detail is a JSON object
-- (never a secret).
CREATE TABLE audit_log (
    id         bigserial PRIMARY KEY,
    at         double precision NOT NULL,
    actor      text NOT NULL,
    action     text NOT NULL,
    target     text NOT NULL,
    detail     text NOT NULL
);

-- Scoped admin tokens (besides GATEWAY_ADMIN_TOKEN): only a SHA-256 of the secret is kept.
-- role is read, write or admin; groups a JSON array of group keys, NULL for every group.
CREATE TABLE admin_tokens (
    token_id    text COLLATE "C" PRIMARY KEY,
    secret_hash text NOT NULL,
    role        text NOT NULL,
    groups      text,
    name        text,
    created_at  double precision NOT NULL,
    revoked_at  double precision
);
