-- 0004: listing by two filters reads one index in order.
-- Type and status read (workflow_type_id, status, created_at, id). With only the duration
-- index of 0003, SQLite sorted every match: 0.5 s for a common pair at 1M rows.
-- Agent and status read (created_by_agent, status, created_at, id), not all of the agent's
-- workflows. Duration percentiles read a partial index of completed workflows.
-- Rows with no finish time or no agent stay out of the indexes on those columns, and the lease
-- index goes: reconcile finds the few running workflows through (status, created_at, id), and
-- a heartbeat now changes no indexed column. A status change of a workflow with no agent
-- writes fewer index pages than before, and one with an agent a few more.
DROP INDEX workflows_type_status_duration;
CREATE INDEX workflows_type_status_created ON workflows (workflow_type_id, status, created_at, id);
CREATE INDEX workflows_completed_duration ON workflows (workflow_type_id, duration_s)
    WHERE status = 'completed' AND duration_s IS NOT NULL;
DROP INDEX workflows_finished;
CREATE INDEX workflows_finished ON workflows (finished_at) WHERE finished_at IS NOT NULL;
DROP INDEX workflows_agent_created;
CREATE INDEX workflows_agent_created ON workflows (created_by_agent, created_at, id)
    WHERE created_by_agent IS NOT NULL;
CREATE INDEX workflows_agent_status_created ON workflows (created_by_agent, status, created_at, id)
    WHERE created_by_agent IS NOT NULL;
DROP INDEX workflows_running_lease;
