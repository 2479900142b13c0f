-- PLACEHOLDER on the rollups branch only: version 0003 belongs to the mgmt branch, which lands
-- first. Delete this file when merging (0006_rollups.sql follows the real 0003).
SELECT 1;
