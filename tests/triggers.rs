//! The trigger API against a real PostgreSQL store: create, read back (with `fire`/`clear`),
//! list, delete, errors, persistence across a restart, a store that is down.

mod common;

use common::TestDb;
use serde_json::{Value, json};
use viewcast::server::{ServeOptions, Server};

const SCHEMA: &str = r"
backend: postgres
enums:
  rank: [bronze, silver, gold]
sources:
  items:
    primary_key: id
    columns:
      id: Integer
      score: Integer
      active: Boolean
      rank: rank
";

async fn server(db: &TestDb, allow_private: bool) -> Server {
    let config = viewcast::config::load_str(std::path::Path::new("test.yaml"), SCHEMA).unwrap();
    common::start_server_with_options(db, config, |options| {
        options.triggers.allow_private_targets = allow_private;
    })
    .await
}

const CREATE: &str = r"mutation($input: itemsTriggerInput!) {
  create_items_trigger(input: $input) {
    name source webhook fire clear status format fire_existing cooldown_ms created_at
    retry { attempts initial_interval_ms max_interval_ms timeout_ms }
  }
}";

fn error_code(result: &Value) -> &str {
    result["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or("")
}

#[tokio::test]
async fn triggers_are_created_read_listed_deleted_and_persisted() {
    let db = TestDb::new().await;
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE items (id integer PRIMARY KEY, score integer, active boolean, rank text)",
        )
        .await
        .unwrap();
    let server = server(&db, true).await;
    let addr = server.addr();
    let input = json!({
        "name": "score_threshold",
        "webhook": "http://127.0.0.1:9/hook",
        "fire": {"score": {"_gte": 100}},
        "clear": {"_and": [{"score": {"_lt": 90}}, {"active": {"_eq": false}}]},
        "retry": {"attempts": 3, "initial_interval_ms": 50},
        "format": "HASURA",
        "cooldown_ms": 1000,
        "headers": [{"name": "x-team", "value": "risk"}]
    });
    let created = common::graphql(addr, CREATE, json!({ "input": input })).await;
    let trigger = &created["data"]["create_items_trigger"];
    assert_eq!(trigger["name"], "score_threshold", "{created}");
    assert_eq!(trigger["source"], "items");
    assert_eq!(trigger["status"], "ACTIVE");
    assert_eq!(trigger["format"], "HASURA");
    assert_eq!(trigger["fire_existing"], false);
    assert_eq!(trigger["cooldown_ms"], 1000);
    assert_eq!(
        trigger["retry"],
        json!({"attempts": 3, "initial_interval_ms": 50, "max_interval_ms": 300_000, "timeout_ms": 10_000})
    );
    // fire and clear are readable (tycostream fails when they are selected).
    let fire: Value = serde_json::from_str(trigger["fire"].as_str().unwrap()).unwrap();
    assert_eq!(fire, json!({"score": {"_gte": 100}}));
    let clear: Value = serde_json::from_str(trigger["clear"].as_str().unwrap()).unwrap();
    assert_eq!(
        clear["_and"][1],
        json!({"active": {"_eq": false}}),
        "{clear}"
    );
    assert!(trigger["created_at"].as_str().unwrap().ends_with('Z'));

    // A second trigger with the defaults; a duplicate name fails.
    let plain = json!({"name": "gold", "webhook": "http://127.0.0.1:9/gold", "fire": {"rank": {"_eq": "gold"}}});
    let second = common::graphql(addr, CREATE, json!({ "input": plain })).await;
    assert_eq!(second["data"]["create_items_trigger"]["clear"], Value::Null);
    assert_eq!(
        second["data"]["create_items_trigger"]["format"],
        "TYCOSTREAM"
    );
    let duplicate = common::graphql(addr, CREATE, json!({ "input": plain })).await;
    assert_eq!(error_code(&duplicate), "ALREADY_EXISTS", "{duplicate}");
    assert_eq!(
        duplicate["errors"][0]["message"],
        "trigger gold already exists for source items"
    );

    let listed = common::graphql(addr, "{ items_triggers { name } items_trigger(name: \"gold\") { webhook } missing: items_trigger(name: \"nope\") { name } }", Value::Null).await;
    assert_eq!(
        listed["data"],
        json!({"items_triggers": [{"name": "score_threshold"}, {"name": "gold"}], "items_trigger": {"webhook": "http://127.0.0.1:9/…"}, "missing": null})
    );

    // The definitions survive a restart.
    server.shutdown().await;
    let server = self::server(&db, true).await;
    let addr = server.addr();
    let listed = common::graphql(
        addr,
        "{ items_triggers { name fire retry { attempts } } }",
        Value::Null,
    )
    .await;
    assert_eq!(
        listed["data"]["items_triggers"][0]["name"], "score_threshold",
        "{listed}"
    );
    assert_eq!(listed["data"]["items_triggers"][0]["retry"]["attempts"], 3);
    assert_eq!(listed["data"]["items_triggers"][1]["name"], "gold");

    let deleted = common::graphql(
        addr,
        "mutation { delete_items_trigger(name: \"gold\") { name } }",
        Value::Null,
    )
    .await;
    assert_eq!(deleted["data"]["delete_items_trigger"]["name"], "gold");
    let again = common::graphql(
        addr,
        "mutation { delete_items_trigger(name: \"gold\") { name } }",
        Value::Null,
    )
    .await;
    assert_eq!(error_code(&again), "NOT_FOUND", "{again}");
    assert_eq!(
        again["errors"][0]["message"],
        "trigger gold not found for source items"
    );
    server.shutdown().await;
    db.stop().await;
}

#[tokio::test]
async fn bad_definitions_are_refused_with_the_reason() {
    let db = TestDb::new().await;
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE items (id integer PRIMARY KEY, score integer, active boolean, rank text)",
        )
        .await
        .unwrap();
    let server = server(&db, false).await;
    let addr = server.addr();
    for (input, code, text) in [
        (
            json!({"name": "a", "webhook": "ftp://example.com/x", "fire": {"score": {"_gt": 1}}}),
            "BAD_USER_INPUT",
            "must use http or https",
        ),
        (
            json!({"name": "a", "webhook": "not a url", "fire": {"score": {"_gt": 1}}}),
            "BAD_USER_INPUT",
            "is not a valid URL",
        ),
        (
            json!({"name": "a", "webhook": "http://127.0.0.1:9/x", "fire": {"score": {"_gt": 1}}}),
            "BAD_USER_INPUT",
            "an internal address",
        ),
        (
            json!({"name": "a", "webhook": "http://169.254.169.254/latest", "fire": {"score": {"_gt": 1}}}),
            "BAD_USER_INPUT",
            "an internal address",
        ),
        (
            json!({"name": "a", "webhook": "http://8.8.8.8/x", "fire": {"score": {"_gt": 1}}, "retry": {"attempts": 0}}),
            "BAD_USER_INPUT",
            "attempts must be between 1 and 100",
        ),
        (
            json!({"name": "a", "webhook": "http://8.8.8.8/x", "fire": {"score": {"_gt": 1}}, "headers": [{"name": "webhook-signature", "value": "x"}]}),
            "BAD_USER_INPUT",
            "not a header a trigger may set",
        ),
        (
            json!({"name": "a", "webhook": "http://8.8.8.8/x", "fire": {"score": {"_gt": 1}}, "fields": ["nope"]}),
            "BAD_USER_INPUT",
            "has no column nope",
        ),
        (
            json!({"name": "a", "webhook": "http://8.8.8.8/x", "fire": {"_and": [{"score": {"_like": "x"}}]}}),
            "",
            "_like",
        ),
    ] {
        let result = common::graphql(addr, CREATE, json!({ "input": input })).await;
        let message = result["errors"][0]["message"].as_str().unwrap_or("");
        assert!(message.contains(text), "{input}: {result}");
        if !code.is_empty() {
            assert_eq!(error_code(&result), code, "{input}: {result}");
        }
        assert!(result["data"].is_null(), "{result}");
    }
    server.shutdown().await;
    db.stop().await;
}

#[tokio::test]
async fn a_store_that_is_down_is_reported_not_fatal() {
    let db = TestDb::new().await;
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE items (id integer PRIMARY KEY, score integer, active boolean, rank text)",
        )
        .await
        .unwrap();
    let config = viewcast::config::load_str(std::path::Path::new("test.yaml"), SCHEMA).unwrap();
    let options = ServeOptions {
        port: 0,
        database_url: Some(db.url.clone()),
        // Nothing listens on port 9.
        store_url: Some("postgres://nobody@127.0.0.1:9/none".into()),
        instance: format!("t{}", rand::random::<u32>()),
        apply_setup: true,
        ..ServeOptions::default()
    };
    let server = Server::start(config, options).await.unwrap();
    let addr = server.addr();
    let (status, body) = common::eventually(
        || async move { common::http_get(addr, "/ready").await.unwrap() },
        |(_, body)| body.contains("\"store\"") && body.contains(r#""items":{"status":"live"}"#),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    let input = json!({"name": "a", "webhook": "http://8.8.8.8/x", "fire": {"score": {"_gt": 1}}});
    let result = common::graphql(addr, CREATE, json!({ "input": input })).await;
    assert_eq!(error_code(&result), "STORE_UNAVAILABLE", "{result}");
    // Live views are unaffected.
    let rows = common::graphql(addr, "{ items { id } }", Value::Null).await;
    assert_eq!(rows["data"]["items"], json!([]));
    server.shutdown().await;
    db.stop().await;
}

/// `SCHEMA` with `triggers` declared under `items`.
fn declaring(triggers: &str) -> viewcast::config::Config {
    let yaml = format!("{SCHEMA}    triggers:\n{triggers}");
    viewcast::config::load_str(std::path::Path::new("test.yaml"), &yaml).unwrap()
}

const LIST: &str = "{ items_triggers { name fire declared status } }";

async fn listed(server: &Server) -> Vec<(String, String, bool)> {
    let result = common::graphql(server.addr(), LIST, Value::Null).await;
    result["data"]["items_triggers"]
        .as_array()
        .unwrap_or_else(|| panic!("{result}"))
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_owned(),
                t["fire"].as_str().unwrap().to_owned(),
                t["declared"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// How many FIRE events the trigger has recorded.
async fn fired_count(server: &Server, name: &str) -> i64 {
    let result = common::graphql(
        server.addr(),
        "query($name: String!) { items_trigger(name: $name) { counters { fired } } }",
        json!({ "name": name }),
    )
    .await;
    result["data"]["items_trigger"]["counters"]["fired"]
        .as_i64()
        .unwrap_or_else(|| panic!("{result}"))
}

#[tokio::test]
async fn triggers_declared_in_schema_yaml_are_reconciled_at_start_up() {
    let db = TestDb::new().await;
    let sql = db.client().await;
    sql.batch_execute(
        "CREATE TABLE items (id integer PRIMARY KEY, score integer, active boolean, rank text)",
    )
    .await
    .unwrap();
    let mut receiver = common::receiver::Receiver::start().await;
    let start = |config| {
        common::start_server_with_options(&db, config, |options| {
            options.triggers.allow_private_targets = true;
        })
    };
    let high = format!(
        "      high:\n        webhook: {}\n        fire: {{ score: {{ _gt: 50 }} }}\n",
        receiver.url("/high")
    );
    let server = start(declaring(&high)).await;
    assert_eq!(
        listed(&server).await,
        [("high".into(), r#"{"score":{"_gt":50}}"#.into(), true)]
    );
    // A declared trigger delivers like any other.
    sql.batch_execute("INSERT INTO items VALUES (1, 90, true, 'gold')")
        .await
        .unwrap();
    let fired = receiver.next().await;
    assert_eq!(
        (fired.path.as_str(), &fired.body["event_type"]),
        ("/high", &json!("FIRE"))
    );
    // It is changed in schema.yaml, not through the API.
    let result = common::graphql(
        server.addr(),
        "mutation { delete_items_trigger(name: \"high\") { name } }",
        Value::Null,
    )
    .await;
    assert_eq!(error_code(&result), "BAD_USER_INPUT", "{result}");
    assert!(
        result["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("declared in schema.yaml")
    );
    let input = json!({"name": "made_by_api", "webhook": receiver.url("/api"), "fire": {"score": {"_gt": 1}}});
    let result = common::graphql(server.addr(), CREATE, json!({ "input": input })).await;
    assert!(result["errors"].is_null(), "{result}");
    assert_eq!(fired_count(&server, "high").await, 1);
    server.shutdown().await;

    // Restarted with the same declaration: kept as it was (no new FIRE for row 1).
    let server = start(declaring(&high)).await;
    assert_eq!(fired_count(&server, "high").await, 1);
    server.shutdown().await;

    // Changed and one more declared: `high` starts over, `low` is created, the API's stays.
    let changed = format!(
        "      high:\n        webhook: {}\n        fire: {{ score: {{ _gt: 95 }} }}\n      low:\n        webhook: {}\n        fire: {{ score: {{ _lt: 10 }} }}\n",
        receiver.url("/high"),
        receiver.url("/low")
    );
    let server = start(declaring(&changed)).await;
    assert_eq!(
        listed(&server).await,
        [
            ("made_by_api".into(), r#"{"score":{"_gt":1}}"#.into(), false),
            ("high".into(), r#"{"score":{"_gt":95}}"#.into(), true),
            ("low".into(), r#"{"score":{"_lt":10}}"#.into(), true),
        ]
    );
    assert_eq!(fired_count(&server, "high").await, 0);
    server.shutdown().await;

    // No longer declared: deleted; the API's stays.
    let server = common::start_server_with_options(&db, declaring(""), |options| {
        options.triggers.allow_private_targets = true;
    })
    .await;
    assert_eq!(
        listed(&server).await,
        [("made_by_api".into(), r#"{"score":{"_gt":1}}"#.into(), false)]
    );
    server.shutdown().await;

    // A declared webhook on an internal address is refused at start-up unless allowed.
    let options = ServeOptions {
        port: 0,
        database_url: Some(db.url.clone()),
        ..ServeOptions::default()
    };
    let refused = Server::start(declaring(&high), options).await;
    let message = refused.err().expect("refused").to_string();
    assert!(
        message.starts_with("trigger high of source items: webhook")
            && message.contains("internal address"),
        "{message}"
    );
    db.stop().await;
}
