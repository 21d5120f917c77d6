//! Triggers end to end: rows entering and leaving conditions reach a real HTTP receiver as
//! FIRE/CLEAR webhooks, in order, signed (Standard Webhooks), against PostgreSQL and the
//! Materialize stand-in (a test double), with a PostgreSQL store.

mod common;

use common::TestDb;
use common::backend::{Backend, Kind};
use common::receiver::{Received, Receiver};
use serde_json::{Value, json};
use viewcast::server::Server;

const TABLE: &str =
    "CREATE TABLE user_scores (user_id integer PRIMARY KEY, score integer, active boolean)";

/// A server for `backend` whose triggers live in `store` and sign with `secrets`.
async fn server(backend: &Backend, store: &TestDb, secrets: &[&str]) -> Server {
    let yaml = format!(
        "{}sources:\n  user_scores:\n    primary_key: user_id\n{}    columns:\n      user_id: Integer\n      score: Integer\n      active: Boolean\n",
        backend.yaml_backend(),
        backend.yaml_source_options()
    );
    let config = viewcast::config::load_str(std::path::Path::new("test.yaml"), &yaml).unwrap();
    if let Ok(filter) = std::env::var("VIEWCAST_TEST_LOG") {
        viewcast::telemetry::init_logging(&filter, false);
    }
    let mut options = backend.options();
    options.store_url = Some(store.url.clone());
    options.triggers.allow_private_targets = true;
    options.triggers.secrets = secrets
        .iter()
        .map(|s| viewcast::trigger::Secret::parse(s).unwrap())
        .collect();
    let server = Server::start(config, options).await.unwrap();
    common::wait_ready(server.addr()).await;
    server
}

async fn create_trigger(server: &Server, input: Value) {
    let result = common::graphql(
        server.addr(),
        "mutation($input: user_scoresTriggerInput!) { create_user_scores_trigger(input: $input) { name webhook } }",
        json!({ "input": input }),
    )
    .await;
    assert!(result["errors"].is_null(), "{result}");
}

/// The five webhooks of scenario B, their key order and their idempotency keys.
fn assert_scenario_b(got: &[Received]) {
    let events: Vec<Value> = got
        .iter()
        .map(|r| {
            let mut body = r.body.clone();
            let object = body.as_object_mut().unwrap();
            object.remove("event_id");
            object.remove("timestamp");
            body
        })
        .collect();
    let event = |kind: &str, data: Value| json!({"event_type": kind, "trigger_name": "score_threshold_trigger", "data": data});
    assert_eq!(
        events,
        vec![
            event("FIRE", json!({"user_id": 1, "score": 150, "active": true})),
            event("CLEAR", json!({"user_id": 1, "score": 80, "active": false})),
            event("FIRE", json!({"user_id": 1, "score": 120, "active": true})),
            event("FIRE", json!({"user_id": 2, "score": 200, "active": true})),
            event("CLEAR", json!({"user_id": 1, "score": 120, "active": true})),
        ]
    );
    // tycostream's key order, so its clients' JSON.stringify comparisons keep working.
    let text = String::from_utf8(got[0].raw.to_vec()).unwrap();
    let order: Vec<usize> = [
        "\"event_id\"",
        "\"event_type\"",
        "\"trigger_name\"",
        "\"timestamp\"",
        "\"data\"",
    ]
    .iter()
    .map(|k| text.find(k).unwrap())
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
    // Idempotency key: the body's event id is the webhook-id header, unique per event.
    let ids: std::collections::HashSet<&str> = got.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(ids.len(), 5);
    assert_eq!(got[0].body["event_id"], got[0].header("webhook-id"));
}

/// tycostream's scenario B (hysteresis): the exact sequence of webhooks, except that the CLEAR
/// for a deleted row carries its last known values where tycostream sends nulls.
async fn score_threshold_with_hysteresis(kind: Kind) {
    let backend = Backend::start(kind).await;
    let store = if kind == Kind::Postgres {
        None
    } else {
        Some(TestDb::new().await)
    };
    let store_db = store
        .as_ref()
        .or(backend.db.as_ref())
        .expect("a PostgreSQL backend has a database");
    backend.create_table("user_scores", TABLE).await;
    let server = server(&backend, store_db, &[]).await;
    let mut receiver = Receiver::start().await;
    create_trigger(
        &server,
        json!({
            "name": "score_threshold_trigger",
            "webhook": receiver.url("/hook"),
            "fire": {"score": {"_gte": 100}},
            "clear": {"_and": [{"score": {"_lt": 90}}, {"active": {"_eq": false}}]}
        }),
    )
    .await;
    let sql = backend.sql().await;
    // Each step is one upstream transaction; Materialize would merge writes that land in one
    // timestamp (as tycostream's test spaces its steps by 100 ms), so each step waits until the
    // server has it: a subscriber sees one update per step.
    let mut watcher = common::Ws::connect(server.addr(), "graphql-transport-ws").await;
    watcher
        .subscribe(
            "w",
            "subscription { user_scores(snapshot_end: true) { operation } }",
        )
        .await;
    assert_eq!(
        watcher.next_payload("w").await["data"]["user_scores"]["operation"],
        "SNAPSHOT_END"
    );
    for statement in [
        "INSERT INTO user_scores VALUES (1, 50, true)",
        "UPDATE user_scores SET score = 150 WHERE user_id = 1",
        "UPDATE user_scores SET score = 160 WHERE user_id = 1",
        "UPDATE user_scores SET active = false WHERE user_id = 1",
        "UPDATE user_scores SET score = 80 WHERE user_id = 1",
        "UPDATE user_scores SET score = 95 WHERE user_id = 1",
        "UPDATE user_scores SET score = 120, active = true WHERE user_id = 1",
        "INSERT INTO user_scores VALUES (2, 200, true)",
        "UPDATE user_scores SET score = 210 WHERE user_id = 2",
        "INSERT INTO user_scores VALUES (3, 50, false)",
        "DELETE FROM user_scores WHERE user_id = 3",
        "DELETE FROM user_scores WHERE user_id = 1",
    ] {
        sql.batch_execute(statement).await.unwrap();
        watcher.next_payload("w").await;
    }
    let mut got: Vec<Received> = Vec::new();
    for _ in 0..5 {
        got.push(receiver.next().await);
    }
    assert_scenario_b(&got);
    // Nothing more: UPDATEs inside and rows that never matched send nothing.
    assert!(
        receiver
            .next_within(std::time::Duration::from_millis(500))
            .await
            .is_none()
    );
    server.shutdown().await;
    backend.stop().await;
    if let Some(store) = store {
        store.stop().await;
    }
}

#[tokio::test]
async fn tycostream_scenario_b_on_postgres() {
    score_threshold_with_hysteresis(Kind::Postgres).await;
}

#[tokio::test]
async fn tycostream_scenario_b_on_materialize() {
    score_threshold_with_hysteresis(Kind::Materialize).await;
}

#[tokio::test]
async fn tycostream_scenario_b_on_risingwave() {
    score_threshold_with_hysteresis(Kind::RisingWave).await;
}

/// Verifies a Standard Webhooks signature the way a receiver does (documented in README.md).
fn verify(secret: &str, id: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
    use base64::Engine as _;
    use hmac::Mac as _;
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    header.split(' ').any(|candidate| candidate == expected)
}

#[tokio::test]
async fn deliveries_are_signed_with_every_secret_while_one_rotates() {
    let backend = Backend::start(Kind::Postgres).await;
    backend.create_table("user_scores", TABLE).await;
    let old = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let new = "whsec_c2VjcmV0LXR3by10aGF0LWlzLWxvbmctZW5vdWdo";
    let server = server(&backend, backend.db.as_ref().unwrap(), &[old, new]).await;
    let mut receiver = Receiver::start().await;
    create_trigger(
        &server,
        json!({"name": "t", "webhook": receiver.url("/"), "fire": {"score": {"_gt": 10}}, "headers": [{"name": "x-team", "value": "risk"}]}),
    )
    .await;
    backend
        .sql()
        .await
        .batch_execute("INSERT INTO user_scores VALUES (7, 11, true)")
        .await
        .unwrap();
    let request = receiver.next().await;
    let (id, timestamp, signature) = (
        request.header("webhook-id"),
        request.header("webhook-timestamp"),
        request.header("webhook-signature"),
    );
    assert!(id.starts_with("evt_"), "{id}");
    let sent: u64 = timestamp.parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(sent) < 60, "{sent} vs {now}");
    assert_eq!(signature.split(' ').count(), 2, "{signature}");
    assert!(
        verify(old, id, timestamp, &request.raw, signature),
        "old secret"
    );
    assert!(
        verify(new, id, timestamp, &request.raw, signature),
        "new secret"
    );
    assert!(!verify(
        "whsec_b3RoZXI=",
        id,
        timestamp,
        &request.raw,
        signature
    ));
    assert_eq!(request.header("x-team"), "risk");
    assert_eq!(request.header("content-type"), "application/json");
    server.shutdown().await;
    backend.stop().await;
}
