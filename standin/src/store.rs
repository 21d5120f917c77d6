//! In-memory tables with timestamped history, a logical clock, compaction and read holds.
//!
//! Every committed write transaction gets one timestamp at or after the current frontier
//! (`upper`); transactions committed within the same millisecond before the frontier moves
//! share it, as Materialize's group commit and RisingWave's epochs do. The frontier advances
//! on a tick (or after every commit when the tick is zero). A table keeps its history back to
//! its compaction frontier (`since`), which trails the frontier by the table's retention; a
//! timestamp before `since` can no longer be read.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::sql::Name;
use crate::types::SqlType;

/// A row: each column's PostgreSQL text output, `None` for NULL.
pub type Row = Vec<Option<String>>;

#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub ty: SqlType,
    pub not_null: bool,
}

/// The changes of one timestamp to one table, in the order they were made (an UPDATE is its
/// old row with -1 directly followed by its new row with +1).
pub type Changes = Vec<(Row, i64)>;

pub struct Table {
    pub columns: Vec<Column>,
    /// Column indices of a declared primary key (RisingWave needs one for its op column).
    pub primary_key: Vec<usize>,
    /// The rows as of `compacted_through` (a multiset: row → count).
    base: HashMap<Row, i64>,
    compacted_through: u64,
    /// Changes after `compacted_through`, by timestamp, ascending.
    history: VecDeque<(u64, Changes)>,
    /// The rows now (a multiset).
    pub current: HashMap<Row, i64>,
    /// Retention set with `ALTER … SET (RETAIN HISTORY FOR …)`.
    pub retain: Option<Duration>,
    /// The earliest readable timestamp.
    pub since: u64,
}

impl Table {
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// The rows as of `ts` (which must be at or after `since`).
    pub fn snapshot_at(&self, ts: u64) -> HashMap<Row, i64> {
        let mut rows = self.base.clone();
        for (at, changes) in &self.history {
            if *at > ts {
                break;
            }
            apply(&mut rows, changes);
        }
        rows
    }

    /// The changes with `from <= ts < to`, by timestamp.
    pub fn changes_between(&self, from: u64, to: u64) -> Vec<(u64, Changes)> {
        let start = self.history.partition_point(|(ts, _)| *ts < from);
        self.history
            .range(start..)
            .take_while(|(ts, _)| *ts < to)
            .cloned()
            .collect()
    }
}

fn apply(rows: &mut HashMap<Row, i64>, changes: &Changes) {
    for (row, diff) in changes {
        let count = rows.entry(row.clone()).or_insert(0);
        *count += diff;
        if *count == 0 {
            rows.remove(row);
        }
    }
}

/// A RisingWave subscription: a table and how long its changes stay readable.
pub struct RwSubscription {
    pub table: String,
    pub retention: Duration,
}

pub struct Catalog {
    pub tables: BTreeMap<String, Table>,
    pub subscriptions: BTreeMap<String, RwSubscription>,
    /// The frontier: every timestamp before it is complete.
    pub upper: u64,
    /// The latest commit's timestamp: a read sees every committed write, so it reads at
    /// this time or later (strict serializability).
    pub last_write: u64,
    /// Timestamps readers still need, by reader id (compaction keeps them).
    holds: HashMap<u64, u64>,
    next_hold: u64,
    /// Retention of tables without their own (Materialize's default is about one second).
    pub default_retain: Duration,
}

/// The store shared by every connection.
pub struct Store {
    catalog: Mutex<Catalog>,
    /// The frontier, for readers waiting for new timestamps.
    upper_tx: watch::Sender<u64>,
    tick: Duration,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The key a relation is stored under (`schema.name`, `public` by default).
pub fn table_key(name: &Name, default_schema: &str) -> String {
    format!(
        "{}.{}",
        name.schema.as_deref().unwrap_or(default_schema),
        name.name
    )
}

impl Store {
    pub fn new(tick: Duration, default_retain: Duration) -> Arc<Store> {
        let upper = now_ms();
        Arc::new(Store {
            catalog: Mutex::new(Catalog {
                tables: BTreeMap::new(),
                subscriptions: BTreeMap::new(),
                upper,
                last_write: 0,
                holds: HashMap::new(),
                next_hold: 0,
                default_retain,
            }),
            upper_tx: watch::channel(upper).0,
            tick,
        })
    }

    /// std Mutex: held only for in-memory work, never across an await.
    pub fn lock(&self) -> MutexGuard<'_, Catalog> {
        self.catalog
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn watch_upper(&self) -> watch::Receiver<u64> {
        self.upper_tx.subscribe()
    }

    pub fn create_table(&self, key: String, columns: Vec<Column>, primary_key: Vec<usize>) {
        let mut catalog = self.lock();
        let since = catalog.upper.saturating_sub(1);
        catalog.tables.insert(
            key,
            Table {
                columns,
                primary_key,
                base: HashMap::new(),
                compacted_through: since,
                history: VecDeque::new(),
                current: HashMap::new(),
                retain: None,
                since,
            },
        );
    }

    /// Applies one transaction's changes at one timestamp; returns it.
    pub fn commit(&self, writes: Vec<(String, Changes)>) -> u64 {
        let mut catalog = self.lock();
        let ts = catalog.upper.max(now_ms());
        catalog.last_write = ts;
        for (key, changes) in writes {
            let Some(table) = catalog.tables.get_mut(&key) else {
                continue;
            };
            if changes.is_empty() {
                continue;
            }
            apply(&mut table.current, &changes);
            match table.history.back_mut() {
                Some((at, existing)) if *at == ts => existing.extend(changes),
                _ => table.history.push_back((ts, changes)),
            }
        }
        if self.tick.is_zero() {
            catalog.upper = ts + 1;
            self.upper_tx.send_replace(catalog.upper);
        }
        ts
    }

    /// The timestamp a read should use: the latest complete one, or the latest write if that
    /// is newer (the read then waits for it to complete).
    pub fn read_ts(&self) -> u64 {
        let catalog = self.lock();
        catalog.upper.saturating_sub(1).max(catalog.last_write)
    }

    /// Waits until every timestamp up to and including `ts` is complete.
    pub async fn wait_complete(&self, ts: u64) -> Result<(), ()> {
        let mut upper_rx = self.watch_upper();
        while *upper_rx.borrow_and_update() <= ts {
            if upper_rx.changed().await.is_err() {
                return Err(());
            }
        }
        Ok(())
    }

    /// Moves the frontier to now (if time has passed) and compacts.
    pub fn advance(&self) {
        let mut catalog = self.lock();
        let now = now_ms();
        let latest = catalog
            .tables
            .values()
            .filter_map(|t| t.history.back().map(|(ts, _)| *ts))
            .max()
            .unwrap_or(0);
        let upper = catalog.upper.max(now).max(latest + 1);
        if upper > catalog.upper {
            catalog.upper = upper;
            self.upper_tx.send_replace(upper);
        }
        catalog.compact();
    }

    /// Pretends the retention of every table has passed: `since` moves to the frontier.
    pub fn compact_all(&self) {
        let mut catalog = self.lock();
        let since = catalog.upper.saturating_sub(1);
        for table in catalog.tables.values_mut() {
            table.since = table.since.max(since);
        }
        catalog.compact();
    }

    /// Registers a reader that still needs timestamps from `ts` on.
    pub fn hold(&self, ts: u64) -> u64 {
        let mut catalog = self.lock();
        catalog.next_hold += 1;
        let id = catalog.next_hold;
        catalog.holds.insert(id, ts);
        id
    }

    pub fn move_hold(&self, id: u64, ts: u64) {
        self.lock().holds.insert(id, ts);
    }

    pub fn release(&self, id: u64) {
        self.lock().holds.remove(&id);
    }
}

impl Catalog {
    /// Advances each table's `since` by its retention and folds history nobody can read any
    /// more into its base.
    fn compact(&mut self) {
        let upper = self.upper;
        let oldest_hold = self.holds.values().copied().min();
        let mut retention: HashMap<&str, Duration> = HashMap::new();
        for sub in self.subscriptions.values() {
            let entry = retention.entry(sub.table.as_str()).or_default();
            *entry = (*entry).max(sub.retention);
        }
        let retention: HashMap<String, Duration> = retention
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        for (key, table) in &mut self.tables {
            let retain = table
                .retain
                .unwrap_or(self.default_retain)
                .max(retention.get(key).copied().unwrap_or_default());
            let since = upper.saturating_sub(1 + retain.as_millis() as u64);
            table.since = table.since.max(since);
            let cut = oldest_hold.map_or(table.since, |h| table.since.min(h.saturating_sub(1)));
            while table.history.front().is_some_and(|(ts, _)| *ts <= cut) {
                if let Some((_, changes)) = table.history.pop_front() {
                    apply(&mut table.base, &changes);
                }
            }
            table.compacted_through = table.compacted_through.max(cut);
        }
    }
}
