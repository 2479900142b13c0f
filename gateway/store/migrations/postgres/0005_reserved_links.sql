-- PLACEHOLDER on the rollups branch only: version 0005 belongs to the links branch, which lands
-- first. Delete this file when merging (0006_rollups.sql follows the real 0005).
SELECT 1;
