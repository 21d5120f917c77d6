//! One replication session: connect, snapshot or resume, stream until an error.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use tokio_postgres::SimpleQueryMessage;
use tokio_util::sync::CancellationToken;

use super::pgoutput::{self, Message};
use super::relation::{Mapped, RelationMap};
use super::{Backoff, FeedError, PgFeedSettings, setup};
use crate::config::SourceDef;
use crate::feed::{Batch, Change, FeedEvent, Position};
use crate::hub::Hub;
use crate::value::{Row, Value, parse_text};

/// Session settings that make PostgreSQL's text output identical on the snapshot and the
/// replication connection (so a re-snapshot diff sees no spurious changes).
const SESSION_SETTINGS: &[(&str, &str)] = &[
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "1"),
];

/// Where a feed can resume: the end LSN of the last transaction the hub applied.
#[derive(Debug, Default)]
pub(super) struct Resume {
    applied: Option<Lsn>,
}

fn connection_error(context: &str, err: impl std::fmt::Display) -> FeedError {
    FeedError::Connection(format!("{context}: {err}"))
}

/// Runs one session; returns `Ok` only when cancelled.
pub(super) async fn run(
    hub: &Arc<Hub>,
    settings: &PgFeedSettings,
    resume: &mut Resume,
    cancel: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), FeedError> {
    let source = hub.source().clone();
    let database = crate::pgconn::Database::parse(&settings.url)
        .map_err(|e| FeedError::Setup(format!("the database URL: {e}")))?;
    let (client, connection) = database
        .connect()
        .await
        .map_err(|e| FeedError::from_db("cannot connect to postgres", &e))?;
    let connection = tokio::spawn(connection);
    let result = stream(
        hub, &source, settings, &database, &client, resume, cancel, backoff,
    )
    .await;
    drop(client);
    connection.abort();
    result
}

#[allow(clippy::too_many_arguments)]
async fn stream(
    hub: &Arc<Hub>,
    source: &Arc<SourceDef>,
    settings: &PgFeedSettings,
    database: &crate::pgconn::Database,
    client: &tokio_postgres::Client,
    resume: &mut Resume,
    cancel: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), FeedError> {
    let table = setup::check(client, source, settings).await?;
    let slot = settings.slot(&source.name);
    let slot_state = slot_state(client, &slot).await?;
    let resume_from = match (resume.applied, slot_state) {
        (Some(lsn), SlotState::Usable) => Some(lsn),
        _ => None,
    };
    if resume_from.is_none() && slot_state != SlotState::Missing {
        // A slot left by an earlier run of this instance (its position is not ours: the cache
        // is new or the slot's history is unknown), or one PostgreSQL invalidated: start over
        // from a fresh snapshot.
        client.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await.map_err(|e| {
            FeedError::from_db(
                &format!("cannot drop stale replication slot {slot} (if another viewcast server uses it, give each server its own --instance)"),
                &e,
            )
        })?;
    }

    let mut config = replication_config(database, settings, &source.name);
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
        // Whatever was applied before belongs to a slot that is gone: from here on, only the
        // new slot's positions count (a failure before the snapshot is applied must not leave
        // the old position to resume from).
        resume.applied = None;
        let rows = repl
            .simple_query(&format!("CREATE_REPLICATION_SLOT \"{slot}\" LOGICAL pgoutput EXPORT_SNAPSHOT"))
            .await
            .map_err(|e| match e {
                pgwire_replication::PgWireError::Server(msg) => FeedError::Setup(format!(
                    "cannot create replication slot {slot}: {msg}; the database user needs the REPLICATION attribute and the server wal_level=logical with a free max_replication_slots entry"
                )),
                other => connection_error("cannot create replication slot", other),
            })?;
        let row = rows.first().ok_or_else(|| {
            FeedError::Connection("CREATE_REPLICATION_SLOT returned no row".into())
        })?;
        let text = |i: usize| {
            row.get(i)
                .and_then(Option::as_ref)
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .ok_or_else(|| {
                    FeedError::Connection(format!("CREATE_REPLICATION_SLOT: column {i} missing"))
                })
        };
        let consistent_point = Lsn::parse(&text(1)?)
            .map_err(|e| FeedError::Connection(format!("bad consistent point: {e}")))?;
        let snapshot_name = text(2)?;
        let rows = read_snapshot(client, source, &table, &snapshot_name).await?;
        hub.apply(FeedEvent::Snapshot {
            position: Position(consistent_point.as_u64()),
            rows,
        });
        resume.applied = Some(consistent_point);
        tracing::info!(source = %source.name, slot = %slot, lsn = %consistent_point.to_pg_string(), "postgres snapshot applied");
    }
    repl.start()
        .await
        .map_err(|e| connection_error("cannot start replication", e))?;
    repl.wait_started()
        .await
        .map_err(|e| connection_error("replication did not start", e))?;
    if let Some(lsn) = resume_from {
        hub.metrics().resumes.inc();
        tracing::info!(source = %source.name, slot = %slot, lsn = %lsn.to_pg_string(), "postgres feed resumed");
        // Nothing changed in the cache, so clients need no news; the status goes back to live.
        hub.apply(FeedEvent::Batch(Batch {
            position: Position(lsn.as_u64()),
            changes: Vec::new(),
        }));
    }
    backoff.reset();
    consume(hub, source, &table, &mut repl, resume, cancel).await
}

/// Applies the replication stream, one batch per committed transaction, until an error or
/// cancellation.
async fn consume(
    hub: &Arc<Hub>,
    source: &Arc<SourceDef>,
    table: &setup::Table,
    repl: &mut ReplicationClient,
    resume: &mut Resume,
    cancel: &CancellationToken,
) -> Result<(), FeedError> {
    let mut map: Option<RelationMap> = None;
    let mut changes: Vec<Change> = Vec::new();
    let mut in_transaction = false;
    loop {
        let event = tokio::select! {
            () = cancel.cancelled() => {
                repl.stop();
                return Ok(());
            }
            event = repl.recv() => event,
        };
        let event = event
            .map_err(|e| connection_error("replication stream failed", e))?
            .ok_or_else(|| FeedError::Connection("replication stream ended".into()))?;
        match event {
            ReplicationEvent::Begin { .. } => {
                in_transaction = true;
                changes.clear();
            }
            ReplicationEvent::XLogData { data, .. } => {
                let message = pgoutput::decode(&data).map_err(|e| {
                    FeedError::Connection(format!("undecodable pgoutput message: {e}"))
                })?;
                if let Message::Relation(relation) = &message {
                    if relation.namespace == table.schema && relation.name == table.name {
                        let new_map = RelationMap::new(source, relation)
                            .map_err(|e| FeedError::Setup(e.to_string()))?;
                        new_map
                            .check_replica_identity()
                            .map_err(|e| FeedError::Setup(e.to_string()))?;
                        map = Some(new_map);
                    }
                    continue;
                }
                if let Some(map) = &map {
                    match map
                        .map(&message, &mut changes)
                        .map_err(|e| FeedError::Setup(e.to_string()))?
                    {
                        Mapped::Truncated => changes.push(Change::Truncate),
                        Mapped::Changes | Mapped::Unrelated => {}
                    }
                }
            }
            ReplicationEvent::Commit {
                end_lsn,
                commit_time_micros,
                ..
            } => {
                in_transaction = false;
                let already_applied = resume.applied.is_some_and(|applied| end_lsn <= applied);
                if !already_applied {
                    if !changes.is_empty() {
                        let batch = Batch {
                            position: Position(end_lsn.as_u64()),
                            changes: std::mem::take(&mut changes),
                        };
                        // Recorded before the batch is published, so a client that sees
                        // the change also sees it counted.
                        let lag = lag(commit_time_micros);
                        hub.metrics().lag_ms.set(lag.as_millis() as i64);
                        hub.metrics().commit_delay.observe(lag);
                        hub.apply(FeedEvent::Batch(batch));
                    }
                    resume.applied = Some(end_lsn);
                }
                changes.clear();
                // Acknowledge only what the hub has applied (apply is synchronous).
                repl.update_applied_lsn(end_lsn);
            }
            // With no transaction open and everything applied, the slot may advance past WAL
            // that holds nothing for us.
            ReplicationEvent::KeepAlive { wal_end, .. }
                if !in_transaction && resume.applied.is_some_and(|applied| wal_end > applied) =>
            {
                resume.applied = Some(wal_end);
                repl.update_applied_lsn(wal_end);
            }
            _ => {}
        }
    }
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
    source: &str,
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
    let options = SESSION_SETTINGS
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
        settings.slot(source),
        settings.publication(source).as_str(),
    )
    .with_port(port)
    .with_tls(tls)
    .with_options(options)
    .with_application_name(format!("viewcast {source}"))
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
    // Our slot (its name is this instance's and source's alone), streamed by someone else:
    // never taken over, never dropped.
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

/// Reads the whole table inside the slot's exported snapshot, as PostgreSQL text.
async fn read_snapshot(
    client: &tokio_postgres::Client,
    source: &SourceDef,
    table: &setup::Table,
    snapshot_name: &str,
) -> Result<Vec<Row>, FeedError> {
    let columns = source
        .columns
        .iter()
        .map(|c| crate::config::quote_ident(&c.sql_name))
        .collect::<Vec<_>>()
        .join(", ");
    let mut sql = String::from("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;");
    let _ = write!(
        sql,
        "SET TRANSACTION SNAPSHOT '{}';",
        snapshot_name.replace('\'', "''")
    );
    for (name, value) in SESSION_SETTINGS {
        let _ = write!(sql, "SET LOCAL {name} = '{value}';");
    }
    let _ = write!(sql, "SELECT {columns} FROM {};", table.qualified());
    sql.push_str("COMMIT;");
    let messages = client
        .simple_query(&sql)
        .await
        .map_err(|e| FeedError::from_db(&format!("cannot read {}", table.qualified()), &e))?;
    let mut rows = Vec::new();
    for message in messages {
        if let SimpleQueryMessage::Row(row) = message {
            let mut values = Vec::with_capacity(source.columns.len());
            for (i, column) in source.columns.iter().enumerate() {
                values.push(match row.get(i) {
                    None => Value::Null,
                    Some(text) => parse_text(&column.ty, text).map_err(|e| {
                        FeedError::Setup(format!(
                            "column {} of source {}: {e}; change its type in schema.yaml",
                            column.name, source.name
                        ))
                    })?,
                });
            }
            rows.push(Row::new(values));
        }
    }
    Ok(rows)
}

/// Drops this instance's slot for `source` so a stopped server pins no WAL.
pub(super) async fn drop_slot_on_shutdown(settings: &PgFeedSettings, source: &str) {
    let slot = settings.slot(source);
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
