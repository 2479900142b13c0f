-- Rollups (gateway/delivery/rollup.py): records of a lane summed per key and UTC window.
-- Never edit a released migration; add a new numbered file instead.
--
-- One row a bucket: (lane, key, window, seq). seq 0 is the window's report; a record that
-- arrives after its bucket was sent opens seq 1, 2... (a correction report). A record is added
-- in the same transaction that marks its delivery done, so a crash neither loses nor counts it
-- twice; a bucket becomes a record and a delivery (the report) in the transaction that marks
-- it sent.
CREATE TABLE rollup_buckets (
    group_key    TEXT NOT NULL,
    integration  TEXT NOT NULL,
    bucket_key   TEXT NOT NULL,  -- JSON array of the `by` values, in the order of `by`
    window_start REAL NOT NULL,
    seq          INTEGER NOT NULL,
    window_end   REAL NOT NULL,
    close_at     REAL NOT NULL,  -- window end + grace (corrections: their first record + grace)
    state        TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'sent')),
    by_values    TEXT NOT NULL,  -- JSON object: `by` attribute -> value
    sums         TEXT NOT NULL,  -- JSON object: `sum` attribute -> exact decimal as a string
    records      INTEGER NOT NULL,
    opened_at    REAL NOT NULL,
    updated_at   REAL NOT NULL,
    delivery_id  TEXT,           -- the report's delivery, once sent
    PRIMARY KEY (group_key, integration, bucket_key, window_start, seq)
);
-- The closer's walk: open buckets by the time they are due.
CREATE INDEX rollup_buckets_due ON rollup_buckets (close_at) WHERE state = 'open';
-- Telling a report's delivery from a record's when the engine claims it.
CREATE UNIQUE INDEX rollup_buckets_delivery ON rollup_buckets (delivery_id)
    WHERE delivery_id IS NOT NULL;
