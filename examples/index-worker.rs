//! An example worker for viewcast's `http` run executor: it indexes a local directory (a git
//! checkout, say) and reports its progress back as run events.
//!
//! ```sh
//! cargo run --example index-worker -- --port 8090
//! ```
//!
//! with, in schema.yaml:
//!
//! ```yaml
//! runs:
//!   index:
//!     executor: http
//!     url: http://127.0.0.1:8090/runs
//! ```
//!
//! then `startRun(kind: "index", input: {path: "/path/to/repo"})`. viewcast POSTs each run here
//! with a run-scoped token and the URL to report to; this worker answers 202 at once and then
//! reports `STARTED` (stage Cloning: reading the tree), one `PROGRESS` per file (stage Parsing,
//! "file X of Y", counters), `PROGRESS` (stage Indexing) and `COMPLETED` with a summary — or
//! `FAILED` with the reason when the path is not a readable directory. When its run is
//! cancelled, its next report is refused (409) and it stops.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use axum::Json;
use axum::http::StatusCode;
use serde_json::{Value, json};

/// What viewcast sends for each run.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dispatch {
    pub run: Value,
    pub token: String,
    pub events_url: String,
}

/// Reports a run's events to viewcast.
struct Reporter {
    http: reqwest::Client,
    url: String,
    token: String,
}

/// The run was cancelled (or ended otherwise): stop working on it.
#[derive(Debug)]
struct Ended;

impl Reporter {
    async fn send(&self, event: Value) -> Result<(), Ended> {
        for attempt in 0..5u32 {
            let sent = self
                .http
                .post(&self.url)
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {}", self.token))
                .body(json!({ "events": [event] }).to_string())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r)
                    if r.status() == StatusCode::CONFLICT
                        || r.status() == StatusCode::NOT_FOUND =>
                {
                    return Err(Ended);
                }
                Ok(r) => eprintln!("report refused ({}), attempt {attempt}", r.status()),
                Err(err) => eprintln!("report failed ({err}), attempt {attempt}"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
        }
        Err(Ended)
    }
}

/// The files under `root`, sorted, leaving out `.git` and `target`.
fn files(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if name == ".git" || name == "target" || name == "node_modules" {
                continue;
            }
            let kind = entry.file_type()?;
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Indexes the directory of `dispatch.run.input.path`, reporting as it goes.
pub async fn work(dispatch: Dispatch) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let reporter = Reporter {
        http: reqwest::Client::new(),
        url: dispatch.events_url.clone(),
        token: dispatch.token.clone(),
    };
    let path = dispatch.run["input"]["path"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if let Err(Ended) = index(&reporter, &path).await {
        eprintln!("run {} ended; stopping", dispatch.run["id"]);
    }
}

async fn index(reporter: &Reporter, path: &str) -> Result<(), Ended> {
    let root = PathBuf::from(path);
    reporter
        .send(json!({"type": "STARTED", "stage": "Cloning", "message": format!("reading {path}")}))
        .await?;
    let listed = if path.is_empty() {
        Err("input.path is missing: start the run with input {path: \"/a/directory\"}".to_owned())
    } else {
        let dir = root.clone();
        tokio::task::spawn_blocking(move || files(&dir))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| format!("cannot read {}: {e}", root.display())))
    };
    let files = match listed {
        Ok(files) => files,
        Err(reason) => {
            return reporter
                .send(
                    json!({"type": "FAILED", "stage": "Cloning", "message": reason,
                             "data": {"path": path}}),
                )
                .await;
        }
    };
    let total = files.len();
    let mut terms: HashMap<String, u64> = HashMap::new();
    let (mut lines, mut bytes) = (0u64, 0u64);
    for (i, file) in files.iter().enumerate() {
        let name = file
            .strip_prefix(&root)
            .unwrap_or(file)
            .display()
            .to_string();
        reporter
            .send(json!({
                "type": "PROGRESS",
                "stage": "Parsing",
                "message": format!("file {} of {total}: {name}", i + 1),
                "percentage": 90.0 * i as f64 / total.max(1) as f64,
                "counters": {"files_done": i, "files_total": total},
            }))
            .await?;
        // Binary or unreadable files count, but add no terms.
        let content = tokio::fs::read(file).await.unwrap_or_default();
        bytes += content.len() as u64;
        if let Ok(text) = std::str::from_utf8(&content) {
            lines += text.lines().count() as u64;
            for word in text.split(|c: char| !c.is_alphanumeric() && c != '_') {
                if word.len() > 2 {
                    *terms.entry(word.to_lowercase()).or_default() += 1;
                }
            }
        }
    }
    reporter
        .send(json!({
            "type": "PROGRESS",
            "stage": "Indexing",
            "message": format!("{} distinct terms", terms.len()),
            "percentage": 95.0,
            "counters": {"files_done": total, "files_total": total},
        }))
        .await?;
    let mut top: Vec<(String, u64)> = terms.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    top.truncate(10);
    reporter
        .send(json!({
            "type": "COMPLETED",
            "stage": "Complete",
            "message": format!("indexed {total} files"),
            "percentage": 100.0,
            "counters": {"files_done": total, "files_total": total},
            "data": {"files": total, "lines": lines, "bytes": bytes,
                     "top_terms": top.iter().map(|(t, n)| json!([t, n])).collect::<Vec<_>>()},
        }))
        .await
}

/// The worker's HTTP endpoint: `POST /runs` takes a run and works on it in the background.
pub fn app() -> axum::Router {
    axum::Router::new().route(
        "/runs",
        axum::routing::post(|Json(dispatch): Json<Dispatch>| async move {
            tokio::spawn(work(dispatch));
            StatusCode::ACCEPTED
        }),
    )
}

/// Serves [`app`] on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    axum::serve(listener, app()).await
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut port = 8090u16;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => {
                port = args
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| usage("--port takes a number"));
            }
            "--help" | "-h" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    eprintln!("index-worker: POST http://{}/runs", listener.local_addr()?);
    serve(listener).await
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("{problem}");
    }
    eprintln!("usage: index-worker [--port 8090]  (a worker for viewcast's http run executor)");
    std::process::exit(if problem.is_empty() { 0 } else { 2 })
}
