//! Runs: long jobs and their durable, ordered, replayable events.
//!
//! This module owns the runs' store: starting a run (idempotently), appending events (with
//! an optimistic `expected_seq`), cancelling, and reading runs and events back. The
//! invariants are the database's (migration 7): a run's events are numbered from 1 without
//! gap or repeat, at most one terminal event (`COMPLETED`, `FAILED`, `CANCELLED`) ends it and
//! nothing follows, events never change. An append writes the events and their outbox rows
//! in one transaction and notifies `viewcast_run_outbox` at commit.
//!
//! Still to come (issue 5): the outbox publisher and its bus, the GraphQL and SSE API,
//! executors.

use serde_json::Value;

use crate::store::{Store, StoreError, rfc3339};

/// The event types that end a run.
pub const TERMINAL: [&str; 3] = ["COMPLETED", "FAILED", "CANCELLED"];

/// The channel an append notifies at commit (the outbox publisher listens).
pub const OUTBOX_CHANNEL: &str = "viewcast_run_outbox";

/// Why a run operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("run {0} not found")]
    NotFound(String),
    #[error("run {id} has ended with {terminal}: no event may follow it")]
    Ended { id: String, terminal: String },
    #[error("run {id}: expected seq {expected}, but the next event is {next}")]
    SeqMismatch {
        id: String,
        expected: i64,
        next: i64,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<tokio_postgres::Error> for RunError {
    fn from(err: tokio_postgres::Error) -> RunError {
        RunError::Store(err.into())
    }
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub id: String,
    pub kind: String,
    /// `pending`, `running`, `completed`, `failed` or `cancelled`.
    pub status: String,
    pub input: Value,
    pub idempotency_key: Option<String>,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// The seq the next event gets.
    pub next_seq: i64,
    pub terminal_type: Option<String>,
    pub terminal_message: Option<String>,
}

impl Run {
    pub fn is_ended(&self) -> bool {
        self.terminal_type.is_some()
    }
}

/// An event to append.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewEvent {
    /// `STARTED`, `PROGRESS`, `LOG`, … or a terminal type; capitals, digits and `_`.
    pub event_type: String,
    pub stage: Option<String>,
    pub message: Option<String>,
    /// 0 to 100.
    pub percentage: Option<f64>,
    /// X of Y counters: `{"files_done": 3, "files_total": 10}`.
    pub counters: Option<Value>,
    pub data: Option<Value>,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub run_id: String,
    pub seq: i64,
    pub event_type: String,
    pub stage: Option<String>,
    pub message: Option<String>,
    pub percentage: Option<f64>,
    pub counters: Option<Value>,
    pub data: Option<Value>,
    /// RFC 3339, UTC.
    pub created_at: String,
}

const RUN_COLUMNS: &str = concat!(
    "id::text, kind, status, input, idempotency_key, ",
    rfc3339!("created_at"),
    ", ",
    rfc3339!("started_at"),
    ", ",
    rfc3339!("finished_at"),
    ", next_seq, terminal_type, terminal_message"
);

const EVENT_COLUMNS: &str = concat!(
    "run_id::text, seq, type, stage, message, percentage, counters, data, ",
    rfc3339!("created_at")
);

fn run(row: &tokio_postgres::Row) -> Run {
    Run {
        id: row.get(0),
        kind: row.get(1),
        status: row.get(2),
        input: row.get(3),
        idempotency_key: row.get(4),
        created_at: row.get(5),
        started_at: row.get(6),
        finished_at: row.get(7),
        next_seq: row.get(8),
        terminal_type: row.get(9),
        terminal_message: row.get(10),
    }
}

fn event(row: &tokio_postgres::Row) -> Event {
    Event {
        run_id: row.get(0),
        seq: row.get(1),
        event_type: row.get(2),
        stage: row.get(3),
        message: row.get(4),
        percentage: row.get(5),
        counters: row.get(6),
        data: row.get(7),
        created_at: row.get(8),
    }
}

/// A run id as the API gives it: a UUID (checked here so a malformed one is "not found", not
/// a database error).
fn checked_id(id: &str) -> Result<&str, RunError> {
    let hex = id.bytes().filter(u8::is_ascii_hexdigit).count();
    let dashes = id.bytes().filter(|&b| b == b'-').count();
    if id.len() == 36 && hex == 32 && dashes == 4 {
        Ok(id)
    } else {
        Err(RunError::NotFound(id.to_owned()))
    }
}

/// Checks an event before it reaches the database (whose checks would give a less clear
/// message).
fn validate(event: &NewEvent) -> Result<(), RunError> {
    let t = &event.event_type;
    let well_formed = !t.is_empty()
        && t.len() <= 64
        && t.starts_with(|c: char| c.is_ascii_uppercase())
        && t.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if !well_formed {
        return Err(RunError::Invalid(format!(
            "event type {t:?} must be capitals, digits and _ (at most 64), starting with a capital, e.g. PROGRESS"
        )));
    }
    if let Some(p) = event.percentage
        && !(0.0..=100.0).contains(&p)
    {
        return Err(RunError::Invalid(format!(
            "percentage {p} must be between 0 and 100"
        )));
    }
    if event.counters.as_ref().is_some_and(|c| !c.is_object()) {
        return Err(RunError::Invalid(
            "counters must be an object, e.g. {\"files_done\": 3, \"files_total\": 10}".into(),
        ));
    }
    Ok(())
}

/// The runs' store.
#[derive(Debug, Clone)]
pub struct Runs {
    store: Store,
}

impl Runs {
    pub fn new(store: Store) -> Runs {
        Runs { store }
    }

    /// Starts a run of `kind`; with an `idempotency_key`, a second start of the same kind and
    /// key returns the first run (whatever its input).
    pub async fn start(
        &self,
        kind: &str,
        input: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<Run, RunError> {
        if kind.trim().is_empty() {
            return Err(RunError::Invalid("a run needs a kind".into()));
        }
        let client = self.store.client().await?;
        let inserted = client
            .query_opt(
                &format!(
                    "INSERT INTO viewcast_runs (kind, input, idempotency_key) VALUES ($1, $2, $3) \
                     ON CONFLICT (kind, idempotency_key) DO NOTHING RETURNING {RUN_COLUMNS}"
                ),
                &[&kind, input, &idempotency_key],
            )
            .await?;
        if let Some(row) = inserted {
            return Ok(run(&row));
        }
        let existing = client
            .query_one(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM viewcast_runs WHERE kind = $1 AND idempotency_key = $2"
                ),
                &[&kind, &idempotency_key],
            )
            .await?;
        Ok(run(&existing))
    }

    pub async fn get(&self, id: &str) -> Result<Run, RunError> {
        let id = checked_id(id)?;
        let client = self.store.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {RUN_COLUMNS} FROM viewcast_runs WHERE id = $1::text::uuid"),
                &[&id],
            )
            .await?;
        row.map(|r| run(&r))
            .ok_or_else(|| RunError::NotFound(id.to_owned()))
    }

    /// Appends `events` to the run, in order, in one transaction with their outbox rows.
    /// With `expected_seq`, the first event must get that seq (an optimistic check for a
    /// writer that knows where it is). Returns the events as stored.
    pub async fn append(
        &self,
        id: &str,
        events: &[NewEvent],
        expected_seq: Option<i64>,
    ) -> Result<Vec<Event>, RunError> {
        let id = checked_id(id)?;
        for e in events {
            validate(e)?;
        }
        if let Some(i) = events
            .iter()
            .position(|e| TERMINAL.contains(&e.event_type.as_str()))
            && i + 1 < events.len()
        {
            return Err(RunError::Invalid(format!(
                "event {} ({}) ends the run: no event may follow it",
                i + 1,
                events[i].event_type
            )));
        }
        let mut client = self.store.client().await?;
        let tx = client.transaction().await?;
        let current = tx
            .query_opt(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM viewcast_runs WHERE id = $1::text::uuid FOR UPDATE"
                ),
                &[&id],
            )
            .await?
            .map(|r| run(&r))
            .ok_or_else(|| RunError::NotFound(id.to_owned()))?;
        if let Some(terminal) = current.terminal_type {
            return Err(RunError::Ended {
                id: id.to_owned(),
                terminal,
            });
        }
        if let Some(expected) = expected_seq
            && expected != current.next_seq
        {
            return Err(RunError::SeqMismatch {
                id: id.to_owned(),
                expected,
                next: current.next_seq,
            });
        }
        let insert = tx
            .prepare(&format!(
                "INSERT INTO viewcast_run_events \
                     (run_id, seq, type, stage, message, percentage, counters, data) \
                 VALUES ($1::text::uuid, $2, $3, $4, $5, $6, $7, $8) RETURNING {EVENT_COLUMNS}"
            ))
            .await?;
        let mut stored = Vec::with_capacity(events.len());
        for (seq, e) in (current.next_seq..).zip(events) {
            let row = tx
                .query_one(
                    &insert,
                    &[
                        &id,
                        &seq,
                        &e.event_type,
                        &e.stage,
                        &e.message,
                        &e.percentage,
                        &e.counters,
                        &e.data,
                    ],
                )
                .await?;
            stored.push(event(&row));
        }
        if !stored.is_empty() {
            tx.execute(
                "INSERT INTO viewcast_run_outbox (run_id, seq) \
                 SELECT $1::text::uuid, s FROM generate_series($2::bigint, $3::bigint) AS s",
                &[
                    &id,
                    &current.next_seq,
                    &(current.next_seq + stored.len() as i64 - 1),
                ],
            )
            .await?;
            tx.execute(&format!("SELECT pg_notify('{OUTBOX_CHANNEL}', $1)"), &[&id])
                .await?;
        }
        tx.commit().await?;
        Ok(stored)
    }

    /// Cancels a run: one `CANCELLED` event with `reason`. Cancelling a cancelled run returns
    /// it; one that ended otherwise is an error.
    pub async fn cancel(&self, id: &str, reason: Option<&str>) -> Result<Run, RunError> {
        let event = NewEvent {
            event_type: "CANCELLED".into(),
            message: Some(reason.unwrap_or("cancelled").to_owned()),
            ..NewEvent::default()
        };
        match self.append(id, &[event], None).await {
            Ok(_) => self.get(id).await,
            Err(RunError::Ended { terminal, .. }) if terminal == "CANCELLED" => self.get(id).await,
            Err(err) => Err(err),
        }
    }

    /// The run's events from `from_seq` (inclusive), at most `limit`, in order.
    pub async fn events(
        &self,
        id: &str,
        from_seq: i64,
        limit: i64,
    ) -> Result<Vec<Event>, RunError> {
        let id = checked_id(id)?;
        let client = self.store.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM viewcast_run_events \
                     WHERE run_id = $1::text::uuid AND seq >= $2 ORDER BY seq LIMIT $3"
                ),
                &[&id, &from_seq, &limit],
            )
            .await?;
        if rows.is_empty() {
            // Not found, or nothing from there yet.
            self.get(id).await?;
        }
        Ok(rows.iter().map(event).collect())
    }
}
