-- 0005: when a workflow last entered `queued` from another status. A redelivery (queued -> queued)
-- changes updated_at but not this, so the age of the oldest queued workflow (stats, health, the
-- queued-too-long alert) keeps counting while reconcile keeps giving a workflow new jobs.
-- Workflows already queued take their last change as the best time known. Adding a column with
-- no default takes no table rewrite; the update touches the queued rows only.
ALTER TABLE workflows ADD COLUMN queued_at TIMESTAMPTZ;
UPDATE workflows SET queued_at = updated_at WHERE status = 'queued';
