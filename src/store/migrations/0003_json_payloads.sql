-- Webhook bodies and rows keep their key order (tycostream's clients compare JSON text):
-- json keeps the text as written, jsonb reorders keys.
ALTER TABLE viewcast_deliveries ALTER COLUMN payload TYPE json USING payload::json;
ALTER TABLE viewcast_trigger_keys ALTER COLUMN row TYPE json USING row::json;
