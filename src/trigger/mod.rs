//! Triggers: webhooks that FIRE when a row enters a condition and CLEAR when it leaves.
//!
//! This module owns trigger definitions: validating what `create_S_trigger` is given
//! (condition, webhook target, retry policy, payload format), persisting definitions in the
//! store and keeping the live set in memory. It never blocks a hub: evaluation and delivery
//! run in their own tasks.

pub mod deliveries;
mod model;
pub mod payload;
mod runner;
mod sender;
mod target;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

pub use deliveries::{AttemptRecord, Counters, Delivery, DeliveryStatus, Page};
pub use model::{PayloadFormat, RetryPolicy, Trigger, TriggerRecord, TriggerSpec, TriggerStatus};
pub use payload::Secret;
pub use target::{TargetError, check_target, parse as parse_target};

use crate::change::Position;
use crate::config::{Config, SourceDef};
use crate::hub::Hubs;
use crate::store::{Connector, Store, StoreError, StoreState, rfc3339};

/// How triggers behave on this server.
#[derive(Debug, Clone)]
pub struct TriggerSettings {
    /// Webhooks may target loopback and private addresses (refused by default: SSRF).
    pub allow_private_targets: bool,
    /// How webhook host names are resolved (the system's resolver; tests give their own).
    pub lookup: Arc<dyn crate::egress::Lookup>,
    /// Signing secrets: every delivery carries one signature per secret (several while one
    /// rotates). None: deliveries are not signed.
    pub secrets: Vec<Secret>,
    /// Requests in flight at once, across triggers.
    pub max_concurrent_deliveries: usize,
    /// This server's name among the replicas sharing the store (`--instance`).
    pub instance: String,
    /// How long delivered (and cancelled) deliveries are kept; `None`: forever. Dead ones
    /// are kept until redelivered.
    pub delivery_retention: Option<std::time::Duration>,
    /// Requests in flight to one webhook host at once (a share of the shared slots).
    pub max_per_host: usize,
    /// Triggers one source may have.
    pub max_per_source: usize,
    /// Deliveries one redelivery may queue (the width of its id range).
    pub max_redeliver: usize,
    /// The most attempts a trigger's retry policy may ask for (at most 100 in any case).
    pub max_attempts: u32,
    /// The longest timeout per attempt a trigger may ask for (at most 300 s in any case).
    pub max_timeout: std::time::Duration,
}

impl Default for TriggerSettings {
    fn default() -> Self {
        TriggerSettings {
            allow_private_targets: false,
            lookup: Arc::new(crate::egress::SystemLookup),
            secrets: Vec::new(),
            max_concurrent_deliveries: 256,
            instance: "default".into(),
            delivery_retention: Some(std::time::Duration::from_secs(7 * 86_400)),
            max_per_host: 64,
            max_per_source: 100,
            max_redeliver: 1_000,
            max_attempts: 100,
            max_timeout: std::time::Duration::from_secs(300),
        }
    }
}

/// Why a trigger operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("trigger {name} already exists for source {source_name}")]
    Exists { source_name: String, name: String },
    #[error("trigger {name} not found for source {source_name}")]
    NotFound { source_name: String, name: String },
    #[error("{0}")]
    Invalid(String),
    /// A request beyond a limit (`--max-triggers-per-source`, `--trigger-max-redeliver`).
    #[error("{0}")]
    Limit(String),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(
        "triggers need a store: set VIEWCAST_STORE_URL (or DATABASE_URL) to a PostgreSQL database"
    )]
    NoStore,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl TriggerError {
    /// The GraphQL error code (`extensions.code`).
    pub fn code(&self) -> &'static str {
        match self {
            TriggerError::Exists { .. } => "ALREADY_EXISTS",
            TriggerError::NotFound { .. } => "NOT_FOUND",
            TriggerError::Invalid(_) | TriggerError::Target(_) => "BAD_USER_INPUT",
            TriggerError::Limit(_) => "LIMIT_EXCEEDED",
            TriggerError::NoStore | TriggerError::Store(_) => "STORE_UNAVAILABLE",
        }
    }
}

/// How often the live set is compared with the store (triggers created, deleted, enabled or
/// disabled through another replica).
const FOLLOW_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// How often, at most, deliveries past their retention are deleted.
const PRUNE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Deletes a stored trigger (its keys go with it) and cancels its pending deliveries.
async fn remove(
    tx: &deadpool_postgres::Transaction<'_>,
    source: &str,
    name: &str,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE viewcast_deliveries SET status = 'cancelled' \
         WHERE source = $1 AND trigger_name = $2 AND status = 'pending'",
        &[&source, &name],
    )
    .await?;
    tx.execute(
        "DELETE FROM viewcast_triggers WHERE source = $1 AND name = $2",
        &[&source, &name],
    )
    .await?;
    Ok(())
}

/// The triggers of a server, by source, in creation order.
pub struct Triggers {
    config: Arc<Config>,
    settings: TriggerSettings,
    connector: Arc<Connector>,
    /// Ready once the store is connected and the definitions are loaded.
    store: watch::Sender<StoreState>,
    /// std Mutex: held only for in-memory work, never across an await.
    by_source: Mutex<HashMap<String, Vec<Arc<Trigger>>>>,
    /// Bumped whenever triggers are created or deleted (evaluators reload).
    changes: watch::Sender<u64>,
    hubs: Option<Arc<Hubs>>,
    /// Sources whose evaluator runs (std Mutex: in-memory only).
    running: Mutex<std::collections::HashSet<String>>,
    /// Per source: the triggers its dispatcher sends for, and its wake-up (std Mutex).
    dispatchers: Mutex<HashMap<String, Arc<sender::Owned>>>,
    /// Webhook requests in flight, across sources.
    concurrency: Arc<tokio::sync::Semaphore>,
    /// Webhook requests in flight per host, across sources.
    hosts: Arc<sender::HostSlots>,
    /// Where requests a limit refused are counted (the server's).
    rejections: Arc<crate::limits::Rejections>,
    /// The webhook client, built with the first dispatcher.
    http: std::sync::OnceLock<reqwest::Client>,
    shutdown: tokio_util::sync::CancellationToken,
    tasks: tokio_util::task::TaskTracker,
}

impl Triggers {
    /// The triggers of `config`; once the store is connected (if there is one), loads the
    /// persisted definitions (reconciling the declared ones), retrying on failure.
    pub fn start(
        config: Arc<Config>,
        settings: TriggerSettings,
        connector: Arc<Connector>,
        hubs: Option<Arc<Hubs>>,
        rejections: Arc<crate::limits::Rejections>,
        shutdown: tokio_util::sync::CancellationToken,
        tasks: tokio_util::task::TaskTracker,
    ) -> Arc<Triggers> {
        let initial = if connector.is_configured() {
            StoreState::Connecting("connecting".into())
        } else {
            StoreState::None
        };
        let concurrency = settings.max_concurrent_deliveries.max(1);
        let settings_per_host = settings.max_per_host.clamp(1, concurrency);
        let triggers = Arc::new(Triggers {
            config,
            settings,
            connector: connector.clone(),
            store: watch::channel(initial).0,
            by_source: Mutex::new(HashMap::new()),
            changes: watch::channel(0).0,
            hubs,
            running: Mutex::new(std::collections::HashSet::new()),
            dispatchers: Mutex::new(HashMap::new()),
            concurrency: Arc::new(tokio::sync::Semaphore::new(concurrency)),
            hosts: Arc::new(sender::HostSlots::new(settings_per_host)),
            rejections,
            http: std::sync::OnceLock::new(),
            shutdown: shutdown.clone(),
            tasks,
        });
        if connector.is_configured() {
            let this = triggers.clone();
            tokio::spawn(async move {
                let mut delay = std::time::Duration::from_millis(200);
                loop {
                    let Some(store) = connector.until_ready(&shutdown).await else {
                        return;
                    };
                    match this.reconcile_and_load(&store).await {
                        Ok(()) => {
                            this.store.send_replace(StoreState::Ready(store.clone()));
                            tracing::info!("trigger store ready");
                            let sources: Vec<String> = this.lock().keys().cloned().collect();
                            for source in sources {
                                this.evaluate(&source);
                            }
                            this.clone().follow(store, shutdown).await;
                            return;
                        }
                        Err(err) => this.store_failed(&err),
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(std::time::Duration::from_secs(30));
                }
            });
        }
        triggers
    }

    fn store_failed(&self, err: &dyn std::fmt::Display) {
        tracing::warn!(error = %err, "trigger store unavailable; retrying");
        self.store
            .send_replace(StoreState::Connecting(err.to_string()));
    }

    /// `None` when triggers can run (or none are configured), else why not (for `/ready`).
    pub fn not_ready(&self) -> Option<String> {
        match &*self.store.borrow() {
            StoreState::Connecting(reason) => {
                Some(self.connector.not_ready().unwrap_or_else(|| reason.clone()))
            }
            StoreState::None | StoreState::Ready(_) => None,
        }
    }

    /// Waits for the store (a short while), for API calls made while it connects.
    async fn store(&self) -> Result<Store, TriggerError> {
        let mut rx = self.store.subscribe();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match &*rx.borrow_and_update() {
                StoreState::Ready(store) => return Ok(store.clone()),
                StoreState::None => return Err(TriggerError::NoStore),
                StoreState::Connecting(_) => {}
            }
            if !matches!(
                tokio::time::timeout_at(deadline, rx.changed()).await,
                Ok(Ok(()))
            ) {
                let reason = match &*rx.borrow() {
                    StoreState::Connecting(reason) => {
                        self.connector.not_ready().unwrap_or_else(|| reason.clone())
                    }
                    _ => "shutting down".into(),
                };
                return Err(TriggerError::Store(StoreError::Unavailable(reason)));
            }
        }
    }

    /// Changes when triggers are created or deleted.
    pub(crate) fn watch_changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Starts evaluating (and delivering) the triggers of `source`, once.
    fn evaluate(self: &Arc<Self>, source: &str) {
        let Some(hubs) = &self.hubs else { return };
        let StoreState::Ready(store) = self.store.borrow().clone() else {
            return;
        };
        let first = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(source.to_owned());
        if !first {
            return;
        }
        let Some(hub) = hubs.get(source) else { return };
        let http = self.http();
        let shared = Arc::new(sender::Shared {
            store: store.clone(),
            http,
            secrets: self.settings.secrets.clone(),
            egress: self.egress(),
            concurrency: self.concurrency.clone(),
            hosts: self.hosts.clone(),
        });
        let span = tracing::info_span!("triggers", source = %source);
        self.tasks.spawn(tracing::Instrument::instrument(
            runner::run(self.clone(), store, hub, shared, self.shutdown.clone()),
            span,
        ));
    }

    /// Where webhooks may go, and how their names resolve.
    fn egress(&self) -> crate::egress::Egress {
        crate::egress::Egress {
            allow_private: self.settings.allow_private_targets,
            lookup: self.settings.lookup.clone(),
        }
    }

    /// The webhook client every source's dispatcher shares (one pool of connections); it
    /// connects only to the addresses `egress` allows, and follows no redirect.
    fn http(&self) -> reqwest::Client {
        self.http.get_or_init(|| self.egress().client(None)).clone()
    }

    /// The source hub's batch boundary and position now (a trigger's creation point).
    fn mark(&self, source: &str) -> (Option<u64>, Option<Position>) {
        self.hubs
            .as_ref()
            .and_then(|hubs| hubs.peek(source))
            .map_or((None, None), |hub| {
                let (boundary, position) = hub.mark();
                (Some(boundary), position)
            })
    }

    /// What the source's evaluator and dispatcher share.
    fn owned(&self, source: &str) -> Arc<sender::Owned> {
        self.dispatchers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(source.to_owned())
            .or_default()
            .clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Arc<Trigger>>>> {
        self.by_source
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn source(&self, name: &str) -> Result<Arc<SourceDef>, TriggerError> {
        self.config
            .source(name)
            .cloned()
            .ok_or_else(|| TriggerError::Invalid(format!("unknown source {name}")))
    }

    async fn reconcile_and_load(&self, store: &Store) -> Result<(), TriggerError> {
        let created = self.reconcile(store).await?;
        self.load(store, &created).await
    }

    /// Makes the stored triggers match the ones declared in schema.yaml: a declared trigger
    /// missing or changed is (re)created (a changed one starts over: new generation, its old
    /// pending deliveries cancelled), one no longer declared is deleted. An API-created
    /// trigger with a declared name is replaced. Under a lock: replicas starting together
    /// reconcile one after the other.
    ///
    /// Returns the hub boundary at creation of the triggers created here (see `create`).
    async fn reconcile(
        &self,
        store: &Store,
    ) -> Result<HashMap<(String, String), u64>, TriggerError> {
        let mut created = HashMap::new();
        let mut client = store.client().await?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('viewcast declared triggers', 0))",
            &[],
        )
        .await
        .map_err(StoreError::from)?;
        for declared in &self.config.triggers {
            let source = self.source(&declared.source)?;
            let spec = TriggerSpec::from_input(&source, &declared.input)?;
            let definition = spec.definition(&source);
            let stored = tx
                .query_opt(
                    "SELECT declared, definition = $3::jsonb FROM viewcast_triggers \
                     WHERE source = $1 AND name = $2 FOR UPDATE",
                    &[&declared.source, &declared.name, &definition],
                )
                .await
                .map_err(StoreError::from)?;
            if let Some(row) = stored {
                let (was_declared, same): (bool, bool) = (row.get(0), row.get(1));
                if was_declared && same {
                    continue;
                }
                if was_declared {
                    tracing::info!(source = %declared.source, trigger = %declared.name, "declared trigger changed in schema.yaml: it starts over");
                } else {
                    tracing::warn!(source = %declared.source, trigger = %declared.name, "schema.yaml declares a trigger that was created through the API: the declared one replaces it");
                }
                remove(&tx, &declared.source, &declared.name).await?;
            } else {
                tracing::info!(source = %declared.source, trigger = %declared.name, "declared trigger created");
            }
            // Rows matching at this point are the ones that already match at creation.
            let (boundary, position) = self.mark(&declared.source);
            tx.execute(
                "INSERT INTO viewcast_triggers (source, name, definition, declared, created_position) \
                 VALUES ($1, $2, $3, true, $4)",
                &[
                    &declared.source,
                    &declared.name,
                    &definition,
                    &position.map(Position::to_stored),
                ],
            )
            .await
            .map_err(StoreError::from)?;
            if let Some(boundary) = boundary {
                created.insert((declared.source.clone(), declared.name.clone()), boundary);
            }
        }
        let gone = tx
            .query(
                "SELECT source, name FROM viewcast_triggers WHERE declared",
                &[],
            )
            .await
            .map_err(StoreError::from)?;
        for row in gone {
            let (source, name): (String, String) = (row.get(0), row.get(1));
            let still = self
                .config
                .triggers
                .iter()
                .any(|d| d.source == source && d.name == name);
            if !still {
                tracing::info!(source = %source, trigger = %name, "trigger no longer declared in schema.yaml: deleted");
                remove(&tx, &source, &name).await?;
            }
        }
        tx.commit().await.map_err(StoreError::from)?;
        Ok(created)
    }

    /// Loads every persisted trigger of a configured source.
    /// `created`: the hub boundary at creation of triggers this server created.
    async fn load(
        &self,
        store: &Store,
        created: &HashMap<(String, String), u64>,
    ) -> Result<(), TriggerError> {
        let client = store.client().await?;
        let mut loaded: HashMap<String, Vec<Arc<Trigger>>> = HashMap::new();
        for trigger in self.fetch(&client, None, created).await? {
            loaded
                .entry(trigger.source.name.clone())
                .or_default()
                .push(trigger);
        }
        *self.lock() = loaded;
        Ok(())
    }

    /// Stored triggers of configured sources (those of `only`, or all), in creation order.
    async fn fetch(
        &self,
        client: &deadpool_postgres::Object,
        only: Option<&[(String, String, i64)]>,
        created: &HashMap<(String, String), u64>,
    ) -> Result<Vec<Arc<Trigger>>, TriggerError> {
        let column = |i: usize| -> Vec<&str> {
            only.unwrap_or_default()
                .iter()
                .map(|k| if i == 0 { k.0.as_str() } else { k.1.as_str() })
                .collect()
        };
        let generations: Vec<i64> = only.unwrap_or_default().iter().map(|k| k.2).collect();
        let rows = client
            .query(
                concat!(
                    "SELECT source, name, definition, status, declared, generation, ",
                    rfc3339!("created_at"),
                    ", created_position FROM viewcast_triggers \
                     WHERE $1 OR (source, name, generation) IN \
                         (SELECT * FROM unnest($2::text[], $3::text[], $4::bigint[])) \
                     ORDER BY created_at, generation"
                ),
                &[&only.is_none(), &column(0), &column(1), &generations],
            )
            .await
            .map_err(StoreError::from)?;
        let mut fetched = Vec::new();
        for row in rows {
            let source_name: String = row.get(0);
            let Some(source) = self.config.source(&source_name).cloned() else {
                tracing::warn!(source = %source_name, "a stored trigger's source is not configured; ignoring it");
                continue;
            };
            let name: String = row.get(1);
            let definition: serde_json::Value = row.get(2);
            let status = if row.get::<_, String>(3) == "disabled" {
                TriggerStatus::Disabled
            } else {
                TriggerStatus::Active
            };
            let record = TriggerRecord {
                status,
                declared: row.get(4),
                generation: row.get(5),
                created_at: row.get(6),
                created_position: row.get::<_, Option<i64>>(7).map(Position::from_stored),
                created_boundary: created.get(&(source_name.clone(), name.clone())).copied(),
            };
            match Trigger::from_stored(source, name.clone(), &definition, record) {
                Ok(trigger) => fetched.push(Arc::new(trigger)),
                Err(err) => {
                    tracing::error!(source = %source_name, trigger = %name, error = %err, "a stored trigger no longer fits the configuration; ignoring it");
                }
            }
        }
        Ok(fetched)
    }

    /// Follows, until shutdown, the triggers other replicas create, delete, enable and disable.
    /// Also prunes deliveries past their retention.
    async fn follow(self: Arc<Self>, store: Store, shutdown: tokio_util::sync::CancellationToken) {
        let retention = self.settings.delivery_retention;
        // Prune at most every minute, often enough for short retentions.
        let prune_every = retention.map(|r| (r / 2).clamp(FOLLOW_INTERVAL / 4, PRUNE_INTERVAL));
        let mut next_prune = tokio::time::Instant::now();
        loop {
            let next_sync = tokio::time::Instant::now() + FOLLOW_INTERVAL;
            let wake = if prune_every.is_some() {
                next_sync.min(next_prune)
            } else {
                next_sync
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep_until(wake) => {}
            }
            if let (Some(retention), Some(every)) = (retention, prune_every)
                && tokio::time::Instant::now() >= next_prune
            {
                next_prune = tokio::time::Instant::now() + every;
                match deliveries::prune(&store, retention).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::debug!(deleted = n, "deliveries past their retention deleted");
                    }
                    Err(err) => tracing::warn!(error = %err, "cannot prune old deliveries"),
                }
            }
            if tokio::time::Instant::now() >= next_sync
                && let Err(err) = self.sync(&store).await
            {
                tracing::warn!(error = %err, "cannot read the stored triggers");
            }
        }
    }

    /// Brings the live set in line with the store.
    async fn sync(self: &Arc<Self>, store: &Store) -> Result<(), TriggerError> {
        // A create or delete here while the store is read would look like another
        // replica's: such a round is skipped (the next one sees the store after it).
        let before = *self.changes.borrow();
        let client = store.client().await?;
        let rows = client
            .query(
                "SELECT source, name, generation, status FROM viewcast_triggers",
                &[],
            )
            .await
            .map_err(StoreError::from)?;
        let stored: HashMap<(String, String, i64), bool> = rows
            .iter()
            .filter(|r| self.config.source(r.get(0)).is_some())
            .map(|r| {
                (
                    (r.get(0), r.get(1), r.get(2)),
                    r.get::<_, String>(3) == "disabled",
                )
            })
            .collect();
        let identity = |t: &Trigger| (t.source.name.clone(), t.spec.name.clone(), t.generation);
        let new: Vec<(String, String, i64)> = {
            let live = self.lock();
            let known: std::collections::HashSet<(String, String, i64)> =
                live.values().flatten().map(|t| identity(t)).collect();
            for trigger in live.values().flatten() {
                if let Some(&disabled) = stored.get(&identity(trigger)) {
                    trigger.set_disabled(disabled);
                }
            }
            stored
                .keys()
                .filter(|k| !known.contains(*k))
                .cloned()
                .collect()
        };
        let fetched = if new.is_empty() {
            Vec::new()
        } else {
            self.fetch(&client, Some(&new), &HashMap::new()).await?
        };
        drop(client);
        let mut changed = false;
        let mut started = Vec::new();
        {
            let mut live = self.lock();
            if *self.changes.borrow() != before {
                return Ok(());
            }
            for list in live.values_mut() {
                let before = list.len();
                list.retain(|t| stored.contains_key(&identity(t)));
                changed |= list.len() != before;
            }
            for trigger in fetched {
                let list = live.entry(trigger.source.name.clone()).or_default();
                // Created here meanwhile: already live.
                if list.iter().any(|t| identity(t) == identity(&trigger)) {
                    continue;
                }
                tracing::info!(source = %trigger.source.name, trigger = %trigger.spec.name, "trigger created on another replica");
                started.push(trigger.source.name.clone());
                list.push(trigger);
                changed = true;
            }
        }
        if changed {
            self.changed();
        }
        for source in started {
            self.evaluate(&source);
        }
        Ok(())
    }

    /// Creates a trigger: validates it (condition, target), persists it, and starts it.
    pub async fn create(
        self: &Arc<Self>,
        source_name: &str,
        spec: TriggerSpec,
    ) -> Result<Arc<Trigger>, TriggerError> {
        let source = self.source(source_name)?;
        if spec.name.trim().is_empty() {
            return Err(TriggerError::Invalid("a trigger needs a name".into()));
        }
        check_target(&spec.webhook, &self.egress()).await?;
        // A policy left at its defaults takes this server's caps where they are lower; one
        // that asks for more than they allow is refused.
        let mut spec = spec;
        let defaults = model::RetryPolicy::default();
        if spec.retry.attempts == defaults.attempts {
            spec.retry.attempts = spec.retry.attempts.min(self.settings.max_attempts);
        }
        if spec.retry.timeout == defaults.timeout {
            spec.retry.timeout = spec.retry.timeout.min(self.settings.max_timeout);
        }
        if spec.retry.attempts > self.settings.max_attempts
            || spec.retry.timeout > self.settings.max_timeout
        {
            self.rejections.count(crate::limits::Limit::TriggerRetry);
            return Err(TriggerError::Limit(format!(
                "retry asks for {} attempts of up to {} ms; this server allows at most {} attempts (--trigger-max-attempts) of up to {} ms (--trigger-max-timeout-ms)",
                spec.retry.attempts,
                spec.retry.timeout.as_millis(),
                self.settings.max_attempts,
                self.settings.max_timeout.as_millis()
            )));
        }
        if self.list(source_name).len() >= self.settings.max_per_source {
            self.rejections.count(crate::limits::Limit::Triggers);
            return Err(TriggerError::Limit(format!(
                "source {source_name} has {} triggers, the most it may have (--max-triggers-per-source); delete one first",
                self.settings.max_per_source
            )));
        }
        if self.get(source_name, &spec.name).is_some() {
            return Err(TriggerError::Exists {
                source_name: source_name.into(),
                name: spec.name,
            });
        }
        let store = self.store().await?;
        let client = store.client().await?;
        let definition = spec.definition(&source);
        // Rows matching at this position are the ones that already match at creation.
        let (created_boundary, created_position) = self.mark(source_name);
        let row = client
            .query_opt(
                concat!(
                    "INSERT INTO viewcast_triggers (source, name, definition, created_position) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (source, name) DO NOTHING \
                     RETURNING generation, ",
                    rfc3339!("created_at")
                ),
                &[
                    &source_name,
                    &spec.name,
                    &definition,
                    &created_position.map(Position::to_stored),
                ],
            )
            .await
            .map_err(StoreError::from)?;
        let Some(row) = row else {
            // Another replica created it first.
            return Err(TriggerError::Exists {
                source_name: source_name.into(),
                name: spec.name,
            });
        };
        let record = TriggerRecord {
            status: TriggerStatus::Active,
            declared: false,
            generation: row.get(0),
            created_at: row.get(1),
            created_position,
            created_boundary,
        };
        let trigger = Arc::new(Trigger::new(source, spec, record));
        {
            let mut live = self.lock();
            let list = live.entry(source_name.to_owned()).or_default();
            // Another replica's change may have been followed meanwhile.
            list.retain(|t| t.spec.name != trigger.spec.name);
            list.push(trigger.clone());
            // Under the lock: a follow round that read the store before this insert sees
            // the change and does not drop the new trigger.
            self.changed();
        }
        self.evaluate(source_name);
        tracing::info!(source = %source_name, trigger = %trigger.spec.name, "trigger created");
        Ok(trigger)
    }

    /// Deletes a trigger (its pending deliveries are cancelled); returns it.
    pub async fn delete(
        &self,
        source_name: &str,
        name: &str,
    ) -> Result<Arc<Trigger>, TriggerError> {
        self.source(source_name)?;
        let not_found = || TriggerError::NotFound {
            source_name: source_name.into(),
            name: name.into(),
        };
        let trigger = self.get(source_name, name).ok_or_else(not_found)?;
        if trigger.declared {
            return Err(TriggerError::Invalid(format!(
                "trigger {name} of source {source_name} is declared in schema.yaml: remove it there (or disable it)"
            )));
        }
        let store = self.store().await?;
        let mut client = store.client().await?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        remove(&tx, source_name, name).await?;
        tx.commit().await.map_err(StoreError::from)?;
        if let Some(list) = self.lock().get_mut(source_name) {
            list.retain(|t| t.spec.name != name);
        }
        self.changed();
        tracing::info!(source = %source_name, trigger = %name, "trigger deleted");
        Ok(trigger)
    }

    fn find(&self, source_name: &str, name: &str) -> Result<Arc<Trigger>, TriggerError> {
        self.source(source_name)?;
        self.get(source_name, name)
            .ok_or_else(|| TriggerError::NotFound {
                source_name: source_name.into(),
                name: name.into(),
            })
    }

    /// Enables or disables a trigger. A disabled trigger is still evaluated (its FIRE and
    /// CLEAR events are recorded) but nothing is sent until it is enabled again.
    pub async fn set_disabled(
        &self,
        source_name: &str,
        name: &str,
        disabled: bool,
    ) -> Result<Arc<Trigger>, TriggerError> {
        let trigger = self.find(source_name, name)?;
        let store = self.store().await?;
        deliveries::set_disabled(&store, &trigger, disabled).await?;
        trigger.set_disabled(disabled);
        self.owned(source_name).wake_all();
        tracing::info!(source = %source_name, trigger = %name, disabled, "trigger status changed");
        Ok(trigger)
    }

    /// The trigger's deliveries, newest first.
    pub async fn deliveries(
        &self,
        trigger: &Trigger,
        page: Page,
    ) -> Result<Vec<Delivery>, TriggerError> {
        let store = self.store().await?;
        Ok(deliveries::of_trigger(&store, trigger, page).await?)
    }

    /// The dead-letter queue of the source's triggers (or of one), newest first.
    pub async fn dead_letters(
        &self,
        source_name: &str,
        trigger: Option<&str>,
        page: Page,
    ) -> Result<Vec<Delivery>, TriggerError> {
        self.source(source_name)?;
        let store = self.store().await?;
        Ok(deliveries::dead_letters(&store, source_name, trigger, page).await?)
    }

    /// A delivery's attempts, newest first.
    pub async fn attempts(
        &self,
        delivery_id: i64,
        limit: i64,
    ) -> Result<Vec<AttemptRecord>, TriggerError> {
        let store = self.store().await?;
        Ok(deliveries::attempts(&store, delivery_id, limit).await?)
    }

    pub async fn counters(&self, trigger: &Trigger) -> Result<Counters, TriggerError> {
        let store = self.store().await?;
        Ok(deliveries::counters(&store, trigger).await?)
    }

    /// Sends the trigger's deliveries `from` through `to` again (their event ids unchanged).
    pub async fn redeliver(
        &self,
        source_name: &str,
        name: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<Delivery>, TriggerError> {
        let trigger = self.find(source_name, name)?;
        if to < from {
            return Err(TriggerError::Invalid(format!(
                "redeliver: `to` ({to}) is before `from` ({from})"
            )));
        }
        let max = self.settings.max_redeliver;
        if to.saturating_sub(from) >= i64::try_from(max).unwrap_or(i64::MAX) {
            self.rejections.count(crate::limits::Limit::Redeliver);
            return Err(TriggerError::Limit(format!(
                "redeliver: ids {from} to {to} span more than {max} deliveries (--trigger-max-redeliver); redeliver them in parts"
            )));
        }
        let store = self.store().await?;
        let queued = deliveries::redeliver(&store, &trigger, from, to).await?;
        if queued.is_empty() {
            return Err(TriggerError::Invalid(format!(
                "trigger {name} of source {source_name} has no delivery with an id from {from} to {to}"
            )));
        }
        self.owned(source_name).wake_all();
        tracing::info!(source = %source_name, trigger = %name, from, to, count = queued.len(), "deliveries queued again");
        Ok(queued)
    }

    /// The source's triggers, in creation order.
    pub fn list(&self, source: &str) -> Vec<Arc<Trigger>> {
        self.lock().get(source).cloned().unwrap_or_default()
    }

    pub fn get(&self, source: &str, name: &str) -> Option<Arc<Trigger>> {
        self.lock()
            .get(source)
            .and_then(|list| list.iter().find(|t| t.spec.name == name).cloned())
    }
}
