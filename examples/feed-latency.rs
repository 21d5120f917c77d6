//! Commit → consumer latency of the PostgreSQL change feed: streaming logical replication
//! (`pgwire-replication`, pgoutput) against SQL-level slot polling
//! (`pg_logical_slot_get_binary_changes`, pgoutput) at several poll intervals.
//!
//! Run: `cargo run --release --example feed-latency`
//!
//! It starts a private PostgreSQL (loopback only), creates `t(id, v, sent_at_us)` and a
//! publication, and for every (consumer, write rate) pair commits single-row UPDATEs at a
//! steady rate for a few seconds. Each UPDATE stamps `sent_at_us` with the server's
//! `clock_timestamp()` (same host clock as this process). The consumer decodes the pgoutput
//! Update message, reads `sent_at_us` from the new tuple, and records `now - sent_at_us` at
//! the transaction's Commit event (streaming) or when the poll that returned it completed
//! (polling). Cost is the CPU time (utime+stime from /proc) of the consuming backend (the
//! walsender, or the polling session's backend) and of all PostgreSQL processes together.
//!
//! Environment knobs: `FEED_LATENCY_SECS` (seconds of writing per run, default 5),
//! `FEED_LATENCY_RATES` (comma-separated commits/s, default `200,2000`),
//! `FEED_LATENCY_POLL_MS` (comma-separated poll intervals, default `10,50,100`).

use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use pgwire_replication::{ReplicationClient, ReplicationConfig, ReplicationEvent};
use tokio::time::MissedTickBehavior;
use tokio_postgres::{Client, NoTls};
use viewcast::feed::postgres::pgoutput;
use viewcast::pgcluster::{ClusterOptions, PgCluster};

const DATABASE: &str = "latency";
const PUBLICATION: &str = "latency_pub";
/// Rows the writer cycles through (one row per UPDATE).
const ROWS: i32 = 1000;
/// How long a consumer may take to catch up after the writer stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug)]
enum Consumer {
    Streaming,
    Polling { interval: Duration },
}

impl Consumer {
    fn label(self) -> String {
        match self {
            Self::Streaming => "streaming (pgwire-replication)".to_owned(),
            Self::Polling { interval } => {
                format!("poll get_binary_changes {} ms", interval.as_millis())
            }
        }
    }
}

/// One measured run.
struct Outcome {
    consumer: Consumer,
    target_rate: u32,
    achieved_rate: f64,
    committed: u64,
    /// Latencies in microseconds, one per received transaction.
    latencies_us: Vec<i64>,
    consumer_cpu: Duration,
    postgres_cpu: Duration,
    wall: Duration,
    polls: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let secs: u64 = env_or("FEED_LATENCY_SECS", "5")
        .parse()
        .context("FEED_LATENCY_SECS")?;
    let rates = parse_list("FEED_LATENCY_RATES", "200,2000")?;
    let polls = parse_list("FEED_LATENCY_POLL_MS", "10,50,100")?;

    let cluster = PgCluster::start(ClusterOptions::default())
        .await
        .context("start postgres")?;
    // Every exit path below goes through `cluster.stop()`; a panic drops the cluster, whose
    // Drop shuts the server down as well.
    let outcome = tokio::select! {
        r = run(&cluster, Duration::from_secs(secs), &rates, &polls) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    let stopped = cluster.stop().await.context("stop postgres");
    let table = outcome?;
    stopped?;
    print!("{table}");
    Ok(())
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn parse_list(name: &str, default: &str) -> Result<Vec<u32>> {
    env_or(name, default)
        .split(',')
        .map(|s| s.trim().parse().with_context(|| format!("{name}: {s:?}")))
        .collect()
}

async fn run(cluster: &PgCluster, secs: Duration, rates: &[u32], polls: &[u32]) -> Result<String> {
    cluster.create_database(DATABASE).await?;
    let setup = connect(cluster).await?;
    setup
        .batch_execute(&format!(
            "CREATE TABLE t (id int PRIMARY KEY, v bigint NOT NULL, sent_at_us bigint NOT NULL);
             INSERT INTO t SELECT g, 0, 0 FROM generate_series(1, {ROWS}) g;
             CREATE PUBLICATION {PUBLICATION} FOR TABLE t;"
        ))
        .await?;
    let postmaster = cluster
        .pid()
        .ok_or_else(|| anyhow!("postgres not running"))?;
    let ticks = clock_ticks()?;

    let mut consumers = vec![Consumer::Streaming];
    consumers.extend(polls.iter().map(|&ms| Consumer::Polling {
        interval: Duration::from_millis(u64::from(ms)),
    }));
    let mut outcomes = Vec::new();
    for &rate in rates {
        for &consumer in &consumers {
            eprintln!("run: {} at {rate}/s for {secs:?}", consumer.label());
            let outcome = match consumer {
                Consumer::Streaming => {
                    measure_streaming(cluster, &setup, postmaster, ticks, rate, secs).await?
                }
                Consumer::Polling { interval } => {
                    measure_polling(cluster, &setup, postmaster, ticks, rate, secs, interval)
                        .await?
                }
            };
            outcomes.push(outcome);
        }
    }
    Ok(render(&outcomes, secs))
}

async fn connect(cluster: &PgCluster) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(&cluster.url(DATABASE), NoTls).await?;
    // Ends when the client is dropped, or with an error when the server shuts down at exit
    // (then the query that needed it has already reported the failure).
    tokio::spawn(connection);
    Ok(client)
}

/// The writer: single-row autocommit UPDATEs at `rate` per second for `secs`. Pacing follows
/// a schedule (commit n is due at start + n/rate), so a late commit is followed by catch-up
/// commits rather than lowering the rate. Returns (commits, elapsed) and the client, whose
/// backend must outlive the CPU measurement (an exited backend drops out of the sum).
async fn write(client: Client, rate: u32, secs: Duration) -> Result<(u64, Duration, Client)> {
    let stmt = client
        .prepare(
            "UPDATE t SET v = v + 1, \
             sent_at_us = (extract(epoch from clock_timestamp()) * 1e6)::bigint \
             WHERE id = $1",
        )
        .await?;
    let total = u64::from(rate) * secs.as_secs();
    let period = Duration::from_secs(1) / rate;
    let start = tokio::time::Instant::now();
    for n in 0..total {
        let due = start + period * u32::try_from(n)?;
        tokio::time::sleep_until(due).await;
        let id = i32::try_from(n % u64::from(ROWS.unsigned_abs()))? + 1;
        client.execute(&stmt, &[&id]).await?;
    }
    Ok((total, start.elapsed(), client))
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

async fn measure_streaming(
    cluster: &PgCluster,
    setup: &Client,
    postmaster: u32,
    ticks: u64,
    rate: u32,
    secs: Duration,
) -> Result<Outcome> {
    let slot = format!("lat_stream_{rate}");
    setup
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await?;
    let config = ReplicationConfig::new("127.0.0.1", "postgres", "", DATABASE, &slot, PUBLICATION)
        .with_port(cluster.port())
        .with_application_name("feed-latency")
        .with_status_interval(Duration::from_secs(1));
    let mut repl = ReplicationClient::connect_gated(config.clone()).await?;
    repl.start().await?;
    repl.wait_started().await?;
    let walsender: i32 = setup
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'walsender' \
             AND application_name = 'feed-latency'",
            &[],
        )
        .await?
        .get(0);
    let walsender = u32::try_from(walsender)?;

    let writer = connect(cluster).await?;
    let cpu_before = (proc_cpu(walsender, ticks)?, cluster_cpu(postmaster, ticks)?);
    let wall = Instant::now();
    let mut writer = tokio::spawn(write(writer, rate, secs));
    let mut latencies = Vec::new();
    let mut pending: Vec<i64> = Vec::new();
    let mut written: Option<(u64, Duration, Client)> = None;
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    loop {
        if let Some((total, _, _)) = written
            && latencies.len() as u64 >= total
        {
            break;
        }
        let event = tokio::select! {
            done = &mut writer, if written.is_none() => {
                written = Some(done??);
                drain_deadline = Some(tokio::time::Instant::now() + DRAIN_TIMEOUT);
                continue;
            }
            () = sleep_until_opt(drain_deadline) => {
                eprintln!("  streaming: drain timed out");
                break;
            }
            event = repl.recv() => event?.ok_or_else(|| anyhow!("replication ended"))?,
        };
        match event {
            ReplicationEvent::XLogData { data, .. } => {
                if let Some(sent) = sent_at_from_update(&data) {
                    pending.push(sent);
                }
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                let now = now_us();
                latencies.extend(pending.drain(..).map(|sent| now - sent));
                repl.update_applied_lsn(end_lsn);
            }
            ReplicationEvent::KeepAlive { wal_end, .. } if pending.is_empty() => {
                repl.update_applied_lsn(wal_end);
            }
            _ => {}
        }
    }
    let wall = wall.elapsed();
    let cpu_after = (proc_cpu(walsender, ticks)?, cluster_cpu(postmaster, ticks)?);
    repl.shutdown().await?;
    // The walsender releases the slot only as it exits, after `shutdown` returned: drop the
    // slot with the replication command that waits for that (on a gated session, which ends
    // when dropped without starting).
    let mut dropper = ReplicationClient::connect_gated(config).await?;
    dropper
        .simple_query(&format!("DROP_REPLICATION_SLOT {slot} WAIT"))
        .await?;
    let (committed, elapsed, writer) = written.ok_or_else(|| anyhow!("writer did not finish"))?;
    drop(writer);
    Ok(Outcome {
        consumer: Consumer::Streaming,
        target_rate: rate,
        achieved_rate: committed as f64 / elapsed.as_secs_f64(),
        committed,
        latencies_us: latencies,
        consumer_cpu: cpu_after.0.saturating_sub(cpu_before.0),
        postgres_cpu: cpu_after.1.saturating_sub(cpu_before.1),
        wall,
        polls: 0,
    })
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn measure_polling(
    cluster: &PgCluster,
    setup: &Client,
    postmaster: u32,
    ticks: u64,
    rate: u32,
    secs: Duration,
    interval: Duration,
) -> Result<Outcome> {
    let slot = format!("lat_poll_{rate}_{}", interval.as_millis());
    setup
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await?;
    let poller = connect(cluster).await?;
    let backend: i32 = poller
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    let backend = u32::try_from(backend)?;
    let poll = poller
        .prepare(&format!(
            "SELECT data FROM pg_logical_slot_get_binary_changes($1, NULL, NULL, \
             'proto_version', '1', 'publication_names', '{PUBLICATION}')"
        ))
        .await?;

    let writer = connect(cluster).await?;
    let cpu_before = (proc_cpu(backend, ticks)?, cluster_cpu(postmaster, ticks)?);
    let wall = Instant::now();
    let mut writer = tokio::spawn(write(writer, rate, secs));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut latencies = Vec::new();
    let mut written: Option<(u64, Duration, Client)> = None;
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let mut polls = 0u64;
    loop {
        if let Some((total, _, _)) = written
            && latencies.len() as u64 >= total
        {
            break;
        }
        tokio::select! {
            done = &mut writer, if written.is_none() => {
                written = Some(done??);
                drain_deadline = Some(tokio::time::Instant::now() + DRAIN_TIMEOUT);
                continue;
            }
            () = sleep_until_opt(drain_deadline) => {
                eprintln!("  polling: drain timed out");
                break;
            }
            _ = ticker.tick() => {}
        }
        let rows = poller.query(&poll, &[&slot]).await?;
        let now = now_us();
        polls += 1;
        for row in rows {
            let data: &[u8] = row.get(0);
            if let Some(sent) = sent_at_from_update(data) {
                latencies.push(now - sent);
            }
        }
    }
    let wall = wall.elapsed();
    let cpu_after = (proc_cpu(backend, ticks)?, cluster_cpu(postmaster, ticks)?);
    drop(poller);
    setup
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await?;
    let (committed, elapsed, writer) = written.ok_or_else(|| anyhow!("writer did not finish"))?;
    drop(writer);
    Ok(Outcome {
        consumer: Consumer::Polling { interval },
        target_rate: rate,
        achieved_rate: committed as f64 / elapsed.as_secs_f64(),
        committed,
        latencies_us: latencies,
        consumer_cpu: cpu_after.0.saturating_sub(cpu_before.0),
        postgres_cpu: cpu_after.1.saturating_sub(cpu_before.1),
        wall,
        polls,
    })
}

/// `sent_at_us` (third column) of the new tuple of a pgoutput Update message, or `None` for
/// any other message; decoded with viewcast's own pgoutput decoder.
fn sent_at_from_update(msg: &[u8]) -> Option<i64> {
    match pgoutput::decode(msg).ok()? {
        pgoutput::Message::Update(update) => match update.new.0.get(2)? {
            pgoutput::TupleValue::Text(text) => text.parse().ok(),
            _ => None,
        },
        _ => None,
    }
}

/// Clock ticks per second for /proc/<pid>/stat times.
fn clock_ticks() -> Result<u64> {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("run getconf CLK_TCK")?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("parse getconf CLK_TCK")
}

/// (ppid, utime + stime) of a process from /proc/<pid>/stat.
fn proc_stat(pid: u32) -> Result<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces; the fields after it are fixed.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("bad /proc/{pid}/stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // fields[0] is state (field 3): ppid = field 4, utime = 14, stime = 15.
    let parent = fields.get(1).ok_or_else(|| anyhow!("no ppid"))?.parse()?;
    let utime: u64 = fields.get(11).ok_or_else(|| anyhow!("no utime"))?.parse()?;
    let stime: u64 = fields.get(12).ok_or_else(|| anyhow!("no stime"))?.parse()?;
    Ok((parent, utime + stime))
}

fn ticks_to_duration(t: u64, ticks: u64) -> Duration {
    Duration::from_micros(t * 1_000_000 / ticks)
}

fn proc_cpu(pid: u32, ticks: u64) -> Result<Duration> {
    Ok(ticks_to_duration(proc_stat(pid)?.1, ticks))
}

/// CPU of the postmaster and all its children (backends, walsenders, background workers).
fn cluster_cpu(postmaster: u32, ticks: u64) -> Result<Duration> {
    let mut total = proc_stat(postmaster)?.1;
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes may exit while we scan.
        if let Ok((ppid, t)) = proc_stat(pid)
            && ppid == postmaster
        {
            total += t;
        }
    }
    Ok(ticks_to_duration(total, ticks))
}

fn percentile(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

fn render(outcomes: &[Outcome], secs: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nfeed latency: commit (sent_at_us) -> consumer, single-row UPDATE transactions, {}s per run",
        secs.as_secs()
    );
    let _ = writeln!(
        out,
        "| consumer | target/s | achieved/s | received/committed | p50 ms | p90 ms | p99 ms | max ms | polls | consumer backend CPU | all postgres CPU |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
    for o in outcomes {
        let mut sorted = o.latencies_us.clone();
        sorted.sort_unstable();
        let wall = o.wall.as_secs_f64();
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {}/{} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.0} ms ({:.1}% of a core) | {:.0} ms ({:.1}%) |",
            o.consumer.label(),
            o.target_rate,
            o.achieved_rate,
            o.latencies_us.len(),
            o.committed,
            percentile(&sorted, 50.0),
            percentile(&sorted, 90.0),
            percentile(&sorted, 99.0),
            sorted.last().map_or(f64::NAN, |&m| m as f64 / 1000.0),
            o.polls,
            o.consumer_cpu.as_secs_f64() * 1000.0,
            o.consumer_cpu.as_secs_f64() / wall * 100.0,
            o.postgres_cpu.as_secs_f64() * 1000.0,
            o.postgres_cpu.as_secs_f64() / wall * 100.0,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_update_new_tuple() {
        let mut msg = vec![b'U', 0, 0, 0, 42, b'N', 0, 3];
        for value in ["7", "1", "123456"] {
            msg.push(b't');
            msg.extend_from_slice(&u32::try_from(value.len()).unwrap().to_be_bytes());
            msg.extend_from_slice(value.as_bytes());
        }
        assert_eq!(sent_at_from_update(&msg), Some(123_456));
        assert_eq!(sent_at_from_update(b"C"), None);
    }
}
