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

/// The sources of a schema.yaml for `backend`: `user_scores`.
fn user_scores_yaml(backend: &Backend) -> String {
    format!(
        "{}sources:\n  user_scores:\n    primary_key: user_id\n{}    columns:\n      user_id: Integer\n      score: Integer\n      active: Boolean\n",
        backend.yaml_backend(),
        backend.yaml_source_options()
    )
}

/// A server for `backend` whose triggers live in `store` and sign with `secrets`.
async fn server(backend: &Backend, store: &TestDb, secrets: &[&str]) -> Server {
    server_for(backend, store, secrets, &user_scores_yaml(backend)).await
}

async fn server_for(backend: &Backend, store: &TestDb, secrets: &[&str], yaml: &str) -> Server {
    let config = viewcast::config::load_str(std::path::Path::new("test.yaml"), yaml).unwrap();
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
    create_trigger_on(server, "user_scores", input).await;
}

async fn create_trigger_on(server: &Server, source: &str, input: Value) {
    let result = common::graphql(
        server.addr(),
        &format!("mutation($input: {source}TriggerInput!) {{ create_{source}_trigger(input: $input) {{ name webhook }} }}"),
        json!({ "input": input }),
    )
    .await;
    assert!(result["errors"].is_null(), "{result}");
}

/// The upstream, and a PostgreSQL store for the triggers when the upstream is not one.
async fn backend_and_store(kind: Kind) -> (Backend, Option<TestDb>) {
    backend_and_store_with(kind, viewcast_standin::Options::default()).await
}

async fn backend_and_store_with(
    kind: Kind,
    options: viewcast_standin::Options,
) -> (Backend, Option<TestDb>) {
    let backend = Backend::start_with(kind, options).await;
    let store = if kind == Kind::Postgres {
        None
    } else {
        Some(TestDb::new().await)
    };
    (backend, store)
}

async fn teardown(server: Server, backend: Backend, store: Option<TestDb>) {
    server.shutdown().await;
    backend.stop().await;
    if let Some(store) = store {
        store.stop().await;
    }
}

fn store_of<'a>(backend: &'a Backend, store: Option<&'a TestDb>) -> &'a TestDb {
    store
        .or(backend.db.as_ref())
        .expect("a PostgreSQL backend has a database")
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
    let (backend, store) = backend_and_store(kind).await;
    let store_db = store_of(&backend, store.as_ref());
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
    receiver
        .assert_quiet(std::time::Duration::from_millis(500))
        .await;
    teardown(server, backend, store).await;
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

/// tycostream's stress test (notes §5.4): its 35-statement template (ids offset by 1,000 per
/// iteration), three triggers created before any data whose webhooks must arrive in exactly
/// the expected order, and subscribers with department filters that join while the
/// statements run and must end with exactly the expected rows.
mod stress {
    use std::collections::{BTreeMap, HashMap};

    use super::*;

    pub const TABLE: &str = "CREATE TABLE stress_test (id integer PRIMARY KEY, value numeric NOT NULL, status varchar(10) NOT NULL, department varchar(20) NOT NULL)";

    /// The template: (id, statement with `$ID` for the id).
    pub const TEMPLATE: [(i64, &str); 35] = [
        (
            1,
            "INSERT INTO stress_test VALUES ($ID, 413, 'inactive', 'engineering')",
        ),
        (
            2,
            "INSERT INTO stress_test VALUES ($ID, 13, 'pending', 'operations')",
        ),
        (
            3,
            "INSERT INTO stress_test VALUES ($ID, 352, 'active', 'finance')",
        ),
        (
            4,
            "INSERT INTO stress_test VALUES ($ID, 220, 'inactive', 'sales')",
        ),
        (
            5,
            "INSERT INTO stress_test VALUES ($ID, 265, 'pending', 'engineering')",
        ),
        (
            6,
            "INSERT INTO stress_test VALUES ($ID, 204, 'active', 'operations')",
        ),
        (
            7,
            "INSERT INTO stress_test VALUES ($ID, 720, 'inactive', 'finance')",
        ),
        (
            8,
            "INSERT INTO stress_test VALUES ($ID, 14, 'pending', 'sales')",
        ),
        (
            9,
            "INSERT INTO stress_test VALUES ($ID, 26, 'active', 'engineering')",
        ),
        (
            10,
            "INSERT INTO stress_test VALUES ($ID, 328, 'inactive', 'operations')",
        ),
        (
            3,
            "UPDATE stress_test SET value = 462, status = 'pending' WHERE id = $ID",
        ),
        (
            11,
            "INSERT INTO stress_test VALUES ($ID, 677, 'pending', 'finance')",
        ),
        (3, "UPDATE stress_test SET value = 538 WHERE id = $ID"),
        (
            12,
            "INSERT INTO stress_test VALUES ($ID, 671, 'active', 'sales')",
        ),
        (
            6,
            "UPDATE stress_test SET status = 'inactive' WHERE id = $ID",
        ),
        (
            13,
            "INSERT INTO stress_test VALUES ($ID, 413, 'inactive', 'engineering')",
        ),
        (
            5,
            "UPDATE stress_test SET value = 184, status = 'inactive' WHERE id = $ID",
        ),
        (
            14,
            "INSERT INTO stress_test VALUES ($ID, 319, 'pending', 'operations')",
        ),
        (4, "UPDATE stress_test SET value = 586 WHERE id = $ID"),
        (
            15,
            "INSERT INTO stress_test VALUES ($ID, 807, 'active', 'finance')",
        ),
        (
            10,
            "UPDATE stress_test SET status = 'pending' WHERE id = $ID",
        ),
        (
            16,
            "INSERT INTO stress_test VALUES ($ID, 292, 'inactive', 'sales')",
        ),
        (
            16,
            "UPDATE stress_test SET value = 634, status = 'active' WHERE id = $ID",
        ),
        (11, "UPDATE stress_test SET value = 450 WHERE id = $ID"),
        (
            17,
            "INSERT INTO stress_test VALUES ($ID, 191, 'pending', 'engineering')",
        ),
        (9, "UPDATE stress_test SET value = 113 WHERE id = $ID"),
        (
            9,
            "UPDATE stress_test SET status = 'inactive' WHERE id = $ID",
        ),
        (
            18,
            "INSERT INTO stress_test VALUES ($ID, 922, 'active', 'operations')",
        ),
        (13, "DELETE FROM stress_test WHERE id = $ID"),
        (18, "UPDATE stress_test SET value = 240 WHERE id = $ID"),
        (
            19,
            "INSERT INTO stress_test VALUES ($ID, 900, 'inactive', 'finance')",
        ),
        (
            15,
            "UPDATE stress_test SET status = 'inactive' WHERE id = $ID",
        ),
        (
            20,
            "INSERT INTO stress_test VALUES ($ID, 542, 'pending', 'sales')",
        ),
        (
            5,
            "UPDATE stress_test SET value = 64, status = 'inactive' WHERE id = $ID",
        ),
        (2, "DELETE FROM stress_test WHERE id = $ID"),
    ];

    /// A row of the template: (id, value, status, department).
    pub type Row = (i64, f64, &'static str, &'static str);

    pub const HIGH_VALUE: [(&str, Row); 9] = [
        ("FIRE", (7, 720.0, "inactive", "finance")),
        ("FIRE", (11, 677.0, "pending", "finance")),
        ("FIRE", (12, 671.0, "active", "sales")),
        ("FIRE", (15, 807.0, "active", "finance")),
        ("FIRE", (16, 634.0, "active", "sales")),
        ("CLEAR", (11, 450.0, "pending", "finance")),
        ("FIRE", (18, 922.0, "active", "operations")),
        ("CLEAR", (18, 240.0, "active", "operations")),
        ("FIRE", (19, 900.0, "inactive", "finance")),
    ];
    pub const ENGINEERING_ACTIVE: [(&str, Row); 2] = [
        ("FIRE", (9, 26.0, "active", "engineering")),
        ("CLEAR", (9, 113.0, "inactive", "engineering")),
    ];
    pub const OPERATIONS_VALUE: [(&str, Row); 4] = [
        ("FIRE", (10, 328.0, "inactive", "operations")),
        ("FIRE", (14, 319.0, "pending", "operations")),
        ("FIRE", (18, 922.0, "active", "operations")),
        ("CLEAR", (18, 240.0, "active", "operations")),
    ];

    /// The rows a subscriber to `department` with `status < active` ends with.
    pub const FINAL: [(&str, &[Row]); 4] = [
        (
            "engineering",
            &[
                (1, 413.0, "inactive", "engineering"),
                (5, 64.0, "inactive", "engineering"),
                (9, 113.0, "inactive", "engineering"),
                (17, 191.0, "pending", "engineering"),
            ],
        ),
        (
            "operations",
            &[
                (6, 204.0, "inactive", "operations"),
                (10, 328.0, "pending", "operations"),
                (14, 319.0, "pending", "operations"),
            ],
        ),
        (
            "finance",
            &[
                (3, 538.0, "pending", "finance"),
                (7, 720.0, "inactive", "finance"),
                (11, 450.0, "pending", "finance"),
                (15, 807.0, "inactive", "finance"),
                (19, 900.0, "inactive", "finance"),
            ],
        ),
        (
            "sales",
            &[
                (4, 586.0, "inactive", "sales"),
                (8, 14.0, "pending", "sales"),
                (20, 542.0, "pending", "sales"),
            ],
        ),
    ];

    pub fn row_json(row: Row, iteration: i64) -> Value {
        json!({"id": row.0 + iteration * 1000, "value": row.1, "status": row.2, "department": row.3})
    }

    /// Numbers as f64, so `720` and `720.0` compare equal (JavaScript's view of JSON).
    pub fn numbers_as_floats(value: &Value) -> Value {
        match value {
            Value::Number(n) => json!(n.as_f64().unwrap()),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), numbers_as_floats(v)))
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(numbers_as_floats).collect()),
            other => other.clone(),
        }
    }

    pub fn yaml(backend: &Backend) -> String {
        format!(
            "{}enums:\n  status: [inactive, pending, active]\n  department: [engineering, operations, finance, sales]\nsources:\n  stress_test:\n    primary_key: id\n{}    columns:\n      id: Integer\n      value: Float\n      status: status\n      department: department\n",
            backend.yaml_backend(),
            backend.yaml_source_options()
        )
    }

    pub type Spec = (&'static str, Value, Value, &'static [(&'static str, Row)]);

    /// The three triggers: name, fire, clear, the webhooks of one iteration.
    pub fn triggers() -> [Spec; 3] {
        [
            (
                "high_value_trigger",
                json!({"value": {"_gte": 600}}),
                json!({"value": {"_lt": 500}}),
                &HIGH_VALUE[..],
            ),
            (
                "engineering_active_trigger",
                json!({"department": {"_eq": "engineering"}, "status": {"_gte": "active"}}),
                json!({"department": {"_eq": "engineering"}, "status": {"_lt": "active"}}),
                &ENGINEERING_ACTIVE[..],
            ),
            (
                "operations_value_trigger",
                json!({"department": {"_eq": "operations"}, "value": {"_gte": 300}}),
                json!({"department": {"_eq": "operations"}, "value": {"_lt": 250}}),
                &OPERATIONS_VALUE[..],
            ),
        ]
    }

    /// Waits until a subscriber to `department` holds exactly its rows after `iterations`.
    pub async fn converges(
        rx: &tokio::sync::watch::Receiver<common::ClientRows>,
        department: &str,
        iterations: i64,
    ) {
        let rows = FINAL.iter().find(|(d, _)| *d == department).unwrap().1;
        let expected: BTreeMap<String, Value> = (0..iterations)
            .flat_map(|i| rows.iter().map(move |row| row_json(*row, i)))
            .map(|row| (row["id"].to_string(), numbers_as_floats(&row)))
            .collect();
        let mut rx = rx.clone();
        let held = common::eventually(
            || {
                let rows = rx.borrow_and_update().rows.clone();
                async move {
                    rows.into_iter()
                        .map(|(k, v)| (k, numbers_as_floats(&Value::Object(v))))
                        .collect::<BTreeMap<_, _>>()
                }
            },
            |rows| rows == &expected,
        )
        .await;
        assert_eq!(held, expected);
    }

    /// `count` webhooks by trigger (the path), without `event_id` and `timestamp`.
    pub async fn webhooks(receiver: &mut Receiver, count: usize) -> HashMap<String, Vec<Value>> {
        let mut by_trigger: HashMap<String, Vec<Value>> = HashMap::new();
        for _ in 0..count {
            let Some(request) = receiver.next_within(common::DEADLINE).await else {
                let counts: Vec<(&String, usize)> =
                    by_trigger.iter().map(|(k, v)| (k, v.len())).collect();
                panic!("webhooks missing: received {counts:?} of {count}");
            };
            let mut body = numbers_as_floats(&request.body);
            let object = body.as_object_mut().unwrap();
            object.remove("event_id");
            object.remove("timestamp");
            by_trigger
                .entry(request.path[1..].to_owned())
                .or_default()
                .push(body);
        }
        by_trigger
    }

    /// `got` is exactly `expected`; else shows where they part.
    pub fn assert_sequence(name: &str, got: &[Value], expected: &[Value]) {
        if got == expected {
            return;
        }
        let line = |e: &Value| {
            format!(
                "{} {} {} {}",
                e["event_type"], e["data"]["id"], e["data"]["value"], e["data"]["status"]
            )
        };
        let first = got
            .iter()
            .zip(expected)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(expected.len()));
        let around = |list: &[Value]| {
            list.iter()
                .skip(first.saturating_sub(2))
                .take(6)
                .map(line)
                .collect::<Vec<_>>()
        };
        panic!(
            "{name}: {} webhooks, {} expected; from #{first}: got {:?}, expected {:?}",
            got.len(),
            expected.len(),
            around(got),
            around(expected)
        );
    }
}

async fn tycostream_stress_test(kind: Kind) {
    use stress::*;
    let iterations: i64 = std::env::var("VIEWCAST_STRESS_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let clients = 8;
    // tycostream spaces its statements so that each lands in a timestamp of its own (writes
    // in one timestamp or epoch are one change of the view: a row inserted and updated within
    // it enters with its last values). The stand-in's zero tick gives every transaction its
    // own timestamp.
    let (backend, store) = backend_and_store_with(
        kind,
        viewcast_standin::Options {
            tick: std::time::Duration::ZERO,
            ..viewcast_standin::Options::default()
        },
    )
    .await;
    backend.create_table("stress_test", TABLE).await;
    let server = server_for(
        &backend,
        store_of(&backend, store.as_ref()),
        &[],
        &yaml(&backend),
    )
    .await;
    let mut receiver = Receiver::start().await;
    let triggers = triggers();
    for (name, fire, clear, _) in &triggers {
        create_trigger_on(
            &server,
            "stress_test",
            json!({"name": name, "webhook": receiver.url(&format!("/{name}")), "fire": fire, "clear": clear}),
        )
        .await;
    }
    // The statements, one transaction each; subscribers join at even intervals meanwhile.
    let sql = backend.sql().await;
    let total = TEMPLATE.len() as i64 * iterations;
    let mut subscribers = Vec::new();
    let mut done = 0;
    for iteration in 0..iterations {
        for (id, statement) in TEMPLATE {
            let statement = statement.replace("$ID", &(id + iteration * 1000).to_string());
            sql.batch_execute(&statement).await.unwrap();
            done += 1;
            if subscribers.len() < clients && done % (total / clients as i64) == 1 {
                let department = FINAL[subscribers.len() % FINAL.len()].0;
                let mut ws = common::Ws::connect(server.addr(), "graphql-transport-ws").await;
                ws.subscribe(
                    "s",
                    &format!("subscription {{ stress_test(where: {{_and: [{{department: {{_eq: {department}}}}}, {{status: {{_lt: active}}}}]}}) {{ operation data {{ id value status department }} fields }} }}"),
                )
                .await;
                subscribers.push((department, common::spawn_collector(ws, "s", "stress_test")));
            }
        }
    }
    for (department, (rx, _)) in &subscribers {
        converges(rx, department, iterations).await;
    }
    // Every trigger's webhooks, in exactly the expected order, and nothing more.
    let per_iteration: usize = triggers.iter().map(|t| t.3.len()).sum();
    let by_trigger = webhooks(&mut receiver, per_iteration * iterations as usize).await;
    for (name, _, _, events) in &triggers {
        let expected: Vec<Value> = (0..iterations)
            .flat_map(|i| {
                events.iter().map(move |(kind, row)| {
                    let data = numbers_as_floats(&row_json(*row, i));
                    json!({"event_type": kind, "trigger_name": name, "data": data})
                })
            })
            .collect();
        assert_sequence(
            name,
            by_trigger.get(*name).map_or(&[], Vec::as_slice),
            &expected,
        );
    }
    receiver
        .assert_quiet(std::time::Duration::from_millis(500))
        .await;
    teardown(server, backend, store).await;
}

#[tokio::test]
async fn tycostream_stress_test_on_postgres() {
    tycostream_stress_test(Kind::Postgres).await;
}

#[tokio::test]
async fn tycostream_stress_test_on_materialize() {
    tycostream_stress_test(Kind::Materialize).await;
}

#[tokio::test]
async fn tycostream_stress_test_on_risingwave() {
    tycostream_stress_test(Kind::RisingWave).await;
}

/// Rows that match when a trigger is created enter silently, or with a FIRE with
/// `fire_existing` — the same whether the source was idle (a lazy source: the first snapshot
/// decides) or live (the position at creation decides, however late the evaluator is).
async fn rows_matching_at_creation(kind: Kind) {
    let (backend, store) = backend_and_store(kind).await;
    backend.create_table("user_scores", TABLE).await;
    backend
        .sql()
        .await
        .batch_execute("INSERT INTO user_scores VALUES (1, 150, true), (2, 50, true)")
        .await
        .unwrap();
    let yaml = user_scores_yaml(&backend).replace(
        "    primary_key: user_id\n",
        "    primary_key: user_id\n    start: lazy\n",
    );
    let server = server_for(&backend, store_of(&backend, store.as_ref()), &[], &yaml).await;
    let mut receiver = Receiver::start().await;
    let trigger = |name: &str, fire_existing: bool| json!({"name": name, "webhook": receiver.url(&format!("/{name}")), "fire": {"score": {"_gte": 100}}, "fire_existing": fire_existing});
    // The source is idle: these two start it.
    create_trigger(&server, trigger("idle_silent", false)).await;
    create_trigger(&server, trigger("idle_fire", true)).await;
    common::eventually(
        || common::http_get(server.addr(), "/ready"),
        |r| matches!(r, Ok((_, body)) if body.contains(r#""user_scores":{"status":"live"}"#)),
    )
    .await
    .unwrap();
    create_trigger(&server, trigger("live_silent", false)).await;
    create_trigger(&server, trigger("live_fire", true)).await;
    // Written right after creation: every trigger fires for it.
    backend
        .sql()
        .await
        .batch_execute("UPDATE user_scores SET score = 120 WHERE user_id = 2")
        .await
        .unwrap();
    let mut by_trigger: std::collections::BTreeMap<String, Vec<i64>> =
        std::collections::BTreeMap::new();
    for _ in 0..6 {
        let request = receiver.next().await;
        assert_eq!(request.body["event_type"], "FIRE");
        by_trigger
            .entry(request.path[1..].to_owned())
            .or_default()
            .push(request.body["data"]["user_id"].as_i64().unwrap());
    }
    assert_eq!(
        by_trigger,
        [
            ("idle_fire", vec![1, 2]),
            ("idle_silent", vec![2]),
            ("live_fire", vec![1, 2]),
            ("live_silent", vec![2]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    );
    receiver
        .assert_quiet(std::time::Duration::from_millis(300))
        .await;
    teardown(server, backend, store).await;
}

#[tokio::test]
async fn rows_matching_at_creation_on_postgres() {
    rows_matching_at_creation(Kind::Postgres).await;
}

#[tokio::test]
async fn rows_matching_at_creation_on_materialize() {
    rows_matching_at_creation(Kind::Materialize).await;
}
