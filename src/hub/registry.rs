//! The set of hubs a server runs, one per configured source, and their lazy start.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Hub, HubLimits, HubStatus};
use crate::config::{Config, StartMode};
use crate::telemetry::Metrics;

/// Starts the feed of a hub (spawns its task). Provided by the server, so hubs stay free of I/O.
pub type Starter = Arc<dyn Fn(Arc<Hub>) + Send + Sync>;

struct Entry {
    hub: Arc<Hub>,
    started: AtomicBool,
}

/// Every hub of the server, by source name.
pub struct Hubs {
    entries: HashMap<String, Entry>,
    starter: Starter,
}

impl Hubs {
    pub fn new(
        config: &Config,
        limits: HubLimits,
        metrics: &Metrics,
        starter: Starter,
    ) -> Arc<Hubs> {
        let entries = config
            .sources
            .iter()
            .map(|source| {
                let hub = Hub::new(source.clone(), limits, metrics.source(&source.name));
                (
                    source.name.clone(),
                    Entry {
                        hub,
                        started: AtomicBool::new(false),
                    },
                )
            })
            .collect();
        let hubs = Arc::new(Hubs { entries, starter });
        for source in &config.sources {
            if source.start == StartMode::Eager {
                hubs.get(&source.name);
            }
        }
        hubs
    }

    /// The hub of `source`, starting its feed if it has not started yet.
    pub fn get(&self, source: &str) -> Option<Arc<Hub>> {
        let entry = self.entries.get(source)?;
        if !entry.started.swap(true, Ordering::AcqRel) {
            (self.starter)(entry.hub.clone());
        }
        Some(entry.hub.clone())
    }

    /// The hub of `source`, without starting its feed.
    pub fn peek(&self, source: &str) -> Option<Arc<Hub>> {
        self.entries.get(source).map(|entry| entry.hub.clone())
    }

    /// Every source's status, started or not, sorted by name.
    pub fn statuses(&self) -> Vec<(String, Option<HubStatus>)> {
        let mut all: Vec<_> = self
            .entries
            .iter()
            .map(|(name, e)| {
                let status = e.started.load(Ordering::Acquire).then(|| e.hub.status());
                (name.clone(), status)
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}
