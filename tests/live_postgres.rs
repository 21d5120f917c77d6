//! Live views against a real PostgreSQL, beyond the scenarios every backend shares
//! (tests/scenarios.rs): exact values of every type, lazy start, the fast path against the
//! executor, partitioned tables.

mod common;

use common::{TestDb, Ws, start_server};
use serde_json::{Value, json};

const SCHEMA: &str = r"
backend: postgres
enums:
  rank: [bronze, silver, gold]
sources:
  items:
    primary_key: id
    columns:
      id: Integer
      name: String
      score: Integer
      active: Boolean
      rank: rank
";

const TABLE: &str = "CREATE TABLE items (id integer PRIMARY KEY, name text, score integer, active boolean, rank text)";

const SELECTION: &str = "operation data { id name score active rank } fields cursor timestamp";

fn subscription(args: &str) -> String {
    if args.is_empty() {
        format!("subscription {{ items {{ {SELECTION} }} }}")
    } else {
        format!("subscription {{ items({args}) {{ {SELECTION} }} }}")
    }
}

/// A database with the `items` table (and `rows`, if given).
async fn items_db(rows: Option<&str>) -> (TestDb, tokio_postgres::Client) {
    let db = TestDb::new().await;
    let sql = db.client().await;
    sql.batch_execute(TABLE).await.unwrap();
    if let Some(rows) = rows {
        sql.batch_execute(rows).await.unwrap();
    }
    (db, sql)
}

#[tokio::test]
async fn values_arrive_exactly() {
    let db = TestDb::new().await;
    let sql = db.client().await;
    sql.batch_execute(
        "CREATE TABLE vals (id integer PRIMARY KEY, i8 bigint, n numeric, f float8, t text, u uuid, ts timestamp, tz timestamptz, \
         d date, tm time, b boolean, j jsonb, jv jsonb, a integer[])",
    )
    .await
    .unwrap();
    let schema = r"
backend: postgres
sources:
  vals:
    primary_key: id
    columns: { id: Integer, i8: BigInt, n: Numeric, f: Float, t: String, u: UUID, ts: Timestamp, tz: Timestamp, d: Date, tm: Time, b: Boolean, j: JSON, jv: JSONValue, a: Array }
";
    let server = start_server(&db, schema).await;
    let mut ws = Ws::connect(server.addr(), "graphql-transport-ws").await;
    ws.subscribe("v", "subscription { vals(snapshot_end: true) { operation data { id i8 n f t u ts tz d tm b j jv a } } }").await;
    assert_eq!(
        ws.next_payload("v").await["data"]["vals"]["operation"],
        "SNAPSHOT_END"
    );
    sql.batch_execute(
        "INSERT INTO vals VALUES (1, 9223372036854775807, 123456789012345678901234567890.000000000000000001, 4.567890123456789, \
         E'tab\\there\\nnew line \\\\ back\\\\slash \"quoted\" ünïcødé 🚀', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2023-12-25 13:45:30.5', \
         '2023-12-25 13:45:30+02', '2023-12-25', '13:45:30', true, '{\"key\": \"va\\tl\"}', '{\"n\": [1, 2.5, null]}', '{1,2,3}'), \
         (2, -9223372036854775808, -0.5, NULL, '', NULL, NULL, NULL, NULL, NULL, false, NULL, 'null', '{}')",
    )
    .await
    .unwrap();
    let mut rows = vec![
        ws.next_payload("v").await["data"]["vals"]["data"].clone(),
        ws.next_payload("v").await["data"]["vals"]["data"].clone(),
    ];
    rows.sort_by_key(|r| r["id"].as_i64());
    assert_eq!(
        rows[0],
        json!({
            "id": 1, "i8": "9223372036854775807", "n": "123456789012345678901234567890.000000000000000001",
            "f": 4.567_890_123_456_789, "t": "tab\there\nnew line \\ back\\slash \"quoted\" ünïcødé 🚀",
            "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "ts": "2023-12-25 13:45:30.5", "tz": "2023-12-25 11:45:30+00",
            "d": "2023-12-25", "tm": "13:45:30", "b": true, "j": "{\"key\": \"va\\tl\"}", "jv": {"n": [1, 2.5, null]}, "a": "{1,2,3}"
        })
    );
    assert_eq!(
        rows[1],
        json!({
            "id": 2, "i8": "-9223372036854775808", "n": "-0.5", "f": null, "t": "", "u": null, "ts": null, "tz": null,
            "d": null, "tm": null, "b": false, "j": null, "jv": null, "a": "{}"
        })
    );
    // A new server reads these rows through the snapshot path (simple query protocol inside the
    // exported snapshot): the values must be the same as the stream's (pgoutput).
    server.shutdown().await;
    let server = start_server(&db, schema).await;
    let result = common::graphql(
        server.addr(),
        "{ vals(order_by: [{id: asc}]) { id i8 n f t u ts tz d tm b j jv a } }",
        Value::Null,
    )
    .await;
    assert_eq!(result["data"]["vals"], json!(rows), "{result}");
    server.shutdown().await;
    db.stop().await;
}

#[tokio::test]
async fn a_lazy_source_starts_with_its_first_consumer() {
    let (db, sql) = items_db(Some("INSERT INTO items VALUES (1, 'a', 10, true, 'gold')")).await;
    let server = start_server(
        &db,
        &SCHEMA.replace("  items:\n", "  items:\n    start: lazy\n"),
    )
    .await;
    let (status, body) = common::http_get(server.addr(), "/ready").await.unwrap();
    assert_eq!(
        status, 200,
        "an idle lazy source does not make the server unready"
    );
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        ready["sources"]["items"],
        json!({"status": "idle", "reason": "lazy source: starts with its first consumer"}),
        "{body}"
    );
    let slots = sql
        .query(
            "SELECT 1 FROM pg_replication_slots WHERE database = current_database()",
            &[],
        )
        .await
        .unwrap();
    assert!(slots.is_empty(), "no feed before the first consumer");

    let mut ws = Ws::connect(server.addr(), "graphql-transport-ws").await;
    ws.subscribe("l", &subscription("")).await;
    assert_eq!(ws.next_payload("l").await["data"]["items"]["data"]["id"], 1);
    let (_, body) = common::http_get(server.addr(), "/ready").await.unwrap();
    assert!(body.contains(r#""items":{"status":"live"}"#), "{body}");
    server.shutdown().await;
    db.stop().await;
}

#[tokio::test]
async fn the_fast_path_answers_exactly_as_the_executor() {
    let db = TestDb::new().await;
    let sql = db.client().await;
    sql.batch_execute(
        "CREATE TABLE wide (id integer PRIMARY KEY, big bigint, small bigint, label text)",
    )
    .await
    .unwrap();
    sql.batch_execute("INSERT INTO wide VALUES (1, 5, 1, 'a'), (2, 6, 2, 'b')")
        .await
        .unwrap();
    // `small` is declared Integer but holds values beyond 32 bits: a field error on both paths.
    let schema = "backend: postgres\nsources:\n  wide:\n    primary_key: id\n    columns: { id: Integer, big: BigInt, small: BigInt, label: String }\n  narrow:\n    table: wide\n    primary_key: id\n    columns: { id: Integer, small: Integer, label: String }\n";
    let server = start_server(&db, schema).await;
    // Repeated response keys merge (`data` here and in G), as GraphQL requires.
    let selection = "fragment F on narrow { label __typename } fragment G on narrowUpdate { data { extra: label } } \
        subscription($w: narrowExpression) { rows: narrow(where: $w) { op: operation __typename data { key: id small ...F } fields cursor timestamp ...G } }";
    // A directive sends the same subscription through the executor instead.
    let executor = selection.replace("__typename data", "__typename data @include(if: true)");
    let mut fast = Ws::connect(server.addr(), "graphql-transport-ws").await;
    let mut slow = Ws::connect(server.addr(), "graphql-transport-ws").await;
    let variables = json!({ "w": { "label": { "_neq": "zzz" } } });
    for (ws, query) in [(&mut fast, selection), (&mut slow, executor.as_str())] {
        ws.send(json!({"type": "subscribe", "id": "s", "payload": {"query": query, "variables": variables}})).await;
    }
    let mut received = (Vec::new(), Vec::new());
    for _ in 0..2 {
        received.0.push(fast.next_payload("s").await);
        received.1.push(slow.next_payload("s").await);
    }
    for statement in [
        "UPDATE wide SET label = 'zzz' WHERE id = 2",
        "INSERT INTO wide VALUES (3, 7, 3, 'c')",
        "UPDATE wide SET small = 4, label = 'd' WHERE id = 3",
        "DELETE FROM wide WHERE id = 3",
    ] {
        sql.batch_execute(statement).await.unwrap();
        received.0.push(fast.next_payload("s").await);
        received.1.push(slow.next_payload("s").await);
    }
    let sort =
        |v: &mut Vec<Value>| v[..2].sort_by_key(|p| p["data"]["rows"]["data"]["key"].as_i64());
    sort(&mut received.0);
    sort(&mut received.1);
    assert_eq!(received.0, received.1);
    assert_eq!(
        received.0[2]["data"]["rows"]["op"], "DELETE",
        "label moved out of the filter"
    );
    assert_eq!(
        received.0[4]["data"]["rows"]["fields"],
        json!(["small", "label"])
    );

    // A value the declared type cannot represent: the field is null and the error names its
    // path. (async-graphql's executor drops such a field and its error from subscription
    // responses; the fast path answers as the GraphQL spec says.)
    sql.batch_execute("UPDATE wide SET small = 3000000000 WHERE id = 1")
        .await
        .unwrap();
    let error = fast.next_payload("s").await;
    assert_eq!(
        error["data"]["rows"]["data"],
        json!({"key": 1, "small": null, "label": null, "__typename": "narrow", "extra": null}),
        "{error}"
    );
    assert_eq!(
        error["errors"][0]["path"],
        json!(["rows", "data", "small"]),
        "{error}"
    );
    assert_eq!(
        error["errors"][0]["extensions"]["code"], "VALUE_OUT_OF_RANGE",
        "{error}"
    );
    server.shutdown().await;
    db.stop().await;
}

#[tokio::test]
async fn partitioned_tables_replicate_through_their_root() {
    let db = TestDb::new().await;
    let sql = db.client().await;
    sql.batch_execute(
        "CREATE TABLE ticks (id integer, venue text, px integer, PRIMARY KEY (id, venue)) PARTITION BY LIST (venue); \
         CREATE TABLE ticks_x PARTITION OF ticks FOR VALUES IN ('x'); CREATE TABLE ticks_y PARTITION OF ticks FOR VALUES IN ('y'); \
         INSERT INTO ticks VALUES (1, 'x', 10)",
    )
    .await
    .unwrap();
    let schema = "backend: postgres\nsources:\n  ticks:\n    primary_key: [id, venue]\n    columns: { id: Integer, venue: String, px: Integer }\n";
    let server = start_server(&db, schema).await;
    let mut ws = Ws::connect(server.addr(), "graphql-transport-ws").await;
    ws.subscribe(
        "p",
        "subscription { ticks { operation data { id venue px } } }",
    )
    .await;
    assert_eq!(
        ws.next_payload("p").await["data"]["ticks"]["data"],
        json!({"id": 1, "venue": "x", "px": 10})
    );
    sql.batch_execute("INSERT INTO ticks VALUES (2, 'y', 20)")
        .await
        .unwrap();
    sql.batch_execute("UPDATE ticks SET px = 11 WHERE id = 1")
        .await
        .unwrap();
    let insert = ws.next_payload("p").await["data"]["ticks"].clone();
    assert_eq!(
        (insert["operation"].clone(), insert["data"].clone()),
        (json!("INSERT"), json!({"id": 2, "venue": "y", "px": 20}))
    );
    let update = ws.next_payload("p").await["data"]["ticks"].clone();
    assert_eq!(
        (update["operation"].clone(), update["data"]["px"].clone()),
        (json!("UPDATE"), json!(11))
    );
    server.shutdown().await;
    db.stop().await;
}

/// Instances whose names read alike (`eu-1`, `eu_1`) get slots of their own: both servers
/// stream, and neither drops the other's slot as a stale one of its own.
#[tokio::test]
async fn instances_that_read_alike_keep_slots_of_their_own() {
    let (db, sql) = items_db(None).await;
    let config =
        || viewcast::config::load_str(std::path::Path::new("t.yaml"), SCHEMA).expect("config");
    let a = common::start_server_with_options(&db, config(), |o| o.instance = "eu-1".into()).await;
    let b = common::start_server_with_options(&db, config(), |o| o.instance = "eu_1".into()).await;
    let mut watchers = Vec::new();
    for server in [&a, &b] {
        let mut ws = Ws::connect(server.addr(), "graphql-transport-ws").await;
        ws.subscribe("1", &subscription("snapshot_end: true")).await;
        let end = ws.next_payload("1").await;
        assert_eq!(end["data"]["items"]["operation"], "SNAPSHOT_END", "{end}");
        watchers.push(ws);
    }
    sql.batch_execute("INSERT INTO items VALUES (1, 'x', 1, true, 'gold')")
        .await
        .unwrap();
    for ws in &mut watchers {
        let insert = ws.next_payload("1").await;
        assert_eq!(insert["data"]["items"]["operation"], "INSERT", "{insert}");
    }
    let slots: i64 = sql
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE active AND slot_name LIKE 'viewcast_eu_1_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 2);
    a.shutdown().await;
    b.shutdown().await;
    db.stop().await;
}
