//! Benchmarks of the streaming-database feeds (see BENCHMARKS.md):
//!
//! - `parse`: one thread decodes `SUBSCRIBE` COPY text for a 10-column source (the COPY
//!   decoder and the Materialize row protocol), then also applies it to a hub, and prints
//!   changes per second for each.
//! - `transport`: the two ways of reading `SUBSCRIBE` — `COPY (SUBSCRIBE …) TO STDOUT` and
//!   `DECLARE … CURSOR` + `FETCH` — against the wire-level stand-in (a test double): rows per
//!   second for a large snapshot, and commit → client latency for single-row commits.
//!
//! ```sh
//! cargo run --release --example feed-bench -- parse
//! cargo run --release --example feed-bench -- transport
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use futures::StreamExt as _;
use tokio_postgres::{NoTls, SimpleQueryMessage};
use viewcast::config::{
    Backend, ColumnDef, ColumnType, Envelope, FeedOptions, QualifiedName, SourceDef, StartMode,
};
use viewcast::feed::copytext::{CopyDecoder, encode_row};
use viewcast::feed::materialize::protocol::{Decoder, Output};
use viewcast::hub::{Hub, HubLimits};
use viewcast_standin::{Chunking, Options, StandIn};

#[derive(Parser)]
#[command(about = "viewcast feed benchmarks (see BENCHMARKS.md)")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Decode (and apply) SUBSCRIBE output on one thread.
    Parse {
        /// Changes to decode.
        #[arg(long, default_value_t = 2_000_000)]
        changes: usize,
        /// Changes per timestamp (batch).
        #[arg(long, default_value_t = 100)]
        per_timestamp: usize,
        /// Distinct keys (the hub's cache size).
        #[arg(long, default_value_t = 100_000)]
        keys: usize,
    },
    /// COPY against DECLARE/FETCH on the stand-in.
    Transport {
        /// Rows of the snapshot read both ways.
        #[arg(long, default_value_t = 200_000)]
        rows: usize,
        /// Single-row commits whose latency is measured.
        #[arg(long, default_value_t = 2_000)]
        commits: usize,
        /// Commits per second.
        #[arg(long, default_value_t = 500)]
        rate: u32,
    },
}

fn source() -> Arc<SourceDef> {
    let column = |name: &str, ty| ColumnDef {
        name: name.into(),
        sql_name: name.into(),
        ty,
    };
    Arc::new(SourceDef {
        name: "bench".into(),
        relation: QualifiedName {
            schema: None,
            name: "bench".into(),
        },
        backend: Backend::Materialize,
        start: StartMode::Eager,
        columns: vec![
            column("id", ColumnType::BigInt),
            column("symbol", ColumnType::String),
            column("price", ColumnType::Numeric),
            column("quantity", ColumnType::Integer),
            column("side", ColumnType::String),
            column("venue", ColumnType::String),
            column("fee", ColumnType::Float),
            column("active", ColumnType::Boolean),
            column("traded_at", ColumnType::Timestamp),
            column("note", ColumnType::String),
        ],
        primary_key: vec![0],
        feed: FeedOptions::default(),
    })
}

/// COPY text of `changes` upsert rows, `per_timestamp` per timestamp, then a progress row.
fn subscribe_output(changes: usize, per_timestamp: usize, keys: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(changes * 120);
    let progress = |ts: &str, bytes: &mut Vec<u8>| {
        let mut row = vec![Some(ts), Some("t")];
        row.extend(std::iter::repeat_n(None, 11));
        encode_row(&row, bytes);
    };
    progress("1", &mut bytes);
    progress("2", &mut bytes);
    for i in 0..changes {
        let ts = (3 + i / per_timestamp.max(1)).to_string();
        let id = (i % keys).to_string();
        let price = format!("{}.{:04}", 100 + i % 900, i % 10_000);
        let quantity = (i % 5_000).to_string();
        let fee = format!("0.{}", i % 97);
        encode_row(
            &[
                Some(&ts),
                Some("f"),
                Some("upsert"),
                Some(&id),
                Some("AAPL"),
                Some(&price),
                Some(&quantity),
                Some(if i % 2 == 0 { "buy" } else { "sell" }),
                Some("XNAS"),
                Some(&fee),
                Some("t"),
                Some("2026-11-30 12:34:56.789"),
                Some("a note with a\ttab"),
            ],
            &mut bytes,
        );
    }
    progress(
        &(4 + changes / per_timestamp.max(1)).to_string(),
        &mut bytes,
    );
    bytes
}

fn parse(changes: usize, per_timestamp: usize, keys: usize) {
    let source = source();
    let bytes = subscribe_output(changes, per_timestamp, keys);
    println!(
        "input: {changes} changes of a 10-column source, {per_timestamp} per timestamp, {keys} keys, {:.1} MB of COPY text",
        bytes.len() as f64 / 1e6
    );
    // 64 KB chunks, as a socket would deliver them.
    let chunks: Vec<&[u8]> = bytes.chunks(64 * 1024).collect();
    for apply in [false, true] {
        let hub = Hub::new(
            source.clone(),
            HubLimits::default(),
            Arc::new(viewcast::telemetry::SourceMetrics::default()),
        );
        let mut decoder = Decoder::new(source.clone(), Envelope::Upsert, None);
        let mut copy = CopyDecoder::new();
        let mut changes_out = 0usize;
        let start = Instant::now();
        for chunk in &chunks {
            copy.feed(chunk, |fields| {
                decoder.row(fields, &mut |output| {
                    if let Output::Event(event) = output {
                        if let viewcast::feed::FeedEvent::Batch(batch) = &event {
                            changes_out += batch.changes.len();
                        }
                        if apply {
                            hub.apply(event);
                        }
                    }
                })
            })
            .expect("valid input");
        }
        let secs = start.elapsed().as_secs_f64();
        let what = if apply {
            "decode + apply to the hub"
        } else {
            "decode (COPY text + SUBSCRIBE protocol)"
        };
        println!(
            "{what:<42} {changes_out} changes in {secs:.3} s: {:.0} changes/s, {:.0} MB/s",
            changes_out as f64 / secs,
            bytes.len() as f64 / 1e6 / secs
        );
    }
}

async fn connect(standin: &StandIn) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&standin.url(), NoTls)
        .await
        .expect("connect to the stand-in");
    tokio::spawn(connection);
    client
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn quantiles(mut us: Vec<i64>) -> String {
    us.sort_unstable();
    let q = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
        q(0.5),
        q(0.99),
        q(1.0),
        us.len()
    )
}

// One measurement after the other, as the printed report reads.
#[allow(clippy::too_many_lines)]
async fn transport(rows: usize, commits: usize, rate: u32) {
    let options = Options {
        tick: Duration::ZERO,
        chunking: Chunking::PerRow,
        ..Options::default()
    };
    let standin = StandIn::start(options).await.expect("stand-in");
    let sql = connect(&standin).await;
    sql.batch_execute("CREATE TABLE t (id bigint, sent_us bigint, note text)")
        .await
        .expect("create");
    let changes: Vec<(viewcast_standin::Row, i64)> = (0..rows)
        .map(|i| {
            (
                vec![
                    Some(i.to_string()),
                    Some("0".into()),
                    Some("snapshot row".into()),
                ],
                1,
            )
        })
        .collect();
    standin.write("t", changes);
    println!(
        "stand-in (a test double; tick 0: a commit is visible at once), {rows}-row snapshot, then {commits} single-row commits at {rate}/s"
    );

    // Throughput: the snapshot, both ways.
    let copy_client = connect(&standin).await;
    let start = Instant::now();
    let mut stream = Box::pin(
        copy_client
            .copy_out("COPY (SUBSCRIBE t WITH (PROGRESS)) TO STDOUT")
            .await
            .expect("copy"),
    );
    let mut copy = CopyDecoder::new();
    let mut seen = 0usize;
    let mut progress = 0;
    while progress < 2 {
        let chunk = stream.next().await.expect("open").expect("chunk");
        copy.feed(&chunk, |fields| {
            if fields.get(1)? == Some("t") {
                progress += 1;
            } else {
                seen += 1;
            }
            Ok::<(), viewcast::feed::copytext::CopyError>(())
        })
        .expect("decode");
    }
    let copy_secs = start.elapsed().as_secs_f64();
    println!(
        "snapshot via COPY:          {seen} rows in {copy_secs:.3} s: {:.0} rows/s",
        seen as f64 / copy_secs
    );
    let fetch_client = connect(&standin).await;
    let start = Instant::now();
    fetch_client
        .batch_execute("BEGIN; DECLARE c CURSOR FOR SUBSCRIBE t WITH (PROGRESS)")
        .await
        .expect("declare");
    let mut seen_fetch = 0usize;
    let mut progress = 0;
    while progress < 2 {
        for message in fetch_client
            .simple_query("FETCH ALL c WITH (timeout = '1s')")
            .await
            .expect("fetch")
        {
            if let SimpleQueryMessage::Row(row) = message {
                if row.get(1) == Some("t") {
                    progress += 1;
                } else {
                    seen_fetch += 1;
                }
            }
        }
    }
    let fetch_secs = start.elapsed().as_secs_f64();
    println!(
        "snapshot via DECLARE/FETCH: {seen_fetch} rows in {fetch_secs:.3} s: {:.0} rows/s",
        seen_fetch as f64 / fetch_secs
    );

    // Latency: single-row commits, read both ways at once.
    let writer = tokio::spawn({
        let sql = connect(&standin).await;
        async move {
            let start = Instant::now();
            for i in 0..commits {
                let due = start + Duration::from_secs_f64(i as f64 / f64::from(rate));
                tokio::time::sleep_until(due.into()).await;
                sql.batch_execute(&format!(
                    "INSERT INTO t VALUES ({}, {}, 'live')",
                    rows + i,
                    now_us()
                ))
                .await
                .expect("insert");
            }
        }
    });
    let copy_latency = tokio::spawn(async move {
        let mut latencies = Vec::new();
        let mut copy = CopyDecoder::new();
        while latencies.len() < commits {
            let chunk = stream.next().await.expect("open").expect("chunk");
            let now = now_us();
            copy.feed(&chunk, |fields| {
                if fields.get(1)? == Some("f") {
                    let sent: i64 = fields.get(4)?.unwrap_or("0").parse().unwrap_or(0);
                    latencies.push(now - sent);
                }
                Ok::<(), viewcast::feed::copytext::CopyError>(())
            })
            .expect("decode");
        }
        latencies
    });
    let fetch_latency = tokio::spawn(async move {
        let mut latencies = Vec::new();
        while latencies.len() < commits {
            let messages = fetch_client
                .simple_query("FETCH ALL c WITH (timeout = '1s')")
                .await
                .expect("fetch");
            let now = now_us();
            for message in messages {
                if let SimpleQueryMessage::Row(row) = message
                    && row.get(1) == Some("f")
                {
                    let sent: i64 = row.get(4).unwrap_or("0").parse().unwrap_or(0);
                    latencies.push(now - sent);
                }
            }
        }
        latencies
    });
    writer.await.expect("writer");
    println!(
        "commit → client via COPY:          {}",
        quantiles(copy_latency.await.expect("copy"))
    );
    println!(
        "commit → client via DECLARE/FETCH: {}",
        quantiles(fetch_latency.await.expect("fetch"))
    );
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    match Cli::parse().mode {
        Mode::Parse {
            changes,
            per_timestamp,
            keys,
        } => parse(changes, per_timestamp, keys),
        Mode::Transport {
            rows,
            commits,
            rate,
        } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(transport(rows, commits, rate));
        }
    }
}
