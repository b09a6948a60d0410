-- 0001: workflows and their audit trail.
-- Timestamps are ISO 8601 text in UTC with microseconds, so text order is time order.
-- JSON columns hold JSON text.
CREATE TABLE workflows (
    id                  TEXT PRIMARY KEY,
    workflow_type_id    TEXT NOT NULL,
    status              TEXT NOT NULL,
    created_by_agent    TEXT,
    inputs              TEXT NOT NULL,
    calculated_savings  TEXT,
    assigned_council_id TEXT,
    result              TEXT,
    error               TEXT,
    traceback           TEXT,
    attempts            INTEGER NOT NULL DEFAULT 0,
    max_retries         INTEGER NOT NULL DEFAULT 0,
    max_attempts        INTEGER NOT NULL DEFAULT 1,
    retry_backoff       REAL NOT NULL DEFAULT 0,
    timeout             REAL,
    handler             TEXT,
    job_id              TEXT,
    worker              TEXT,
    idempotency_key     TEXT,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL,
    started_at          TEXT,
    finished_at         TEXT,
    heartbeat_at        TEXT,
    lease_until         TEXT,
    run_after           TEXT,
    cancel_requested_at TEXT
);
CREATE INDEX workflows_status_created ON workflows (status, created_at, id);
CREATE INDEX workflows_type_created ON workflows (workflow_type_id, created_at, id);
CREATE INDEX workflows_agent_created ON workflows (created_by_agent, created_at, id);
CREATE INDEX workflows_created ON workflows (created_at, id);
CREATE INDEX workflows_running_lease ON workflows (lease_until) WHERE status = 'running';
CREATE UNIQUE INDEX workflows_idempotency_key ON workflows (idempotency_key) WHERE idempotency_key IS NOT NULL;

CREATE TABLE workflow_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_id TEXT NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    from_status TEXT,
    to_status   TEXT NOT NULL,
    at          TEXT NOT NULL,
    detail      TEXT,
    attempt     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX workflow_events_workflow ON workflow_events (workflow_id, id);
