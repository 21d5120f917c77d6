//! The upstream a scenario runs against: a real PostgreSQL, or the wire-level stand-in for
//! Materialize (either envelope) or RisingWave — the project's one test double
//! (`viewcast-standin`), since neither database runs on these machines.

use std::time::Duration;

use tokio_postgres::SimpleQueryMessage;
use viewcast::server::{ServeOptions, Server};
use viewcast_standin::{Options, StandIn};

use super::{TestDb, connect, wait_ready};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    /// Materialize with `ENVELOPE UPSERT`.
    Materialize,
    /// Materialize with the diff envelope.
    MaterializeDiff,
    RisingWave,
}

pub struct Backend {
    pub kind: Kind,
    pub db: Option<TestDb>,
    pub standin: Option<StandIn>,
}

impl Backend {
    pub async fn start(kind: Kind) -> Backend {
        Backend::start_with(kind, Options::default()).await
    }

    /// With stand-in options (ignored for PostgreSQL).
    pub async fn start_with(kind: Kind, options: Options) -> Backend {
        match kind {
            Kind::Postgres => Backend {
                kind,
                db: Some(TestDb::private().await),
                standin: None,
            },
            _ => Backend {
                kind,
                db: None,
                standin: Some(StandIn::start(options).await.expect("stand-in starts")),
            },
        }
    }

    pub fn url(&self) -> String {
        match (&self.db, &self.standin) {
            (Some(db), _) => db.url.clone(),
            (_, Some(standin)) => standin.url(),
            _ => unreachable!("a backend has a database or a stand-in"),
        }
    }

    /// A connection to write with.
    pub async fn sql(&self) -> tokio_postgres::Client {
        connect(&self.url()).await
    }

    /// The `backend:` line of a schema.yaml.
    pub fn yaml_backend(&self) -> &'static str {
        match self.kind {
            Kind::Postgres => "backend: postgres\n",
            Kind::Materialize | Kind::MaterializeDiff => "backend: materialize\n",
            Kind::RisingWave => "backend: risingwave\n",
        }
    }

    /// Per-source settings of this backend, indented for a source mapping.
    pub fn yaml_source_options(&self) -> &'static str {
        match self.kind {
            Kind::MaterializeDiff => "    envelope: diff\n",
            Kind::RisingWave => "    retention: 1h\n",
            _ => "",
        }
    }

    /// Creates a table (standard DDL); on Materialize it keeps an hour of history, so a
    /// lost connection resumes with AS OF.
    pub async fn create_table(&self, name: &str, ddl: &str) {
        let sql = self.sql().await;
        sql.batch_execute(ddl).await.expect("create table");
        if matches!(self.kind, Kind::Materialize | Kind::MaterializeDiff) {
            sql.batch_execute(&format!("ALTER TABLE {name} SET (RETAIN HISTORY FOR '1h')"))
                .await
                .expect("retain history");
        }
    }

    pub fn options(&self) -> ServeOptions {
        let mut options = ServeOptions {
            host: "127.0.0.1".into(),
            port: 0,
            instance: format!("t{}", rand::random::<u32>()),
            apply_setup: true,
            ..ServeOptions::default()
        };
        match self.kind {
            Kind::Postgres => options.database_url = Some(self.url()),
            Kind::Materialize | Kind::MaterializeDiff => options.materialize_url = Some(self.url()),
            Kind::RisingWave => options.risingwave_url = Some(self.url()),
        }
        options
    }

    /// Starts the server for `yaml` (which names this backend) and waits until it is ready.
    pub async fn server(&self, yaml: &str) -> Server {
        let config = viewcast::config::load_str(std::path::Path::new("test.yaml"), yaml)
            .expect("valid test config");
        if let Ok(filter) = std::env::var("VIEWCAST_TEST_LOG") {
            viewcast::telemetry::init_logging(&filter, false);
        }
        let server = Server::start(config, self.options())
            .await
            .expect("server starts");
        wait_ready(server.addr()).await;
        server
    }

    /// Breaks the feed's upstream connection: PostgreSQL restarts; the stand-in drops every
    /// streaming connection.
    pub async fn interrupt(&mut self) {
        match (&mut self.db, &self.standin) {
            (Some(db), _) => db
                .cluster
                .as_mut()
                .expect("private cluster")
                .restart()
                .await
                .expect("restart postgres"),
            (_, Some(standin)) => {
                standin.kill_streams();
            }
            _ => {}
        }
    }

    /// Rows of a query, as text.
    pub async fn rows(&self, query: &str) -> Vec<Vec<Option<String>>> {
        let sql = self.sql().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match sql.simple_query(query).await {
                Ok(messages) => {
                    return messages
                        .into_iter()
                        .filter_map(|m| match m {
                            SimpleQueryMessage::Row(row) => Some(
                                (0..row.len())
                                    .map(|i| row.get(i).map(str::to_owned))
                                    .collect(),
                            ),
                            _ => None,
                        })
                        .collect();
                }
                Err(err) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "query failed: {err}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    pub async fn stop(self) {
        if let Some(db) = self.db {
            db.stop().await;
        }
    }
}
