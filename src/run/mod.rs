//! Runs: long jobs and their durable, ordered, replayable events.
//!
//! This module owns the runs' store: starting a run (idempotently), appending events (with
//! an optimistic `expected_seq`), cancelling, and reading runs and events back. The
//! invariants are the database's (migration 7): a run's events are numbered from 1 without
//! gap or repeat, at most one terminal event (`COMPLETED`, `FAILED`, `CANCELLED`) ends it and
//! nothing follows, events never change. An append writes the events and their outbox rows
//! in one transaction and notifies `viewcast_run_outbox` at commit.
//!
//! The outbox publisher (`publisher`) is the only publisher: it marks events published and
//! announces them on `viewcast_run_published`; every replica's `bus` listens and feeds its
//! consumers (`stream`), which replay from the store and then follow live.

pub mod bus;
pub mod executor;
pub mod publisher;
pub mod stream;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::config::{Executor, RunKind};
use crate::store::{Connector, Store, StoreError, rfc3339};
use crate::telemetry::RunMetrics;

/// The event types that end a run.
pub const TERMINAL: [&str; 3] = ["COMPLETED", "FAILED", "CANCELLED"];

/// The channel an append notifies at commit (the outbox publisher listens).
pub const OUTBOX_CHANNEL: &str = "viewcast_run_outbox";

/// The channel the publisher announces published events on (and `start` new runs).
pub const PUBLISHED_CHANNEL: &str = "viewcast_run_published";

/// "Run `run_id` is published up to `upto` (0: no event yet) and its status is `status`";
/// `ended`: its terminal event is published (at `upto`). Sent as `id upto status 0|1`,
/// several joined with `,` in one notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub run_id: String,
    pub upto: i64,
    pub status: String,
    pub ended: bool,
}

impl std::fmt::Display for Announcement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.run_id,
            self.upto,
            self.status,
            u8::from(self.ended)
        )
    }
}

/// The announcements of one notification payload (malformed entries are skipped).
pub fn parse_announcements(payload: &str) -> impl Iterator<Item = Announcement> + '_ {
    payload.split(',').filter_map(|entry| {
        let mut parts = entry.split(' ');
        let run_id = parts.next()?.to_owned();
        let upto = parts.next()?.parse().ok()?;
        let status = parts.next()?.to_owned();
        let ended = parts.next()? == "1";
        Some(Announcement {
            run_id,
            upto,
            status,
            ended,
        })
    })
}

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
    /// Beyond a size limit (`--run-max-payload-bytes`, `--run-max-events-per-append`).
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unauthorized(String),
    /// The session's role may not do this (`permissions:` in schema.yaml).
    #[error("{0}")]
    Forbidden(String),
    #[error(
        "this subscription fell {0} status changes behind and missed them: query runs for the current state, then subscribe again"
    )]
    Lagged(u64),
    #[error("runs need a store: set VIEWCAST_STORE_URL (or DATABASE_URL) to a PostgreSQL database")]
    NoStore,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RunError {
    /// The GraphQL error code (`extensions.code`).
    pub fn code(&self) -> &'static str {
        match self {
            RunError::NotFound(_) => "NOT_FOUND",
            RunError::Ended { .. } => "RUN_ENDED",
            RunError::SeqMismatch { .. } => "SEQ_MISMATCH",
            RunError::Invalid(_) => "BAD_USER_INPUT",
            RunError::TooLarge(_) => "PAYLOAD_TOO_LARGE",
            RunError::Unauthorized(_) => "UNAUTHENTICATED",
            RunError::Forbidden(_) => "FORBIDDEN",
            RunError::Lagged(_) => "SUBSCRIPTION_ENDED",
            RunError::NoStore | RunError::Store(_) => "STORE_UNAVAILABLE",
        }
    }
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
    /// Who started it (a session's subject); `None` for the admin.
    pub created_by: Option<String>,
}

impl Run {
    pub fn is_ended(&self) -> bool {
        self.terminal_type.is_some()
    }

    /// As the HTTP API gives it (the GraphQL `Run` type's field names).
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "id": self.id,
            "kind": self.kind,
            "status": self.status.to_uppercase(),
            "input": self.input,
            "idempotencyKey": self.idempotency_key,
            "createdAt": self.created_at,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            "lastSeq": self.next_seq - 1,
            "terminalType": self.terminal_type,
            "terminalMessage": self.terminal_message,
            "createdBy": self.created_by,
        })
    }
}

impl Event {
    /// As the HTTP API and SSE give it (the GraphQL `RunEvent` type's field names).
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "runId": self.run_id,
            "seq": self.seq,
            "type": self.event_type,
            "stage": self.stage,
            "message": self.message,
            "percentage": self.percentage,
            "counters": self.counters,
            "data": self.data,
            "createdAt": self.created_at,
        })
    }
}

/// An event to append (from JSON: the GraphQL `RunEventInput`'s field names).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEvent {
    /// `STARTED`, `PROGRESS`, `LOG`, … or a terminal type; capitals, digits and `_`.
    #[serde(rename = "type")]
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
    ", next_seq, terminal_type, terminal_message, created_by"
);

pub(crate) const EVENT_COLUMNS: &str = concat!(
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
        created_by: row.get(11),
    }
}

pub(crate) fn event(row: &tokio_postgres::Row) -> Event {
    event_from(row, 0)
}

/// An event from `EVENT_COLUMNS` starting at column `at`.
fn event_from(row: &tokio_postgres::Row, at: usize) -> Event {
    Event {
        run_id: row.get(at),
        seq: row.get(at + 1),
        event_type: row.get(at + 2),
        stage: row.get(at + 3),
        message: row.get(at + 4),
        percentage: row.get(at + 5),
        counters: row.get(at + 6),
        data: row.get(at + 7),
        created_at: row.get(at + 8),
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

/// The bytes a JSON value takes as text.
fn json_bytes(value: &Value) -> usize {
    serde_json::to_vec(value).map_or(usize::MAX, |v| v.len())
}

/// Checks an event before it reaches the database (whose checks would give a less clear
/// message): its form, and that its text (stage, message, counters and data together) fits
/// in `max_bytes`.
fn validate(event: &NewEvent, max_bytes: usize) -> Result<(), RunError> {
    let bytes = event.stage.as_ref().map_or(0, String::len)
        + event.message.as_ref().map_or(0, String::len)
        + event.counters.as_ref().map_or(0, json_bytes)
        + event.data.as_ref().map_or(0, json_bytes);
    if bytes > max_bytes {
        return Err(RunError::TooLarge(format!(
            "a {} event of {bytes} bytes (stage, message, counters and data); at most {max_bytes} (--run-max-payload-bytes): store large results elsewhere and link them",
            event.event_type
        )));
    }
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

/// How runs behave on this server.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// A consumer that has received nothing for this long gets a heartbeat.
    pub heartbeat: Duration,
    /// Runs that ended longer ago than this are deleted with their events; `None`: kept.
    pub retention: Option<Duration>,
    /// Largest run input, and largest event (stage, message, counters and data), as JSON text.
    pub max_payload_bytes: usize,
    /// Most events in one append.
    pub max_events_per_append: usize,
}

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings {
            heartbeat: Duration::from_secs(15),
            retention: None,
            max_payload_bytes: 64 * 1024,
            max_events_per_append: 1_000,
        }
    }
}

/// The runs of a server: their store, and this replica's end of the bus.
#[derive(Debug, Clone)]
pub struct Runs {
    connector: Arc<Connector>,
    bus: Arc<bus::Bus>,
    settings: RunSettings,
    /// The declared kinds (`None`: any kind, external).
    kinds: Option<Arc<Vec<RunKind>>>,
    /// The key worker tokens derive from (read from the store once).
    token_key: Arc<tokio::sync::OnceCell<Vec<u8>>>,
    metrics: Arc<RunMetrics>,
    /// Where requests a size limit refused are counted (the server's).
    rejections: Arc<crate::limits::Rejections>,
}

impl Runs {
    /// Runs on a store already connected, without publishing or following (tests of the
    /// store alone).
    pub fn new(store: Store) -> Runs {
        Runs::with(Connector::ready(store), RunSettings::default())
    }

    /// Runs on the server's store; `spawn` starts publishing and listening.
    pub fn with(connector: Arc<Connector>, settings: RunSettings) -> Runs {
        Runs {
            connector,
            bus: Arc::new(bus::Bus::default()),
            settings,
            kinds: None,
            token_key: Arc::default(),
            metrics: Arc::default(),
            rejections: Arc::default(),
        }
    }

    /// Counts refused requests into `rejections` (the server's).
    #[must_use]
    pub fn with_rejections(mut self, rejections: Arc<crate::limits::Rejections>) -> Runs {
        self.rejections = rejections;
        self
    }

    /// `err`, counted when a size limit refused the request.
    fn refused(&self, err: RunError) -> RunError {
        if matches!(err, RunError::TooLarge(_)) {
            self.rejections.count(crate::limits::Limit::RunPayload);
        }
        err
    }

    /// Counts into `metrics` (the server's).
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<RunMetrics>) -> Runs {
        self.metrics = metrics;
        self
    }

    pub fn metrics(&self) -> &Arc<RunMetrics> {
        &self.metrics
    }

    /// Only these kinds may be started (`None`: any kind, external).
    #[must_use]
    pub fn with_kinds(mut self, kinds: Option<Vec<RunKind>>) -> Runs {
        self.kinds = kinds.map(Arc::new);
        self
    }

    /// The kind `name` as declared (any kind is external when none are declared).
    pub fn kind(&self, name: &str) -> Option<RunKind> {
        match &self.kinds {
            None => Some(RunKind {
                name: name.to_owned(),
                executor: Executor::External,
            }),
            Some(kinds) => kinds.iter().find(|k| k.name == name).cloned(),
        }
    }

    /// The run-scoped token a worker of run `id` appends with: an HMAC of the id under the
    /// store's key, so every replica, and a restarted one, derives the same.
    pub async fn worker_token(&self, id: &str) -> Result<String, RunError> {
        use hmac::Mac;
        let key = self
            .token_key
            .get_or_try_init(|| async {
                let client = self.client().await?;
                let row = client
                    .query_one("SELECT key FROM viewcast_run_token_key", &[])
                    .await?;
                Ok::<_, RunError>(row.get::<_, String>(0).into_bytes())
            })
            .await?;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key");
        mac.update(id.as_bytes());
        let mut hex = String::with_capacity(64);
        for byte in mac.finalize().into_bytes() {
            let _ = std::fmt::Write::write_fmt(&mut hex, format_args!("{byte:02x}"));
        }
        Ok(hex)
    }

    /// `append` for a worker: a run whose kind has an `http` executor takes events only with
    /// its run-scoped token (the others need none).
    pub async fn append_as_worker(
        &self,
        id: &str,
        events: &[NewEvent],
        expected_seq: Option<i64>,
        token: Option<&str>,
    ) -> Result<Vec<Event>, RunError> {
        let any_http = self.kinds.as_ref().is_some_and(|kinds| {
            kinds
                .iter()
                .any(|k| matches!(k.executor, Executor::Http { .. }))
        });
        if any_http {
            self.check_worker_token(id, token).await?;
        }
        self.append(id, events, expected_seq).await
    }

    async fn check_worker_token(&self, id: &str, token: Option<&str>) -> Result<(), RunError> {
        let run = self.get(id).await?;
        let needs_token = self
            .kind(&run.kind)
            .is_some_and(|k| matches!(k.executor, Executor::Http { .. }));
        if needs_token {
            let expected = self.worker_token(&run.id).await?;
            let given = token.unwrap_or_default();
            // Constant time: the comparison does not tell how much of a guess was right.
            let same = given.len() == expected.len()
                && given
                    .bytes()
                    .zip(expected.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0;
            if !same {
                return Err(RunError::Unauthorized(format!(
                    "run {} is driven by a worker: append with its run-scoped token ({})",
                    run.id,
                    if token.is_some() {
                        "this one is wrong"
                    } else {
                        "none was given"
                    }
                )));
            }
        }
        Ok(())
    }

    /// The run's last event, if any.
    pub async fn last_event(&self, id: &str) -> Result<Option<Event>, RunError> {
        self.last_event_of(id, &[]).await
    }

    /// The run's last event of one of `types` (any type if empty), if any.
    pub async fn last_event_of(&self, id: &str, types: &[&str]) -> Result<Option<Event>, RunError> {
        let id = checked_id(id)?;
        let types: Vec<String> = types.iter().map(|t| (*t).to_owned()).collect();
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM viewcast_run_events \
                     WHERE run_id = $1::text::uuid AND (cardinality($2::text[]) = 0 OR type = ANY($2)) \
                     ORDER BY seq DESC LIMIT 1"
                ),
                &[&id, &types],
            )
            .await?;
        Ok(row.as_ref().map(event))
    }

    /// How long the run has been quiet: since its last event, or since it was created (the
    /// store's clock, so replicas agree).
    pub async fn quiet_for(&self, id: &str) -> Result<Duration, RunError> {
        let id = checked_id(id)?;
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT extract(epoch FROM clock_timestamp() - coalesce( \
                     (SELECT max(created_at) FROM viewcast_run_events WHERE run_id = r.id), \
                     r.created_at))::float8 \
                 FROM viewcast_runs r WHERE r.id = $1::text::uuid",
                &[&id],
            )
            .await?
            .ok_or_else(|| RunError::NotFound(id.to_owned()))?;
        Ok(Duration::from_secs_f64(row.get::<_, f64>(0).max(0.0)))
    }

    /// Starts this replica's outbox publisher (it publishes while it holds the publisher
    /// lock) and its bus listener.
    pub fn spawn(
        &self,
        shutdown: &tokio_util::sync::CancellationToken,
        tasks: &tokio_util::task::TaskTracker,
    ) {
        tasks.spawn(publisher::run(
            self.connector.clone(),
            self.metrics.clone(),
            self.settings.retention,
            shutdown.clone(),
        ));
        tasks.spawn(
            self.bus
                .clone()
                .run(self.connector.clone(), shutdown.clone()),
        );
    }

    pub fn bus(&self) -> &Arc<bus::Bus> {
        &self.bus
    }

    /// `None` when run events reach this replica's consumers (or there is no store), else
    /// why not (for `/ready`).
    pub fn not_ready(&self) -> Option<String> {
        if !self.connector.is_configured() || *self.bus.listening().borrow() {
            return None;
        }
        Some(self.connector.not_ready().map_or_else(
            || "not listening for run events yet".to_owned(),
            |reason| format!("not listening for run events: {reason}"),
        ))
    }

    pub fn settings(&self) -> &RunSettings {
        &self.settings
    }

    /// The store (waiting a short while if it is connecting).
    async fn store(&self) -> Result<Store, RunError> {
        self.connector
            .wait(Duration::from_secs(5))
            .await?
            .ok_or(RunError::NoStore)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, RunError> {
        Ok(self.store().await?.client().await?)
    }

    /// Starts a run of `kind`; with an `idempotency_key`, a second start of the same kind and
    /// key returns the first run (whatever its input).
    pub async fn start(
        &self,
        kind: &str,
        input: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<Run, RunError> {
        Ok(self
            .start_or_get(kind, input, idempotency_key, None)
            .await?
            .0)
    }

    /// `start` on behalf of `created_by`, telling whether the run is new (false: an earlier
    /// start with the same key, whoever made it).
    pub async fn start_or_get(
        &self,
        kind: &str,
        input: &Value,
        idempotency_key: Option<&str>,
        created_by: Option<&str>,
    ) -> Result<(Run, bool), RunError> {
        if kind.trim().is_empty() {
            return Err(RunError::Invalid("a run needs a kind".into()));
        }
        if kind.len() > 128 || idempotency_key.is_some_and(|k| k.len() > 256) {
            return Err(RunError::Invalid(
                "a run's kind has at most 128 bytes, its idempotency key at most 256".into(),
            ));
        }
        let bytes = json_bytes(input);
        if bytes > self.settings.max_payload_bytes {
            return Err(self.refused(RunError::TooLarge(format!(
                "the run's input is {bytes} bytes of JSON; at most {} (--run-max-payload-bytes): pass a reference to large inputs",
                self.settings.max_payload_bytes
            ))));
        }
        if self.kind(kind).is_none() {
            let declared: Vec<&str> = self
                .kinds
                .iter()
                .flat_map(|k| k.iter().map(|k| k.name.as_str()))
                .collect();
            return Err(RunError::Invalid(format!(
                "unknown run kind {kind:?}: schema.yaml declares {}",
                if declared.is_empty() {
                    "none".to_owned()
                } else {
                    declared.join(", ")
                }
            )));
        }
        let client = self.client().await?;
        let inserted = client
            .query_opt(
                &format!(
                    "WITH created AS ( \
                         INSERT INTO viewcast_runs (kind, input, idempotency_key, created_by) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (kind, idempotency_key) DO NOTHING RETURNING *) \
                     SELECT {RUN_COLUMNS}, \
                         pg_notify('{PUBLISHED_CHANNEL}', id::text || ' 0 pending 0') \
                     FROM created"
                ),
                &[&kind, input, &idempotency_key, &created_by],
            )
            .await?;
        if let Some(row) = inserted {
            return Ok((run(&row), true));
        }
        let existing = client
            .query_one(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM viewcast_runs WHERE kind = $1 AND idempotency_key = $2"
                ),
                &[&kind, &idempotency_key],
            )
            .await?;
        Ok((run(&existing), false))
    }

    pub async fn get(&self, id: &str) -> Result<Run, RunError> {
        let id = checked_id(id)?;
        let client = self.client().await?;
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
        if events.len() > self.settings.max_events_per_append {
            return Err(self.refused(RunError::TooLarge(format!(
                "{} events in one append; at most {} (--run-max-events-per-append)",
                events.len(),
                self.settings.max_events_per_append
            ))));
        }
        for e in events {
            validate(e, self.settings.max_payload_bytes).map_err(|e| self.refused(e))?;
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
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let lock = tx
            .prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM viewcast_runs WHERE id = $1::text::uuid FOR UPDATE"
            ))
            .await?;
        let current = tx
            .query_opt(&lock, &[&id])
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
            .prepare_cached(&format!(
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
            // The outbox rows, and the publisher's wake-up (sent at commit).
            let outbox = tx
                .prepare_cached(&format!(
                    "WITH rows AS ( \
                         INSERT INTO viewcast_run_outbox (run_id, seq) \
                         SELECT $1::text::uuid, s FROM generate_series($2::bigint, $3::bigint) AS s \
                         RETURNING 1) \
                     SELECT pg_notify('{OUTBOX_CHANNEL}', $1), (SELECT count(*) FROM rows)"
                ))
                .await?;
            let last = current.next_seq + stored.len() as i64 - 1;
            tx.query_one(&outbox, &[&id, &current.next_seq, &last])
                .await?;
        }
        tx.commit().await?;
        self.metrics.appended.add(stored.len() as u64);
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
        self.read_events(id, from_seq, limit, false).await
    }

    /// Like `events`, but only those the outbox publisher has published (what consumers see).
    pub async fn published_events(
        &self,
        id: &str,
        from_seq: i64,
        limit: i64,
    ) -> Result<Vec<Event>, RunError> {
        self.read_events(id, from_seq, limit, true).await
    }

    async fn read_events(
        &self,
        id: &str,
        from_seq: i64,
        limit: i64,
        published_only: bool,
    ) -> Result<Vec<Event>, RunError> {
        let id = checked_id(id)?;
        let client = self.client().await?;
        self.metrics.event_reads.inc();
        let rows = client
            .query(
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM viewcast_run_events \
                     WHERE run_id = $1::text::uuid AND seq >= $2 \
                       AND (NOT $4 OR published_at IS NOT NULL) \
                     ORDER BY seq LIMIT $3"
                ),
                &[&id, &from_seq, &limit.max(0), &published_only],
            )
            .await?;
        if rows.is_empty() {
            // Not found, or nothing from there yet. The connection goes back first: taking a
            // second one while holding it could wait forever on a busy pool.
            drop(client);
            self.get(id).await?;
        }
        Ok(rows.iter().map(event).collect())
    }

    /// The events of several runs at once (one query), each key `(run id, from seq, limit)`
    /// as for [`Runs::events`]: what a page of runs with their events needs. Runs that do not
    /// exist (or have no event from there) are left out.
    pub async fn events_of_many(
        &self,
        keys: &[(String, i64, i64)],
    ) -> Result<std::collections::HashMap<(String, i64, i64), Vec<Event>>, RunError> {
        let keys: Vec<&(String, i64, i64)> =
            keys.iter().filter(|k| checked_id(&k.0).is_ok()).collect();
        let ids: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
        let froms: Vec<i64> = keys.iter().map(|k| k.1).collect();
        let limits: Vec<i64> = keys.iter().map(|k| k.2.max(0)).collect();
        let client = self.client().await?;
        self.metrics.event_reads.inc();
        let rows = client
            .query(
                &format!(
                    "SELECT k.i, e.* FROM unnest($1::text[], $2::bigint[], $3::bigint[])                          WITH ORDINALITY AS k(id, from_seq, lim, i)                      CROSS JOIN LATERAL (                          SELECT {EVENT_COLUMNS} FROM viewcast_run_events                          WHERE run_id = k.id::uuid AND seq >= k.from_seq                          ORDER BY seq LIMIT k.lim) e"
                ),
                &[&ids, &froms, &limits],
            )
            .await?;
        let mut out: std::collections::HashMap<(String, i64, i64), Vec<Event>> =
            std::collections::HashMap::new();
        for row in rows {
            let index: i64 = row.get(0);
            let Some(key) = usize::try_from(index - 1).ok().and_then(|i| keys.get(i)) else {
                continue;
            };
            out.entry((*key).clone())
                .or_default()
                .push(event_from(&row, 1));
        }
        Ok(out)
    }

    /// Runs, newest first, matching `filter`: at most `first` after the cursor `after`.
    pub async fn list(
        &self,
        filter: &RunFilter,
        first: i64,
        after: Option<&str>,
    ) -> Result<RunPage, RunError> {
        if !(1..=1_000).contains(&first) {
            return Err(RunError::Invalid(format!(
                "first must be between 1 and 1000, not {first}"
            )));
        }
        for status in &filter.status {
            if !STATUSES.contains(&status.as_str()) {
                return Err(RunError::Invalid(format!(
                    "unknown status {status:?}: one of {}",
                    STATUSES.join(", ")
                )));
            }
        }
        let (after_time, after_id) = match after {
            Some(cursor) => {
                let (time, id) = decode_cursor(cursor)?;
                (Some(time), Some(id))
            }
            None => (None, None),
        };
        let statuses: Option<&Vec<String>> = (!filter.status.is_empty()).then_some(&filter.status);
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {RUN_COLUMNS}, created_at::text FROM viewcast_runs \
                     WHERE ($1::text IS NULL OR kind = $1) \
                       AND ($2::text[] IS NULL OR status = ANY($2)) \
                       AND ($3::text IS NULL OR (created_at, id) < ($3::timestamptz, $4::text::uuid)) \
                       AND ($6::text IS NULL OR created_by = $6) \
                     ORDER BY created_at DESC, id DESC LIMIT $5"
                ),
                &[
                    &filter.kind,
                    &statuses,
                    &after_time,
                    &after_id,
                    &(first + 1),
                    &filter.created_by,
                ],
            )
            .await?;
        let has_next_page = rows.len() as i64 > first;
        let runs: Vec<(Run, String)> = rows
            .iter()
            .take(usize::try_from(first).unwrap_or(0))
            .map(|r| {
                let run = run(r);
                let cursor = encode_cursor(&r.get::<_, String>(12), &run.id);
                (run, cursor)
            })
            .collect();
        Ok(RunPage {
            runs,
            has_next_page,
        })
    }
}

/// Statuses a run can have.
pub const STATUSES: [&str; 5] = ["pending", "running", "completed", "failed", "cancelled"];

/// Which runs `list` returns (every field optional).
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub kind: Option<String>,
    /// Any of these (empty: any status).
    pub status: Vec<String>,
    /// Only the runs this subject started.
    pub created_by: Option<String>,
}

impl RunFilter {
    pub fn matches(&self, run: &Run) -> bool {
        self.kind.as_ref().is_none_or(|k| *k == run.kind)
            && (self.status.is_empty() || self.status.contains(&run.status))
            && self
                .created_by
                .as_ref()
                .is_none_or(|by| run.created_by.as_ref() == Some(by))
    }
}

/// A page of runs, each with its cursor.
#[derive(Debug, Clone)]
pub struct RunPage {
    pub runs: Vec<(Run, String)>,
    pub has_next_page: bool,
}

/// A cursor is opaque to clients: the run's creation time (PostgreSQL's text form, exact to
/// the microsecond) and id, base64url-encoded.
fn encode_cursor(created_at: &str, id: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{created_at}|{id}"))
}

fn decode_cursor(cursor: &str) -> Result<(String, String), RunError> {
    use base64::Engine;
    let bad = || {
        RunError::Invalid(format!(
            "invalid cursor {cursor:?}: pass an endCursor or edge cursor as given"
        ))
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (time, id) = text.split_once('|').ok_or_else(bad)?;
    let id = checked_id(id).map_err(|_| bad())?;
    if time.is_empty() || !time.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(bad());
    }
    Ok((time.to_owned(), id.to_owned()))
}
