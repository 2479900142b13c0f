-- PLACEHOLDER on the rollups branch only: version 0004 belongs to the ordering branch, which lands
-- first. Delete this file when merging (0006_rollups.sql follows the real 0004).
SELECT 1;
