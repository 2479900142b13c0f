-- Per-key ordering (options.ordering_key), mirroring sqlite/0004_ordering.sql. Applied inside
-- one transaction under an advisory lock; never edit a released migration.

-- NULL and a constant default: both are catalog-only changes, no table rewrite. A smallint
-- (1: holds its key when dead), as in SQLite, so both spell the index condition alike.
ALTER TABLE deliveries ADD COLUMN ordering_key text COLLATE "C";
ALTER TABLE deliveries ADD COLUMN ordering_block smallint NOT NULL DEFAULT 0;

-- The deliveries that hold their key (see the SQLite file): a claim takes a delivery of an
-- ordered lane only if no earlier one of the same lane and key is in this index.
CREATE INDEX deliveries_key_holders
    ON deliveries (group_key, integration, ordering_key, created_at, id)
    WHERE ordering_key IS NOT NULL
      AND (state = 'pending' OR (state = 'dead' AND ordering_block = 1));
