//! The PostgreSQL store viewcast keeps its own state in (triggers, their state, deliveries,
//! runs and their events):
//! a connection pool and the project's migrations, applied at connection under an advisory
//! lock so several replicas starting together apply each migration once.
//!
//! The store is separate from the sources' databases (`--store-url`, by default the
//! PostgreSQL `DATABASE_URL`). It never runs a source's feed. One [`Connector`] per server
//! connects to it in the background and hands the pool to triggers and runs alike.

use std::time::{Duration, SystemTime};

use tokio::sync::watch;

/// The migrations, in order: (version, name, SQL). A migration never changes once released.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "triggers", include_str!("migrations/0001_triggers.sql")),
    (
        2,
        "trigger_initialized",
        include_str!("migrations/0002_trigger_initialized.sql"),
    ),
    (
        3,
        "json_payloads",
        include_str!("migrations/0003_json_payloads.sql"),
    ),
    (
        4,
        "trigger_created_position",
        include_str!("migrations/0004_trigger_created_position.sql"),
    ),
    (
        5,
        "delivery_attempts",
        include_str!("migrations/0005_delivery_attempts.sql"),
    ),
    (
        6,
        "trigger_positions",
        include_str!("migrations/0006_trigger_positions.sql"),
    ),
    (7, "runs", include_str!("migrations/0007_runs.sql")),
    (
        8,
        "run_executors",
        include_str!("migrations/0008_run_executors.sql"),
    ),
    (
        9,
        "run_retention",
        include_str!("migrations/0009_run_retention.sql"),
    ),
    (
        10,
        "run_creator",
        include_str!("migrations/0010_run_creator.sql"),
    ),
];

/// A timestamp column as RFC 3339 in UTC, microseconds kept.
macro_rules! rfc3339 {
    ($column:literal) => {
        concat!(
            "to_char(",
            $column,
            " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
        )
    };
}
pub(crate) use rfc3339;

/// The time now as RFC 3339 in UTC, microseconds kept (like `rfc3339!` columns).
pub fn now_rfc3339() -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        rest / 3600,
        (rest / 60) % 60,
        rest % 60,
        now.subsec_micros()
    )
}

/// Connections in the store's pool (the outbox publisher and each replica's bus listener
/// have one of their own besides).
const POOL_SIZE: usize = 16;

/// How long a request waits for a pooled connection before it fails.
const POOL_WAIT: Duration = Duration::from_secs(10);

/// Serializes migrations across replicas (`pg_advisory_lock` key; "viewcast" in ASCII).
const MIGRATION_LOCK: i64 = 0x7669_6577_6361_7374;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid store URL: {0}")]
    Url(String),
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("migration {version} ({name}) failed: {message}")]
    Migration {
        version: i32,
        name: &'static str,
        message: String,
    },
    #[error("store query failed: {0}")]
    Query(String),
    #[error(
        "the store was migrated by a newer viewcast (its migration {found}; this binary knows up to {known}): run the newer version, or a store of its own"
    )]
    Newer { found: i32, known: i32 },
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(err: tokio_postgres::Error) -> StoreError {
        match err.as_db_error() {
            Some(db) => StoreError::Query(db.message().to_owned()),
            None => StoreError::Unavailable(crate::pgconn::error_text(&err)),
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(err: deadpool_postgres::PoolError) -> StoreError {
        match err {
            deadpool_postgres::PoolError::Backend(err) => StoreError::from(err),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

/// A pool of connections to the store.
#[derive(Clone)]
pub struct Store {
    pool: deadpool_postgres::Pool,
    /// For connections of their own (LISTEN, session advisory locks).
    database: std::sync::Arc<crate::pgconn::Database>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Connects and applies the migrations that have not been applied yet.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let database =
            crate::pgconn::Database::parse(url).map_err(|e| StoreError::Url(e.to_string()))?;
        let manager = deadpool_postgres::Manager::from_config(
            database.config().clone(),
            database.tls(),
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(POOL_SIZE)
            // A pool that cannot hand out a connection in time reports it (an error the
            // caller sees) rather than queueing requests without bound.
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let store = Store {
            pool,
            database: std::sync::Arc::new(database),
        };
        store.migrate().await?;
        Ok(store)
    }

    pub async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.pool.get().await?)
    }

    /// A connection of its own, outside the pool (for LISTEN, or a session-level advisory
    /// lock that must end with the connection), and the notifications it receives. The
    /// receiver ends when the connection does.
    pub async fn dedicated(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
        ),
        StoreError,
    > {
        let (client, mut connection) = self.database.connect().await?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = futures::StreamExt::next(&mut messages).await {
                match message {
                    Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                        if tx.send(n).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::debug!(error = %err, "store connection ended");
                        break;
                    }
                }
            }
        });
        Ok((client, rx))
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        // The lock first: replicas starting together would otherwise race to create the
        // migrations table (and one would fail on its unique type name).
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let result = async {
            client
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS viewcast_migrations (
                         version integer PRIMARY KEY,
                         name text NOT NULL,
                         applied_at timestamptz NOT NULL DEFAULT now())",
                )
                .await?;
            let applied: Vec<i32> = client
                .query("SELECT version FROM viewcast_migrations", &[])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let known = MIGRATIONS.last().map_or(0, |m| m.0);
            if let Some(&found) = applied.iter().filter(|&&v| v > known).max() {
                return Err(StoreError::Newer { found, known });
            }
            for &(version, name, sql) in MIGRATIONS {
                if applied.contains(&version) {
                    continue;
                }
                let failed = |e: tokio_postgres::Error| StoreError::Migration {
                    version,
                    name,
                    message: e
                        .as_db_error()
                        .map_or_else(|| e.to_string(), |d| d.message().to_owned()),
                };
                let tx = client.transaction().await.map_err(failed)?;
                tx.batch_execute(sql).await.map_err(failed)?;
                tx.execute(
                    "INSERT INTO viewcast_migrations (version, name) VALUES ($1, $2)",
                    &[&version, &name],
                )
                .await
                .map_err(failed)?;
                tx.commit().await.map_err(failed)?;
                tracing::info!(version, name, "store migration applied");
            }
            Ok(())
        }
        .await;
        let _ = client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await;
        result
    }
}

/// The store as the server sees it.
#[derive(Debug, Clone)]
pub enum StoreState {
    /// No store is configured.
    None,
    /// Connecting (or reconnecting); the reason of the last failure.
    Connecting(String),
    Ready(Store),
}

/// Connects to the store in the background, retrying with backoff, and shares the pool once
/// connected (the pool reconnects connections by itself afterwards).
#[derive(Debug)]
pub struct Connector {
    state: watch::Sender<StoreState>,
}

impl Connector {
    /// Starts connecting to `url` (none: the server has no store). Stops trying at `shutdown`.
    pub fn start(
        url: Option<String>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> std::sync::Arc<Connector> {
        let initial = if url.is_some() {
            StoreState::Connecting("connecting".into())
        } else {
            StoreState::None
        };
        let connector = std::sync::Arc::new(Connector {
            state: watch::channel(initial).0,
        });
        if let Some(url) = url {
            let this = connector.clone();
            tokio::spawn(async move {
                let mut delay = Duration::from_millis(200);
                loop {
                    let connected = tokio::select! {
                        () = shutdown.cancelled() => return,
                        connected = Store::connect(&url) => connected,
                    };
                    match connected {
                        Ok(store) => {
                            this.state.send_replace(StoreState::Ready(store));
                            tracing::info!("store ready");
                            return;
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "store unavailable; retrying");
                            this.state
                                .send_replace(StoreState::Connecting(err.to_string()));
                        }
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            });
        }
        connector
    }

    /// A connector for a store already connected.
    pub fn ready(store: Store) -> std::sync::Arc<Connector> {
        std::sync::Arc::new(Connector {
            state: watch::channel(StoreState::Ready(store)).0,
        })
    }

    pub fn subscribe(&self) -> watch::Receiver<StoreState> {
        self.state.subscribe()
    }

    pub fn is_configured(&self) -> bool {
        !matches!(*self.state.borrow(), StoreState::None)
    }

    /// `None` when connected (or none is configured), else why not (for `/ready`).
    pub fn not_ready(&self) -> Option<String> {
        match &*self.state.borrow() {
            StoreState::Connecting(reason) => Some(reason.clone()),
            StoreState::None | StoreState::Ready(_) => None,
        }
    }

    /// The store once connected; `None` if there is none or at `shutdown`.
    pub async fn until_ready(
        &self,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Option<Store> {
        let mut rx = self.state.subscribe();
        loop {
            let state = rx.borrow_and_update().clone();
            match state {
                StoreState::Ready(store) => return Some(store),
                StoreState::None => return None,
                StoreState::Connecting(_) => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                changed = rx.changed() => changed.ok()?,
            }
        }
    }

    /// The store, waiting for it at most `within`. `Ok(None)`: no store is configured.
    pub async fn wait(&self, within: Duration) -> Result<Option<Store>, StoreError> {
        let mut rx = self.state.subscribe();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match &*rx.borrow_and_update() {
                StoreState::Ready(store) => return Ok(Some(store.clone())),
                StoreState::None => return Ok(None),
                StoreState::Connecting(_) => {}
            }
            if !matches!(
                tokio::time::timeout_at(deadline, rx.changed()).await,
                Ok(Ok(()))
            ) {
                let reason = match &*rx.borrow() {
                    StoreState::Connecting(reason) => reason.clone(),
                    _ => "shutting down".into(),
                };
                return Err(StoreError::Unavailable(reason));
            }
        }
    }
}
