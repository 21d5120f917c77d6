//! Consumers that drop their connection at random points and resume from the last seq they
//! saw — over SSE (alternately with `Last-Event-ID` and `fromSeq`) and over GraphQL
//! (`runEvents(fromSeq:)` on a new WebSocket each time) — while a writer appends: 1,000
//! disconnects in all, and each consumer ends with exactly the persisted sequence.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::Ws;
use common::runs::{SCHEMA, http, items_db, json_of, post_json};
use rand::Rng;
use serde_json::{Value, json};

/// Events in the run; the last is COMPLETED.
const TOTAL: i64 = 2_000;
/// Disconnects each consumer must make before the run ends.
const DISCONNECTS: usize = 500;

/// How a connection ends: after `events` events, or after `after` of time (whatever arrived).
#[derive(Clone, Copy)]
enum Cut {
    AfterEvents(usize),
    AfterTime(Duration),
}

fn random_cut() -> Cut {
    let mut rng = rand::rng();
    if rng.random_bool(0.5) {
        Cut::AfterEvents(rng.random_range(0..=4))
    } else {
        Cut::AfterTime(Duration::from_millis(rng.random_range(0..15)))
    }
}

/// What one consumer saw, and how often it reconnected.
struct Seen {
    seqs: Vec<i64>,
    disconnects: usize,
}

impl Seen {
    fn next(&self) -> i64 {
        self.seqs.last().map_or(1, |s| s + 1)
    }

    fn push(&mut self, seq: i64) {
        assert_eq!(
            seq,
            self.next(),
            "in order, no gap, no repeat: {:?}",
            self.seqs.last()
        );
        self.seqs.push(seq);
    }

    fn done(&self) -> bool {
        self.seqs.last() == Some(&TOTAL)
    }
}

/// One SSE connection; returns when it is dropped or the stream ends.
async fn sse_once(
    http: &reqwest::Client,
    addr: SocketAddr,
    id: &str,
    seen: &mut Seen,
    by_header: bool,
) {
    let cut = random_cut();
    let mut request = http.get(format!("http://{addr}/runs/{id}/events"));
    request = if by_header {
        request.header("Last-Event-ID", (seen.next() - 1).to_string())
    } else {
        http.get(format!(
            "http://{addr}/runs/{id}/events?fromSeq={}",
            seen.next()
        ))
    };
    let mut response = request.send().await.expect("SSE request");
    assert_eq!(response.status(), 200);
    let deadline = match cut {
        Cut::AfterTime(after) => tokio::time::Instant::now() + after,
        Cut::AfterEvents(_) => tokio::time::Instant::now() + common::DEADLINE,
    };
    let mut buffer = String::new();
    let mut events = 0;
    loop {
        if let Cut::AfterEvents(n) = cut
            && events >= n
        {
            return;
        }
        let chunk = match tokio::time::timeout_at(deadline, response.chunk()).await {
            Err(_) => return,
            Ok(chunk) => chunk.expect("SSE body"),
        };
        let Some(chunk) = chunk else { return };
        buffer.push_str(std::str::from_utf8(&chunk).expect("UTF-8 at frame boundaries"));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let event: Value = serde_json::from_str(data).expect("JSON data");
            let id_line = block
                .lines()
                .find_map(|l| l.strip_prefix("id: "))
                .expect("id");
            let seq = event["seq"].as_i64().expect("seq");
            assert_eq!(id_line, seq.to_string());
            seen.push(seq);
            events += 1;
        }
    }
}

/// One GraphQL subscription on a fresh WebSocket; returns when dropped or complete.
async fn graphql_once(addr: SocketAddr, id: &str, seen: &mut Seen) {
    let cut = random_cut();
    let mut ws = Ws::connect(addr, "graphql-transport-ws").await;
    ws.subscribe(
        "1",
        &format!(
            "subscription {{ runEvents(runId: \"{id}\", fromSeq: {}) {{ seq type }} }}",
            seen.next()
        ),
    )
    .await;
    let deadline = match cut {
        Cut::AfterTime(after) => tokio::time::Instant::now() + after,
        Cut::AfterEvents(_) => tokio::time::Instant::now() + common::DEADLINE,
    };
    let mut events = 0;
    loop {
        if let Cut::AfterEvents(n) = cut
            && events >= n
        {
            return;
        }
        let Ok(message) = tokio::time::timeout_at(deadline, ws.recv_skipping_keepalives()).await
        else {
            return;
        };
        let message = message.expect("open");
        match message["type"].as_str() {
            Some("next") => {
                let event = &message["payload"]["data"]["runEvents"];
                assert!(message["payload"]["errors"].is_null(), "{message}");
                if event["type"] == "HEARTBEAT" {
                    continue;
                }
                seen.push(event["seq"].as_i64().expect("seq"));
                events += 1;
            }
            Some("complete") => return,
            _ => panic!("unexpected {message}"),
        }
    }
}

/// A consumer over SSE (with a client) or GraphQL, reconnecting until the run ends; counts
/// itself in `enough` once it has disconnected `DISCONNECTS` times.
async fn consumer(
    sse: Option<reqwest::Client>,
    addr: SocketAddr,
    id: String,
    enough: tokio::sync::watch::Sender<usize>,
) -> Seen {
    let mut seen = Seen {
        seqs: Vec::new(),
        disconnects: 0,
    };
    let mut by_header = false;
    while !seen.done() {
        match &sse {
            Some(http) => sse_once(http, addr, &id, &mut seen, by_header).await,
            None => graphql_once(addr, &id, &mut seen).await,
        }
        by_header = !by_header;
        if !seen.done() {
            seen.disconnects += 1;
            if seen.disconnects == DISCONNECTS {
                enough.send_modify(|n| *n += 1);
            }
        }
    }
    seen
}

async fn post_events(
    http: &reqwest::Client,
    addr: SocketAddr,
    id: &str,
    events: &[Value],
    seq: i64,
) {
    let url = format!("http://{addr}/runs/{id}/events");
    let body = json!({"events": events, "expectedSeq": seq});
    assert_eq!(post_json(http, &url, &body, None).await.status(), 200);
}

#[tokio::test]
async fn a_thousand_random_disconnects_lose_and_repeat_nothing() {
    let db = items_db(false).await;
    let server = common::start_server(&db, SCHEMA).await;
    let addr = server.addr();
    let http = http();
    let start = json!({"kind": "reconnect"});
    let started =
        json_of(post_json(&http, &format!("http://{addr}/runs"), &start, None).await).await;
    let id = started["id"].as_str().expect("id").to_owned();

    // The writer appends until both consumers have made their disconnects, then ends the run.
    let (enough_tx, mut enough) = tokio::sync::watch::channel(0usize);
    let writer = {
        let http = http.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let mut seq = 1;
            while seq < TOTAL {
                let size = rand::rng().random_range(1..=3).min(TOTAL - seq);
                let waiting = *enough.borrow_and_update() < 2;
                if waiting && seq + size >= TOTAL {
                    // Hold the last events back until the consumers have reconnected enough.
                    enough.changed().await.expect("consumers alive");
                    continue;
                }
                let events: Vec<Value> = (seq..seq + size)
                    .map(|n| json!({"type": "PROGRESS", "message": format!("event {n}")}))
                    .collect();
                post_events(&http, addr, &id, &events, seq).await;
                seq += size;
                let pause = Duration::from_millis(rand::rng().random_range(0..8));
                tokio::time::sleep(pause).await;
            }
            post_events(&http, addr, &id, &[json!({"type": "COMPLETED"})], TOTAL).await;
        })
    };

    let sse = tokio::spawn(consumer(
        Some(http.clone()),
        addr,
        id.clone(),
        enough_tx.clone(),
    ));
    let graphql = tokio::spawn(consumer(None, addr, id.clone(), enough_tx));
    let sse = tokio::time::timeout(Duration::from_secs(300), sse)
        .await
        .expect("SSE consumer in time")
        .expect("SSE consumer");
    let graphql = tokio::time::timeout(Duration::from_secs(300), graphql)
        .await
        .expect("GraphQL consumer in time")
        .expect("GraphQL consumer");
    writer.await.expect("writer");
    let expected: Vec<i64> = (1..=TOTAL).collect();
    assert_eq!(sse.seqs, expected);
    assert_eq!(graphql.seqs, expected);
    assert!(
        sse.disconnects + graphql.disconnects >= 2 * DISCONNECTS,
        "{} + {} disconnects",
        sse.disconnects,
        graphql.disconnects
    );
    server.shutdown().await;
    db.stop().await;
}
