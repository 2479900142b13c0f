-- Links, mirroring sqlite/0005_links.sql: (group, integration, link key) -> the id the
-- integration gave it. Applied inside one transaction under an advisory lock; never edit a
-- released migration.

-- No foreign key to deliveries: purging delivered records must not forget what they created.
CREATE TABLE links (
    group_key   text COLLATE "C" NOT NULL,
    integration text COLLATE "C" NOT NULL,
    link_key    text COLLATE "C" NOT NULL,
    external_id text NOT NULL,
    delivery_id text,
    created_at  double precision NOT NULL,
    updated_at  double precision NOT NULL,
    PRIMARY KEY (group_key, integration, link_key)
);

-- The link an attempt wrote (or forgot), as text for the delivery's attempt history.
ALTER TABLE attempts ADD COLUMN link text;
