//! Cursors: Materialize's `DECLARE c CURSOR FOR SUBSCRIBE …` and RisingWave's subscription
//! cursors, both read with `FETCH`.
//!
//! RisingWave, as its documentation and source describe it: the output is the table's
//! columns, then `op` (`Insert`, `Delete`, `UpdateDelete`, `UpdateInsert`; an update is an
//! `UpdateDelete` of the old row directly followed by an `UpdateInsert` of the new one) and
//! `rw_timestamp` (Unix milliseconds of the epoch; NULL on `FULL` snapshot rows). `SINCE t` is
//! inclusive and must lie within the subscription's retention. One FETCH may span several
//! epochs and an epoch may be split across `FETCH`es. Without a timeout FETCH returns at once
//! what is ready (possibly nothing). With one it waits while it has no row, and, as RisingWave
//! checks its deadline after every row, may return at the deadline with only part of what is
//! ready, mid-epoch: the stand-in cuts every other such FETCH at a random row.

use std::collections::VecDeque;

use rand::Rng as _;
use std::sync::Arc;
use std::time::Duration;

use crate::store::{Column, Row, Store, now_ms};
use crate::subscribe::{OutRow, Subscription};
use crate::types::SqlType;
use crate::{Error, errors};

/// Where a RisingWave cursor starts.
pub enum Start {
    /// Changes after now.
    Now,
    /// The oldest retained change.
    Begin,
    /// The table's rows first (as `Insert` with a NULL timestamp), then changes.
    Full,
    /// Changes at or after this timestamp.
    Since(u64),
}

pub struct RwCursor {
    store: Arc<Store>,
    key: String,
    table_name: String,
    columns: Vec<Column>,
    primary_key: Vec<usize>,
    /// The next epoch to read.
    next: u64,
    hold: u64,
    buffer: VecDeque<OutRow>,
    /// Timed `FETCH`es so far (every other one returns early, as at a deadline).
    timed_fetches: u64,
}

impl Drop for RwCursor {
    fn drop(&mut self) {
        self.store.release(self.hold);
    }
}

impl RwCursor {
    pub async fn open(
        store: Arc<Store>,
        subscription: &str,
        start: Start,
    ) -> Result<RwCursor, Error> {
        // The cursor sees every write committed before it was declared.
        let read = store.read_ts();
        if store.wait_complete(read).await.is_err() {
            return Err(errors::shutting_down());
        }
        let (key, retention) = {
            let catalog = store.lock();
            let sub = catalog.subscriptions.get(subscription).ok_or_else(|| Error {
                code: "42704",
                message: format!(
                    "Failed to run the query\n\nCaused by these errors (recent errors listed first):\n  1: Catalog error\n  2: subscription not found: {subscription}"
                ),
            })?;
            (sub.table.clone(), sub.retention)
        };
        let mut catalog = store.lock();
        let upper = catalog.upper;
        let table = catalog
            .tables
            .get_mut(&key)
            .ok_or_else(|| errors::unknown_item(&key))?;
        let oldest = now_ms()
            .saturating_sub(retention.as_millis() as u64)
            .max(table.since);
        let mut buffer = VecDeque::new();
        let next = match start {
            Start::Now => upper,
            Start::Begin => oldest,
            Start::Since(t) if t < oldest => {
                return Err(Error {
                    code: "XX000",
                    message: "Failed to run the query\n\nCaused by these errors (recent errors listed first):\n  1: rw_timestamp is too small, need to be large than the current unix_millis - subscription's retention time".into(),
                });
            }
            Start::Since(t) => t,
            Start::Full => {
                let at = upper.saturating_sub(1);
                for (row, count) in table.snapshot_at(at) {
                    for _ in 0..count {
                        let mut out = row.clone();
                        out.push(Some("Insert".into()));
                        out.push(None);
                        buffer.push_back(out);
                    }
                }
                upper
            }
        };
        let columns = table.columns.clone();
        let primary_key = table.primary_key.clone();
        let table_name = key.rsplit('.').next().unwrap_or(&key).to_owned();
        drop(catalog);
        let hold = store.hold(next);
        Ok(RwCursor {
            store,
            key,
            table_name,
            columns,
            primary_key,
            next,
            hold,
            buffer,
            timed_fetches: 0,
        })
    }

    pub fn description(&self) -> Vec<(String, SqlType)> {
        let mut out: Vec<(String, SqlType)> = self
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.ty))
            .collect();
        out.push(("op".into(), SqlType::Text));
        out.push(("rw_timestamp".into(), SqlType::Int8));
        out
    }

    /// Reads the epochs completed since the last read into the buffer.
    fn read(&mut self) -> Result<(), Error> {
        let (upper, epochs) = {
            let catalog = self.store.lock();
            let table = catalog
                .tables
                .get(&self.key)
                .ok_or_else(|| errors::dropped(&self.table_name))?;
            if self.next < table.since {
                return Err(Error {
                    code: "XX000",
                    message: "Failed to run the query\n\nCaused by these errors (recent errors listed first):\n  1: data may have been recycled, please recreate cursor".into(),
                });
            }
            (
                catalog.upper,
                table.changes_between(self.next, catalog.upper),
            )
        };
        for (ts, changes) in epochs {
            let mut i = 0;
            while i < changes.len() {
                let (row, diff) = &changes[i];
                let stamp = Some(ts.to_string());
                let next_is_new = changes.get(i + 1).is_some_and(|(new, d)| {
                    *diff < 0
                        && *d > 0
                        && !self.primary_key.is_empty()
                        && self.primary_key.iter().all(|&k| new[k] == row[k])
                });
                if next_is_new {
                    self.push(row, "UpdateDelete", stamp.clone());
                    self.push(&changes[i + 1].0, "UpdateInsert", stamp);
                    i += 2;
                    continue;
                }
                let op = if *diff > 0 { "Insert" } else { "Delete" };
                for _ in 0..diff.unsigned_abs() {
                    self.push(row, op, stamp.clone());
                }
                i += 1;
            }
        }
        self.next = upper;
        self.store.move_hold(self.hold, upper);
        Ok(())
    }

    fn push(&mut self, row: &Row, op: &str, ts: Option<String>) {
        let mut out = row.clone();
        out.push(Some(op.to_owned()));
        out.push(ts);
        self.buffer.push_back(out);
    }

    /// Up to `count` rows (all with `None`); waits up to `timeout` while there are none.
    pub async fn fetch(
        &mut self,
        count: Option<u64>,
        timeout: Option<Duration>,
    ) -> Result<Vec<OutRow>, Error> {
        let mut upper_rx = self.store.watch_upper();
        self.read()?;
        if self.buffer.is_empty()
            && let Some(timeout) = timeout
        {
            let deadline = tokio::time::Instant::now() + timeout;
            while self.buffer.is_empty() {
                let changed = tokio::time::timeout_at(deadline, upper_rx.changed()).await;
                if !matches!(changed, Ok(Ok(()))) {
                    break;
                }
                self.read()?;
            }
        }
        let mut n = count.map_or(self.buffer.len(), |n| (n as usize).min(self.buffer.len()));
        if timeout.is_some() && n > 1 {
            self.timed_fetches += 1;
            if self.timed_fetches.is_multiple_of(2) {
                n = rand::rng().random_range(1..n);
            }
        }
        Ok(self.buffer.drain(..n).collect())
    }
}

/// A Materialize cursor over a SUBSCRIBE: rows are handed out as FETCH asks for them.
pub struct MzCursor {
    subscription: Subscription,
    buffer: VecDeque<OutRow>,
}

impl MzCursor {
    pub fn new(subscription: Subscription) -> MzCursor {
        MzCursor {
            subscription,
            buffer: VecDeque::new(),
        }
    }

    pub fn description(&self) -> Vec<(String, SqlType)> {
        self.subscription.description()
    }

    /// `FETCH`: without a timeout, waits for at least one row; with one, returns what arrives
    /// within it (possibly nothing). At most `count` rows.
    pub async fn fetch(
        &mut self,
        count: Option<u64>,
        timeout: Option<Duration>,
    ) -> Result<Vec<OutRow>, Error> {
        if self.buffer.is_empty() {
            let next = async {
                loop {
                    match self.subscription.next().await? {
                        Some(rows) if rows.is_empty() => {}
                        Some(rows) => return Ok::<_, Error>(rows),
                        None => return Ok(Vec::new()),
                    }
                }
            };
            let rows = match timeout {
                None => next.await?,
                Some(t) => tokio::time::timeout(t, next)
                    .await
                    .unwrap_or(Ok(Vec::new()))?,
            };
            self.buffer.extend(rows);
        }
        let n = count.map_or(self.buffer.len(), |n| (n as usize).min(self.buffer.len()));
        Ok(self.buffer.drain(..n).collect())
    }
}
