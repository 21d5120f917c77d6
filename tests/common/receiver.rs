//! A real HTTP webhook receiver for tests: records every request (headers, body, arrival)
//! and answers from a script (status, headers, delay), 200 once the script is used up.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::mpsc;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub raw: Bytes,
    pub body: Value,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16),
    /// A status with headers (e.g. 429 with Retry-After).
    With(u16, Vec<(&'static str, String)>),
    /// Answer after a delay (a slow receiver, or one that times out).
    After(Duration, u16),
}

/// How one path answers: its script, then its default.
#[derive(Debug, Default)]
struct PathScript {
    script: VecDeque<Reply>,
    default: Option<Reply>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<Received>,
    script: Arc<Mutex<VecDeque<Reply>>>,
    /// Every reply once the script is used up.
    default: Arc<Mutex<Reply>>,
    /// Scripts and defaults of single paths (before the others).
    paths: Arc<Mutex<HashMap<String, PathScript>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        let (tx, rx) = mpsc::unbounded_channel();
        let script: Arc<Mutex<VecDeque<Reply>>> = Arc::default();
        let default = Arc::new(Mutex::new(Reply::Status(200)));
        let paths: Arc<Mutex<HashMap<String, PathScript>>> = Arc::default();
        let (s, d, p) = (script.clone(), default.clone(), paths.clone());
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, raw: Bytes| {
            let (tx, s, d, p) = (tx.clone(), s.clone(), d.clone(), p.clone());
            async move {
                let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
                let _ = tx.send(Received {
                    path: uri.path().to_owned(),
                    headers,
                    raw,
                    body,
                    at: Instant::now(),
                });
                let by_path = p
                    .lock()
                    .unwrap()
                    .get_mut(uri.path())
                    .and_then(|path| path.script.pop_front().or_else(|| path.default.clone()));
                let reply = by_path.unwrap_or_else(|| {
                    s.lock()
                        .unwrap()
                        .pop_front()
                        .unwrap_or_else(|| d.lock().unwrap().clone())
                });
                answer(reply).await
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            addr,
            rx,
            script,
            default,
            paths,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Replies for the next requests, in order.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.script.lock().unwrap().extend(replies);
    }

    /// Replies for the next requests to `path`, in order (then its default, if any).
    #[allow(dead_code)]
    pub fn script_path(&self, path: &str, replies: impl IntoIterator<Item = Reply>) {
        let mut paths = self.paths.lock().unwrap();
        paths
            .entry(path.to_owned())
            .or_default()
            .script
            .extend(replies);
    }

    /// How `path` answers once its script is used up.
    #[allow(dead_code)]
    pub fn path_default(&self, path: &str, reply: Reply) {
        let mut paths = self.paths.lock().unwrap();
        paths.entry(path.to_owned()).or_default().default = Some(reply);
    }

    pub fn default_reply(&self, reply: Reply) {
        *self.default.lock().unwrap() = reply;
    }

    /// The next request, within `within`.
    pub async fn next_within(&mut self, within: Duration) -> Option<Received> {
        tokio::time::timeout(within, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Asserts that no request arrives within `within` (a negative check: nothing more was sent).
    #[allow(dead_code)]
    pub async fn assert_quiet(&mut self, within: Duration) {
        if let Some(extra) = self.next_within(within).await {
            panic!("unexpected webhook: {}", extra.body);
        }
    }

    /// The next request (panics after the test deadline).
    pub async fn next(&mut self) -> Received {
        self.next_within(super::DEADLINE)
            .await
            .expect("a webhook request within the deadline")
    }
}

async fn answer(reply: Reply) -> Response {
    match reply {
        Reply::Status(code) => StatusCode::from_u16(code).unwrap().into_response(),
        Reply::With(code, headers) => {
            let mut response = StatusCode::from_u16(code).unwrap().into_response();
            for (name, value) in headers {
                response.headers_mut().insert(name, value.parse().unwrap());
            }
            response
        }
        Reply::After(delay, code) => {
            tokio::time::sleep(delay).await;
            StatusCode::from_u16(code).unwrap().into_response()
        }
    }
}
