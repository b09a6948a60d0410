-- 0004: listing by two filters reads one index in order.
-- Type and status read (workflow_type_id, status, created_at, id). With only the duration
-- index of 0003, the database sorted every match.
-- Agent and status read (created_by_agent, status, created_at, id), not all of the agent's
-- workflows. Duration percentiles read a partial index of completed workflows.
-- The finish-time and agent indexes are rebuilt without the rows that have none, under new
-- names. The lease index goes: reconcile finds the few running workflows through
-- (status, created_at, id), and a heartbeat now changes no indexed column. A status change of
-- a workflow with no agent writes fewer index pages than before, and one with an agent a few
-- more.
-- Each index is created IF NOT EXISTS before the old ones are dropped, so that on a large
-- table they can be built beforehand with CREATE INDEX CONCURRENTLY (docs/production.md). One
-- such build that failed leaves an invalid index behind, which the migration refuses to keep.
DO $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
         WHERE i.indrelid = 'workflows'::regclass AND NOT i.indisvalid
           AND c.relname IN ('workflows_type_status_created', 'workflows_completed_duration',
                             'workflows_finished_at', 'workflows_with_agent_created',
                             'workflows_with_agent_status_created')
    ) THEN
        RAISE EXCEPTION 'migration 0004: an index built beforehand is invalid: a CREATE INDEX CONCURRENTLY that failed, or one still running; wait for a running build to finish, or drop the index, then build it again or let the migration build it';
    END IF;
END
$$;
CREATE INDEX IF NOT EXISTS workflows_type_status_created
    ON workflows (workflow_type_id, status, created_at, id);
CREATE INDEX IF NOT EXISTS workflows_completed_duration
    ON workflows (workflow_type_id, duration_s) WHERE status = 'completed' AND duration_s IS NOT NULL;
CREATE INDEX IF NOT EXISTS workflows_finished_at
    ON workflows (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS workflows_with_agent_created
    ON workflows (created_by_agent, created_at, id) WHERE created_by_agent IS NOT NULL;
CREATE INDEX IF NOT EXISTS workflows_with_agent_status_created
    ON workflows (created_by_agent, status, created_at, id) WHERE created_by_agent IS NOT NULL;
DROP INDEX IF EXISTS workflows_type_status_duration;
DROP INDEX IF EXISTS workflows_finished;
DROP INDEX IF EXISTS workflows_agent_created;
DROP INDEX IF EXISTS workflows_running_lease;
