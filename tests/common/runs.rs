//! What the runs tests share: a database with the one source table their configs need, an
//! HTTP client, JSON posts, reading Server-Sent Events, waiting for a run to end, and the
//! state of the outbox.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};

use super::{DEADLINE, TestDb, graphql};

/// A config with one source (a config needs one); append `runs:` to declare kinds.
pub const SCHEMA: &str =
    "backend: postgres\nsources:\n  items:\n    primary_key: id\n    columns:\n      id: Integer\n";

/// A test database (a private cluster with `private`) holding `SCHEMA`'s table.
pub async fn items_db(private: bool) -> TestDb {
    let db = if private {
        TestDb::private().await
    } else {
        TestDb::new().await
    };
    db.client()
        .await
        .batch_execute("CREATE TABLE items (id integer PRIMARY KEY)")
        .await
        .expect("table");
    db
}

/// An HTTP client (rustls needs its crypto provider installed once).
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// POSTs `body` as JSON, with a bearer token if given.
pub async fn post_json(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
    bearer: Option<&str>,
) -> reqwest::Response {
    let mut request = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(token) = bearer {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    request.send().await.expect("POST")
}

pub async fn json_of(response: reqwest::Response) -> Value {
    serde_json::from_str(&response.text().await.expect("body")).expect("JSON body")
}

/// An SSE response's text, read to its end.
pub async fn sse_text(mut response: reqwest::Response) -> String {
    let mut text = String::new();
    while let Some(chunk) = tokio::time::timeout(DEADLINE, response.chunk())
        .await
        .expect("SSE data in time")
        .expect("SSE body")
    {
        text.push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
    }
    text
}

/// SSE text as (id, event, data) per event; comments are counted.
pub fn parse_sse(text: &str) -> (Vec<(String, String, Value)>, usize) {
    let field = |line: &str, name: &str| {
        line.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(|v| v.strip_prefix(' ').unwrap_or(v).to_owned())
    };
    let mut events = Vec::new();
    let mut comments = 0;
    for block in text.split("\n\n").filter(|b| !b.is_empty()) {
        let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
        for line in block.lines() {
            if let Some(v) = field(line, "id") {
                id = v;
            } else if let Some(v) = field(line, "event") {
                event = v;
            } else if let Some(v) = field(line, "data") {
                data.push_str(&v);
            } else if line.starts_with(':') {
                comments += 1;
            }
        }
        if !data.is_empty() {
            events.push((id, event, serde_json::from_str(&data).expect("JSON data")));
        }
    }
    (events, comments)
}

/// The seqs an SSE stream of run `id` (from the start) sends before it ends.
pub async fn sse_seqs(addr: SocketAddr, id: &str) -> Vec<i64> {
    let response = http()
        .get(format!("http://{addr}/runs/{id}/events"))
        .send()
        .await
        .expect("SSE");
    let (events, _) = parse_sse(&sse_text(response).await);
    events
        .iter()
        .map(|(id, _, _)| id.parse().expect("seq"))
        .collect()
}

/// Run `id` once it has ended, with `selection` (which should include `status`).
pub async fn run_when_ended(addr: SocketAddr, id: &str, selection: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let response = graphql(
            addr,
            &format!("query($id: ID!) {{ run(id: $id) {{ {selection} }} }}"),
            json!({"id": id}),
        )
        .await;
        let run = response["data"]["run"].clone();
        if !matches!(run["status"].as_str(), Some("PENDING" | "RUNNING")) {
            return run;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "run {id} did not end: {run}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// (outbox rows left, events unpublished, events published before the one ahead of them).
pub async fn outbox_state(sql: &tokio_postgres::Client) -> (i64, i64, i64) {
    let row = sql
        .query_one(
            "SELECT (SELECT count(*) FROM viewcast_run_outbox),
                    (SELECT count(*) FROM viewcast_run_events WHERE published_at IS NULL),
                    (SELECT count(*) FROM viewcast_run_events a JOIN viewcast_run_events b
                       ON a.run_id = b.run_id AND b.seq = a.seq + 1
                     WHERE b.published_at < a.published_at)",
            &[],
        )
        .await
        .expect("query");
    (row.get(0), row.get(1), row.get(2))
}
