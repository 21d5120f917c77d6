-- Executors: which replica drives a run (demo and http kinds), until when; and the key that
-- run-scoped worker tokens are derived from (HMAC of the run id), shared by every replica.

ALTER TABLE viewcast_runs
    ADD COLUMN executor_owner text,
    ADD COLUMN executor_lease_until timestamptz;

CREATE INDEX viewcast_runs_active ON viewcast_runs (kind, created_at)
    WHERE status IN ('pending', 'running');

CREATE TABLE viewcast_run_token_key (
    only_one  boolean PRIMARY KEY DEFAULT true CHECK (only_one),
    key       text    NOT NULL
);

-- Two random UUIDs (PostgreSQL draws them from its strong random source): 244 random bits.
INSERT INTO viewcast_run_token_key (key)
    VALUES (replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''));
