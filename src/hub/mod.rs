//! Source hubs: one per source, shared by every consumer of that source.
//!
//! A hub owns the keyed cache of a source's current rows and a short log of recently applied
//! batches. Its feed pushes [`FeedEvent`]s in; the hub turns each into one [`AppliedBatch`] of
//! row-level changes (consolidated per key, with the old row kept for updates and deletes),
//! appends it to the log under the same lock that readers take, and wakes consumers.
//! Consumers read the log from their own cursor, so a consumer that joins gets the cache as of
//! a batch boundary and then exactly the batches after it, and a consumer that falls behind
//! reads several batches at once and conflates them per key instead of queueing without bound.
//!
//! The hub never blocks on a consumer and never holds its lock across an `.await`.

mod consumer;
mod registry;
mod view;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Instant, SystemTime};

use tokio::sync::watch;

use crate::change::{Change, FeedEvent, Position};
use crate::config::SourceDef;
use crate::telemetry::SourceMetrics;
use crate::value::{Key, Row};

pub use consumer::{Cursor, CursorError, Encoder, Event, EventKind, Events, Reader, Window};
pub use registry::{Hubs, Starter};
use view::{Full, View, ViewSet};

/// One row-level change, as a consumer sees it before filtering.
#[derive(Debug, Clone)]
pub enum RowChange {
    Insert(Row),
    /// `changed` lists the indices of the columns whose values differ.
    Update {
        old: Row,
        new: Row,
        changed: Arc<[usize]>,
    },
    /// Carries the last known row.
    Delete(Row),
}

/// A feed event applied to the cache: the net change per key, in first-touched order.
#[derive(Debug)]
pub struct AppliedBatch {
    /// Hub-local sequence number, contiguous from 1.
    pub seq: u64,
    /// The upstream position this batch brought the hub to.
    pub position: Position,
    pub changes: Vec<RowChange>,
    /// When the hub applied it (the feed applies a batch as soon as its commit arrives): the
    /// start of the delay the WebSocket layer reports per delivered frame.
    pub applied_at: Instant,
    /// Per change: the sequence number of the batch with the same key's previous change, when
    /// that was logged after the first snapshot (0: none). A change is its key's first after
    /// a cursor `c` exactly when this is at most `c`. Empty for the first snapshot (every
    /// key's first change, with no next change linked to it: no reader starts before it).
    pub(crate) prev: Box<[u64]>,
    /// Per change: the same key's next change, set when it is applied (empty like `prev`). A
    /// conflating reader follows these by reference: no reference counts touched on the way.
    pub(crate) next: Box<[OnceLock<Link>]>,
}

/// A change's place in the log: its batch and its index there.
pub(crate) type Link = (Arc<AppliedBatch>, u32);

impl Drop for AppliedBatch {
    /// Iteratively: batches held only through each other's links (a reader holding an old
    /// batch while the log moves on) would otherwise be dropped by recursion along the chain.
    fn drop(&mut self) {
        let mut owned = Vec::new();
        take_links(self, &mut owned);
        while let Some(mut batch) = owned.pop() {
            take_links(&mut batch, &mut owned);
        }
    }
}

/// Moves out the batches that only `batch`'s links held.
fn take_links(batch: &mut AppliedBatch, owned: &mut Vec<AppliedBatch>) {
    for link in &mut batch.next {
        if let Some((next, _)) = link.take()
            && let Some(next) = Arc::into_inner(next)
        {
            owned.push(next);
        }
    }
}

impl RowChange {
    /// The row before and the row after the change (`None` before an insert, after a delete).
    pub(crate) fn rows(&self) -> (Option<&Row>, Option<&Row>) {
        match self {
            RowChange::Insert(new) => (None, Some(new)),
            RowChange::Update { old, new, .. } => (Some(old), Some(new)),
            RowChange::Delete(old) => (Some(old), None),
        }
    }
}

/// Whether the hub can serve, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubStatus {
    /// No snapshot yet; the feed has not started or is connecting.
    Starting,
    /// Serving live data.
    Live,
    /// The upstream is lost; the cache is kept and served, and updates resume on reconnect.
    Down {
        reason: String,
        permanent: bool,
        synced: bool,
    },
}

impl HubStatus {
    pub fn is_synced(&self) -> bool {
        matches!(self, HubStatus::Live | HubStatus::Down { synced: true, .. })
    }
}

/// How much history a hub keeps for readers that fall behind or resume.
#[derive(Debug, Clone, Copy)]
pub struct HubLimits {
    /// Batches kept in the log.
    pub max_batches: usize,
    /// Row changes kept in the log, across batches.
    pub max_changes: usize,
    /// Distinct views (filter × selection) of the source.
    pub max_views: usize,
    /// Of those, views whose filter requires no `_eq` the hub can index by: each is evaluated
    /// on every batch.
    pub max_scanned_views: usize,
}

impl Default for HubLimits {
    fn default() -> Self {
        HubLimits {
            // A batch holds at least one change: the changes are the bound.
            max_batches: 262_144,
            max_changes: 262_144,
            max_views: 100_000,
            max_scanned_views: 1_000,
        }
    }
}

/// Views by (filter canonical text, encoding key), for readers that share them.
type ViewIndex = HashMap<(String, String), std::sync::Weak<dyn std::any::Any + Send + Sync>>;

struct State {
    /// The current rows, in key order (so a query without `order_by` stops at its limit).
    cache: BTreeMap<Key, Row>,
    /// Live views (weak: a view goes with its last reader), by the equality they require.
    views: ViewSet,
    view_index: ViewIndex,
    log: VecDeque<Arc<AppliedBatch>>,
    logged_changes: usize,
    /// Where each key's last logged change is (batch sequence number, index), for the keys
    /// the log holds a change of since the first snapshot: how a change finds its key's
    /// previous one to link them.
    last_change: HashMap<Key, (u64, u32)>,
    /// The batches that end a block of the log, oldest first: each block holds at least
    /// `CONFLATE_SCAN` changes and is the same for every reader, so that readers far behind
    /// conflate it once per view (see `Reader::take_block`).
    block_ends: VecDeque<u64>,
    /// Changes logged since the last block's end.
    block_changes: usize,
    /// Sequence number of the last applied batch (0 before the first).
    head: u64,
    position: Position,
    status: HubStatus,
    /// Row changes applied, per second of the hub's life.
    rate: Rate,
}

/// Row changes per second over the last few whole seconds.
#[derive(Default)]
struct Rate {
    /// (second since the hub started, changes in it), by second modulo the length.
    buckets: [(u64, u64); 8],
}

impl Rate {
    /// Whole seconds a rate is averaged over (the current second, still filling, is not).
    const WINDOW: u64 = 5;

    fn add(&mut self, second: u64, changes: u64) {
        let bucket = &mut self.buckets[(second % 8) as usize];
        if bucket.0 != second {
            *bucket = (second, 0);
        }
        bucket.1 += changes;
    }

    fn per_second(&self, second: u64) -> f64 {
        let from = second.saturating_sub(Rate::WINDOW);
        let changes: u64 = self
            .buckets
            .iter()
            .filter(|(s, _)| (from..second).contains(s))
            .map(|(_, n)| n)
            .sum();
        changes as f64 / Rate::WINDOW as f64
    }
}

/// The shared state of one source.
pub struct Hub {
    source: Arc<SourceDef>,
    limits: HubLimits,
    /// Identifies this hub instance in cursors, so a cursor from another process is refused.
    epoch: u64,
    /// std Mutex: held only for in-memory work, never across an await.
    state: Mutex<State>,
    status_tx: watch::Sender<HubStatus>,
    /// The last applied batch's sequence number, for consumers of the whole log (triggers).
    head_tx: watch::Sender<u64>,
    metrics: Arc<SourceMetrics>,
    /// The origin of the seconds of `State::rate`.
    born: Instant,
}

/// What a consumer that must see every batch (triggers) reads from a hub, under one lock.
#[derive(Debug)]
pub struct LogRead {
    /// The last applied batch.
    pub head: u64,
    pub position: Position,
    /// Every batch after the consumer's sequence number, through `head`.
    pub batches: Vec<Arc<AppliedBatch>>,
    /// The rows at `head`, when asked for.
    pub rows: Option<Vec<Row>>,
}

/// Why a log read has nothing to give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogError {
    /// No snapshot yet.
    NotSynced,
    /// The batches after that sequence number have left the log: read the rows instead.
    Behind,
}

impl Hub {
    pub fn new(source: Arc<SourceDef>, limits: HubLimits, metrics: Arc<SourceMetrics>) -> Arc<Hub> {
        Arc::new(Hub {
            source,
            limits,
            epoch: rand::random::<u64>() >> 12,
            state: Mutex::new(State {
                cache: BTreeMap::new(),
                views: ViewSet::default(),
                view_index: HashMap::new(),
                log: VecDeque::new(),
                logged_changes: 0,
                last_change: HashMap::new(),
                block_ends: VecDeque::new(),
                block_changes: 0,
                head: 0,
                position: Position::default(),
                status: HubStatus::Starting,
                rate: Rate::default(),
            }),
            status_tx: watch::channel(HubStatus::Starting).0,
            head_tx: watch::channel(0).0,
            metrics,
            born: Instant::now(),
        })
    }

    pub fn source(&self) -> &Arc<SourceDef> {
        &self.source
    }

    pub fn status(&self) -> HubStatus {
        self.status_tx.borrow().clone()
    }

    pub fn watch_status(&self) -> watch::Receiver<HubStatus> {
        self.status_tx.subscribe()
    }

    /// Changes whenever a batch is applied (the new head).
    /// Where "now" is in this hub, for something that starts now (a trigger): the batch
    /// boundary whose rows are the current ones — the head when synced, else the first batch
    /// still to come (the next snapshot) — and the upstream position when synced.
    pub fn mark(&self) -> (u64, Option<Position>) {
        let state = self.lock();
        if state.status.is_synced() {
            (state.head, Some(state.position))
        } else {
            (state.head + 1, None)
        }
    }

    pub fn watch_head(&self) -> watch::Receiver<u64> {
        self.head_tx.subscribe()
    }

    /// The batches after `after` (and, `with_rows`, the rows at the head), read at one batch
    /// boundary: a consumer applying them never misses or repeats a change. Without rows, a
    /// consumer whose next batch has left the log gets `Behind`; with rows, it gets the
    /// batches still in the log (check the first one's `seq`).
    pub fn read_log(&self, after: u64, with_rows: bool) -> Result<LogRead, LogError> {
        let state = self.lock();
        if !state.status.is_synced() {
            return Err(LogError::NotSynced);
        }
        let oldest = state.log.front().map_or(state.head + 1, |b| b.seq);
        if after < state.head && after + 1 < oldest && !with_rows {
            return Err(LogError::Behind);
        }
        let skip = usize::try_from((after + 1).saturating_sub(oldest)).unwrap_or(usize::MAX);
        Ok(LogRead {
            head: state.head,
            position: state.position,
            batches: state.log.iter().skip(skip).cloned().collect(),
            rows: with_rows.then(|| state.cache.values().cloned().collect()),
        })
    }

    pub fn metrics(&self) -> &Arc<SourceMetrics> {
        &self.metrics
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug in the hub itself; the state it guards
        // is still consistent batch-by-batch, so keep serving rather than poisoning every reader.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The view of readers with this filter and encoding, created on first use unless the
    /// limits are reached. Called with the hub's lock held, so a new view starts exactly at the
    /// current head.
    fn view<E: Encoder>(
        state: &mut State,
        filter: crate::filter::Filter,
        encoder: Arc<E>,
        limits: &HubLimits,
    ) -> Result<Arc<View<E>>, Full> {
        let key = (filter.canonical().to_owned(), encoder.key().to_owned());
        if let Some(view) = state
            .view_index
            .get(&key)
            .and_then(std::sync::Weak::upgrade)
            .and_then(|any| any.downcast::<View<E>>().ok())
        {
            return Ok(view);
        }
        let equality = filter.required_equality();
        state.views.admit(equality.as_ref(), limits)?;
        // Both hold the same views: the index has dead entries only after a pruning.
        if state.view_index.len() > state.views.len() {
            state.view_index.retain(|_, weak| weak.strong_count() > 0);
        }
        let view = Arc::new(View::new(filter, encoder, state.head));
        let any: Arc<dyn std::any::Any + Send + Sync> = view.clone();
        state.view_index.insert(key, Arc::downgrade(&any));
        let sink: Arc<dyn view::ViewSink> = view.clone();
        state.views.insert(equality, Arc::downgrade(&sink));
        Ok(view)
    }

    /// The one key `filter`'s rows can have, when it requires the (one-column) primary key to
    /// equal a value: such a filter is answered by a lookup, not a scan.
    fn only_key(&self, filter: &crate::filter::Filter) -> Option<Key> {
        use crate::filter::EqKey;
        use crate::value::Value;
        let [key_column] = self.source.primary_key.as_slice() else {
            return None;
        };
        let (column, value) = filter.required_equality()?;
        (column == *key_column).then(|| {
            Key(Box::new([match value {
                EqKey::Int(i) => Value::Int(i),
                EqKey::Text(t) => Value::Text(t.as_ref().into()),
                EqKey::Bool(b) => Value::Bool(b),
                EqKey::Enum(o) => Value::Enum(o),
            }]))
        })
    }

    /// The first `first` current rows `filter` matches, picked as `pick` says (at one batch
    /// boundary), or `None` before the first snapshot. Only the rows picked are copied; an
    /// equality on the key is a lookup.
    pub fn rows_matching(
        &self,
        filter: &crate::filter::Filter,
        first: usize,
        pick: Pick<'_>,
    ) -> Option<Vec<Row>> {
        let only = self.only_key(filter);
        let state = self.lock();
        if !state.status.is_synced() {
            return None;
        }
        if first == 0 {
            return Some(Vec::new());
        }
        if let Some(key) = &only {
            return Some(
                state
                    .cache
                    .get(key)
                    .filter(|row| filter.matches(row))
                    .cloned()
                    .into_iter()
                    .collect(),
            );
        }
        let matching = state.cache.values().filter(|row| filter.matches(row));
        Some(match pick {
            Pick::KeyOrder => matching.take(first).cloned().collect(),
            Pick::By(order) => smallest(matching, first, order),
        })
    }

    /// How many current rows `filter` matches, or `None` before the first snapshot.
    pub fn count_matching(&self, filter: &crate::filter::Filter) -> Option<usize> {
        let only = self.only_key(filter);
        let state = self.lock();
        state.status.is_synced().then(|| match &only {
            Some(key) => usize::from(state.cache.get(key).is_some_and(|row| filter.matches(row))),
            None if filter.canonical() == "{}" => state.cache.len(),
            None => state
                .cache
                .values()
                .filter(|row| filter.matches(row))
                .count(),
        })
    }

    /// Row changes applied per second, averaged over the last few whole seconds.
    pub fn changes_per_second(&self) -> f64 {
        self.lock().rate.per_second(self.born.elapsed().as_secs())
    }

    /// Current rows (a consistent copy of the cache), or `None` before the first snapshot.
    pub fn rows(&self) -> Option<Vec<Row>> {
        let state = self.lock();
        state
            .status
            .is_synced()
            .then(|| state.cache.values().cloned().collect())
    }

    /// Applies one feed event. Called only by the hub's feed task.
    pub fn apply(&self, event: FeedEvent) {
        match event {
            FeedEvent::Snapshot { position, rows } => self.apply_snapshot(position, rows),
            FeedEvent::Batch(batch) => self.apply_changes(batch.position, batch.changes),
            FeedEvent::Down { reason, permanent } => {
                let mut state = self.lock();
                let synced = state.status.is_synced();
                state.status = HubStatus::Down {
                    reason,
                    permanent,
                    synced,
                };
                self.status_tx.send_replace(state.status.clone());
            }
        }
    }

    fn apply_snapshot(&self, position: Position, rows: Vec<Row>) {
        let key_columns = self.source.primary_key.clone();
        let mut state = self.lock();
        if state.head == 0 {
            self.apply_first_snapshot(&mut state, position, rows);
            return;
        }
        let mut tracker = Tracker::default();
        let mut seen = std::collections::HashSet::with_capacity(rows.len());
        for row in rows {
            let key = row.key(&key_columns);
            seen.insert(key.clone());
            tracker.set(&mut state.cache, key, Some(row));
        }
        let gone: Vec<Key> = state
            .cache
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            tracker.set(&mut state.cache, key, None);
        }
        let keyed = tracker.finish(&state.cache, &self.source);
        self.commit(&mut state, position, keyed);
        self.metrics.snapshots.inc();
    }

    /// The hub's first rows, built in bulk: the cache's nodes filled in key order (one by
    /// one they would be about half full), with no per-key bookkeeping. Every key's first
    /// change, so nothing links to them, and no reader starts before them: the batch goes to
    /// the views that wait for it but not into the log (for a large source it would hold
    /// 40 bytes a row for as long as no later change pushes it out).
    fn apply_first_snapshot(&self, state: &mut State, position: Position, rows: Vec<Row>) {
        let key_columns = &self.source.primary_key;
        let mut keyed: Vec<(Key, Row)> = rows
            .into_iter()
            .map(|row| (row.key(key_columns), row))
            .collect();
        // Stable, then the last row of a key wins, as it would applied one by one.
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        let mut unique: Vec<(Key, Row)> = Vec::with_capacity(keyed.len());
        for (key, row) in keyed {
            match unique.last_mut() {
                Some(last) if last.0 == key => last.1 = row,
                _ => unique.push((key, row)),
            }
        }
        let changes: Vec<RowChange> = unique
            .iter()
            .map(|(_, row)| RowChange::Insert(row.clone()))
            .collect();
        state.cache = unique.into_iter().collect();
        self.publish(state, position, changes, None);
        self.metrics.snapshots.inc();
    }

    fn apply_changes(&self, position: Position, changes: Vec<Change>) {
        let key_columns = &self.source.primary_key;
        let mut state = self.lock();
        let mut tracker = Tracker::default();
        let received = changes.len();
        for change in changes {
            match change {
                Change::Upsert { row, unchanged } => {
                    let key = row.key(key_columns);
                    let row = match (unchanged, state.cache.get(&key)) {
                        (Some(mask), Some(old)) => row.with_unchanged_from(&mask, old),
                        (Some(_), None) => {
                            // PostgreSQL only omits TOASTed values for rows that exist; a
                            // missing row here means the cache and the table disagree.
                            tracing::error!(source = %self.source.name, "update of a row not in the cache carried unchanged values; keeping them null");
                            self.metrics.errors.inc();
                            row
                        }
                        (None, _) => row,
                    };
                    tracker.set(&mut state.cache, key, Some(row));
                }
                Change::Delete { key } => tracker.set(&mut state.cache, key, None),
                Change::Truncate => {
                    let keys: Vec<Key> = state.cache.keys().cloned().collect();
                    for key in keys {
                        tracker.set(&mut state.cache, key, None);
                    }
                }
            }
        }
        self.metrics.rows_received.add(received as u64);
        let keyed = tracker.finish(&state.cache, &self.source);
        self.commit(&mut state, position, keyed);
    }

    /// Publishes the net changes of one feed event, each linked to its key's previous logged
    /// change, and logs them.
    fn commit(&self, state: &mut State, position: Position, keyed: Vec<(Key, RowChange)>) {
        let prev = keyed
            .iter()
            .map(|(key, _)| state.last_change.get(key).map_or(0, |(seq, _)| *seq))
            .collect();
        let (keys, changes): (Vec<Key>, Vec<RowChange>) = keyed.into_iter().unzip();
        self.publish(state, position, changes, Some((prev, keys)));
    }

    /// Applies `changes` as the next batch: the views evaluate it and readers wake. `links`:
    /// each change's previous logged change and its key, for a batch that goes into the log;
    /// `None` for the first snapshot, which stays out of it.
    fn publish(
        &self,
        state: &mut State,
        position: Position,
        changes: Vec<RowChange>,
        links: Option<(Box<[u64]>, Vec<Key>)>,
    ) {
        // Never backwards (a RisingWave snapshot is stamped with the clock, its next epochs
        // may be a little older).
        state.position = state.position.max(position);
        if !changes.is_empty() {
            let second = self.born.elapsed().as_secs();
            state.rate.add(second, changes.len() as u64);
            state.head += 1;
            let (prev, keys) = links.unzip();
            let batch = Arc::new(AppliedBatch {
                seq: state.head,
                position,
                next: if keys.is_some() {
                    changes.iter().map(|_| OnceLock::new()).collect()
                } else {
                    Box::default()
                },
                prev: prev.unwrap_or_default(),
                changes,
                applied_at: Instant::now(),
            });
            self.metrics.batches.inc();
            self.metrics.rows_published.add(batch.changes.len() as u64);
            let cursor = Cursor {
                epoch: self.epoch,
                seq: batch.seq,
            };
            let evaluated = state.views.on_batch(&batch, cursor);
            self.metrics.view_evaluations.add(evaluated as u64);
            // After the views: a reader that sees this head knows that every view a batch
            // through it concerned has its output (see `Reader::take_view_output`).
            self.head_tx.send_replace(batch.seq);
            if let Some(keys) = keys {
                link_changes(state, &batch, keys);
                self.log(state, batch);
            }
        }
        if state.status != HubStatus::Live {
            state.status = HubStatus::Live;
            self.status_tx.send_replace(HubStatus::Live);
        }
        self.metrics.cached_rows.set(state.cache.len() as i64);
        if let Ok(now) = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
            self.metrics.last_batch_unix_ms.set(now.as_millis() as i64);
        }
    }

    /// Appends a batch to the log and trims the log to its limits.
    fn log(&self, state: &mut State, batch: Arc<AppliedBatch>) {
        state.logged_changes += batch.changes.len();
        state.block_changes += batch.changes.len();
        if state.block_changes >= consumer::CONFLATE_SCAN {
            state.block_ends.push_back(batch.seq);
            state.block_changes = 0;
        }
        state.log.push_back(batch);
        while state.log.len() > self.limits.max_batches
            || (state.logged_changes > self.limits.max_changes && state.log.len() > 1)
        {
            let Some(old) = state.log.pop_front() else {
                break;
            };
            state.logged_changes -= old.changes.len();
            for (i, change) in old.changes.iter().enumerate() {
                let (before, after) = change.rows();
                let Some(row) = after.or(before) else {
                    continue;
                };
                let key = row.key(&self.source.primary_key);
                if state.last_change.get(&key) == Some(&(old.seq, i as u32)) {
                    state.last_change.remove(&key);
                }
            }
        }
        // A block end is where a block after it starts: kept while that block is in the log.
        let oldest = state.log.front().map_or(state.head + 1, |b| b.seq);
        while state
            .block_ends
            .front()
            .is_some_and(|&end| end + 1 < oldest)
        {
            state.block_ends.pop_front();
        }
    }
}

/// Links each change of a batch about to be logged to its key's previous logged change, and
/// records it as the key's last.
fn link_changes(state: &mut State, batch: &Arc<AppliedBatch>, keys: Vec<Key>) {
    let oldest = state.log.front().map_or(batch.seq, |b| b.seq);
    for (i, key) in keys.into_iter().enumerate() {
        let here = (batch.seq, i as u32);
        if let Some((seq, index)) = state.last_change.insert(key, here)
            && let Some(previous) = seq
                .checked_sub(oldest)
                .and_then(|k| state.log.get(k as usize))
        {
            let _ = previous.next[index as usize].set((batch.clone(), here.1));
        }
    }
}

/// How [`Hub::rows_matching`] picks its rows.
#[derive(Clone, Copy)]
pub enum Pick<'a> {
    /// The first in key order (the cache's order): the scan stops once it has enough.
    KeyOrder,
    /// The smallest by this order.
    By(&'a (dyn Fn(&Row, &Row) -> std::cmp::Ordering + Sync)),
}

/// The `first` smallest of `rows` by `order`, in no particular order: a partial selection as
/// the scan goes, holding at most twice `first` rows, and copying only rows smaller than the
/// largest kept so far — linear in the rows for a small `first`, with no full copy or sort.
fn smallest<'r>(
    rows: impl Iterator<Item = &'r Row>,
    first: usize,
    order: &(dyn Fn(&Row, &Row) -> std::cmp::Ordering + Sync),
) -> Vec<Row> {
    let bound = first.saturating_mul(2).max(64);
    let mut kept: Vec<Row> = Vec::new();
    // The largest of the `first` kept at the last selection: nothing at or above it can be
    // among the smallest.
    let mut worst: Option<Row> = None;
    for row in rows {
        if worst
            .as_ref()
            .is_some_and(|w| order(row, w) != std::cmp::Ordering::Less)
        {
            continue;
        }
        kept.push(row.clone());
        if kept.len() > bound {
            kept.select_nth_unstable_by(first - 1, |a, b| order(a, b));
            kept.truncate(first);
            worst = kept.get(first - 1).cloned();
        }
    }
    if kept.len() > first {
        kept.select_nth_unstable_by(first - 1, |a, b| order(a, b));
        kept.truncate(first);
    }
    kept
}

/// Records, per key touched in one batch, the row before the batch, so that the batch's net
/// effect per key can be published however many times the key changed inside it.
#[derive(Default)]
struct Tracker {
    order: Vec<Key>,
    before: HashMap<Key, Option<Row>>,
}

impl Tracker {
    fn set(&mut self, cache: &mut BTreeMap<Key, Row>, key: Key, row: Option<Row>) {
        let previous = match row {
            Some(row) => cache.insert(key.clone(), row),
            None => cache.remove(&key),
        };
        if !self.before.contains_key(&key) {
            self.order.push(key.clone());
            self.before.insert(key, previous);
        }
    }

    /// The net change per key touched, in first-touched order.
    fn finish(mut self, cache: &BTreeMap<Key, Row>, source: &SourceDef) -> Vec<(Key, RowChange)> {
        let mut changes = Vec::with_capacity(self.order.len());
        for key in self.order {
            let before = self.before.remove(&key).flatten();
            let after = cache.get(&key).cloned();
            if let Some(change) = diff(before, after, source) {
                changes.push((key, change));
            }
        }
        changes
    }
}

/// The change that takes a key from `before` to `after`, if any.
pub(crate) fn diff(
    before: Option<Row>,
    after: Option<Row>,
    source: &SourceDef,
) -> Option<RowChange> {
    match (before, after) {
        (None, None) => None,
        (None, Some(new)) => Some(RowChange::Insert(new)),
        (Some(old), None) => Some(RowChange::Delete(old)),
        (Some(old), Some(new)) => {
            let changed: Vec<usize> = (0..source.columns.len())
                .filter(|&i| old.get(i) != new.get(i))
                .collect();
            (!changed.is_empty()).then(|| RowChange::Update {
                old,
                new,
                changed: changed.into(),
            })
        }
    }
}

#[cfg(test)]
mod tests;
