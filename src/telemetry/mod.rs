//! Metrics (Prometheus text exposition) and log set-up.
//!
//! Metrics are plain atomics owned by the component they describe and rendered on demand by
//! `/metrics`; labels are bounded (source names come from the configuration, never from rows
//! or clients). Names follow `viewcast_<thing>_<unit>[_total]`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Per-source figures, shared by the source's hub, feed and readers.
#[derive(Debug, Default)]
pub struct SourceMetrics {
    pub batches: Counter,
    pub rows_received: Counter,
    pub rows_published: Counter,
    pub snapshots: Counter,
    pub conflated: Counter,
    pub errors: Counter,
    pub reconnects: Counter,
    pub subscriptions: Gauge,
    pub cached_rows: Gauge,
    pub last_batch_unix_ms: Gauge,
    /// Milliseconds between the upstream commit and the hub applying it, last batch.
    pub lag_ms: Gauge,
}

/// Server-wide figures.
#[derive(Debug, Default)]
pub struct Metrics {
    pub connections: Gauge,
    pub connections_total: Counter,
    pub http_requests: Counter,
    pub protocol_errors: Counter,
    sources: std::sync::RwLock<Vec<(String, Arc<SourceMetrics>)>>,
}

impl Metrics {
    /// The metrics of `source`, created on first use.
    pub fn source(&self, source: &str) -> Arc<SourceMetrics> {
        let mut sources = self
            .sources
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, m)) = sources.iter().find(|(name, _)| name == source) {
            return m.clone();
        }
        let metrics = Arc::new(SourceMetrics::default());
        sources.push((source.to_owned(), metrics.clone()));
        metrics
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut single = |name: &str, kind: &str, help: &str, value: i128| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        single(
            "viewcast_ws_connections",
            "gauge",
            "Open WebSocket connections.",
            self.connections.get().into(),
        );
        single(
            "viewcast_ws_connections_total",
            "counter",
            "WebSocket connections accepted.",
            self.connections_total.get().into(),
        );
        single(
            "viewcast_http_requests_total",
            "counter",
            "GraphQL HTTP requests served.",
            self.http_requests.get().into(),
        );
        single(
            "viewcast_protocol_errors_total",
            "counter",
            "WebSocket protocol violations by clients.",
            self.protocol_errors.get().into(),
        );
        let sources = self
            .sources
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for &(name, kind, help, get) in SOURCE_FAMILIES {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (source, m) in sources.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{source=\"{}\"}} {}",
                    escape_label(source),
                    get(m)
                );
            }
        }
        out
    }
}

/// One per-source metric family: name, type, help, getter.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&SourceMetrics) -> i128,
);

const SOURCE_FAMILIES: &[Family] = &[
    (
        "viewcast_source_batches_total",
        "counter",
        "Batches published by the source hub.",
        |m| m.batches.get().into(),
    ),
    (
        "viewcast_source_changes_received_total",
        "counter",
        "Row changes received from the upstream feed.",
        |m| m.rows_received.get().into(),
    ),
    (
        "viewcast_source_changes_published_total",
        "counter",
        "Net row changes published by the hub.",
        |m| m.rows_published.get().into(),
    ),
    (
        "viewcast_source_snapshots_total",
        "counter",
        "Snapshots applied (initial and after reconnects).",
        |m| m.snapshots.get().into(),
    ),
    (
        "viewcast_source_conflated_changes_total",
        "counter",
        "Changes merged away for subscribers that fell behind.",
        |m| m.conflated.get().into(),
    ),
    (
        "viewcast_source_errors_total",
        "counter",
        "Feed and data errors.",
        |m| m.errors.get().into(),
    ),
    (
        "viewcast_source_reconnects_total",
        "counter",
        "Upstream reconnect attempts.",
        |m| m.reconnects.get().into(),
    ),
    (
        "viewcast_source_subscriptions",
        "gauge",
        "Active subscriptions.",
        |m| m.subscriptions.get().into(),
    ),
    (
        "viewcast_source_rows",
        "gauge",
        "Rows in the source cache.",
        |m| m.cached_rows.get().into(),
    ),
    (
        "viewcast_source_lag_milliseconds",
        "gauge",
        "Upstream commit to hub apply, last batch.",
        |m| m.lag_ms.get().into(),
    ),
    (
        "viewcast_source_last_batch_timestamp_milliseconds",
        "gauge",
        "Unix time of the last applied batch.",
        |m| m.last_batch_unix_ms.get().into(),
    ),
];

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Installs the tracing subscriber: `RUST_LOG`-style filter from `filter`, text or JSON lines.
pub fn init_logging(filter: &str, json: bool) {
    let env_filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
