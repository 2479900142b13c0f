-- Rollups (gateway/delivery/rollup.py), mirroring sqlite/0006_rollups.sql: records of a lane
-- summed per key and UTC window. Never edit a released migration; add a new numbered file.
CREATE TABLE rollup_buckets (
    group_key    text COLLATE "C" NOT NULL,
    integration  text COLLATE "C" NOT NULL,
    bucket_key   text COLLATE "C" NOT NULL,
    window_start double precision NOT NULL,
    seq          integer NOT NULL,
    window_end   double precision NOT NULL,
    close_at     double precision NOT NULL,
    state        text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'sent')),
    by_values    text NOT NULL,
    sums         text NOT NULL,
    records      integer NOT NULL,
    opened_at    double precision NOT NULL,
    updated_at   double precision NOT NULL,
    delivery_id  text COLLATE "C",
    PRIMARY KEY (group_key, integration, bucket_key, window_start, seq)
);
CREATE INDEX rollup_buckets_due ON rollup_buckets (close_at) WHERE state = 'open';
CREATE UNIQUE INDEX rollup_buckets_delivery ON rollup_buckets (delivery_id)
    WHERE delivery_id IS NOT NULL;
