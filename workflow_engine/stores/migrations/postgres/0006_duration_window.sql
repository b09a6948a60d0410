-- 0006: duration percentiles over a window (stats(since=...)) read one index in order: the
-- percentile index of 0004 with created_at added, so that a rank over a window is read from
-- the index alone (see the SQLite script). Created only if it does not exist, so that an
-- operator can build it beforehand with CREATE INDEX CONCURRENTLY (docs/production.md).
DO $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
         WHERE i.indrelid = 'workflows'::regclass AND NOT i.indisvalid
           AND c.relname = 'workflows_completed_duration_created'
    ) THEN
        RAISE EXCEPTION 'migration 0006: the index workflows_completed_duration_created built beforehand is invalid: a CREATE INDEX CONCURRENTLY that failed, or one still running; wait for a running build to finish, or drop the index, then build it again or let the migration build it';
    END IF;
END
$$;
CREATE INDEX IF NOT EXISTS workflows_completed_duration_created
    ON workflows (workflow_type_id, duration_s, created_at) WHERE status = 'completed' AND duration_s IS NOT NULL;
DROP INDEX IF EXISTS workflows_completed_duration;
