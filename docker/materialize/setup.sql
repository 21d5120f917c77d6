-- The trading demo in Materialize: tables the loader writes, views viewcast serves.
-- Run once by the `setup` service (psql against Materialize's SQL port).

CREATE TABLE IF NOT EXISTS instruments (id integer NOT NULL, symbol text NOT NULL, name text);
CREATE TABLE IF NOT EXISTS prices (instrument_id integer NOT NULL, price numeric(12, 4) NOT NULL, updated_at timestamptz NOT NULL);
CREATE TABLE IF NOT EXISTS trades (
    id bigint NOT NULL,
    instrument_id integer NOT NULL,
    side text NOT NULL,
    quantity integer NOT NULL,
    price numeric(12, 4) NOT NULL,
    executed_at timestamptz NOT NULL
);

-- Positions and profit and loss per instrument, maintained incrementally.
CREATE MATERIALIZED VIEW IF NOT EXISTS live_pnl AS
SELECT
    i.id AS instrument_id,
    i.symbol,
    COALESCE(SUM(CASE WHEN t.side = 'buy' THEN t.quantity ELSE -t.quantity END), 0)::bigint AS net_position,
    p.price AS last_price,
    round(COALESCE(SUM(CASE WHEN t.side = 'buy' THEN -t.quantity * t.price ELSE t.quantity * t.price END), 0), 2) AS realized_pnl,
    round(COALESCE(SUM(CASE WHEN t.side = 'buy' THEN t.quantity ELSE -t.quantity END), 0) * p.price
        + COALESCE(SUM(CASE WHEN t.side = 'buy' THEN -t.quantity * t.price ELSE t.quantity * t.price END), 0), 2) AS total_pnl
FROM instruments i
JOIN prices p ON p.instrument_id = i.id
LEFT JOIN trades t ON t.instrument_id = i.id
GROUP BY i.id, i.symbol, p.price;

-- viewcast resumes a lost connection with AS OF; keep an hour of history so it can.
ALTER MATERIALIZED VIEW live_pnl SET (RETAIN HISTORY FOR '1hr');
ALTER TABLE trades SET (RETAIN HISTORY FOR '1hr');

INSERT INTO instruments
SELECT * FROM (VALUES (1, 'AAPL', 'Apple'), (2, 'GOOG', 'Alphabet'), (3, 'MSFT', 'Microsoft'))
    AS v (id, symbol, name)
WHERE NOT EXISTS (SELECT 1 FROM instruments);
INSERT INTO prices
SELECT * FROM (VALUES (1, 190.0, now()), (2, 140.0, now()), (3, 410.0, now()))
    AS v (instrument_id, price, updated_at)
WHERE NOT EXISTS (SELECT 1 FROM prices);
