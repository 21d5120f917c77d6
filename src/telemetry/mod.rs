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

/// Upper bounds (seconds) of the delay histograms' buckets: fine around the milliseconds a live
/// update should take, coarse beyond.
const DELAY_BUCKETS: [f64; 18] = [
    0.000_25, 0.000_5, 0.001, 0.002, 0.003, 0.005, 0.007_5, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A distribution of durations over fixed buckets (Prometheus histogram).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last counts those above every bound.
    buckets: [AtomicU64; DELAY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, duration: std::time::Duration) {
        let seconds = duration.as_secs_f64();
        let index = DELAY_BUCKETS.partition_point(|&bound| bound < seconds);
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(duration.as_micros() as u64, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket bound (the last is `+Inf`), and the sum in seconds.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, f64) {
        let mut total = 0;
        let mut out = Vec::with_capacity(self.buckets.len());
        for (i, count) in self.buckets.iter().enumerate() {
            total += count.load(Ordering::Relaxed);
            out.push((
                DELAY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY),
                total,
            ));
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (out, sum)
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
    /// Views evaluated against a batch (a view a batch cannot concern is skipped).
    pub view_evaluations: Counter,
    pub errors: Counter,
    /// Materialize: keys with more than one row at a timestamp (not applied).
    pub key_violations: Counter,
    pub reconnects: Counter,
    /// Sessions that continued from where the previous one stopped (no snapshot).
    pub resumes: Counter,
    pub subscriptions: Gauge,
    pub cached_rows: Gauge,
    pub last_batch_unix_ms: Gauge,
    /// Milliseconds between the upstream commit and the hub applying it, last batch.
    pub lag_ms: Gauge,
    /// Upstream commit → hub apply, per batch (the database's and the feed's share of latency).
    pub commit_delay: Histogram,
    /// Hub apply → WebSocket frame flushed, per delivered live update frame (viewcast's share).
    pub delivery_delay: Histogram,
}

/// Runs on this server.
#[derive(Debug, Default)]
pub struct RunMetrics {
    pub appended: Counter,
    pub published: Counter,
    /// Store queries that read run events for the API (one per page of runs, not per run).
    pub event_reads: Counter,
    /// `runs` subscriptions ended because they fell behind the status broadcast.
    pub status_lag: Counter,
    pub consumers: Gauge,
    pub publishing: Gauge,
}

/// Server-wide figures.
#[derive(Debug, Default)]
pub struct Metrics {
    pub connections: Gauge,
    pub connections_total: Counter,
    pub http_requests: Counter,
    pub protocol_errors: Counter,
    pub runs: Arc<RunMetrics>,
    /// Requests refused by a limit (`crate::limits`), per limit.
    pub limits: Arc<crate::limits::Rejections>,
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
    // One call per family, in exposition order.
    #[allow(clippy::too_many_lines)]
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
        single(
            "viewcast_run_events_appended_total",
            "counter",
            "Run events appended through this server.",
            self.runs.appended.get().into(),
        );
        single(
            "viewcast_run_events_published_total",
            "counter",
            "Run events this server's outbox publisher published (one server publishes at a time).",
            self.runs.published.get().into(),
        );
        single(
            "viewcast_run_event_reads_total",
            "counter",
            "Store queries that read run events for the API (a page of runs reads its events in one).",
            self.runs.event_reads.get().into(),
        );
        single(
            "viewcast_run_status_lagged_total",
            "counter",
            "runs subscriptions ended (SUBSCRIPTION_ENDED) because they fell behind the status changes.",
            self.runs.status_lag.get().into(),
        );
        single(
            "viewcast_run_consumers",
            "gauge",
            "Open run event streams (GraphQL subscriptions and SSE).",
            self.runs.consumers.get().into(),
        );
        single(
            "viewcast_run_publisher",
            "gauge",
            "1 while this server is the one that publishes run events.",
            self.runs.publishing.get().into(),
        );
        let name = "viewcast_limit_rejections_total";
        let _ = writeln!(
            out,
            "# HELP {name} Requests refused by a limit.\n# TYPE {name} counter"
        );
        for limit in crate::limits::Limit::ALL {
            let _ = writeln!(
                out,
                "{name}{{limit=\"{}\"}} {}",
                limit.label(),
                self.limits.get(limit)
            );
        }
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
        for (name, help, get) in HISTOGRAMS {
            render_histogram(&mut out, name, help, &sources, *get);
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
        "viewcast_source_view_evaluations_total",
        "counter",
        "Subscription views evaluated against a batch; views indexed by an equality the batch cannot meet are skipped.",
        |m| m.view_evaluations.get().into(),
    ),
    (
        "viewcast_source_errors_total",
        "counter",
        "Feed and data errors.",
        |m| m.errors.get().into(),
    ),
    (
        "viewcast_source_key_violations_total",
        "counter",
        "Keys the upstream reported more than one row for at one timestamp (not applied).",
        |m| m.key_violations.get().into(),
    ),
    (
        "viewcast_source_reconnects_total",
        "counter",
        "Upstream reconnect attempts.",
        |m| m.reconnects.get().into(),
    ),
    (
        "viewcast_source_resumes_total",
        "counter",
        "Upstream sessions that continued where the last one stopped, without a snapshot.",
        |m| m.resumes.get().into(),
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

/// Per-source histograms: name, help, getter.
type HistogramFamily = (&'static str, &'static str, fn(&SourceMetrics) -> &Histogram);

const HISTOGRAMS: &[HistogramFamily] = &[
    (
        "viewcast_source_commit_delay_seconds",
        "From the upstream commit (its timestamp) to the hub applying the batch.",
        |m| &m.commit_delay,
    ),
    (
        "viewcast_source_delivery_delay_seconds",
        "From the hub applying a batch to the WebSocket frame carrying one of its changes being flushed.",
        |m| &m.delivery_delay,
    ),
];

fn render_histogram(
    out: &mut String,
    name: &str,
    help: &str,
    sources: &[(String, Arc<SourceMetrics>)],
    get: fn(&SourceMetrics) -> &Histogram,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (source, m) in sources {
        let source = escape_label(source);
        let (buckets, sum) = get(m).snapshot();
        for (bound, count) in &buckets {
            let le = if bound.is_infinite() {
                "+Inf".to_owned()
            } else {
                bound.to_string()
            };
            let _ = writeln!(
                out,
                "{name}_bucket{{source=\"{source}\",le=\"{le}\"}} {count}"
            );
        }
        let count = buckets.last().map_or(0, |b| b.1);
        let _ = writeln!(out, "{name}_sum{{source=\"{source}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{source=\"{source}\"}} {count}");
    }
}

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_histogram_counts_each_observation_in_the_first_bucket_that_holds_it() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(100)); // ≤ 0.25 ms
        h.observe(Duration::from_millis(1)); // exactly on the 1 ms bound
        h.observe(Duration::from_micros(1_001)); // just above: the 2 ms bucket
        h.observe(Duration::from_secs(60)); // above every bound
        let (buckets, sum) = h.snapshot();
        let at = |bound: f64| {
            buckets
                .iter()
                .find(|b| (b.0 - bound).abs() < 1e-12)
                .map(|b| b.1)
        };
        assert_eq!(at(0.000_25), Some(1));
        assert_eq!(at(0.000_5), Some(1));
        assert_eq!(at(0.001), Some(2));
        assert_eq!(at(0.002), Some(3));
        assert_eq!(at(10.0), Some(3));
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 4)));
        assert!((sum - 60.002_101).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn histograms_render_as_prometheus_histograms_per_source() {
        let metrics = Metrics::default();
        metrics
            .source("trades")
            .delivery_delay
            .observe(Duration::from_millis(3));
        let text = metrics.render();
        assert!(text.contains("# TYPE viewcast_source_delivery_delay_seconds histogram"));
        assert!(text.contains(
            "viewcast_source_delivery_delay_seconds_bucket{source=\"trades\",le=\"0.002\"} 0"
        ));
        assert!(text.contains(
            "viewcast_source_delivery_delay_seconds_bucket{source=\"trades\",le=\"0.003\"} 1"
        ));
        assert!(text.contains(
            "viewcast_source_delivery_delay_seconds_bucket{source=\"trades\",le=\"+Inf\"} 1"
        ));
        assert!(text.contains("viewcast_source_delivery_delay_seconds_count{source=\"trades\"} 1"));
        assert!(text.contains("viewcast_source_commit_delay_seconds_count{source=\"trades\"} 0"));
    }
}
