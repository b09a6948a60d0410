-- 0006: running totals of calculated_savings, by key, so that stats() without a `since` reads
-- this small table instead of every workflow's JSON (0.8 of its 1 s at a million rows).
-- Triggers keep the totals for every writer: this release, an older one still running, and an
-- operator's own INSERT, UPDATE or DELETE. `n` counts the workflows that hold the key; a key
-- none holds any more is removed. A workflow's savings never change once it is created, so
-- the update trigger fires only for an operator's UPDATE of the column. A value that is not a
-- JSON object (only an operator could store one) holds no savings, and fails no write.
CREATE TABLE workflow_savings_totals (
    key   TEXT PRIMARY KEY,
    total REAL NOT NULL,
    n     INTEGER NOT NULL
);

INSERT INTO workflow_savings_totals (key, total, n)
SELECT j.key, TOTAL(j.value), COUNT(*)
  FROM workflows AS w,
       json_each(CASE WHEN json_valid(w.calculated_savings) THEN
                     CASE json_type(w.calculated_savings) WHEN 'object' THEN w.calculated_savings END
                 END) AS j
 WHERE j.type IN ('integer', 'real')
 GROUP BY j.key;

CREATE TRIGGER workflow_savings_inserted AFTER INSERT ON workflows
WHEN NEW.calculated_savings IS NOT NULL
BEGIN
    INSERT INTO workflow_savings_totals (key, total, n)
    SELECT j.key, j.value, 1
      FROM json_each(CASE WHEN json_valid(NEW.calculated_savings) THEN
                         CASE json_type(NEW.calculated_savings) WHEN 'object' THEN NEW.calculated_savings END
                     END) AS j
     WHERE j.type IN ('integer', 'real')
        ON CONFLICT (key) DO UPDATE SET total = total + excluded.total, n = n + excluded.n;
END;

CREATE TRIGGER workflow_savings_deleted AFTER DELETE ON workflows
WHEN OLD.calculated_savings IS NOT NULL
BEGIN
    INSERT INTO workflow_savings_totals (key, total, n)
    SELECT j.key, -j.value, -1
      FROM json_each(CASE WHEN json_valid(OLD.calculated_savings) THEN
                         CASE json_type(OLD.calculated_savings) WHEN 'object' THEN OLD.calculated_savings END
                     END) AS j
     WHERE j.type IN ('integer', 'real')
        ON CONFLICT (key) DO UPDATE SET total = total + excluded.total, n = n + excluded.n;
    DELETE FROM workflow_savings_totals WHERE n <= 0;
END;

CREATE TRIGGER workflow_savings_updated AFTER UPDATE OF calculated_savings ON workflows
WHEN OLD.calculated_savings IS NOT NEW.calculated_savings
BEGIN
    INSERT INTO workflow_savings_totals (key, total, n)
    SELECT j.key, -j.value, -1
      FROM json_each(CASE WHEN json_valid(OLD.calculated_savings) THEN
                         CASE json_type(OLD.calculated_savings) WHEN 'object' THEN OLD.calculated_savings END
                     END) AS j
     WHERE j.type IN ('integer', 'real')
        ON CONFLICT (key) DO UPDATE SET total = total + excluded.total, n = n + excluded.n;
    INSERT INTO workflow_savings_totals (key, total, n)
    SELECT j.key, j.value, 1
      FROM json_each(CASE WHEN json_valid(NEW.calculated_savings) THEN
                         CASE json_type(NEW.calculated_savings) WHEN 'object' THEN NEW.calculated_savings END
                     END) AS j
     WHERE j.type IN ('integer', 'real')
        ON CONFLICT (key) DO UPDATE SET total = total + excluded.total, n = n + excluded.n;
    DELETE FROM workflow_savings_totals WHERE n <= 0;
END;
