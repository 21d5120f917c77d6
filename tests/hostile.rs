//! Hostile clients: each case sends what an attacker would, checks the coded refusal, and then
//! checks that the server still serves — a live subscription opened before the first case
//! receives a change made after each one, and `/metrics` counts the refusal.

mod common;

use std::net::SocketAddr;

use common::{TestDb, Ws, http_request};
use serde_json::{Value, json};
use viewcast::server::Server;

const SCHEMA: &str = r"
backend: postgres
sources:
  items:
    primary_key: id
    columns:
      id: Integer
      name: String
";

/// A server over `items`, and a subscriber that must keep receiving changes whatever the
/// hostile cases do.
struct Fixture {
    db: TestDb,
    server: Server,
    /// What the subscriber receives; it reads all along (answering the server's pings).
    watcher: tokio::sync::mpsc::UnboundedReceiver<Value>,
    next_id: i32,
}

impl Fixture {
    async fn start() -> Fixture {
        Fixture::start_with(|_| {}).await
    }

    async fn start_with(configure: impl FnOnce(&mut viewcast::server::ServeOptions)) -> Fixture {
        let db = TestDb::new().await;
        db.client()
            .await
            .batch_execute("CREATE TABLE items (id integer PRIMARY KEY, name text)")
            .await
            .expect("table");
        let config =
            viewcast::config::load_str(std::path::Path::new("test.yaml"), SCHEMA).expect("config");
        let server = common::start_server_with_options(&db, config, configure).await;
        let mut watcher = Ws::connect(server.addr(), "graphql-transport-ws").await;
        watcher
            .subscribe(
                "watch",
                "subscription { items(snapshot_end: true) { operation data { id } } }",
            )
            .await;
        let end = watcher.next_payload("watch").await;
        assert_eq!(end["data"]["items"]["operation"], "SNAPSHOT_END", "{end}");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            // Keep-alives come every 12 s, so `recv` never waits past its deadline here.
            while let Ok(message) = watcher.recv().await {
                match message["type"].as_str() {
                    Some("ka" | "pong") => {}
                    Some("ping") => watcher.send(json!({ "type": "pong" })).await,
                    _ => {
                        if tx.send(message).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let watcher = rx;
        Fixture {
            db,
            server,
            watcher,
            next_id: 0,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// A row inserted now reaches the subscriber opened at the start.
    async fn still_serves(&mut self) {
        self.next_id += 1;
        let id = self.next_id;
        self.db
            .client()
            .await
            .execute("INSERT INTO items VALUES ($1, 'x')", &[&id])
            .await
            .expect("insert");
        let message = tokio::time::timeout(common::DEADLINE, self.watcher.recv())
            .await
            .expect("the subscriber receives the change within the deadline")
            .expect("the subscriber's connection is open");
        assert_eq!(message["id"], "watch", "{message}");
        let update = &message["payload"]["data"]["items"];
        assert_eq!(update["operation"], "INSERT", "{message}");
        assert_eq!(update["data"]["id"], id, "{message}");
    }

    async fn rejections(&self, limit: &str) -> u64 {
        let (_, text) = common::http_get(self.addr(), "/metrics")
            .await
            .expect("metrics");
        let prefix = format!("viewcast_limit_rejections_total{{limit=\"{limit}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
    }

    async fn stop(self) {
        self.server.shutdown().await;
        self.db.stop().await;
    }
}

/// POSTs a JSON body to /graphql: (status, JSON response).
async fn post(addr: SocketAddr, body: &str, extra: &[(&str, &str)]) -> (u16, Value) {
    let mut headers = vec![("Content-Type", "application/json")];
    headers.extend_from_slice(extra);
    let (status, text) = http_request(addr, "POST", "/graphql", Some(body), &headers)
        .await
        .expect("POST /graphql");
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON: {text}"));
    (status, json)
}

fn code(response: &Value) -> &str {
    response["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("a coded error: {response}"))
}

/// The report's attack: `@skip(if:)` with a list nested `levels` deep.
fn skip_bomb(levels: usize) -> String {
    format!(
        "{{ __typename @skip(if: {}true{}) }}",
        "[".repeat(levels),
        "]".repeat(levels)
    )
}

/// A WebSocket operation's first answer: the `error` message's errors.
async fn ws_error(ws: &mut Ws, id: &str, query: &str) -> Value {
    ws.subscribe(id, query).await;
    let message = ws
        .recv_skipping_keepalives()
        .await
        .expect("open connection");
    assert_eq!(message["type"], "error", "{message}");
    assert_eq!(message["id"], id, "{message}");
    json!({ "errors": message["payload"] })
}

#[tokio::test]
async fn deep_documents_are_refused_on_every_transport_and_the_server_keeps_serving() {
    let mut f = Fixture::start().await;
    let addr = f.addr();
    for levels in [500, 2_000, 100_000] {
        let query = skip_bomb(levels);
        let body = json!({ "query": query }).to_string();

        let (status, response) = post(addr, &body, &[]).await;
        assert_eq!((status, code(&response)), (400, "GRAPHQL_PARSE_FAILED"));
        f.still_serves().await;

        // graphql-sse: refused before any stream starts.
        let (status, response) = post(addr, &body, &[("Accept", "text/event-stream")]).await;
        assert_eq!((status, code(&response)), (400, "GRAPHQL_PARSE_FAILED"));
        f.still_serves().await;

        for protocol in ["graphql-transport-ws", "graphql-ws"] {
            let mut ws = Ws::connect(addr, protocol).await;
            let response = ws_error(&mut ws, "deep", &query).await;
            assert_eq!(code(&response), "GRAPHQL_PARSE_FAILED", "{protocol}");
            // The connection stays usable.
            ws.subscribe("ok", "subscription { items { operation } }")
                .await;
            let first = ws.recv_skipping_keepalives().await.expect("open");
            assert_eq!(first["id"], "ok", "{first}");
            f.still_serves().await;
        }
    }
    // GET, with the report's 4 KB document (a 200 KB URL is not a GraphQL concern).
    let query = skip_bomb(2_000);
    let path = format!("/graphql?query={}", urlencode(&query));
    let (status, text) = http_request(addr, "GET", &path, None, &[])
        .await
        .expect("GET");
    let response: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!((status, code(&response)), (400, "GRAPHQL_PARSE_FAILED"));
    f.still_serves().await;
    // Deep variables: JSON lists nested past the limit.
    let mut value = json!(true);
    for _ in 0..100 {
        value = json!([value]);
    }
    let body = json!({ "query": "query($v: Boolean) { __typename }", "variables": { "v": value } });
    let (status, response) = post(addr, &body.to_string(), &[]).await;
    assert_eq!((status, code(&response)), (400, "GRAPHQL_PARSE_FAILED"));
    assert!(f.rejections("nesting").await >= 10);
    f.still_serves().await;
    f.stop().await;
}

#[tokio::test]
async fn document_size_batch_aliases_root_fields_and_cost_are_bounded() {
    let mut f = Fixture::start_with(|options| {
        options.graphql.max_document_bytes = 4_096;
        options.graphql.max_batch = 3;
        options.graphql.max_aliases = 5;
        options.graphql.max_root_fields = 4;
        options.graphql.max_cost = 3_000;
    })
    .await;
    let addr = f.addr();

    let long = format!("{{ {} }}", "__typename ".repeat(500));
    let (status, response) = post(addr, &json!({ "query": long }).to_string(), &[]).await;
    assert_eq!((status, code(&response)), (413, "DOCUMENT_TOO_LARGE"));
    assert_eq!(f.rejections("document_bytes").await, 1);
    f.still_serves().await;

    let one = json!({ "query": "{ __typename }" });
    let (status, response) = post(addr, &json!([one, one, one]).to_string(), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(response.as_array().map(Vec::len), Some(3), "{response}");
    let (status, response) = post(addr, &json!([one, one, one, one]).to_string(), &[]).await;
    assert_eq!((status, code(&response)), (400, "BATCH_LIMIT_EXCEEDED"));
    assert_eq!(f.rejections("batch").await, 1);
    f.still_serves().await;

    let aliases =
        "{ a: __typename b: __typename c: __typename items(limit: 1) { d: id e: id f: id } }";
    let (status, response) = post(addr, &json!({ "query": aliases }).to_string(), &[]).await;
    assert_eq!((status, code(&response)), (400, "MAX_ALIASES_LIMIT"));
    assert_eq!(f.rejections("aliases").await, 1);

    let roots = "{ __typename items(limit: 1) { id } a: items(limit: 1) { id } b: __typename c: __typename }";
    let (status, response) = post(addr, &json!({ "query": roots }).to_string(), &[]).await;
    assert_eq!((status, code(&response)), (400, "MAX_ROOT_FIELDS_LIMIT"));
    assert_eq!(f.rejections("root_fields").await, 1);

    // 1 + 1000 × 2 fits; the default list size (1,000) counts as given, so two aliases of it
    // do not.
    let (status, response) = post(
        addr,
        &json!({ "query": "{ items(limit: 1000) { id name } }" }).to_string(),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{response}");
    assert!(response["errors"].is_null(), "{response}");
    let costly = "{ a: items { id name } b: items { id name } }";
    let (status, response) = post(addr, &json!({ "query": costly }).to_string(), &[]).await;
    assert_eq!(
        (status, code(&response)),
        (400, "COST_ESTIMATED_TOO_EXPENSIVE")
    );
    assert_eq!(f.rejections("cost").await, 1);
    // Over WebSocket too: an error for that operation, the connection stays.
    let mut ws = Ws::connect(addr, "graphql-transport-ws").await;
    let response = ws_error(&mut ws, "1", costly).await;
    assert_eq!(code(&response), "COST_ESTIMATED_TOO_EXPENSIVE");
    assert_eq!(f.rejections("cost").await, 2);
    f.still_serves().await;
    f.stop().await;
}

#[tokio::test]
async fn query_limit_and_offset_have_a_default_and_a_maximum() {
    let mut f = Fixture::start_with(|options| {
        options.graphql.query_default_limit = 3;
        options.graphql.query_max_limit = 5;
        options.graphql.query_max_offset = 10;
    })
    .await;
    for _ in 0..8 {
        f.still_serves().await;
    }
    let addr = f.addr();
    let count = |response: &Value| response["data"]["items"].as_array().map(Vec::len);
    let response = common::graphql(addr, "{ items { id } }", json!({})).await;
    assert_eq!(count(&response), Some(3), "{response}");
    let response = common::graphql(addr, "{ items(limit: 5) { id } }", json!({})).await;
    assert_eq!(count(&response), Some(5), "{response}");
    for query in ["{ items(limit: 6) { id } }", "{ items(offset: 11) { id } }"] {
        let response = common::graphql(addr, query, json!({})).await;
        assert_eq!(code(&response), "BAD_USER_INPUT", "{response}");
    }
    assert_eq!(f.rejections("query_rows").await, 2);
    let response = common::graphql(
        addr,
        "{ items(order_by: [{id: desc}], offset: 2, limit: 2) { id } }",
        json!({}),
    )
    .await;
    assert_eq!(response["data"]["items"], json!([{"id": 6}, {"id": 5}]));
    f.still_serves().await;
    f.stop().await;
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Reads what the server sends on `stream` until it closes it (or the deadline passes).
async fn read_to_close(stream: &mut tokio::net::TcpStream) -> String {
    String::from_utf8_lossy(&read_bytes_to_close(stream).await).into_owned()
}

async fn read_bytes_to_close(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    tokio::time::timeout(common::DEADLINE, stream.read_to_end(&mut bytes))
        .await
        .expect("the server closes the connection within the deadline")
        .expect("read");
    bytes
}

#[tokio::test]
async fn bodies_headers_and_slow_requests_are_bounded() {
    use tokio::io::AsyncWriteExt;
    let mut f = Fixture::start_with(|options| {
        options.http.max_body_bytes = 10_000;
        options.http.header_timeout = std::time::Duration::from_millis(500);
        options.http.request_timeout = std::time::Duration::from_millis(500);
    })
    .await;
    let addr = f.addr();
    let big = json!({ "query": "{ __typename }", "variables": { "pad": "x".repeat(20_000) } });
    let (status, response) = post(addr, &big.to_string(), &[]).await;
    assert_eq!((status, code(&response)), (413, "PAYLOAD_TOO_LARGE"));
    let (status, text) = http_request(
        addr,
        "POST",
        "/runs",
        Some(&big.to_string()),
        &[("Content-Type", "application/json")],
    )
    .await
    .expect("POST /runs");
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("PAYLOAD_TOO_LARGE"), "{text}");
    assert_eq!(f.rejections("body_bytes").await, 2);
    f.still_serves().await;

    // Headers that never end: the connection is closed.
    let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"POST /graphql HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let answer = read_to_close(&mut slow).await;
    assert!(!answer.contains("200 OK"), "{answer}");
    common::eventually(|| f.rejections("header_timeout"), |n| *n == 1).await;
    f.still_serves().await;

    // A body that never arrives: 408 once the request timeout passes.
    let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
    slow.write_all(
        b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"query\"",
    )
    .await
    .expect("write");
    let answer = read_to_close(&mut slow).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("REQUEST_TIMEOUT"), "{answer}");
    assert_eq!(f.rejections("request_timeout").await, 1);
    f.still_serves().await;
    f.stop().await;
}

#[tokio::test]
async fn connections_are_capped_in_all_and_per_address() {
    use tokio::io::AsyncWriteExt;
    // The fixture's own subscriber holds one connection.
    let mut f = Fixture::start_with(|options| {
        options.http.max_connections_per_address = 3;
        options.http.max_connections = 100;
    })
    .await;
    let addr = f.addr();
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    // The /metrics probe of `rejections` needs a connection of its own: read it first.
    let mut fourth = tokio::net::TcpStream::connect(addr).await.expect("connect");
    fourth
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let answer = read_to_close(&mut fourth).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("TOO_MANY_CONNECTIONS"), "{answer}");
    drop(held);
    let count = common::eventually(|| f.rejections("connections_per_address"), |n| *n >= 1).await;
    assert_eq!(count, 1);
    f.still_serves().await;
    f.stop().await;

    let mut f = Fixture::start_with(|options| {
        options.http.max_connections_per_address = 0;
        options.http.max_connections = 2;
    })
    .await;
    let held = tokio::net::TcpStream::connect(f.addr())
        .await
        .expect("connect");
    let mut third = tokio::net::TcpStream::connect(f.addr())
        .await
        .expect("connect");
    third
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let answer = read_to_close(&mut third).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    drop(held);
    let count = common::eventually(|| f.rejections("connections"), |n| *n >= 1).await;
    assert_eq!(count, 1);
    f.still_serves().await;
    f.stop().await;
}

#[tokio::test]
async fn sse_streams_are_capped() {
    let mut f = Fixture::start_with(|options| options.http.max_sse_streams = 1).await;
    let addr = f.addr();
    let subscribe = json!({ "query": "subscription { items { operation } }" }).to_string();
    // One stream, held open.
    let mut held = tokio::net::TcpStream::connect(addr).await.expect("connect");
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let request = format!(
            "POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\nContent-Length: {}\r\n\r\n{subscribe}",
            subscribe.len()
        );
        held.write_all(request.as_bytes()).await.expect("write");
        let mut status_line = [0u8; 12];
        held.read_exact(&mut status_line).await.expect("response");
        assert_eq!(&status_line, b"HTTP/1.1 200");
    }
    let (status, response) = post(addr, &subscribe, &[("Accept", "text/event-stream")]).await;
    assert_eq!((status, code(&response)), (503, "TOO_MANY_STREAMS"));
    let (status, text) = http_request(
        addr,
        "GET",
        "/runs/00000000-0000-0000-0000-000000000000/events",
        None,
        &[],
    )
    .await
    .expect("GET");
    assert_eq!(status, 503, "{text}");
    assert_eq!(f.rejections("sse_streams").await, 2);
    f.still_serves().await;
    drop(held);
    f.stop().await;
}

#[tokio::test]
async fn websocket_messages_operations_and_idle_clients_are_bounded() {
    let mut f = Fixture::start_with(|options| {
        options.ws.max_message_bytes = 4_096;
        options.ws.max_operations = 2;
        options.ws.idle_timeout = std::time::Duration::from_millis(500);
        options.ws.keepalive = std::time::Duration::from_millis(100);
    })
    .await;
    let addr = f.addr();
    // A message over the limit: 1009, before the server buffers it whole.
    let mut ws = Ws::connect(addr, "graphql-transport-ws").await;
    let pad = "x".repeat(100_000);
    ws.send(json!({ "type": "subscribe", "id": "1", "payload": { "query": "{ __typename }", "variables": { "pad": pad } } }))
        .await;
    assert_eq!(ws.recv().await.unwrap_err().0, 1009);
    assert_eq!(f.rejections("ws_message_bytes").await, 1);
    f.still_serves().await;
    // A frame that announces 10 MB and sends a few bytes: refused on its header (1009), not
    // after the server has waited for (and buffered) the rest.
    let mut raw = tokio::net::TcpStream::connect(addr).await.expect("connect");
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        raw.write_all(
            b"GET /graphql HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Protocol: graphql-transport-ws\r\n\r\n",
        )
        .await
        .expect("upgrade");
        let mut response = [0u8; 12];
        raw.read_exact(&mut response).await.expect("101");
        assert_eq!(&response, b"HTTP/1.1 101");
        // FIN + text, masked, 64-bit length 10,000,000, the mask, then 16 bytes of it.
        let mut frame = vec![0x81, 0xff];
        frame.extend_from_slice(&10_000_000u64.to_be_bytes());
        frame.extend_from_slice(&[1, 2, 3, 4]);
        frame.extend_from_slice(&[b'x'; 16]);
        raw.write_all(&frame).await.expect("frame");
    }
    let bytes = read_bytes_to_close(&mut raw).await;
    // The close frame: 0x88, its length, then 1009 (0x03f1).
    assert!(
        bytes
            .windows(4)
            .any(|w| w[0] == 0x88 && w[2..] == [0x03, 0xf1]),
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    assert_eq!(f.rejections("ws_message_bytes").await, 2);

    // Operations per connection.
    let mut ws = Ws::connect(addr, "graphql-transport-ws").await;
    // Subscriptions that match no row: nothing arrives before the refusal.
    let none = "subscription { items(where: {id: {_eq: -1}}) { operation } }";
    for id in ["a", "b"] {
        ws.subscribe(id, none).await;
    }
    let response = ws_error(&mut ws, "c", none).await;
    assert!(
        response["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("too many operations")),
        "{response}"
    );
    assert_eq!(f.rejections("ws_operations").await, 1);

    // A client that sends nothing and answers no ping (a raw socket: a WebSocket library
    // would answer them as it reads): closed with 4408.
    let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
    {
        use tokio::io::AsyncWriteExt;
        idle.write_all(
            b"GET /graphql HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Protocol: graphql-ws\r\n\r\n",
        )
        .await
        .expect("upgrade request");
    }
    let bytes = read_bytes_to_close(&mut idle).await;
    assert!(
        bytes.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    // A close frame (0x88), its length, then the code 4408 (0x1138).
    let close = bytes
        .windows(4)
        .position(|w| w[0] == 0x88 && w[2..] == [0x11, 0x38]);
    assert!(close.is_some(), "{}", String::from_utf8_lossy(&bytes));
    assert!(String::from_utf8_lossy(&bytes).contains("Idle timeout"));
    assert!(f.rejections("ws_idle").await >= 1);
    // The fixture's subscriber reads all along (answering pings): still served.
    f.still_serves().await;
    f.stop().await;
}

#[tokio::test]
async fn cross_site_forms_and_text_posts_are_refused() {
    let mut f = Fixture::start().await;
    let addr = f.addr();
    let mutation = json!({ "query": "mutation { cancelRun(runId: \"x\") { id } }" }).to_string();
    // No content type (a no-cors fetch of a Blob), a form, plain text: 415, nothing runs.
    for headers in [
        vec![],
        vec![("Content-Type", "application/x-www-form-urlencoded")],
        vec![("Content-Type", "text/plain;charset=UTF-8")],
    ] {
        let (status, text) = http_request(addr, "POST", "/graphql", Some(&mutation), &headers)
            .await
            .expect("POST");
        assert_eq!(status, 415, "{headers:?}: {text}");
        let (status, _) = http_request(
            addr,
            "POST",
            "/runs/00000000-0000-0000-0000-000000000000/cancel",
            None,
            &headers,
        )
        .await
        .expect("POST");
        assert_eq!(status, 415, "{headers:?}");
    }
    // A document as application/graphql is fine.
    let (status, text) = http_request(
        addr,
        "POST",
        "/graphql",
        Some("{ __typename }"),
        &[("Content-Type", "application/graphql")],
    )
    .await
    .expect("POST");
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("Query"), "{text}");
    f.still_serves().await;
    f.stop().await;
}

#[tokio::test]
async fn pages_of_other_sites_are_refused_over_http_and_websocket() {
    let mut f = Fixture::start().await;
    let addr = f.addr();
    // A page on another site: refused, over HTTP and WebSocket alike; the server's own pages
    // (GraphiQL) and clients without an Origin pass.
    let evil = [
        ("Origin", "http://evil.example"),
        ("Content-Type", "application/json"),
    ];
    let query = json!({ "query": "{ __typename }" }).to_string();
    let (status, text) = http_request(addr, "POST", "/graphql", Some(&query), &evil)
        .await
        .expect("POST");
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("FORBIDDEN_ORIGIN"), "{text}");
    let own = format!("http://{addr}");
    let (status, _) = http_request(
        addr,
        "POST",
        "/graphql",
        Some(&query),
        &[("Origin", &own), ("Content-Type", "application/json")],
    )
    .await
    .expect("POST");
    assert_eq!(status, 200);
    let upgrade = |addr: SocketAddr, origin: &'static str| async move {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("ws://{addr}/graphql")
            .into_client_request()
            .expect("request");
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "graphql-transport-ws".parse().expect("header"),
        );
        request
            .headers_mut()
            .insert("Origin", origin.parse().expect("header"));
        tokio_tungstenite::connect_async(request).await
    };
    match upgrade(addr, "http://evil.example").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
        }
        other => panic!("a hijacking upgrade must be refused: {other:?}"),
    }
    assert_eq!(f.rejections("origin").await, 2);
    f.still_serves().await;
    f.stop().await;

    // Listed origins pass, with CORS answers (preflights too).
    let mut f = Fixture::start_with(|options| {
        options.http.allowed_origins =
            viewcast::http::AllowedOrigins::parse(&["https://app.example.com".to_owned()])
                .expect("valid");
    })
    .await;
    let addr = f.addr();
    let (status, text) = http_request(
        addr,
        "OPTIONS",
        "/graphql",
        None,
        &[
            ("Origin", "https://app.example.com"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
    )
    .await
    .expect("OPTIONS");
    assert_eq!(status, 204, "{text}");
    let (status, _) = http_request(
        addr,
        "POST",
        "/graphql",
        Some(&query),
        &[
            ("Origin", "https://app.example.com"),
            ("Content-Type", "application/json"),
        ],
    )
    .await
    .expect("POST");
    assert_eq!(status, 200);
    if let Err(err) = upgrade(addr, "https://app.example.com").await {
        panic!("a listed origin upgrades: {err:?}");
    }
    assert!(upgrade(addr, "http://evil.example").await.is_err());
    f.still_serves().await;
    f.stop().await;
}

#[tokio::test]
async fn filters_views_and_filters_per_connection_are_bounded() {
    let mut f = Fixture::start_with(|options| {
        options.graphql.filter = viewcast::filter::FilterLimits {
            max_nodes: 20,
            max_in: 5,
            max_pattern_bytes: 16,
        };
        // The fixture's subscriber is one view.
        options.hub_limits.max_views = 3;
        options.ws.max_filters = 2;
    })
    .await;
    let addr = f.addr();
    for (filter, phrase) in [
        (json!({"id": {"_in": [1, 2, 3, 4, 5, 6]}}), "_in"),
        (
            json!({"name": {"_regex": "(a|b|c|d|e|f|g|h)*x"}}),
            "pattern",
        ),
        (
            json!({"_or": (0..25).map(|i| json!({"id": {"_eq": i}})).collect::<Vec<_>>()}),
            "conditions",
        ),
    ] {
        let response = common::graphql(
            addr,
            "query($w: itemsExpression) { items(where: $w) { id } }",
            json!({ "w": filter }),
        )
        .await;
        assert_eq!(code(&response), "BAD_USER_INPUT", "{response}");
        let message = response["errors"][0]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(message.contains(phrase), "{message}");
    }
    assert_eq!(f.rejections("filter").await, 3);
    f.still_serves().await;

    // Filters per connection: two distinct ones, any number of times; not a third.
    let mut ws = Ws::connect(addr, "graphql-transport-ws").await;
    let sub =
        |id: i32| format!("subscription {{ items(where: {{id: {{_eq: {id}}}}}) {{ operation }} }}");
    for (op, id) in [("a", -1), ("b", -2), ("c", -1)] {
        ws.subscribe(op, &sub(id)).await;
    }
    let response = ws_error(&mut ws, "d", &sub(-3)).await;
    assert_eq!(code(&response), "TOO_MANY_FILTERS", "{response}");
    assert_eq!(f.rejections("connection_filters").await, 1);
    // Views per source: the fixture's, and this connection's two; a fourth elsewhere waits.
    let mut other = Ws::connect(addr, "graphql-transport-ws").await;
    let response = ws_error(&mut other, "x", &sub(-4)).await;
    assert_eq!(code(&response), "TOO_MANY_VIEWS", "{response}");
    assert_eq!(f.rejections("views").await, 1);
    // Completing a subscription gives its filter back to the connection (and its view to
    // the source, once no one else reads it).
    ws.send(json!({"type": "complete", "id": "b"})).await;
    let response = common::eventually(
        || async {
            let mut probe = Ws::connect(addr, "graphql-transport-ws").await;
            probe.subscribe("p", &sub(-4)).await;
            let first =
                tokio::time::timeout(std::time::Duration::from_millis(500), probe.recv()).await;
            matches!(first, Ok(Ok(m)) if m["type"] == "error")
        },
        |refused| !refused,
    )
    .await;
    assert!(!response);
    f.still_serves().await;
    f.stop().await;
}

#[tokio::test]
async fn runs_payloads_and_appends_are_bounded_and_a_page_of_runs_reads_its_events_at_once() {
    let mut f = Fixture::start_with(|options| {
        options.runs.max_payload_bytes = 1_000;
        options.runs.max_events_per_append = 3;
    })
    .await;
    let addr = f.addr();
    let big = "x".repeat(2_000);
    let (status, text) = http_request(
        addr,
        "POST",
        "/runs",
        Some(&json!({ "kind": "job", "input": { "blob": big } }).to_string()),
        &[("Content-Type", "application/json")],
    )
    .await
    .expect("POST /runs");
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("PAYLOAD_TOO_LARGE"), "{text}");
    let started = common::graphql(
        addr,
        "mutation { startRun(kind: \"job\") { id } }",
        json!({}),
    )
    .await;
    let id = started["data"]["startRun"]["id"]
        .as_str()
        .expect("run id")
        .to_owned();
    let append = |events: Value| {
        common::graphql(
            addr,
            "mutation($id: ID!, $events: [RunEventInput!]!) { appendRunEvents(runId: $id, events: $events) { seq } }",
            json!({ "id": id, "events": events }),
        )
    };
    let response = append(json!([{ "type": "LOG", "message": big }])).await;
    assert_eq!(code(&response), "PAYLOAD_TOO_LARGE", "{response}");
    let response =
        append(json!([{ "type": "LOG" }, { "type": "LOG" }, { "type": "LOG" }, { "type": "LOG" }]))
            .await;
    assert_eq!(code(&response), "PAYLOAD_TOO_LARGE", "{response}");
    assert_eq!(f.rejections("run_payload").await, 3);
    f.still_serves().await;

    // 40 runs with two events each: the page's events come in one store query, not 40.
    for _ in 0..40 {
        let started = common::graphql(
            addr,
            "mutation { startRun(kind: \"page\") { id } }",
            json!({}),
        )
        .await;
        let id = started["data"]["startRun"]["id"]
            .as_str()
            .expect("id")
            .to_owned();
        let response = common::graphql(
            addr,
            "mutation($id: ID!) { appendRunEvents(runId: $id, events: [{type: \"LOG\", message: \"a\"}, {type: \"LOG\", message: \"b\"}]) { seq } }",
            json!({ "id": id }),
        )
        .await;
        assert!(response["errors"].is_null(), "{response}");
    }
    let reads = || async {
        let (_, text) = common::http_get(addr, "/metrics").await.expect("metrics");
        text.lines()
            .find_map(|l| l.strip_prefix("viewcast_run_event_reads_total "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .expect("viewcast_run_event_reads_total")
    };
    let before = reads().await;
    let page = common::graphql(
        addr,
        "{ runs(filter: {kind: \"page\"}, first: 40) { nodes { id events { seq message } } } }",
        json!({}),
    )
    .await;
    let nodes = page["data"]["runs"]["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 40, "{page}");
    for node in nodes {
        assert_eq!(
            node["events"],
            json!([{"seq": 1, "message": "a"}, {"seq": 2, "message": "b"}])
        );
    }
    assert_eq!(
        reads().await - before,
        1,
        "one store query for the page's events"
    );
    f.still_serves().await;
    f.stop().await;
}

/// Creates a trigger on `items`; the response (errors included).
async fn create_trigger(addr: SocketAddr, input: Value) -> Value {
    common::graphql(
        addr,
        "mutation($input: itemsTriggerInput!) { create_items_trigger(input: $input) { name } }",
        json!({ "input": input }),
    )
    .await
}

#[tokio::test]
async fn triggers_per_source_and_redelivery_ranges_are_bounded() {
    let receiver = common::receiver::Receiver::start().await;
    let mut f = Fixture::start_with(|options| {
        options.triggers.allow_private_targets = true;
        options.triggers.max_per_source = 2;
        options.triggers.max_redeliver = 10;
        options.triggers.max_attempts = 5;
    })
    .await;
    let addr = f.addr();
    let response = create_trigger(
        addr,
        json!({ "name": "a", "webhook": receiver.url("/x"), "fire": { "id": { "_gte": 0 } }, "retry": { "attempts": 6 } }),
    )
    .await;
    assert_eq!(code(&response), "LIMIT_EXCEEDED", "{response}");
    assert_eq!(f.rejections("trigger_retry").await, 1);
    for name in ["a", "b"] {
        let response = create_trigger(
            addr,
            json!({ "name": name, "webhook": receiver.url("/x"), "fire": { "id": { "_gte": 0 } } }),
        )
        .await;
        assert!(response["errors"].is_null(), "{response}");
    }
    let response = create_trigger(
        addr,
        json!({ "name": "c", "webhook": receiver.url("/x"), "fire": { "id": { "_gte": 0 } } }),
    )
    .await;
    assert_eq!(code(&response), "LIMIT_EXCEEDED", "{response}");
    assert_eq!(f.rejections("triggers").await, 1);
    let response = common::graphql(
        addr,
        "mutation { redeliver_items_trigger(name: \"a\", from: \"1\", to: \"1000000\") { id } }",
        json!({}),
    )
    .await;
    assert_eq!(code(&response), "LIMIT_EXCEEDED", "{response}");
    assert_eq!(f.rejections("redeliver").await, 1);
    f.still_serves().await;
    f.stop().await;
}

#[tokio::test]
async fn a_tarpitting_receiver_holds_only_its_share_of_the_webhook_slots() {
    let tarpit = common::receiver::Receiver::start().await;
    // It answers after the longest timeout a trigger may have.
    tarpit.default_reply(common::receiver::Reply::After(
        std::time::Duration::from_secs(600),
        200,
    ));
    let mut fine = common::receiver::Receiver::start().await;
    let mut f = Fixture::start_with(|options| {
        options.triggers.allow_private_targets = true;
        options.triggers.max_concurrent_deliveries = 4;
        options.triggers.max_per_host = 2;
    })
    .await;
    let addr = f.addr();
    // More triggers on the tarpit than there are slots, created first (claimed first).
    for i in 0..6 {
        let response = create_trigger(
            addr,
            json!({
                "name": format!("slow{i}"), "webhook": tarpit.url("/slow"),
                "fire": { "id": { "_gte": 0 } },
                "retry": { "timeout_ms": 300_000 },
            }),
        )
        .await;
        assert!(response["errors"].is_null(), "{response}");
    }
    let response = create_trigger(
        addr,
        json!({ "name": "fine", "webhook": fine.url("/fine"), "fire": { "id": { "_gte": 0 } } }),
    )
    .await;
    assert!(response["errors"].is_null(), "{response}");
    // One row fires all seven; the fine receiver gets its webhook while the tarpit holds two
    // slots (with every slot held by the tarpit, it would wait for its 300 s timeout).
    f.still_serves().await;
    let received = fine.next().await;
    assert_eq!(received.body["trigger_name"], "fine", "{}", received.body);
    f.still_serves().await;
    f.stop().await;
}

/// A resolver that answers a public address first, then loopback: DNS rebinding.
#[derive(Debug)]
struct Rebinding(std::sync::atomic::AtomicUsize);

impl viewcast::egress::Lookup for Rebinding {
    fn lookup<'a>(
        &'a self,
        _host: &'a str,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<Vec<std::net::IpAddr>>> + Send + 'a>,
    > {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let answer = if n == 0 { [8, 8, 8, 8] } else { [127, 0, 0, 1] };
        Box::pin(async move { Ok(vec![std::net::IpAddr::from(answer)]) })
    }
}

#[tokio::test]
async fn a_name_that_rebinds_to_loopback_never_reaches_it() {
    let mut receiver = common::receiver::Receiver::start().await;
    let lookups = std::sync::Arc::new(Rebinding(std::sync::atomic::AtomicUsize::new(0)));
    let lookup = lookups.clone();
    let mut f = Fixture::start_with(move |options| {
        options.triggers.lookup = lookup;
    })
    .await;
    let addr = f.addr();
    let port = receiver.addr.port();
    // The creation check sees the public address and accepts the webhook.
    let response = create_trigger(
        addr,
        json!({
            "name": "rebind", "webhook": format!("http://rebind.test:{port}/hook"),
            "fire": { "id": { "_gte": 0 } }, "retry": { "attempts": 1 },
        }),
    )
    .await;
    assert!(response["errors"].is_null(), "{response}");
    f.still_serves().await;
    // The delivery is refused where it would connect (the name now answers loopback): dead,
    // with the reason, and the receiver on loopback never hears of it.
    let dead = common::eventually(
        || async {
            common::graphql(
                addr,
                "{ items_dead_letters(trigger: \"rebind\") { last_error } }",
                json!({}),
            )
            .await
        },
        |r| {
            r["data"]["items_dead_letters"]
                .as_array()
                .is_some_and(|d| !d.is_empty())
        },
    )
    .await;
    let error = dead["data"]["items_dead_letters"][0]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("internal address"), "{error}");
    assert!(!error.contains("/hook"), "no path in the error: {error}");
    assert!(lookups.0.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    assert!(
        receiver
            .next_within(std::time::Duration::ZERO)
            .await
            .is_none(),
        "nothing reached loopback"
    );
    f.still_serves().await;
    f.stop().await;
}
