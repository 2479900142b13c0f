-- The delivery engine's own state, mirroring sqlite/0002_delivery_engine.sql. Applied inside
-- one transaction under an advisory lock; never edit a released migration.

-- Lanes (group, integration) an operator paused: kept here so a pause survives a restart and
-- every gateway process sharing the database sees it.
CREATE TABLE paused_lanes (
    group_key   text COLLATE "C" NOT NULL,
    integration text COLLATE "C" NOT NULL,
    paused_at   double precision NOT NULL,
    PRIMARY KEY (group_key, integration)
);

-- No new index on deliveries or records (see the SQLite file): reschedule_lane and lane_stats
-- use the partial indexes of 0001; purge_delivered finds old records by a range of the records'
-- primary key (ids start with their creation time).
