-- Whether a trigger's state (its inside keys) has been established once: a restart then
-- compares the rows with that state (FIRE for rows that entered, CLEAR for rows that left
-- while the server was down) instead of applying the creation rule (fire_existing).
ALTER TABLE viewcast_triggers ADD COLUMN initialized boolean NOT NULL DEFAULT false;
