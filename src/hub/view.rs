//! Views: the readers of one hub that share a filter and an encoding.
//!
//! The hub evaluates every live view once per applied batch, under its lock: the filter runs
//! once per distinct filter per change, each event is encoded once per view, and only the
//! readers of views that got output are woken. A view keeps its recent output so readers a
//! little behind catch up from it; readers further behind fall back to the hub's log.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::watch;

use super::consumer::{Encoder, Event, filter_changes};
use super::{AppliedBatch, Cursor};
use crate::filter::Filter;
use crate::value::Row;

/// Batches of output a view keeps for readers a little behind, and the most items across them.
const RECENT_OUTPUTS: usize = 256;
const RECENT_ITEMS: usize = 65_536;

/// What the hub needs of a view, whatever its encoding.
pub(super) trait ViewSink: Send + Sync {
    /// Evaluates one batch just applied by the hub (called under the hub's lock).
    fn on_batch(&self, batch: &AppliedBatch, cursor: Cursor);
}

/// A view's snapshot at one head: the filtered rows and their encoding.
pub(super) struct Snapshot<T> {
    pub head: u64,
    pub rows: Arc<[Arc<Row>]>,
    pub items: Arc<[T]>,
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
    /// The last batch evaluated.
    pub evaluated_through: u64,
    /// The filtered snapshot rows at a head and their encoding, for readers opening at the
    /// same boundary.
    pub snapshot: Option<Snapshot<T>>,
}

/// A filter and an encoding shared by readers.
pub(crate) struct View<E: Encoder> {
    pub filter: Filter,
    pub encoder: Arc<E>,
    /// std Mutex: held only for in-memory work, never across an await.
    state: Mutex<ViewState<E::Item>>,
    /// The sequence number of the last batch that produced output.
    output_tx: watch::Sender<u64>,
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
                snapshot: None,
            }),
            output_tx: watch::channel(head).0,
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, ViewState<E::Item>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.output_tx.subscribe()
    }

    /// The snapshot an earlier reader built at `head`, if any.
    pub(super) fn cached_snapshot(&self, head: u64) -> Option<Snapshot<E::Item>> {
        self.lock()
            .snapshot
            .as_ref()
            .filter(|s| s.head == head)
            .map(|s| Snapshot {
                head,
                rows: s.rows.clone(),
                items: s.items.clone(),
            })
    }

    pub(super) fn encode_all(&self, events: &[Event]) -> Vec<E::Item> {
        events.iter().map(|e| self.encoder.encode(e)).collect()
    }
}

impl<E: Encoder> ViewSink for View<E> {
    fn on_batch(&self, batch: &AppliedBatch, cursor: Cursor) {
        let events = filter_changes(
            &self.filter,
            self.encoder.visible(),
            &batch.changes,
            batch.position,
            cursor,
        );
        let mut state = self.lock();
        state.evaluated_through = batch.seq;
        // The cached snapshot serves readers opening at its head only: past it, it is dead
        // weight (a second copy of the view's rows).
        if state.snapshot.as_ref().is_some_and(|s| s.head < batch.seq) {
            state.snapshot = None;
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
