//! Runs across failures, against a real PostgreSQL: the binary killed with SIGKILL while
//! demo runs progress, an http run's worker has gone quiet and appends wait in the outbox;
//! after a restart the outbox is published in order, demo runs resume where they were (each
//! step persisted once) and the quiet worker's run fails at its deadline. Two replicas share
//! the runs; when one stops, the other drives its runs on, and consumers on either see
//! events appended on the other live.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::binary::{Binary, Scratch};
use common::receiver::Receiver;
use common::runs::{SCHEMA, http, items_db, outbox_state, post_json, run_when_ended, sse_seqs};
use common::{TestDb, graphql};
use serde_json::{Value, json};
use viewcast::run::{NewEvent, Runs};
use viewcast::store::Store;

const DEMO_ITEMS: usize = 30;

fn schema(worker: &Receiver) -> String {
    format!(
        "{SCHEMA}runs:\n  demo:\n    executor: demo\n    items: {DEMO_ITEMS}\n    item_ms: 100\n  \
         index:\n    executor: external\n  crawl:\n    executor: http\n    url: {}\n    deadline_s: 2\n",
        worker.url("/runs")
    )
}

async fn start(addr: SocketAddr, kind: &str) -> String {
    let response = graphql(
        addr,
        "mutation($kind: String!) { startRun(kind: $kind) { id } }",
        json!({"kind": kind}),
    )
    .await;
    response["data"]["startRun"]["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

/// The run once it has ended: (status, events as (seq, type, message)).
async fn ended(addr: SocketAddr, id: &str) -> (String, Vec<(i64, String, String)>) {
    let run = run_when_ended(addr, id, "status events(limit: 1000) { seq type message }").await;
    let events = run["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["seq"].as_i64().unwrap(),
                e["type"].as_str().unwrap().to_owned(),
                e["message"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    (run["status"].as_str().expect("status").to_owned(), events)
}

/// A complete demo run: STARTED, one PROGRESS per item in order, COMPLETED; seqs 1, 2, 3, …
fn assert_complete_demo(status: &str, events: &[(i64, String, String)]) {
    assert_eq!(status, "COMPLETED", "{events:?}");
    let seqs: Vec<i64> = events.iter().map(|e| e.0).collect();
    assert_eq!(seqs, (1..=events.len() as i64).collect::<Vec<_>>());
    let mut expected = vec![(
        "STARTED".to_owned(),
        format!("{DEMO_ITEMS} items to process"),
    )];
    for k in 1..=DEMO_ITEMS {
        expected.push(("PROGRESS".to_owned(), format!("item {k} of {DEMO_ITEMS}")));
    }
    expected.push((
        "COMPLETED".to_owned(),
        format!("processed {DEMO_ITEMS} items"),
    ));
    let got: Vec<(String, String)> = events.iter().map(|e| (e.1.clone(), e.2.clone())).collect();
    assert_eq!(got, expected, "each step once, in order");
}

async fn last_seq(addr: SocketAddr, id: &str) -> i64 {
    let run = graphql(
        addr,
        "query($id: ID!) { run(id: $id) { lastSeq } }",
        json!({"id": id}),
    )
    .await;
    run["data"]["run"]["lastSeq"].as_i64().expect("lastSeq")
}

/// Appends a LOG event to `id` straight through the store (as a worker library would).
async fn log(store: &Runs, id: &str, message: String) {
    let event = NewEvent {
        event_type: "LOG".into(),
        message: Some(message),
        ..NewEvent::default()
    };
    store.append(id, &[event], None).await.expect("append");
}

/// The test plays an http worker: takes the dispatched run, reports once, goes quiet.
async fn report_once_then_go_quiet(worker: &mut Receiver) {
    let dispatched = worker.next().await;
    let token = dispatched.body["token"].as_str().expect("token").to_owned();
    let events_url = dispatched.body["eventsUrl"]
        .as_str()
        .expect("url")
        .to_owned();
    let reported = post_json(
        &http(),
        &events_url,
        &json!({"events": [{"type": "PROGRESS", "stage": "Parsing"}]}),
        Some(&token),
    )
    .await;
    assert_eq!(reported.status(), 200);
}

#[tokio::test]
async fn kill_9_during_runs_loses_nothing_and_resumes_as_documented() {
    let db = items_db(true).await;
    let mut worker = Receiver::start().await;
    let scratch = Scratch::new();
    let config = scratch.0.join("schema.yaml");
    std::fs::write(&config, schema(&worker)).expect("config");
    let a = Binary::start_as(&db, &scratch, &config, "first", "a").await;
    let addr = a.addr;

    let mut demos = Vec::new();
    for _ in 0..4 {
        demos.push(start(addr, "demo").await);
    }
    let external = start(addr, "index").await;
    let crawl = start(addr, "crawl").await;
    report_once_then_go_quiet(&mut worker).await;
    let store = Runs::new(Store::connect(&db.url).await.expect("store"));
    for n in 1..=5 {
        log(&store, &external, format!("before the crash {n}")).await;
    }
    // Every demo run is under way.
    for id in &demos {
        while last_seq(addr, id).await < 3 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(a); // SIGKILL

    // While no server runs: appends wait in the outbox.
    for n in 1..=5 {
        log(&store, &external, format!("while down {n}")).await;
    }
    let sql = db.client().await;
    let waiting: i64 = sql
        .query_one(
            "SELECT count(*) FROM viewcast_run_outbox WHERE run_id = $1::text::uuid",
            &[&external],
        )
        .await
        .expect("outbox")
        .get(0);
    assert!(waiting >= 5, "{waiting} outbox rows wait");

    // Restarted (same instance): it publishes the outbox and resumes what it drove.
    let b = Binary::start_as(&db, &scratch, &config, "second", "a").await;
    let addr = b.addr;
    for id in &demos {
        let (status, events) = ended(addr, id).await;
        assert_complete_demo(&status, &events);
    }
    let (status, events) = ended(addr, &crawl).await;
    assert_eq!(status, "FAILED");
    assert!(
        events
            .last()
            .unwrap()
            .2
            .contains("reported nothing for 2 s"),
        "{events:?}"
    );
    worker.assert_quiet(Duration::from_millis(200)).await;
    let completed = NewEvent {
        event_type: "COMPLETED".into(),
        ..NewEvent::default()
    };
    store
        .append(&external, &[completed], None)
        .await
        .expect("append");
    assert_eq!(
        sse_seqs(addr, &external).await,
        (1..=11).collect::<Vec<_>>()
    );
    assert_eq!(outbox_state(&sql).await, (0, 0, 0));
    drop(b);
    db.stop().await;
}

async fn replica(db: &TestDb, worker: &Receiver, instance: &str) -> viewcast::server::Server {
    let config = viewcast::config::load_str(std::path::Path::new("t.yaml"), &schema(worker))
        .expect("config");
    let instance = instance.to_owned();
    common::start_server_with_options(db, config, move |o| {
        o.instance = instance;
        o.allow_private_workers = true;
    })
    .await
}

#[tokio::test]
async fn two_replicas_share_runs_and_one_drives_on_when_the_other_stops() {
    let db = items_db(false).await;
    let worker = Receiver::start().await;
    let a = replica(&db, &worker, "a").await;
    let b = replica(&db, &worker, "b").await;
    let mut demos = Vec::new();
    for i in 0..6 {
        let via = if i % 2 == 0 { a.addr() } else { b.addr() };
        demos.push(start(via, "demo").await);
    }
    // A consumer on B follows a run appended to through A.
    let external = start(a.addr(), "index").await;
    let follower = {
        let (addr, id) = (b.addr(), external.clone());
        tokio::spawn(async move { sse_seqs(addr, &id).await })
    };
    let mut seq = 0;
    for _ in 0..3 {
        seq += 1;
        let appended = graphql(
            a.addr(),
            "mutation($id: ID!, $seq: Int) { appendRunEvents(runId: $id, expectedSeq: $seq, events: [{type: \"LOG\"}]) { seq } }",
            json!({"id": external, "seq": seq}),
        )
        .await;
        assert_eq!(
            appended["data"]["appendRunEvents"][0]["seq"], seq,
            "{appended}"
        );
    }
    // Once every demo run is under way, A stops: B drives them all to the end.
    for id in &demos {
        while last_seq(b.addr(), id).await < 3 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let owners: Value = {
        let rows = db
            .client()
            .await
            .query(
                "SELECT DISTINCT executor_owner FROM viewcast_runs WHERE kind = 'demo'",
                &[],
            )
            .await
            .expect("owners");
        rows.iter()
            .map(|r| r.get::<_, Option<String>>(0))
            .collect::<Vec<_>>()
            .into()
    };
    a.shutdown().await;
    for id in &demos {
        let (status, events) = ended(b.addr(), id).await;
        assert_complete_demo(&status, &events);
    }
    graphql(
        b.addr(),
        "mutation($id: ID!) { appendRunEvents(runId: $id, events: [{type: \"COMPLETED\"}]) { seq } }",
        json!({"id": external}),
    )
    .await;
    let seen = tokio::time::timeout(common::DEADLINE, follower)
        .await
        .expect("in time")
        .expect("follower");
    assert_eq!(seen, vec![1, 2, 3, 4]);
    let still: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM viewcast_runs WHERE executor_owner = 'a'",
            &[],
        )
        .await
        .expect("owners")
        .get(0);
    assert_eq!(
        still, 0,
        "A handed its runs over when it stopped (owners were {owners})"
    );
    b.shutdown().await;
    db.stop().await;
}
