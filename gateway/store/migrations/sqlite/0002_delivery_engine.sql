-- The delivery engine's own state. Applied by gateway.store.migrations inside one transaction;
-- never edit a released migration, add a new numbered file instead.

-- Lanes (group, integration) an operator paused: kept here so a pause survives a restart.
-- A handful of tiny rows read whole at start and written on pause/resume, so WITHOUT ROWID.
CREATE TABLE paused_lanes (
    group_key   TEXT NOT NULL,
    integration TEXT NOT NULL,
    paused_at   REAL NOT NULL,
    PRIMARY KEY (group_key, integration)
) WITHOUT ROWID;

-- No new index on deliveries or records:
-- - reschedule_lane and the pending side of lane_stats use deliveries_lane_due (partial, on
--   pending deliveries), the dead side of lane_stats scans deliveries_dead;
-- - purge_delivered finds old records by a range of records' primary key: record ids start
--   with their creation time in milliseconds (gateway/ids.py), so "received before T" is a
--   prefix range of the key. An index on received_at would cost every ingest for nothing.
