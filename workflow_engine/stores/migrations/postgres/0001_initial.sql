-- 0001: workflows and their audit trail.
CREATE TABLE workflows (
    id                  TEXT PRIMARY KEY,
    workflow_type_id    TEXT NOT NULL,
    status              TEXT NOT NULL,
    created_by_agent    TEXT,
    inputs              JSONB NOT NULL,
    calculated_savings  JSONB,
    assigned_council_id TEXT,
    result              JSONB,
    error               TEXT,
    traceback           TEXT,
    attempts            INTEGER NOT NULL DEFAULT 0,
    max_retries         INTEGER NOT NULL DEFAULT 0,
    max_attempts        INTEGER NOT NULL DEFAULT 1,
    retry_backoff       DOUBLE PRECISION NOT NULL DEFAULT 0,
    timeout             DOUBLE PRECISION,
    handler             TEXT,
    job_id              TEXT,
    worker              TEXT,
    idempotency_key     TEXT,
    created_at          TIMESTAMPTZ NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL,
    started_at          TIMESTAMPTZ,
    finished_at         TIMESTAMPTZ,
    heartbeat_at        TIMESTAMPTZ,
    lease_until         TIMESTAMPTZ,
    run_after           TIMESTAMPTZ,
    cancel_requested_at TIMESTAMPTZ
);
CREATE INDEX workflows_status_created ON workflows (status, created_at, id);
CREATE INDEX workflows_type_created ON workflows (workflow_type_id, created_at, id);
CREATE INDEX workflows_agent_created ON workflows (created_by_agent, created_at, id);
CREATE INDEX workflows_created ON workflows (created_at, id);
CREATE INDEX workflows_running_lease ON workflows (lease_until) WHERE status = 'running';
CREATE UNIQUE INDEX workflows_idempotency_key ON workflows (idempotency_key) WHERE idempotency_key IS NOT NULL;

CREATE TABLE workflow_events (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_id TEXT NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    from_status TEXT,
    to_status   TEXT NOT NULL,
    at          TIMESTAMPTZ NOT NULL,
    detail      TEXT,
    attempt     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX workflow_events_workflow ON workflow_events (workflow_id, id);
