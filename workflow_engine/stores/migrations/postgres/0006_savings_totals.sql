-- 0006: running totals of calculated_savings, by key, so that stats() without a `since` reads
-- this small table instead of every workflow's JSON (half of its time at a million rows).
-- Triggers keep the totals for every writer: this release, an older one still running, and an
-- operator's own INSERT, UPDATE, DELETE, COPY or TRUNCATE. Each key has a row per shard, chosen
-- by the writing connection, so that concurrent creates do not queue on one row's lock; a read
-- sums the shards, and `n` (the workflows holding the key) tells a key none holds any more.
-- A value that is not a JSON object (only an operator could store one) holds no savings.
-- The writes to workflows wait while the existing rows are summed, so that none is missed.
LOCK TABLE workflows IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE workflow_savings_totals (
    key   TEXT NOT NULL,
    shard SMALLINT NOT NULL,
    total NUMERIC NOT NULL,
    n     BIGINT NOT NULL,
    PRIMARY KEY (key, shard)
);

INSERT INTO workflow_savings_totals (key, shard, total, n)
SELECT j.key, 0, SUM(j.value::numeric), COUNT(*)
  FROM workflows AS w,
       jsonb_each(CASE WHEN jsonb_typeof(w.calculated_savings) = 'object' THEN w.calculated_savings END) AS j
 WHERE jsonb_typeof(j.value) = 'number'
 GROUP BY j.key;

-- A row trigger, and only for rows that hold savings (its WHEN is checked without calling it): a
-- create without savings costs nothing more. What a row held is taken away, what it holds added.
CREATE FUNCTION workflow_savings_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO workflow_savings_totals AS t (key, shard, total, n)
    SELECT d.key, pg_backend_pid() % 16, SUM(d.value), SUM(d.n)
      FROM (SELECT j.key, -(j.value::numeric) AS value, -1 AS n
              FROM jsonb_each(CASE WHEN TG_OP <> 'INSERT' AND jsonb_typeof(OLD.calculated_savings) = 'object'
                                   THEN OLD.calculated_savings END) AS j
             WHERE jsonb_typeof(j.value) = 'number'
            UNION ALL
            SELECT j.key, j.value::numeric, 1
              FROM jsonb_each(CASE WHEN TG_OP <> 'DELETE' AND jsonb_typeof(NEW.calculated_savings) = 'object'
                                   THEN NEW.calculated_savings END) AS j
             WHERE jsonb_typeof(j.value) = 'number') AS d
     GROUP BY d.key
        ON CONFLICT (key, shard) DO UPDATE SET total = t.total + excluded.total, n = t.n + excluded.n;
    RETURN NULL;
END
$$;

CREATE TRIGGER workflow_savings_inserted AFTER INSERT ON workflows
    FOR EACH ROW WHEN (NEW.calculated_savings IS NOT NULL)
    EXECUTE FUNCTION workflow_savings_changed();

CREATE TRIGGER workflow_savings_deleted AFTER DELETE ON workflows
    FOR EACH ROW WHEN (OLD.calculated_savings IS NOT NULL)
    EXECUTE FUNCTION workflow_savings_changed();

-- Only an UPDATE that sets the column fires it: the library's own never do.
CREATE TRIGGER workflow_savings_updated AFTER UPDATE OF calculated_savings ON workflows
    FOR EACH ROW WHEN (OLD.calculated_savings IS DISTINCT FROM NEW.calculated_savings)
    EXECUTE FUNCTION workflow_savings_changed();

CREATE FUNCTION workflow_savings_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM workflow_savings_totals;
    RETURN NULL;
END
$$;

CREATE TRIGGER workflow_savings_truncated AFTER TRUNCATE ON workflows
    FOR EACH STATEMENT EXECUTE FUNCTION workflow_savings_truncated();
