//! **A test double.** A wire-level stand-in for Materialize and RisingWave, for viewcast's tests
//! and benchmarks only — neither database can run on the machines viewcast is developed on.
//!
//! It speaks the PostgreSQL protocol (start-up, simple and extended query, COPY out, cancel)
//! and keeps tables in memory with their timestamped history. It answers:
//!
//! - DDL and DML (`CREATE TABLE`, `INSERT`, `UPDATE`, `DELETE`, `SELECT`, transactions,
//!   `$n` parameters in text or binary), so tests write to it as to a database;
//! - Materialize's `SUBSCRIBE` — in `COPY (…) TO STDOUT` and in `DECLARE … CURSOR` read with
//!   `FETCH` — with `PROGRESS`, `SNAPSHOT`, `AS OF [AT LEAST]`, `UP TO`, the diff and upsert
//!   envelopes, and a compaction frontier per table (`ALTER … SET (RETAIN HISTORY FOR …)`);
//! - RisingWave's `CREATE SUBSCRIPTION` and `DECLARE … SUBSCRIPTION CURSOR … [SINCE t | FULL]`
//!   read with `FETCH n … WITH (timeout = …)`.
//!
//! The semantics follow the databases' documentation and source (see the module docs of
//! `subscribe` and `cursor`); the unit tests check them against the documented examples, so
//! that viewcast's feeds are not tested against a copy of their own assumptions. Tests control
//! it directly: [`StandIn::kill_streams`] drops the connections that stream, and
//! [`StandIn::compact_all`] moves every table's compaction frontier to now.

mod conn;
mod cursor;
mod eval;
mod sql;
mod store;
mod subscribe;
mod types;
mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use store::Row;
pub use subscribe::copy_text;

/// How the stand-in cuts COPY output into `CopyData` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunking {
    /// One message per row, one flush per batch (what Materialize does).
    PerRow,
    /// Messages cut at random byte offsets (mid-row, mid-character), each flushed on its own,
    /// so rows and timestamps arrive split across network reads.
    Random { max_bytes: usize },
}

#[derive(Debug, Clone)]
pub struct Options {
    /// How often the frontier advances; zero: after every commit.
    pub tick: Duration,
    /// How long tables keep history when no `RETAIN HISTORY` is set (Materialize: about 1 s).
    pub default_retain: Duration,
    pub chunking: Chunking,
    /// Clusters `SET cluster` may name.
    pub clusters: Vec<String>,
    /// Serve TLS to clients that ask (`SSLRequest`) with this configuration; `None`: refuse
    /// TLS (`N`), as a server without certificates does.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tick: Duration::from_millis(10),
            default_retain: Duration::from_secs(1),
            chunking: Chunking::Random { max_bytes: 64 },
            clusters: vec!["quickstart".into(), "default".into()],
            tls: None,
        }
    }
}

/// An error as the stand-in reports it: SQLSTATE and message.
#[derive(Debug, Clone)]
pub struct Error {
    pub code: &'static str,
    pub message: String,
}

pub(crate) mod errors {
    use super::Error;

    pub fn syntax(message: String) -> Error {
        Error {
            code: "42601",
            message,
        }
    }

    pub fn data(message: String) -> Error {
        Error {
            code: "22000",
            message,
        }
    }

    pub fn unknown_item(name: &str) -> Error {
        Error {
            code: "XX000",
            message: format!("unknown catalog item '{name}'"),
        }
    }

    pub fn unknown_column(name: &str) -> Error {
        Error {
            code: "42703",
            message: format!("column \"{name}\" does not exist"),
        }
    }

    /// Materialize's answer to an AS OF before the compaction frontier.
    pub fn not_valid_timestamp(as_of: u64, since: u64) -> Error {
        Error {
            code: "22000",
            message: format!(
                "could not find a valid timestamp for the query: Timestamp ({as_of}) is not valid for all inputs: [Antichain {{ elements: [{since}] }}]"
            ),
        }
    }

    pub fn dropped(name: &str) -> Error {
        Error {
            code: "42704",
            message: format!("relation 'materialize.public.{name}' was dropped"),
        }
    }

    pub fn shutting_down() -> Error {
        Error {
            code: "57P01",
            message: "terminating connection due to administrator command".into(),
        }
    }

    pub fn unknown_cluster(name: &str) -> Error {
        Error {
            code: "XX000",
            message: format!("unknown cluster '{name}'"),
        }
    }
}

/// What the server knows of each open connection.
pub(crate) struct ConnInfo {
    pub secret: i32,
    pub kill: CancellationToken,
    /// Cancels the statement running on the connection (a cancel request).
    pub cancel: Arc<std::sync::Mutex<CancellationToken>>,
    /// Set while the connection streams (COPY of a SUBSCRIBE, an open cursor).
    pub streaming: Arc<AtomicBool>,
}

pub(crate) struct Shared {
    pub store: Arc<store::Store>,
    pub options: Options,
    pub conns: Mutex<HashMap<i32, ConnInfo>>,
    pub next_pid: AtomicI32,
    pub refuse: AtomicBool,
    /// Sessions that completed a TLS handshake.
    pub tls_sessions: std::sync::atomic::AtomicU64,
}

/// A running stand-in. Dropping it stops the server and closes every connection.
pub struct StandIn {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
}

impl StandIn {
    /// Listens on a free loopback port.
    pub async fn start(options: Options) -> std::io::Result<StandIn> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: store::Store::new(options.tick, options.default_retain),
            options,
            conns: Mutex::new(HashMap::new()),
            next_pid: AtomicI32::new(1000),
            refuse: AtomicBool::new(false),
            tls_sessions: std::sync::atomic::AtomicU64::new(0),
        });
        let shutdown = CancellationToken::new();
        let tick = shared.options.tick;
        let store = shared.store.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let period = if tick.is_zero() {
                Duration::from_millis(50)
            } else {
                tick
            };
            let mut interval = tokio::time::interval(period);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = interval.tick() => store.advance(),
                }
            }
        });
        let accept_shared = shared.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((socket, _)) = accepted else { continue };
                if accept_shared.refuse.load(Ordering::Relaxed) {
                    drop(socket);
                    continue;
                }
                let _ = socket.set_nodelay(true);
                tokio::spawn(conn::serve(
                    socket,
                    accept_shared.clone(),
                    stop.child_token(),
                ));
            }
        });
        Ok(StandIn {
            addr,
            shared,
            shutdown,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A connection URL (Materialize's default user and database).
    pub fn url(&self) -> String {
        format!("postgres://materialize@{}/materialize", self.addr)
    }

    /// How many client sessions ran over TLS so far.
    pub fn tls_sessions(&self) -> u64 {
        self.shared.tls_sessions.load(Ordering::Relaxed)
    }

    /// Drops every connection that is streaming (a SUBSCRIBE in COPY, an open cursor), as a
    /// lost network or a restarted database would; returns how many.
    pub fn kill_streams(&self) -> usize {
        let conns = self
            .shared
            .conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut killed = 0;
        for info in conns.values() {
            if info.streaming.load(Ordering::Relaxed) && !info.kill.is_cancelled() {
                info.kill.cancel();
                killed += 1;
            }
        }
        killed
    }

    /// Drops every connection.
    pub fn kill_all(&self) {
        let conns = self
            .shared
            .conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for info in conns.values() {
            info.kill.cancel();
        }
    }

    /// While set, new connections are closed at once (the database is down).
    pub fn refuse_connections(&self, refuse: bool) {
        self.shared.refuse.store(refuse, Ordering::Relaxed);
    }

    /// Moves every table's compaction frontier to the current frontier, as if its retention
    /// had passed: an AS OF before now is no longer readable.
    pub fn compact_all(&self) {
        self.shared.store.compact_all();
    }

    /// The current frontier (every timestamp before it is complete).
    pub fn frontier(&self) -> u64 {
        self.shared.store.lock().upper
    }

    /// The rows of a table now (each as often as it occurs), or `None` if there is no such
    /// table. `table` is `schema.name` or a name in `public`.
    pub fn rows(&self, table: &str) -> Option<Vec<Row>> {
        let key = if table.contains('.') {
            table.to_owned()
        } else {
            format!("public.{table}")
        };
        let catalog = self.shared.store.lock();
        let table = catalog.tables.get(&key)?;
        let mut rows = Vec::new();
        for (row, count) in &table.current {
            for _ in 0..*count {
                rows.push(row.clone());
            }
        }
        Some(rows)
    }

    /// Commits changes to one table directly (no SQL): each row with +1 (insert) or -1
    /// (delete); an update is its old row with -1 followed by its new row with +1. Values are
    /// PostgreSQL text and are not checked. Returns the commit timestamp. For benchmarks that
    /// need more writes than SQL parsing allows.
    pub fn write(&self, table: &str, changes: Vec<(Row, i64)>) -> u64 {
        let key = if table.contains('.') {
            table.to_owned()
        } else {
            format!("public.{table}")
        };
        self.shared.store.commit(vec![(key, changes)])
    }

    /// Stops listening and closes every connection.
    pub fn stop(&self) {
        self.shutdown.cancel();
        self.kill_all();
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop();
    }
}
