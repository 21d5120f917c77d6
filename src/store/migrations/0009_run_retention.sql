-- Ended runs older than the retention are deleted (with their events) by the publishing
-- replica: find them by the time they ended.
CREATE INDEX viewcast_runs_finished ON viewcast_runs (finished_at) WHERE finished_at IS NOT NULL;
