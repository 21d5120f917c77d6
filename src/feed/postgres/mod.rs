//! The PostgreSQL feed: one table per source through logical replication (pgoutput).
//!
//! Start-up takes a consistent boundary: `CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT` on the
//! replication connection, the table read inside that exported snapshot on a normal
//! connection, then `START_REPLICATION` from the slot's consistent point — every transaction
//! is either in the snapshot or in the stream, never both, never neither. Each committed
//! transaction becomes one [`Batch`]; its commit LSN is acknowledged only after the hub has
//! applied it. On a lost connection the feed retries with backoff and resumes from the slot
//! (skipping transactions it already applied); if the slot is gone it re-snapshots and the hub
//! publishes only the difference.
//!
//! The feed never panics on database errors and never applies a change it could not decode.

pub mod pgoutput;
pub mod relation;
mod session;
mod setup;

use std::sync::Arc;

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
    /// The publication a source's table is published in (shared by every instance).
    pub fn publication(&self, source: &str) -> String {
        identifier(&format!("{}_{}", self.prefix, source))
    }

    /// This instance's replication slot for a source: readable, and injective — a hash of the
    /// exact instance and source names ends it, so `eu-1` and `eu_1` (one readable form) get
    /// slots of their own, and a server never takes another's slot for a stale one of its own.
    pub fn slot(&self, source: &str) -> String {
        use sha2::Digest as _;
        let digest =
            sha2::Sha256::digest(format!("{}\0{}\0{}", self.prefix, self.instance, source));
        let hash = format!(
            "{:02x}{:02x}{:02x}{:02x}",
            digest[0], digest[1], digest[2], digest[3]
        );
        let mut readable = identifier(&format!("{}_{}_{}", self.prefix, self.instance, source));
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

/// Runs the feed of `hub` until `cancel` fires.
pub async fn run(hub: Arc<Hub>, settings: Arc<PgFeedSettings>, cancel: CancellationToken) {
    let source = hub.source().name.clone();
    let mut resume = session::Resume::default();
    let mut backoff = Backoff::new();
    loop {
        // The session stops its stream itself on cancellation; while it is still connecting
        // or reading a snapshot, shutdown drops it instead of waiting.
        let result = tokio::select! {
            biased;
            result = session::run(&hub, &settings, &mut resume, &cancel, &mut backoff) => result,
            () = cancel.cancelled() => Ok(()),
        };
        if cancel.is_cancelled() {
            break;
        }
        let err = match result {
            Ok(()) => FeedError::Connection("replication stream ended".into()),
            Err(err) => err,
        };
        let delay = if err.is_permanent() {
            backoff.max
        } else {
            backoff.next()
        };
        tracing::warn!(source = %source, error = %err, retry_in_ms = delay.as_millis() as u64, "postgres feed lost");
        hub.metrics().reconnects.inc();
        hub.apply(crate::feed::FeedEvent::Down {
            reason: err.to_string(),
            permanent: err.is_permanent(),
        });
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(delay) => {}
        }
    }
    session::drop_slot_on_shutdown(&settings, &source).await;
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
    fn slot_names_are_valid_and_tell_instances_and_sources_apart() {
        let long = "s".repeat(100);
        let names = [
            settings("eu-1").slot("trades"),
            settings("eu_1").slot("trades"),
            settings("EU_1").slot("trades"),
            settings("eu").slot("1_trades"),
            settings("default").slot(&format!("{long}a")),
            settings("default").slot(&format!("{long}b")),
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
        // Stable: the same instance and source always name the same slot.
        assert_eq!(settings("eu-1").slot("trades"), names[0]);
    }
}
