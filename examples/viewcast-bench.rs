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
//! Exit status: 0 when every client ends with the table's rows, 1 when one does not, 2 on error.

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
const UPDATE_SQL: &str = "UPDATE bench SET value = $1, \
     sent_at_us = (extract(epoch FROM clock_timestamp()) * 1000000)::bigint WHERE id = $2";
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
    /// 1,000 connections x 10 subscriptions matching nothing, 1,000 rows, 100 changes/s, 10 s.
    Idle(Flags),
    /// 20 clients, 10 of them pausing their reads for long stretches, 5,000 changes/s, 20 s.
    Overload(Flags),
    /// Materialize (stand-in): 100 clients over 10 filters, 10,000 rows, 10,000 changes/s, 20 s.
    Streaming(Flags),
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
}

/// Overrides of the scenario's parameters.
#[derive(Debug, Args)]
struct Flags {
    /// WebSocket connections (clients).
    #[arg(long, visible_alias = "clients")]
    connections: Option<usize>,
    /// Subscriptions per connection.
    #[arg(long)]
    subs_per_conn: Option<usize>,
    /// Distinct filters `{group_id: {_eq: k}}`, 0 for none; rows get `group_id = id % filters`.
    #[arg(long)]
    filters: Option<u32>,
    /// Rows in the source table.
    #[arg(long)]
    rows: Option<u32>,
    /// Target changes per second (one UPDATE per transaction).
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
    /// Writer connections of the load generator (each pipelines its statements).
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// Bytes of `payload` per row (stored and replicated, never selected).
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// Seconds the clients may take to reach the table's final state after the load.
    #[arg(long, default_value_t = 120)]
    converge_timeout: u64,
    /// Passed to the server as --history-batches.
    #[arg(long)]
    history_batches: Option<usize>,
    /// The viewcast binary (default: `viewcast` in the target directory of this example).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The server's log filter.
    #[arg(long, default_value = "warn")]
    server_log: String,
    /// The upstream database (default: postgres; materialize for `streaming`).
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
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
    flags: Flags,
}

impl Params {
    fn new(scenario: Scenario) -> Params {
        // name, flags, (connections, subs, filters, match nothing, rows, rate, seconds, slow)
        let (name, f, d) = match scenario {
            Scenario::Fanout(f) => ("fanout", f, (100, 1, 0, false, 1_000, 1_000, 20.0, 0)),
            Scenario::Filtered(f) => ("filtered", f, (100, 10, 10, false, 10_000, 1_000, 20.0, 0)),
            Scenario::Idle(f) => ("idle", f, (1_000, 10, 0, true, 1_000, 100, 10.0, 0)),
            Scenario::Overload(f) => ("overload", f, (20, 1, 0, false, 1_000, 5_000, 20.0, 10)),
            Scenario::Streaming(f) => {
                ("streaming", f, (100, 1, 10, false, 10_000, 10_000, 20.0, 0))
            }
        };
        let default_backend = if name == "streaming" {
            BackendKind::Materialize
        } else {
            BackendKind::Postgres
        };
        Params {
            name,
            connections: f.connections.unwrap_or(d.0).max(1),
            subs_per_conn: f.subs_per_conn.unwrap_or(d.1).max(1),
            filters: f.filters.unwrap_or(d.2),
            match_nothing: d.3,
            rows: f.rows.unwrap_or(d.4).max(1),
            rate: f.rate.unwrap_or(d.5),
            duration: Duration::from_secs_f64(f.duration.unwrap_or(d.6).max(0.0)),
            slow: f.slow.unwrap_or(d.7),
            backend: f.backend.unwrap_or(default_backend),
            flags: f,
        }
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
            eprintln!("FAILED: not every client ended with the table's rows");
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
    let mut cluster = None;
    let upstream = if p.backend == BackendKind::Postgres {
        eprintln!("[{}] starting PostgreSQL …", p.name);
        let started = PgCluster::start(ClusterOptions::default()).await?;
        let url = started.url("postgres");
        cluster = Some(started);
        Upstream {
            kind: p.backend,
            url,
            standin: None,
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
        }
    };
    let result = async {
        create_table(&upstream, p).await?;
        eprintln!("[{}] starting {} …", p.name, bin.display());
        let mut server = ServerProc::start(&bin, &upstream, p).await?;
        let outcome = tokio::select! {
            outcome = scenario(p, &server, &upstream) => outcome,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        server.stop().await;
        outcome
    }
    .await;
    if let Some(cluster) = cluster {
        cluster.stop().await.context("stop PostgreSQL")?;
    }
    result
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
}

impl ServerProc {
    async fn start(bin: &Path, upstream: &Upstream, p: &Params) -> anyhow::Result<ServerProc> {
        let config =
            std::env::temp_dir().join(format!("viewcast-bench-{}.yaml", std::process::id()));
        std::fs::write(
            &config,
            SCHEMA_YAML.replace("BACKEND", upstream.kind.name()),
        )?;
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
        if let Some(n) = p.flags.history_batches {
            command.args(["--history-batches", &n.to_string()]);
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
        let mut server = ServerProc {
            child,
            pid,
            addr,
            config,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("the server exited during start-up ({status})");
            }
            if matches!(http_get(addr, "/ready").await, Ok((200, _))) {
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
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
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
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the parenthesised command name come fields 3 (state) …; utime and stime are 14, 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    ticks as f64 / CLK_TCK
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
        return Ok(generate_direct(standin, p).await);
    }
    let url = &upstream.url;
    let writers = p.flags.writers.max(1);
    let rate = f64::from(p.rate) / writers as f64;
    let next_value = Arc::new(AtomicI64::new(1));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let client = pg(url).await?;
        let (duration, rows, groups, next) = (p.duration, p.rows, p.groups(), next_value.clone());
        tasks.push(tokio::spawn(async move {
            write(&client, rate, duration, rows, groups, &next, start).await
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

async fn write(
    client: &tokio_postgres::Client,
    rate: f64,
    duration: Duration,
    rows: u32,
    groups: u32,
    next_value: &AtomicI64,
    start: Instant,
) -> anyhow::Result<(u64, Vec<u64>)> {
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
            let (value, statement) = (next_value.fetch_add(1, Relaxed), &statement);
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

/// The stand-in's load: `rate` single-row update commits per second for `duration`, each
/// stamped with its commit time, written directly (no SQL to parse).
async fn generate_direct(standin: &StandIn, p: &Params) -> Load {
    let (payload, groups) = (p.flags.payload_bytes, p.groups());
    let mut values = vec![0i64; p.rows as usize + 1];
    let mut sent = vec![0i64; p.rows as usize + 1];
    let (mut done, mut per_group) = (0u64, vec![0u64; groups as usize]);
    let rate = f64::from(p.rate);
    let start = Instant::now();
    let mut next_value = 1i64;
    while start.elapsed() < p.duration {
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        if due <= done {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        for _ in done..due {
            let id = rand::rng().random_range(1..=p.rows);
            let old = bench_row(id, values[id as usize], payload, groups, sent[id as usize]);
            let now = now_us();
            values[id as usize] = next_value;
            sent[id as usize] = now;
            next_value += 1;
            let new = bench_row(id, values[id as usize], payload, groups, now);
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
    Ok(report(p, &phases, &finished))
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
