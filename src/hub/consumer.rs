//! Reading a hub: snapshot at a batch boundary, then the following batches through a filter.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::{AppliedBatch, Hub, HubStatus, RowChange, diff};
use crate::feed::Position;
use crate::filter::Filter;
use crate::value::{Key, Row};

/// A resumable position in one hub's log, as clients see it (`"<epoch>.<seq>"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub epoch: u64,
    pub seq: u64,
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.epoch, self.seq)
    }
}

impl std::str::FromStr for Cursor {
    type Err = CursorError;

    fn from_str(text: &str) -> Result<Cursor, CursorError> {
        let (epoch, seq) = text.split_once('.').ok_or(CursorError::Malformed)?;
        Ok(Cursor {
            epoch: epoch.parse().map_err(|_| CursorError::Malformed)?,
            seq: seq.parse().map_err(|_| CursorError::Malformed)?,
        })
    }
}

/// Why a subscription could not open or had to end.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CursorError {
    #[error("malformed cursor; pass a `cursor` value received from this server")]
    Malformed,
    #[error("source {name} is unavailable: {reason}")]
    Unavailable { name: String, reason: String },
    #[error(
        "subscription fell more than the server's history behind source {name}; subscribe again (pass `after` with your last cursor to get a reset and a fresh snapshot)"
    )]
    Behind { name: String },
}

/// What a subscriber receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Insert,
    Update,
    Delete,
    /// The snapshot is complete (sent only to subscribers that ask for it).
    SnapshotEnd,
    /// The resume cursor was too old: forget all rows; a fresh snapshot follows.
    Reset,
}

/// One update for one subscriber.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: EventKind,
    pub row: Option<Arc<Row>>,
    /// Columns this event carries (`None`: all). UPDATE carries the key and changed columns.
    pub columns: Option<Arc<[usize]>>,
    /// Set on the last event of each batch: resume after it with this cursor.
    pub cursor: Option<Cursor>,
    pub position: Position,
}

/// Turns a subscriber's events into what it sends (the events themselves, or serialized
/// responses). Readers with the same filter and the same encoder `key` share the encoded
/// batches, so each batch is filtered and encoded once per distinct (filter, encoder).
pub trait Encoder: Send + Sync + 'static {
    type Item: Clone + Send + Sync + 'static;
    /// Identifies the encoding: equal keys must encode every event identically.
    fn key(&self) -> &str;
    fn encode(&self, event: &Event) -> Self::Item;
}

/// The identity encoder: readers that hand events to the GraphQL executor.
pub struct Events;

impl Encoder for Events {
    type Item = Event;

    fn key(&self) -> &'static str {
        "events"
    }

    fn encode(&self, event: &Event) -> Event {
        event.clone()
    }
}

/// Encoded batches shared by the readers of one (filter, encoder).
pub(super) struct SharedBatches<T> {
    /// std Mutex: held only to look up or insert a batch, never across an await.
    recent: Mutex<VecDeque<(u64, Arc<[T]>)>>,
}

impl<T> Default for SharedBatches<T> {
    fn default() -> Self {
        SharedBatches {
            recent: Mutex::new(VecDeque::new()),
        }
    }
}

/// How many recent batches a shared view keeps encoded for readers a little behind.
const SHARED_BATCHES: usize = 64;

impl<T: Clone + Send + Sync + 'static> SharedBatches<T> {
    fn get_or_encode(&self, seq: u64, encode: impl FnOnce() -> Vec<T>) -> Arc<[T]> {
        if let Some(found) = self
            .lock()
            .iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, items)| items.clone())
        {
            return found;
        }
        // Encoded outside the lock; two readers racing on one batch both encode it, which is
        // correct and rare (the second insert is dropped).
        let items: Arc<[T]> = encode().into();
        let mut recent = self.lock();
        if !recent.iter().any(|(s, _)| *s == seq) {
            recent.push_back((seq, items.clone()));
            while recent.len() > SHARED_BATCHES {
                recent.pop_front();
            }
        }
        items
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, Arc<[T]>)>> {
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A subscriber's view of a hub: its filter, its encoder and its cursor into the log.
pub struct Reader<E: Encoder = Events> {
    hub: Arc<Hub>,
    filter: Filter,
    encoder: Arc<E>,
    shared: Arc<SharedBatches<E::Item>>,
    seq: u64,
    pending: VecDeque<E::Item>,
    head_rx: tokio::sync::watch::Receiver<u64>,
}

impl Reader<Events> {
    /// Opens a reader of events (see [`Reader::open_encoded`]).
    pub async fn open(
        hub: Arc<Hub>,
        filter: Filter,
        after: Option<Cursor>,
        snapshot_end: bool,
    ) -> Result<Reader<Events>, CursorError> {
        Reader::open_encoded(hub, filter, Arc::new(Events), after, snapshot_end).await
    }
}

impl<E: Encoder> Reader<E> {
    /// Opens a reader: waits for the hub's first snapshot, then queues the filtered rows (or,
    /// with a usable `after` cursor, nothing: reading resumes after it).
    pub async fn open_encoded(
        hub: Arc<Hub>,
        filter: Filter,
        encoder: Arc<E>,
        after: Option<Cursor>,
        snapshot_end: bool,
    ) -> Result<Reader<E>, CursorError> {
        let mut status_rx = hub.watch_status();
        loop {
            let status = status_rx.borrow_and_update().clone();
            match status {
                status if status.is_synced() => break,
                HubStatus::Down {
                    reason,
                    permanent: true,
                    ..
                } => {
                    return Err(CursorError::Unavailable {
                        name: hub.source.name.clone(),
                        reason,
                    });
                }
                _ => {}
            }
            if status_rx.changed().await.is_err() {
                return Err(CursorError::Unavailable {
                    name: hub.source.name.clone(),
                    reason: "the server is shutting down".into(),
                });
            }
        }
        let head_rx = hub.head_tx.subscribe();
        let (rows, head, position, resumed) = {
            let state = hub.lock();
            let oldest = state.log.front().map_or(state.head + 1, |b| b.seq);
            match after {
                Some(c) if c.epoch == hub.epoch && c.seq <= state.head && c.seq + 1 >= oldest => {
                    (Vec::new(), c.seq, state.position, true)
                }
                _ => (
                    state.cache.values().cloned().collect::<Vec<_>>(),
                    state.head,
                    state.position,
                    false,
                ),
            }
        };
        let cursor = Cursor {
            epoch: hub.epoch,
            seq: head,
        };
        let mut events = Vec::new();
        if !resumed {
            if after.is_some() {
                events.push(marker(EventKind::Reset, None, position));
            }
            for row in rows.into_iter().filter(|r| filter.matches(r)) {
                events.push(Event {
                    kind: EventKind::Insert,
                    row: Some(row),
                    columns: None,
                    cursor: None,
                    position,
                });
            }
        }
        if snapshot_end {
            events.push(marker(EventKind::SnapshotEnd, Some(cursor), position));
        } else if let Some(last) = events.last_mut() {
            last.cursor = Some(cursor);
        }
        let pending = events.iter().map(|e| encoder.encode(e)).collect();
        let shared = hub.shared_batches(&filter, encoder.key());
        hub.metrics.subscriptions.add(1);
        Ok(Reader {
            hub,
            filter,
            encoder,
            shared,
            seq: head,
            pending,
            head_rx,
        })
    }

    /// The next item; waits for the hub when there is none.
    pub async fn next(&mut self) -> Result<E::Item, CursorError> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Ok(item);
            }
            let batches = self.pending_batches()?;
            if batches.is_empty() {
                if self.head_rx.changed().await.is_err() {
                    return Err(CursorError::Unavailable {
                        name: self.hub.source.name.clone(),
                        reason: "the server is shutting down".into(),
                    });
                }
                continue;
            }
            self.queue(&batches);
        }
    }

    fn pending_batches(&mut self) -> Result<Vec<Arc<AppliedBatch>>, CursorError> {
        let state = self.hub.lock();
        self.head_rx.mark_unchanged();
        if state.head == self.seq {
            return Ok(Vec::new());
        }
        let oldest = state.log.front().map_or(state.head + 1, |b| b.seq);
        if self.seq + 1 < oldest {
            return Err(CursorError::Behind {
                name: self.hub.source.name.clone(),
            });
        }
        let skip = (self.seq + 1 - oldest) as usize;
        Ok(state.log.iter().skip(skip).cloned().collect())
    }

    fn queue(&mut self, batches: &[Arc<AppliedBatch>]) {
        let last = batches.last().expect("queue is called with batches");
        self.seq = last.seq;
        let cursor = Cursor {
            epoch: self.hub.epoch,
            seq: last.seq,
        };
        if let [batch] = batches {
            // The common case, a reader keeping up: shared with every reader of this view.
            let (filter, encoder) = (&self.filter, &self.encoder);
            let items = self.shared.get_or_encode(batch.seq, || {
                let events = filter_changes(filter, &batch.changes, batch.position, cursor);
                events.iter().map(|e| encoder.encode(e)).collect()
            });
            self.pending.extend(items.iter().cloned());
        } else {
            let merged = conflate(batches, &self.hub.source);
            let received: usize = batches.iter().map(|b| b.changes.len()).sum();
            self.hub
                .metrics
                .conflated
                .add((received - merged.len()) as u64);
            let events = filter_changes(&self.filter, &merged, last.position, cursor);
            self.pending
                .extend(events.iter().map(|e| self.encoder.encode(e)));
        }
    }
}

/// Applies a filter to changes: rows entering it arrive as INSERT, rows leaving it as DELETE
/// with their last known values; the last event carries the cursor.
fn filter_changes(
    filter: &Filter,
    changes: &[RowChange],
    position: Position,
    cursor: Cursor,
) -> Vec<Event> {
    let event = |kind, row: &Arc<Row>, columns| Event {
        kind,
        row: Some(row.clone()),
        columns,
        cursor: None,
        position,
    };
    let mut events: Vec<Event> = changes
        .iter()
        .filter_map(|change| match change {
            RowChange::Insert(new) => filter
                .matches(new)
                .then(|| event(EventKind::Insert, new, None)),
            RowChange::Delete(old) => filter
                .matches(old)
                .then(|| event(EventKind::Delete, old, None)),
            RowChange::Update { old, new, changed } => {
                match (filter.matches(old), filter.matches(new)) {
                    (true, true) => Some(event(EventKind::Update, new, Some(changed.clone()))),
                    (false, true) => Some(event(EventKind::Insert, new, None)),
                    (true, false) => Some(event(EventKind::Delete, old, None)),
                    (false, false) => None,
                }
            }
        })
        .collect();
    if let Some(last) = events.last_mut() {
        last.cursor = Some(cursor);
    }
    events
}

impl<E: Encoder> Drop for Reader<E> {
    fn drop(&mut self) {
        self.hub.metrics.subscriptions.add(-1);
    }
}

fn marker(kind: EventKind, cursor: Option<Cursor>, position: Position) -> Event {
    Event {
        kind,
        row: None,
        columns: None,
        cursor,
        position,
    }
}

/// A key's row before the first and after the last of several batches.
type BeforeAfter = (Option<Arc<Row>>, Option<Arc<Row>>);

/// The net change per key over several consecutive batches.
fn conflate(batches: &[Arc<AppliedBatch>], source: &crate::config::SourceDef) -> Vec<RowChange> {
    let mut order: Vec<Key> = Vec::new();
    let mut states: HashMap<Key, BeforeAfter> = HashMap::new();
    for batch in batches {
        for change in &batch.changes {
            let (old, new) = match change {
                RowChange::Insert(new) => (None, Some(new.clone())),
                RowChange::Update { old, new, .. } => (Some(old.clone()), Some(new.clone())),
                RowChange::Delete(old) => (Some(old.clone()), None),
            };
            let key = old
                .as_ref()
                .or(new.as_ref())
                .expect("a change has a row")
                .key(&source.primary_key);
            states
                .entry(key)
                .and_modify(|entry| entry.1.clone_from(&new))
                .or_insert_with_key(|key| {
                    order.push(key.clone());
                    (old, new)
                });
        }
    }
    order
        .into_iter()
        .filter_map(|key| {
            let (before, after) = states.remove(&key)?;
            diff(before, after, source)
        })
        .collect()
}
