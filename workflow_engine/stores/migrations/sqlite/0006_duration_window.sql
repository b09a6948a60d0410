-- 0006: duration percentiles over a window (stats(since=...)) read one index in order.
-- The percentile index of 0004, (workflow_type_id, duration_s), had no created_at: with a
-- `since`, SQLite read each type's completed rows in the window through
-- (workflow_type_id, status, created_at, id), looked up every row's duration in the table and
-- sorted them, for each of two ranks of each type: 3.3 s at 1M rows. With created_at in the
-- index, a rank is read from the index alone, in duration order: 0.1 s. The store names this
-- index in the statement (INDEXED BY) for wide windows; a short one is still read through the
-- created_at range and sorted.
CREATE INDEX IF NOT EXISTS workflows_completed_duration_created
    ON workflows (workflow_type_id, duration_s, created_at) WHERE status = 'completed' AND duration_s IS NOT NULL;
DROP INDEX IF EXISTS workflows_completed_duration;
