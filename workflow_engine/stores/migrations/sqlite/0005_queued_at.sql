-- 0005: when a workflow last entered `queued` from another status. A redelivery (queued -> queued)
-- changes updated_at but not this, so the age of the oldest queued workflow (stats, health, the
-- queued-too-long alert) keeps counting while reconcile keeps giving a workflow new jobs.
-- Workflows already queued take their last change as the best time known.
ALTER TABLE workflows ADD COLUMN queued_at TEXT;
UPDATE workflows SET queued_at = updated_at WHERE status = 'queued';
