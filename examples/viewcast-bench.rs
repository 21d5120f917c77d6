//! Load benchmark: a private PostgreSQL, the release `viewcast` binary as a child process (its
//! CPU and memory read from /proc), WebSocket clients speaking graphql-transport-ws, and a load
//! generator updating random rows of `bench`. See BENCHMARKS.md.
//!
//! ```sh
//! cargo build --release --bin viewcast
//! cargo run --release --example viewcast-bench -- fanout --connections 20 --duration 5
//! ```
//!
//! Every update sets `sent_at_us` to PostgreSQL's `clock_timestamp()` inside its (autocommit)
//! transaction, just before the commit; a latency sample is a client's receive time minus it.
//! With `--backend materialize` or `risingwave` the upstream is the wire-level stand-in (a test
//! double, in this process, making each commit visible at once), written to directly with
//! `sent_at_us` set at the commit.
//! The `triggers` scenario has no clients: it creates webhook triggers through the GraphQL API
//! (the server gets a store database in the same cluster and `--webhook-allow-private`),
//! receives their webhooks in this process, and checks every delivered FIRE/CLEAR against the
//! table.
//! The `runs` scenario starts runs over HTTP, follows each one with two consumers (SSE and a
//! GraphQL `runEvents` subscription) and appends its events one request at a time; every
//! event carries its append's send time in `data.sent_at_us`.
//! Exit status: 0 when every client ends with the table's rows (`triggers`: every transition
//! was delivered and the deliveries agree with the table; `runs`: every consumer received
//! every event once, in order), 1 when not, 2 on error.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use futures::{SinkExt as _, StreamExt as _};
use rand::Rng as _;
use serde::Deserialize;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_util::sync::CancellationToken;
use viewcast::pgcluster::{ClusterOptions, PgCluster};
use viewcast_standin::{Chunking, StandIn};

const SCHEMA_YAML: &str = "backend: BACKEND
sources:
  bench:
    table: public.bench
    primary_key: id
    columns: { id: Integer, value: BigInt, payload: String, group_id: Integer, sent_at_us: BigInt }
";
/// `clock_timestamp()` in µs: set just before the commit of a single-statement transaction.
macro_rules! sent_at_us {
    () => {
        "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint"
    };
}
const SENT_AT_US: &str = sent_at_us!();
const UPDATE_SQL: &str = concat!(
    "UPDATE bench SET value = $1, sent_at_us = ",
    sent_at_us!(),
    " WHERE id = $2"
);
const SELECTION: &str = "operation data { id value sent_at_us } fields";
/// /proc/<pid>/stat counts in `USER_HZ`, which is 100 on every mainstream Linux architecture.
const CLK_TCK: f64 = 100.0;
/// Statements one writer connection pipelines at a time.
const MAX_IN_FLIGHT: u64 = 64;
/// Receive buffer of a slow client, so that the server (not the client's kernel, which would
/// autotune to 32 MB) sees its backpressure.
const SLOW_RCVBUF: u32 = 64 * 1024;

#[derive(Debug, Parser)]
#[command(about = "viewcast load benchmark (see BENCHMARKS.md)")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// 100 clients, unfiltered, 1,000 changes/s on 1,000 rows, 20 s.
    Fanout(Flags),
    /// 100 connections x 10 subscriptions over 10 filters, 10,000 rows, 1,000 changes/s, 20 s.
    Filtered(Flags),
    /// 1,000 connections x 10 subscriptions, each its own user's `{group_id: {_eq: user}}`
    /// (10,000 users, one row each), 1,000 changes/s, 20 s.
    PerUser(Flags),
    /// 1,000 connections x 10 subscriptions matching nothing, 1,000 rows, 100 changes/s, 10 s.
    Idle(Flags),
    /// 20 clients, 10 of them pausing their reads for long stretches, 5,000 changes/s, 20 s.
    Overload(Flags),
    /// Materialize (stand-in): 100 clients over 10 filters, 10,000 rows, 10,000 changes/s, 20 s.
    Streaming(Flags),
    /// 1,000 webhook triggers (`--filters`) on one source, 10,000 rows, 10,000 changes/s
    /// setting `value` uniformly in 0..99, a local receiver, 20 s.
    Triggers(Flags),
    /// 1,000 runs x 100 events appended one per request at 5,000/s by 64 writers, each run
    /// followed by 2 consumers (SSE, and GraphQL over 100 connections x 10 subscriptions).
    Runs(Flags),
    /// A large source (2,000,000 rows): server RSS beside the table's size on disk, one
    /// subscriber's snapshot (first row, whole snapshot) and one-shot queries (by key,
    /// `limit: 10`, the top 10 by a column), each timed over HTTP.
    Large(Flags),
    /// 30 PostgreSQL sources (`--sources`), 100 rows each, 1,000 changes/s spread over them,
    /// 20 s: the WAL decoding cost (walsender CPU) and the slots and WAL senders used.
    Slots(Flags),
    /// Materialize (stand-in), 10,000 rows, unfiltered subscriptions: for 100 and 1,000
    /// clients (or --clients), each a frame per change and in windows (`bench_batches`), the
    /// load doubles every --duration seconds (default 5) until end-to-end p99 passes 100 ms;
    /// then five times the last load that stayed under it.
    Saturate(Flags),
}

/// Where the changes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BackendKind {
    /// A private PostgreSQL cluster (logical replication).
    Postgres,
    /// The Materialize stand-in (SUBSCRIBE over COPY).
    Materialize,
    /// The RisingWave stand-in (subscription cursor).
    Risingwave,
}

impl BackendKind {
    fn name(self) -> &'static str {
        match self {
            BackendKind::Postgres => "postgres",
            BackendKind::Materialize => "materialize",
            BackendKind::Risingwave => "risingwave",
        }
    }

    fn url_env(self) -> &'static str {
        match self {
            BackendKind::Postgres => "DATABASE_URL",
            BackendKind::Materialize => "MATERIALIZE_URL",
            BackendKind::Risingwave => "RISINGWAVE_URL",
        }
    }
}

/// The running upstream.
struct Upstream {
    kind: BackendKind,
    url: String,
    standin: Option<StandIn>,
    /// The store (a database of the same cluster), for the `triggers` and `runs` scenarios.
    store_url: Option<String>,
    /// The postmaster, whose children's CPU the `triggers` and `runs` scenarios split by role.
    postmaster: Option<u32>,
}

/// Overrides of the scenario's parameters.
#[derive(Debug, Args)]
struct Flags {
    /// WebSocket connections (clients). In `runs`, the GraphQL consumers' connections
    /// (default: runs / subs-per-conn).
    #[arg(long, visible_alias = "clients")]
    connections: Option<usize>,
    /// Subscriptions per connection (`runs`: 10, one run each).
    #[arg(long)]
    subs_per_conn: Option<usize>,
    /// Distinct filters `{group_id: {_eq: k}}`, 0 for none; rows get `group_id = id % filters`.
    /// In `triggers`, the number of triggers (trigger k fires on group k).
    #[arg(long, visible_alias = "triggers")]
    filters: Option<u32>,
    /// Rows in the source table.
    #[arg(long)]
    rows: Option<u32>,
    /// Target changes per second (one UPDATE per transaction). In `runs`, appends per second
    /// over all writers (default 5,000).
    #[arg(long)]
    rate: Option<u32>,
    /// Seconds of load.
    #[arg(long)]
    duration: Option<f64>,
    /// Clients that read slowly during the load: read for --read-ms, pause for --pause-ms.
    #[arg(long)]
    slow: Option<usize>,
    #[arg(long, default_value_t = 500)]
    read_ms: u64,
    #[arg(long, default_value_t = 5000)]
    pause_ms: u64,
    /// Writer connections of the load generator (each pipelines its statements; default 4).
    /// In `runs`, concurrent HTTP appenders, one request at a time each (default 64).
    #[arg(long)]
    writers: Option<usize>,
    /// Runs started and followed (`runs`; default 1,000).
    #[arg(long)]
    runs: Option<u32>,
    /// Events appended per run, the last one COMPLETED (`runs`; default 100).
    #[arg(long)]
    events: Option<u32>,
    /// Consumers attached at a time (`runs`), each step held for 10 ms.
    #[arg(long, default_value_t = 64)]
    attach_concurrency: usize,
    /// Bytes of `payload` per row (stored and replicated, never selected).
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// Seconds the clients may take to reach the table's final state after the load
    /// (`triggers`: each wait after the load — evaluation, deliveries, redeliveries; `runs`:
    /// for the consumers to end after the last append).
    #[arg(long, default_value_t = 120)]
    converge_timeout: u64,
    /// Passed to the server as --history-batches.
    #[arg(long)]
    history_batches: Option<usize>,
    /// Sources, one table each (`slots`; default 30).
    #[arg(long)]
    sources: Option<usize>,
    /// The viewcast binary (default: `viewcast` in the target directory of this example).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The server's log filter.
    #[arg(long, default_value = "warn")]
    server_log: String,
    /// The upstream database (default: postgres; materialize for `streaming`).
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
    /// Passed to the server as --webhook-concurrency (`triggers`; the server's default: 64).
    #[arg(long)]
    webhook_concurrency: Option<usize>,
    /// A PostgreSQL setting for the benchmark's cluster, `name=value` (repeatable; e.g.
    /// `auto_explain.log_min_duration=50ms` with `shared_preload_libraries=…,auto_explain`).
    #[arg(long, value_parser = parse_setting)]
    pg_setting: Vec<(String, String)>,
    /// Copy the cluster's server log to this file before the cluster is removed.
    #[arg(long)]
    pg_log: Option<PathBuf>,
    /// Also open the console's live table of the source in headless Chromium during the load
    /// and report its frame times (tests/clients/console-bench.mjs; needs Node, the npm
    /// packages of tests/clients and Chromium).
    #[arg(long)]
    console: bool,
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected name=value"))?;
    Ok((name.trim().to_owned(), value.to_owned()))
}

/// What the load generator writes to `value`.
#[derive(Debug, Clone, Copy)]
enum Values {
    /// 1, 2, 3, … across writers: every update changes its row.
    Counter,
    /// Uniform in `0..n`: with a threshold at n/2, about half the updates cross it.
    Uniform(i64),
}

impl Values {
    fn next(self, counter: &AtomicI64) -> i64 {
        match self {
            Values::Counter => counter.fetch_add(1, Relaxed),
            Values::Uniform(n) => rand::rng().random_range(0..n),
        }
    }
}

/// A subscription's filter: `None` every row, `Some(k)` rows with `group_id = k` (-1: none).
type Filter = Option<i32>;
/// The rows each filter must end with: id → value.
type Expected = Arc<HashMap<Filter, HashMap<i32, i64>>>;

struct Params {
    name: &'static str,
    connections: usize,
    subs_per_conn: usize,
    filters: u32,
    match_nothing: bool,
    rows: u32,
    rate: u32,
    duration: Duration,
    slow: usize,
    backend: BackendKind,
    values: Values,
    writers: usize,
    /// `runs`: runs, and events per run.
    runs: u32,
    events: u32,
    flags: Flags,
}

impl Params {
    fn new(scenario: Scenario) -> Params {
        // name, flags, (connections, subs, filters, match nothing, rows, rate, seconds, slow)
        let (name, f, d) = match scenario {
            Scenario::Fanout(f) => ("fanout", f, (100, 1, 0, false, 1_000, 1_000, 20.0, 0)),
            Scenario::Filtered(f) => ("filtered", f, (100, 10, 10, false, 10_000, 1_000, 20.0, 0)),
            Scenario::PerUser(f) => (
                "per-user",
                f,
                (1_000, 10, 10_000, false, 10_000, 1_000, 20.0, 0),
            ),
            Scenario::Idle(f) => ("idle", f, (1_000, 10, 0, true, 1_000, 100, 10.0, 0)),
            Scenario::Overload(f) => ("overload", f, (20, 1, 0, false, 1_000, 5_000, 20.0, 10)),
            Scenario::Streaming(f) => {
                ("streaming", f, (100, 1, 10, false, 10_000, 10_000, 20.0, 0))
            }
            Scenario::Triggers(f) => ("triggers", f, (0, 1, 1_000, false, 10_000, 10_000, 20.0, 0)),
            // The source is only there because a config needs one; connections follow --runs.
            Scenario::Runs(f) => ("runs", f, (0, 10, 0, false, 100, 5_000, 0.0, 0)),
            Scenario::Large(f) => ("large", f, (0, 1, 0, false, 2_000_000, 0, 0.0, 0)),
            Scenario::Slots(f) => ("slots", f, (0, 1, 0, false, 100, 1_000, 20.0, 0)),
            Scenario::Saturate(f) => ("saturate", f, (0, 1, 0, false, 10_000, 0, 5.0, 0)),
        };
        let runs = f.runs.unwrap_or(1_000).max(1);
        let subs_per_conn = f.subs_per_conn.unwrap_or(d.1).max(1);
        let connections = match (name, f.connections) {
            (_, Some(n)) => n,
            ("runs", None) => (runs as usize).div_ceil(subs_per_conn),
            (_, None) => d.0,
        };
        let default_backend = if name == "streaming" || name == "saturate" {
            BackendKind::Materialize
        } else {
            BackendKind::Postgres
        };
        Params {
            name,
            connections: connections.max(1),
            subs_per_conn,
            filters: f.filters.unwrap_or(d.2),
            match_nothing: d.3,
            rows: f.rows.unwrap_or(d.4).max(1),
            rate: f.rate.unwrap_or(d.5),
            duration: Duration::from_secs_f64(f.duration.unwrap_or(d.6).max(0.0)),
            slow: f.slow.unwrap_or(d.7),
            backend: f.backend.unwrap_or(default_backend),
            values: if name == "triggers" {
                Values::Uniform(TRIGGER_VALUES)
            } else {
                Values::Counter
            },
            writers: f
                .writers
                .unwrap_or(if name == "runs" { 64 } else { 4 })
                .max(1),
            runs,
            events: f.events.unwrap_or(100).max(1),
            flags: f,
        }
    }

    fn sources(&self) -> usize {
        self.flags.sources.unwrap_or(30).max(1)
    }

    fn groups(&self) -> u32 {
        self.filters.max(1)
    }

    /// The filter of the `n`th subscription overall.
    fn filter_of(&self, n: usize) -> Filter {
        match (self.match_nothing, self.filters) {
            (true, _) => Some(-1),
            (false, 0) => None,
            (false, f) => Some((n % f as usize) as i32),
        }
    }
}

fn main() -> ExitCode {
    let params = Params::new(Cli::parse().scenario);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(run(&params)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!(
                "FAILED: the final state (or, for triggers and runs, the correctness) check failed; for saturate, a subscription was ended"
            );
            ExitCode::from(1)
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Starts PostgreSQL and the server, runs the scenario (until done or Ctrl-C) and stops both
/// on every path; on a panic the server child is killed on drop and the cluster's drop waits
/// for its postmaster.
async fn run(p: &Params) -> anyhow::Result<bool> {
    let bin = server_binary(p.flags.server_bin.as_deref())?;
    let (triggers, runs) = (p.name == "triggers", p.name == "runs");
    if (triggers || runs) && p.backend != BackendKind::Postgres {
        bail!(
            "the {} scenario runs on PostgreSQL only (its store is a PostgreSQL database)",
            p.name
        );
    }
    let mut cluster = None;
    let upstream = if p.backend == BackendKind::Postgres {
        eprintln!("[{}] starting PostgreSQL …", p.name);
        let mut options = ClusterOptions::default();
        if triggers || runs {
            // Per-statement counts and times of the store, for the report.
            options.settings.push((
                "shared_preload_libraries".into(),
                "pg_stat_statements".into(),
            ));
        }
        if p.name == "slots" {
            options.settings.extend(room_for_a_slot_per_source(p));
        }
        options.settings.extend(p.flags.pg_setting.iter().cloned());
        let started = PgCluster::start(options).await?;
        let url = started.url("postgres");
        let store_url = if triggers || runs {
            started.create_database(STORE_DB).await?;
            Some(started.url(STORE_DB))
        } else {
            None
        };
        let postmaster = started.pid();
        cluster = Some(started);
        Upstream {
            kind: p.backend,
            url,
            standin: None,
            store_url,
            postmaster,
        }
    } else {
        eprintln!(
            "[{}] starting the {} stand-in (a test double) …",
            p.name,
            p.backend.name()
        );
        let standin = StandIn::start(viewcast_standin::Options {
            tick: Duration::ZERO,
            chunking: Chunking::PerRow,
            default_retain: Duration::from_secs(3600),
            ..viewcast_standin::Options::default()
        })
        .await?;
        Upstream {
            kind: p.backend,
            url: standin.url(),
            standin: Some(standin),
            store_url: None,
            postmaster: None,
        }
    };
    let result = async {
        create_table(&upstream, p).await?;
        eprintln!("[{}] starting {} …", p.name, bin.display());
        let mut server = ServerProc::start(&bin, &upstream, p).await?;
        let run = async {
            if triggers {
                triggers_scenario(p, &server, &upstream).await
            } else if runs {
                runs_scenario(p, &server, &upstream).await
            } else if p.name == "large" {
                large_scenario(p, &server, &upstream).await
            } else if p.name == "slots" {
                slots_scenario(p, &server, &upstream).await
            } else if p.name == "saturate" {
                saturate_scenario(p, &server, &upstream).await
            } else {
                scenario(p, &server, &upstream).await
            }
        };
        let outcome = tokio::select! {
            outcome = run => outcome,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        server.stop().await;
        outcome
    }
    .await;
    if let Some(cluster) = cluster {
        if let Some(path) = &p.flags.pg_log {
            std::fs::copy(cluster.log_path(), path)
                .with_context(|| format!("copy the PostgreSQL log to {}", path.display()))?;
        }
        cluster.stop().await.context("stop PostgreSQL")?;
    }
    result
}

/// Room for a server that takes a slot and a WAL sender per source (as servers before one
/// slot per database did).
fn room_for_a_slot_per_source(p: &Params) -> [(String, String); 2] {
    let room = (p.sources() + 10).to_string();
    [
        ("max_wal_senders".into(), room.clone()),
        ("max_replication_slots".into(), room),
    ]
}

fn server_binary(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match flag {
        Some(path) => path.to_path_buf(),
        // target/release/examples/viewcast-bench → target/release/viewcast
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("locate the target directory")?
            .join("viewcast"),
    };
    if !path.is_file() {
        bail!(
            "no server at {}: run `cargo build --release --bin viewcast` or pass --server-bin",
            path.display()
        );
    }
    Ok(path)
}

async fn pg(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn create_table(upstream: &Upstream, p: &Params) -> anyhow::Result<()> {
    let (payload, groups, rows) = (p.flags.payload_bytes, p.groups(), p.rows);
    if let Some(standin) = &upstream.standin {
        pg(&upstream.url)
            .await?
            .batch_execute(
                "CREATE TABLE bench (id integer PRIMARY KEY, value bigint, payload text, \
                 group_id integer, sent_at_us bigint)",
            )
            .await
            .context("create bench")?;
        let rows = (1..=rows)
            .map(|id| (bench_row(id, 0, payload, groups, 0), 1))
            .collect();
        standin.write("bench", rows);
        return Ok(());
    }
    let url = &upstream.url;
    if p.name == "slots" {
        let sql = (0..p.sources()).fold(String::new(), |mut sql, k| {
            use std::fmt::Write as _;
            let _ = write!(
                sql,
                "CREATE TABLE bench{k} (id integer PRIMARY KEY, value bigint, payload text, \
                     group_id integer, sent_at_us bigint);
                     INSERT INTO bench{k} SELECT g, 0, repeat('x', {payload}), 0, 0
                       FROM generate_series(1, {rows}) g;"
            );
            sql
        });
        return pg(url)
            .await?
            .batch_execute(&sql)
            .await
            .context("create the tables");
    }
    let sql = format!(
        "CREATE TABLE bench (id integer PRIMARY KEY, value bigint, payload text, \
         group_id integer, sent_at_us bigint);
         INSERT INTO bench SELECT g, 0, repeat('x', {payload}), g % {groups}, 0
           FROM generate_series(1, {rows}) g;"
    );
    pg(url)
        .await?
        .batch_execute(&sql)
        .await
        .context("create bench")
}

/// The server as a child process: killed if dropped without `stop`.
struct ServerProc {
    child: tokio::process::Child,
    pid: u32,
    addr: SocketAddr,
    config: PathBuf,
    /// Spawn → `/ready` answers 200 (eager sources snapshotted).
    ready_secs: f64,
}

impl ServerProc {
    async fn start(bin: &Path, upstream: &Upstream, p: &Params) -> anyhow::Result<ServerProc> {
        let config =
            std::env::temp_dir().join(format!("viewcast-bench-{}.yaml", std::process::id()));
        let yaml = if p.name == "slots" {
            let sources = (0..p.sources()).fold(String::new(), |mut yaml, k| {
                use std::fmt::Write as _;
                let _ = write!(
                    yaml,
                        "  bench{k}:\n    table: public.bench{k}\n    primary_key: id\n    columns: {{ id: Integer, value: BigInt, payload: String, group_id: Integer, sent_at_us: BigInt }}\n"
                );
                yaml
            });
            format!("backend: BACKEND\nsources:\n{sources}")
        } else {
            SCHEMA_YAML.to_owned()
        };
        std::fs::write(&config, yaml.replace("BACKEND", upstream.kind.name()))?;
        // A child cannot tell us which port `--port 0` bound: pick a free one and hand it over.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut command = tokio::process::Command::new(bin);
        command.arg("serve").arg("--config").arg(&config);
        command.args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--apply-setup",
        ]);
        command.args(["--instance", "bench", "--log", &p.flags.server_log]);
        // Every simulated client connects from loopback: the per-address cap would stand for
        // one client, not thousands. (An environment variable, which a binary from before the
        // cap ignores, so one benchmark build measures both.)
        command.env("VIEWCAST_HTTP_MAX_CONNECTIONS_PER_ADDRESS", "0");
        // `large` asks for windows of 10,000 rows, which the default cost limit (50,000 values
        // a result) refuses.
        command.env("VIEWCAST_GRAPHQL_MAX_COST", "1000000");
        if let Some(n) = p.flags.history_batches {
            command.args(["--history-batches", &n.to_string()]);
        }
        if let Some(store) = &upstream.store_url {
            // The receiver is on loopback, which webhooks may not reach by default.
            command.args(["--store-url", store, "--webhook-allow-private"]);
        }
        if let Some(n) = p.flags.webhook_concurrency {
            command.args(["--webhook-concurrency", &n.to_string()]);
        }
        command
            .env(upstream.kind.url_env(), &upstream.url)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let pid = child.id().context("server pid")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let spawned = Instant::now();
        let mut server = ServerProc {
            child,
            pid,
            addr,
            config,
            ready_secs: 0.0,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("the server exited during start-up ({status})");
            }
            if matches!(http_get(addr, "/ready").await, Ok((200, _))) {
                server.ready_secs = spawned.elapsed().as_secs_f64();
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!("the server was not ready within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM (a graceful stop drops the replication slot), SIGKILL after 15 s.
    async fn stop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let exited = tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await;
        if exited.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

/// A minimal HTTP/1.1 GET: (status, body).
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, None).await
}

/// A minimal HTTP/1.1 request, with a JSON body if any: (status, body).
async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let headers = json.map_or(String::new(), |json| {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            json.len()
        )
    });
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}\r\n{}",
        json.unwrap_or_default()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    Ok((status, body.unwrap_or_default()))
}

async fn metric(addr: SocketAddr, name: &str) -> Option<u64> {
    let (_, body) = http_get(addr, "/metrics").await.ok()?;
    let prefix = format!("{name}{{source=\"bench\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
}

/// A histogram's cumulative bucket counts for the bench source: (upper bound in seconds, count).
async fn histogram(addr: SocketAddr, name: &str) -> Vec<(f64, u64)> {
    let Ok((_, body)) = http_get(addr, "/metrics").await else {
        return Vec::new();
    };
    let prefix = format!("{name}_bucket{{source=\"bench\",le=\"");
    body.lines()
        .filter_map(|l| {
            let (le, count) = l.strip_prefix(&prefix)?.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

const COMMIT_DELAY: &str = "viewcast_source_commit_delay_seconds";
const DELIVERY_DELAY: &str = "viewcast_source_delivery_delay_seconds";

/// The observations a histogram gained between two readings.
fn since(before: &[(f64, u64)], after: &[(f64, u64)]) -> Vec<(f64, u64)> {
    // Both readings list the same bounds in the same order (before is empty if unreadable).
    after
        .iter()
        .enumerate()
        .map(|(i, &(le, n))| (le, n.saturating_sub(before.get(i).map_or(0, |b| b.1))))
        .collect()
}

/// The bucket bound (ms) at or below which a `q` share of a histogram's observations lie.
fn histogram_quantile_ms(buckets: &[(f64, u64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0, |b| b.1);
    if total == 0 {
        return f64::NAN;
    }
    let rank = (total as f64 * q).ceil() as u64;
    buckets
        .iter()
        .find(|b| b.1 >= rank)
        .map_or(f64::NAN, |b| b.0 * 1000.0)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    proc_stat(pid).map_or(0.0, |(_, cpu)| cpu)
}

/// A process's parent and its utime + stime in seconds, from /proc/<pid>/stat.
fn proc_stat(pid: u32) -> Option<(u32, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the parenthesised command name come fields 3 (state), 4 (ppid) …; utime and
    // stime are 14, 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let parent = fields.get(1)?.parse().ok()?;
    let ticks: u64 = fields
        .get(11..13)?
        .iter()
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    Some((parent, ticks as f64 / CLK_TCK))
}

/// A `kB` line of /proc/<pid>/status (`VmRSS`, `VmHWM`), in MB.
fn status_mb(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = status.lines().find_map(|l| {
        let value = l.strip_prefix(field)?.strip_prefix(':')?;
        value
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<f64>()
            .ok()
    });
    kb.unwrap_or(f64::NAN) / 1024.0
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

// ---------------------------------------------------------------------------- load generator

struct Load {
    updates: u64,
    per_group: Vec<u64>,
    elapsed: Duration,
}

/// `rate` updates per second for `duration`, over `writers` pipelined connections.
async fn generate(upstream: &Upstream, p: &Params) -> anyhow::Result<Load> {
    if let Some(standin) = &upstream.standin {
        return Ok(generate_direct(standin, p, p.rate, &mut DirectRows::new(p.rows)).await);
    }
    let url = &upstream.url;
    let writers = p.writers;
    let rate = f64::from(p.rate) / writers as f64;
    let next_value = Arc::new(AtomicI64::new(1));
    let start = Instant::now();
    let mut tasks = Vec::new();
    let workload = Workload {
        duration: p.duration,
        rows: p.rows,
        groups: p.groups(),
        values: p.values,
    };
    for _ in 0..writers {
        let client = pg(url).await?;
        let next = next_value.clone();
        tasks.push(tokio::spawn(async move {
            write(&client, rate, workload, &next, start).await
        }));
    }
    let per_group = vec![0; p.groups() as usize];
    let mut load = Load {
        updates: 0,
        per_group,
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        let (updates, per_group) = task.await??;
        load.updates += updates;
        load.per_group
            .iter_mut()
            .zip(per_group)
            .for_each(|(a, b)| *a += b);
    }
    load.elapsed = start.elapsed();
    Ok(load)
}

/// What one writer updates, and for how long.
#[derive(Clone, Copy)]
struct Workload {
    duration: Duration,
    rows: u32,
    groups: u32,
    values: Values,
}

async fn write(
    client: &tokio_postgres::Client,
    rate: f64,
    workload: Workload,
    next_value: &AtomicI64,
    start: Instant,
) -> anyhow::Result<(u64, Vec<u64>)> {
    let Workload {
        duration,
        rows,
        groups,
        values,
    } = workload;
    let statement = client.prepare(UPDATE_SQL).await?;
    let (mut done, mut per_group) = (0u64, vec![0u64; groups as usize]);
    while start.elapsed() < duration {
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        let n = due.saturating_sub(done).min(MAX_IN_FLIGHT);
        if n == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let ids: Vec<i32> = {
            let mut rng = rand::rng();
            (0..n).map(|_| rng.random_range(1..=rows as i32)).collect()
        };
        let statements = ids.iter().map(|id| {
            let (value, statement) = (values.next(next_value), &statement);
            async move { client.execute(statement, &[&value, id]).await }
        });
        futures::future::try_join_all(statements).await?;
        for id in ids {
            per_group[(id as u32 % groups) as usize] += 1;
        }
        done += n;
    }
    Ok((done, per_group))
}

/// A row of `bench` as the stand-in keeps it (PostgreSQL text).
fn bench_row(
    id: u32,
    value: i64,
    payload: usize,
    groups: u32,
    sent_at_us: i64,
) -> viewcast_standin::Row {
    vec![
        Some(id.to_string()),
        Some(value.to_string()),
        Some("x".repeat(payload)),
        Some((id % groups).to_string()),
        Some(sent_at_us.to_string()),
    ]
}

/// The stand-in's `bench` rows as the direct load generator wrote them (it must retract
/// exactly the row the stand-in holds).
struct DirectRows {
    values: Vec<i64>,
    sent: Vec<i64>,
    next_value: AtomicI64,
}

impl DirectRows {
    /// The rows `create_table` wrote: every value and `sent_at_us` 0.
    fn new(rows: u32) -> DirectRows {
        DirectRows {
            values: vec![0; rows as usize + 1],
            sent: vec![0; rows as usize + 1],
            next_value: AtomicI64::new(1),
        }
    }
}

/// The stand-in's load: `rate` single-row update commits per second for `duration`, each
/// stamped with its commit time, written directly (no SQL to parse).
async fn generate_direct(standin: &StandIn, p: &Params, rate: u32, rows: &mut DirectRows) -> Load {
    let (payload, groups) = (p.flags.payload_bytes, p.groups());
    let (mut done, mut per_group) = (0u64, vec![0u64; groups as usize]);
    let rate = f64::from(rate);
    let start = Instant::now();
    while start.elapsed() < p.duration {
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        if due <= done {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        for _ in done..due {
            let id = rand::rng().random_range(1..=p.rows);
            let i = id as usize;
            let old = bench_row(id, rows.values[i], payload, groups, rows.sent[i]);
            let now = now_us();
            rows.values[i] = p.values.next(&rows.next_value);
            rows.sent[i] = now;
            let new = bench_row(id, rows.values[i], payload, groups, now);
            standin.write("bench", vec![(old, -1), (new, 1)]);
            per_group[(id % groups) as usize] += 1;
        }
        done = due;
    }
    Load {
        updates: done,
        per_group,
        elapsed: start.elapsed(),
    }
}

/// The table's final rows, for each filter in use.
async fn expected_rows(upstream: &Upstream, p: &Params) -> anyhow::Result<Expected> {
    let rows: Vec<(i32, i64, i32)> = match &upstream.standin {
        Some(standin) => standin
            .rows("bench")
            .context("the bench table")?
            .into_iter()
            .map(|r| {
                let int = |i: usize| {
                    r[i].as_deref()
                        .and_then(|v| v.parse::<i64>().ok())
                        .unwrap_or(0)
                };
                (int(0) as i32, int(1), int(3) as i32)
            })
            .collect(),
        None => pg(&upstream.url)
            .await?
            .query("SELECT id, value, group_id FROM bench", &[])
            .await?
            .into_iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect(),
    };
    let mut expected: HashMap<Filter, HashMap<i32, i64>> = HashMap::new();
    for n in 0..p.connections * p.subs_per_conn {
        expected.entry(p.filter_of(n)).or_default();
    }
    for (id, value, group) in rows {
        for (filter, map) in &mut expected {
            if filter.is_none_or(|f| f == group) {
                map.insert(id, value);
            }
        }
    }
    Ok(Arc::new(expected))
}

// ----------------------------------------------------------------------------------- clients

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What the client tasks share with the scenario.
struct Shared {
    addr: SocketAddr,
    read: Duration,
    pause: Duration,
    /// Bounds concurrent connection handshakes.
    connecting: Semaphore,
    expected: watch::Receiver<Option<Expected>>,
    /// UPDATE operations received, all clients.
    delivered: AtomicU64,
    snapshots_done: AtomicUsize,
    converged: AtomicUsize,
    load_running: AtomicBool,
    stop: CancellationToken,
}

#[derive(Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: String,
    id: Option<String>,
    payload: Option<Payload>,
}

#[derive(Deserialize)]
struct Payload {
    data: Option<PayloadData>,
    errors: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct PayloadData {
    bench: Option<Update>,
}

#[derive(Deserialize)]
struct Update {
    operation: String,
    data: Option<UpdateRow>,
}

#[derive(Deserialize)]
struct UpdateRow {
    id: i32,
    value: Option<String>,
    sent_at_us: Option<String>,
}

struct Sub {
    filter: Filter,
    /// Bumped on every resubscription; the operation id is `<index>.<generation>`.
    generation: u32,
    rows: HashMap<i32, i64>,
    subscribed: Instant,
    /// Subscribe → `SNAPSHOT_END` of the first subscription.
    snapshot: Option<Duration>,
    live: bool,
    updates: u64,
    resubscribes: u64,
}

/// One WebSocket connection and its subscriptions.
struct Client {
    slow: bool,
    subs: Vec<Sub>,
    latencies_us: Vec<u32>,
    converged: Option<Instant>,
    /// Something arrived since the last comparison with the expected rows.
    dirty: bool,
    error: Option<String>,
    shared: Arc<Shared>,
}

impl Client {
    fn new(slow: bool, filters: impl Iterator<Item = Filter>, shared: Arc<Shared>) -> Client {
        let sub = |filter| Sub {
            filter,
            generation: 0,
            rows: HashMap::new(),
            subscribed: Instant::now(),
            snapshot: None,
            live: false,
            updates: 0,
            resubscribes: 0,
        };
        let subs = filters.map(sub).collect();
        Client {
            slow,
            subs,
            latencies_us: Vec::new(),
            converged: None,
            dirty: true,
            error: None,
            shared,
        }
    }

    async fn run(mut self) -> Client {
        let shared = self.shared.clone();
        let result = async {
            let permit = shared.connecting.acquire().await?;
            let mut ws = open(shared.addr, self.slow).await?;
            for i in 0..self.subs.len() {
                self.subscribe(&mut ws, i).await?;
            }
            drop(permit);
            self.drive(&mut ws).await
        };
        if let Err(err) = result.await {
            self.error = Some(format!("{err:#}"));
        }
        self
    }

    async fn subscribe(&mut self, ws: &mut Socket, i: usize) -> anyhow::Result<()> {
        let sub = &mut self.subs[i];
        sub.subscribed = Instant::now();
        let filter = sub
            .filter
            .map(|k| format!("where: {{group_id: {{_eq: {k}}}}}, "));
        let filter = filter.unwrap_or_default();
        let query =
            format!("subscription {{ bench({filter}snapshot_end: true) {{ {SELECTION} }} }}");
        let id = format!("{i}.{}", sub.generation);
        let message =
            serde_json::json!({"type": "subscribe", "id": id, "payload": {"query": query}});
        ws.send(Message::Text(message.to_string().into())).await?;
        Ok(())
    }

    async fn drive(&mut self, ws: &mut Socket) -> anyhow::Result<()> {
        let shared = self.shared.clone();
        let mut check = tokio::time::interval(Duration::from_millis(100));
        let mut next_pause: Option<Instant> = None;
        loop {
            // A slow client does not touch its socket at all while it pauses.
            if self.slow && shared.load_running.load(Relaxed) {
                match next_pause {
                    None => next_pause = Some(Instant::now() + shared.read),
                    Some(at) if Instant::now() >= at => {
                        tokio::select! {
                            () = tokio::time::sleep(shared.pause) => {}
                            () = shared.stop.cancelled() => return Ok(()),
                        }
                        next_pause = Some(Instant::now() + shared.read);
                    }
                    Some(_) => {}
                }
            }
            tokio::select! {
                () = shared.stop.cancelled() => return Ok(()),
                _ = check.tick() => self.check(),
                message = ws.next() => match message {
                    Some(Ok(Message::Text(text))) => self.handle(ws, text.as_str()).await?,
                    Some(Ok(Message::Close(frame))) => bail!("server closed: {frame:?}"),
                    Some(Ok(_)) => {}
                    Some(Err(err)) => return Err(err.into()),
                    None => bail!("connection lost"),
                },
            }
        }
    }

    /// The subscription an operation id names, unless the id is from an older generation.
    fn current(&self, id: Option<&str>) -> Option<usize> {
        let (index, generation) = id?.split_once('.')?;
        let index: usize = index.parse().ok()?;
        (self.subs.get(index)?.generation == generation.parse::<u32>().ok()?).then_some(index)
    }

    async fn handle(&mut self, ws: &mut Socket, text: &str) -> anyhow::Result<()> {
        let unexpected = || {
            format!(
                "unexpected message: {}",
                text.chars().take(300).collect::<String>()
            )
        };
        let message = serde_json::from_str::<Incoming>(text).with_context(unexpected)?;
        match (message.kind.as_str(), self.current(message.id.as_deref())) {
            ("ping", _) => ws.send(Message::Text(r#"{"type":"pong"}"#.into())).await?,
            ("next", Some(i)) => match message.payload {
                Some(Payload {
                    errors: None,
                    data:
                        Some(PayloadData {
                            bench: Some(update),
                        }),
                }) => {
                    self.apply(i, &update);
                }
                // The subscription ended (e.g. fell behind the server's history): resubscribe.
                _ => self.resubscribe(ws, i).await?,
            },
            ("complete", Some(i)) => self.resubscribe(ws, i).await?,
            ("next" | "complete" | "pong" | "connection_ack", _) => {}
            _ => bail!(unexpected()),
        }
        Ok(())
    }

    async fn resubscribe(&mut self, ws: &mut Socket, i: usize) -> anyhow::Result<()> {
        let sub = &mut self.subs[i];
        sub.generation += 1;
        sub.resubscribes += 1;
        sub.rows.clear();
        sub.live = false;
        self.subscribe(ws, i).await
    }

    fn apply(&mut self, i: usize, update: &Update) {
        let sub = &mut self.subs[i];
        self.dirty = true;
        let value = |r: &UpdateRow| {
            r.value
                .as_deref()
                .and_then(|v| v.parse().ok())
                .unwrap_or(i64::MIN)
        };
        match (update.operation.as_str(), update.data.as_ref()) {
            ("INSERT", Some(r)) => {
                sub.rows.insert(r.id, value(r));
            }
            ("UPDATE", Some(r)) => {
                sub.rows.insert(r.id, value(r));
                sub.updates += 1;
                self.shared.delivered.fetch_add(1, Relaxed);
                let sent = r.sent_at_us.as_deref().and_then(|s| s.parse::<i64>().ok());
                if let (true, Some(sent)) = (sub.live, sent) {
                    let latency = (now_us() - sent).clamp(0, i64::from(u32::MAX));
                    self.latencies_us.push(latency as u32);
                }
            }
            ("DELETE", Some(r)) => {
                sub.rows.remove(&r.id);
            }
            ("SNAPSHOT_END", _) => {
                sub.live = true;
                if sub.snapshot.is_none() {
                    sub.snapshot = Some(sub.subscribed.elapsed());
                    self.shared.snapshots_done.fetch_add(1, Relaxed);
                }
            }
            ("RESET", _) => {
                sub.rows.clear();
                sub.live = false;
            }
            _ => {}
        }
    }

    /// Once the final table is known: does every subscription hold exactly its rows?
    fn check(&mut self) {
        if self.converged.is_some() || !self.dirty {
            return;
        }
        let Some(expected) = self.shared.expected.borrow().clone() else {
            return;
        };
        self.dirty = false;
        if self
            .subs
            .iter()
            .all(|s| expected.get(&s.filter).is_some_and(|rows| *rows == s.rows))
        {
            self.converged = Some(Instant::now());
            self.shared.converged.fetch_add(1, Relaxed);
        }
    }
}

async fn open(addr: SocketAddr, slow: bool) -> anyhow::Result<Socket> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    if slow {
        socket.set_recv_buffer_size(SLOW_RCVBUF)?;
    }
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(socket.connect(addr).await?);
    let mut request = format!("ws://{addr}/graphql").into_client_request()?;
    let protocol = "graphql-transport-ws".parse()?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol);
    let (mut ws, _) = tokio_tungstenite::client_async(request, stream).await?;
    ws.send(Message::Text(
        r#"{"type":"connection_init","payload":{}}"#.into(),
    ))
    .await?;
    match tokio::time::timeout(Duration::from_secs(30), ws.next()).await? {
        Some(Ok(Message::Text(text))) if text.contains("connection_ack") => Ok(ws),
        other => bail!("no connection_ack: {other:?}"),
    }
}

// ------------------------------------------------------------------------------- the scenario

/// What the scenario measured, besides the clients' own records.
struct Phases {
    rss: [f64; 4],
    subscribe_secs: f64,
    load: Load,
    cpu_secs: f64,
    /// CPU of this process (clients and load generator) during the load.
    bench_cpu_secs: f64,
    delivered_during_load: u64,
    converge_secs: f64,
    conflated: Option<u64>,
    /// The server's histograms over the load and convergence (cumulative counts per bucket
    /// bound in seconds): upstream commit → hub apply, and hub apply → frame flushed.
    commit_delay: Vec<(f64, u64)>,
    delivery_delay: Vec<(f64, u64)>,
    /// (seconds since the load started, RSS MB), every 250 ms until the clients converged.
    rss_series: Vec<(f64, f64)>,
}

async fn scenario(p: &Params, server: &ServerProc, upstream: &Upstream) -> anyhow::Result<bool> {
    let (expected_tx, expected) = watch::channel(None);
    let shared = Arc::new(Shared {
        addr: server.addr,
        read: Duration::from_millis(p.flags.read_ms),
        pause: Duration::from_millis(p.flags.pause_ms),
        connecting: Semaphore::new(64),
        expected,
        delivered: AtomicU64::new(0),
        snapshots_done: AtomicUsize::new(0),
        converged: AtomicUsize::new(0),
        load_running: AtomicBool::new(false),
        stop: CancellationToken::new(),
    });
    let rss_start = status_mb(server.pid, "VmRSS");
    let started = Instant::now();
    let clients: Vec<JoinHandle<Client>> = (0..p.connections)
        .map(|c| {
            let filters = (0..p.subs_per_conn).map(|s| p.filter_of(c * p.subs_per_conn + s));
            tokio::spawn(Client::new(c < p.slow, filters, shared.clone()).run())
        })
        .collect();
    let subs = p.connections * p.subs_per_conn;
    eprintln!(
        "[{}] {} connections, {subs} subscriptions: snapshots …",
        p.name, p.connections
    );
    let all_snapshots = || shared.snapshots_done.load(Relaxed) == subs;
    let ok = wait_until(&clients, Duration::from_secs(300), all_snapshots).await;
    let subscribe_secs = started.elapsed().as_secs_f64();
    let rss_subscribed = status_mb(server.pid, "VmRSS");
    let console = if ok && p.flags.console {
        Some(ConsoleProbe::start(server.addr, p.duration).await?)
    } else {
        None
    };
    let phases = if ok {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut phases = load_phase(p, server, upstream, &shared, &expected_tx, &clients).await?;
        phases.rss[..2].copy_from_slice(&[rss_start, rss_subscribed]);
        phases.subscribe_secs = subscribe_secs;
        Some(phases)
    } else {
        None
    };
    shared.stop.cancel();
    let mut finished = Vec::new();
    for client in clients {
        finished.push(client.await?);
    }
    let Some(phases) = phases else {
        let errors: Vec<_> = finished
            .iter()
            .filter_map(|c| c.error.as_deref())
            .take(3)
            .collect();
        bail!("not every subscription got its snapshot; client errors: {errors:?}");
    };
    if let Some(console) = console {
        let figures = console.finish().await?;
        println!("\n== console live table (headless Chromium) ==\n  {figures}");
        let figures = ConsoleProbe::run_timeline(server.addr, 10_000).await?;
        println!("== console run timeline, 10,000 events (headless Chromium) ==\n  {figures}");
    }
    Ok(report(p, &phases, &finished))
}

/// The console's live table of `bench`, open in headless Chromium during the load.
struct ConsoleProbe {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl ConsoleProbe {
    /// Starts the probe and waits until its page shows the snapshot.
    async fn start(addr: SocketAddr, load: Duration) -> anyhow::Result<ConsoleProbe> {
        use tokio::io::AsyncBufReadExt as _;
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
        let mut child = tokio::process::Command::new("node")
            .arg(dir.join("console-bench.mjs"))
            .arg(format!("http://{addr}"))
            .arg("bench")
            .arg(format!("{}", load.as_secs_f64().ceil() + 1.0))
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context(
                "node tests/clients/console-bench.mjs (Node and `npm ci --prefix tests/clients`)",
            )?;
        let stdout = child.stdout.take().context("the probe's stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let ready = lines.next_line().await?.unwrap_or_default();
        anyhow::ensure!(
            ready.starts_with("ready"),
            "the console probe did not start: {ready:?}"
        );
        eprintln!("[console] live table open: {ready}");
        Ok(ConsoleProbe { child, lines })
    }

    /// A run of `events` events appended over HTTP, and its timeline drawn: the figures.
    async fn run_timeline(addr: SocketAddr, events: u32) -> anyhow::Result<String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
        let output = tokio::process::Command::new("node")
            .arg(dir.join("console-bench.mjs"))
            .arg(format!("http://{addr}"))
            .arg("bench")
            .env("VIEWCAST_CONSOLE_RUN_EVENTS", events.to_string())
            .current_dir(&dir)
            .stderr(Stdio::inherit())
            .output()
            .await
            .context("node tests/clients/console-bench.mjs")?;
        anyhow::ensure!(output.status.success(), "the run timeline probe failed");
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Its figures (one JSON line) once it has measured the load.
    async fn finish(mut self) -> anyhow::Result<String> {
        let figures = self.lines.next_line().await?.unwrap_or_default();
        self.child.wait().await?;
        Ok(figures)
    }
}

/// Waits for `done`; false on timeout or when a client task ended early.
async fn wait_until(
    clients: &[JoinHandle<Client>],
    timeout: Duration,
    done: impl Fn() -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline || clients.iter().any(JoinHandle::is_finished) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Load, then wait for the clients to reach the table's final rows.
async fn load_phase(
    p: &Params,
    server: &ServerProc,
    upstream: &Upstream,
    shared: &Shared,
    expected_tx: &watch::Sender<Option<Expected>>,
    clients: &[JoinHandle<Client>],
) -> anyhow::Result<Phases> {
    let pid = server.pid;
    let series = Arc::new(Mutex::new(Vec::new()));
    let load_start = Instant::now();
    let sampler = tokio::spawn({
        let series = series.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let sample = (load_start.elapsed().as_secs_f64(), status_mb(pid, "VmRSS"));
                series.lock().expect("series").push(sample);
            }
        }
    });
    eprintln!(
        "[{}] load: {} changes/s for {:?} …",
        p.name, p.rate, p.duration
    );
    let me = std::process::id();
    let (cpu0, bench_cpu0) = (cpu_seconds(pid), cpu_seconds(me));
    let delivered0 = shared.delivered.load(Relaxed);
    let commit0 = histogram(server.addr, COMMIT_DELAY).await;
    let delivery0 = histogram(server.addr, DELIVERY_DELAY).await;
    shared.load_running.store(true, Relaxed);
    let load = generate(upstream, p).await;
    shared.load_running.store(false, Relaxed);
    let cpu_secs = cpu_seconds(pid) - cpu0;
    let bench_cpu_secs = cpu_seconds(me) - bench_cpu0;
    let delivered_during_load = shared.delivered.load(Relaxed) - delivered0;
    let load = load?;
    eprintln!(
        "[{}] {} updates written; waiting for the clients …",
        p.name, load.updates
    );
    let converge_start = Instant::now();
    expected_tx.send_replace(Some(expected_rows(upstream, p).await?));
    let all_converged = || shared.converged.load(Relaxed) == p.connections;
    wait_until(
        clients,
        Duration::from_secs(p.flags.converge_timeout),
        all_converged,
    )
    .await;
    let converge_secs = converge_start.elapsed().as_secs_f64();
    let commit_delay = since(&commit0, &histogram(server.addr, COMMIT_DELAY).await);
    let delivery_delay = since(&delivery0, &histogram(server.addr, DELIVERY_DELAY).await);
    sampler.abort();
    let rss_series = series.lock().expect("series").clone();
    Ok(Phases {
        rss: [0.0, 0.0, status_mb(pid, "VmRSS"), status_mb(pid, "VmHWM")],
        subscribe_secs: 0.0,
        load,
        cpu_secs,
        bench_cpu_secs,
        delivered_during_load,
        converge_secs,
        conflated: metric(server.addr, "viewcast_source_conflated_changes_total").await,
        commit_delay,
        delivery_delay,
        rss_series,
    })
}

/// The `q` quantile of sorted microseconds, in milliseconds (NaN when empty).
fn quantile_ms(sorted: &[u32], q: f64) -> f64 {
    let at = ((sorted.len().max(1) - 1) as f64 * q).round() as usize;
    sorted
        .get(at)
        .map_or(f64::NAN, |&us| f64::from(us) / 1000.0)
}

/// Prints the table and the JSON line; true when every client ended with the table's rows.
// One flat list of figures, printed twice (table, JSON), reads better than split in parts.
#[allow(clippy::too_many_lines)]
fn report(p: &Params, ph: &Phases, clients: &[Client]) -> bool {
    let per_filter = |f: Filter| match f {
        None => ph.load.updates,
        Some(k) => usize::try_from(k).map_or(0, |k| ph.load.per_group.get(k).map_or(0, |n| *n)),
    };
    let subs = || clients.iter().flat_map(|c| c.subs.iter());
    let expected: u64 = subs().map(|s| per_filter(s.filter)).sum();
    let delivered: u64 = subs().map(|s| s.updates).sum();
    let share = 100.0 * delivered as f64 / expected.max(1) as f64;
    let mut snapshots: Vec<u32> = subs()
        .filter_map(|s| Some(s.snapshot?.as_micros() as u32))
        .collect();
    snapshots.sort_unstable();
    let (snap_p50, snap_max) = (quantile_ms(&snapshots, 0.5), quantile_ms(&snapshots, 1.0));
    let of = |slow: bool| clients.iter().filter(move |c| c.slow == slow);
    let latencies = |slow: bool| {
        let mut all: Vec<u32> = of(slow)
            .flat_map(|c| c.latencies_us.iter().copied())
            .collect();
        all.sort_unstable();
        all
    };
    let (fast, slow) = (latencies(false), latencies(true));
    let [p50, p90, p99, max] = [0.5, 0.9, 0.99, 1.0].map(|q| quantile_ms(&fast, q));
    let (slow_p50, slow_max) = (quantile_ms(&slow, 0.5), quantile_ms(&slow, 1.0));
    let [srv_p50, srv_p90, srv_p99] =
        [0.5, 0.9, 0.99].map(|q| histogram_quantile_ms(&ph.delivery_delay, q));
    let srv_n = ph.delivery_delay.last().map_or(0, |b| b.1);
    let [db_p50, db_p90, db_p99] =
        [0.5, 0.9, 0.99].map(|q| histogram_quantile_ms(&ph.commit_delay, q));
    let db_n = ph.commit_delay.last().map_or(0, |b| b.1);
    let resubscribes = |slow: bool| {
        of(slow)
            .flat_map(|c| &c.subs)
            .map(|s| s.resubscribes)
            .sum::<u64>()
    };
    let (resub_fast, resub_slow) = (resubscribes(false), resubscribes(true));
    let converged = clients.iter().filter(|c| c.converged.is_some()).count();
    let errors: Vec<&str> = clients.iter().filter_map(|c| c.error.as_deref()).collect();
    let ok = converged == clients.len() && errors.is_empty();
    let secs = ph.load.elapsed.as_secs_f64();
    let (updates, achieved) = (ph.load.updates, ph.load.updates as f64 / secs);
    let delivered_rate = ph.delivered_during_load as f64 / secs;
    let (cpu, bench_cpu) = (ph.cpu_secs / secs * 100.0, ph.bench_cpu_secs / secs * 100.0);
    let rss_at = |from: f64, to: f64| {
        let during = ph.rss_series.iter().filter(|(t, _)| *t >= from && *t <= to);
        during.map(|s| s.1).fold(f64::NAN, f64::max)
    };
    let [rss_start, rss_subscribed, rss_end, rss_peak] = ph.rss;
    let (rss_load_start, rss_load_end) = (rss_at(0.0, 1.0), rss_at(secs - 1.0, secs));
    let (conns, per_conn, rows, rate) = (p.connections, p.subs_per_conn, p.rows, p.rate);
    let payload = p.flags.payload_bytes;
    let per_sub_kb = (rss_subscribed - rss_start) * 1024.0 / (conns * per_conn) as f64;
    let filters = match (p.match_nothing, p.filters) {
        (true, _) => "a filter matching nothing".to_owned(),
        (false, 0) => "unfiltered".to_owned(),
        (false, n) => format!("{n} distinct filters"),
    };
    let (name, subscribe_secs, converge_secs) = (p.name, ph.subscribe_secs, ph.converge_secs);
    let backend = p.backend.name();
    let conflated = ph.conflated.map_or_else(|| "n/a".into(), |n| n.to_string());
    let verdict = if ok { "OK" } else { "FAILED" };
    let series: Vec<String> = ph
        .rss_series
        .iter()
        .step_by(8)
        .map(|(t, mb)| format!("{t:.0}s:{mb:.0}"))
        .collect();
    let series = series.join(" ");
    let (fast_n, slow_n, total_conns) = (fast.len(), slow.len(), clients.len());
    println!(
        "
== viewcast-bench {name} ({backend}) ==
  clients             {conns} connections x {per_conn} subscriptions ({filters}), {} slow
  source              {rows} rows, {payload} B payload each
  load                target {rate}/s, achieved {achieved:.0}/s: {updates} updates in {secs:.1} s
  snapshot (ms)       p50 {snap_p50:.1}  max {snap_max:.1}  (all subscriptions: {subscribe_secs:.2} s)
  delivered           {delivered_rate:.0} updates/s during the load (sum over clients)
  updates             {delivered} of {expected} expected delivered ({share:.1} %)
  latency (ms)        p50 {p50:.1}  p90 {p90:.1}  p99 {p99:.1}  max {max:.1}  ({fast_n} samples)
  commit -> hub (ms)   p50 <= {db_p50}  p90 <= {db_p90}  p99 <= {db_p99}  (server histogram: upstream \
commit time -> hub apply, {db_n} batches)
  hub -> socket (ms)  p50 <= {srv_p50}  p90 <= {srv_p90}  p99 <= {srv_p99}  (server histogram: hub apply \
-> frame flushed, {srv_n} frames, all clients)
  slow clients (ms)   p50 {slow_p50:.0}  max {slow_max:.0}  ({slow_n} samples, not in the line above)
  resubscriptions     {resub_fast} (fast clients), {resub_slow} (slow clients)
  server CPU          {cpu:.0} % of one core during the load (this benchmark: {bench_cpu:.0} %)
  server RSS (MB)     start {rss_start:.1}  subscribed {rss_subscribed:.1}  load start \
{rss_load_start:.1}  load end {rss_load_end:.1}  end {rss_end:.1}  peak {rss_peak:.1}
  RSS/subscription    {per_sub_kb:.1} KB (subscribed - start)
  RSS over time (MB)  {series}
  conflated changes   {conflated}
  final state         {verdict}: {converged}/{total_conns} connections match the table, \
{converge_secs:.2} s after the load",
        p.slow
    );
    for error in errors.iter().take(5) {
        println!("  client error        {error}");
    }
    let json = serde_json::json!({
        "scenario": name, "backend": backend, "connections": conns, "subs_per_conn": per_conn, "filters": p.filters,
        "rows": rows, "slow": p.slow, "target_rate": rate, "achieved_rate": achieved,
        "updates": updates, "load_secs": secs, "subscribe_all_secs": subscribe_secs,
        "snapshot_ms": {"p50": snap_p50, "max": snap_max}, "delivered_per_sec": delivered_rate,
        "delivered": delivered, "expected": expected,
        "latency_ms": {"p50": p50, "p90": p90, "p99": p99, "max": max, "samples": fast_n},
        "commit_to_hub_ms_at_most": {"p50": db_p50, "p90": db_p90, "p99": db_p99, "batches": db_n},
        "hub_to_socket_ms_at_most": {"p50": srv_p50, "p90": srv_p90, "p99": srv_p99, "frames": srv_n},
        "slow_latency_ms": {"p50": slow_p50, "max": slow_max, "samples": slow_n},
        "resubscriptions": {"fast": resub_fast, "slow": resub_slow}, "cpu_percent": cpu, "bench_cpu_percent": bench_cpu,
        "rss_mb": {"start": rss_start, "subscribed": rss_subscribed, "load_start": rss_load_start,
            "load_end": rss_load_end, "end": rss_end, "peak": rss_peak},
        "rss_kb_per_subscription": per_sub_kb, "conflated": ph.conflated, "converged": converged,
        "converge_secs": converge_secs, "client_errors": errors.len(), "ok": ok,
    });
    println!("{json}");
    ok
}

// ---------------------------------------------------------------------------------- triggers

/// The trigger store: a database of the benchmark's cluster.
const STORE_DB: &str = "viewcast_store";
/// `value` is written uniformly in `0..TRIGGER_VALUES`; trigger k fires on
/// `{group_id: {_eq: k}, value: {_gte: THRESHOLD}}`. Rows start at 0 (outside).
const TRIGGER_VALUES: i64 = 100;
const THRESHOLD: i64 = 50;

/// One webhook the receiver kept (the first request with its `webhook-id`).
struct Event {
    webhook_id: String,
    fire: bool,
    /// The row in the body's `data`.
    id: i64,
    value: i64,
    group: i64,
    sent_at_us: i64,
    received_us: i64,
}

/// What the receiver saw.
#[derive(Default)]
struct Received {
    seen: std::collections::HashSet<String>,
    /// Requests whose `webhook-id` had been seen (redeliveries, dropped).
    duplicates: u64,
    /// Requests that were not a tycostream FIRE/CLEAR of a trigger's path `/t<k>`.
    malformed: u64,
    /// Per trigger, in arrival order (a trigger's deliveries are sent one after the other).
    events: Vec<Vec<Event>>,
    /// Arrival of the last new delivery, µs since the epoch.
    last_us: i64,
    /// Per trigger, the `webhook-id`s of requests seen before, in arrival order (the
    /// redelivery phase), and the arrival of the last one.
    again: Vec<Vec<String>>,
    last_again_us: i64,
}

/// The webhook receiver, in this process: records each request and answers 200 at once.
struct Receiver {
    addr: SocketAddr,
    /// Distinct deliveries (`webhook-id`s) so far, and requests repeating one.
    distinct: AtomicU64,
    repeated: AtomicU64,
    /// std Mutex: held for in-memory bookkeeping only, never across an await.
    received: Mutex<Received>,
}

impl Receiver {
    async fn start(triggers: u32) -> anyhow::Result<(Arc<Receiver>, JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let receiver = Arc::new(Receiver {
            addr: listener.local_addr()?,
            distinct: AtomicU64::new(0),
            repeated: AtomicU64::new(0),
            received: Mutex::new(Received {
                events: (0..triggers).map(|_| Vec::new()).collect(),
                again: (0..triggers).map(|_| Vec::new()).collect(),
                ..Received::default()
            }),
        });
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(receiver.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((receiver, task))
    }

    fn record(&self, path: &str, webhook_id: Option<&str>, body: &[u8]) {
        let received_us = now_us();
        let event = webhook_id.and_then(|id| parse_webhook(path, id, body, received_us));
        let mut r = self.received.lock().expect("received");
        let triggers = r.events.len();
        let Some((k, event)) = event.filter(|(k, _)| *k < triggers) else {
            r.malformed += 1;
            return;
        };
        if !r.seen.insert(event.webhook_id.clone()) {
            r.duplicates += 1;
            r.again[k].push(event.webhook_id);
            r.last_again_us = received_us;
            self.repeated.fetch_add(1, Relaxed);
            return;
        }
        r.events[k].push(event);
        r.last_us = received_us;
        self.distinct.fetch_add(1, Relaxed);
    }
}

async fn receive(
    axum::extract::State(receiver): axum::extract::State<Arc<Receiver>>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    let id = headers.get("webhook-id").and_then(|v| v.to_str().ok());
    receiver.record(uri.path(), id, &body);
    axum::http::StatusCode::OK
}

/// A tycostream body (`event_type`, `data`) posted to `/t<k>`: (k, the event).
fn parse_webhook(
    path: &str,
    webhook_id: &str,
    body: &[u8],
    received_us: i64,
) -> Option<(usize, Event)> {
    let trigger = path.strip_prefix("/t")?.parse().ok()?;
    let body: serde_json::Value = serde_json::from_slice(body).ok()?;
    let fire = match body["event_type"].as_str()? {
        "FIRE" => true,
        "CLEAR" => false,
        _ => return None,
    };
    // BigInt columns come as strings (GraphQL's rendering), Integer ones as numbers.
    let int = |name: &str| {
        let v = &body["data"][name];
        v.as_i64().or_else(|| v.as_str()?.parse().ok())
    };
    let event = Event {
        webhook_id: webhook_id.to_owned(),
        fire,
        id: int("id")?,
        value: int("value")?,
        group: int("group_id")?,
        sent_at_us: int("sent_at_us")?,
        received_us,
    };
    Some((trigger, event))
}

/// Polls `done` every `every` until it holds (true) or `timeout` passes (false).
async fn poll_until<F, Fut>(timeout: Duration, every: Duration, mut done: F) -> anyhow::Result<bool>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if done().await? {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(every).await;
    }
}

/// Creates trigger `t<k>` for each group k through the GraphQL API, 8 requests at a time.
async fn create_triggers(server: SocketAddr, receiver: SocketAddr, n: u32) -> anyhow::Result<()> {
    const MUTATION: &str =
        "mutation($input: benchTriggerInput!) { create_bench_trigger(input: $input) { name } }";
    let create = |k: u32| async move {
        let input = serde_json::json!({
            "name": format!("t{k}"),
            "webhook": format!("http://{receiver}/t{k}"),
            // BigInt is a String in GraphQL.
            "fire": {"group_id": {"_eq": k}, "value": {"_gte": THRESHOLD.to_string()}},
            "retry": {"attempts": 10, "initial_interval_ms": 100, "max_interval_ms": 2000, "timeout_ms": 5000},
        });
        graphql(server, MUTATION, serde_json::json!({"input": input})).await
    };
    eight_at_a_time(0..n, create).await
}

/// POSTs a GraphQL operation; an error unless it answered data without errors.
async fn graphql(
    server: SocketAddr,
    query: &str,
    variables: serde_json::Value,
) -> anyhow::Result<()> {
    let body = serde_json::json!({"query": query, "variables": variables});
    let (status, text) = http_request(server, "POST", "/graphql", Some(&body.to_string())).await?;
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    if status != 200 || !answer["errors"].is_null() || answer["data"].is_null() {
        bail!("{query} with {variables}: HTTP {status}: {text}");
    }
    Ok(())
}

/// Runs `f` on every item, 8 at a time; the first error, if any.
async fn eight_at_a_time<T, F, Fut>(items: impl IntoIterator<Item = T>, f: F) -> anyhow::Result<()>
where
    F: FnMut(T) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    futures::stream::iter(items)
        .map(f)
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// CPU seconds of a PostgreSQL cluster's processes by role, from /proc: each process counts
/// from its first sample, or from zero when it started after the first one (connections
/// opened during the measurement), to its last (so processes that exited keep their share).
struct PgCpu {
    postmaster: u32,
    /// pid → (role, CPU at its first sample, CPU at its last).
    by_pid: HashMap<u32, (&'static str, f64, f64)>,
    first: bool,
}

impl PgCpu {
    fn new(postmaster: u32) -> PgCpu {
        let mut cpu = PgCpu {
            postmaster,
            by_pid: HashMap::new(),
            first: true,
        };
        cpu.sample();
        cpu.first = false;
        cpu
    }

    fn sample(&mut self) {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        let pids = dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok());
        for pid in pids {
            let Some((ppid, cpu)) = proc_stat(pid) else {
                continue;
            };
            if pid != self.postmaster && ppid != self.postmaster {
                continue;
            }
            let first = self.first;
            let entry = self
                .by_pid
                .entry(pid)
                .or_insert_with(|| (pg_role(pid), if first { cpu } else { 0.0 }, cpu));
            entry.2 = cpu;
        }
    }

    /// CPU seconds per role since the first sample, largest first.
    fn by_role(&self) -> Vec<(&'static str, f64)> {
        let mut roles: HashMap<&'static str, f64> = HashMap::new();
        for (role, first, last) in self.by_pid.values() {
            *roles.entry(role).or_default() += last - first;
        }
        let mut roles: Vec<_> = roles.into_iter().collect();
        roles.sort_by(|a, b| b.1.total_cmp(&a.1));
        roles
    }
}

/// What a PostgreSQL process does, from its process title.
fn pg_role(pid: u32) -> &'static str {
    let title = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let words: Vec<&str> = title.split(['\0', ' ']).filter(|w| !w.is_empty()).collect();
    let client = |host: &str| host.contains('(') || host == "[local]";
    match words.as_slice() {
        [_, "walsender", ..] => "walsender",
        [_, _, db, host, ..] if client(host) && *db == STORE_DB => "store",
        [_, _, _, host, ..] if client(host) => "bench db",
        [_] => "postmaster",
        _ => "background",
    }
}

/// The store's deliveries: (pending, dead, all).
async fn delivery_counts(store: &tokio_postgres::Client) -> anyhow::Result<(i64, i64, i64)> {
    let row = store
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'pending'), \
             count(*) FILTER (WHERE status = 'dead'), count(*) FROM viewcast_deliveries",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

/// CPU seconds over a window: the server, this process, and PostgreSQL by role.
#[derive(Default)]
struct Cost {
    secs: f64,
    server: f64,
    bench: f64,
    pg: Vec<(&'static str, f64)>,
}

impl Cost {
    /// What was spent after `earlier` (both read from the same meter).
    fn since(&self, earlier: &Cost) -> Cost {
        let before = |role: &str| earlier.pg.iter().find(|r| r.0 == role).map_or(0.0, |r| r.1);
        Cost {
            secs: self.secs - earlier.secs,
            server: self.server - earlier.server,
            bench: self.bench - earlier.bench,
            pg: self.pg.iter().map(|&(r, s)| (r, s - before(r))).collect(),
        }
    }

    /// Percentages of one core.
    fn describe(&self) -> String {
        let pct = |s: f64| s / self.secs.max(1e-9) * 100.0;
        let pg: Vec<String> = self
            .pg
            .iter()
            .filter(|r| r.1 > 0.0)
            .map(|(role, s)| format!("{role} {:.0} %", pct(*s)))
            .collect();
        format!(
            "server {:.0} %, this benchmark {:.0} %, PostgreSQL {:.0} % ({}) over {:.1} s",
            pct(self.server),
            pct(self.bench),
            pct(self.pg.iter().map(|r| r.1).sum()),
            pg.join(", "),
            self.secs
        )
    }

    fn json(&self) -> serde_json::Value {
        let pg: serde_json::Map<String, serde_json::Value> = self
            .pg
            .iter()
            .map(|(r, s)| ((*r).to_owned(), (*s).into()))
            .collect();
        serde_json::json!({"secs": self.secs, "server": self.server, "bench": self.bench, "postgres": pg})
    }
}

/// Reads [`Cost`]s from its start; samples PostgreSQL's processes every 250 ms meanwhile (so
/// connections that close keep their share).
struct Meter {
    pids: [u32; 2],
    start: [f64; 2],
    started: Instant,
    pg: Arc<Mutex<PgCpu>>,
    sampler: JoinHandle<()>,
}

impl Meter {
    fn start(server: u32, postmaster: u32) -> Meter {
        let pids = [server, std::process::id()];
        let pg = Arc::new(Mutex::new(PgCpu::new(postmaster)));
        let sampler = tokio::spawn({
            let pg = pg.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                loop {
                    tick.tick().await;
                    pg.lock().expect("pg cpu").sample();
                }
            }
        });
        Meter {
            pids,
            start: pids.map(cpu_seconds),
            started: Instant::now(),
            pg,
            sampler,
        }
    }

    fn read(&self) -> Cost {
        let mut pg = self.pg.lock().expect("pg cpu");
        pg.sample();
        let [server, bench] = self.pids.map(cpu_seconds);
        Cost {
            secs: self.started.elapsed().as_secs_f64(),
            server: server - self.start[0],
            bench: bench - self.start[1],
            pg: pg.by_role(),
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.sampler.abort();
    }
}

/// What the triggers scenario measured.
#[derive(Default)]
struct TriggerRun {
    triggers: u32,
    create_secs: f64,
    establish_secs: f64,
    /// Server RSS (MB): start, triggers created, load end, after the drain, peak.
    rss: [f64; 5],
    updates: u64,
    load_secs: f64,
    /// Transitions the evaluator saved during the load (rows added to `viewcast_deliveries`).
    saved_during_load: i64,
    /// Deliveries received (distinct) during the load.
    received_during_load: u64,
    /// Load end → the marker change's transition saved (the evaluator caught up).
    caught_up_secs: f64,
    /// Load end → the last delivery received.
    drain_secs: f64,
    all_delivered: bool,
    /// (pending, dead, all) at the end.
    counts: (i64, i64, i64),
    attempts: i64,
    /// During the load, and from its end until every delivery was recorded.
    load_cost: Cost,
    drain_cost: Cost,
    /// Quantiles (p50, p99, max; ms) from the store: the change's `sent_at_us` → the
    /// transition's row (`created_at`), and that → `delivered_at`.
    saved_ms: Vec<f64>,
    delivered_ms: Vec<f64>,
    /// The store's statements from the load's start to the end of the drain.
    statements: Vec<Statement>,
    redelivery: Redelivery,
}

/// The redelivery phase: every delivery queued again through the API, then sent by the
/// dispatcher as fast as it goes, with no evaluation going on.
#[derive(Default)]
struct Redelivery {
    backlog: i64,
    /// First `redeliver_bench_trigger` sent → the last answered.
    queue_secs: f64,
    /// First `redeliver_bench_trigger` sent → the last redelivery received.
    secs: f64,
    received: u64,
    /// Received once every redelivery was queued, per second (the dispatcher's pace alone).
    steady_rate: f64,
    complete: bool,
    cost: Cost,
    statements: Vec<Statement>,
}

/// A store statement as `pg_stat_statements` counts it: calls, total ms, text.
type Statement = (i64, f64, String);

async fn triggers_scenario(
    p: &Params,
    server: &ServerProc,
    upstream: &Upstream,
) -> anyhow::Result<bool> {
    let store_url = upstream.store_url.as_deref().context("no trigger store")?;
    let store = pg(store_url).await?;
    let (receiver, task) = Receiver::start(p.groups()).await?;
    let result = async {
        let mut run = trigger_phases(p, server, upstream, &store, &receiver).await?;
        eprintln!("[{}] redelivering everything …", p.name);
        run.redelivery = redeliver_all(p, server, upstream, &store, &receiver).await?;
        anyhow::Ok(run)
    }
    .await;
    task.abort();
    let run = result?;
    let got = std::mem::take(&mut *receiver.received.lock().expect("received"));
    let table: Vec<(i64, i64, i64)> = pg(&upstream.url)
        .await?
        .query("SELECT id::bigint, value, group_id::bigint FROM bench", &[])
        .await?
        .into_iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    let violations = check_transitions(&got, &table);
    Ok(report_triggers(p, &run, &got, &violations))
}

/// Creates the triggers, runs the load, then waits until every transition is delivered.
async fn trigger_phases(
    p: &Params,
    server: &ServerProc,
    upstream: &Upstream,
    store: &tokio_postgres::Client,
    receiver: &Receiver,
) -> anyhow::Result<TriggerRun> {
    let (name, pid, n) = (p.name, server.pid, p.groups());
    let mut run = TriggerRun {
        triggers: n,
        ..TriggerRun::default()
    };
    run.rss[0] = status_mb(pid, "VmRSS");
    eprintln!(
        "[{name}] server pid {pid}; creating {n} triggers (receiver {}) …",
        receiver.addr
    );
    let started = Instant::now();
    create_triggers(server.addr, receiver.addr, n).await?;
    run.create_secs = started.elapsed().as_secs_f64();
    let established = poll_until(
        Duration::from_secs(300),
        Duration::from_millis(100),
        || async {
            let row = store
                .query_one(
                    "SELECT count(*) FROM viewcast_triggers WHERE initialized",
                    &[],
                )
                .await?;
            Ok(row.get::<_, i64>(0) == i64::from(n))
        },
    )
    .await?;
    if !established {
        bail!("the triggers were not established within 300 s");
    }
    run.establish_secs = started.elapsed().as_secs_f64();
    run.rss[1] = status_mb(pid, "VmRSS");
    store
        .batch_execute(
            "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset();",
        )
        .await?;

    eprintln!("[{name}] load: {} changes/s for {:?} …", p.rate, p.duration);
    let postmaster = upstream.postmaster.context("the postmaster's pid")?;
    let meter = Meter::start(pid, postmaster);
    let saved0 = delivery_counts(store).await?.2;
    let received0 = receiver.distinct.load(Relaxed);
    let load = generate(upstream, p).await?;
    let load_end_us = now_us();
    run.received_during_load = receiver.distinct.load(Relaxed) - received0;
    run.load_cost = meter.read();
    run.saved_during_load = delivery_counts(store).await?.2 - saved0;
    run.rss[2] = status_mb(pid, "VmRSS");
    (run.updates, run.load_secs) = (load.updates, load.elapsed.as_secs_f64());
    eprintln!(
        "[{name}] {} updates written; waiting for the evaluator and the deliveries …",
        load.updates
    );

    let (caught_up_us, all_delivered) = wait_for_deliveries(p, upstream, store, receiver).await?;
    run.caught_up_secs = (caught_up_us - load_end_us) as f64 / 1e6;
    run.all_delivered = all_delivered;
    let last_us = receiver.received.lock().expect("received").last_us;
    run.drain_secs = (last_us - load_end_us).max(0) as f64 / 1e6;
    run.drain_cost = meter.read().since(&run.load_cost);
    drop(meter);
    run.rss[3] = status_mb(pid, "VmRSS");
    run.rss[4] = status_mb(pid, "VmHWM");
    run.counts = delivery_counts(store).await?;
    run.attempts = store
        .query_one("SELECT count(*) FROM viewcast_delivery_attempts", &[])
        .await?
        .get(0);
    (run.saved_ms, run.delivered_ms) = store_latencies(store).await?;
    run.statements = statements(store).await?;
    Ok(run)
}

/// Waits until the evaluator has saved every transition of the load and all of them were
/// received and recorded as delivered: (when the evaluator caught up, µs; whether all of that
/// happened within the timeout).
async fn wait_for_deliveries(
    p: &Params,
    upstream: &Upstream,
    store: &tokio_postgres::Client,
    receiver: &Receiver,
) -> anyhow::Result<(i64, bool)> {
    // The marker: a new row, inside its group's trigger. Once its FIRE is in the store, every
    // change before it has been evaluated (batches are evaluated in order, each read's
    // transitions saved in one transaction) and the set of deliveries is final. A new key
    // FIREs whether the evaluator applies the batch or, having fallen behind the source's
    // history, compares the rows with its stored keys (which skips a key that left and came
    // back meanwhile, so an update would not do).
    let (marker, groups) = (i64::from(p.rows) + 1, i64::from(p.groups()));
    pg(&upstream.url)
        .await?
        .execute(
            &format!(
                "INSERT INTO bench VALUES ($1::bigint::int, $2, '', ($1 % $3)::int, {SENT_AT_US})"
            ),
            &[&marker, &(TRIGGER_VALUES - 1), &groups],
        )
        .await?;
    let timeout = Duration::from_secs(p.flags.converge_timeout);
    let caught_up = poll_until(timeout, Duration::from_millis(100), || async {
        let row = store
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM viewcast_deliveries WHERE source = 'bench' \
                 AND trigger_name = $1 AND payload->'data'->>'id' = $2)",
                &[&format!("t{}", marker % groups), &marker.to_string()],
            )
            .await?;
        Ok(row.get::<_, bool>(0))
    })
    .await?;
    let caught_up_us = now_us();
    let total = delivery_counts(store).await?.2;
    let received_all = poll_until(timeout, Duration::from_millis(20), || async {
        Ok(receiver.distinct.load(Relaxed) >= total as u64)
    })
    .await?;
    // The dispatcher records an attempt after the receiver answered.
    let recorded = poll_until(timeout, Duration::from_millis(100), || async {
        Ok(delivery_counts(store).await?.0 == 0)
    })
    .await?;
    Ok((caught_up_us, caught_up && received_all && recorded))
}

/// Quantiles (p50, p99, max; ms) of the delivered transitions from the store: the change's
/// `sent_at_us` → the transition's row (`created_at`), and that → `delivered_at`.
async fn store_latencies(store: &tokio_postgres::Client) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let us = |at: &str| format!("(extract(epoch FROM {at}) * 1e6)::float8");
    let row = store
        .query_one(
            &format!(
                "WITH d AS (SELECT {} - (payload->'data'->>'sent_at_us')::float8 AS saved, \
                 {} - {} AS delivered FROM viewcast_deliveries WHERE status = 'delivered') \
                 SELECT percentile_disc(ARRAY[0.5, 0.99, 1]) WITHIN GROUP (ORDER BY saved), \
                 percentile_disc(ARRAY[0.5, 0.99, 1]) WITHIN GROUP (ORDER BY delivered) FROM d",
                us("created_at"),
                us("delivered_at"),
                us("created_at")
            ),
            &[],
        )
        .await?;
    let ms = |v: Option<Vec<f64>>| v.unwrap_or_default().iter().map(|us| us / 1e3).collect();
    Ok((ms(row.get(0)), ms(row.get(1))))
}

/// The store's statements since `pg_stat_statements` was last reset, most time first.
async fn statements(store: &tokio_postgres::Client) -> anyhow::Result<Vec<Statement>> {
    Ok(store
        .query(
            "SELECT calls, total_exec_time, left(regexp_replace(query, '\\s+', ' ', 'g'), 100) \
             FROM pg_stat_statements \
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND query NOT LIKE '%pg_stat_statements%' \
             ORDER BY total_exec_time DESC LIMIT 8",
            &[],
        )
        .await?
        .into_iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect())
}

/// Queues every delivery again (`redeliver_bench_trigger`, all of a trigger's ids at once, 8
/// requests at a time) and waits until the receiver got each once more.
async fn redeliver_all(
    p: &Params,
    server: &ServerProc,
    upstream: &Upstream,
    store: &tokio_postgres::Client,
    receiver: &Receiver,
) -> anyhow::Result<Redelivery> {
    const MUTATION: &str = "mutation($name: String!, $from: ID!, $to: ID) { \
         redeliver_bench_trigger(name: $name, from: $from, to: $to) { id } }";
    let ranges: Vec<(String, i64, i64, i64)> = store
        .query(
            "SELECT trigger_name, min(id), max(id), count(*) FROM viewcast_deliveries \
             GROUP BY trigger_name",
            &[],
        )
        .await?
        .into_iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
        .collect();
    let mut phase = Redelivery {
        backlog: ranges.iter().map(|r| r.3).sum(),
        ..Redelivery::default()
    };
    store
        .execute("SELECT pg_stat_statements_reset()", &[])
        .await?;
    let repeated0 = receiver.repeated.load(Relaxed);
    for again in &mut receiver.received.lock().expect("received").again {
        again.clear();
    }
    let postmaster = upstream.postmaster.context("the postmaster's pid")?;
    let meter = Meter::start(server.pid, postmaster);
    let start_us = now_us();
    let queue = |(name, from, to, _): (String, i64, i64, i64)| async move {
        let variables =
            serde_json::json!({"name": name, "from": from.to_string(), "to": to.to_string()});
        graphql(server.addr, MUTATION, variables).await
    };
    eight_at_a_time(ranges, queue).await?;
    let queued_us = now_us();
    let received_queued = receiver.repeated.load(Relaxed) - repeated0;
    phase.queue_secs = (queued_us - start_us) as f64 / 1e6;
    let backlog = phase.backlog as u64;
    let timeout = Duration::from_secs(p.flags.converge_timeout);
    let arrived = poll_until(timeout, Duration::from_millis(20), || async {
        Ok(receiver.repeated.load(Relaxed) - repeated0 >= backlog)
    })
    .await?;
    let recorded = poll_until(timeout, Duration::from_millis(100), || async {
        Ok(delivery_counts(store).await?.0 == 0)
    })
    .await?;
    phase.cost = meter.read();
    phase.complete = arrived && recorded;
    phase.received = receiver.repeated.load(Relaxed) - repeated0;
    let last_us = receiver.received.lock().expect("received").last_again_us;
    phase.secs = (last_us - start_us).max(0) as f64 / 1e6;
    phase.steady_rate =
        (phase.received - received_queued) as f64 / ((last_us - queued_us) as f64 / 1e6).max(1e-6);
    phase.statements = statements(store).await?;
    Ok(phase)
}

/// Every trigger's deliveries, per key, alternate FIRE/CLEAR starting with a FIRE and agree
/// with the threshold and the trigger's group; the keys left inside are the table's rows of
/// the group at or above the threshold; the redelivery phase repeated each trigger's
/// deliveries in their order. The violations found (empty: correct).
fn check_transitions(received: &Received, table: &[(i64, i64, i64)]) -> Vec<String> {
    let mut violations = Vec::new();
    for (k, events) in received.events.iter().enumerate() {
        let again = &received.again[k];
        if again.len() != events.len() || events.iter().zip(again).any(|(e, a)| e.webhook_id != *a)
        {
            violations.push(format!(
                "t{k}: redelivered {} events, not its {} deliveries in their order",
                again.len(),
                events.len()
            ));
        }
        let k = k as i64;
        let mut inside: HashMap<i64, bool> = HashMap::new();
        for e in events {
            let was = inside.insert(e.id, e.fire).unwrap_or(false);
            let kind = if e.fire { "FIRE" } else { "CLEAR" };
            if was == e.fire {
                violations.push(format!("t{k}: row {} got {kind} twice in a row", e.id));
            }
            if e.group != k || e.fire != (e.value >= THRESHOLD) {
                violations.push(format!(
                    "t{k}: {kind} for row {} (group {}, value {})",
                    e.id, e.group, e.value
                ));
            }
        }
        let mut got: Vec<i64> = inside
            .into_iter()
            .filter_map(|(id, inside)| inside.then_some(id))
            .collect();
        let mut expected: Vec<i64> = table
            .iter()
            .filter(|(_, value, group)| *group == k && *value >= THRESHOLD)
            .map(|(id, _, _)| *id)
            .collect();
        got.sort_unstable();
        expected.sort_unstable();
        if got != expected {
            violations.push(format!(
                "t{k}: inside after the deliveries {got:?}, the table's rows at or above \
                 {THRESHOLD} {expected:?}"
            ));
        }
    }
    violations
}

fn print_statements(statements: &[Statement], per: i64) {
    for (calls, ms, text) in statements {
        let share = *calls as f64 / per.max(1) as f64;
        println!("    {calls:>8} ({share:>5.2}) {:>7.2} s  {text}", ms / 1e3);
    }
}

/// Prints the triggers report and its JSON line; true when the deliveries were complete and
/// correct.
// One flat list of figures, printed twice (table, JSON), reads better than split in parts.
#[allow(clippy::too_many_lines)]
fn report_triggers(
    p: &Params,
    run: &TriggerRun,
    received: &Received,
    violations: &[String],
) -> bool {
    let (pending, dead, total) = run.counts;
    let distinct = received.events.iter().map(Vec::len).sum::<usize>();
    let re = &run.redelivery;
    let ok = violations.is_empty()
        && run.all_delivered
        && re.complete
        && pending == 0
        && dead == 0
        && received.malformed == 0
        && distinct as i64 == total;
    let latencies = |fire_only: bool| {
        let mut all: Vec<u32> = received
            .events
            .iter()
            .flatten()
            .filter(|e| e.fire || !fire_only)
            .map(|e| (e.received_us - e.sent_at_us).clamp(0, i64::from(u32::MAX)) as u32)
            .collect();
        all.sort_unstable();
        all
    };
    let (all, fires) = (latencies(false), latencies(true));
    let [p50, p90, p99, max] = [0.5, 0.9, 0.99, 1.0].map(|q| quantile_ms(&all, q));
    let [fire_p50, fire_p99] = [0.5, 0.99].map(|q| quantile_ms(&fires, q));
    let secs = run.load_secs;
    let transitions = total - 1; // without the marker's FIRE
    let achieved = run.updates as f64 / secs;
    let saved_rate = run.saved_during_load as f64 / secs;
    let received_rate = run.received_during_load as f64 / secs;
    let overall_rate = distinct as f64 / (secs + run.drain_secs);
    let re_rate = re.received as f64 / re.secs.max(1e-9);
    let share = 100.0 * transitions as f64 / run.updates.max(1) as f64;
    let q = |v: &[f64], i: usize| v.get(i).copied().unwrap_or(f64::NAN);
    let (saved, delivered) = (&run.saved_ms, &run.delivered_ms);
    let [rss_start, rss_created, rss_load_end, rss_end, rss_peak] = run.rss;
    let verdict = if ok { "OK" } else { "FAILED" };
    let (name, n, rows, rate, updates) = (p.name, run.triggers, p.rows, p.rate, run.updates);
    let (create_secs, establish_secs) = (run.create_secs, run.establish_secs);
    let (caught_up, drain) = (run.caught_up_secs, run.drain_secs);
    let (duplicates, malformed, attempts) = (received.duplicates, received.malformed, run.attempts);
    let (load_cost, drain_cost, re_cost) = (
        run.load_cost.describe(),
        run.drain_cost.describe(),
        re.cost.describe(),
    );
    let (backlog, queue_secs, re_secs, steady) =
        (re.backlog, re.queue_secs, re.secs, re.steady_rate);
    println!(
        "
== viewcast-bench {name} (postgres) ==
  triggers            {n} (trigger k: group_id = k and value >= {THRESHOLD}), created in \
{create_secs:.1} s, all established {establish_secs:.1} s after the first
  source              {rows} rows (group_id = id % {n}), value uniform in 0..{TRIGGER_VALUES}
  load                target {rate}/s, achieved {achieved:.0}/s: {updates} updates in {secs:.1} s
  transitions         {transitions} ({share:.1} % of the updates); saved during the load \
{saved_rate:.0}/s; evaluator caught up {caught_up:.2} s after the load
  deliveries          {received_rate:.0}/s received during the load; all {distinct} received \
{drain:.2} s after the load ({overall_rate:.0}/s over load + drain)
  latency (ms)        p50 {p50:.1}  p90 {p90:.1}  p99 {p99:.1}  max {max:.1}  (sent_at_us -> \
received, {} deliveries); FIRE only p50 {fire_p50:.1}  p99 {fire_p99:.1}
  change -> saved     p50 {:.1}  p99 {:.1}  max {:.1} ms (store: created_at - sent_at_us)
  saved -> delivered  p50 {:.1}  p99 {:.1}  max {:.1} ms (store: delivered_at - created_at)
  store               {total} deliveries: {pending} pending, {dead} dead; {attempts} attempts; \
receiver: {duplicates} duplicates, {malformed} malformed
  CPU, load           {load_cost}
  CPU, drain          {drain_cost}
  server RSS (MB)     start {rss_start:.1}  triggers created {rss_created:.1}  load end \
{rss_load_end:.1}  end {rss_end:.1}  peak {rss_peak:.1}",
        all.len(),
        q(saved, 0),
        q(saved, 1),
        q(saved, 2),
        q(delivered, 0),
        q(delivered, 1),
        q(delivered, 2),
    );
    println!("  store statements    calls (per delivery), total time — load and drain:");
    print_statements(&run.statements, total);
    println!(
        "  redelivery          {backlog} deliveries queued again in {queue_secs:.2} s; {} \
received {re_secs:.2} s after the first request: {re_rate:.0}/s ({steady:.0}/s once all \
were queued)
  CPU, redelivery     {re_cost}
  store statements    calls (per delivery), total time — redelivery:",
        re.received
    );
    print_statements(&re.statements, backlog);
    let incomplete = match (run.all_delivered, re.complete) {
        (true, true) => "",
        (false, _) => "; not every transition was delivered in time",
        (true, false) => "; not every redelivery arrived in time",
    };
    println!(
        "  correctness         {verdict}: {} violations{incomplete}",
        violations.len()
    );
    for violation in violations.iter().take(5) {
        println!("    {violation}");
    }
    let json = serde_json::json!({
        "scenario": name, "triggers": n, "rows": rows, "target_rate": rate, "achieved_rate": achieved,
        "updates": updates, "load_secs": secs, "create_secs": create_secs, "establish_secs": establish_secs,
        "transitions": transitions, "saved_per_sec_during_load": saved_rate, "caught_up_secs": caught_up,
        "received_per_sec_during_load": received_rate, "delivered": distinct, "drain_secs": drain,
        "delivered_per_sec_overall": overall_rate,
        "latency_ms": {"p50": p50, "p90": p90, "p99": p99, "max": max, "samples": all.len(),
            "fire_p50": fire_p50, "fire_p99": fire_p99},
        "change_to_saved_ms": saved, "saved_to_delivered_ms": delivered,
        "pending": pending, "dead": dead, "attempts": attempts, "duplicates": duplicates, "malformed": malformed,
        "cpu_load": run.load_cost.json(), "cpu_drain": run.drain_cost.json(),
        "redelivery": {"backlog": backlog, "queue_secs": queue_secs, "secs": re_secs, "received": re.received,
            "per_sec": re_rate, "steady_per_sec": steady, "complete": re.complete, "cpu": re.cost.json()},
        "rss_mb": {"start": rss_start, "created": rss_created, "load_end": rss_load_end, "end": rss_end, "peak": rss_peak},
        "violations": violations.len(), "ok": ok,
    });
    println!("{json}");
    ok
}

// -------------------------------------------------------------------------------------- runs

/// How long an attach step keeps its place (`--attach-concurrency`).
const ATTACH_HOLD: Duration = Duration::from_millis(10);

/// A GraphQL consumer's subscription, one per run.
const RUN_EVENTS: &str =
    "subscription($id: ID!) { runEvents(runId: $id, fromSeq: 1) { seq type data } }";

/// What one consumer of a run received, checked as it arrived.
struct Consumed {
    /// The seq wanted next: seqs 1..=events, in order.
    next: i64,
    /// The terminal event arrived.
    terminal: bool,
    /// Its stream ended cleanly after it (SSE: the response ended; GraphQL: `complete`).
    ended: bool,
    /// Events received (heartbeats apart), duplicates included.
    received: u64,
    heartbeats: u64,
    /// Receive time (µs since the epoch) by seq - 1, for the first copy of each seq.
    received_at: Vec<i64>,
    /// Receive time − the append's `sent_at_us`, µs.
    latencies_us: Vec<u32>,
    /// Gaps, duplicates, wrong types, errors: the first few, and how many.
    problems: Vec<String>,
    problem_count: u64,
}

impl Consumed {
    fn new(events: u32) -> Consumed {
        Consumed {
            next: 1,
            terminal: false,
            ended: false,
            received: 0,
            heartbeats: 0,
            received_at: vec![0; events as usize],
            latencies_us: Vec::with_capacity(events as usize),
            problems: Vec::new(),
            problem_count: 0,
        }
    }

    fn problem(&mut self, text: String) {
        self.problem_count += 1;
        if self.problems.len() < 3 {
            self.problems.push(text);
        }
    }

    /// One event (or heartbeat) as it arrived.
    fn event(
        &mut self,
        shared: &RunShared,
        seq: i64,
        kind: &str,
        sent_at_us: Option<i64>,
        at: i64,
    ) {
        if kind == "HEARTBEAT" {
            self.heartbeats += 1;
            return;
        }
        self.received += 1;
        shared.delivered.fetch_add(1, Relaxed);
        let events = i64::from(shared.events);
        if self.terminal {
            self.problem(format!("seq {seq} ({kind}) after the terminal event"));
        }
        if seq < self.next {
            self.problem(format!("seq {seq} again (duplicate)"));
            return;
        }
        if seq > self.next {
            self.problem(format!("seqs {}..={} missing", self.next, seq - 1));
        }
        let wanted = if seq == events {
            "COMPLETED"
        } else {
            "PROGRESS"
        };
        if kind != wanted || seq > events {
            self.problem(format!("seq {seq} is {kind}, expected {wanted}"));
        }
        if let Some(slot) = usize::try_from(seq - 1)
            .ok()
            .and_then(|i| self.received_at.get_mut(i))
        {
            *slot = at;
        }
        match sent_at_us {
            Some(sent) => self
                .latencies_us
                .push((at - sent).clamp(0, i64::from(u32::MAX)) as u32),
            None => self.problem(format!("seq {seq} without data.sent_at_us")),
        }
        self.next = seq + 1;
        self.terminal = viewcast::run::TERMINAL.contains(&kind);
    }

    /// Every seq 1..=events once, in order, ending with COMPLETED and the stream's end.
    fn complete(&self, events: u32) -> bool {
        self.problem_count == 0
            && self.terminal
            && self.ended
            && self.next == i64::from(events) + 1
            && self.received == u64::from(events)
    }
}

/// What the consumer and writer tasks share with the scenario.
struct RunShared {
    addr: SocketAddr,
    events: u32,
    /// For the SSE consumers (one connection each, held to the end).
    http: reqwest::Client,
    /// Bounds concurrent attaches (`--attach-concurrency`).
    connecting: Semaphore,
    /// Consumers attached: SSE response headers received; GraphQL subscriptions sent and the
    /// connection's `pong` (sent after them) received.
    attached: AtomicUsize,
    /// Events received, all consumers.
    delivered: AtomicU64,
    /// Consumers whose stream is over (cleanly or not).
    finished: AtomicUsize,
    stop: CancellationToken,
}

/// An event as SSE `data:` and GraphQL `runEvents` give it (the fields the benchmark reads).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunEventJson {
    run_id: Option<String>,
    seq: i64,
    #[serde(rename = "type")]
    kind: String,
    data: Option<serde_json::Value>,
}

impl RunEventJson {
    fn sent_at_us(&self) -> Option<i64> {
        self.data.as_ref()?.get("sent_at_us")?.as_i64()
    }
}

/// Follows run `id` over SSE from seq 1 until the response ends.
async fn sse_consumer(shared: Arc<RunShared>, id: String) -> Consumed {
    let mut consumed = Consumed::new(shared.events);
    let result = tokio::select! {
        result = sse_read(&shared, &id, &mut consumed) => result,
        () = shared.stop.cancelled() => Err(anyhow::anyhow!("stopped before the stream ended")),
    };
    if let Err(err) = result {
        consumed.problem(format!("SSE: {err:#}"));
    }
    shared.finished.fetch_add(1, Relaxed);
    consumed
}

async fn sse_read(shared: &RunShared, id: &str, consumed: &mut Consumed) -> anyhow::Result<()> {
    let permit = shared.connecting.acquire().await?;
    let url = format!("http://{}/runs/{id}/events?fromSeq=1", shared.addr);
    let mut response = shared.http.get(url).send().await?;
    let status = response.status();
    if status != reqwest::StatusCode::OK {
        bail!(
            "HTTP {status}: {}",
            response.text().await.unwrap_or_default()
        );
    }
    // The server replays the (empty) run after the headers: let it, before the next attaches.
    tokio::time::sleep(ATTACH_HOLD).await;
    drop(permit);
    shared.attached.fetch_add(1, Relaxed);
    let mut buffer: Vec<u8> = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let at = now_us();
        buffer.extend_from_slice(&chunk);
        // Events end with a blank line (LF, as axum writes them; CRLF tolerated).
        while let Some(end) = blank_line(&buffer) {
            let block: Vec<u8> = buffer.drain(..end).collect();
            sse_event(shared, id, &String::from_utf8_lossy(&block), at, consumed);
        }
    }
    if !String::from_utf8_lossy(&buffer).trim().is_empty() {
        consumed.problem(format!("the stream ended inside an event: {buffer:?}"));
    }
    consumed.ended = true;
    Ok(())
}

/// The end of the first event in `buffer` (after its blank line).
fn blank_line(buffer: &[u8]) -> Option<usize> {
    let lf = memchr::memmem::find(buffer, b"\n\n").map(|i| i + 2);
    let crlf = memchr::memmem::find(buffer, b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One SSE event block: `id:` (the seq), `event:` (the type), `data:` (the event as JSON);
/// comments (heartbeats) and `retry:` are skipped.
fn sse_event(shared: &RunShared, run: &str, block: &str, at: i64, consumed: &mut Consumed) {
    let (mut id, mut event, mut data) = (None, None, String::new());
    for line in block.lines() {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = Some(value.to_owned()),
            "event" => event = Some(value.to_owned()),
            "data" => {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
            _ => {}
        }
    }
    if data.is_empty() && event.is_none() {
        return;
    }
    if event.as_deref() == Some("error") {
        consumed.problem(format!("error event: {data}"));
        return;
    }
    let parsed: RunEventJson = match serde_json::from_str(&data) {
        Ok(e) => e,
        Err(err) => {
            consumed.problem(format!("data {data:?}: {err}"));
            return;
        }
    };
    let seq_text = parsed.seq.to_string();
    if id.as_deref() != Some(seq_text.as_str())
        || event.as_deref() != Some(parsed.kind.as_str())
        || parsed.run_id.as_deref() != Some(run)
    {
        consumed.problem(format!(
            "id {id:?} / event {event:?} do not match the data's seq {} / type {} / run {:?}",
            parsed.seq, parsed.kind, parsed.run_id
        ));
    }
    let sent = parsed.sent_at_us();
    consumed.event(shared, parsed.seq, &parsed.kind, sent, at);
}

/// One WebSocket connection following runs `ids` (operation id = index) until each
/// subscription completes.
async fn graphql_consumers(shared: Arc<RunShared>, ids: Vec<String>) -> Vec<Consumed> {
    let mut subs: Vec<Consumed> = ids.iter().map(|_| Consumed::new(shared.events)).collect();
    let result = tokio::select! {
        result = graphql_read(&shared, &ids, &mut subs) => result,
        () = shared.stop.cancelled() => {
            Err(anyhow::anyhow!("stopped before every subscription completed"))
        }
    };
    if let Err(err) = result {
        for sub in subs.iter_mut().filter(|s| !s.ended) {
            sub.problem(format!("GraphQL: {err:#}"));
        }
    }
    shared.finished.fetch_add(subs.len(), Relaxed);
    subs
}

async fn graphql_read(
    shared: &RunShared,
    ids: &[String],
    subs: &mut [Consumed],
) -> anyhow::Result<()> {
    let mut ws = {
        let _permit = shared.connecting.acquire().await?;
        open(shared.addr, false).await?
    };
    for (i, id) in ids.iter().enumerate() {
        let _permit = shared.connecting.acquire().await?;
        let message = serde_json::json!({"type": "subscribe", "id": i.to_string(),
            "payload": {"query": RUN_EVENTS, "variables": {"id": id}}});
        ws.send(Message::Text(message.to_string().into())).await?;
        // The server starts the subscription and replays the (empty) run meanwhile.
        tokio::time::sleep(ATTACH_HOLD).await;
    }
    // Answered after the subscriptions were started (messages are handled in order).
    ws.send(Message::Text(r#"{"type":"ping"}"#.into())).await?;
    let mut closed = vec![false; ids.len()];
    let (mut open_subs, mut ponged) = (ids.len(), false);
    while open_subs > 0 {
        let text = match ws.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => bail!("server closed: {frame:?}"),
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Err(err.into()),
            None => bail!("connection lost"),
        };
        let at = now_us();
        let message: RunsMessage = serde_json::from_str(&text)
            .with_context(|| format!("unexpected message: {}", text.as_str()))?;
        let sub = message
            .id
            .as_deref()
            .and_then(|id| id.parse::<usize>().ok())
            .filter(|&i| i < subs.len() && !closed[i]);
        match (message.kind.as_str(), sub) {
            ("pong", _) if !ponged => {
                ponged = true;
                shared.attached.fetch_add(ids.len(), Relaxed);
            }
            ("ping", _) => ws.send(Message::Text(r#"{"type":"pong"}"#.into())).await?,
            ("next", Some(i)) => {
                let payload = message.payload.unwrap_or_default();
                let event = payload
                    .get("data")
                    .and_then(|d| d.get("runEvents"))
                    .filter(|_| payload.get("errors").is_none())
                    .and_then(|e| serde_json::from_value::<RunEventJson>(e.clone()).ok());
                match event {
                    Some(e) => subs[i].event(shared, e.seq, &e.kind, e.sent_at_us(), at),
                    None => subs[i].problem(format!("next without an event: {payload}")),
                }
            }
            ("complete", Some(i)) => {
                subs[i].ended = true;
                closed[i] = true;
                open_subs -= 1;
            }
            ("error", Some(i)) => {
                let payload = message.payload.unwrap_or_default();
                subs[i].problem(format!("error: {payload}"));
                closed[i] = true;
                open_subs -= 1;
            }
            _ => bail!("unexpected message: {}", text.as_str()),
        }
    }
    let _ = ws.close(None).await;
    Ok(())
}

/// A graphql-transport-ws message with any payload (`error` carries a list).
#[derive(Deserialize)]
struct RunsMessage {
    #[serde(rename = "type")]
    kind: String,
    id: Option<String>,
    payload: Option<serde_json::Value>,
}

/// What one writer appended.
#[derive(Default)]
struct Appends {
    done: u64,
    /// Request sent → response read, µs, per successful append.
    latencies_us: Vec<u32>,
    /// Attempts repeated after a connection error or a 503.
    retries: u64,
    /// Appends given up on (their run is not appended to again).
    failures: Vec<String>,
}

/// Appends `events` events to each of `runs`, seq by seq across its runs (so all of them are
/// active at once), one request at a time, paced to `rate` per second from `start`.
async fn append_writer(
    http: reqwest::Client,
    addr: SocketAddr,
    runs: Vec<String>,
    events: u32,
    rate: f64,
    start: Instant,
) -> Appends {
    let mut out = Appends::default();
    let mut broken = vec![false; runs.len()];
    let mut n = 0u64;
    for seq in 1..=i64::from(events) {
        let kind = if seq == i64::from(events) {
            "COMPLETED"
        } else {
            "PROGRESS"
        };
        for (r, id) in runs.iter().enumerate() {
            let due = start + Duration::from_secs_f64(n as f64 / rate);
            n += 1;
            if broken[r] {
                continue;
            }
            tokio::time::sleep_until(due.into()).await;
            match append_one(&http, addr, id, seq, kind, &mut out).await {
                Ok(()) => out.done += 1,
                Err(err) => {
                    out.failures.push(format!("run {id} seq {seq}: {err:#}"));
                    broken[r] = true;
                }
            }
        }
    }
    out
}

/// `POST /runs/{id}/events` with one event at `seq`; repeated (same `expectedSeq`) after a
/// connection error or a 503, where a 409 then means the earlier attempt went through if the
/// run has the event.
async fn append_one(
    http: &reqwest::Client,
    addr: SocketAddr,
    id: &str,
    seq: i64,
    kind: &str,
    out: &mut Appends,
) -> anyhow::Result<()> {
    let url = format!("http://{addr}/runs/{id}/events");
    let mut attempt = 0;
    loop {
        attempt += 1;
        let sent_at_us = now_us();
        let body = serde_json::json!({"events": [{"type": kind, "data": {"sent_at_us": sent_at_us}}],
            "expectedSeq": seq});
        let started = Instant::now();
        let response = http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await;
        let (status, text) = match response {
            Ok(response) => {
                let status = response.status().as_u16();
                (status, response.text().await.unwrap_or_default())
            }
            // A timeout is no reason to try again: the server is stuck.
            Err(err) if err.is_timeout() => bail!("{:#}", anyhow::Error::from(err)),
            Err(err) => (0, format!("{:#}", anyhow::Error::from(err))),
        };
        match status {
            200 => {
                let answer: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                if answer["events"][0]["seq"].as_i64() != Some(seq) {
                    bail!("appended, but the answer is not seq {seq}: {text}");
                }
                let us = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                out.latencies_us.push(us);
                return Ok(());
            }
            409 if attempt > 1 && text.contains("SEQ_MISMATCH") => {
                let (_, run) = http_get(addr, &format!("/runs/{id}")).await?;
                let run: serde_json::Value = serde_json::from_str(&run).unwrap_or_default();
                if run["lastSeq"].as_i64() >= Some(seq) {
                    return Ok(());
                }
                bail!("HTTP 409 after a retry: {text}");
            }
            0 | 503 if attempt < 10 => {
                out.retries += 1;
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            _ => bail!("HTTP {status}: {text}"),
        }
    }
}

/// `POST /runs`: the new run's id.
async fn start_run(http: &reqwest::Client, addr: SocketAddr) -> anyhow::Result<(u16, String)> {
    let response = http
        .post(format!("http://{addr}/runs"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(r#"{"kind":"bench","input":{}}"#)
        .send()
        .await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    if status != 201 {
        return Ok((status, text));
    }
    let run: serde_json::Value = serde_json::from_str(&text)?;
    let id = run["id"].as_str().context("no id in the new run")?;
    Ok((status, id.to_owned()))
}

/// `GET /runs/{id}` of every run, 64 at a time: each must be PENDING with no event.
async fn read_runs(http: &reqwest::Client, addr: SocketAddr, ids: &[String]) -> anyhow::Result<()> {
    let read = |id: String| async move {
        let response = http.get(format!("http://{addr}/runs/{id}")).send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let run: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if status != 200 || run["status"] != "PENDING" || run["lastSeq"] != 0 {
            bail!("GET /runs/{id}: HTTP {status}: {text}");
        }
        anyhow::Ok(())
    };
    futures::stream::iter(ids.iter().cloned())
        .map(read)
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Starts `n` runs, 32 requests at a time, after waiting for the store (it connects and
/// migrates in the background, answering 503 until then) with the first.
async fn start_runs(
    http: &reqwest::Client,
    addr: SocketAddr,
    n: u32,
) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        match start_run(http, addr).await? {
            (201, id) => break id,
            (503, _) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (status, text) => bail!("POST /runs: HTTP {status}: {text}"),
        }
    };
    let rest: Vec<anyhow::Result<(u16, String)>> = futures::stream::iter(1..n)
        .map(|_| start_run(http, addr))
        .buffered(32)
        .collect()
        .await;
    let mut ids = vec![first];
    for result in rest {
        match result? {
            (201, id) => ids.push(id),
            (status, text) => bail!("POST /runs: HTTP {status}: {text}"),
        }
    }
    Ok(ids)
}

/// Waits (up to 3 s: run consumers get a heartbeat after 15 quiet seconds) until the process
/// uses at most 4 % of a core over half a second.
async fn settle(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let before = cpu_seconds(pid);
        tokio::time::sleep(Duration::from_millis(500)).await;
        if cpu_seconds(pid) - before <= 0.02 {
            return;
        }
    }
}

/// What the runs scenario measured.
#[derive(Default)]
struct RunsRun {
    start_secs: f64,
    attach_secs: f64,
    append_secs: f64,
    /// Last append → every consumer's stream over (or the timeout).
    drain_secs: f64,
    all_ended: bool,
    delivered_during_appends: u64,
    appended: u64,
    append_us: Vec<u32>,
    retries: u64,
    failures: Vec<String>,
    /// Server RSS (MB): start, runs started, consumers attached, appends done, end, peak.
    rss: [f64; 6],
    append_cost: Cost,
    drain_cost: Cost,
    /// From the store: runs completed with every event, all runs, events, events not
    /// published, outbox rows left.
    store_counts: [i64; 5],
    /// Quantiles (p50, p95, p99, max; ms) from the store: `sent_at_us` → the event's row
    /// (`created_at`), and that → `published_at` (the publisher's round).
    saved_ms: Vec<f64>,
    published_ms: Vec<f64>,
    /// `published_at` → received, µs, over every delivery.
    from_published_us: Vec<u32>,
    statements: Vec<Statement>,
}

/// Once the source is live: the table's size on disk, one subscriber's snapshot (first row,
/// whole snapshot, the server's RSS meanwhile), then one-shot queries, each `repeat` times,
/// one at a time, over HTTP.
async fn large_scenario(
    p: &Params,
    server: &ServerProc,
    upstream: &Upstream,
) -> anyhow::Result<bool> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().no_proxy().build()?;
    let url = format!("http://{}/graphql", server.addr);
    let ask = |query: String| timed_query(&http, &url, query);
    let rss_ready = status_mb(server.pid, "VmRSS");
    eprintln!(
        "[{}] waiting for the source ({} rows) to be live …",
        p.name, p.rows
    );
    let started = Instant::now();
    loop {
        let (_, reply) = ask("{ bench(limit: 1) { id } }".into()).await?;
        if reply["data"]["bench"].is_array() {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(900),
            "the source never went live: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let live_secs = started.elapsed().as_secs_f64();
    let disk_mb = table_mb(upstream).await?;
    let mut snapshots = Vec::new();
    for field in [
        "bench(snapshot_end)",
        "bench_batches(snapshot_end, max_rows: 10000)",
    ] {
        let times = subscriber_snapshot(server, p.rows, field).await?;
        snapshots.push((field, times));
    }
    let rows = i64::from(p.rows);
    let mut lines = Vec::new();
    let mut json = serde_json::Map::new();
    for (name, repeat, query) in [
        ("by key", 50, None),
        ("limit 10", 20, Some("{ bench(limit: 10) { id } }")),
        (
            "top 10 by value",
            10,
            Some("{ bench(order_by: [{value: desc}], limit: 10) { id } }"),
        ),
    ] {
        let mut times = Vec::new();
        for n in 0..repeat {
            let text = query.map_or_else(
                || {
                    format!(
                        "{{ bench(where: {{id: {{_eq: {}}}}}) {{ id }} }}",
                        1 + (n * 7919) % rows
                    )
                },
                str::to_owned,
            );
            let (took, reply) = ask(text).await?;
            anyhow::ensure!(reply["data"]["bench"].is_array(), "{name}: {reply}");
            times.push(took.as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        let (p50, max) = (times[times.len() / 2], times[times.len() - 1]);
        lines.push(format!(
            "  {name:<18}  p50 {p50:.1} ms  max {max:.1} ms  ({repeat} queries)"
        ));
        json.insert(
            name.into(),
            serde_json::json!({ "p50_ms": p50, "max_ms": max }),
        );
    }
    let rss_end = status_mb(server.pid, "VmRSS");
    println!("\n== viewcast-bench large ==");
    println!(
        "  source              {} rows, {} B payload each{}",
        p.rows,
        p.flags.payload_bytes,
        disk_mb.map_or(String::new(), |mb| format!(", {mb:.1} MB on disk"))
    );
    let ready = server.ready_secs;
    println!("  ready after         {ready:.1} s (server start → /ready: the source's snapshot)");
    println!("  first answer after  {live_secs:.1} s more");
    report_snapshots(p.rows, &snapshots, &mut json);
    for line in &lines {
        println!("{line}");
    }
    println!("  server RSS (MB)     ready {rss_ready:.1}  after the queries {rss_end:.1}");
    json.insert("rows".into(), p.rows.into());
    json.insert("live_secs".into(), live_secs.into());
    json.insert("disk_mb".into(), disk_mb.into());
    json.insert("ready_secs".into(), ready.into());
    json.insert(
        "rss_mb".into(),
        serde_json::json!({ "ready": rss_ready, "end": rss_end }),
    );
    println!("{}", serde_json::Value::Object(json));
    Ok(true)
}

/// Posts one GraphQL query; its reply and how long it took.
async fn timed_query(
    http: &reqwest::Client,
    url: &str,
    query: String,
) -> anyhow::Result<(Duration, serde_json::Value)> {
    let started = Instant::now();
    let body = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(serde_json::json!({ "query": query }).to_string())
        .send()
        .await?
        .bytes()
        .await?;
    let reply: serde_json::Value = serde_json::from_slice(&body)?;
    Ok((started.elapsed(), reply))
}

/// The `bench` table's size on disk (MB), unless it lives in the stand-in.
async fn table_mb(upstream: &Upstream) -> anyhow::Result<Option<f64>> {
    if upstream.standin.is_some() {
        return Ok(None);
    }
    let size: i64 = pg(&upstream.url)
        .await?
        .query_one("SELECT pg_total_relation_size('bench')", &[])
        .await?
        .get(0);
    #[allow(clippy::cast_precision_loss)]
    Ok(Some(size as f64 / 1e6))
}

/// Prints each subscriber snapshot's times and adds them to the JSON line.
fn report_snapshots(
    rows: u32,
    snapshots: &[(&str, Option<SnapshotTimes>)],
    json: &mut serde_json::Map<String, serde_json::Value>,
) {
    for (field, times) in snapshots {
        match times {
            Some(t) => println!(
                "  subscriber snapshot, {field}: first row {:.1} ms, all {rows} rows {:.2} s ({:.0} rows/s); server RSS peak meanwhile {:.1} MB",
                t.first_ms,
                t.all_secs,
                f64::from(rows) / t.all_secs,
                t.rss_peak_mb
            ),
            None => println!("  subscriber snapshot, {field}: not served by this binary"),
        }
        json.insert(
            format!("snapshot {field}"),
            times.as_ref().map_or(serde_json::Value::Null, |t| {
                serde_json::json!({
                    "first_row_ms": t.first_ms,
                    "all_secs": t.all_secs,
                    "rss_peak_mb": t.rss_peak_mb,
                })
            }),
        );
    }
}

/// One subscriber's snapshot of a large source, as timed by `large`.
struct SnapshotTimes {
    /// Subscribe sent → first row received.
    first_ms: f64,
    /// Subscribe sent → `SNAPSHOT_END` received.
    all_secs: f64,
    /// The server's largest RSS sampled (every 50 ms) meanwhile.
    rss_peak_mb: f64,
}

/// Subscribes to the whole source (`field`: `bench`, or `bench_batches(…)` for windows) and
/// reads its snapshot as fast as it comes, counting INSERTs in the frames without parsing them,
/// until `SNAPSHOT_END`. `None` if the server refuses the subscription (a binary without
/// `bench_batches`).
async fn subscriber_snapshot(
    server: &ServerProc,
    rows: u32,
    field: &str,
) -> anyhow::Result<Option<SnapshotTimes>> {
    let mut ws = open(server.addr, false).await?;
    let selection = if field.starts_with("bench_batches") {
        format!("updates {{ {SELECTION} }}")
    } else {
        SELECTION.to_owned()
    };
    let field = field.replace("snapshot_end", "snapshot_end: true");
    let query = format!("subscription {{ {field} {{ {selection} }} }}");
    let message = serde_json::json!({"type": "subscribe", "id": "1", "payload": {"query": query}});
    let started = Instant::now();
    ws.send(Message::Text(message.to_string().into())).await?;
    let mut sample = tokio::time::interval(Duration::from_millis(50));
    let (mut first_ms, mut received, mut rss_peak_mb) = (None, 0usize, 0f64);
    loop {
        tokio::select! {
            _ = sample.tick() => rss_peak_mb = rss_peak_mb.max(status_mb(server.pid, "VmRSS")),
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) if text.starts_with(r#"{"id":"1","type":"next""#) => {
                    let inserts = text.matches(r#""INSERT""#).count();
                    if inserts > 0 {
                        first_ms.get_or_insert_with(|| started.elapsed().as_secs_f64() * 1000.0);
                    }
                    received += inserts;
                    if text.contains("SNAPSHOT_END") {
                        break;
                    }
                }
                Some(Ok(Message::Text(text))) if text.contains(r#""type":"error""#) => {
                    eprintln!("  {field}: refused ({text})");
                    return Ok(None);
                }
                Some(Ok(Message::Text(text))) => bail!("unexpected: {text}"),
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(err.into()),
                None => bail!("connection lost"),
            },
        }
    }
    let all_secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        received == rows as usize,
        "{received} snapshot rows, expected {rows}"
    );
    Ok(Some(SnapshotTimes {
        first_ms: first_ms.context("no snapshot row")?,
        all_secs,
        rss_peak_mb: rss_peak_mb.max(status_mb(server.pid, "VmRSS")),
    }))
}

async fn runs_scenario(
    p: &Params,
    server: &ServerProc,
    upstream: &Upstream,
) -> anyhow::Result<bool> {
    // reqwest is built without a default crypto provider (it never speaks TLS here).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store_url = upstream.store_url.as_deref().context("no store")?;
    let postmaster = upstream.postmaster.context("the postmaster's pid")?;
    let store = pg(store_url).await?;
    let (name, pid, addr) = (p.name, server.pid, server.addr);
    let shared = Arc::new(RunShared {
        addr,
        events: p.events,
        http: reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .build()?,
        connecting: Semaphore::new(p.flags.attach_concurrency.max(1)),
        attached: AtomicUsize::new(0),
        delivered: AtomicU64::new(0),
        finished: AtomicUsize::new(0),
        stop: CancellationToken::new(),
    });
    let mut run = RunsRun::default();
    run.rss[0] = status_mb(pid, "VmRSS");
    eprintln!("[{name}] server pid {pid}; starting {} runs …", p.runs);
    let started = Instant::now();
    let ids = start_runs(&shared.http, addr, p.runs).await?;
    run.start_secs = started.elapsed().as_secs_f64();
    read_runs(&shared.http, addr, &ids).await?;
    run.rss[1] = status_mb(pid, "VmRSS");

    let consumers = 2 * ids.len();
    let connections = p.connections.min(ids.len());
    eprintln!(
        "[{name}] attaching {consumers} consumers: {} over SSE, {} over GraphQL on {connections} \
         connections …",
        ids.len(),
        ids.len()
    );
    let started = Instant::now();
    let tasks = ConsumerTasks::spawn(&shared, &ids, connections);
    let attached = poll_until(
        Duration::from_secs(120),
        Duration::from_millis(20),
        || async {
            if shared.finished.load(Relaxed) > 0 {
                bail!("a consumer ended before any event was appended");
            }
            Ok(shared.attached.load(Relaxed) >= consumers)
        },
    )
    .await;
    let result = match attached {
        Ok(true) => {
            // GraphQL subscriptions read the store once started: let that finish.
            settle(pid).await;
            run.attach_secs = started.elapsed().as_secs_f64();
            append_phase(p, &shared, &ids, &store, postmaster, pid, &mut run).await
        }
        Ok(false) => Err(anyhow::anyhow!(
            "only {} of {consumers} consumers attached within 120 s",
            shared.attached.load(Relaxed)
        )),
        Err(err) => Err(err),
    };
    shared.stop.cancel();
    let (sse_done, graphql_done) = tasks.join(p.events).await?;
    if let Err(err) = result {
        let problems: Vec<&String> = sse_done
            .iter()
            .chain(&graphql_done)
            .flat_map(|c| &c.problems)
            .take(3)
            .collect();
        bail!("{err:#}; consumer problems: {problems:?}");
    }
    run.from_published_us = from_published(&store, &ids, &sse_done, &graphql_done).await?;
    run.rss[4] = status_mb(pid, "VmRSS");
    run.rss[5] = status_mb(pid, "VmHWM");
    Ok(report_runs(p, &run, &sse_done, &graphql_done))
}

/// The consumer tasks: one SSE consumer per run, and GraphQL connections each following some
/// runs (their indexes, in subscription order).
struct ConsumerTasks {
    sse: Vec<JoinHandle<Consumed>>,
    graphql: Vec<(Vec<usize>, JoinHandle<Vec<Consumed>>)>,
}

impl ConsumerTasks {
    /// Run i goes on GraphQL connection i % connections.
    fn spawn(shared: &Arc<RunShared>, ids: &[String], connections: usize) -> ConsumerTasks {
        let sse = ids
            .iter()
            .map(|id| tokio::spawn(sse_consumer(shared.clone(), id.clone())))
            .collect();
        let graphql = (0..connections)
            .map(|c| {
                let runs: Vec<usize> = (c..ids.len()).step_by(connections).collect();
                let run_ids = runs.iter().map(|&r| ids[r].clone()).collect();
                let task = tokio::spawn(graphql_consumers(shared.clone(), run_ids));
                (runs, task)
            })
            .collect();
        ConsumerTasks { sse, graphql }
    }

    /// Each run's SSE and GraphQL consumer, in run order.
    async fn join(self, events: u32) -> anyhow::Result<(Vec<Consumed>, Vec<Consumed>)> {
        let mut sse = Vec::with_capacity(self.sse.len());
        for task in self.sse {
            sse.push(task.await?);
        }
        let mut graphql: Vec<Option<Consumed>> = (0..sse.len()).map(|_| None).collect();
        for (runs, task) in self.graphql {
            for (r, consumed) in runs.into_iter().zip(task.await?) {
                graphql[r] = Some(consumed);
            }
        }
        let graphql = graphql
            .into_iter()
            .map(|c| c.unwrap_or_else(|| Consumed::new(events)))
            .collect();
        Ok((sse, graphql))
    }
}

/// The appends, then the wait for every consumer to end; the store's view afterwards.
async fn append_phase(
    p: &Params,
    shared: &Arc<RunShared>,
    ids: &[String],
    store: &tokio_postgres::Client,
    postmaster: u32,
    pid: u32,
    run: &mut RunsRun,
) -> anyhow::Result<()> {
    let (name, addr) = (p.name, shared.addr);
    run.rss[2] = status_mb(pid, "VmRSS");
    store
        .batch_execute(
            "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset();",
        )
        .await?;
    let writers = p.writers.min(ids.len());
    let total = u64::from(p.events) * ids.len() as u64;
    eprintln!(
        "[{name}] appending {total} events ({} per run) at {}/s with {writers} writers …",
        p.events, p.rate
    );
    let meter = Meter::start(pid, postmaster);
    let delivered0 = shared.delivered.load(Relaxed);
    let start = Instant::now();
    // Writer w appends to runs w, w + writers, …; its share of the rate follows its runs.
    let tasks: Vec<JoinHandle<Appends>> = (0..writers)
        .map(|w| {
            let runs: Vec<String> = ids.iter().skip(w).step_by(writers).cloned().collect();
            let rate = f64::from(p.rate.max(1)) * runs.len() as f64 / ids.len() as f64;
            let http = reqwest::Client::builder()
                .no_proxy()
                .tcp_nodelay(true)
                .timeout(Duration::from_secs(30))
                .build()
                .expect("HTTP client");
            tokio::spawn(append_writer(http, addr, runs, p.events, rate, start))
        })
        .collect();
    for task in tasks {
        let appends = task.await?;
        run.appended += appends.done;
        run.append_us.extend(appends.latencies_us);
        run.retries += appends.retries;
        run.failures.extend(appends.failures);
    }
    run.append_secs = start.elapsed().as_secs_f64();
    let appended_at = Instant::now();
    run.delivered_during_appends = shared.delivered.load(Relaxed) - delivered0;
    run.append_cost = meter.read();
    run.rss[3] = status_mb(pid, "VmRSS");
    eprintln!(
        "[{name}] {} events appended in {:.1} s; waiting for the consumers …",
        run.appended, run.append_secs
    );
    let consumers = 2 * ids.len();
    run.all_ended = poll_until(
        Duration::from_secs(p.flags.converge_timeout),
        Duration::from_millis(10),
        || async { Ok(shared.finished.load(Relaxed) >= consumers) },
    )
    .await?;
    run.drain_secs = appended_at.elapsed().as_secs_f64();
    run.drain_cost = meter.read().since(&run.append_cost);
    drop(meter);
    run.statements = statements(store).await?;
    let row = store
        .query_one(
            "SELECT (SELECT count(*) FILTER (WHERE status = 'completed' AND next_seq = $1) \
                     FROM viewcast_runs WHERE kind = 'bench'), \
                    (SELECT count(*) FROM viewcast_runs WHERE kind = 'bench'), \
                    (SELECT count(*) FROM viewcast_run_events), \
                    (SELECT count(*) FROM viewcast_run_events WHERE published_at IS NULL), \
                    (SELECT count(*) FROM viewcast_run_outbox)",
            &[&(i64::from(p.events) + 1)],
        )
        .await?;
    run.store_counts = [0, 1, 2, 3, 4].map(|i| row.get(i));
    let us = |at: &str| format!("(extract(epoch FROM {at}) * 1e6)::float8");
    let row = store
        .query_one(
            &format!(
                "WITH e AS (SELECT {} - (data->>'sent_at_us')::float8 AS saved, {} - {} AS published \
                 FROM viewcast_run_events WHERE published_at IS NOT NULL) \
                 SELECT percentile_disc(ARRAY[0.5, 0.95, 0.99, 1]) WITHIN GROUP (ORDER BY saved), \
                 percentile_disc(ARRAY[0.5, 0.95, 0.99, 1]) WITHIN GROUP (ORDER BY published) FROM e",
                us("created_at"),
                us("published_at"),
                us("created_at")
            ),
            &[],
        )
        .await?;
    let ms = |v: Option<Vec<f64>>| v.unwrap_or_default().iter().map(|us| us / 1e3).collect();
    (run.saved_ms, run.published_ms) = (ms(row.get(0)), ms(row.get(1)));
    Ok(())
}

/// `published_at` (the publisher's round) → received, µs, for every event every consumer got.
async fn from_published(
    store: &tokio_postgres::Client,
    ids: &[String],
    sse: &[Consumed],
    graphql: &[Consumed],
) -> anyhow::Result<Vec<u32>> {
    let index: HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let rows = store
        .query(
            "SELECT run_id::text, seq, (extract(epoch FROM published_at) * 1e6)::float8 \
             FROM viewcast_run_events WHERE published_at IS NOT NULL",
            &[],
        )
        .await?;
    let mut out = Vec::with_capacity(2 * rows.len());
    for row in rows {
        let (run, seq, published): (String, i64, f64) = (row.get(0), row.get(1), row.get(2));
        let (Some(&r), Ok(i)) = (index.get(run.as_str()), usize::try_from(seq - 1)) else {
            continue;
        };
        for consumed in [&sse[r], &graphql[r]] {
            if let Some(&at) = consumed.received_at.get(i).filter(|&&at| at > 0) {
                out.push((at as f64 - published).clamp(0.0, f64::from(u32::MAX)) as u32);
            }
        }
    }
    Ok(out)
}

/// Sorted copies of the consumers' latencies.
fn sorted_latencies<'a>(consumers: impl Iterator<Item = &'a Consumed>) -> Vec<u32> {
    let mut all: Vec<u32> = consumers
        .flat_map(|c| c.latencies_us.iter().copied())
        .collect();
    all.sort_unstable();
    all
}

/// Prints the runs report and its JSON line; true when every consumer got every event once,
/// in order, and the store agrees.
// One flat list of figures, printed twice (table, JSON), reads better than split in parts.
#[allow(clippy::too_many_lines)]
fn report_runs(p: &Params, run: &RunsRun, sse: &[Consumed], graphql: &[Consumed]) -> bool {
    let (runs, events) = (sse.len() as u64, u64::from(p.events));
    let expected = runs * events * 2;
    let all = || sse.iter().chain(graphql);
    let delivered: u64 = all().map(|c| c.received).sum();
    let complete = |c: &[Consumed]| c.iter().filter(|c| c.complete(p.events)).count();
    let (sse_ok, graphql_ok) = (complete(sse), complete(graphql));
    let problems: u64 = all().map(|c| c.problem_count).sum();
    let heartbeats: u64 = all().map(|c| c.heartbeats).sum();
    let [completed_runs, all_runs, stored, unpublished, outbox] = run.store_counts;
    let store_ok = completed_runs as u64 == runs
        && all_runs as u64 == runs
        && stored as u64 == runs * events
        && unpublished == 0
        && outbox == 0;
    let ok = sse_ok == sse.len()
        && graphql_ok == graphql.len()
        && delivered == expected
        && run.failures.is_empty()
        && run.appended == runs * events
        && store_ok;
    let quantiles = |sorted: &[u32]| [0.5, 0.95, 0.99, 1.0].map(|q| quantile_ms(sorted, q));
    let (sse_lat, graphql_lat) = (
        sorted_latencies(sse.iter()),
        sorted_latencies(graphql.iter()),
    );
    let both = sorted_latencies(all());
    let mut published = run.from_published_us.clone();
    published.sort_unstable();
    let mut append_us = run.append_us.clone();
    append_us.sort_unstable();
    let [s50, s95, s99, smax] = quantiles(&sse_lat);
    let [g50, g95, g99, gmax] = quantiles(&graphql_lat);
    let [b50, b95, b99, bmax] = quantiles(&both);
    let [f50, f95, f99, fmax] = quantiles(&published);
    let [a50, a95, a99, amax] = quantiles(&append_us);
    let q = |v: &[f64], i: usize| v.get(i).copied().unwrap_or(f64::NAN);
    let (saved, pubd) = (&run.saved_ms, &run.published_ms);
    let secs = run.append_secs;
    let achieved = run.appended as f64 / secs;
    let delivered_rate = run.delivered_during_appends as f64 / secs;
    let [
        rss_start,
        rss_started,
        rss_attached,
        rss_appended,
        rss_end,
        rss_peak,
    ] = run.rss;
    let verdict = if ok { "OK" } else { "FAILED" };
    let name = p.name;
    let (rate, writers) = (p.rate, p.writers.min(sse.len()));
    let (conns, per_conn) = (p.connections.min(sse.len()), p.subs_per_conn);
    let attach = p.flags.attach_concurrency.max(1);
    let (start_secs, attach_secs, drain) = (run.start_secs, run.attach_secs, run.drain_secs);
    let (appended, retries, failures) = (run.appended, run.retries, run.failures.len());
    let append_cost = run.append_cost.describe();
    // /proc counts CPU in 10 ms ticks: a drain shorter than a second says nothing.
    let drain_cost = if run.drain_cost.secs < 1.0 {
        format!("not measured (drain {:.2} s)", run.drain_cost.secs)
    } else {
        run.drain_cost.describe()
    };
    let ended = if run.all_ended {
        "every stream ended"
    } else {
        "NOT every stream ended within --converge-timeout"
    };
    let (sse_n, graphql_n) = (sse.len(), graphql.len());
    println!(
        "
== viewcast-bench {name} (postgres store) ==
  runs                {runs} runs x {events} events (the last COMPLETED), started in \
{start_secs:.2} s
  consumers           {sse_n} SSE + {graphql_n} GraphQL ({conns} connections x up to {per_conn} \
subscriptions), attached {attach} at a time and settled in {attach_secs:.2} s
  appends             target {rate}/s with {writers} writers, achieved {achieved:.0}/s: \
{appended} in {secs:.1} s; {retries} retries, {failures} failed
  append HTTP (ms)    p50 {a50:.1}  p95 {a95:.1}  p99 {a99:.1}  max {amax:.1}  (request -> \
response)
  delivered           {delivered_rate:.0} events/s to consumers during the appends; {delivered} of \
{expected} expected ({:.1} %); last stream ended {drain:.2} s after the last append ({ended})
  latency (ms)        append sent -> consumer received, p50 / p95 / p99 / max:
    SSE               {s50:.1} / {s95:.1} / {s99:.1} / {smax:.1}  ({} samples)
    GraphQL           {g50:.1} / {g95:.1} / {g99:.1} / {gmax:.1}  ({} samples)
    both              {b50:.1} / {b95:.1} / {b99:.1} / {bmax:.1}  ({} samples)
  sent -> saved       p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1} ms (store: created_at - \
sent_at_us)
  saved -> published  p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1} ms (store: published_at - \
created_at)
  published -> recv   p50 {f50:.1}  p95 {f95:.1}  p99 {f99:.1}  max {fmax:.1} ms (received - \
published_at, both consumers)
  store               {completed_runs}/{all_runs} runs completed with {events} events; {stored} \
events, {unpublished} unpublished, {outbox} outbox rows left
  CPU, appends        {append_cost}
  CPU, drain          {drain_cost}
  server RSS (MB)     start {rss_start:.1}  runs started {rss_started:.1}  consumers attached \
{rss_attached:.1}  appends done {rss_appended:.1}  end {rss_end:.1}  peak {rss_peak:.1}",
        100.0 * delivered as f64 / expected.max(1) as f64,
        sse_lat.len(),
        graphql_lat.len(),
        both.len(),
        q(saved, 0),
        q(saved, 1),
        q(saved, 2),
        q(saved, 3),
        q(pubd, 0),
        q(pubd, 1),
        q(pubd, 2),
        q(pubd, 3),
    );
    println!("  store statements    calls (per event), total time — appends and drain:");
    print_statements(&run.statements, (runs * events) as i64);
    println!(
        "  zero loss           {verdict}: {sse_ok}/{sse_n} SSE and {graphql_ok}/{graphql_n} \
GraphQL consumers got seqs 1..={events} once, in order, ending with COMPLETED; {problems} \
problems; {heartbeats} heartbeats"
    );
    let examples = all().flat_map(|c| &c.problems).take(5);
    for problem in examples.chain(run.failures.iter().take(5)) {
        println!("    {problem}");
    }
    let json = serde_json::json!({
        "scenario": name, "runs": runs, "events_per_run": events, "target_rate": rate, "writers": writers,
        "graphql_connections": conns, "subs_per_conn": per_conn, "attach_concurrency": attach,
        "start_secs": start_secs,
        "attach_secs": attach_secs, "appended": appended, "append_secs": secs, "achieved_rate": achieved,
        "retries": retries, "failed_appends": failures,
        "append_http_ms": {"p50": a50, "p95": a95, "p99": a99, "max": amax},
        "delivered": delivered, "expected": expected, "delivered_per_sec_during_appends": delivered_rate,
        "drain_secs": drain, "all_ended": run.all_ended,
        "latency_ms": {
            "sse": {"p50": s50, "p95": s95, "p99": s99, "max": smax, "samples": sse_lat.len()},
            "graphql": {"p50": g50, "p95": g95, "p99": g99, "max": gmax, "samples": graphql_lat.len()},
            "both": {"p50": b50, "p95": b95, "p99": b99, "max": bmax, "samples": both.len()}},
        "sent_to_saved_ms": saved, "saved_to_published_ms": pubd,
        "published_to_received_ms": {"p50": f50, "p95": f95, "p99": f99, "max": fmax},
        "store": {"completed_runs": completed_runs, "runs": all_runs, "events": stored,
            "unpublished": unpublished, "outbox": outbox},
        "cpu_appends": run.append_cost.json(), "cpu_drain": run.drain_cost.json(),
        "rss_mb": {"start": rss_start, "runs_started": rss_started, "attached": rss_attached,
            "appended": rss_appended, "end": rss_end, "peak": rss_peak},
        "consumers_complete": {"sse": sse_ok, "graphql": graphql_ok}, "problems": problems,
        "heartbeats": heartbeats, "ok": ok,
    });
    println!("{json}");
    ok
}

/// `slots`: many sources, a modest write rate spread over them; what PostgreSQL spends
/// decoding the WAL for the server, and how many slots and WAL senders it holds.
async fn slots_scenario(
    p: &Params,
    server: &ServerProc,
    upstream: &Upstream,
) -> anyhow::Result<bool> {
    let postmaster = upstream.postmaster.context("the postmaster's pid")?;
    let sql = pg(&upstream.url).await?;
    let count = |query: &'static str| {
        let sql = &sql;
        async move { anyhow::Ok(sql.query_one(query, &[]).await?.get::<_, i64>(0)) }
    };
    let slots = count("SELECT count(*) FROM pg_replication_slots").await?;
    let senders = count("SELECT count(*) FROM pg_stat_replication").await?;
    let sources = p.sources();
    eprintln!(
        "[{}] {sources} sources live; {} changes/s for {:.0} s …",
        p.name,
        p.rate,
        p.duration.as_secs_f64()
    );
    let writer = pg(&upstream.url).await?;
    let received_before = rows_received(server.addr).await;
    let meter = Meter::start(server.pid, postmaster);
    let started = Instant::now();
    let per_tick = (p.rate / 100).max(1) as usize;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut changes = 0usize;
    while started.elapsed() < p.duration {
        tick.tick().await;
        let batch = (0..per_tick).map(|i| {
            let n = changes + i;
            let statement = format!(
                "UPDATE bench{} SET value = value + 1, sent_at_us = {SENT_AT_US} WHERE id = {}",
                n % sources,
                1 + (n / sources) % p.rows as usize
            );
            let writer = &writer;
            async move { writer.batch_execute(&statement).await }
        });
        for result in futures::future::join_all(batch).await {
            result.context("write")?;
        }
        changes += per_tick;
    }
    let load = meter.read();
    // Every change reaches its source.
    let deadline = Instant::now() + Duration::from_secs(p.flags.converge_timeout);
    let received = loop {
        let received = rows_received(server.addr).await - received_before;
        if received >= changes as u64 || Instant::now() > deadline {
            break received;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let walsender = load
        .pg
        .iter()
        .find(|r| r.0 == "walsender")
        .map_or(0.0, |r| r.1);
    let pct = |s: f64| s / load.secs.max(1e-9) * 100.0;
    println!("\n== viewcast-bench slots ==");
    println!("  sources             {sources}, {} rows each", p.rows);
    println!("  PostgreSQL holds    {slots} replication slots, {senders} WAL senders");
    println!(
        "  load                {changes} changes over {:.1} s ({:.0}/s); {received} received by the server",
        load.secs,
        changes as f64 / load.secs
    );
    println!(
        "  WAL decoding        walsender {:.1} % of a core ({:.2} ms per change)",
        pct(walsender),
        walsender * 1000.0 / changes.max(1) as f64
    );
    println!("  CPU                 {}", load.describe());
    println!(
        "{}",
        serde_json::json!({
            "sources": sources, "slots": slots, "wal_senders": senders, "changes": changes,
            "received": received, "walsender_pct": pct(walsender), "cost": load.json(),
        })
    );
    Ok(received >= changes as u64)
}

/// Rows received by the server, all sources together.
async fn rows_received(addr: SocketAddr) -> u64 {
    let Ok((_, body)) = http_get(addr, "/metrics").await else {
        return 0;
    };
    body.lines()
        .filter(|l| l.starts_with("viewcast_source_changes_received_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<u64>().ok())
        .sum()
}

// ------------------------------------------------------------------------------- saturation

/// End-to-end latency above which a load counts as past saturation.
const SATURATED_P99_MS: f64 = 100.0;
/// The window a batched client asks for.
const SATURATE_WINDOW: &str = "max_ms: 50, max_rows: 1000";
/// Latency histogram: one bucket per millisecond up to this, then one for everything above.
const LATENCY_BUCKETS: usize = 10_000;

/// What the saturation clients count, shared by all of them.
struct Tally {
    /// Live updates received (UPDATE rows, in frames or windows).
    updates: AtomicU64,
    /// Frames received after the snapshot.
    frames: AtomicU64,
    /// Clients whose snapshot is complete.
    live: AtomicUsize,
    /// Subscriptions the server ended (`SUBSCRIPTION_ENDED`).
    ended: AtomicU64,
    /// Commit → received, per millisecond.
    latency: Vec<AtomicU64>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            updates: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            live: AtomicUsize::new(0),
            ended: AtomicU64::new(0),
            latency: (0..=LATENCY_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The latency counts so far.
    fn histogram(&self) -> Vec<u64> {
        self.latency.iter().map(|b| b.load(Relaxed)).collect()
    }
}

/// The `q` quantile (ms) of the latencies counted between two histograms.
fn quantile_between(before: &[u64], after: &[u64], q: f64) -> f64 {
    let counts: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (ms, n) in counts.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return ms as f64;
        }
    }
    LATENCY_BUCKETS as f64
}

/// What precedes a commit time in a frame.
const SENT: &str = r#""sent_at_us":""#;

/// A light client: one unfiltered subscription; it counts the updates in each frame and their
/// latency from the `sent_at_us` each carries, without parsing the JSON.
async fn saturation_client(
    addr: SocketAddr,
    batched: bool,
    tally: Arc<Tally>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut ws = open(addr, false).await?;
    let query = if batched {
        format!(
            "subscription {{ bench_batches(snapshot_end: true, {SATURATE_WINDOW}) {{ updates {{ {SELECTION} }} }} }}"
        )
    } else {
        format!("subscription {{ bench(snapshot_end: true) {{ {SELECTION} }} }}")
    };
    let message = serde_json::json!({"type": "subscribe", "id": "1", "payload": {"query": query}});
    ws.send(Message::Text(message.to_string().into())).await?;
    let mut live = false;
    loop {
        let text = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(_)) => continue,
                Some(Err(err)) => return Err(err.into()),
                None => bail!("connection lost"),
            },
        };
        let text = text.as_str();
        if text.contains("SUBSCRIPTION_ENDED") {
            tally.ended.fetch_add(1, Relaxed);
            return Ok(());
        }
        if !live {
            if text.contains("SNAPSHOT_END") {
                live = true;
                tally.live.fetch_add(1, Relaxed);
            }
            continue;
        }
        tally.frames.fetch_add(1, Relaxed);
        let now = now_us();
        let mut updates = 0;
        for (at, _) in text.match_indices(SENT) {
            let digits = &text[at + SENT.len()..];
            let end = digits.find('"').unwrap_or(0);
            if let Ok(sent) = digits[..end].parse::<i64>() {
                let ms = usize::try_from((now - sent).max(0) / 1000).unwrap_or(usize::MAX);
                tally.latency[ms.min(LATENCY_BUCKETS)].fetch_add(1, Relaxed);
                updates += 1;
            }
        }
        tally.updates.fetch_add(updates, Relaxed);
    }
}

/// One load step's figures.
struct LoadStep {
    rate: u32,
    delivered_per_s: f64,
    frames_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    server_cpu: f64,
}

/// Writes `rate` changes/s for `duration`, measuring what the clients receive meanwhile; then
/// waits until they have taken everything still in flight.
async fn load_step(
    standin: &StandIn,
    rows: &mut DirectRows,
    p: &Params,
    server: &ServerProc,
    tally: &Tally,
    rate: u32,
) -> LoadStep {
    let (updates, frames, hist) = (
        tally.updates.load(Relaxed),
        tally.frames.load(Relaxed),
        tally.histogram(),
    );
    let cpu = cpu_seconds(server.pid);
    let load = generate_direct(standin, p, rate, rows).await;
    let secs = load.elapsed.as_secs_f64();
    let step = LoadStep {
        rate,
        delivered_per_s: (tally.updates.load(Relaxed) - updates) as f64 / secs,
        frames_per_s: (tally.frames.load(Relaxed) - frames) as f64 / secs,
        p50_ms: quantile_between(&hist, &tally.histogram(), 0.5),
        p99_ms: quantile_between(&hist, &tally.histogram(), 0.99),
        server_cpu: (cpu_seconds(server.pid) - cpu) / secs,
    };
    // Drained: nothing more arrived for half a second (or 60 s passed).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = tally.updates.load(Relaxed);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = tally.updates.load(Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    step
}

/// Starts `clients` saturation clients and waits until each has its snapshot.
async fn start_clients(
    addr: SocketAddr,
    clients: usize,
    batched: bool,
    tally: &Arc<Tally>,
    stop: &CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<anyhow::Result<()>>>> {
    let mut tasks: Vec<JoinHandle<anyhow::Result<()>>> = (0..clients)
        .map(|_| {
            tokio::spawn(saturation_client(
                addr,
                batched,
                tally.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let started = Instant::now();
    while tally.live.load(Relaxed) < clients {
        if started.elapsed() > Duration::from_secs(120) {
            let mut failed = Vec::new();
            for task in tasks.iter_mut().filter(|t| t.is_finished()).take(3) {
                failed.push(format!(
                    "{:#}",
                    task.await?
                        .err()
                        .unwrap_or_else(|| anyhow::anyhow!("ended"))
                ));
            }
            bail!(
                "only {} of {clients} clients got their snapshot; clients that failed: {failed:?}",
                tally.live.load(Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(tasks)
}

/// For each client count and delivery mode: the load doubles until p99 passes 100 ms, then
/// five times the last load under it. Prints a table per configuration and one JSON line.
async fn saturate_scenario(
    p: &Params,
    server: &ServerProc,
    upstream: &Upstream,
) -> anyhow::Result<bool> {
    let standin = upstream
        .standin
        .as_ref()
        .context("saturate runs on a stand-in (--backend materialize or risingwave)")?;
    let counts = p.flags.connections.map_or(vec![100, 1_000], |n| vec![n]);
    let mut rows = DirectRows::new(p.rows);
    let mut json = Vec::new();
    let mut ok = true;
    println!("\n== viewcast-bench saturate ==");
    for clients in counts {
        for batched in [false, true] {
            let tally = Arc::new(Tally::new());
            let stop = CancellationToken::new();
            let tasks = start_clients(server.addr, clients, batched, &tally, &stop).await?;
            let mode = if batched {
                "batched"
            } else {
                "a frame per change"
            };
            println!("  {clients} clients, {mode}:");
            println!(
                "    {:>12} {:>14} {:>12} {:>9} {:>9} {:>11}",
                "changes/s", "delivered/s", "frames/s", "p50 ms", "p99 ms", "server CPU"
            );
            let print = |label: &str, s: &LoadStep| {
                println!(
                    "    {:>12} {:>14.0} {:>12.0} {:>9.0} {:>9.0} {:>10.0}%  {label}",
                    s.rate,
                    s.delivered_per_s,
                    s.frames_per_s,
                    s.p50_ms,
                    s.p99_ms,
                    s.server_cpu * 100.0
                );
            };
            // Start at 100,000 deliveries a second and double.
            let mut rate = (100_000 / clients).max(1) as u32;
            let mut best: Option<LoadStep> = None;
            loop {
                let measured = load_step(standin, &mut rows, p, server, &tally, rate).await;
                let under = measured.p99_ms < SATURATED_P99_MS;
                print(if under { "" } else { "past saturation" }, &measured);
                if !under || rate >= 1_000_000 {
                    break;
                }
                best = Some(measured);
                rate *= 2;
            }
            let Some(peak) = best else {
                println!("    saturated at the first load");
                stop.cancel();
                continue;
            };
            let overload = load_step(standin, &mut rows, p, server, &tally, peak.rate * 5).await;
            print("5x the peak's load", &overload);
            let ratio = overload.delivered_per_s / peak.delivered_per_s;
            let ended = tally.ended.load(Relaxed);
            println!(
                "    peak {:.0} updates/s at p99 {:.0} ms; at 5x its load {:.0}% of it; subscriptions ended: {ended}",
                peak.delivered_per_s,
                peak.p99_ms,
                ratio * 100.0
            );
            ok &= ended == 0;
            json.push(serde_json::json!({
                "clients": clients,
                "batched": batched,
                "peak_rate": peak.rate,
                "peak_delivered_per_s": peak.delivered_per_s,
                "peak_p99_ms": peak.p99_ms,
                "overload_delivered_per_s": overload.delivered_per_s,
                "overload_ratio": ratio,
                "ended": ended,
            }));
            stop.cancel();
            for task in tasks {
                let _ = task.await;
            }
        }
    }
    println!("{}", serde_json::Value::Array(json));
    Ok(ok)
}
