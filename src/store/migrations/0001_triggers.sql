-- Triggers: definitions, which keys are inside each trigger's condition, and the deliveries
-- (every FIRE/CLEAR is written here before it is sent).

CREATE SEQUENCE viewcast_trigger_generation;

CREATE TABLE viewcast_triggers (
    source      text        NOT NULL,
    name        text        NOT NULL,
    -- webhook, fire, clear, headers, retry, format, fields, cooldown, fire_existing
    definition  jsonb       NOT NULL,
    status      text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    -- declared in schema.yaml (reconciled at start-up) rather than created through the API
    declared    boolean     NOT NULL DEFAULT false,
    -- distinguishes the events of a trigger deleted and created again under the same name
    generation  bigint      NOT NULL DEFAULT nextval('viewcast_trigger_generation'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, name)
);

CREATE TABLE viewcast_trigger_keys (
    source  text  NOT NULL,
    name    text  NOT NULL,
    key     jsonb NOT NULL,
    -- the row as it was when it entered or last changed while inside (CLEAR on delete sends it)
    row     jsonb NOT NULL,
    PRIMARY KEY (source, name, key),
    FOREIGN KEY (source, name) REFERENCES viewcast_triggers (source, name) ON DELETE CASCADE
);

CREATE TABLE viewcast_deliveries (
    id               bigserial   PRIMARY KEY,
    event_id         text        NOT NULL UNIQUE,
    source           text        NOT NULL,
    trigger_name     text        NOT NULL,
    generation       bigint      NOT NULL,
    event_type       text        NOT NULL CHECK (event_type IN ('FIRE', 'CLEAR')),
    payload          jsonb       NOT NULL,
    status           text        NOT NULL DEFAULT 'pending'
                                 CHECK (status IN ('pending', 'delivered', 'dead', 'cancelled')),
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_status      integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz
);

CREATE INDEX viewcast_deliveries_pending
    ON viewcast_deliveries (source, trigger_name, id) WHERE status = 'pending';
CREATE INDEX viewcast_deliveries_by_trigger
    ON viewcast_deliveries (source, trigger_name, id DESC);
