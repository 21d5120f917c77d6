-- Runs: long jobs and their ordered, replayable events. The invariants are the database's:
-- events of a run are numbered 1, 2, 3, … with no gap and no repeat; at most one terminal
-- event (COMPLETED, FAILED, CANCELLED) and nothing after it; events never change (except when
-- they are published). Every event has an outbox row, written in the same transaction.

CREATE TABLE viewcast_runs (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    kind              text        NOT NULL,
    status            text        NOT NULL DEFAULT 'pending'
                                  CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    input             jsonb       NOT NULL DEFAULT '{}',
    -- a caller's retry of startRun with the same key gets the same run
    idempotency_key   text,
    created_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at        timestamptz,
    finished_at       timestamptz,
    -- the seq the next event must have (maintained by viewcast_run_event_check)
    next_seq          bigint      NOT NULL DEFAULT 1 CHECK (next_seq >= 1),
    terminal_type     text,
    terminal_message  text,
    UNIQUE (kind, idempotency_key)
);

CREATE INDEX viewcast_runs_by_created ON viewcast_runs (created_at DESC, id DESC);

CREATE TABLE viewcast_run_events (
    run_id        uuid        NOT NULL REFERENCES viewcast_runs (id) ON DELETE CASCADE,
    seq           bigint      NOT NULL CHECK (seq >= 1),
    type          text        NOT NULL CHECK (type ~ '^[A-Z][A-Z0-9_]{0,63}$'),
    stage         text,
    message       text,
    percentage    double precision CHECK (percentage >= 0 AND percentage <= 100),
    -- X of Y counters: {"files_done": 3, "files_total": 10}
    counters      jsonb       CHECK (counters IS NULL OR jsonb_typeof(counters) = 'object'),
    data          jsonb,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at  timestamptz,
    PRIMARY KEY (run_id, seq)
);

-- At most one terminal event per run.
CREATE UNIQUE INDEX viewcast_run_events_one_terminal ON viewcast_run_events (run_id)
    WHERE type IN ('COMPLETED', 'FAILED', 'CANCELLED');

CREATE TABLE viewcast_run_outbox (
    id          bigserial   PRIMARY KEY,
    run_id      uuid        NOT NULL,
    seq         bigint      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (run_id, seq),
    FOREIGN KEY (run_id, seq) REFERENCES viewcast_run_events (run_id, seq) ON DELETE CASCADE
);

-- An event must be its run's next one, and its run must not have ended; the run's next_seq,
-- status and times follow.
CREATE FUNCTION viewcast_run_event_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    run viewcast_runs%ROWTYPE;
    terminal boolean := NEW.type IN ('COMPLETED', 'FAILED', 'CANCELLED');
BEGIN
    SELECT * INTO run FROM viewcast_runs WHERE id = NEW.run_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % does not exist', NEW.run_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF run.status IN ('completed', 'failed', 'cancelled') THEN
        RAISE EXCEPTION 'run % has ended with %: no event may follow it', NEW.run_id, run.terminal_type
            USING ERRCODE = 'check_violation', HINT = 'viewcast_run_ended';
    END IF;
    IF NEW.seq <> run.next_seq THEN
        RAISE EXCEPTION 'run %: event seq % is not the next one (%)', NEW.run_id, NEW.seq, run.next_seq
            USING ERRCODE = 'check_violation', HINT = 'viewcast_run_seq';
    END IF;
    UPDATE viewcast_runs SET
        next_seq = NEW.seq + 1,
        status = CASE
            WHEN NEW.type = 'COMPLETED' THEN 'completed'
            WHEN NEW.type = 'FAILED' THEN 'failed'
            WHEN NEW.type = 'CANCELLED' THEN 'cancelled'
            ELSE 'running' END,
        started_at = coalesce(started_at, NEW.created_at),
        finished_at = CASE WHEN terminal THEN NEW.created_at ELSE NULL END,
        terminal_type = CASE WHEN terminal THEN NEW.type ELSE NULL END,
        terminal_message = CASE WHEN terminal THEN NEW.message ELSE NULL END
    WHERE id = NEW.run_id;
    RETURN NEW;
END $$;

CREATE TRIGGER viewcast_run_event_check BEFORE INSERT ON viewcast_run_events
    FOR EACH ROW EXECUTE FUNCTION viewcast_run_event_check();

-- Events never change once written, except for the time they were published.
CREATE FUNCTION viewcast_run_event_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.run_id, NEW.seq, NEW.type, NEW.stage, NEW.message, NEW.percentage, NEW.counters,
        NEW.data, NEW.created_at)
       IS DISTINCT FROM
       (OLD.run_id, OLD.seq, OLD.type, OLD.stage, OLD.message, OLD.percentage, OLD.counters,
        OLD.data, OLD.created_at) THEN
        RAISE EXCEPTION 'run %: event % cannot change once written', OLD.run_id, OLD.seq
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER viewcast_run_event_immutable BEFORE UPDATE ON viewcast_run_events
    FOR EACH ROW EXECUTE FUNCTION viewcast_run_event_immutable();

-- Nor are they deleted, except with their run.
CREATE FUNCTION viewcast_run_event_kept() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM viewcast_runs WHERE id = OLD.run_id) THEN
        RAISE EXCEPTION 'run %: event % cannot be deleted (delete the run)', OLD.run_id, OLD.seq
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN OLD;
END $$;

CREATE TRIGGER viewcast_run_event_kept BEFORE DELETE ON viewcast_run_events
    FOR EACH ROW EXECUTE FUNCTION viewcast_run_event_kept();
