//! Executors on a real server and PostgreSQL: the built-in `demo` (Start → Process →
//! Finish, cancellation between steps), and `http`, against a real HTTP worker endpoint
//! (the test plays the worker: it receives the run and its token, and reports back through
//! the API), its deadline and an unreachable worker; kinds that are not declared.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::receiver::{Receiver, Reply};
use common::runs::{SCHEMA, http, items_db, json_of, post_json, run_when_ended};
use common::{TestDb, graphql};
use serde_json::{Value, json};

async fn server_with(db: &TestDb, runs_yaml: &str) -> viewcast::server::Server {
    let yaml = format!("{SCHEMA}runs:\n{runs_yaml}");
    let config = viewcast::config::load_str(std::path::Path::new("t.yaml"), &yaml).expect("config");
    // The test's workers listen on loopback.
    common::start_server_with_options(db, config, |o| o.allow_private_workers = true).await
}

async fn setup(runs_yaml: &str) -> (TestDb, viewcast::server::Server) {
    let db = items_db(false).await;
    let server = server_with(&db, runs_yaml).await;
    (db, server)
}

async fn start(addr: SocketAddr, kind: &str) -> Value {
    graphql(
        addr,
        "mutation($kind: String!) { startRun(kind: $kind, input: {n: 1}) { id status } }",
        json!({"kind": kind}),
    )
    .await
}

/// The run's events once it has ended (waits for the end).
async fn events_at_end(addr: SocketAddr, id: &str) -> Vec<Value> {
    let selection = "status events(limit: 1000) { seq type stage message percentage counters }";
    let run = run_when_ended(addr, id, selection).await;
    run["events"].as_array().expect("events").clone()
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn a_demo_run_goes_start_process_finish_and_undeclared_kinds_are_refused() {
    let (db, server) = setup("  demo:\n    executor: demo\n    items: 3\n    item_ms: 20\n  index:\n    executor: external\n").await;
    let addr = server.addr();
    let started = start(addr, "demo").await;
    let id = started["data"]["startRun"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let events = events_at_end(addr, &id).await;
    assert_eq!(
        types(&events),
        ["STARTED", "PROGRESS", "PROGRESS", "PROGRESS", "COMPLETED"]
    );
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert_eq!(events[2]["message"], "item 2 of 3");
    assert_eq!(events[2]["stage"], "Process");
    assert_eq!(
        events[4]["counters"],
        json!({"items_done": 3, "items_total": 3})
    );
    assert_eq!(events[4]["percentage"], 100.0);

    // An external kind is left alone: nothing appends to it.
    let external = start(addr, "index").await;
    let ext_id = external["data"]["startRun"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let unknown = start(addr, "crawl").await;
    assert_eq!(unknown["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    let message = unknown["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("\"crawl\"") && message.contains("demo, index"),
        "{message}"
    );
    let ext = graphql(
        addr,
        "query($id: ID!) { run(id: $id) { status lastSeq } }",
        json!({"id": ext_id}),
    )
    .await;
    assert_eq!(
        ext["data"]["run"],
        json!({"status": "PENDING", "lastSeq": 0})
    );
    server.shutdown().await;
    db.stop().await;
}

#[tokio::test]
async fn cancelling_a_demo_run_ends_it_with_exactly_one_cancelled_event() {
    let (db, server) =
        setup("  demo:\n    executor: demo\n    items: 1000\n    item_ms: 50\n").await;
    let addr = server.addr();
    let id = start(addr, "demo").await["data"]["startRun"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    // Wait for some progress, then cancel.
    let mut ws = common::Ws::connect(addr, "graphql-transport-ws").await;
    ws.subscribe(
        "e",
        &format!("subscription {{ runEvents(runId: \"{id}\") {{ seq type }} }}"),
    )
    .await;
    for _ in 0..3 {
        ws.next_payload("e").await;
    }
    let cancelled = graphql(
        addr,
        "mutation($id: ID!) { cancelRun(runId: $id, reason: \"stop\") { status } }",
        json!({"id": id}),
    )
    .await;
    assert_eq!(cancelled["data"]["cancelRun"]["status"], "CANCELLED");
    let events = events_at_end(addr, &id).await;
    // Give the driver time to try its next step: it must not append after the end.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = events_at_end(addr, &id).await;
    assert_eq!(events, again);
    let kinds = types(&events);
    assert_eq!(kinds.iter().filter(|t| **t == "CANCELLED").count(), 1);
    assert_eq!(*kinds.last().unwrap(), "CANCELLED");
    assert!(kinds.len() < 50, "stopped between steps: {kinds:?}");
    server.shutdown().await;
    db.stop().await;
}

#[tokio::test]
async fn an_http_worker_gets_the_run_and_reports_with_its_token() {
    let mut worker = Receiver::start().await;
    let (db, server) = setup(&format!(
        "  crawl:\n    executor: http\n    url: {}\n    deadline_s: 30\n",
        worker.url("/runs")
    ))
    .await;
    let addr = server.addr();
    let id = start(addr, "crawl").await["data"]["startRun"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let dispatched = worker.next().await;
    assert_eq!(dispatched.path, "/runs");
    assert_eq!(dispatched.body["run"]["id"], id.as_str());
    assert_eq!(dispatched.body["run"]["kind"], "crawl");
    assert_eq!(dispatched.body["run"]["input"], json!({"n": 1}));
    let token = dispatched.body["token"].as_str().expect("token").to_owned();
    assert_eq!(
        dispatched.header("authorization"),
        format!("Bearer {token}")
    );
    let events_url = dispatched.body["eventsUrl"]
        .as_str()
        .expect("eventsUrl")
        .to_owned();
    assert_eq!(events_url, format!("http://{addr}/runs/{id}/events"));

    let http = http();
    let post = |token: Option<String>, body: Value| {
        let (http, url) = (http.clone(), events_url.clone());
        async move { post_json(&http, &url, &body, token.as_deref()).await }
    };
    let events = json!({"events": [{"type": "PROGRESS", "stage": "Parsing", "percentage": 50}]});
    let refused = post(None, events.clone()).await;
    assert_eq!(refused.status(), 401);
    let body = json_of(refused).await;
    assert_eq!(body["code"], "UNAUTHENTICATED");
    let wrong = post(Some("0".repeat(64)), events.clone()).await;
    assert_eq!(wrong.status(), 401);
    // Over GraphQL too.
    let gql = graphql(
        addr,
        "mutation($id: ID!) { appendRunEvents(runId: $id, events: [{type: \"LOG\"}]) { seq } }",
        json!({"id": id}),
    )
    .await;
    assert_eq!(gql["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    let ok = post(Some(token.clone()), events).await;
    assert_eq!(ok.status(), 200);
    let gql = graphql(
        addr,
        "mutation($id: ID!, $token: String) { appendRunEvents(runId: $id, token: $token, events: [{type: \"COMPLETED\"}]) { seq } }",
        json!({"id": id, "token": token}),
    )
    .await;
    assert_eq!(gql["data"]["appendRunEvents"][0]["seq"], 3, "{gql}");
    let events = events_at_end(addr, &id).await;
    assert_eq!(types(&events), ["DISPATCHED", "PROGRESS", "COMPLETED"]);
    worker.assert_quiet(Duration::from_millis(300)).await;
    server.shutdown().await;
    db.stop().await;
}

#[tokio::test]
async fn an_http_run_fails_when_its_worker_goes_quiet_or_cannot_be_reached() {
    let mut worker = Receiver::start().await;
    // The second kind's worker fails every request; the third refuses the run.
    worker.path_default("/down", Reply::Status(503));
    worker.path_default("/refuse", Reply::Status(422));
    let (db, server) = setup(&format!(
        "  quiet:\n    executor: http\n    url: {}\n    deadline_s: 1\n  down:\n    executor: http\n    url: {}\n  refused:\n    executor: http\n    url: {}\n",
        worker.url("/quiet"),
        worker.url("/down"),
        worker.url("/refuse"),
    ))
    .await;
    let addr = server.addr();
    let quiet = start(addr, "quiet").await["data"]["startRun"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let down = start(addr, "down").await["data"]["startRun"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let events = events_at_end(addr, &quiet).await;
    assert_eq!(types(&events), ["DISPATCHED", "FAILED"]);
    assert!(
        events[1]["message"]
            .as_str()
            .unwrap()
            .contains("reported nothing for 1 s"),
        "{events:?}"
    );
    let events = events_at_end(addr, &down).await;
    assert_eq!(types(&events), ["DISPATCHED", "FAILED"]);
    let message = events[1]["message"].as_str().unwrap();
    assert!(
        message.contains("503") && message.contains("4 attempts"),
        "{message}"
    );
    // The worker is named by scheme and host: its path can be a credential.
    assert!(!message.contains("/down"), "{message}");
    let refused = start(addr, "refused").await["data"]["startRun"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let events = events_at_end(addr, &refused).await;
    assert_eq!(types(&events), ["DISPATCHED", "FAILED"]);
    let message = events[1]["message"].as_str().unwrap();
    assert!(message.contains("refused the run: 422"), "{message}");
    assert!(!message.contains("/refuse"), "{message}");
    let (mut to_down, mut to_refuse) = (0, 0);
    while let Some(r) = worker.next_within(Duration::from_millis(200)).await {
        to_down += usize::from(r.path == "/down");
        to_refuse += usize::from(r.path == "/refuse");
    }
    assert!(
        to_down <= 4,
        "{to_down} requests to the failing worker (some may have come earlier)"
    );
    assert_eq!(to_refuse, 1, "a refused run is not sent again");
    server.shutdown().await;
    db.stop().await;
}

#[tokio::test]
async fn a_worker_at_an_internal_address_stops_the_start_unless_allowed() {
    let db = items_db(false).await;
    let yaml =
        format!("{SCHEMA}runs:\n  crawl:\n    executor: http\n    url: http://127.0.0.1:9/runs\n");
    let config = viewcast::config::load_str(std::path::Path::new("t.yaml"), &yaml).expect("config");
    let options = viewcast::server::ServeOptions {
        host: "127.0.0.1".into(),
        port: 0,
        database_url: Some(db.url.clone()),
        ..viewcast::server::ServeOptions::default()
    };
    let err = match viewcast::server::Server::start(config, options).await {
        Ok(_) => panic!("a worker on loopback must be refused"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains("internal address"), "{err}");
    assert!(err.contains("--worker-allow-private"), "{err}");
    db.stop().await;
}
