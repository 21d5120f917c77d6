-- Every delivery attempt: when, how long, and what came back (the API's "recent attempts").
CREATE TABLE viewcast_delivery_attempts (
    id           bigserial   PRIMARY KEY,
    delivery_id  bigint      NOT NULL REFERENCES viewcast_deliveries (id) ON DELETE CASCADE,
    attempt      integer     NOT NULL,
    started_at   timestamptz NOT NULL,
    duration_ms  integer     NOT NULL,
    -- the HTTP status, when there was an answer
    status       integer,
    -- NULL when delivered
    error        text
);

CREATE INDEX viewcast_delivery_attempts_by_delivery
    ON viewcast_delivery_attempts (delivery_id, id DESC);

-- The dead-letter queue, across a source's triggers.
CREATE INDEX viewcast_deliveries_dead
    ON viewcast_deliveries (source, id DESC) WHERE status = 'dead';
