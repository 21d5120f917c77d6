-- Who started a run (the session's subject: its x-hasura-user-id, or the role), so that a
-- role may read and cancel its own runs only. NULL for runs the admin (or a server without
-- auth) started, and for runs from before this migration.
ALTER TABLE viewcast_runs ADD COLUMN created_by text;

CREATE INDEX viewcast_runs_by_creator ON viewcast_runs (created_by, created_at DESC, id DESC)
    WHERE created_by IS NOT NULL;
