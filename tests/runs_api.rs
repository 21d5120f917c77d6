//! The runs API end to end on a real server and PostgreSQL: GraphQL queries, mutations and
//! subscriptions (over graphql-transport-ws), Server-Sent Events and the plain HTTP
//! endpoints, with their errors.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::runs::{SCHEMA, http, items_db, json_of, parse_sse, post_json, sse_text};
use common::{TestDb, Ws, graphql, http_request};
use serde_json::{Value, json};

async fn setup() -> (TestDb, viewcast::server::Server) {
    let db = items_db(false).await;
    let server = common::start_server(&db, SCHEMA).await;
    (db, server)
}

async fn start_run(addr: SocketAddr, key: Option<&str>) -> String {
    let response = graphql(
        addr,
        "mutation($key: String) { startRun(kind: \"index\", input: {path: \"/repo\"}, idempotencyKey: $key) { id kind status input lastSeq idempotencyKey } }",
        json!({"key": key}),
    )
    .await;
    let run = &response["data"]["startRun"];
    assert_eq!(run["status"], "PENDING", "{response}");
    assert_eq!(run["input"], json!({"path": "/repo"}));
    assert_eq!(run["lastSeq"], 0);
    run["id"].as_str().expect("id").to_owned()
}

async fn append(addr: SocketAddr, id: &str, events: Value, expected: Option<i64>) -> Value {
    graphql(
        addr,
        "mutation($id: ID!, $events: [RunEventInput!]!, $expected: Int) { appendRunEvents(runId: $id, events: $events, expectedSeq: $expected) { seq type stage percentage counters } }",
        json!({"id": id, "events": events, "expected": expected}),
    )
    .await
}

fn code(response: &Value) -> &str {
    response["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("an error with a code: {response}"))
}

#[tokio::test]
#[allow(clippy::too_many_lines)]
async fn graphql_lifecycle_with_pagination_and_errors() {
    let (db, server) = setup().await;
    let addr = server.addr();
    let id = start_run(addr, Some("k1")).await;
    assert_eq!(start_run(addr, Some("k1")).await, id, "idempotent");

    let appended = append(
        addr,
        &id,
        json!([
            {"type": "STARTED", "stage": "Cloning"},
            {"type": "PROGRESS", "stage": "Parsing", "percentage": 50.0,
             "counters": {"files_done": 5, "files_total": 10}}
        ]),
        Some(1),
    )
    .await;
    assert_eq!(
        appended["data"]["appendRunEvents"],
        json!([
            {"seq": 1, "type": "STARTED", "stage": "Cloning", "percentage": null, "counters": null},
            {"seq": 2, "type": "PROGRESS", "stage": "Parsing", "percentage": 50.0,
             "counters": {"files_done": 5, "files_total": 10}}
        ])
    );
    // Optimistic check, bad input: refused with a code, nothing written.
    assert_eq!(
        code(&append(addr, &id, json!([{"type": "LOG"}]), Some(1)).await),
        "SEQ_MISMATCH"
    );
    assert_eq!(
        code(&append(addr, &id, json!([{"type": "bad type"}]), None).await),
        "BAD_USER_INPUT"
    );
    assert_eq!(
        code(&append(addr, &id, json!([{"type": "LOG", "percentage": 101}]), None).await),
        "BAD_USER_INPUT"
    );
    let done = append(
        addr,
        &id,
        json!([{"type": "COMPLETED", "message": "indexed"}]),
        Some(3),
    )
    .await;
    assert_eq!(done["data"]["appendRunEvents"][0]["seq"], 3, "{done}");
    let after = append(addr, &id, json!([{"type": "LOG"}]), None).await;
    assert_eq!(code(&after), "RUN_ENDED");
    assert!(
        after["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("COMPLETED"),
        "{after}"
    );

    let run = graphql(
        addr,
        "query($id: ID!) { run(id: $id) { status lastSeq terminalType terminalMessage startedAt finishedAt events(fromSeq: 2) { seq type } } }",
        json!({"id": id}),
    )
    .await;
    let run = &run["data"]["run"];
    assert_eq!(run["status"], "COMPLETED");
    assert_eq!(run["lastSeq"], 3);
    assert_eq!(run["terminalType"], "COMPLETED");
    assert_eq!(run["terminalMessage"], "indexed");
    assert!(run["startedAt"].is_string() && run["finishedAt"].is_string());
    assert_eq!(
        run["events"],
        json!([{"seq": 2, "type": "PROGRESS"}, {"seq": 3, "type": "COMPLETED"}])
    );
    let events = graphql(
        addr,
        "query($id: ID!) { runEvents(runId: $id, fromSeq: 1, limit: 2) { seq } }",
        json!({"id": id}),
    )
    .await;
    assert_eq!(events["data"]["runEvents"], json!([{"seq": 1}, {"seq": 2}]));
    let missing = graphql(
        addr,
        "{ run(id: \"00000000-0000-0000-0000-000000000000\") { id } }",
        json!({}),
    )
    .await;
    assert_eq!(missing["data"]["run"], Value::Null);
    let missing_events = graphql(addr, "{ runEvents(runId: \"nope\") { seq } }", json!({})).await;
    assert_eq!(code(&missing_events), "NOT_FOUND");
    let cancelled = graphql(
        addr,
        "mutation($id: ID!) { cancelRun(runId: $id, reason: \"late\") { id } }",
        json!({"id": id}),
    )
    .await;
    assert_eq!(
        code(&cancelled),
        "RUN_ENDED",
        "a completed run is not cancelled"
    );

    // 25 more runs; pages of 10, newest first, each run once.
    let mut ids = vec![id];
    for _ in 0..25 {
        ids.push(start_run(addr, None).await);
    }
    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = graphql(
            addr,
            "query($after: String) { runs(first: 10, after: $after, filter: {kind: \"index\"}) { nodes { id } edges { cursor } pageInfo { hasNextPage endCursor } } }",
            json!({"after": after}),
        )
        .await;
        let page = &page["data"]["runs"];
        for node in page["nodes"].as_array().expect("nodes") {
            listed.push(node["id"].as_str().unwrap().to_owned());
        }
        if page["pageInfo"]["hasNextPage"] == false {
            break;
        }
        after = Some(page["pageInfo"]["endCursor"].as_str().unwrap().to_owned());
    }
    ids.reverse();
    assert_eq!(listed, ids);
    let filtered = graphql(
        addr,
        "{ runs(filter: {status: [COMPLETED]}) { nodes { status } } }",
        json!({}),
    )
    .await;
    assert_eq!(
        filtered["data"]["runs"]["nodes"],
        json!([{"status": "COMPLETED"}])
    );
    let bad_cursor = graphql(addr, "{ runs(after: \"zzz\") { nodes { id } } }", json!({})).await;
    assert_eq!(code(&bad_cursor), "BAD_USER_INPUT");
    let bad_first = graphql(addr, "{ runs(first: 0) { nodes { id } } }", json!({})).await;
    assert_eq!(code(&bad_first), "BAD_USER_INPUT");
    server.shutdown().await;
    db.stop().await;
}

/// The items of a `runEvents` subscription until it completes: (seq, type).
async fn subscription_events(ws: &mut Ws, op: &str) -> Vec<(i64, String)> {
    let mut got = Vec::new();
    loop {
        let message = ws.recv_skipping_keepalives().await.expect("open");
        assert_eq!(message["id"], op, "{message}");
        match message["type"].as_str() {
            Some("next") => {
                let e = &message["payload"]["data"]["runEvents"];
                assert!(message["payload"]["errors"].is_null(), "{message}");
                got.push((
                    e["seq"].as_i64().unwrap(),
                    e["type"].as_str().unwrap().to_owned(),
                ));
            }
            Some("complete") => return got,
            _ => panic!("unexpected {message}"),
        }
    }
}

#[tokio::test]
async fn subscriptions_replay_then_follow_and_report_status_changes() {
    let (db, server) = setup().await;
    let addr = server.addr();
    let mut statuses = Ws::connect(addr, "graphql-transport-ws").await;
    statuses
        .subscribe(
            "s",
            "subscription { runs(filter: {kind: \"index\"}) { id status } }",
        )
        .await;
    // Runs started before the subscription is listening are not reported: start warm-up
    // runs until one is.
    let mut warm_up = Vec::new();
    loop {
        warm_up.push(start_run(addr, None).await);
        let next = tokio::time::timeout(
            Duration::from_millis(500),
            statuses.recv_skipping_keepalives(),
        )
        .await;
        if next.is_ok() {
            break;
        }
    }
    let id = start_run(addr, None).await;
    append(
        addr,
        &id,
        json!([{"type": "STARTED"}, {"type": "LOG"}]),
        None,
    )
    .await;

    let mut ws = Ws::connect(addr, "graphql-transport-ws").await;
    ws.subscribe(
        "e",
        &format!("subscription {{ runEvents(runId: \"{id}\", fromSeq: 2) {{ seq type }} }}"),
    )
    .await;
    assert_eq!(
        ws.next_payload("e").await["data"]["runEvents"],
        json!({"seq": 2, "type": "LOG"})
    );
    append(
        addr,
        &id,
        json!([{"type": "PROGRESS", "percentage": 10}]),
        None,
    )
    .await;
    assert_eq!(
        ws.next_payload("e").await["data"]["runEvents"],
        json!({"seq": 3, "type": "PROGRESS"})
    );
    append(
        addr,
        &id,
        json!([{"type": "FAILED", "message": "disk full"}]),
        None,
    )
    .await;
    assert_eq!(
        subscription_events(&mut ws, "e").await,
        vec![(4, "FAILED".to_owned())]
    );

    // Status changes: created, running, failed (the same status is not repeated).
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let payload = statuses.next_payload("s").await;
        let run = &payload["data"]["runs"];
        if warm_up.iter().any(|w| run["id"] == w.as_str()) {
            continue;
        }
        assert_eq!(run["id"], id.as_str());
        seen.push(run["status"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen, ["PENDING", "RUNNING", "FAILED"]);

    // Unknown run: an error with its code, then complete.
    ws.subscribe(
        "x",
        "subscription { runEvents(runId: \"00000000-0000-0000-0000-000000000000\") { seq } }",
    )
    .await;
    let message = ws.recv_skipping_keepalives().await.expect("open");
    assert_eq!(message["type"], "error", "{message}");
    assert_eq!(
        message["payload"][0]["extensions"]["code"], "NOT_FOUND",
        "{message}"
    );
    server.shutdown().await;
    db.stop().await;
}

/// Reads an SSE response to its end: (id, event, data) per event; comments are counted.
async fn sse_events(response: reqwest::Response) -> (Vec<(String, String, Value)>, usize) {
    parse_sse(&sse_text(response).await)
}

#[tokio::test]
#[allow(clippy::too_many_lines)]
async fn sse_and_plain_http_endpoints() {
    let (db, server) = setup().await;
    let addr = server.addr();
    let base = format!("http://{addr}");
    let http = http();

    let created = post_json(
        &http,
        &format!("{base}/runs"),
        &json!({"kind": "index", "input": {"path": "/r"}, "idempotencyKey": "h1"}),
        None,
    )
    .await;
    assert_eq!(created.status(), 201);
    let run = json_of(created).await;
    let id = run["id"].as_str().unwrap().to_owned();
    assert_eq!(run["status"], "PENDING");
    let again = post_json(
        &http,
        &format!("{base}/runs"),
        &json!({"kind": "index", "idempotencyKey": "h1"}),
        None,
    )
    .await;
    assert_eq!(again.status(), 200);
    assert_eq!(json_of(again).await["id"], id.as_str());

    let appended = post_json(
        &http,
        &format!("{base}/runs/{id}/events"),
        &json!({"events": [{"type": "STARTED"}, {"type": "LOG", "message": "a\nb"}], "expectedSeq": 1}),
        None,
    )
    .await;
    assert_eq!(appended.status(), 200);
    assert_eq!(json_of(appended).await["events"][1]["seq"], 2);

    // SSE from the start while events are appended; it ends after the terminal event.
    let response = http
        .get(format!("{base}/runs/{id}/events"))
        .send()
        .await
        .expect("SSE");
    assert_eq!(response.status(), 200);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(header("content-type"), "text/event-stream");
    assert_eq!(header("cache-control"), "no-cache, no-transform");
    assert_eq!(header("x-accel-buffering"), "no");
    let reader = tokio::spawn(sse_events(response));
    let cancelled = post_json(
        &http,
        &format!("{base}/runs/{id}/cancel"),
        &json!({"reason": "user asked"}),
        None,
    )
    .await;
    assert_eq!(cancelled.status(), 200);
    assert_eq!(json_of(cancelled).await["status"], "CANCELLED");
    let (events, _) = reader.await.expect("reader");
    let ids: Vec<&str> = events.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ids, ["1", "2", "3"]);
    assert_eq!(events[1].2["message"], "a\nb", "multi-line data survives");
    assert_eq!(events[2].1, "CANCELLED");
    assert_eq!(events[2].2["message"], "user asked");

    // Last-Event-ID wins over fromSeq.
    let resumed = http
        .get(format!("{base}/runs/{id}/events?fromSeq=1"))
        .header("Last-Event-ID", "2")
        .send()
        .await
        .expect("SSE");
    let (events, _) = sse_events(resumed).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "3");
    let from = http
        .get(format!("{base}/runs/{id}/events?fromSeq=2"))
        .send()
        .await
        .expect("SSE");
    assert_eq!(sse_events(from).await.0.len(), 2);

    // Errors: JSON with a code and the right status.
    for (method, path, body, status, code) in [
        (
            "GET",
            format!("/runs/{id}/events?fromSeq=0"),
            None,
            400,
            "BAD_USER_INPUT",
        ),
        (
            "GET",
            format!("/runs/{id}/events?fromSeq=x"),
            None,
            400,
            "BAD_USER_INPUT",
        ),
        (
            "GET",
            "/runs/nope/events".to_owned(),
            None,
            404,
            "NOT_FOUND",
        ),
        ("GET", "/runs/nope".to_owned(), None, 404, "NOT_FOUND"),
        (
            "POST",
            "/runs".to_owned(),
            Some("{\"kind\": 1}"),
            400,
            "BAD_USER_INPUT",
        ),
        (
            "POST",
            "/runs".to_owned(),
            Some("{\"kind\": \"a\", \"extra\": 1}"),
            400,
            "BAD_USER_INPUT",
        ),
        (
            "POST",
            "/runs".to_owned(),
            Some("not json"),
            400,
            "BAD_USER_INPUT",
        ),
        (
            "POST",
            format!("/runs/{id}/events"),
            Some("{\"events\": [{\"type\": \"LOG\"}]}"),
            409,
            "RUN_ENDED",
        ),
        ("POST", format!("/runs/{id}/cancel"), None, 200, ""),
    ] {
        let (got, text) = http_request(
            addr,
            method,
            &path,
            body,
            &[("Content-Type", "application/json")],
        )
        .await
        .expect("request");
        assert_eq!(got, status, "{method} {path}: {text}");
        if !code.is_empty() {
            let value: Value = serde_json::from_str(&text).expect("JSON error");
            assert_eq!(value["code"], code, "{method} {path}: {text}");
            assert!(value["error"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }
    let (got, _) = http_request(
        addr,
        "GET",
        &format!("/runs/{id}/events"),
        None,
        &[("Last-Event-ID", "abc")],
    )
    .await
    .expect("request");
    assert_eq!(got, 400);
    let (_, metrics) = common::http_get(addr, "/metrics").await.expect("metrics");
    let value = |name: &str| -> i64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
    };
    assert_eq!(value("viewcast_run_events_appended_total"), 3);
    assert_eq!(value("viewcast_run_publisher"), 1);
    assert!(value("viewcast_run_events_published_total") >= 3);
    assert_eq!(value("viewcast_run_consumers"), 0, "every stream has ended");
    server.shutdown().await;
    db.stop().await;
}

#[tokio::test]
async fn sse_heartbeats_while_a_run_is_quiet() {
    let db = items_db(false).await;
    let config =
        viewcast::config::load_str(std::path::Path::new("t.yaml"), SCHEMA).expect("config");
    let server = common::start_server_with_options(&db, config, |o| {
        o.runs.heartbeat = Duration::from_millis(200);
    })
    .await;
    let addr = server.addr();
    let id = start_run(addr, None).await;
    let http = http();
    let mut response = http
        .get(format!("http://{addr}/runs/{id}/events"))
        .send()
        .await
        .expect("SSE");
    let mut text = String::new();
    while parse_sse(&text).1 < 3 {
        let chunk = tokio::time::timeout(common::DEADLINE, response.chunk())
            .await
            .expect("in time")
            .expect("body")
            .expect("open");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(text.contains(": heartbeat 0"), "{text}");
    assert!(text.starts_with("retry: 1000"), "{text}");
    server.shutdown().await;
    db.stop().await;
}
