//! Views: the readers of one hub that share a filter and an encoding.
//!
//! The hub evaluates the live views a batch can concern once per applied batch, under its
//! lock ([`ViewSet`]): the filter runs once per distinct filter per change it may match, each
//! event is encoded once per view, and only the readers of views that got output are woken. A
//! view keeps its recent output so readers a little behind catch up from it; readers further
//! behind fall back to the hub's log.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Instant;

use tokio::sync::watch;

use super::consumer::{Encoder, Event, EventKind, filter_changes};
use super::{AppliedBatch, Cursor, RowChange};
use crate::change::Position;
use crate::filter::{EqKey, Filter, eq_key};
use crate::value::Row;

/// Batches of output a view keeps for readers a little behind, and the most items across them.
pub(super) const RECENT_OUTPUTS: usize = 16_384;
const RECENT_ITEMS: usize = 65_536;

/// What the hub needs of a view, whatever its encoding.
pub(super) trait ViewSink: Send + Sync {
    /// Evaluates one batch just applied by the hub (called under the hub's lock): `changes`
    /// are the batch's, or those of them the view can match.
    fn on_batch(&self, batch: &AppliedBatch, changes: &[RowChange], cursor: Cursor);
}

/// Rows a reader filters and encodes at a time while it streams a snapshot: its first rows go
/// out after one chunk's work, however large the source.
pub(super) const SNAPSHOT_CHUNK: usize = 1024;

/// Snapshots of at most this many rows are kept, with their encoded chunks, for every reader
/// opening at the same head; larger ones are shared only among the readers streaming them,
/// and a chunk's encoding only among readers streaming it at the same time, so no copy of a
/// large source stays in memory when its readers are done with it.
pub(super) const KEEP_ENCODED_UP_TO: usize = 65_536;

/// A view's snapshot at one head: references to the source's rows at that head, in key order,
/// filtered and encoded a chunk at a time as readers stream it.
pub(super) struct Snapshot<T> {
    pub head: u64,
    pub position: Position,
    rows: Arc<[Row]>,
    chunks: Box<[Mutex<Weak<Chunk<T>>>]>,
    /// The chunks encoded so far when the snapshot is small enough to keep them.
    kept: Mutex<Vec<Arc<Chunk<T>>>>,
}

/// One chunk of a snapshot: the rows of it the view's filter matches, encoded.
pub(super) struct Chunk<T> {
    pub items: Vec<T>,
    /// The last matching row (the last item's).
    pub last: Option<Row>,
}

impl<T> Snapshot<T> {
    pub(super) fn new(head: u64, position: Position, rows: Arc<[Row]>) -> Snapshot<T> {
        Snapshot {
            head,
            position,
            chunks: (0..rows.len().div_ceil(SNAPSHOT_CHUNK))
                .map(|_| Mutex::new(Weak::new()))
                .collect(),
            rows,
            kept: Mutex::new(Vec::new()),
        }
    }

    /// How many chunks it has.
    pub(super) fn chunks(&self) -> usize {
        self.chunks.len()
    }
}

/// What one batch produced for a view.
pub(super) struct Output<T> {
    pub seq: u64,
    pub items: Arc<[T]>,
    /// When the hub applied the batch.
    pub applied_at: Instant,
}

pub(super) struct ViewState<T> {
    /// Non-empty outputs by batch sequence number, oldest first.
    pub recent: VecDeque<Output<T>>,
    /// Items in `recent`.
    pub recent_items: usize,
    /// Every batch from this sequence number on is accounted for in `recent` (those that
    /// produced nothing are simply absent).
    pub complete_since: u64,
    /// The last batch evaluated. A batch that cannot concern the view is not evaluated: the
    /// hub's `evaluated` head says how far every view is.
    pub evaluated_through: u64,
    /// The snapshot at a head, for readers opening at the same boundary while any reader
    /// streams it.
    pub snapshot: Weak<Snapshot<T>>,
    /// The same, kept after its readers are done when it is small, until a batch moves the
    /// head past it.
    pub kept_snapshot: Option<Arc<Snapshot<T>>>,
}

/// A filter and an encoding shared by readers.
pub(crate) struct View<E: Encoder> {
    pub filter: Filter,
    pub encoder: Arc<E>,
    /// std Mutex: held only for in-memory work, never across an await.
    state: Mutex<ViewState<E::Item>>,
    /// The sequence number of the last batch that produced output.
    output_tx: watch::Sender<u64>,
    /// The view's conflations of recent blocks of the log, by the cursor each starts after:
    /// made by the first far-behind reader that reaches a block, shared by the others.
    blocks: Mutex<VecDeque<(u64, BlockCell<E::Item>)>>,
}

type BlockCell<T> = Arc<OnceLock<Arc<Block<T>>>>;

/// Blocks of conflated output a view keeps for readers coming after the first.
const KEPT_BLOCKS: usize = 16;

/// The net change per key over one block of the log, through the view, encoded.
pub(super) struct Block<T> {
    pub items: Vec<T>,
    /// The cursor after it: the sequence number of the block's last batch.
    pub through: u64,
    /// When the hub applied that batch.
    pub applied_at: Instant,
    /// Changes the block merged away (a reader that takes it counts them as conflated).
    pub conflated: u64,
}

impl<E: Encoder> View<E> {
    pub(super) fn new(filter: Filter, encoder: Arc<E>, head: u64) -> View<E> {
        View {
            filter,
            encoder,
            state: Mutex::new(ViewState {
                recent: VecDeque::new(),
                recent_items: 0,
                complete_since: head + 1,
                evaluated_through: head,
                snapshot: Weak::new(),
                kept_snapshot: None,
            }),
            output_tx: watch::channel(head).0,
            blocks: Mutex::new(VecDeque::new()),
        }
    }

    /// The view's conflation of the block after `from` if a reader has made it: a reader that
    /// finds it needs nothing from the hub's log.
    pub(super) fn made_block_after(&self, from: u64) -> Option<Arc<Block<E::Item>>> {
        let blocks = self
            .blocks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (_, cell) = blocks.iter().find(|(start, _)| *start == from)?;
        cell.get().cloned()
    }

    /// The view's conflation of the block after `from`, made by `make` unless a reader made it
    /// already (a reader making it meanwhile is waited for: the work is done once).
    pub(super) fn block_after(
        &self,
        from: u64,
        make: impl FnOnce() -> Block<E::Item>,
    ) -> Arc<Block<E::Item>> {
        let cell = {
            let mut blocks = self
                .blocks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((_, cell)) = blocks.iter().find(|(start, _)| *start == from) {
                cell.clone()
            } else {
                let cell = Arc::new(OnceLock::new());
                if blocks.len() == KEPT_BLOCKS {
                    blocks.pop_front();
                }
                blocks.push_back((from, cell.clone()));
                cell
            }
        };
        cell.get_or_init(|| Arc::new(make())).clone()
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, ViewState<E::Item>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.output_tx.subscribe()
    }

    /// The snapshot at `head`: the one an earlier reader opened at the same head, or a new
    /// one of the rows `at_head` gives (called under the hub's lock). One from an earlier head
    /// is dropped: a view a batch did not concern was not told to drop it.
    pub(super) fn snapshot_at(
        &self,
        head: u64,
        position: Position,
        at_head: impl FnOnce() -> Arc<[Row]>,
    ) -> Arc<Snapshot<E::Item>> {
        let mut state = self.lock();
        if state.kept_snapshot.as_ref().is_some_and(|s| s.head < head) {
            state.kept_snapshot = None;
        }
        if let Some(snapshot) = state.snapshot.upgrade().filter(|s| s.head == head) {
            return snapshot;
        }
        let snapshot = Arc::new(Snapshot::new(head, position, at_head()));
        state.snapshot = Arc::downgrade(&snapshot);
        if snapshot.rows.len() <= KEEP_ENCODED_UP_TO {
            state.kept_snapshot = Some(snapshot.clone());
        }
        snapshot
    }

    /// Chunk `index` of a snapshot of this view, filtered and encoded by the first reader that
    /// needs it while another holds it.
    pub(super) fn snapshot_chunk(
        &self,
        snapshot: &Snapshot<E::Item>,
        index: usize,
    ) -> Arc<Chunk<E::Item>> {
        let mut slot = snapshot.chunks[index]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(chunk) = slot.upgrade() {
            return chunk;
        }
        let start = index * SNAPSHOT_CHUNK;
        let rows = &snapshot.rows[start..(start + SNAPSHOT_CHUNK).min(snapshot.rows.len())];
        let mut last = None;
        let items = rows
            .iter()
            .filter(|row| self.filter.matches(row))
            .map(|row| {
                last = Some(row.clone());
                self.encoder.encode(&Event {
                    kind: EventKind::Insert,
                    row: Some(row.clone()),
                    columns: None,
                    cursor: None,
                    position: snapshot.position,
                })
            })
            .collect();
        let chunk = Arc::new(Chunk { items, last });
        *slot = Arc::downgrade(&chunk);
        drop(slot);
        if snapshot.rows.len() <= KEEP_ENCODED_UP_TO {
            snapshot
                .kept
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(chunk.clone());
        }
        chunk
    }

    pub(super) fn encode_all(&self, events: &[Event]) -> Vec<E::Item> {
        events.iter().map(|e| self.encoder.encode(e)).collect()
    }
}

impl<E: Encoder> ViewSink for View<E> {
    fn on_batch(&self, batch: &AppliedBatch, changes: &[RowChange], cursor: Cursor) {
        let events = filter_changes(
            &self.filter,
            self.encoder.visible(),
            changes,
            batch.position,
            cursor,
        );
        let mut state = self.lock();
        state.evaluated_through = batch.seq;
        // The kept snapshot serves readers opening at its head only: past it, it is dead
        // weight (it holds rows the cache has replaced).
        if state
            .kept_snapshot
            .as_ref()
            .is_some_and(|s| s.head < batch.seq)
        {
            state.kept_snapshot = None;
        }
        if events.is_empty() {
            return;
        }
        let items: Arc<[E::Item]> = self.encode_all(&events).into();
        state.recent_items += items.len();
        state.recent.push_back(Output {
            seq: batch.seq,
            items,
            applied_at: batch.applied_at,
        });
        while state.recent.len() > RECENT_OUTPUTS
            || (state.recent_items > RECENT_ITEMS && state.recent.len() > 1)
        {
            if let Some(old) = state.recent.pop_front() {
                state.recent_items -= old.items.len();
                state.complete_since = old.seq + 1;
            }
        }
        drop(state);
        self.output_tx.send_replace(batch.seq);
    }
}

/// The live views of one hub, found by the equality their filter requires (`{owner: {_eq:
/// …}}`, alone or under a top-level `_and`), so that a batch visits only the views its rows
/// can match: with a view per user, a change reaches its owner's view and no other. Views
/// without such an equality are scanned on every batch.
///
/// Entries are weak (a view goes with its last reader) and pruned when their number reaches
/// a limit or doubles since the last pruning, so dead ones never outnumber live ones by much.
#[derive(Default)]
pub(super) struct ViewSet {
    scanned: Vec<Weak<dyn ViewSink>>,
    /// By column, then by the value it must equal.
    indexed: HashMap<usize, HashMap<EqKey, Vec<Weak<dyn ViewSink>>>>,
    indexed_len: usize,
    /// Entries after the last pruning.
    pruned_len: usize,
}

/// Why a view could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Full {
    /// `max_views` views exist.
    Views,
    /// `max_scanned` views without an indexable equality exist.
    Scanned,
}

impl ViewSet {
    /// Entries, live or not yet pruned.
    pub fn len(&self) -> usize {
        self.scanned.len() + self.indexed_len
    }

    /// Whether a view with this required equality may be added under the limits; prunes
    /// dead entries when they could be what stands in the way.
    pub fn admit(
        &mut self,
        equality: Option<&(usize, EqKey)>,
        limits: &super::HubLimits,
    ) -> Result<(), Full> {
        let over = |set: &ViewSet| {
            if set.len() >= limits.max_views {
                Some(Full::Views)
            } else if equality.is_none() && set.scanned.len() >= limits.max_scanned_views {
                Some(Full::Scanned)
            } else {
                None
            }
        };
        if over(self).is_some() || self.len() >= 2 * self.pruned_len + 64 {
            self.prune();
        }
        over(self).map_or(Ok(()), Err)
    }

    pub fn insert(&mut self, equality: Option<(usize, EqKey)>, view: Weak<dyn ViewSink>) {
        match equality {
            None => self.scanned.push(view),
            Some((column, key)) => {
                self.indexed
                    .entry(column)
                    .or_default()
                    .entry(key)
                    .or_default()
                    .push(view);
                self.indexed_len += 1;
            }
        }
    }

    /// Drops the entries of views that are gone.
    pub fn prune(&mut self) {
        self.scanned.retain(|weak| weak.strong_count() > 0);
        let mut indexed_len = 0;
        self.indexed.retain(|_, by_value| {
            by_value.retain(|_, views| {
                views.retain(|weak| weak.strong_count() > 0);
                indexed_len += views.len();
                !views.is_empty()
            });
            !by_value.is_empty()
        });
        self.indexed_len = indexed_len;
        self.pruned_len = self.len();
    }

    /// Evaluates a batch just applied: each scanned view on the whole batch, each indexed view
    /// on the changes whose old or new row holds its value (in batch order). Returns how many
    /// views it evaluated.
    pub fn on_batch(&self, batch: &AppliedBatch, cursor: Cursor) -> usize {
        let mut evaluated = 0;
        for view in self.scanned.iter().filter_map(Weak::upgrade) {
            view.on_batch(batch, &batch.changes, cursor);
            evaluated += 1;
        }
        if self.indexed.is_empty() {
            return evaluated;
        }
        // Keyed by the view's address; a view sits in one bucket, so a change reaches it
        // through at most its old and its new row, and equal keys are looked up once.
        let mut hits: HashMap<*const (), (Arc<dyn ViewSink>, Vec<RowChange>)> = HashMap::new();
        for change in &batch.changes {
            let (first, second) = match change {
                RowChange::Insert(row) | RowChange::Delete(row) => (row, None),
                RowChange::Update { old, new, .. } => (old, Some(new)),
            };
            for (&column, by_value) in &self.indexed {
                let first_key = eq_key(first.get(column));
                let second_key = second
                    .and_then(|row| eq_key(row.get(column)))
                    .filter(|key| first_key.as_ref() != Some(key));
                for key in first_key.iter().chain(second_key.iter()) {
                    let Some(views) = by_value.get(key) else {
                        continue;
                    };
                    for view in views.iter().filter_map(Weak::upgrade) {
                        let at = Arc::as_ptr(&view).cast::<()>();
                        hits.entry(at)
                            .or_insert_with(|| (view, Vec::new()))
                            .1
                            .push(change.clone());
                    }
                }
            }
        }
        evaluated += hits.len();
        for (view, changes) in hits.into_values() {
            view.on_batch(batch, &changes, cursor);
        }
        evaluated
    }
}
