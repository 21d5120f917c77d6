//! Shared harness for integration tests: a private PostgreSQL (or `TEST_DATABASE_URL`), the
//! server on port 0, and a small GraphQL-over-WebSocket client that checks the stream's
//! invariants (no INSERT of a known key, no UPDATE or DELETE of an unknown one).
#![allow(dead_code)]

pub mod backend;
pub mod binary;
pub mod certs;
pub mod receiver;
pub mod runs;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use viewcast::pgcluster::{ClusterOptions, PgCluster};
use viewcast::server::{ServeOptions, Server};

pub const DEADLINE: Duration = Duration::from_secs(30);

/// A database for one test: a private cluster, or a fresh database on `TEST_DATABASE_URL`.
pub struct TestDb {
    pub cluster: Option<PgCluster>,
    pub url: String,
}

impl TestDb {
    /// A private cluster, whatever `TEST_DATABASE_URL` says (for tests that restart it).
    pub async fn private() -> TestDb {
        TestDb::private_with(ClusterOptions::default()).await
    }

    /// A private cluster started with `options` (e.g. stock server settings).
    pub async fn private_with(options: ClusterOptions) -> TestDb {
        let cluster = PgCluster::start(options)
            .await
            .expect("start private postgres");
        let url = cluster.url("postgres");
        TestDb {
            cluster: Some(cluster),
            url,
        }
    }

    pub async fn new() -> TestDb {
        match std::env::var("TEST_DATABASE_URL") {
            Ok(base) if !base.is_empty() => {
                let name = format!("viewcast_test_{}", rand::random::<u32>());
                let admin = connect(&base).await;
                admin
                    .batch_execute(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create test database");
                let url = match base.rsplit_once('/') {
                    Some((prefix, _)) => format!("{prefix}/{name}"),
                    None => panic!("TEST_DATABASE_URL must end in /<database>"),
                };
                TestDb { cluster: None, url }
            }
            _ => TestDb::private().await,
        }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }

    pub async fn stop(self) {
        if let Some(cluster) = self.cluster {
            cluster.stop().await.expect("stop postgres");
        }
    }
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

/// Starts the server for `yaml` against `db`, with publications created on demand.
pub async fn start_server(db: &TestDb, yaml: &str) -> Server {
    let config = viewcast::config::load_str(std::path::Path::new("test.yaml"), yaml)
        .expect("valid test config");
    start_server_with_config(db, config).await
}

/// Starts the server for a loaded `config` (e.g. from a fixture file) against `db`.
pub async fn start_server_with_config(db: &TestDb, config: viewcast::config::Config) -> Server {
    start_server_with_options(db, config, |_| {}).await
}

/// Starts the server for `config` against `db`, with `configure` applied to the options.
#[allow(dead_code)]
pub async fn start_server_with_options(
    db: &TestDb,
    config: viewcast::config::Config,
    configure: impl FnOnce(&mut ServeOptions),
) -> Server {
    if let Ok(filter) = std::env::var("VIEWCAST_TEST_LOG") {
        viewcast::telemetry::init_logging(&filter, false);
    }
    let mut options = ServeOptions {
        host: "127.0.0.1".into(),
        port: 0,
        database_url: Some(db.url.clone()),
        instance: format!("t{}", rand::random::<u32>()),
        apply_setup: true,
        ..ServeOptions::default()
    };
    configure(&mut options);
    let server = Server::start(config, options).await.expect("server starts");
    wait_ready(server.addr()).await;
    server
}

/// Waits until `/ready` answers 200.
pub async fn wait_ready(addr: SocketAddr) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok((status, body)) = http_get(addr, "/ready").await {
            if status == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server not ready in time: {body}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A minimal HTTP/1.1 GET (status, body) without pulling in an HTTP client.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, None, &[]).await
}

pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    let (status, _, body) = http_exchange(addr, method, path, body, headers).await?;
    Ok((status, body))
}

/// An HTTP/1.1 request: (status, the response's head in lower case, body).
pub async fn http_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String, String)> {
    use std::fmt::Write as _;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let body = body.unwrap_or("");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        let _ = write!(request, "{name}: {value}\r\n");
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((status, head.to_ascii_lowercase(), body.to_owned()))
}

/// POSTs a GraphQL request and returns the JSON response.
pub async fn graphql(addr: SocketAddr, query: &str, variables: Value) -> Value {
    let body = json!({ "query": query, "variables": variables }).to_string();
    let (status, body) = http_request(
        addr,
        "POST",
        "/graphql",
        Some(&body),
        &[("Content-Type", "application/json")],
    )
    .await
    .expect("POST /graphql");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON response")
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw GraphQL-over-WebSocket connection.
pub struct Ws {
    socket: Socket,
    pub protocol: &'static str,
}

impl Ws {
    pub async fn open(addr: SocketAddr, protocol: &'static str) -> Ws {
        let mut request = format!("ws://{addr}/graphql")
            .into_client_request()
            .expect("request");
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", protocol.parse().expect("header"));
        let (socket, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("websocket connects");
        assert_eq!(
            response
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some(protocol),
            "server selects the subprotocol"
        );
        Ws { socket, protocol }
    }

    /// Opens and completes the handshake.
    pub async fn connect(addr: SocketAddr, protocol: &'static str) -> Ws {
        Ws::connect_with(addr, protocol, json!({})).await
    }

    /// Opens and completes the handshake with `payload` in `connection_init` (credentials).
    pub async fn connect_with(addr: SocketAddr, protocol: &'static str, payload: Value) -> Ws {
        let mut ws = Ws::open(addr, protocol).await;
        ws.send(json!({ "type": "connection_init", "payload": payload }))
            .await;
        let ack = ws.recv_skipping_keepalives().await.expect("ack");
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        ws
    }

    pub async fn send(&mut self, message: Value) {
        self.socket
            .send(Message::Text(message.to_string().into()))
            .await
            .expect("send");
    }

    /// Sends `text`; false once the server has closed the connection.
    pub async fn try_send_raw(&mut self, text: &str) -> bool {
        self.socket
            .send(Message::Text(text.to_owned().into()))
            .await
            .is_ok()
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.socket
            .send(Message::Text(text.to_owned().into()))
            .await
            .expect("send");
    }

    pub async fn subscribe(&mut self, id: &str, query: &str) {
        let kind = if self.protocol == "graphql-ws" {
            "start"
        } else {
            "subscribe"
        };
        self.send(json!({ "type": kind, "id": id, "payload": { "query": query } }))
            .await;
    }

    /// The next text message as JSON; `Err(code, reason)` if the server closed. WebSocket
    /// pings are answered (by tungstenite, as it reads) and skipped.
    pub async fn recv(&mut self) -> Result<Value, (u16, String)> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let message = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .expect("a message within the deadline");
            return match message {
                Some(Ok(Message::Text(text))) => {
                    Ok(serde_json::from_str(&text).expect("JSON message"))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(frame))) => Err(frame.map_or((1005, String::new()), |f| {
                    (f.code.into(), f.reason.to_string())
                })),
                Some(Ok(other)) => panic!("unexpected frame {other:?}"),
                Some(Err(err)) => Err((1006, err.to_string())),
                None => Err((1006, "closed".into())),
            };
        }
    }

    pub async fn recv_skipping_keepalives(&mut self) -> Result<Value, (u16, String)> {
        // One deadline for the whole wait: keep-alives must not extend it.
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let message = tokio::time::timeout_at(deadline, self.recv())
                .await
                .expect("a message other than a keep-alive within the deadline")?;
            match message["type"].as_str() {
                Some("ka" | "pong") => {}
                Some("ping") => self.send(json!({ "type": "pong" })).await,
                _ => return Ok(message),
            }
        }
    }

    /// The next `next`/`data` payload for operation `id`.
    pub async fn next_payload(&mut self, id: &str) -> Value {
        let message = self
            .recv_skipping_keepalives()
            .await
            .expect("open connection");
        assert_eq!(message["id"], id, "{message}");
        match message["type"].as_str() {
            Some("next" | "data") => message["payload"].clone(),
            _ => panic!("expected data for {id}, got {message}"),
        }
    }
}

/// The rows a subscriber holds, rebuilt from its updates; panics on an impossible sequence.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ClientRows {
    pub rows: BTreeMap<String, serde_json::Map<String, Value>>,
    pub updates: usize,
}

impl ClientRows {
    /// Applies one `SUpdate` object (`operation`, `data`, `fields`), keyed by `key`.
    pub fn apply(&mut self, update: &Value, key: &str) {
        self.updates += 1;
        let data = update["data"].as_object().cloned().unwrap_or_default();
        let id = data.get(key).map(ToString::to_string).unwrap_or_default();
        match update["operation"].as_str() {
            Some("INSERT") => {
                assert!(
                    !self.rows.contains_key(&id),
                    "INSERT of a key the client already has: {update}"
                );
                self.rows.insert(id, data);
            }
            Some("UPDATE") => {
                let row = self
                    .rows
                    .get_mut(&id)
                    .unwrap_or_else(|| panic!("UPDATE of an unknown key: {update}"));
                for field in update["fields"].as_array().expect("fields") {
                    let field = field.as_str().expect("field name");
                    if let Some(value) = data.get(field) {
                        row.insert(field.to_owned(), value.clone());
                    }
                }
            }
            Some("DELETE") => {
                assert!(
                    self.rows.remove(&id).is_some(),
                    "DELETE of an unknown key: {update}"
                );
            }
            Some("SNAPSHOT_END") => {}
            other => panic!("unexpected operation {other:?} in {update}"),
        }
    }
}

/// Waits for `condition` on a fresh value from `probe`, up to the deadline.
pub async fn eventually<T, F, Fut>(mut probe: F, condition: impl Fn(&T) -> bool) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
    T: std::fmt::Debug,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        let value = probe().await;
        if condition(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "condition not reached; last value: {value:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Collects one subscriber's updates in a task; publishes its rows after each update.
/// Panics (failing the test) on a RESET, an error, or an impossible sequence.
pub fn spawn_collector(
    mut ws: Ws,
    id: &'static str,
    root: &'static str,
) -> (
    tokio::sync::watch::Receiver<ClientRows>,
    tokio::task::JoinHandle<Vec<Value>>,
) {
    let (tx, rx) = tokio::sync::watch::channel(ClientRows::default());
    let handle = tokio::spawn(async move {
        let mut rows = ClientRows::default();
        let mut log = Vec::new();
        loop {
            let Ok(message) = ws.recv_skipping_keepalives().await else {
                return log;
            };
            assert_eq!(message["id"], id, "{message}");
            assert!(
                matches!(message["type"].as_str(), Some("next" | "data")),
                "{message}"
            );
            assert!(message["payload"]["errors"].is_null(), "{message}");
            let update = message["payload"]["data"][root].clone();
            assert_ne!(update["operation"], "RESET", "no reset reaches the client");
            rows.apply(&update, "id");
            log.push(update);
            if tx.send(rows.clone()).is_err() {
                return log;
            }
        }
    });
    (rx, handle)
}

/// Waits until a collector holds `expected`; on the deadline, fails naming the rows that
/// differ.
pub async fn converges(
    rx: &tokio::sync::watch::Receiver<ClientRows>,
    expected: &BTreeMap<String, serde_json::Map<String, Value>>,
) {
    let mut rx = rx.clone();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let rows = rx.borrow_and_update().rows.clone();
        if &rows == expected {
            return;
        }
        if Instant::now() >= deadline {
            let mut differences = Vec::new();
            for (key, want) in expected {
                match rows.get(key) {
                    Some(have) if have == want => {}
                    have => differences.push(format!("{key}: client {have:?}, table {want:?}")),
                }
            }
            for (key, have) in &rows {
                if !expected.contains_key(key) {
                    differences.push(format!("{key}: client {have:?}, not in the table"));
                }
            }
            panic!("the client did not converge: {}", differences.join("; "));
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), rx.changed()).await;
    }
}
