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
    watcher: Ws,
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
        let update = self.watcher.next_payload("watch").await;
        assert_eq!(update["data"]["items"]["operation"], "INSERT", "{update}");
        assert_eq!(update["data"]["items"]["data"]["id"], id, "{update}");
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
