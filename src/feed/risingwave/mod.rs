//! The RisingWave feed: a subscription on the source's table or materialized view
//! (`CREATE SUBSCRIPTION IF NOT EXISTS … WITH (retention = …)`, shared by every viewcast
//! instance) and one subscription cursor per source and server, read with
//! `FETCH n FROM cur WITH (timeout = …)`.
//!
//! A fresh cursor is declared `FULL`: the relation's rows first (`op` = `Insert`, NULL
//! `rw_timestamp`), then changes. Rows carry the relation's columns (matched by name), `op`
//! (`Insert`, `Delete`, `UpdateDelete`, `UpdateInsert`) and `rw_timestamp` (the epoch, Unix
//! milliseconds). An epoch's rows may be split across `FETCH`es, and one `FETCH` may hold several
//! epochs. A FETCH with a timeout may stop at its deadline mid-epoch (RisingWave checks it
//! after every row), so an epoch is complete only when a row of a later epoch arrives or a
//! `FETCH` without a timeout (which returns at once what is ready) returns nothing: epochs
//! become visible whole, and an empty answer ends at an epoch boundary. Each complete epoch
//! becomes one batch, consolidated per key.
//!
//! After a lost connection the cursor is declared again `SINCE <last complete epoch>`; SINCE
//! is inclusive, so rows of that epoch (already applied) are dropped. When that epoch is
//! older than the retention, the feed declares a `FULL` cursor and the hub publishes only the
//! difference from its cache.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_postgres::{SimpleQueryMessage, SimpleQueryRow};
use tokio_util::sync::CancellationToken;

use super::{Backoff, Batch, Change, FeedError, FeedEvent, Net, Position, group_by_key, net_diff};
use crate::config::{SourceDef, quote_ident};
use crate::hub::Hub;
use crate::value::{Key, Row, Value, parse_text};

/// Rows asked for per FETCH.
const FETCH_ROWS: usize = 1000;
/// A FETCH that takes longer than this means the connection is gone (half-open).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a FETCH waits for a first row.
const FETCH_TIMEOUT: &str = "1s";
/// Retention of the subscription when the source sets none.
const DEFAULT_RETENTION: &str = "1h";

/// How the RisingWave feeds of one server connect.
#[derive(Debug, Clone)]
pub struct RwFeedSettings {
    /// libpq-style URL (`postgres://root@host:4566/dev`).
    pub url: String,
}

/// The subscription a source reads (in the relation's schema). Its name carries a hash of
/// the relation, so repointing a source (or two sources differing only in case) never reads
/// another relation's subscription.
pub fn subscription_name(source: &SourceDef) -> String {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let hash = source
        .relation
        .sql()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    let name = format!(
        "viewcast_{}_{:08x}",
        source.name.to_ascii_lowercase(),
        hash & 0xffff_ffff
    );
    match &source.relation.schema {
        Some(schema) => format!("{}.{}", quote_ident(schema), quote_ident(&name)),
        None => quote_ident(&name),
    }
}

/// Runs the feed of `hub` until `cancel` fires.
pub async fn run(hub: Arc<Hub>, settings: Arc<RwFeedSettings>, cancel: CancellationToken) {
    let mut feed = RwFeed {
        hub,
        settings,
        resume: None,
    };
    super::supervise(&mut feed, &cancel).await;
}

struct RwFeed {
    hub: Arc<Hub>,
    settings: Arc<RwFeedSettings>,
    resume: Option<u64>,
}

impl super::Sessions for RwFeed {
    const BACKEND: &'static str = "risingwave";

    async fn session(
        &mut self,
        _cancel: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), FeedError> {
        session(&self.hub, &self.settings, &mut self.resume, backoff).await
    }

    fn forget_position(&mut self) -> bool {
        self.resume.take().is_some()
    }

    fn hubs(&self) -> Vec<Arc<Hub>> {
        vec![self.hub.clone()]
    }
}

async fn session(
    hub: &Arc<Hub>,
    settings: &RwFeedSettings,
    resume: &mut Option<u64>,
    backoff: &mut Backoff,
) -> Result<(), FeedError> {
    let source = hub.source().clone();
    let (client, connection) =
        super::connect(&settings.url, "cannot connect to risingwave", classify).await?;
    let connection = tokio::spawn(connection);
    let result = async {
        let subscription = subscription_name(&source);
        let retention = source
            .feed
            .retention
            .as_deref()
            .unwrap_or(DEFAULT_RETENTION);
        client
            .batch_execute(&format!(
                "CREATE SUBSCRIPTION IF NOT EXISTS {subscription} FROM {} WITH (retention = '{retention}')",
                source.relation.sql()
            ))
            .await
            .map_err(|e| classify("cannot create the subscription", &e))?;
        let mut declare = format!("DECLARE viewcast_cursor SUBSCRIPTION CURSOR FOR {subscription}");
        match *resume {
            Some(epoch) => {
                let _ = write!(declare, " SINCE {epoch}");
            }
            None => declare.push_str(" FULL"),
        }
        client
            .batch_execute(&declare)
            .await
            .map_err(|e| classify("cannot declare the cursor", &e))?;
        if resume.is_some() {
            hub.metrics().resumes.inc();
        }
        let mut reader = Reader::new(source.clone(), *resume);
        let wait = format!("FETCH {FETCH_ROWS} FROM viewcast_cursor WITH (timeout = '{FETCH_TIMEOUT}')");
        let ready = format!("FETCH {FETCH_ROWS} FROM viewcast_cursor");
        let mut fetched_once = false;
        loop {
            // Wait for rows; then take what else is ready until nothing is: that empty answer
            // closes the epochs read.
            let mut query = &wait;
            loop {
                let rows = fetch(&client, query).await?;
                if !fetched_once {
                    // The cursor answers: the next loss starts a fresh backoff.
                    fetched_once = true;
                    backoff.reset();
                }
                let read = reader.rows(&rows, &mut |output| apply(hub, output));
                if read.is_ok() && rows.is_empty() {
                    reader.drained(&mut |output| apply(hub, output));
                }
                // Applied epochs count even when a later row fails.
                if let Some(epoch) = reader.resume_point() {
                    *resume = Some(epoch);
                }
                read?;
                if rows.is_empty() {
                    break;
                }
                query = &ready;
            }
        }
    }
    .await;
    drop(client);
    connection.abort();
    result
}

/// One FETCH's rows; a FETCH that does not answer within [`READ_TIMEOUT`] is a lost
/// connection.
async fn fetch(
    client: &tokio_postgres::Client,
    query: &str,
) -> Result<Vec<SimpleQueryRow>, FeedError> {
    let messages = tokio::time::timeout(READ_TIMEOUT, client.simple_query(query))
        .await
        .map_err(|_| {
            FeedError::Connection(format!(
                "RisingWave did not answer a FETCH within {} s",
                READ_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| classify("the cursor failed", &e))?;
    Ok(messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .collect())
}

fn apply(hub: &Hub, output: Output) {
    match output {
        Output::Event(event) => {
            if let FeedEvent::Batch(batch) = &event {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let lag = Duration::from_millis(now.saturating_sub(batch.position.0));
                hub.metrics().lag_ms.set(lag.as_millis() as i64);
                hub.metrics().commit_delay.observe(lag);
            }
            hub.apply(event);
        }
        Output::KeyViolation { epoch, key } => {
            hub.metrics().errors.inc();
            hub.metrics().key_violations.inc();
            tracing::error!(source = %hub.source().name, rw_timestamp = epoch, key = ?key.0, "key violation: the relation has more than one row for a primary key; the change is not applied");
        }
    }
}

/// What the reader tells its session.
#[derive(Debug)]
pub enum Output {
    Event(FeedEvent),
    KeyViolation { epoch: u64, key: Key },
}

/// Turns fetched rows into events (no I/O; one per cursor).
pub struct Reader {
    source: Arc<SourceDef>,
    /// For each source column, its position in the fetched rows (found from the first row).
    layout: Option<Layout>,
    /// Reading the FULL snapshot: its rows so far.
    snapshot: Option<Vec<(Row, i64)>>,
    /// The epoch being read and its rows.
    open: Option<(u64, Vec<(Row, i64)>)>,
    /// The last epoch applied whole.
    complete: Option<u64>,
    /// A resumed cursor's `SINCE` epoch: its rows (and earlier ones) were applied before.
    skip_through: Option<u64>,
}

struct Layout {
    columns: Vec<usize>,
    op: usize,
    ts: usize,
}

impl Reader {
    /// A reader of a `FULL` cursor (`resume: None`) or of one declared `SINCE resume`.
    pub fn new(source: Arc<SourceDef>, resume: Option<u64>) -> Reader {
        Reader {
            source,
            layout: None,
            snapshot: resume.is_none().then(Vec::new),
            open: None,
            complete: resume,
            skip_through: resume,
        }
    }

    /// The epoch a new cursor resumes from (`SINCE`, dropping its rows), once the snapshot is
    /// applied.
    pub fn resume_point(&self) -> Option<u64> {
        if self.snapshot.is_some() {
            None
        } else {
            self.complete
        }
    }

    /// Reads one FETCH's rows, handing out the epochs they complete (those before a later
    /// epoch's row).
    pub fn rows(
        &mut self,
        rows: &[SimpleQueryRow],
        out: &mut impl FnMut(Output),
    ) -> Result<(), FeedError> {
        for row in rows {
            if self.layout.is_none() {
                let names: Vec<&str> = row
                    .columns()
                    .iter()
                    .map(tokio_postgres::SimpleColumn::name)
                    .collect();
                self.layout = Some(layout_of(&self.source, &names)?);
            }
            let layout = self.layout.as_ref().expect("set above");
            let op = row.get(layout.op).unwrap_or("");
            let diff = match op {
                "Insert" | "UpdateInsert" | "1" | "3" => 1,
                "Delete" | "UpdateDelete" | "2" | "4" => -1,
                other => {
                    return Err(FeedError::Setup(format!(
                        "the cursor sent an unknown op {other:?}"
                    )));
                }
            };
            let ts = match row.get(layout.ts) {
                None => None,
                Some(text) => Some(text.parse::<u64>().map_err(|_| {
                    FeedError::Setup(format!("the cursor sent an invalid rw_timestamp {text:?}"))
                })?),
            };
            let mut values = Vec::with_capacity(layout.columns.len());
            for (i, &at) in layout.columns.iter().enumerate() {
                let def = &self.source.columns[i];
                values.push(match row.get(at) {
                    None => Value::Null,
                    Some(text) => parse_text(&def.ty, text)
                        .map_err(|e| FeedError::Setup(format!("column {}: {e}", def.name)))?,
                });
            }
            let change = (Row::new(values), diff);
            match (ts, &mut self.snapshot) {
                (None, Some(snapshot)) => snapshot.push(change),
                (None, None) => {
                    return Err(FeedError::Setup(
                        "the cursor sent a row without rw_timestamp after its snapshot".into(),
                    ));
                }
                (Some(ts), _) => {
                    self.finish_snapshot(out);
                    if self.skip_through.is_some_and(|s| ts <= s) {
                        // SINCE is inclusive: that epoch was applied before.
                        continue;
                    }
                    self.skip_through = None;
                    let last = self.open.as_ref().map(|(t, _)| *t).or(self.complete);
                    if last.is_some_and(|l| ts < l) || self.complete.is_some_and(|c| ts <= c) {
                        return Err(FeedError::Connection(format!(
                            "the cursor went back to epoch {ts} after {}",
                            last.unwrap_or_default()
                        )));
                    }
                    self.close_before(ts, out);
                    match &mut self.open {
                        Some((open, rows)) if *open == ts => rows.push(change),
                        _ => self.open = Some((ts, vec![change])),
                    }
                }
            }
        }
        Ok(())
    }

    /// A FETCH without a timeout returned nothing: every epoch read so far is complete.
    pub fn drained(&mut self, out: &mut impl FnMut(Output)) {
        self.finish_snapshot(out);
        self.close_before(u64::MAX, out);
    }

    fn finish_snapshot(&mut self, out: &mut impl FnMut(Output)) {
        let Some(rows) = self.snapshot.take() else {
            return;
        };
        let mut snapshot = Vec::with_capacity(rows.len());
        for (key, net) in per_key(&self.source, rows) {
            match net {
                Net::Upsert(row) => snapshot.push(row),
                Net::Violation => out(Output::KeyViolation { epoch: 0, key }),
                Net::Delete | Net::Nothing => {}
            }
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        out(Output::Event(FeedEvent::Snapshot {
            position: Position(now),
            rows: snapshot,
        }));
    }

    fn close_before(&mut self, ts: u64, out: &mut impl FnMut(Output)) {
        let Some((open, _)) = &self.open else {
            return;
        };
        if *open >= ts {
            return;
        }
        let (epoch, rows) = self.open.take().unwrap_or_default();
        let mut changes = Vec::with_capacity(rows.len());
        for (key, net) in per_key(&self.source, rows) {
            match net {
                Net::Upsert(row) => changes.push(Change::Upsert {
                    row,
                    unchanged: None,
                }),
                Net::Delete => changes.push(Change::Delete { key }),
                Net::Violation => out(Output::KeyViolation { epoch, key }),
                Net::Nothing => {}
            }
        }
        if !changes.is_empty() {
            out(Output::Event(FeedEvent::Batch(Batch {
                position: Position(epoch),
                changes,
            })));
        }
        self.complete = Some(epoch);
    }
}

/// Matches the fetched columns to the source's, by name (a `table.` prefix is ignored).
fn layout_of(source: &SourceDef, names: &[&str]) -> Result<Layout, FeedError> {
    let bare = |name: &str| name.rsplit('.').next().unwrap_or(name).to_owned();
    let position: HashMap<String, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (bare(n), i))
        .collect();
    let find = |name: &str| {
        position.get(name).copied().ok_or_else(|| {
            FeedError::Setup(format!(
                "the relation {} has no column {name:?} (it has {})",
                source.relation,
                names.join(", ")
            ))
        })
    };
    Ok(Layout {
        columns: source
            .columns
            .iter()
            .map(|c| find(&c.sql_name))
            .collect::<Result<_, _>>()?,
        op: find("op")?,
        ts: find("rw_timestamp")?,
    })
}

/// One epoch's rows, consolidated per key, in first-seen order.
fn per_key(source: &SourceDef, rows: Vec<(Row, i64)>) -> Vec<(Key, Net)> {
    group_by_key(rows, &source.primary_key)
        .into_iter()
        .map(|(key, rows)| (key, net_diff(rows)))
        .collect()
}

/// RisingWave's errors come as multi-line reports: their text decides.
fn classify(what: &str, err: &tokio_postgres::Error) -> FeedError {
    let Some(db) = err.as_db_error() else {
        return FeedError::from_db(what, err);
    };
    let message = db.message();
    // The report's last line is the root cause, numbered (`  2: table or source not found`).
    let cause = message.lines().last().unwrap_or(message).trim();
    let cause = cause
        .split_once(": ")
        .filter(|(n, _)| n.chars().all(|c| c.is_ascii_digit()))
        .map_or(cause, |(_, rest)| rest);
    let text = format!("{what}: {cause}");
    if message.contains("rw_timestamp is too small") || message.contains("recycled") {
        return FeedError::Compacted(text);
    }
    let operator = message.contains("not found")
        || message.contains("does not exist")
        || message.contains("permission denied")
        || message.contains("unknown catalog item")
        || matches!(db.code().code().get(..2), Some("42" | "28"));
    if operator {
        FeedError::Setup(text)
    } else {
        FeedError::Connection(text)
    }
}
