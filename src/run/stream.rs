//! A consumer's stream of a run's events: the persisted ones from `from_seq`, then live
//! ones, each exactly once and in order, whatever the interleaving with new appends.
//!
//! The consumer registers with the bus before it reads the store, so an event published
//! during the replay is announced to it; it keeps `next` (the seq it wants next) and takes
//! only that one, from the bus's tail or from the store. A gap is impossible (it reads by seq
//! range) and so is a duplicate (it skips anything below `next`). When nothing arrives for
//! the heartbeat interval, it sends a heartbeat and checks the store itself, in case an
//! announcement was lost.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::bus::{Channel, Published};
use super::{Event, RunError, Runs, TERMINAL};

/// Events read from the store at a time.
const PAGE: i64 = 500;

/// Progress events go to a coalescing consumer at most this often.
pub const COALESCE_INTERVAL: Duration = Duration::from_secs(1);

/// The event type progress coalescing applies to.
pub const PROGRESS: &str = "PROGRESS";

/// What a consumer receives.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Event(Arc<Event>),
    /// Nothing happened for the heartbeat interval; `seq` is the last seq sent (0: none).
    /// Not persisted: it never changes where a consumer resumes.
    Heartbeat {
        seq: i64,
    },
}

/// How to follow a run.
#[derive(Debug, Clone, Copy)]
pub struct Follow {
    /// The first seq wanted (1: from the start).
    pub from_seq: i64,
    /// At most one `PROGRESS` event per second to this consumer (the latest always goes
    /// out); the persisted history keeps every event.
    pub coalesce: bool,
    pub heartbeat: Duration,
}

/// Where the stream's items go; ends quietly when the consumer has gone.
struct Out {
    tx: mpsc::Sender<Result<Item, RunError>>,
    coalesce: bool,
    /// A progress event held back by coalescing.
    held: Option<Arc<Event>>,
    last_progress: Option<Instant>,
    /// The last seq sent.
    sent: i64,
}

/// The consumer went away.
struct Gone;

impl Out {
    async fn send(&mut self, item: Item) -> Result<(), Gone> {
        if let Item::Event(e) = &item {
            self.sent = e.seq;
        }
        self.tx.send(Ok(item)).await.map_err(|_| Gone)
    }

    /// Sends `event`, or holds it back if it is progress that came too soon.
    async fn event(&mut self, event: Arc<Event>) -> Result<(), Gone> {
        if self.coalesce && event.event_type == PROGRESS {
            let due = self
                .last_progress
                .is_none_or(|t| t.elapsed() >= COALESCE_INTERVAL);
            if due && self.held.is_none() {
                self.last_progress = Some(Instant::now());
                return self.send(Item::Event(event)).await;
            }
            self.held = Some(event);
            return Ok(());
        }
        // The progress held back goes first: order is kept and the latest is delivered.
        self.flush().await?;
        self.send(Item::Event(event)).await
    }

    async fn flush(&mut self) -> Result<(), Gone> {
        if let Some(held) = self.held.take() {
            self.last_progress = Some(Instant::now());
            self.send(Item::Event(held)).await?;
        }
        Ok(())
    }

    /// When the progress held back is due.
    fn due(&self) -> Option<Instant> {
        self.held.as_ref()?;
        Some(
            self.last_progress
                .map_or_else(Instant::now, |t| t + COALESCE_INTERVAL),
        )
    }
}

fn is_terminal(event: &Event) -> bool {
    TERMINAL.contains(&event.event_type.as_str())
}

impl Runs {
    /// Follows run `id` (see the module). Fails at once if the run does not exist; later
    /// store failures end the stream with an error item (the consumer resumes from the last
    /// seq it saw).
    pub async fn follow(
        &self,
        id: &str,
        follow: Follow,
    ) -> Result<tokio_stream::wrappers::ReceiverStream<Result<Item, RunError>>, RunError> {
        let run = self.get(id).await?;
        // Registered before the store is read: nothing published meanwhile is missed.
        let channel = self.bus().channel(&run.id);
        let (tx, rx) = mpsc::channel(64);
        let runs = self.clone();
        tokio::spawn(async move {
            // Counted while the stream is open, however its task ends.
            struct Open(Arc<crate::telemetry::RunMetrics>);
            impl Drop for Open {
                fn drop(&mut self) {
                    self.0.consumers.add(-1);
                }
            }
            let mut out = Out {
                tx,
                coalesce: follow.coalesce,
                held: None,
                last_progress: None,
                sent: 0,
            };
            // Declared after `out`, so dropped before it: the count is down before the
            // consumer sees its stream end.
            runs.metrics.consumers.add(1);
            let _open = Open(runs.metrics.clone());
            let ended_at = run.terminal_type.as_ref().map(|_| run.next_seq - 1);
            if let Err(err) = runs
                .feed(&run.id, &channel, follow, ended_at, &mut out)
                .await
            {
                let _ = out.tx.send(Err(err)).await;
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    async fn feed(
        &self,
        id: &str,
        channel: &Channel,
        follow: Follow,
        ended_at: Option<i64>,
        out: &mut Out,
    ) -> Result<(), RunError> {
        let mut published = channel.watch();
        let mut next = follow.from_seq.max(1);
        out.sent = next - 1;
        // Replay: every event is sent, coalescing applies to live ones only.
        loop {
            let page = self.published_events(id, next, PAGE).await?;
            let full = page.len() as i64 == PAGE;
            for e in page {
                next = e.seq + 1;
                let terminal = is_terminal(&e);
                if out.send(Item::Event(Arc::new(e))).await.is_err() || terminal {
                    return Ok(());
                }
            }
            if !full {
                break;
            }
        }
        if ended_at.is_some_and(|last| next > last) {
            return Ok(());
        }
        let mut quiet_since = Instant::now();
        loop {
            let Published { upto, ended } = *published.borrow_and_update();
            if upto >= next {
                let events = match channel.range(next, upto) {
                    Some(events) => events,
                    None => self
                        .published_events(id, next, (upto - next + 1).min(PAGE))
                        .await?
                        .into_iter()
                        .map(Arc::new)
                        .collect(),
                };
                if self.send_live(events, &mut next, out).await {
                    return Ok(());
                }
                quiet_since = Instant::now();
                continue;
            }
            if ended && next > upto {
                let _ = out.flush().await;
                return Ok(());
            }
            let heartbeat = quiet_since + follow.heartbeat;
            let coalesced = out.due();
            tokio::select! {
                changed = published.changed() => if changed.is_err() { return Ok(()) },
                () = async { tokio::time::sleep_until(coalesced.unwrap_or(heartbeat)).await }, if coalesced.is_some() => {
                    if out.flush().await.is_err() {
                        return Ok(());
                    }
                }
                () = tokio::time::sleep_until(heartbeat) => {
                    quiet_since = Instant::now();
                    if out.send(Item::Heartbeat { seq: out.sent }).await.is_err() {
                        return Ok(());
                    }
                    // In case an announcement was lost: look in the store (one query when
                    // nothing was missed).
                    let run = self.get(id).await?;
                    if run.next_seq > next {
                        let events: Vec<Arc<Event>> = self
                            .published_events(id, next, PAGE)
                            .await?
                            .into_iter()
                            .map(Arc::new)
                            .collect();
                        if self.send_live(events, &mut next, out).await {
                            return Ok(());
                        }
                    } else if run.terminal_type.is_some() {
                        // Asked for more than a run that has ended will ever have.
                        let _ = out.flush().await;
                        return Ok(());
                    }
                }
                () = out.tx.closed() => return Ok(()),
            }
        }
    }

    /// Sends the events at `next` onwards; true when the stream is over (terminal event sent,
    /// or the consumer gone).
    async fn send_live(&self, events: Vec<Arc<Event>>, next: &mut i64, out: &mut Out) -> bool {
        for e in events {
            if e.seq != *next {
                continue;
            }
            *next = e.seq + 1;
            let terminal = is_terminal(&e);
            if out.event(e).await.is_err() {
                return true;
            }
            if terminal {
                return true;
            }
        }
        false
    }
}
