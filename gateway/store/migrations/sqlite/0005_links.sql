-- Links: the id an integration gave a record's subject (a licence, a contact), remembered by
-- the link key the integration type derives from the record (an e-mail) so a later record for
-- the same subject updates it instead of creating another. Written in the transaction that
-- marks the delivery delivered (gateway.store.core: update_deliveries), read before a build.
-- Never edit a released migration; add a new numbered file instead.

-- No foreign key to deliveries: purging delivered records must not forget what they created.
-- delivery_id names the delivery that wrote the link (history; it may be purged since).
CREATE TABLE links (
    group_key   TEXT NOT NULL,
    integration TEXT NOT NULL,
    link_key    TEXT NOT NULL,
    external_id TEXT NOT NULL,
    delivery_id TEXT,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    PRIMARY KEY (group_key, integration, link_key)
) WITHOUT ROWID;

-- The link an attempt wrote (or forgot), as text for the delivery's attempt history.
ALTER TABLE attempts ADD COLUMN link TEXT;
