//! The Materialize feed: one dedicated connection per source running
//! `COPY (SUBSCRIBE (SELECT … FROM <view>) [ENVELOPE UPSERT (KEY (…))] WITH (PROGRESS …)) TO
//! STDOUT`, decoded incrementally (`copytext`) and turned into one batch per completed
//! timestamp (`protocol`).
//!
//! COPY rather than `DECLARE … CURSOR` + `FETCH`: the stream arrives as soon as Materialize
//! sends it, with no round trip per fetch and no per-row result objects; the measurement is
//! in BENCHMARKS.md.
//!
//! On a lost connection the feed retries with backoff and resumes with `AS OF frontier - 1`
//! and `SNAPSHOT = false` (exclusive: updates at the frontier and after), which needs the
//! view's history retained back to the frontier (`RETAIN HISTORY`). When Materialize answers
//! that the timestamp is no longer readable, the feed takes a fresh snapshot instead and the
//! hub publishes only its difference from the cache: clients see neither a gap, nor a
//! duplicate, nor a reset. A view that does not exist or a cluster that is unknown is the
//! operator's to fix: the source reports it and retries slowly; other sources carry on.

pub mod protocol;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{StreamExt, pin_mut};
use tokio_util::sync::CancellationToken;

use super::copytext::CopyDecoder;
use super::{Backoff, FeedError, FeedEvent};
use crate::config::{Envelope, SourceDef, quote_ident};
use crate::hub::Hub;
use protocol::{Decoder, Output, ProtocolError, output_layout};

/// Silence longer than this on a subscribe means the connection is gone.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// How the Materialize feeds of one server connect.
#[derive(Debug, Clone)]
pub struct MzFeedSettings {
    /// libpq-style URL (`postgres://user@host:6875/materialize`).
    pub url: String,
}

/// The subscribe a session runs.
pub fn subscribe_sql(source: &SourceDef, resume_from: Option<u64>) -> String {
    let columns: Vec<String> = source
        .columns
        .iter()
        .map(|c| quote_ident(&c.sql_name))
        .collect();
    let mut sql = format!(
        "COPY (SUBSCRIBE (SELECT {} FROM {})",
        columns.join(", "),
        source.relation.sql()
    );
    if source.feed.envelope == Envelope::Upsert {
        let keys: Vec<String> = source
            .primary_key
            .iter()
            .map(|&i| quote_ident(&source.columns[i].sql_name))
            .collect();
        let _ = write!(sql, " ENVELOPE UPSERT (KEY ({}))", keys.join(", "));
    }
    match resume_from {
        None => sql.push_str(" WITH (PROGRESS)"),
        // AS OF is exclusive without a snapshot: updates at `frontier` and after.
        Some(frontier) => {
            let _ = write!(
                sql,
                " WITH (PROGRESS, SNAPSHOT = false) AS OF {}",
                frontier.saturating_sub(1)
            );
        }
    }
    sql.push_str(") TO STDOUT");
    sql
}

/// Runs the feed of `hub` until `cancel` fires.
pub async fn run(hub: Arc<Hub>, settings: Arc<MzFeedSettings>, cancel: CancellationToken) {
    let mut feed = MzFeed {
        hub,
        settings,
        resume_from: None,
    };
    super::supervise(&mut feed, &cancel).await;
}

struct MzFeed {
    hub: Arc<Hub>,
    settings: Arc<MzFeedSettings>,
    resume_from: Option<u64>,
}

impl super::Sessions for MzFeed {
    const BACKEND: &'static str = "materialize";

    async fn session(
        &mut self,
        _cancel: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), FeedError> {
        session(&self.hub, &self.settings, &mut self.resume_from, backoff).await
    }

    fn forget_position(&mut self) -> bool {
        self.resume_from.take().is_some()
    }

    fn hubs(&self) -> Vec<Arc<Hub>> {
        vec![self.hub.clone()]
    }
}

/// One connection: subscribe (fresh or resumed) and apply until an error.
async fn session(
    hub: &Arc<Hub>,
    settings: &MzFeedSettings,
    resume_from: &mut Option<u64>,
    backoff: &mut Backoff,
) -> Result<(), FeedError> {
    let source = hub.source().clone();
    let (client, connection) =
        super::connect(&settings.url, "cannot connect to materialize", classify).await?;
    let connection = tokio::spawn(connection);
    let result = async {
        let mut setup = format!(
            "SET application_name = {}",
            quote_literal(&format!("viewcast {}", source.name))
        );
        if let Some(cluster) = &source.feed.cluster {
            let _ = write!(setup, "; SET cluster = {}", quote_literal(cluster));
        }
        if let Some(database) = &source.feed.database {
            let _ = write!(setup, "; SET database = {}", quote_literal(database));
        }
        client
            .batch_execute(&setup)
            .await
            .map_err(|e| classify("cannot set up the session", &e))?;
        let sql = subscribe_sql(&source, *resume_from);
        tracing::debug!(source = %source.name, sql = %sql, "subscribing");
        let stream = client
            .copy_out(sql.as_str())
            .await
            .map_err(|e| classify("cannot subscribe", &e))?;
        if resume_from.is_some() {
            hub.metrics().resumes.inc();
        }
        pin_mut!(stream);
        let mut decoder = Decoder::new(source.clone(), source.feed.envelope, *resume_from);
        let mut copy = CopyDecoder::new();
        let mut received = false;
        loop {
            // Materialize sends a progress row whenever its frontier moves (about every second):
            // a long silence is a half-open connection or a cluster without replicas.
            let chunk = match tokio::time::timeout(READ_TIMEOUT, stream.next()).await {
                Ok(Some(chunk)) => chunk.map_err(|e| classify("the subscribe failed", &e))?,
                Ok(None) => return Ok(()),
                Err(_) => {
                    return Err(FeedError::Connection(format!(
                        "no data or progress from Materialize for {} s (is the cluster running?)",
                        READ_TIMEOUT.as_secs()
                    )));
                }
            };
            if !received {
                // The subscribe streams: the next loss starts a fresh backoff.
                received = true;
                backoff.reset();
            }
            let read = copy
                .feed(&chunk, |fields| {
                    decoder.row(fields, &mut |output| apply(hub, output))
                })
                .map_err(|e: ProtocolError| {
                    FeedError::Setup(format!("cannot read the subscribe: {e}"))
                });
            // Everything before the frontier is applied (even when a later row failed): a new
            // session resumes there and does not apply those timestamps again.
            if decoder.snapshot_done() && decoder.frontier() > 0 {
                *resume_from = Some(decoder.frontier());
            }
            read?;
        }
    }
    .await;
    drop(client);
    connection.abort();
    result
}

/// Hands one decoder output to the hub (or reports it).
fn apply(hub: &Hub, output: Output) {
    match output {
        Output::Event(event) => {
            if let FeedEvent::Batch(batch) = &event {
                let lag = lag(batch.position.0);
                hub.metrics().lag_ms.set(lag.as_millis() as i64);
                hub.metrics().commit_delay.observe(lag);
            }
            hub.apply(event);
        }
        Output::KeyViolation { ts, key } => {
            hub.metrics().errors.inc();
            hub.metrics().key_violations.inc();
            tracing::error!(source = %hub.source().name, mz_timestamp = ts, key = ?key.0, "key violation: the view has more than one row for a primary key; the change is not applied");
        }
    }
}

/// Time between a Materialize timestamp (milliseconds since the Unix epoch) and now.
fn lag(ts_ms: u64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Duration::from_millis(now.saturating_sub(ts_ms))
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Materialize reports most errors as SQLSTATE XX000, so its messages decide: a compacted
/// AS OF means "take a fresh snapshot", a missing object or cluster is the operator's to fix,
/// the rest is retried.
fn classify(what: &str, err: &tokio_postgres::Error) -> FeedError {
    let Some(db) = err.as_db_error() else {
        return FeedError::from_db(what, err);
    };
    let message = db.message();
    let text = format!("{what}: {message}");
    if message.contains("is not valid for all inputs")
        || message.contains("could not find a valid timestamp")
    {
        return FeedError::Compacted(text);
    }
    let operator = message.contains("unknown catalog item")
        || message.contains("unknown cluster")
        || message.contains("unknown schema")
        || message.contains("unknown database")
        || message.contains("was dropped")
        || message.contains("does not exist")
        || matches!(db.code().code().get(..2), Some("42" | "28"));
    if operator {
        FeedError::Setup(text)
    } else {
        FeedError::Connection(text)
    }
}

/// The output columns `SUBSCRIBE` sends (for tools and tests): names in order.
pub fn output_columns(source: &SourceDef) -> Vec<String> {
    let mut names = vec!["mz_timestamp".to_owned(), "mz_progressed".to_owned()];
    names.push(match source.feed.envelope {
        Envelope::Upsert => "mz_state".to_owned(),
        Envelope::Diff => "mz_diff".to_owned(),
    });
    names.extend(
        output_layout(source, source.feed.envelope)
            .into_iter()
            .map(|i| source.columns[i].sql_name.clone()),
    );
    names
}
