//! Reading a hub: snapshot at a batch boundary, then the following batches through a filter.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::view::{Block, Chunk, Snapshot, View, ViewState};
use super::{AppliedBatch, Hub, HubStatus, RowChange, diff};
use crate::change::Position;
use crate::filter::Filter;
use crate::value::Row;

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
    #[error(
        "source {name} has {max} differently filtered (or shaped) subscriptions already (--max-views-per-source); reuse a filter other subscribers use, or try later"
    )]
    TooManyViews { name: String, max: usize },
    #[error(
        "source {name} has {max} differently filtered (or shaped) subscriptions already whose filters are evaluated on every change (--max-scanned-views-per-source); a filter with an _eq on an integer, text, boolean or enum column is indexed and does not count here"
    )]
    TooManyScannedViews { name: String, max: usize },
}

impl CursorError {
    /// Whether a view limit refused the subscription.
    pub fn is_view_limit(&self) -> bool {
        matches!(
            self,
            CursorError::TooManyViews { .. } | CursorError::TooManyScannedViews { .. }
        )
    }

    /// The GraphQL error code a subscriber gets.
    pub fn code(&self) -> &'static str {
        match self {
            CursorError::Malformed => "BAD_USER_INPUT",
            CursorError::Unavailable { .. } => "SOURCE_UNAVAILABLE",
            CursorError::Behind { .. } => "SUBSCRIPTION_ENDED",
            CursorError::TooManyViews { .. } | CursorError::TooManyScannedViews { .. } => {
                "TOO_MANY_VIEWS"
            }
        }
    }
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
    pub row: Option<Row>,
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
    /// The columns its readers may see (`None`: all of them): an UPDATE that changes none of
    /// these is not an event for them. Part of what `key` identifies.
    fn visible(&self) -> Option<&[usize]> {
        None
    }
}

/// The identity encoder: readers that hand events to the GraphQL executor.
pub struct Events {
    visible: Option<Arc<[usize]>>,
    key: String,
}

impl Events {
    /// Events for readers who see every column.
    pub fn all() -> Events {
        Events {
            visible: None,
            key: "events".into(),
        }
    }

    /// Events for readers who see only these columns (a role's permitted ones).
    pub fn of_columns(visible: Arc<[usize]>) -> Events {
        Events {
            key: format!("events{visible:?}"),
            visible: Some(visible),
        }
    }
}

impl Encoder for Events {
    type Item = Event;

    fn key(&self) -> &str {
        &self.key
    }

    fn encode(&self, event: &Event) -> Event {
        event.clone()
    }

    fn visible(&self) -> Option<&[usize]> {
        self.visible.as_deref()
    }
}

/// How a batched subscriber's updates are grouped: one result per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// How long a window stays open after its first update.
    pub max_wait: Duration,
    /// The most updates in one window.
    pub max_items: usize,
}

/// Changes a conflating reader scans per step.
pub(super) const CONFLATE_SCAN: usize = 4_096;

/// Batches a reader takes from its view at once before it prefers to conflate from the log.
// Half the view's recent window: a client that missed a few milliseconds of scheduling still
// reads every change; one that stopped reading gets the net change per key.
pub(super) const CONFLATE_AFTER: usize = 8_192;

/// An item and, for a live change, when the hub applied its batch.
pub type Timed<T> = (T, Option<Instant>);

/// A subscriber's cursor into a hub, reading through a view shared by readers with the same
/// filter and encoding.
pub struct Reader<E: Encoder = Events> {
    hub: Arc<Hub>,
    view: Arc<View<E>>,
    seq: u64,
    /// Items to hand out, each with when the hub applied the batch it comes from (none for
    /// snapshot rows and markers).
    pending: VecDeque<Timed<E::Item>>,
    /// The snapshot still being streamed, before anything after it.
    streaming: Option<Streaming<E::Item>>,
    /// A conflation under way, before anything after it.
    conflation: Option<Conflation>,
    snapshot_end: bool,
    output_rx: tokio::sync::watch::Receiver<u64>,
}

/// A far-behind reader's conflation: the net change per key from `from` to `through`, queued
/// a slice of the log at a time.
#[derive(Clone, Copy)]
struct Conflation {
    from: u64,
    through: u64,
    /// The hub's position and the last batch's application at `through`.
    position: Position,
    applied_at: Option<Instant>,
    /// The next change to scan: batch sequence number and index in it.
    seq: u64,
    index: usize,
}

/// A reader's progress through its snapshot.
struct Streaming<T> {
    snapshot: Arc<Snapshot<T>>,
    next_chunk: usize,
    /// The last chunk with items: its last item is not queued yet, as the snapshot's last row
    /// may have to carry the cursor. Holding it also lets readers streaming alongside share
    /// its encoding.
    held_back: Option<Arc<Chunk<T>>>,
}

impl Reader<Events> {
    /// Opens a reader of events (see [`Reader::open_encoded`]).
    pub async fn open(
        hub: Arc<Hub>,
        filter: Filter,
        after: Option<Cursor>,
        snapshot_end: bool,
    ) -> Result<Reader<Events>, CursorError> {
        Reader::open_encoded(hub, filter, Arc::new(Events::all()), after, snapshot_end).await
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
        wait_until_synced(&hub).await?;
        // Under the hub's lock: the boundary (head), and references to the rows at it unless
        // the view already holds its snapshot at this head (then nothing is copied per
        // subscriber). The rows are filtered and encoded later, a chunk at a time.
        let (view, snapshot, head, position) = {
            let mut state = hub.lock();
            let view = Hub::view(&mut state, filter, encoder, &hub.limits).map_err(|full| {
                let name = hub.source.name.clone();
                match full {
                    super::view::Full::Views => CursorError::TooManyViews {
                        name,
                        max: hub.limits.max_views,
                    },
                    super::view::Full::Scanned => CursorError::TooManyScannedViews {
                        name,
                        max: hub.limits.max_scanned_views,
                    },
                }
            })?;
            let oldest = state.log.front().map_or(state.head + 1, |b| b.seq);
            match after {
                Some(c) if c.epoch == hub.epoch && c.seq <= state.head && c.seq + 1 >= oldest => {
                    (view, None, c.seq, state.position)
                }
                _ => {
                    let snapshot = view.snapshot_at(state.head, state.position, || {
                        state.cache.values().cloned().collect()
                    });
                    (view, Some(snapshot), state.head, state.position)
                }
            }
        };
        let mut pending: VecDeque<Timed<E::Item>> = VecDeque::new();
        if snapshot.is_some() && after.is_some() {
            pending.push_back((
                view.encoder
                    .encode(&marker(EventKind::Reset, None, position)),
                None,
            ));
        }
        let output_rx = view.subscribe();
        let streaming = snapshot.map(|snapshot| Streaming {
            snapshot,
            next_chunk: 0,
            held_back: None,
        });
        let mut reader = Reader {
            hub,
            view,
            seq: head,
            pending,
            streaming,
            conflation: None,
            snapshot_end,
            output_rx,
        };
        if reader.streaming.is_none() {
            reader.end_snapshot(None, position);
        }
        reader.hub.metrics.subscriptions.add(1);
        Ok(reader)
    }

    /// Queues the next chunk of the snapshot being streamed, or what follows its last row.
    fn stream_snapshot(&mut self) {
        let Some(streaming) = self.streaming.as_mut() else {
            return;
        };
        if streaming.next_chunk == streaming.snapshot.chunks() {
            let held_back = streaming.held_back.take();
            let position = streaming.snapshot.position;
            self.streaming = None;
            self.end_snapshot(held_back.as_deref(), position);
            return;
        }
        let chunk = self
            .view
            .snapshot_chunk(&streaming.snapshot, streaming.next_chunk);
        streaming.next_chunk += 1;
        if !chunk.items.is_empty() {
            if let Some(before) = streaming.held_back.replace(chunk.clone()) {
                self.pending
                    .push_back((before.items[before.items.len() - 1].clone(), None));
            }
            self.pending.extend(
                chunk.items[..chunk.items.len() - 1]
                    .iter()
                    .map(|i| (i.clone(), None)),
            );
        }
    }

    /// Queues the end of the snapshot: its last row (carrying the cursor unless `SNAPSHOT_END`
    /// does) and the `SNAPSHOT_END` marker when asked for.
    fn end_snapshot(&mut self, last: Option<&Chunk<E::Item>>, position: Position) {
        let cursor = Cursor {
            epoch: self.hub.epoch,
            seq: self.seq,
        };
        match last {
            Some(Chunk { items, .. }) if self.snapshot_end => {
                self.pending
                    .push_back((items[items.len() - 1].clone(), None));
            }
            Some(Chunk { last: row, .. }) => {
                let last = Event {
                    kind: EventKind::Insert,
                    row: row.clone(),
                    columns: None,
                    cursor: Some(cursor),
                    position,
                };
                self.pending
                    .push_back((self.view.encoder.encode(&last), None));
            }
            None => {}
        }
        if self.snapshot_end {
            self.pending.push_back((
                self.view
                    .encoder
                    .encode(&marker(EventKind::SnapshotEnd, Some(cursor), position)),
                None,
            ));
        }
    }

    /// How this reader's items are encoded.
    pub fn encoder(&self) -> &Arc<E> {
        &self.view.encoder
    }

    /// Items queued and not yet handed out.
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.pending.len()
    }

    /// The next item; waits for the hub when there is none.
    pub async fn next(&mut self) -> Result<E::Item, CursorError> {
        self.next_timed().await.map(|(item, _)| item)
    }

    /// The next item and, for a live change, when the hub applied its batch (the newest of the
    /// batches a conflated item merges).
    pub async fn next_timed(&mut self) -> Result<Timed<E::Item>, CursorError> {
        loop {
            if let Some(item) = self.next_ready()? {
                return Ok(item);
            }
            self.changed().await?;
        }
    }

    /// The next window of items for a batched subscriber: waits for one item, then takes those
    /// that follow until `max_items` or until `max_wait` after the first. An error after the
    /// first item ends the window early; the next call reports it.
    pub async fn next_window(
        &mut self,
        window: Window,
    ) -> Result<Vec<Timed<E::Item>>, CursorError> {
        let mut items = vec![self.next_timed().await?];
        let deadline = tokio::time::Instant::now() + window.max_wait;
        while items.len() < window.max_items {
            match self.next_ready() {
                Ok(Some(item)) => items.push(item),
                Ok(None) => match tokio::time::timeout_at(deadline, self.changed()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) | Err(_) => break,
                },
                Err(_) => break,
            }
        }
        Ok(items)
    }

    /// The next item if one is ready without waiting for the hub.
    fn next_ready(&mut self) -> Result<Option<Timed<E::Item>>, CursorError> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Ok(Some(item));
            }
            if self.streaming.is_some() {
                self.stream_snapshot();
                continue;
            }
            self.output_rx.borrow_and_update();
            if !self.catch_up()? {
                return Ok(None);
            }
        }
    }

    /// Waits until the view has new output.
    async fn changed(&mut self) -> Result<(), CursorError> {
        self.output_rx
            .changed()
            .await
            .map_err(|_| CursorError::Unavailable {
                name: self.hub.source.name.clone(),
                reason: "the server is shutting down".into(),
            })
    }

    /// Queues what the view produced after this reader's cursor; conflates from the hub's
    /// log instead when the reader is far behind. `true` if anything was queued.
    fn catch_up(&mut self) -> Result<bool, CursorError> {
        if self.conflation.is_some() {
            return self.conflate_step();
        }
        let view = self.view.clone();
        let far_behind = {
            let state = view.lock();
            if self.seq + 1 >= state.complete_since {
                let waiting =
                    state.recent.len() - state.recent.partition_point(|o| o.seq <= self.seq);
                if waiting <= CONFLATE_AFTER {
                    return Ok(self.take_view_output(&state));
                }
                true
            } else {
                false
            }
        };
        match self.conflate_step() {
            // The log was trimmed by its change limit but the view still covers the reader.
            Err(CursorError::Behind { .. }) if far_behind => {
                let state = view.lock();
                Ok(self.take_view_output(&state))
            }
            other => other,
        }
    }

    /// Queues the view's output after the cursor and moves the cursor to what the view has
    /// evaluated. The caller checked that the view covers the cursor.
    fn take_view_output(&mut self, state: &ViewState<E::Item>) -> bool {
        let start = state.recent.partition_point(|o| o.seq <= self.seq);
        for output in state.recent.range(start..) {
            let at = Some(output.applied_at);
            self.pending
                .extend(output.items.iter().map(|item| (item.clone(), at)));
        }
        // A batch that could not concern the view was not evaluated by it: the hub's head,
        // read under the view's lock, is one every view has caught up with (the hub publishes
        // it after evaluating the views, and evaluating this one would need this lock).
        let head = *self.hub.head_tx.borrow();
        self.seq = state.evaluated_through.max(head);
        start < state.recent.len()
    }

    /// Queues the next slice of the net change per key from the cursor to the end of the
    /// block of the log it is in (or to the head, in the block still open), scanning at most
    /// `CONFLATE_SCAN` changes of the log (each key's first change after the cursor is followed
    /// along its links to its last through that end: no hashing, nothing held per key); from
    /// a block's end on, takes the view's conflation of whole blocks. `true` if anything was
    /// queued or is left.
    fn conflate_step(&mut self) -> Result<bool, CursorError> {
        if self.conflation.is_none() && self.take_block() {
            return Ok(true);
        }
        let behind = || CursorError::Behind {
            name: self.hub.source.name.clone(),
        };
        let (conflation, slice, head) = {
            let state = self.hub.lock();
            let oldest = state.log.front().map_or(state.head + 1, |b| b.seq);
            let conflation = match self.conflation.take() {
                Some(conflation) => conflation,
                None if self.seq >= state.head => return Ok(false),
                None if self.seq + 1 < oldest => return Err(behind()),
                None => {
                    let end = state
                        .block_ends
                        .range(state.block_ends.partition_point(|&e| e <= self.seq)..)
                        .next()
                        .map(|&end| &state.log[(end - oldest) as usize]);
                    Conflation {
                        from: self.seq,
                        through: end.map_or(state.head, |b| b.seq),
                        position: end.map_or(state.position, |b| b.position),
                        applied_at: end.or(state.log.back()).map(|b| b.applied_at),
                        seq: self.seq + 1,
                        index: 0,
                    }
                }
            };
            if conflation.seq < oldest {
                return Err(behind());
            }
            let mut budget = CONFLATE_SCAN + conflation.index;
            let mut slice = Vec::new();
            for batch in state.log.range((conflation.seq - oldest) as usize..) {
                if batch.seq > conflation.through || budget == 0 {
                    break;
                }
                budget = budget.saturating_sub(batch.changes.len());
                slice.push(batch.clone());
            }
            (conflation, slice, state.head)
        };
        let (merged, (seq, index), scanned) = merge_net(
            &slice,
            &self.hub.source,
            (conflation.from, conflation.through),
            (conflation.seq, conflation.index),
            CONFLATE_SCAN,
        );
        self.hub
            .metrics
            .conflated
            .add((scanned - merged.len()) as u64);
        let done = seq > conflation.through;
        let cursor = Cursor {
            epoch: self.hub.epoch,
            seq: conflation.through,
        };
        let mut events = filter_changes(
            &self.view.filter,
            self.view.encoder.visible(),
            &merged,
            conflation.position,
            cursor,
        );
        if done {
            self.seq = conflation.through;
        } else {
            // The cursor goes on the conflation's last event only.
            if let Some(last) = events.last_mut() {
                last.cursor = None;
            }
            self.conflation = Some(Conflation {
                seq,
                index,
                ..conflation
            });
        }
        let at = conflation.applied_at;
        self.pending
            .extend(events.iter().map(|e| (self.view.encoder.encode(e), at)));
        // A conflation to a block's end leaves what follows it.
        Ok(!events.is_empty() || !done || conflation.through < head)
    }

    /// When the cursor is a block's end and the block after it is complete, queues the view's
    /// conflation of that block: made once, by the first reader to reach it, and shared by the
    /// others, who only clone its encoded items (far past saturation, the readers' work does
    /// not grow with how far behind they are). `false`: the cursor is inside a block, or the
    /// block after it is still open or out of the log.
    fn take_block(&mut self) -> bool {
        let from = self.seq;
        if let Some(block) = self.view.made_block_after(from) {
            self.queue_block(&block);
            return true;
        }
        let batches: Vec<Arc<AppliedBatch>> = {
            let state = self.hub.lock();
            let oldest = state.log.front().map_or(state.head + 1, |b| b.seq);
            let at = state.block_ends.partition_point(|&end| end < from);
            match (state.block_ends.get(at), state.block_ends.get(at + 1)) {
                (Some(&start), Some(&end)) if start == from && from + 1 >= oldest => state
                    .log
                    .range((from + 1 - oldest) as usize..=(end - oldest) as usize)
                    .cloned()
                    .collect(),
                _ => return false,
            }
        };
        let Some(last) = batches.last() else {
            return false;
        };
        // A block is made in one go: one that a large transaction made far longer than a step
        // is read a step at a time by each reader instead.
        if batches.iter().map(|b| b.changes.len()).sum::<usize>() > 2 * CONFLATE_SCAN {
            return false;
        }
        let (hub, view) = (&self.hub, &self.view);
        let block = view.block_after(from, || {
            let (merged, _, scanned) = merge_net(
                &batches,
                &hub.source,
                (from, last.seq),
                (from + 1, 0),
                usize::MAX,
            );
            let cursor = Cursor {
                epoch: hub.epoch,
                seq: last.seq,
            };
            let events = filter_changes(
                &view.filter,
                view.encoder.visible(),
                &merged,
                last.position,
                cursor,
            );
            Block {
                items: events.iter().map(|e| view.encoder.encode(e)).collect(),
                through: last.seq,
                applied_at: last.applied_at,
                conflated: (scanned - merged.len()) as u64,
            }
        });
        self.queue_block(&block);
        true
    }

    fn queue_block(&mut self, block: &Block<E::Item>) {
        self.hub.metrics.conflated.add(block.conflated);
        self.pending.extend(
            block
                .items
                .iter()
                .map(|item| (item.clone(), Some(block.applied_at))),
        );
        self.seq = block.through;
    }
}

/// The net change per key over `(from, through]` of the changes in `slice` from `start` (a
/// batch's sequence number and an index in it) on, at most `budget` of them: each key's first
/// change after `from` followed along its links to its last through `through`. Returns the
/// net changes, where the scan stopped and how many changes it scanned.
fn merge_net(
    slice: &[Arc<AppliedBatch>],
    source: &crate::config::SourceDef,
    (from, through): (u64, u64),
    start: (u64, usize),
    budget: usize,
) -> (Vec<RowChange>, (u64, usize), usize) {
    let ((mut seq, mut index), mut scanned) = (start, 0);
    let mut merged = Vec::new();
    for batch in slice {
        let end = index
            .saturating_add(budget - scanned)
            .min(batch.changes.len());
        for i in index..end {
            if batch.prev.get(i).is_some_and(|&prev| prev > from) {
                continue;
            }
            let (last, j) = last_through(batch, i, through);
            let net = diff(
                batch.changes[i].rows().0.cloned(),
                last.changes[j].rows().1.cloned(),
                source,
            );
            merged.extend(net);
        }
        scanned += end - index;
        if end < batch.changes.len() {
            index = end;
            break;
        }
        (seq, index) = (batch.seq + 1, 0);
    }
    (merged, (seq, index), scanned)
}

async fn wait_until_synced(hub: &Hub) -> Result<(), CursorError> {
    let mut status_rx = hub.watch_status();
    loop {
        let status = status_rx.borrow_and_update().clone();
        match status {
            status if status.is_synced() => return Ok(()),
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
}

/// Applies a filter to changes: rows entering it arrive as INSERT, rows leaving it as DELETE
/// with their last known values; the last event carries the cursor.
pub(super) fn filter_changes(
    filter: &Filter,
    visible: Option<&[usize]>,
    changes: &[RowChange],
    position: Position,
    cursor: Cursor,
) -> Vec<Event> {
    let event = |kind, row: &Row, columns| Event {
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
                    // An update of columns the reader cannot see is none of its business.
                    (true, true)
                        if visible.is_some_and(|v| !changed.iter().any(|c| v.contains(c))) =>
                    {
                        None
                    }
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

/// The last change of the key of `batch.changes[i]` in batches through `through`, along the
/// links from it.
fn last_through(batch: &AppliedBatch, i: usize, through: u64) -> (&AppliedBatch, usize) {
    let (mut batch, mut i) = (batch, i);
    while let Some((next, j)) = batch.next.get(i).and_then(OnceLock::get) {
        if next.seq > through {
            break;
        }
        (batch, i) = (&**next, *j as usize);
    }
    (batch, i)
}
