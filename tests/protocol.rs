//! GraphQL over WebSocket and HTTP at the protocol level: close codes, keep-alives, errors,
//! readiness and metrics. The server runs with an unreachable database, so these tests need no
//! PostgreSQL: subscriptions stay open (waiting for the source) and queries fail cleanly.

mod common;

use std::time::Duration;

use common::{Ws, http_get, http_request};
use serde_json::{Value, json};
use viewcast::server::{ServeOptions, Server};

const SCHEMA: &str = r"
backend: postgres
sources:
  items:
    primary_key: id
    columns:
      id: Integer
      name: String
      score: Integer
";

async fn server_without_database(init_timeout: Duration, keepalive: Duration) -> Server {
    let config =
        viewcast::config::load_str(std::path::Path::new("test.yaml"), SCHEMA).expect("config");
    // Port 1 on loopback refuses connections: the source stays down, never permanently.
    let mut options = ServeOptions {
        host: "127.0.0.1".into(),
        port: 0,
        database_url: Some("postgres://nobody@127.0.0.1:1/nothing".into()),
        ..ServeOptions::default()
    };
    options.ws.init_timeout = init_timeout;
    options.ws.keepalive = keepalive;
    Server::start(config, options)
        .await
        .expect("server starts without its database")
}

async fn server() -> Server {
    server_without_database(Duration::from_secs(3), Duration::from_secs(30)).await
}

const SUBSCRIPTION: &str = "subscription { items { operation data { id } } }";

#[tokio::test]
async fn init_timeout_closes_with_4408() {
    let server = server_without_database(Duration::from_millis(200), Duration::from_secs(30)).await;
    let mut ws = Ws::open(server.addr(), "graphql-transport-ws").await;
    assert_eq!(ws.recv().await.unwrap_err().0, 4408);
    server.shutdown().await;
}

#[tokio::test]
async fn subscribe_before_ack_closes_with_4401() {
    let server = server().await;
    let mut ws = Ws::open(server.addr(), "graphql-transport-ws").await;
    ws.subscribe("1", SUBSCRIPTION).await;
    assert_eq!(ws.recv().await.unwrap_err().0, 4401);
    server.shutdown().await;
}

#[tokio::test]
async fn second_init_closes_with_4429() {
    let server = server().await;
    let mut ws = Ws::connect(server.addr(), "graphql-transport-ws").await;
    ws.send(json!({"type": "connection_init"})).await;
    assert_eq!(ws.recv().await.unwrap_err().0, 4429);
    server.shutdown().await;
}

#[tokio::test]
async fn duplicate_operation_id_closes_with_4409() {
    let server = server().await;
    let mut ws = Ws::connect(server.addr(), "graphql-transport-ws").await;
    ws.subscribe("same", SUBSCRIPTION).await;
    ws.subscribe("same", SUBSCRIPTION).await;
    let (code, reason) = ws.recv().await.unwrap_err();
    assert_eq!(
        (code, reason.as_str()),
        (4409, "Subscriber for same already exists")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn an_id_is_reusable_after_complete() {
    let server = server().await;
    let mut ws = Ws::connect(server.addr(), "graphql-transport-ws").await;
    ws.subscribe("x", SUBSCRIPTION).await;
    ws.send(json!({"type": "complete", "id": "x"})).await;
    ws.subscribe("x", SUBSCRIPTION).await;
    // Still open: a ping is answered.
    ws.send(json!({"type": "ping", "payload": {"n": 1}})).await;
    assert_eq!(
        ws.recv().await.unwrap(),
        json!({"type": "pong", "payload": {"n": 1}})
    );
    server.shutdown().await;
}

#[tokio::test]
async fn invalid_messages_close_with_4400() {
    let server = server().await;
    for bad in [
        "not json",
        r#"{"type": "nonsense"}"#,
        r#"{"type": "subscribe", "id": "1"}"#,
    ] {
        let mut ws = Ws::connect(server.addr(), "graphql-transport-ws").await;
        ws.send_raw(bad).await;
        assert_eq!(ws.recv().await.unwrap_err().0, 4400, "for {bad}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn validation_errors_end_the_operation_with_error() {
    let server = server().await;
    let mut ws = Ws::connect(server.addr(), "graphql-transport-ws").await;
    ws.subscribe("v", "subscription { items { nope } }").await;
    let message = ws.recv().await.unwrap();
    assert_eq!(message["type"], "error", "{message}");
    assert_eq!(message["id"], "v");
    assert!(
        message["payload"][0]["message"]
            .as_str()
            .unwrap()
            .contains("nope"),
        "{message}"
    );
    assert_eq!(
        message["payload"][0]["extensions"]["code"], "GRAPHQL_VALIDATION_FAILED",
        "{message}"
    );
    ws.subscribe("p", "subscription { items {").await;
    let message = ws.recv().await.unwrap();
    assert_eq!(message["type"], "error", "{message}");
    assert_eq!(
        message["payload"][0]["extensions"]["code"], "GRAPHQL_PARSE_FAILED",
        "{message}"
    );

    ws.subscribe(
        "w",
        r#"subscription { items(where: {score: {_gte: 1}, name: {_regex: "("}}) { operation } }"#,
    )
    .await;
    let message = ws.recv().await.unwrap();
    assert_eq!(message["type"], "error", "{message}");
    assert_eq!(
        message["payload"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{message}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn server_pings_on_graphql_transport_ws() {
    let server = server_without_database(Duration::from_secs(3), Duration::from_millis(100)).await;
    let mut ws = Ws::connect(server.addr(), "graphql-transport-ws").await;
    assert_eq!(ws.recv().await.unwrap()["type"], "ping");
    server.shutdown().await;
}

#[tokio::test]
async fn legacy_protocol_acks_keeps_alive_and_stops() {
    let server = server_without_database(Duration::from_secs(3), Duration::from_millis(100)).await;
    let mut ws = Ws::open(server.addr(), "graphql-ws").await;
    ws.send(json!({"type": "connection_init", "payload": {}}))
        .await;
    assert_eq!(ws.recv().await.unwrap()["type"], "connection_ack");
    assert_eq!(
        ws.recv().await.unwrap()["type"],
        "ka",
        "ka right after the ack"
    );
    assert_eq!(ws.recv().await.unwrap()["type"], "ka", "and periodically");
    ws.subscribe("1", "subscription { items { nope } }").await;
    let error = ws.recv_skipping_keepalives().await.unwrap();
    assert_eq!(
        (error["type"].as_str(), error["id"].as_str()),
        (Some("error"), Some("1")),
        "{error}"
    );
    ws.subscribe("2", SUBSCRIPTION).await;
    ws.send(json!({"type": "stop", "id": "2"})).await;
    let complete = ws.recv_skipping_keepalives().await.unwrap();
    assert_eq!(complete, json!({"type": "complete", "id": "2"}));
    // A finished operation is not completed twice: after its own `complete`, a `stop` for it
    // sends nothing (the next message is the answer to the next operation).
    ws.subscribe("3", "{ __typename }").await;
    assert_eq!(ws.recv_skipping_keepalives().await.unwrap()["type"], "data");
    assert_eq!(
        ws.recv_skipping_keepalives().await.unwrap(),
        json!({"type": "complete", "id": "3"})
    );
    ws.send(json!({"type": "stop", "id": "3"})).await;
    ws.subscribe("4", "subscription { items { nope } }").await;
    assert_eq!(ws.recv_skipping_keepalives().await.unwrap()["id"], "4");
    ws.send(json!({"type": "connection_terminate"})).await;
    assert_eq!(ws.recv_skipping_keepalives().await.unwrap_err().0, 1000);
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_connections_with_1001() {
    let server = server().await;
    let mut ws = Ws::connect(server.addr(), "graphql-transport-ws").await;
    ws.subscribe("1", SUBSCRIPTION).await;
    let shutdown = tokio::spawn(server.shutdown());
    assert_eq!(ws.recv().await.unwrap_err().0, 1001);
    shutdown.await.unwrap();
}

#[tokio::test]
async fn ready_reports_a_lost_database_and_queries_fail_cleanly() {
    let server = server().await;
    let addr = server.addr();
    assert_eq!(http_get(addr, "/health").await.unwrap().0, 200);
    let ready = common::eventually(
        || async move { http_get(addr, "/ready").await.unwrap() },
        |(_, body)| {
            // The trigger store (same unreachable database) may report "down" first.
            serde_json::from_str::<Value>(body)
                .is_ok_and(|body| body["sources"]["items"]["status"] == "down")
        },
    )
    .await;
    assert_eq!(ready.0, 503);
    let body: Value = serde_json::from_str(&ready.1).unwrap();
    assert_eq!(body["sources"]["items"]["status"], "down");
    assert!(
        body["sources"]["items"]["reason"]
            .as_str()
            .unwrap()
            .contains("cannot connect"),
        "{body}"
    );
    // Runs share that store: their consumers would get nothing, and /ready says so.
    assert_eq!(body["runs"]["status"], "down", "{body}");
    assert!(
        body["runs"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("not listening for run events"),
        "{body}"
    );

    let result = common::graphql(addr, "{ items { id } }", Value::Null).await;
    assert_eq!(
        result["errors"][0]["extensions"]["code"], "SOURCE_UNAVAILABLE",
        "{result}"
    );

    let (status, metrics) = http_get(addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("viewcast_source_reconnects_total{source=\"items\"}"),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn http_requests_get_graphql_errors() {
    let server = server().await;
    let addr = server.addr();
    let (status, body) = http_request(
        addr,
        "POST",
        "/graphql",
        Some("{not json"),
        &[("Content-Type", "application/json")],
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("errors"), "{body}");

    let result = common::graphql(
        addr,
        "{ items(where: {score: {_gte: \"x\"}}) { id } }",
        Value::Null,
    )
    .await;
    assert!(
        result["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("Int"),
        "{result}"
    );
    assert!(result["data"].is_null());

    // Every error has a code, async-graphql's own included.
    for (query, code) in [
        (
            "{ items(where: {score: {_gte: \"x\"}}) { id } }",
            "GRAPHQL_VALIDATION_FAILED",
        ),
        ("{ items { nope } }", "GRAPHQL_VALIDATION_FAILED"),
        ("{ items(bogus: 1) { id } }", "GRAPHQL_VALIDATION_FAILED"),
        ("{ items { id ", "GRAPHQL_PARSE_FAILED"),
        (
            "query Q($n: Int!) { items(limit: $n) { id } }",
            "GRAPHQL_VALIDATION_FAILED",
        ),
    ] {
        let result = common::graphql(addr, query, Value::Null).await;
        assert_eq!(
            result["errors"][0]["extensions"]["code"], code,
            "{query}: {result}"
        );
    }

    let result = common::graphql(addr, "{ items(limit: -1) { id } }", Value::Null).await;
    assert!(
        result["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("limit"),
        "{result}"
    );

    let (status, body) = http_get(addr, "/graphql?query=%7B__typename%7D")
        .await
        .unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"data":{"__typename":"Query"}}"#)
    );

    browser_pages_are_the_servers_own(addr).await;
    server.shutdown().await;
}

/// A browser's pages: GraphiQL, every file it loads being the server's own, and /ready.
async fn browser_pages_are_the_servers_own(addr: std::net::SocketAddr) {
    let (status, body) = http_request(addr, "GET", "/graphql", None, &[("Accept", "text/html")])
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("graphiql"), "GraphiQL for browsers");
    // Without auth configured, /ready says so.
    let (_, ready) = http_get(addr, "/ready").await.unwrap();
    let ready: Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["auth"], "none", "{ready}");
    // Everything the page loads is the server's own, embedded in the binary; versioned files
    // may be cached for good.
    let assets: Vec<&str> = body
        .split("\"/assets/")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert!(!body.contains("https://") && assets.len() >= 4, "{body}");
    for asset in assets {
        let (status, head, body) =
            common::http_exchange(addr, "GET", &format!("/assets/{asset}"), None, &[])
                .await
                .unwrap();
        assert_eq!(status, 200, "{asset}");
        let kind = if std::path::Path::new(asset)
            .extension()
            .is_some_and(|e| e == "css")
        {
            "text/css"
        } else {
            "text/javascript"
        };
        assert!(
            head.contains(&format!("content-type: {kind}")),
            "{asset}: {head}"
        );
        if !asset.starts_with("viewcast/") {
            assert!(head.contains("immutable"), "{asset}: {head}");
            assert!(body.len() > 10_000, "{asset}: {} bytes", body.len());
        }
    }
    let (status, _) = http_get(addr, "/assets/graphiql-4.1.2/../../Cargo.toml")
        .await
        .unwrap();
    assert_eq!(status, 404);
}
