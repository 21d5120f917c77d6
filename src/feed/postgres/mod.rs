//! The PostgreSQL feed: every `backend: postgres` source of a server through one publication,
//! one replication slot and one WAL sender per database (pgoutput), demultiplexed by relation
//! into each source's hub.
//!
//! Each source's table is snapshotted alongside the running stream as the source joins (at
//! start-up, or later for `start: lazy` sources), without a slot of its own: see
//! [`snapshot`]. Each committed transaction becomes one [`crate::feed::Batch`] per source it
//! touches, all at its commit LSN, which is acknowledged only after every hub has applied it.
//! On a lost connection the feed retries with backoff and resumes from the slot (skipping
//! transactions it already applied); if the slot is gone it snapshots every table again and
//! each hub publishes only the difference. A source whose table is missing or misconfigured
//! is reported on its own hub and checked again later; the others stream on.
//!
//! The feed never panics on database errors and never applies a change it could not decode.

pub mod pgoutput;
pub mod relation;
mod session;
mod setup;
mod snapshot;

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;

pub(crate) use super::{Backoff, FeedError};

pub use setup::{SetupError, apply_setup, setup_sql};

/// How the PostgreSQL feeds of one server connect.
#[derive(Debug, Clone)]
pub struct PgFeedSettings {
    /// libpq-style URL (`postgres://user:pass@host:port/db`).
    pub url: String,
    /// Prefix of publication and slot names.
    pub prefix: String,
    /// Distinguishes the replication slots of several servers on one database.
    pub instance: String,
    /// Create missing publications / fix replica identity instead of reporting them.
    pub apply_setup: bool,
}

impl PgFeedSettings {
    /// The publication every source's table is in (shared by every instance).
    pub fn publication(&self) -> String {
        identifier(&self.prefix)
    }

    /// This instance's replication slot: readable, and injective — a hash of the exact
    /// instance name ends it, so `eu-1` and `eu_1` (one readable form) get slots of their own,
    /// and a server never takes another's slot for a stale one of its own.
    pub fn slot(&self) -> String {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(format!("{}\0{}", self.prefix, self.instance));
        let hash = format!(
            "{:02x}{:02x}{:02x}{:02x}",
            digest[0], digest[1], digest[2], digest[3]
        );
        let mut readable = identifier(&format!("{}_{}", self.prefix, self.instance));
        readable.truncate(63 - 1 - hash.len());
        format!("{readable}_{hash}")
    }
}

/// A lower-case identifier of at most 63 bytes (PostgreSQL's limit; slot names allow only
/// `[a-z0-9_]`).
fn identifier(raw: &str) -> String {
    let mut out: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    out.truncate(63);
    out
}

/// The feed of one database: hubs join it as their sources start.
pub struct PgFeed {
    hubs: mpsc::UnboundedSender<Arc<Hub>>,
}

impl PgFeed {
    /// The feed, and the task that runs it until `cancel` fires (for the caller to spawn).
    pub fn new(
        settings: Arc<PgFeedSettings>,
        cancel: CancellationToken,
    ) -> (PgFeed, impl std::future::Future<Output = ()> + Send) {
        let (hubs, joined) = mpsc::unbounded_channel();
        (PgFeed { hubs }, run(settings, joined, cancel))
    }

    /// Adds a source: its table is snapshotted alongside the stream, then streamed.
    pub fn add(&self, hub: Arc<Hub>) {
        if let Err(mpsc::error::SendError(hub)) = self.hubs.send(hub) {
            hub.apply(crate::feed::FeedEvent::Down {
                reason: "the server is shutting down".into(),
                permanent: true,
            });
        }
    }
}

async fn run(
    settings: Arc<PgFeedSettings>,
    joined: mpsc::UnboundedReceiver<Arc<Hub>>,
    cancel: CancellationToken,
) {
    let mut feed = Sessions {
        feed: session::Feed::default(),
        settings,
        joined,
        lost: None,
    };
    super::supervise(&mut feed, &cancel).await;
    session::drop_slot_on_shutdown(&feed.settings).await;
}

struct Sessions {
    feed: session::Feed,
    settings: Arc<PgFeedSettings>,
    joined: mpsc::UnboundedReceiver<Arc<Hub>>,
    /// Why the last session ended, for sources that join before the next one.
    lost: Option<FeedError>,
}

impl super::Sessions for Sessions {
    const BACKEND: &'static str = "postgres";

    async fn session(
        &mut self,
        cancel: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), FeedError> {
        // Sources that joined meanwhile take part from the start (and hear if it fails).
        while let Ok(hub) = self.joined.try_recv() {
            self.feed.add(hub);
        }
        let result = session::run(
            &mut self.feed,
            &self.settings,
            &mut self.joined,
            cancel,
            backoff,
        )
        .await;
        self.lost = result.as_ref().err().cloned();
        result
    }

    /// The slot is the position; a lost one is found at the next session's start.
    fn forget_position(&mut self) -> bool {
        false
    }

    fn hubs(&self) -> Vec<Arc<Hub>> {
        self.feed.sources.iter().map(|s| s.hub.clone()).collect()
    }

    /// A source that joins while the database is away waits with the others, and says why.
    async fn between_sessions(&mut self) {
        let Some(hub) = self.joined.recv().await else {
            return std::future::pending().await;
        };
        if let Some(err) = &self.lost {
            hub.apply(crate::feed::FeedEvent::Down {
                reason: err.to_string(),
                permanent: err.is_permanent(),
            });
        }
        self.feed.add(hub);
    }
}

#[cfg(test)]
mod slot_tests {
    use super::*;

    fn settings(instance: &str) -> PgFeedSettings {
        PgFeedSettings {
            url: String::new(),
            prefix: "viewcast".into(),
            instance: instance.into(),
            apply_setup: false,
        }
    }

    #[test]
    fn slot_names_are_valid_and_tell_instances_apart() {
        let long = "s".repeat(100);
        let names = [
            settings("eu-1").slot(),
            settings("eu_1").slot(),
            settings("EU_1").slot(),
            settings(&format!("{long}a")).slot(),
            settings(&format!("{long}b")).slot(),
        ];
        for name in &names {
            assert!(name.len() <= 63, "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{name}"
            );
            assert!(name.starts_with("viewcast_"), "{name}");
        }
        let distinct: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(distinct.len(), names.len(), "{names:?}");
        // Stable: the same instance always names the same slot.
        assert_eq!(settings("eu-1").slot(), names[0]);
        assert_eq!(settings("eu-1").publication(), "viewcast");
    }
}
