//! One replication session of a database's feed: connect, resume the slot or create it, then
//! stream every source's table from it, taking each table's snapshot alongside the stream
//! ([`super::snapshot`]) as the source joins, until an error or shutdown.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::pgoutput::{self, Message, Relation};
use super::relation::{Mapped, RelationMap};
use super::setup::{self, Table};
use super::snapshot::{self, Overlay, Retry, Visibility, WATERMARK_PREFIX};
use super::{Backoff, FeedError, PgFeedSettings};
use crate::feed::{Batch, Change, FeedEvent, Position};
use crate::hub::Hub;
use crate::value::Row;

/// Snapshots read at once (each on a connection of its own).
const CONCURRENT_READS: usize = 4;

/// How long a source whose setup is wrong waits before it is checked again.
const SETUP_RETRY: Duration = Duration::from_secs(30);

/// How long a source whose read failed on a connection error waits.
const READ_RETRY: Duration = Duration::from_secs(1);

/// Committed transactions remembered to tell a read's in-progress transactions apart from
/// ones the stream had already delivered (see [`Feed::raced`]).
const RECENT_COMMITS: usize = 65_536;

/// One source of the feed, across sessions.
pub(super) struct Source {
    pub hub: Arc<Hub>,
    table: Option<Table>,
    map: Option<RelationMap>,
    state: State,
}

enum State {
    /// Needs a snapshot.
    Waiting,
    /// Its setup is being checked before the read `token` names.
    Checking { token: String },
    /// Its rows are being read; the stream's changes to it go to `overlay`.
    Reading {
        token: String,
        overlay: Overlay,
        /// The stream has passed the read's watermark.
        passed: bool,
        read: Option<(Visibility, Vec<Row>)>,
    },
    /// Its setup or read failed; checked again from `retry_at`.
    Failed { retry_at: Instant },
    /// Its hub has the table's state; the stream's changes go to it.
    Live,
}

/// Everything a database's feed keeps across sessions.
#[derive(Default)]
pub(super) struct Feed {
    pub sources: Vec<Source>,
    /// End of the last transaction every live source has applied.
    applied: Option<Lsn>,
    reads: u64,
}

impl Feed {
    pub fn add(&mut self, hub: Arc<Hub>) {
        self.sources.push(Source {
            hub,
            table: None,
            map: None,
            state: State::Waiting,
        });
    }
}

/// What a read task reports before it reads: the source's table, and a sender to say "go"
/// once the stream tracks the table's changes.
struct Resolved {
    source: usize,
    token: String,
    table: Table,
    go: oneshot::Sender<()>,
}

type ReadResult = (usize, String, Result<(Visibility, Vec<Row>), FeedError>);

/// State of one session: its connections, relations and read tasks.
struct Session<'a> {
    feed: &'a mut Feed,
    settings: &'a PgFeedSettings,
    database: crate::pgconn::Database,
    relations: HashMap<u32, Relation>,
    reads: JoinSet<ReadResult>,
    resolved_tx: mpsc::UnboundedSender<Resolved>,
    /// Transactions committed in this session, in order.
    commits: u64,
    recent: VecDeque<(u32, u64)>,
    /// End of the last transaction processed (the position a finished read is stamped with).
    position: Lsn,
}

fn connection_error(context: &str, err: impl std::fmt::Display) -> FeedError {
    FeedError::Connection(format!("{context}: {err}"))
}

/// Runs one session; returns `Ok` only when cancelled.
pub(super) async fn run(
    feed: &mut Feed,
    settings: &PgFeedSettings,
    hubs: &mut mpsc::UnboundedReceiver<Arc<Hub>>,
    cancel: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), FeedError> {
    let database = crate::pgconn::Database::parse(&settings.url)
        .map_err(|e| FeedError::Setup(format!("the database URL: {e}")))?;
    let (client, connection) = database
        .connect()
        .await
        .map_err(|e| FeedError::from_db("cannot connect to postgres", &e))?;
    let connection = tokio::spawn(connection);
    let opened = open(feed, settings, &database, &client).await;
    drop(client);
    connection.abort();
    let (mut repl, resumed) = opened?;
    let (resolved_tx, mut resolved_rx) = mpsc::unbounded_channel();
    let mut session = Session {
        position: feed.applied.unwrap_or(Lsn::from_u64(0)),
        feed,
        settings,
        database,
        relations: HashMap::new(),
        reads: JoinSet::new(),
        resolved_tx,
        commits: 0,
        recent: VecDeque::new(),
    };
    for source in &mut session.feed.sources {
        source.map = None;
        match (&source.state, resumed) {
            (State::Live, Some(lsn)) => {
                source.hub.metrics().resumes.inc();
                // Nothing changed in the cache, so clients need no news; the status goes
                // back to live.
                source.hub.apply(FeedEvent::Batch(Batch {
                    position: Position(lsn.as_u64()),
                    changes: Vec::new(),
                }));
            }
            (State::Failed { .. }, _) => {}
            _ => source.state = State::Waiting,
        }
    }
    backoff.reset();
    session.schedule();
    let mut transaction = Transaction::default();
    loop {
        let retry_at = session.next_retry();
        tokio::select! {
            () = cancel.cancelled() => {
                repl.stop();
                return Ok(());
            }
            event = repl.recv() => {
                let event = event
                    .map_err(|e| connection_error("replication stream failed", e))?
                    .ok_or_else(|| FeedError::Connection("replication stream ended".into()))?;
                session.on_event(event, &mut transaction, &mut repl)?;
            }
            Some(hub) = hubs.recv() => {
                session.feed.add(hub);
                session.schedule();
            }
            Some(resolved) = resolved_rx.recv() => session.on_resolved(resolved),
            Some(done) = session.reads.join_next() => {
                if let Ok((source, token, result)) = done {
                    session.on_read(source, &token, result);
                }
                session.schedule();
            }
            () = sleep_until(retry_at) => session.schedule(),
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Checks the publication and the slot, resumes or creates the slot, and starts streaming.
/// Returns the stream and, when it continues from where the last session stopped, the
/// position.
async fn open(
    feed: &mut Feed,
    settings: &PgFeedSettings,
    database: &crate::pgconn::Database,
    client: &tokio_postgres::Client,
) -> Result<(ReplicationClient, Option<Lsn>), FeedError> {
    setup::ensure_publication(client, settings).await?;
    let slot = settings.slot();
    let slot_state = slot_state(client, &slot).await?;
    let resume_from = match (feed.applied, slot_state) {
        (Some(lsn), SlotState::Usable) => Some(lsn),
        _ => None,
    };
    if resume_from.is_none() && slot_state != SlotState::Missing {
        // A slot left by an earlier run of this instance (its position is not ours: the cache
        // is new or the slot's history is unknown), or one PostgreSQL invalidated: start over.
        client.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await.map_err(|e| {
            FeedError::from_db(
                &format!("cannot drop stale replication slot {slot} (if another viewcast server uses it, give each server its own --instance)"),
                &e,
            )
        })?;
    }
    let mut config = replication_config(database, settings);
    if let Some(lsn) = resume_from {
        config = config.with_start_lsn(lsn);
    }
    let mut repl = ReplicationClient::connect_gated(config)
        .await
        .map_err(|e| match e {
            // A certificate or a server without TLS: the operator's to fix.
            pgwire_replication::PgWireError::Tls(message) => {
                FeedError::Setup(format!("cannot open replication connection: {message}"))
            }
            other => connection_error("cannot open replication connection", other),
        })?;
    if resume_from.is_none() {
        // Whatever was applied before belongs to a slot that is gone: every source takes a
        // new snapshot alongside the new slot's stream.
        feed.applied = None;
        let rows = repl
            .simple_query(&format!("CREATE_REPLICATION_SLOT \"{slot}\" LOGICAL pgoutput NOEXPORT_SNAPSHOT"))
            .await
            .map_err(|e| match e {
                pgwire_replication::PgWireError::Server(msg) => FeedError::Setup(format!(
                    "cannot create replication slot {slot}: {msg}; the database user needs the REPLICATION attribute and the server wal_level=logical with a free max_replication_slots entry"
                )),
                other => connection_error("cannot create replication slot", other),
            })?;
        let point = rows
            .first()
            .and_then(|row| row.get(1))
            .and_then(Option::as_ref)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .ok_or_else(|| {
                FeedError::Connection("CREATE_REPLICATION_SLOT returned no consistent point".into())
            })?;
        let point = Lsn::parse(&point)
            .map_err(|e| FeedError::Connection(format!("bad consistent point: {e}")))?;
        feed.applied = Some(point);
        tracing::info!(slot = %slot, lsn = %point.to_pg_string(), "replication slot created");
    }
    repl.start()
        .await
        .map_err(|e| connection_error("cannot start replication", e))?;
    repl.wait_started()
        .await
        .map_err(|e| connection_error("replication did not start", e))?;
    if let Some(lsn) = resume_from {
        tracing::info!(slot = %slot, lsn = %lsn.to_pg_string(), "postgres feed resumed");
    }
    Ok((repl, resume_from))
}

/// The transaction being received.
#[derive(Default)]
struct Transaction {
    open: bool,
    xid: u32,
    /// Changes per source, by source index.
    changes: HashMap<usize, Vec<Change>>,
    /// Watermarks of this server's reads written in it.
    watermarks: Vec<String>,
}

impl Session<'_> {
    fn on_event(
        &mut self,
        event: ReplicationEvent,
        transaction: &mut Transaction,
        repl: &mut ReplicationClient,
    ) -> Result<(), FeedError> {
        match event {
            ReplicationEvent::Begin { xid, .. } => {
                transaction.open = true;
                transaction.xid = xid;
                transaction.changes.clear();
                transaction.watermarks.clear();
            }
            ReplicationEvent::XLogData { data, .. } => {
                let message = pgoutput::decode(&data).map_err(|e| {
                    FeedError::Connection(format!("undecodable pgoutput message: {e}"))
                })?;
                self.on_message(&message, transaction);
            }
            ReplicationEvent::Message {
                prefix, content, ..
            } if prefix == WATERMARK_PREFIX => {
                transaction
                    .watermarks
                    .push(String::from_utf8_lossy(&content).into_owned());
            }
            ReplicationEvent::Commit {
                end_lsn,
                commit_time_micros,
                ..
            } => {
                transaction.open = false;
                let already_applied = self.feed.applied.is_some_and(|applied| end_lsn <= applied);
                if !already_applied {
                    self.position = end_lsn;
                    self.on_commit(transaction, end_lsn, commit_time_micros);
                    self.feed.applied = Some(end_lsn);
                }
                transaction.changes.clear();
                transaction.watermarks.clear();
                // Acknowledge only what the hubs have applied (apply is synchronous).
                repl.update_applied_lsn(end_lsn);
            }
            // With no transaction open and everything applied, the slot may advance past WAL
            // that holds nothing for us.
            ReplicationEvent::KeepAlive { wal_end, .. }
                if !transaction.open
                    && self.feed.applied.is_some_and(|applied| wal_end > applied) =>
            {
                self.feed.applied = Some(wal_end);
                self.position = wal_end;
                repl.update_applied_lsn(wal_end);
            }
            _ => {}
        }
        Ok(())
    }

    fn on_message(&mut self, message: &Message<'_>, transaction: &mut Transaction) {
        if let Message::Relation(relation) = message {
            self.relations.insert(relation.id, relation.clone());
            for index in 0..self.feed.sources.len() {
                let source = &self.feed.sources[index];
                if source.table.as_ref().is_some_and(|t| matches(t, relation)) {
                    self.map_relation(index, relation);
                }
            }
            return;
        }
        let mut failed = Vec::new();
        for (index, source) in self.feed.sources.iter().enumerate() {
            let Some(map) = &source.map else { continue };
            // Most sources' maps answer `Unrelated`: only a source the message concerns gets
            // an entry in the transaction.
            let mut changes = Vec::new();
            match map.map(message, &mut changes) {
                Ok(Mapped::Truncated) => changes.push(Change::Truncate),
                Ok(Mapped::Changes | Mapped::Unrelated) => {}
                Err(err) => failed.push((index, err)),
            }
            if !changes.is_empty() {
                transaction
                    .changes
                    .entry(index)
                    .or_default()
                    .append(&mut changes);
            }
        }
        // A change this source cannot take (a value that does not parse) stops this source
        // alone; it takes a new snapshot once it is checked again.
        for (index, err) in failed {
            transaction.changes.remove(&index);
            fail(
                &mut self.feed.sources[index],
                &FeedError::Setup(err.to_string()),
            );
        }
    }

    fn on_commit(&mut self, transaction: &mut Transaction, end_lsn: Lsn, commit_time: i64) {
        let lag = lag(commit_time);
        for (index, changes) in transaction.changes.drain() {
            let source = &mut self.feed.sources[index];
            match &mut source.state {
                State::Live => {
                    // Recorded before the batch is published, so a client that sees the
                    // change also sees it counted.
                    source.hub.metrics().lag_ms.set(lag.as_millis() as i64);
                    source.hub.metrics().commit_delay.observe(lag);
                    source.hub.apply(FeedEvent::Batch(Batch {
                        position: Position(end_lsn.as_u64()),
                        changes,
                    }));
                }
                State::Reading { overlay, .. } => overlay.record(transaction.xid, changes),
                _ => {}
            }
        }
        self.commits += 1;
        if self.recent.len() == RECENT_COMMITS {
            self.recent.pop_front();
        }
        self.recent.push_back((transaction.xid, self.commits));
        for token in transaction.watermarks.drain(..) {
            let found =
                self.feed.sources.iter_mut().position(
                    |s| matches!(&s.state, State::Reading { token: t, .. } if *t == token),
                );
            if let Some(index) = found {
                if let State::Reading { passed, .. } = &mut self.feed.sources[index].state {
                    *passed = true;
                }
                self.finish(index);
            }
        }
    }

    /// Builds the relation map of source `index` from the stream's description of its table.
    fn map_relation(&mut self, index: usize, relation: &Relation) {
        let source = &mut self.feed.sources[index];
        let map = RelationMap::new(source.hub.source(), relation).and_then(|map| {
            map.check_replica_identity()?;
            Ok(map)
        });
        match map {
            Ok(map) => source.map = Some(map),
            Err(err) => fail(source, &FeedError::Setup(err.to_string())),
        }
    }

    /// Starts reads for waiting sources, up to [`CONCURRENT_READS`] at once.
    fn schedule(&mut self) {
        let now = Instant::now();
        for source in &mut self.feed.sources {
            if matches!(source.state, State::Failed { retry_at } if retry_at <= now) {
                source.state = State::Waiting;
            }
        }
        let mut running = self
            .feed
            .sources
            .iter()
            .filter(|s| matches!(s.state, State::Checking { .. } | State::Reading { .. }))
            .count();
        for index in 0..self.feed.sources.len() {
            if running >= CONCURRENT_READS {
                break;
            }
            if !matches!(self.feed.sources[index].state, State::Waiting) {
                continue;
            }
            self.feed.reads += 1;
            let token = format!("{}/{}", self.settings.slot(), self.feed.reads);
            let source = &mut self.feed.sources[index];
            source.state = State::Checking {
                token: token.clone(),
            };
            self.reads.spawn(read_task(
                index,
                token,
                source.hub.source().clone(),
                self.settings.clone(),
                self.database.clone(),
                self.resolved_tx.clone(),
            ));
            running += 1;
        }
    }

    fn next_retry(&self) -> Option<Instant> {
        self.feed
            .sources
            .iter()
            .filter_map(|s| match s.state {
                State::Failed { retry_at } => Some(retry_at),
                _ => None,
            })
            .min()
    }

    /// A read task resolved its table: track the table's changes from here on, then let it read.
    fn on_resolved(&mut self, resolved: Resolved) {
        let Some(source) = self.feed.sources.get_mut(resolved.source) else {
            return;
        };
        let State::Checking { token } = &mut source.state else {
            return;
        };
        if *token != resolved.token {
            return;
        }
        let token = std::mem::take(token);
        let table = resolved.table;
        let relation = self
            .relations
            .values()
            .find(|r| matches(&table, r))
            .cloned();
        source.table = Some(table);
        source.map = None;
        source.state = State::Reading {
            token,
            overlay: Overlay::new(source.hub.source().primary_key.clone(), self.commits),
            passed: false,
            read: None,
        };
        if let Some(relation) = relation {
            self.map_relation(resolved.source, &relation);
        }
        if matches!(
            self.feed.sources[resolved.source].state,
            State::Reading { .. }
        ) {
            let _ = resolved.go.send(());
        }
    }

    fn on_read(
        &mut self,
        index: usize,
        token: &str,
        result: Result<(Visibility, Vec<Row>), FeedError>,
    ) {
        let source = &mut self.feed.sources[index];
        // A result for a read this source has since given up is of no use.
        let current = match &source.state {
            State::Checking { token: t } | State::Reading { token: t, .. } => t == token,
            _ => false,
        };
        if !current {
            return;
        }
        match result {
            Ok(rows) => {
                if let State::Reading { read, .. } = &mut source.state {
                    *read = Some(rows);
                }
                self.finish(index);
            }
            Err(err) => fail(source, &err),
        }
    }

    /// Merges a source's read and overlay once both the read is back and the stream has
    /// passed its watermark, and hands the result to the hub.
    fn finish(&mut self, index: usize) {
        let source = &mut self.feed.sources[index];
        let State::Reading {
            passed: true,
            read: Some(_),
            ..
        } = &source.state
        else {
            return;
        };
        let State::Reading {
            overlay,
            read: Some((visibility, rows)),
            ..
        } = std::mem::replace(&mut source.state, State::Waiting)
        else {
            unreachable!("matched above");
        };
        let started = overlay.started;
        let merged = if raced(&self.recent, &visibility, started) {
            Err(Retry(
                "a transaction the stream had delivered was still in progress for the read",
            ))
        } else {
            overlay.merge(rows, &visibility)
        };
        let name = &source.hub.source().name;
        match merged {
            Ok(rows) => {
                tracing::info!(source = %name, rows = rows.len(), lsn = %self.position.to_pg_string(), "postgres snapshot applied");
                source.hub.apply(FeedEvent::Snapshot {
                    position: Position(self.position.as_u64()),
                    rows,
                });
                source.state = State::Live;
            }
            Err(Retry(why)) => {
                tracing::info!(source = %name, reason = why, "postgres snapshot taken again");
                source.state = State::Waiting;
                self.schedule();
            }
        }
    }
}

/// Whether a transaction the read saw as in progress had already been delivered by the stream
/// before the table was tracked: its changes are in neither the read nor the overlay. (A commit
/// becomes visible an instant after it is written; a read can fall in between.)
fn raced(recent: &VecDeque<(u32, u64)>, visibility: &Visibility, started: u64) -> bool {
    visibility.in_progress().any(|xid| {
        recent
            .iter()
            .any(|&(committed, seq)| committed == xid && seq <= started)
    })
}

fn matches(table: &Table, relation: &Relation) -> bool {
    relation.namespace == table.schema && relation.name == table.name
}

/// Marks a source failed: its hub says why, and it is checked again later.
fn fail(source: &mut Source, err: &FeedError) {
    let name = &source.hub.source().name;
    let delay = if err.is_permanent() {
        SETUP_RETRY
    } else {
        READ_RETRY
    };
    tracing::warn!(source = %name, error = %err, retry_in_ms = delay.as_millis() as u64, "postgres source not live");
    source.hub.apply(FeedEvent::Down {
        reason: err.to_string(),
        permanent: err.is_permanent(),
    });
    source.map = None;
    source.state = State::Failed {
        retry_at: Instant::now() + delay,
    };
}

/// Checks a source's setup, waits until the stream tracks its table, reads it and writes the
/// watermark after the read.
async fn read_task(
    index: usize,
    token: String,
    source: Arc<crate::config::SourceDef>,
    settings: PgFeedSettings,
    database: crate::pgconn::Database,
    resolved: mpsc::UnboundedSender<Resolved>,
) -> ReadResult {
    let result = async {
        let (client, connection) = database
            .connect()
            .await
            .map_err(|e| FeedError::from_db("cannot connect to postgres", &e))?;
        let connection = tokio::spawn(connection);
        let result = async {
            let table = setup::check(&client, &source, &settings).await?;
            let (go, wait) = oneshot::channel();
            resolved
                .send(Resolved {
                    source: index,
                    token: token.clone(),
                    table: table.clone(),
                    go,
                })
                .map_err(|_| FeedError::Connection("the session ended".into()))?;
            wait.await
                .map_err(|_| FeedError::Connection("the session ended".into()))?;
            let read = snapshot::read(&client, &source, &table).await?;
            snapshot::watermark(&client, &token).await?;
            Ok(read)
        }
        .await;
        drop(client);
        connection.abort();
        result
    }
    .await;
    (index, token, result)
}

/// Time between a commit (PostgreSQL epoch 2000-01-01, microseconds) and now; zero if the
/// clocks disagree.
fn lag(commit_time_micros: i64) -> Duration {
    const PG_EPOCH_UNIX_SECONDS: i64 = 946_684_800;
    let now_micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let commit_unix_micros = commit_time_micros + PG_EPOCH_UNIX_SECONDS * 1_000_000;
    Duration::from_micros((now_micros - commit_unix_micros).max(0) as u64)
}

fn replication_config(
    database: &crate::pgconn::Database,
    settings: &PgFeedSettings,
) -> ReplicationConfig {
    let pg = database.config();
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        Some(tokio_postgres::config::Host::Unix(path)) => path.to_string_lossy().into_owned(),
        None => "localhost".to_owned(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let user = pg.get_user().map_or_else(
        || std::env::var("USER").unwrap_or_else(|_| "postgres".into()),
        str::to_owned,
    );
    let password = pg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let dbname = pg.get_dbname().map_or_else(|| user.clone(), str::to_owned);
    let options = snapshot::SESSION_SETTINGS
        .iter()
        .map(|(k, v)| format!("-c {k}={}", v.replace(' ', "\\ ")))
        .collect::<Vec<_>>()
        .join(" ");
    let tls = database.replication_tls(&host);
    ReplicationConfig::new(
        host,
        user,
        password,
        dbname,
        settings.slot(),
        settings.publication().as_str(),
    )
    .with_port(port)
    .with_tls(tls)
    .with_options(options)
    .with_application_name(format!("viewcast {}", settings.instance))
    .with_status_interval(Duration::from_secs(1))
    .with_wakeup_interval(Duration::from_secs(5))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Missing,
    Usable,
    /// Invalidated by PostgreSQL (`wal_status = 'lost'`, e.g. past `max_slot_wal_keep_size`).
    Lost,
}

async fn slot_state(client: &tokio_postgres::Client, slot: &str) -> Result<SlotState, FeedError> {
    let row = client
        .query_opt(
            "SELECT coalesce(wal_status, ''), active FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| FeedError::from_db("cannot read pg_replication_slots", &e))?;
    let Some(row) = row else {
        return Ok(SlotState::Missing);
    };
    // Our slot (its name is this instance's alone), streamed by someone else: never taken
    // over, never dropped.
    if row.get::<_, bool>(1) {
        return Err(FeedError::Setup(format!(
            "replication slot {slot} is in use by another connection: two servers run with the same --instance on this database; give each its own"
        )));
    }
    Ok(if row.get::<_, String>(0) == "lost" {
        SlotState::Lost
    } else {
        SlotState::Usable
    })
}

/// Drops this instance's slot so a stopped server pins no WAL.
pub(super) async fn drop_slot_on_shutdown(settings: &PgFeedSettings) {
    let slot = settings.slot();
    let Ok((client, connection)) = crate::pgconn::connect(&settings.url).await else {
        return;
    };
    let connection = tokio::spawn(connection);
    // The walsender may take a moment to release the slot after the stream stops.
    for _ in 0..50 {
        match client
            .execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active", &[&slot])
            .await
        {
            Ok(_) => {
                let still_there = client
                    .query_opt("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
                    .await
                    .is_ok_and(|r| r.is_some());
                if !still_there {
                    break;
                }
            }
            Err(_) => break,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(client);
    connection.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_races_a_commit_only_if_it_saw_a_delivered_transaction_in_progress() {
        let recent: VecDeque<(u32, u64)> = [(100, 1), (101, 2), (105, 3)].into_iter().collect();
        // 101 was delivered (commit 2) before tracking began after commit 2, yet the read
        // saw it in progress: its changes are in neither.
        let read = Visibility::parse("99:110:101").unwrap();
        assert!(raced(&recent, &read, 2));
        // Delivered after tracking began: the overlay has it.
        assert!(!raced(&recent, &read, 1));
        // Never delivered (still running, or aborted): the stream brings it later.
        let read = Visibility::parse("99:110:107").unwrap();
        assert!(!raced(&recent, &read, 3));
    }
}
