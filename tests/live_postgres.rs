//! Live views against a real PostgreSQL: snapshot and live changes, transactions as batches,
//! filters moving rows in and out, late joiners during a write burst, a database restart.

mod common;

use std::collections::BTreeMap;

use common::{ClientRows, TestDb, Ws, eventually, start_server};
use serde_json::{Value, json};
use tokio::sync::watch;

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

/// The table's rows as the client would hold them (filtered by `keep`).
async fn table_rows(
    client: &tokio_postgres::Client,
    keep: impl Fn(&Value) -> bool,
) -> BTreeMap<String, serde_json::Map<String, Value>> {
    let rows = client
        .query("SELECT json_build_object('id', id, 'name', name, 'score', score, 'active', active, 'rank', rank)::text FROM items", &[])
        .await
        .expect("read items");
    rows.iter()
        .map(|r| serde_json::from_str::<Value>(&r.get::<_, String>(0)).expect("json"))
        .filter(|v| keep(v))
        .map(|v| (v["id"].to_string(), v.as_object().cloned().expect("object")))
        .collect()
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

/// A database with the `items` table (and `rows`, if given), and a server for it.
async fn items_table(
    rows: Option<&str>,
) -> (TestDb, tokio_postgres::Client, viewcast::server::Server) {
    let (db, sql) = items_db(rows).await;
    let server = start_server(&db, SCHEMA).await;
    (db, sql, server)
}

#[tokio::test]
async fn snapshot_then_live_insert_update_delete() {
    let (db, sql, server) = items_table(Some(
        "INSERT INTO items VALUES (1, 'a', 10, true, 'gold'), (2, 'b', 20, false, NULL)",
    ))
    .await;
    let mut ws = Ws::connect(server.addr(), "graphql-transport-ws").await;
    ws.subscribe("1", &subscription("snapshot_end: true")).await;

    let mut snapshot = Vec::new();
    for _ in 0..2 {
        let update = ws.next_payload("1").await["data"]["items"].clone();
        assert_eq!(update["operation"], "INSERT");
        assert_eq!(
            update["fields"],
            json!(["id", "name", "score", "active", "rank"])
        );
        assert!(
            update["cursor"].is_null(),
            "only the batch's last update carries the cursor"
        );
        snapshot.push(update["data"].clone());
    }
    snapshot.sort_by_key(|d| d["id"].as_i64());
    assert_eq!(
        snapshot,
        vec![
            json!({"id": 1, "name": "a", "score": 10, "active": true, "rank": "gold"}),
            json!({"id": 2, "name": "b", "score": 20, "active": false, "rank": null}),
        ]
    );
    let end = ws.next_payload("1").await["data"]["items"].clone();
    assert_eq!(end["operation"], "SNAPSHOT_END");
    assert!(end["cursor"].is_string());

    sql.batch_execute("INSERT INTO items VALUES (3, 'c', 30, true, 'silver')")
        .await
        .unwrap();
    let insert = ws.next_payload("1").await["data"]["items"].clone();
    assert_eq!(insert["operation"], "INSERT");
    assert_eq!(
        insert["data"],
        json!({"id": 3, "name": "c", "score": 30, "active": true, "rank": "silver"})
    );
    assert!(insert["cursor"].is_string());

    sql.batch_execute("UPDATE items SET score = 11 WHERE id = 1")
        .await
        .unwrap();
    let update = ws.next_payload("1").await["data"]["items"].clone();
    assert_eq!(update["operation"], "UPDATE");
    assert_eq!(update["fields"], json!(["score"]));
    assert_eq!(
        update["data"],
        json!({"id": 1, "name": null, "score": 11, "active": null, "rank": null})
    );

    sql.batch_execute("DELETE FROM items WHERE id = 2")
        .await
        .unwrap();
    let delete = ws.next_payload("1").await["data"]["items"].clone();
    assert_eq!(delete["operation"], "DELETE");
    assert_eq!(
        delete["data"],
        json!({"id": 2, "name": "b", "score": 20, "active": false, "rank": null}),
        "DELETE carries the last known row"
    );

    // The one-shot query reads the same state.
    let result = common::graphql(
        server.addr(),
        "{ items(order_by: [{id: asc}]) { id score } }",
        Value::Null,
    )
    .await;
    assert_eq!(
        result["data"]["items"],
        json!([{"id": 1, "score": 11}, {"id": 3, "score": 30}])
    );
    server.shutdown().await;
    db.stop().await;
}

#[tokio::test]
async fn a_transaction_arrives_as_one_batch() {
    let (db, sql, server) = items_table(None).await;
    let mut ws = Ws::connect(server.addr(), "graphql-transport-ws").await;
    ws.subscribe("t", &subscription("snapshot_end: true")).await;
    assert_eq!(
        ws.next_payload("t").await["data"]["items"]["operation"],
        "SNAPSHOT_END"
    );

    sql.batch_execute(
        "BEGIN; INSERT INTO items SELECT g, 'n' || g, g, true, 'bronze' FROM generate_series(1, 10) g; \
         UPDATE items SET score = 100 WHERE id = 3; DELETE FROM items WHERE id = 4; COMMIT;",
    )
    .await
    .unwrap();
    let mut updates = Vec::new();
    for _ in 0..9 {
        updates.push(ws.next_payload("t").await["data"]["items"].clone());
    }
    let timestamps: Vec<&Value> = updates.iter().map(|u| &u["timestamp"]).collect();
    assert!(
        timestamps.iter().all(|t| *t == timestamps[0]),
        "one commit position: {timestamps:?}"
    );
    assert!(updates[..8].iter().all(|u| u["cursor"].is_null()));
    assert!(
        updates[8]["cursor"].is_string(),
        "the batch's last update carries the cursor"
    );
    // Changes of one key inside the transaction are merged: row 3 arrives once, already updated,
    // and row 4 (inserted then deleted) not at all.
    assert!(updates.iter().all(|u| u["operation"] == "INSERT"));
    let three = updates
        .iter()
        .find(|u| u["data"]["id"] == 3)
        .expect("row 3");
    assert_eq!(three["data"]["score"], 100);
    assert!(updates.iter().all(|u| u["data"]["id"] != 4));
    server.shutdown().await;
    db.stop().await;
}

#[tokio::test]
async fn filters_move_rows_in_and_out() {
    let (db, sql, server) = items_table(Some(
        "INSERT INTO items VALUES (1, 'a', 10, true, 'gold'), (2, 'b', 90, true, 'bronze')",
    ))
    .await;
    let mut ws = Ws::connect(server.addr(), "graphql-transport-ws").await;
    ws.subscribe(
        "f",
        &subscription("where: {score: {_gte: 50}, rank: {_gte: silver}}, snapshot_end: true"),
    )
    .await;
    assert_eq!(
        ws.next_payload("f").await["data"]["items"]["operation"],
        "SNAPSHOT_END",
        "nothing matches yet"
    );

    sql.batch_execute("UPDATE items SET score = 60 WHERE id = 1")
        .await
        .unwrap();
    let enter = ws.next_payload("f").await["data"]["items"].clone();
    assert_eq!(
        enter["operation"], "INSERT",
        "a row entering the filter arrives as INSERT"
    );
    assert_eq!(
        enter["data"],
        json!({"id": 1, "name": "a", "score": 60, "active": true, "rank": "gold"})
    );
    assert_eq!(
        enter["fields"],
        json!(["id", "name", "score", "active", "rank"])
    );

    sql.batch_execute("UPDATE items SET name = 'a2' WHERE id = 1")
        .await
        .unwrap();
    let inside = ws.next_payload("f").await["data"]["items"].clone();
    assert_eq!(inside["operation"], "UPDATE");
    assert_eq!(inside["fields"], json!(["name"]));

    sql.batch_execute("UPDATE items SET rank = NULL WHERE id = 1")
        .await
        .unwrap();
    let leave = ws.next_payload("f").await["data"]["items"].clone();
    assert_eq!(
        leave["operation"], "DELETE",
        "NULL never compares: the row leaves"
    );
    assert_eq!(
        leave["data"],
        json!({"id": 1, "name": "a2", "score": 60, "active": true, "rank": "gold"}),
        "with its last known values"
    );

    // Changes outside the filter send nothing; the next thing the client sees is row 2 entering.
    sql.batch_execute("UPDATE items SET score = 5 WHERE id = 1")
        .await
        .unwrap();
    sql.batch_execute("UPDATE items SET rank = 'silver' WHERE id = 2")
        .await
        .unwrap();
    let next = ws.next_payload("f").await["data"]["items"].clone();
    assert_eq!(
        (next["operation"].clone(), next["data"]["id"].clone()),
        (json!("INSERT"), json!(2))
    );
    server.shutdown().await;
    db.stop().await;
}

/// Collects one subscriber's updates in a task; publishes its rows after each update.
fn spawn_collector(
    mut ws: Ws,
    id: &'static str,
) -> (
    watch::Receiver<ClientRows>,
    tokio::task::JoinHandle<Vec<Value>>,
) {
    let (tx, rx) = watch::channel(ClientRows::default());
    let handle = tokio::spawn(async move {
        let mut rows = ClientRows::default();
        let mut log = Vec::new();
        loop {
            let Ok(message) = ws.recv_skipping_keepalives().await else {
                return log;
            };
            assert_eq!(message["id"], id, "{message}");
            assert!(
                matches!(message["type"].as_str(), Some("next" | "data")),
                "{message}"
            );
            let update = message["payload"]["data"]["items"].clone();
            rows.apply(&update, "id");
            log.push(update);
            if tx.send(rows.clone()).is_err() {
                return log;
            }
        }
    });
    (rx, handle)
}

#[tokio::test]
async fn late_joiners_during_a_burst_lose_nothing_and_see_nothing_twice() {
    let (db, sql, server) = items_table(None).await;
    let addr = server.addr();

    // Two early clients with the same filter, then late joiners while the burst runs.
    let filter = "where: {active: {_eq: true}}";
    let mut clients = Vec::new();
    for id in ["same-a", "same-b"] {
        let mut ws = Ws::connect(addr, "graphql-transport-ws").await;
        ws.subscribe("1", &subscription(filter)).await;
        clients.push((id, true, spawn_collector(ws, "1")));
    }
    let mut rng_state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    for step in 0..400u32 {
        let id = (next() % 60) as i32;
        let score = (next() % 100) as i32;
        let active = next() % 3 != 0;
        let statement = match next() % 4 {
            0 => format!("DELETE FROM items WHERE id = {id}"),
            1 => format!(
                "BEGIN; INSERT INTO items VALUES ({id}, 'x{step}', {score}, {active}, 'silver') ON CONFLICT (id) DO UPDATE SET score = {score}; \
                 UPDATE items SET active = NOT active WHERE id = {}; COMMIT;",
                (id + 7) % 60
            ),
            _ => format!(
                "INSERT INTO items VALUES ({id}, 'n{step}', {score}, {active}, 'gold') ON CONFLICT (id) DO UPDATE SET score = {score}, active = {active}, name = 'u{step}'"
            ),
        };
        sql.batch_execute(&statement).await.unwrap();
        if step % 40 == 20 {
            let filtered = step % 80 == 20;
            let mut ws = Ws::connect(
                addr,
                if step % 120 == 20 {
                    "graphql-ws"
                } else {
                    "graphql-transport-ws"
                },
            )
            .await;
            ws.subscribe("1", &subscription(if filtered { filter } else { "" }))
                .await;
            clients.push(("late", filtered, spawn_collector(ws, "1")));
        }
    }
    let all = table_rows(&sql, |_| true).await;
    let active = table_rows(&sql, |v| v["active"] == true).await;
    for (_, filtered, (rx, _)) in &mut clients {
        let expected = if *filtered { &active } else { &all };
        let mut rx = rx.clone();
        eventually(
            || {
                let rows = rx.borrow_and_update().rows.clone();
                async move { rows }
            },
            |rows| rows == expected,
        )
        .await;
    }
    server.shutdown().await;
    let mut logs = Vec::new();
    for (name, _, (_, handle)) in clients {
        logs.push((name, handle.await.expect("collector did not panic")));
    }
    assert_eq!(
        logs[0].1, logs[1].1,
        "two clients with the same filter from the same point see the same updates"
    );
    db.stop().await;
}

#[tokio::test]
async fn a_database_restart_is_invisible_to_clients() {
    let mut db = TestDb::private().await;
    let sql = db.client().await;
    sql.batch_execute(TABLE).await.unwrap();
    sql.batch_execute(
        "INSERT INTO items SELECT g, 'n', g, true, 'gold' FROM generate_series(1, 20) g",
    )
    .await
    .unwrap();
    let server = start_server(&db, SCHEMA).await;
    let mut ws = Ws::connect(server.addr(), "graphql-transport-ws").await;
    ws.subscribe("r", &subscription("")).await;
    let (rx, handle) = spawn_collector(ws, "r");
    sql.batch_execute("UPDATE items SET score = score + 1000 WHERE id <= 10")
        .await
        .unwrap();
    drop(sql);

    db.cluster
        .as_mut()
        .expect("private cluster")
        .restart()
        .await
        .expect("restart postgres");
    let sql = db.client().await;
    sql.batch_execute("INSERT INTO items VALUES (100, 'after', 1, false, NULL)")
        .await
        .unwrap();
    sql.batch_execute("DELETE FROM items WHERE id = 5")
        .await
        .unwrap();
    sql.batch_execute("UPDATE items SET name = 'renamed' WHERE id = 7")
        .await
        .unwrap();

    let expected = table_rows(&sql, |_| true).await;
    let mut rx2 = rx.clone();
    eventually(
        || {
            let rows = rx2.borrow_and_update().rows.clone();
            async move { rows }
        },
        |rows| rows == &expected,
    )
    .await;
    common::wait_ready(server.addr()).await;
    server.shutdown().await;
    let log = handle
        .await
        .expect("no duplicate, no unknown key, no reset");
    assert!(log.iter().all(|u| u["operation"] != "RESET"));
    db.stop().await;
}

#[tokio::test]
async fn a_missing_table_fails_its_source_only() {
    let (db, _) = items_db(Some("INSERT INTO items VALUES (1, 'a', 10, true, 'gold')")).await;
    let yaml = format!("{SCHEMA}  ghosts:\n    primary_key: id\n    columns:\n      id: Integer\n");
    let config = viewcast::config::load_str(std::path::Path::new("test.yaml"), &yaml).unwrap();
    let options = viewcast::server::ServeOptions {
        port: 0,
        database_url: Some(db.url.clone()),
        instance: format!("t{}", rand::random::<u32>()),
        apply_setup: true,
        ..viewcast::server::ServeOptions::default()
    };
    let server = viewcast::server::Server::start(config, options)
        .await
        .unwrap();
    let addr = server.addr();
    let (status, body) = eventually(
        || async move { common::http_get(addr, "/ready").await.unwrap() },
        |(_, body)| {
            body.contains("does not exist") && body.contains(r#""items":{"status":"live"}"#)
        },
    )
    .await;
    assert_eq!(status, 503, "{body}");

    let mut ws = Ws::connect(addr, "graphql-transport-ws").await;
    ws.subscribe("g", "subscription { ghosts { operation } }")
        .await;
    let error = ws.recv().await.unwrap();
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(
        error["payload"][0]["extensions"]["code"],
        "SOURCE_UNAVAILABLE"
    );
    assert!(
        error["payload"][0]["message"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{error}"
    );

    ws.subscribe("i", &subscription("")).await;
    assert_eq!(
        ws.next_payload("i").await["data"]["items"]["data"]["id"],
        1,
        "other sources work"
    );
    server.shutdown().await;
    db.stop().await;
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
    assert!(
        body.contains(
            r#""items":{"reason":"lazy source: starts with its first consumer","status":"idle"}"#
        ),
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
async fn composite_keys_quoted_identifiers_and_schemas() {
    let db = TestDb::new().await;
    let sql = db.client().await;
    sql.batch_execute(
        r#"CREATE SCHEMA "Market"; CREATE TABLE "Market"."Order Book" ("Venue" text, sym text, "Level" integer, qty bigint, PRIMARY KEY ("Venue", sym, "Level"));
           INSERT INTO "Market"."Order Book" VALUES ('X', 'AAPL', 1, 100), ('X', 'AAPL', 2, 200), ('Y', 'AAPL', 1, 300)"#,
    )
    .await
    .unwrap();
    let schema = r#"
backend: postgres
sources:
  book:
    table: '"Market"."Order Book"'
    primary_key: [venue, sym, level]
    columns:
      venue: { type: String, column: '"Venue"' }
      sym: String
      level: { type: Integer, column: '"Level"' }
      qty: BigInt
"#;
    let server = start_server(&db, schema).await;
    let mut ws = Ws::connect(server.addr(), "graphql-transport-ws").await;
    ws.subscribe("b", r#"subscription { book(where: {venue: {_eq: "X"}}, snapshot_end: true) { operation data { venue sym level qty } fields } }"#).await;
    let mut snapshot = vec![
        ws.next_payload("b").await["data"]["book"]["data"].clone(),
        ws.next_payload("b").await["data"]["book"]["data"].clone(),
    ];
    snapshot.sort_by_key(|d| d["level"].as_i64());
    assert_eq!(
        snapshot,
        [
            json!({"venue": "X", "sym": "AAPL", "level": 1, "qty": "100"}),
            json!({"venue": "X", "sym": "AAPL", "level": 2, "qty": "200"})
        ]
    );
    assert_eq!(
        ws.next_payload("b").await["data"]["book"]["operation"],
        "SNAPSHOT_END"
    );

    // A key change is a DELETE of the old key and an INSERT of the new one.
    sql.batch_execute(r#"UPDATE "Market"."Order Book" SET "Level" = 3, qty = 250 WHERE "Venue" = 'X' AND "Level" = 2"#).await.unwrap();
    let delete = ws.next_payload("b").await["data"]["book"].clone();
    let insert = ws.next_payload("b").await["data"]["book"].clone();
    assert_eq!(
        (
            delete["operation"].as_str(),
            delete["data"]["level"].as_i64()
        ),
        (Some("DELETE"), Some(2)),
        "{delete}"
    );
    assert_eq!(
        insert["data"],
        json!({"venue": "X", "sym": "AAPL", "level": 3, "qty": "250"}),
        "{insert}"
    );
    // Same other key columns, different venue: a different row.
    sql.batch_execute(r#"UPDATE "Market"."Order Book" SET qty = 301 WHERE "Venue" = 'Y'"#)
        .await
        .unwrap();
    sql.batch_execute(
        r#"UPDATE "Market"."Order Book" SET qty = 101 WHERE "Venue" = 'X' AND "Level" = 1"#,
    )
    .await
    .unwrap();
    let update = ws.next_payload("b").await["data"]["book"].clone();
    assert_eq!(
        update["data"],
        json!({"venue": "X", "sym": "AAPL", "level": 1, "qty": "101"}),
        "the key and the change: {update}"
    );
    assert_eq!(update["fields"], json!(["qty"]));
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
