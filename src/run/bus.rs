//! The bus: how published run events reach this replica's consumers.
//!
//! Every replica listens on the publisher's channel (PostgreSQL NOTIFY, so events published
//! by whichever replica leads reach all of them). An announcement says "run R is published up
//! to seq N, status S". For runs that have consumers here, the bus reads the new events once
//! (one query per round, whatever the number of consumers) into the run's channel: a short
//! tail of recent events and a watch of the highest published seq. Consumers read from the
//! tail, or from the store when they are behind it, so order and completeness never depend on
//! the bus: it only says when to look.
//!
//! If the listening connection drops, announcements are lost: on reconnecting, the bus reads
//! every channel's published position from the store. Consumers also check the store
//! themselves when nothing arrives for a while (see `stream`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::{Announcement, EVENT_COLUMNS, Event, PUBLISHED_CHANNEL, event, parse_announcements};
use crate::store::{Connector, Store, StoreError};

/// Events a channel keeps for consumers that are a little behind.
const TAIL: usize = 256;

/// A run's published position, as this replica knows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    /// The highest published seq (0: none yet).
    pub upto: i64,
    /// The run has ended (its terminal event is at `upto`).
    pub ended: bool,
}

/// One run's live events on this replica.
#[derive(Debug, Default)]
pub struct Channel {
    published: watch::Sender<Published>,
    /// Recent events, ascending and contiguous (std Mutex: in-memory only).
    tail: Mutex<VecDeque<Arc<Event>>>,
}

impl Channel {
    pub fn watch(&self) -> watch::Receiver<Published> {
        self.published.subscribe()
    }

    /// Events `from..=upto` if the tail holds all of them.
    pub fn range(&self, from: i64, upto: i64) -> Option<Vec<Arc<Event>>> {
        let tail = self
            .tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let first = tail.front()?.seq;
        let last = tail.back()?.seq;
        if from < first || upto > last || from > upto {
            return None;
        }
        let start = usize::try_from(from - first).ok()?;
        let end = usize::try_from(upto - first).ok()?;
        Some(tail.range(start..=end).cloned().collect())
    }

    /// The highest seq in the tail (0 when empty).
    fn last(&self) -> i64 {
        let tail = self
            .tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tail.back().map_or(0, |e| e.seq)
    }

    fn extend(&self, events: Vec<Event>) {
        let mut tail = self
            .tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for e in events {
            // Contiguous only: after a gap (a round this replica missed) start again.
            if tail.back().is_some_and(|last| last.seq + 1 != e.seq) {
                tail.clear();
            }
            if tail.back().is_none_or(|last| last.seq < e.seq) {
                tail.push_back(Arc::new(e));
            }
            while tail.len() > TAIL {
                tail.pop_front();
            }
        }
    }

    fn advance(&self, published: Published) {
        self.published.send_if_modified(|current| {
            if published.upto > current.upto || (published.ended && !current.ended) {
                *current = Published {
                    upto: published.upto.max(current.upto),
                    ended: current.ended || published.ended,
                };
                true
            } else {
                false
            }
        });
    }
}

/// This replica's end of the bus.
#[derive(Debug)]
pub struct Bus {
    /// Channels of runs with consumers here (std Mutex: in-memory only).
    channels: Mutex<HashMap<String, Weak<Channel>>>,
    /// Every announcement, for `runs` subscriptions (status changes).
    statuses: broadcast::Sender<Announcement>,
    /// Listening now (false while reconnecting).
    listening: watch::Sender<bool>,
}

impl Default for Bus {
    fn default() -> Self {
        Bus {
            channels: Mutex::new(HashMap::new()),
            statuses: broadcast::channel(4_096).0,
            listening: watch::channel(false).0,
        }
    }
}

impl Bus {
    /// The channel of run `id`, registered as long as the returned handle lives.
    pub fn channel(&self, id: &str) -> Arc<Channel> {
        let mut channels = self.lock();
        if let Some(channel) = channels.get(id).and_then(Weak::upgrade) {
            return channel;
        }
        // Forget channels whose consumers have gone, at sizes doubling (amortized O(1)),
        // rather than on every announcement round.
        if channels.len().is_power_of_two() {
            channels.retain(|_, c| c.strong_count() > 0);
        }
        let channel = Arc::new(Channel::default());
        channels.insert(id.to_owned(), Arc::downgrade(&channel));
        channel
    }

    /// Announcements as they arrive (status changes for `runs` subscriptions). A receiver
    /// that lags loses the oldest: see [`status_changes`], which tells its subscriber.
    pub fn statuses(&self) -> broadcast::Receiver<Announcement> {
        self.statuses.subscribe()
    }

    /// Changes to true once the bus listens (tests and `/ready`).
    pub fn listening(&self) -> watch::Receiver<bool> {
        self.listening.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Weak<Channel>>> {
        self.channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The live channels among `ids`.
    fn live(&self, ids: impl Iterator<Item = String>) -> Vec<(String, Arc<Channel>)> {
        let channels = self.lock();
        ids.filter_map(|id| channels.get(&id).and_then(Weak::upgrade).map(|c| (id, c)))
            .collect()
    }

    /// Listens until `shutdown`, reconnecting after a failure.
    pub async fn run(self: Arc<Self>, connector: Arc<Connector>, shutdown: CancellationToken) {
        loop {
            let Some(store) = connector.until_ready(&shutdown).await else {
                return;
            };
            match self.listen(&store, &shutdown).await {
                Ok(()) => return,
                Err(err) => {
                    self.listening.send_replace(false);
                    tracing::warn!(error = %err, "run event bus lost its connection; reconnecting");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    async fn listen(&self, store: &Store, shutdown: &CancellationToken) -> Result<(), StoreError> {
        let (client, mut notifications) = store.dedicated().await?;
        client
            .batch_execute(&format!("LISTEN {PUBLISHED_CHANNEL}"))
            .await?;
        // Announcements sent while not listening are lost: catch up from the store.
        let ids: Vec<String> = self.live_ids();
        if !ids.is_empty() {
            let rows = client
                .query(
                    "SELECT e.run_id::text, max(e.seq), r.status, \
                            bool_or(e.type IN ('COMPLETED', 'FAILED', 'CANCELLED')) \
                     FROM viewcast_run_events e JOIN viewcast_runs r ON r.id = e.run_id \
                     WHERE e.run_id = ANY($1::text[]::uuid[]) AND e.published_at IS NOT NULL \
                     GROUP BY e.run_id, r.status",
                    &[&ids],
                )
                .await?;
            let announced: Vec<Announcement> = rows
                .iter()
                .map(|r| Announcement {
                    run_id: r.get(0),
                    upto: r.get(1),
                    status: r.get(2),
                    ended: r.get(3),
                })
                .collect();
            self.deliver(&client, announced).await?;
        }
        self.listening.send_replace(true);
        loop {
            let first = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                n = notifications.recv() => n,
            };
            let Some(first) = first else {
                return Err(StoreError::Unavailable("the bus connection closed".into()));
            };
            let mut announced: Vec<Announcement> = parse_announcements(first.payload()).collect();
            while let Ok(more) = notifications.try_recv() {
                announced.extend(parse_announcements(more.payload()));
            }
            for a in &announced {
                let _ = self.statuses.send(a.clone());
            }
            self.deliver(&client, announced).await?;
        }
    }

    /// The runs with consumers here.
    fn live_ids(&self) -> Vec<String> {
        let channels = self.lock();
        channels
            .iter()
            .filter(|(_, c)| c.strong_count() > 0)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Reads the announced events of runs with consumers here into their channels, then
    /// advances their published positions. Reads on the bus's own connection: never queued
    /// behind appends for a pooled one.
    async fn deliver(
        &self,
        client: &tokio_postgres::Client,
        announced: Vec<Announcement>,
    ) -> Result<(), StoreError> {
        // The highest announcement per run.
        let mut latest: HashMap<String, Published> = HashMap::new();
        for a in announced {
            let entry = latest.entry(a.run_id).or_default();
            entry.upto = entry.upto.max(a.upto);
            entry.ended |= a.ended;
        }
        let wanted = self.live(latest.keys().cloned());
        if wanted.is_empty() {
            return Ok(());
        }
        let mut ids = Vec::new();
        let mut after = Vec::new();
        let mut upto = Vec::new();
        for (id, channel) in &wanted {
            let published = latest[id];
            let from = channel.last().max(published.upto - TAIL as i64);
            if from < published.upto {
                ids.push(id.clone());
                after.push(from);
                upto.push(published.upto);
            }
        }
        if !ids.is_empty() {
            // Per run, an index range scan (LATERAL: the planner cannot pick a scan of the
            // whole history for it).
            let rows = client
                .query(
                    &format!(
                        "SELECT e.* FROM unnest($1::text[]::uuid[], $2::bigint[], $3::bigint[]) \
                             AS w(id, after, upto) \
                         CROSS JOIN LATERAL ( \
                             SELECT {EVENT_COLUMNS} FROM viewcast_run_events \
                             WHERE run_id = w.id AND seq > w.after AND seq <= w.upto \
                             ORDER BY seq) AS e"
                    ),
                    &[&ids, &after, &upto],
                )
                .await?;
            let mut by_run: HashMap<String, Vec<Event>> = HashMap::new();
            for row in &rows {
                let e = event(row);
                by_run.entry(e.run_id.clone()).or_default().push(e);
            }
            for (id, channel) in &wanted {
                if let Some(events) = by_run.remove(id) {
                    channel.extend(events);
                }
            }
        }
        for (id, channel) in wanted {
            channel.advance(latest[&id]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: i64) -> Event {
        Event {
            run_id: "r".into(),
            seq,
            event_type: "PROGRESS".into(),
            stage: None,
            message: None,
            percentage: None,
            counters: None,
            data: None,
            created_at: String::new(),
        }
    }

    #[test]
    fn the_tail_is_contiguous_bounded_and_answers_only_ranges_it_holds() {
        let c = Channel::default();
        c.extend((1..=10).map(ev).collect());
        let seqs = |v: Vec<Arc<Event>>| v.iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(seqs(c.range(3, 5).unwrap()), vec![3, 4, 5]);
        assert!(c.range(0, 5).is_none());
        assert!(c.range(5, 11).is_none());
        // A repeat is ignored; a gap starts the tail again.
        c.extend(vec![ev(10), ev(13)]);
        assert_eq!(c.last(), 13);
        assert!(c.range(10, 13).is_none());
        assert_eq!(seqs(c.range(13, 13).unwrap()), vec![13]);
        c.extend((14..=1_000).map(ev).collect());
        assert!(c.range(13, 20).is_none());
        assert_eq!(c.range(1_000 - TAIL as i64 + 1, 1_000).unwrap().len(), TAIL);
    }

    #[test]
    fn the_published_position_only_moves_forward() {
        let c = Channel::default();
        let rx = c.watch();
        c.advance(Published {
            upto: 5,
            ended: false,
        });
        c.advance(Published {
            upto: 3,
            ended: false,
        });
        assert_eq!(
            *rx.borrow(),
            Published {
                upto: 5,
                ended: false
            }
        );
        c.advance(Published {
            upto: 5,
            ended: true,
        });
        assert_eq!(
            *rx.borrow(),
            Published {
                upto: 5,
                ended: true
            }
        );
    }
}

/// The runs whose status changed, from `announcements` (each status once per run; an ended
/// run is forgotten). A receiver that fell behind the broadcast lost changes: it gets
/// `Err(missed)` once, and the stream ends — its subscriber must read the current state and
/// subscribe again, never miss a change silently.
pub fn status_changes(
    announcements: broadcast::Receiver<Announcement>,
) -> impl futures::Stream<Item = Result<String, u64>> + Send {
    use futures::StreamExt;
    let mut last: HashMap<String, String> = HashMap::new();
    tokio_stream::wrappers::BroadcastStream::new(announcements)
        .filter_map(move |a| {
            let item = match a {
                Ok(a) => {
                    let changed = last.get(&a.run_id) != Some(&a.status);
                    if a.ended {
                        last.remove(&a.run_id);
                    } else if changed {
                        last.insert(a.run_id.clone(), a.status.clone());
                    }
                    changed.then_some(Ok(a.run_id))
                }
                Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(missed)) => {
                    Some(Err(missed))
                }
            };
            futures::future::ready(item)
        })
        // Nothing after the lag: what follows would be a partial story.
        .scan(false, |ended, item| {
            if *ended {
                return futures::future::ready(None);
            }
            *ended = item.is_err();
            futures::future::ready(Some(item))
        })
}

#[cfg(test)]
mod status_tests {
    use futures::StreamExt;

    use super::*;

    fn announcement(run: &str, status: &str) -> Announcement {
        Announcement {
            run_id: run.into(),
            upto: 1,
            status: status.into(),
            ended: false,
        }
    }

    #[tokio::test]
    async fn each_status_once_and_a_lag_is_told_then_ends_the_stream() {
        let (tx, rx) = broadcast::channel(4);
        let mut changes = Box::pin(status_changes(rx));
        for a in [("a", "running"), ("a", "running"), ("b", "pending")] {
            tx.send(announcement(a.0, a.1)).expect("send");
        }
        assert_eq!(changes.next().await, Some(Ok("a".to_owned())));
        assert_eq!(changes.next().await, Some(Ok("b".to_owned())));
        // Six more than the channel holds, unread: the subscriber hears it missed some.
        for i in 0..10 {
            tx.send(announcement(&format!("r{i}"), "running"))
                .expect("send");
        }
        assert_eq!(changes.next().await, Some(Err(6)));
        assert_eq!(changes.next().await, None, "nothing after the lag");
    }
}
