//! Receivers that fail: 500s then success, a timeout, 429 with `Retry-After`, 410 Gone, a
//! refused connection and one that never recovers. Every event reaches its receiver at least
//! once, in order per trigger (a CLEAR waits for its FIRE), with the same event id on every
//! attempt; the dead-letter queue holds exactly the events whose attempts ran out; the API
//! shows the attempts, counters and statuses; redelivery and enable/disable work.
//! Real PostgreSQL, a real HTTP receiver, the server in-process.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::TestDb;
use common::receiver::{Received, Receiver, Reply};
use serde_json::{Value, json};
use viewcast::server::Server;

const YAML: &str = "
backend: postgres
sources:
  items:
    primary_key: id
    columns:
      id: Integer
      score: Integer
";

/// A database with the `items` table, and the server, its webhooks allowed to reach the
/// loopback receiver.
async fn setup() -> (TestDb, tokio_postgres::Client, Server) {
    setup_with(|_| {}).await
}

async fn setup_with(
    configure: impl FnOnce(&mut viewcast::server::ServeOptions),
) -> (TestDb, tokio_postgres::Client, Server) {
    let db = TestDb::new().await;
    let sql = db.client().await;
    sql.batch_execute("CREATE TABLE items (id integer PRIMARY KEY, score integer)")
        .await
        .unwrap();
    let config = viewcast::config::load_str(std::path::Path::new("test.yaml"), YAML).unwrap();
    let server = common::start_server_with_options(&db, config, |options| {
        options.triggers.allow_private_targets = true;
        configure(options);
    })
    .await;
    (db, sql, server)
}

async fn graphql_ok(server: &Server, query: &str, variables: Value) -> Value {
    let result = common::graphql(server.addr(), query, variables).await;
    assert!(result["errors"].is_null(), "{query}: {result}");
    result["data"].clone()
}

async fn create(server: &Server, name: &str, webhook: String, retry: Value) {
    graphql_ok(
        server,
        "mutation($input: itemsTriggerInput!) { create_items_trigger(input: $input) { name } }",
        json!({ "input": {
            "name": name,
            "webhook": webhook,
            "fire": { "score": { "_gt": 50 } },
            "retry": retry,
        }}),
    )
    .await;
}

const DELIVERIES: &str = "query($name: String!) { items_trigger(name: $name) {
    status
    counters { fired cleared pending delivered dead }
    deliveries { id event_id event_type status attempts last_status last_error next_attempt_at
                 recent_attempts { attempt status error duration_ms } }
} }";

async fn trigger_state(server: &Server, name: &str) -> Value {
    graphql_ok(server, DELIVERIES, json!({ "name": name })).await["items_trigger"].clone()
}

/// Waits until `name`'s deliveries (newest first) satisfy `done`.
async fn wait_for(server: &Server, name: &str, done: impl Fn(&Value) -> bool) -> Value {
    let addr = server.addr();
    common::eventually(
        || async move {
            let result = common::graphql(addr, DELIVERIES, json!({ "name": name })).await;
            result["data"]["items_trigger"].clone()
        },
        |state| done(state),
    )
    .await
}

fn statuses(state: &Value) -> Vec<String> {
    state["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| format!("{}:{}", d["event_type"], d["status"]).replace('"', ""))
        .collect()
}

/// Requests by path, in arrival order.
#[derive(Default)]
struct Seen(HashMap<String, Vec<Received>>);

impl Seen {
    async fn until(&mut self, receiver: &mut Receiver, path: &str, count: usize) -> &[Received] {
        while self.0.get(path).map_or(0, Vec::len) < count {
            let request = receiver.next().await;
            self.0
                .entry(request.path.clone())
                .or_default()
                .push(request);
        }
        &self.0[path]
    }

    fn events(&self, path: &str) -> Vec<(String, String)> {
        self.0.get(path).map_or_else(Vec::new, |all| {
            all.iter()
                .map(|r| {
                    (
                        r.body["event_type"].as_str().unwrap_or_default().to_owned(),
                        r.header("webhook-id").to_owned(),
                    )
                })
                .collect()
        })
    }
}

#[tokio::test]
// One scenario, step by step: the receivers' failures interleave on one server.
#[allow(clippy::too_many_lines)]
async fn failing_receivers_retry_in_order_and_dead_letter_exactly_the_exhausted() {
    let (db, sql, server) = setup().await;

    let mut receiver = Receiver::start().await;
    // A port nothing listens on: connections are refused.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let quick = |attempts: u32| json!({ "attempts": attempts, "initial_interval_ms": 20, "max_interval_ms": 100, "timeout_ms": 2000 });
    receiver.script_path("/flaky", [Reply::Status(500), Reply::Status(500)]);
    create(&server, "flaky", receiver.url("/flaky"), quick(5)).await;
    receiver.script_path("/slow", [Reply::After(Duration::from_secs(3), 200)]);
    create(
        &server,
        "slow",
        receiver.url("/slow"),
        json!({ "attempts": 3, "initial_interval_ms": 20, "timeout_ms": 300 }),
    )
    .await;
    receiver.script_path(
        "/throttled",
        [Reply::With(429, vec![("retry-after", "1".into())])],
    );
    create(&server, "throttled", receiver.url("/throttled"), quick(5)).await;
    receiver.script_path("/gone", [Reply::Status(410)]);
    create(&server, "gone", receiver.url("/gone"), quick(5)).await;
    create(&server, "refused", format!("http://{closed}/"), quick(2)).await;
    receiver.path_default("/down", Reply::Status(500));
    create(&server, "down", receiver.url("/down"), quick(3)).await;

    // One row enters every trigger's condition, then leaves: a FIRE and a CLEAR each.
    sql.batch_execute("INSERT INTO items VALUES (1, 100)")
        .await
        .unwrap();
    sql.batch_execute("UPDATE items SET score = 0 WHERE id = 1")
        .await
        .unwrap();

    let mut seen = Seen::default();

    // 500, 500, then 200: three attempts of the FIRE (one id), then the CLEAR.
    seen.until(&mut receiver, "/flaky", 4).await;
    let flaky = seen.events("/flaky");
    assert_eq!(
        flaky.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
        ["FIRE", "FIRE", "FIRE", "CLEAR"]
    );
    assert!(flaky[0].1 == flaky[1].1 && flaky[1].1 == flaky[2].1 && flaky[2].1 != flaky[3].1);
    // (counters and deliveries are read by separate statements: wait for both)
    let state = wait_for(&server, "flaky", |s| {
        statuses(s) == ["CLEAR:DELIVERED", "FIRE:DELIVERED"] && s["counters"]["delivered"] == 2
    })
    .await;
    let fire = &state["deliveries"][1];
    assert_eq!(fire["event_id"], flaky[0].1.as_str());
    assert_eq!(fire["attempts"], 3);
    assert_eq!(fire["last_status"], 200);
    let attempts: Vec<Value> = fire["recent_attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| json!([a["attempt"], a["status"]]))
        .collect();
    assert_eq!(
        attempts,
        [json!([3, 200]), json!([2, 500]), json!([1, 500])]
    );
    assert_eq!(fire["recent_attempts"][1]["error"], "HTTP 500");
    assert_eq!(
        state["counters"],
        json!({"fired": 1, "cleared": 1, "pending": 0, "delivered": 2, "dead": 0})
    );

    // No answer within the timeout: tried again, the CLEAR after.
    seen.until(&mut receiver, "/slow", 3).await;
    let slow = seen.events("/slow");
    assert_eq!(slow[0], slow[1]);
    assert_eq!(slow[2].0, "CLEAR");
    let state = wait_for(&server, "slow", |s| {
        statuses(s) == ["CLEAR:DELIVERED", "FIRE:DELIVERED"]
    })
    .await;
    let first = &state["deliveries"][1]["recent_attempts"][1];
    assert_eq!(first["status"], Value::Null);
    assert_eq!(first["error"], "no answer within 300 ms");

    // 429 with Retry-After: 1 — the retry waits a second, not the 20 ms backoff.
    let throttled = seen.until(&mut receiver, "/throttled", 3).await;
    let waited = throttled[1].at - throttled[0].at;
    assert!(
        waited >= Duration::from_millis(900),
        "retried after {waited:?}"
    );
    assert_eq!(
        seen.events("/throttled")
            .iter()
            .map(|e| e.0.as_str())
            .collect::<Vec<_>>(),
        ["FIRE", "FIRE", "CLEAR"]
    );

    // 410 Gone: the trigger is disabled, the FIRE stays pending, the CLEAR waits behind it.
    seen.until(&mut receiver, "/gone", 1).await;
    let state = wait_for(&server, "gone", |s| s["status"] == "DISABLED").await;
    assert_eq!(statuses(&state), ["CLEAR:PENDING", "FIRE:PENDING"]);
    assert_eq!(state["deliveries"][1]["last_status"], 410);

    // A refused connection and a receiver that keeps failing: dead after their attempts, the
    // CLEAR too (each waited for the FIRE before it).
    for (name, attempts) in [("refused", 2), ("down", 3)] {
        let state = wait_for(&server, name, |s| {
            statuses(s) == ["CLEAR:DEAD", "FIRE:DEAD"] && s["counters"]["dead"] == 2
        })
        .await;
        for delivery in state["deliveries"].as_array().unwrap() {
            assert_eq!(delivery["attempts"], attempts, "{name}: {delivery}");
            assert_eq!(delivery["next_attempt_at"], Value::Null);
        }
        assert_eq!(state["counters"]["dead"], 2);
    }
    let refused = trigger_state(&server, "refused").await;
    assert!(
        refused["deliveries"][0]["last_error"]
            .as_str()
            .unwrap()
            .starts_with("cannot connect"),
        "{refused}"
    );
    assert_eq!(seen.until(&mut receiver, "/down", 6).await.len(), 6);

    // The dead-letter queue holds exactly the four exhausted events.
    let dead = graphql_ok(
        &server,
        "{ items_dead_letters { id event_id trigger_name event_type attempts } }",
        Value::Null,
    )
    .await;
    let mut dead_events: Vec<String> = dead["items_dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| format!("{}:{}", d["trigger_name"], d["event_type"]).replace('"', ""))
        .collect();
    dead_events.sort();
    assert_eq!(
        dead_events,
        ["down:CLEAR", "down:FIRE", "refused:CLEAR", "refused:FIRE"]
    );
    let only_down = graphql_ok(
        &server,
        "{ items_dead_letters(trigger: \"down\") { id event_id } }",
        Value::Null,
    )
    .await["items_dead_letters"]
        .clone();
    assert_eq!(only_down.as_array().unwrap().len(), 2);

    // The receiver recovers; redelivering the range sends both again, in order, same ids.
    receiver.path_default("/down", Reply::Status(200));
    let (to, from) = (
        only_down[0]["id"].as_str().unwrap(),
        only_down[1]["id"].as_str().unwrap(),
    );
    let queued = graphql_ok(
        &server,
        "mutation($from: ID!, $to: ID) { redeliver_items_trigger(name: \"down\", from: $from, to: $to) { id status attempts } }",
        json!({ "from": from, "to": to }),
    )
    .await;
    assert_eq!(
        queued["redeliver_items_trigger"].as_array().unwrap().len(),
        2
    );
    assert_eq!(queued["redeliver_items_trigger"][0]["status"], "PENDING");
    let down = seen.until(&mut receiver, "/down", 8).await;
    let ids = |r: &[Received]| -> Vec<String> {
        r.iter()
            .map(|r| r.header("webhook-id").to_owned())
            .collect()
    };
    let down_ids = ids(down);
    assert_eq!(down_ids[6], down_ids[0], "the FIRE again, first");
    assert_eq!(down_ids[7], down_ids[5], "then the CLEAR");
    wait_for(&server, "down", |s| {
        statuses(s) == ["CLEAR:DELIVERED", "FIRE:DELIVERED"]
    })
    .await;
    let dead = graphql_ok(
        &server,
        "{ items_dead_letters { trigger_name } }",
        Value::Null,
    )
    .await;
    assert_eq!(dead["items_dead_letters"].as_array().unwrap().len(), 2);

    // Enabling the trigger the receiver disabled sends what waited: the FIRE, then the CLEAR.
    let gone_before = seen.events("/gone");
    let enabled = graphql_ok(
        &server,
        "mutation { enable_items_trigger(name: \"gone\") { status } }",
        Value::Null,
    )
    .await;
    assert_eq!(enabled["enable_items_trigger"]["status"], "ACTIVE");
    seen.until(&mut receiver, "/gone", 3).await;
    let gone = seen.events("/gone");
    assert_eq!(gone[1], gone_before[0]);
    assert_eq!(gone[2].0, "CLEAR");

    // Disabled by a user: events are recorded, nothing is sent until enabled.
    graphql_ok(
        &server,
        "mutation { disable_items_trigger(name: \"flaky\") { status } }",
        Value::Null,
    )
    .await;
    sql.batch_execute("UPDATE items SET score = 99 WHERE id = 1")
        .await
        .unwrap();
    // Another trigger delivers the same change meanwhile; this one has not tried.
    wait_for(&server, "slow", |s| s["counters"]["delivered"] == 3).await;
    let state = trigger_state(&server, "flaky").await;
    assert_eq!(statuses(&state)[0], "FIRE:PENDING");
    assert_eq!(state["deliveries"][0]["attempts"], 0);
    graphql_ok(
        &server,
        "mutation { enable_items_trigger(name: \"flaky\") { status } }",
        Value::Null,
    )
    .await;
    let flaky = seen.until(&mut receiver, "/flaky", 5).await;
    assert_eq!(flaky[4].body["event_type"], "FIRE");

    server.shutdown().await;
    db.stop().await;
}

#[tokio::test]
async fn api_errors_for_deliveries_are_clear() {
    let (db, _sql, server) = setup().await;
    let receiver = Receiver::start().await;
    create(&server, "t", receiver.url("/"), Value::Null).await;

    for (query, code, message) in [
        (
            "mutation { redeliver_items_trigger(name: \"t\", from: \"5\") { id } }",
            "BAD_USER_INPUT",
            "has no delivery with an id from 5 to 5",
        ),
        (
            "mutation { redeliver_items_trigger(name: \"t\", from: \"9\", to: \"3\") { id } }",
            "BAD_USER_INPUT",
            "is before",
        ),
        (
            "mutation { redeliver_items_trigger(name: \"t\", from: \"x\") { id } }",
            "BAD_USER_INPUT",
            "is not a delivery id",
        ),
        (
            "mutation { enable_items_trigger(name: \"nope\") { name } }",
            "NOT_FOUND",
            "trigger nope not found",
        ),
        (
            "{ items_trigger(name: \"t\") { deliveries(limit: 0) { id } } }",
            "BAD_USER_INPUT",
            "limit must be between 1 and 1000",
        ),
    ] {
        let result = common::graphql(server.addr(), query, Value::Null).await;
        assert_eq!(
            result["errors"][0]["extensions"]["code"], code,
            "{query}: {result}"
        );
        assert!(
            result["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains(message),
            "{query}: {result}"
        );
    }
    server.shutdown().await;
    db.stop().await;
}

/// Delivered events are deleted once past the retention (here a second); dead ones stay in
/// the dead-letter queue.
#[tokio::test]
async fn delivered_events_are_pruned_after_the_retention_dead_ones_are_kept() {
    let (db, sql, server) = setup_with(|options| {
        options.triggers.delivery_retention = Some(Duration::from_secs(1));
    })
    .await;
    let mut receiver = Receiver::start().await;
    receiver.path_default("/failing", Reply::Status(500));
    create(&server, "ok", receiver.url("/ok"), Value::Null).await;
    create(
        &server,
        "failing",
        receiver.url("/failing"),
        json!({ "attempts": 1 }),
    )
    .await;
    sql.batch_execute("INSERT INTO items VALUES (1, 100)")
        .await
        .unwrap();
    let mut seen = Seen::default();
    seen.until(&mut receiver, "/ok", 1).await;
    seen.until(&mut receiver, "/failing", 1).await;
    wait_for(&server, "failing", |s| statuses(s) == ["FIRE:DEAD"]).await;
    // The delivered one goes (its attempts with it); the dead one stays.
    wait_for(&server, "ok", |s| statuses(s).is_empty()).await;
    let attempts = sql
        .query_one(
            "SELECT count(*) FROM viewcast_delivery_attempts a \
             JOIN viewcast_deliveries d ON d.id = a.delivery_id WHERE d.trigger_name = 'ok'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(attempts, 0);
    let dead = trigger_state(&server, "failing").await;
    assert_eq!(statuses(&dead), ["FIRE:DEAD"]);
    server.shutdown().await;
    db.stop().await;
}
