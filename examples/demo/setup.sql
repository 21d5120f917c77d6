-- The demo dataset: instruments with live prices, trades, and positions kept up to date by
-- the demo's generator (a trade and its position change commit together, as one batch).
CREATE TABLE instruments (
    id integer PRIMARY KEY,
    symbol text NOT NULL UNIQUE,
    name text NOT NULL,
    price numeric(12, 2) NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE trades (
    id bigserial PRIMARY KEY,
    instrument_id integer NOT NULL REFERENCES instruments (id),
    symbol text NOT NULL,
    side text NOT NULL CHECK (side IN ('buy', 'sell')),
    quantity integer NOT NULL CHECK (quantity > 0),
    price numeric(12, 2) NOT NULL,
    executed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE positions (
    instrument_id integer PRIMARY KEY REFERENCES instruments (id),
    symbol text NOT NULL,
    net_quantity integer NOT NULL,
    cost double precision NOT NULL,
    market_value double precision NOT NULL,
    unrealized_pnl double precision NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO instruments (id, symbol, name, price) VALUES
    (1, 'AAPL', 'Apple', 189.50),
    (2, 'MSFT', 'Microsoft', 415.20),
    (3, 'GOOG', 'Alphabet', 171.30),
    (4, 'AMZN', 'Amazon', 186.40),
    (5, 'NVDA', 'NVIDIA', 120.10),
    (6, 'TSLA', 'Tesla', 248.70);
INSERT INTO positions (instrument_id, symbol, net_quantity, cost, market_value, unrealized_pnl)
    SELECT id, symbol, 0, 0, 0, 0 FROM instruments;
