//! The PostgreSQL store viewcast keeps its own state in (triggers, their state, deliveries):
//! a connection pool and the project's migrations, applied at connection under an advisory
//! lock so several replicas starting together apply each migration once.
//!
//! The store is separate from the sources' databases (`--store-url`, by default the
//! PostgreSQL `DATABASE_URL`). It never runs a source's feed.

use tokio_postgres::NoTls;

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
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(err: tokio_postgres::Error) -> StoreError {
        match err.as_db_error() {
            Some(db) => StoreError::Query(db.message().to_owned()),
            None => StoreError::Unavailable(err.to_string()),
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(err: deadpool_postgres::PoolError) -> StoreError {
        StoreError::Unavailable(err.to_string())
    }
}

/// A pool of connections to the store.
#[derive(Clone)]
pub struct Store {
    pool: deadpool_postgres::Pool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Connects and applies the migrations that have not been applied yet.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let pg: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| StoreError::Url(e.to_string()))?;
        let manager = deadpool_postgres::Manager::from_config(
            pg,
            NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(8)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let store = Store { pool };
        store.migrate().await?;
        Ok(store)
    }

    pub async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.pool.get().await?)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS viewcast_migrations (
                     version integer PRIMARY KEY,
                     name text NOT NULL,
                     applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .await?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let result = async {
            let applied: Vec<i32> = client
                .query("SELECT version FROM viewcast_migrations", &[])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
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
