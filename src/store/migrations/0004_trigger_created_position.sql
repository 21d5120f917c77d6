-- The source's position when a trigger was created: rows matching then are the ones that
-- "already match at creation" (entered silently unless fire_existing), wherever the trigger
-- is evaluated. NULL when the source was not synced yet (its first snapshot decides).
ALTER TABLE viewcast_triggers ADD COLUMN created_position bigint;
