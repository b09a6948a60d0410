-- 0002: councils that approve workflows before they run, and their votes;
-- an index for the statistics of recently finished workflows.
CREATE TABLE councils (
    id         TEXT PRIMARY KEY,
    members    JSONB NOT NULL,
    quorum     INTEGER NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE workflow_votes (
    workflow_id TEXT NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    voter_id    TEXT NOT NULL,
    approve     BOOLEAN NOT NULL,
    comment     TEXT,
    at          TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (workflow_id, voter_id)
);

CREATE INDEX workflows_finished ON workflows (finished_at);
