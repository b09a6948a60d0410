-- 0003: a stored duration, so statistics read percentiles from an index instead of sorting every row;
-- the same index serves the counts by type and status.
ALTER TABLE workflows ADD COLUMN duration_s REAL;
-- Exact to the microsecond from the stored text (UTC, microseconds always written): whole seconds
-- from strftime, then the fractions. julianday() would be off by tens of microseconds.
UPDATE workflows SET duration_s =
       (CAST(strftime('%s', finished_at) AS INTEGER) - CAST(strftime('%s', started_at) AS INTEGER))
       + (CAST(substr(finished_at, 21, 6) AS INTEGER) - CAST(substr(started_at, 21, 6) AS INTEGER)) / 1000000.0
 WHERE finished_at IS NOT NULL AND started_at IS NOT NULL;
CREATE INDEX workflows_type_status_duration ON workflows (workflow_type_id, status, duration_s);
