-- Per-key ordering (options.ordering_key). Applied by gateway.store.migrations inside one
-- transaction; never edit a released migration, add a new numbered file instead.

-- The delivery's ordering key, computed at ingest from the record (NULL: not ordered, the
-- default, so unordered lanes pay nothing), and whether a dead delivery of it holds its key
-- (options.ordering_on_dead: block).
ALTER TABLE deliveries ADD COLUMN ordering_key TEXT;
ALTER TABLE deliveries ADD COLUMN ordering_block INTEGER NOT NULL DEFAULT 0;

-- The deliveries that hold their key: a claim takes a delivery of an ordered lane only if no
-- earlier one of the same lane and key is here. Partial, so delivered ones (and every
-- delivery of an unordered lane) stay out of it; the condition is spelled exactly as the
-- claim's subquery spells it (gateway.store.queries.HOLDS_KEY), or SQLite would not use it.
CREATE INDEX deliveries_key_holders
    ON deliveries (group_key, integration, ordering_key, created_at, id)
    WHERE ordering_key IS NOT NULL
      AND (state = 'pending' OR (state = 'dead' AND ordering_block = 1));
