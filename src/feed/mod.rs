//! Change feeds: one upstream subscription per source, turned into [`FeedEvent`]s.
//!
//! A feed owns its database connections and nothing else. It emits a [`FeedEvent::Snapshot`]
//! (the full state at a boundary) whenever it (re)starts without a resumable position, then one
//! [`Batch`] per closed upstream timestamp (PostgreSQL: per committed transaction), never
//! splitting one. It acknowledges upstream only positions the hub reports as applied. It never
//! panics on database errors: it reports them as status and retries with backoff.

pub mod copytext;
pub mod materialize;
pub mod postgres;
pub mod risingwave;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use crate::change::{Batch, Change, FeedEvent, Position};
use crate::hub::Hub;
use crate::value::{Key, Row};

/// Why a session ended.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FeedError {
    /// The database is unreachable or the connection broke: retry soon.
    #[error("{0}")]
    Connection(String),
    /// Something the operator must fix (missing table, column, publication, privilege, a
    /// value that does not parse): retry slowly and report it.
    #[error("{0}")]
    Setup(String),
    /// The position to resume from is no longer readable (Materialize compacted the history,
    /// RisingWave's retention passed): take a fresh snapshot at once.
    #[error("{0}")]
    Compacted(String),
}

impl FeedError {
    pub(crate) fn is_permanent(&self) -> bool {
        matches!(self, FeedError::Setup(_))
    }

    /// Classifies a database error by its SQLSTATE: connection problems, lack of resources,
    /// operator intervention (shutdown, cancel), rollbacks and objects in the wrong state (a
    /// slot still in use) pass with a retry; anything else the server answered (missing table,
    /// privilege, bad value) needs an operator.
    pub(crate) fn from_db(what: &str, err: &tokio_postgres::Error) -> FeedError {
        let Some(db) = err.as_db_error() else {
            let message = format!("{what}: {}", crate::pgconn::error_text(err));
            return if crate::pgconn::is_tls_failure(err) {
                FeedError::Setup(message)
            } else {
                FeedError::Connection(message)
            };
        };
        let message = format!("{what}: {}", db.message());
        if is_transient(db.code().code()) {
            FeedError::Connection(message)
        } else {
            FeedError::Setup(message)
        }
    }
}

/// Opens a connection to `url`; a URL the operator must fix is a `Setup` error, a failed
/// connection is told by `classify` (each database reports its errors its own way).
pub(crate) async fn connect(
    url: &str,
    what: &str,
    classify: fn(&str, &tokio_postgres::Error) -> FeedError,
) -> Result<(tokio_postgres::Client, crate::pgconn::Connection), FeedError> {
    crate::pgconn::connect(url).await.map_err(|err| match err {
        crate::pgconn::ConnectError::Connect(err) => classify(what, &err),
        err @ crate::pgconn::ConnectError::Url(_) => FeedError::Setup(format!("{what}: {err}")),
    })
}

/// Whether a SQLSTATE is of a class a retry can outlast: connection problems, lack of
/// resources, operator intervention, rollbacks, objects in the wrong state.
pub(crate) fn is_transient(sqlstate: &str) -> bool {
    matches!(
        sqlstate.get(..2),
        Some("08" | "40" | "53" | "55" | "57" | "58")
    )
}

/// Exponential backoff with jitter: 100 ms doubling to 30 s, reset once a session streams.
pub(crate) struct Backoff {
    current: Duration,
    pub(crate) max: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff {
            current: Duration::from_millis(100),
            max: Duration::from_secs(30),
        }
    }

    pub(crate) fn next(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        let jitter = rand::random::<f64>() * 0.4 + 0.8;
        base.mul_f64(jitter)
    }

    pub(crate) fn reset(&mut self) {
        self.current = Duration::from_millis(100);
    }
}

/// A feed as [`supervise`] runs it: sessions that connect, snapshot or resume, and stream until
/// an error.
pub(crate) trait Sessions: Send {
    /// The upstream, for the logs.
    const BACKEND: &'static str;

    /// Runs one session; `Ok` only when cancelled. A session stops its stream itself on
    /// cancellation; while it is still connecting or reading a snapshot, shutdown drops it.
    fn session(
        &mut self,
        cancel: &CancellationToken,
        backoff: &mut Backoff,
    ) -> impl Future<Output = Result<(), FeedError>> + Send;

    /// Forgets the position to resume from (the upstream compacted it); whether there was one.
    fn forget_position(&mut self) -> bool;

    /// The hubs a lost session takes down.
    fn hubs(&self) -> Vec<Arc<Hub>>;

    /// Work between sessions, while the backoff runs out (the PostgreSQL feed takes in
    /// sources that join); returns after each piece of it.
    fn between_sessions(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }
}

/// Runs `feed`'s sessions until `cancel` fires: after a lost session every hub reports `Down`
/// (and counts a reconnect), and the next session starts after a backoff — 100 ms doubling to
/// 30 s with jitter, 30 s for an operator's problem. A resume point the upstream compacted
/// means a fresh snapshot at once.
pub(crate) async fn supervise<S: Sessions>(feed: &mut S, cancel: &CancellationToken) {
    let mut backoff = Backoff::new();
    loop {
        let result = tokio::select! {
            biased;
            result = feed.session(cancel, &mut backoff) => result,
            () = cancel.cancelled() => Ok(()),
        };
        if cancel.is_cancelled() {
            return;
        }
        let err = match result {
            Ok(()) => FeedError::Connection("the stream ended".into()),
            Err(err) => err,
        };
        let err = match err {
            // Only when resuming; a fresh snapshot failing so is an ordinary error.
            FeedError::Compacted(message) if feed.forget_position() => {
                tracing::info!(backend = S::BACKEND, error = %message, "resume point no longer readable; taking a fresh snapshot");
                continue;
            }
            FeedError::Compacted(message) => FeedError::Connection(message),
            other => other,
        };
        let delay = if err.is_permanent() {
            backoff.max
        } else {
            backoff.next()
        };
        tracing::warn!(backend = S::BACKEND, error = %err, retry_in_ms = delay.as_millis() as u64, "feed lost");
        for hub in feed.hubs() {
            hub.metrics().reconnects.inc();
            hub.apply(FeedEvent::Down {
                reason: err.to_string(),
                permanent: err.is_permanent(),
            });
        }
        let retry = tokio::time::sleep(delay);
        tokio::pin!(retry);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = &mut retry => break,
                () = feed.between_sessions() => {}
            }
        }
    }
}

/// One timestamp's rows of the diff envelope grouped by key, keys in first-seen order.
pub(crate) fn group_by_key(
    rows: Vec<(Row, i64)>,
    key_columns: &[usize],
) -> Vec<(Key, Vec<(Row, i64)>)> {
    let mut order: Vec<Key> = Vec::new();
    let mut grouped: std::collections::HashMap<Key, Vec<(Row, i64)>> =
        std::collections::HashMap::new();
    for (row, diff) in rows {
        grouped
            .entry(row.key(key_columns))
            .or_insert_with_key(|k| {
                order.push(k.clone());
                Vec::new()
            })
            .push((row, diff));
    }
    order
        .into_iter()
        .map(|key| {
            let rows = grouped.remove(&key).unwrap_or_default();
            (key, rows)
        })
        .collect()
}

/// What one key's changes at one upstream timestamp amount to.
#[derive(Debug)]
pub(crate) enum Net {
    Nothing,
    Upsert(Row),
    Delete,
    /// More than one row for the key: the upstream broke the primary key.
    Violation,
}

/// One key's rows of one timestamp in the diff envelope: exactly one row added is an upsert,
/// only removals a delete, anything else (two rows, a count of two) a key violation.
pub(crate) fn net_diff(rows: Vec<(Row, i64)>) -> Net {
    let mut counts: Vec<(Row, i64)> = Vec::new();
    for (row, diff) in rows {
        match counts.iter_mut().find(|(r, _)| *r == row) {
            Some((_, count)) => *count += diff,
            None => counts.push((row, diff)),
        }
    }
    let added: Vec<&(Row, i64)> = counts.iter().filter(|(_, c)| *c > 0).collect();
    let removed = counts.iter().any(|(_, c)| *c < 0);
    match added.as_slice() {
        [] if removed => Net::Delete,
        [] => Net::Nothing,
        [(row, 1)] => Net::Upsert(row.clone()),
        _ => Net::Violation,
    }
}

#[cfg(test)]
mod tests {
    use super::is_transient;

    #[test]
    fn sqlstate_classes_decide_a_retry_and_short_codes_do_not_panic() {
        assert!(is_transient("08006"));
        assert!(is_transient("57P01"));
        assert!(!is_transient("42P01"));
        // A server (or a stand-in) may send anything: a code too short has no class.
        assert!(!is_transient(""));
        assert!(!is_transient("0"));
        assert!(!is_transient("é"));
    }
}
