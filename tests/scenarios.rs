//! Live-view scenarios every backend must pass, run against a real PostgreSQL and against the
//! Materialize stand-in (upsert and diff envelopes): snapshot and live changes, a transaction
//! as one batch, filters moving rows in and out, late joiners during a write burst, a lost
//! upstream, a missing relation.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::backend::{Backend, Kind};
use common::{Ws, converges, eventually, spawn_collector};
use serde_json::{Value, json};

const TABLE: &str = "CREATE TABLE items (id integer PRIMARY KEY, name text, score integer, active boolean, rank text)";

const SELECTION: &str = "operation data { id name score active rank } fields cursor timestamp";

fn schema(backend: &Backend) -> String {
    format!(
        "{}enums:\n  rank: [bronze, silver, gold]\nsources:\n  items:\n    primary_key: id\n{}    columns:\n      id: Integer\n      name: String\n      score: Integer\n      active: Boolean\n      rank: rank\n",
        backend.yaml_backend(),
        backend.yaml_source_options()
    )
}

fn subscription(args: &str) -> String {
    if args.is_empty() {
        format!("subscription {{ items {{ {SELECTION} }} }}")
    } else {
        format!("subscription {{ items({args}) {{ {SELECTION} }} }}")
    }
}

/// A backend with the `items` table (and `rows`, if given), and a server for it.
async fn items(
    kind: Kind,
    rows: Option<&str>,
) -> (Backend, tokio_postgres::Client, viewcast::server::Server) {
    let backend = Backend::start(kind).await;
    backend.create_table("items", TABLE).await;
    let sql = backend.sql().await;
    if let Some(rows) = rows {
        sql.batch_execute(rows).await.unwrap();
    }
    let server = backend.server(&schema(&backend)).await;
    (backend, sql, server)
}

/// The table's rows as a client would hold them (filtered by `keep`).
async fn table_rows(
    backend: &Backend,
    keep: impl Fn(&Value) -> bool,
) -> BTreeMap<String, serde_json::Map<String, Value>> {
    let rows = backend
        .rows("SELECT id, name, score, active, rank FROM items")
        .await;
    rows.into_iter()
        .map(|r| {
            let text = |i: usize| r[i].clone().map_or(Value::Null, Value::String);
            let int = |i: usize| {
                r[i].as_deref()
                    .map_or(Value::Null, |v| json!(v.parse::<i64>().unwrap()))
            };
            json!({
                "id": int(0),
                "name": text(1),
                "score": int(2),
                "active": r[3].as_deref().map_or(Value::Null, |v| json!(v == "t")),
                "rank": text(4),
            })
        })
        .filter(|v| keep(v))
        .map(|v| (v["id"].to_string(), v.as_object().cloned().expect("object")))
        .collect()
}

async fn snapshot_then_live_insert_update_delete(kind: Kind) {
    let (backend, sql, server) = items(
        kind,
        Some("INSERT INTO items VALUES (1, 'a', 10, true, 'gold'), (2, 'b', 20, false, NULL)"),
    )
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

    // Three batches reached the hub, and three live frames the socket: both histograms count
    // them (snapshot frames are not timed).
    let count = |metrics: &str, name: &str| -> u64 {
        let prefix = format!("{name}_count{{source=\"items\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str())?.parse().ok())
            .unwrap_or(0)
    };
    let metrics = eventually(
        || async { common::http_get(server.addr(), "/metrics").await.unwrap().1 },
        |m: &String| count(m, "viewcast_source_delivery_delay_seconds") == 3,
    )
    .await;
    assert_eq!(count(&metrics, "viewcast_source_commit_delay_seconds"), 3);

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
    backend.stop().await;
}

async fn a_transaction_arrives_as_one_batch(kind: Kind) {
    let (backend, sql, server) = items(kind, None).await;
    let mut ws = Ws::connect(server.addr(), "graphql-transport-ws").await;
    ws.subscribe("t", &subscription("snapshot_end: true")).await;
    assert_eq!(
        ws.next_payload("t").await["data"]["items"]["operation"],
        "SNAPSHOT_END"
    );
    let values: Vec<String> = (1..=10)
        .map(|g| format!("({g}, 'n{g}', {g}, true, 'bronze')"))
        .collect();
    sql.batch_execute(&format!(
        "BEGIN; INSERT INTO items VALUES {}; UPDATE items SET score = 100 WHERE id = 3; DELETE FROM items WHERE id = 4; COMMIT;",
        values.join(", ")
    ))
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
    backend.stop().await;
}

async fn filters_move_rows_in_and_out(kind: Kind) {
    let (backend, sql, server) = items(
        kind,
        Some("INSERT INTO items VALUES (1, 'a', 10, true, 'gold'), (2, 'b', 90, true, 'bronze')"),
    )
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
    backend.stop().await;
}

/// A deterministic random write: inserts absent ids, updates or deletes present ones, some in
/// two-statement transactions. Keeps `present` in step with the table.
fn random_write(next: &mut impl FnMut() -> u64, present: &mut BTreeSet<i64>, step: u64) -> String {
    let id = (next() % 60) as i64;
    let score = next() % 100;
    let active = !next().is_multiple_of(3);
    if !present.contains(&id) {
        present.insert(id);
        return format!("INSERT INTO items VALUES ({id}, 'n{step}', {score}, {active}, 'gold')");
    }
    match next() % 4 {
        0 => {
            present.remove(&id);
            format!("DELETE FROM items WHERE id = {id}")
        }
        1 => format!(
            "BEGIN; UPDATE items SET score = {score} WHERE id = {id}; UPDATE items SET active = NOT active WHERE id = {}; COMMIT",
            (id + 7) % 60
        ),
        _ => format!(
            "UPDATE items SET score = {score}, active = {active}, name = 'u{step}' WHERE id = {id}"
        ),
    }
}

fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

async fn late_joiners_during_a_burst_lose_nothing_and_see_nothing_twice(kind: Kind) {
    let (backend, sql, server) = items(kind, None).await;
    let addr = server.addr();
    // Two early clients with the same filter, then late joiners while the burst runs.
    let filter = "where: {active: {_eq: true}}";
    let mut clients = Vec::new();
    for name in ["same-a", "same-b"] {
        let mut ws = Ws::connect(addr, "graphql-transport-ws").await;
        ws.subscribe("1", &subscription(filter)).await;
        clients.push((name, true, spawn_collector(ws, "1", "items")));
    }
    let mut next = xorshift(0x2545_F491_4F6C_DD1D);
    let mut present = BTreeSet::new();
    for step in 0..400u64 {
        sql.batch_execute(&random_write(&mut next, &mut present, step))
            .await
            .unwrap();
        if step % 40 == 20 {
            let filtered = step % 80 == 20;
            let protocol = if step % 120 == 20 {
                "graphql-ws"
            } else {
                "graphql-transport-ws"
            };
            let mut ws = Ws::connect(addr, protocol).await;
            ws.subscribe("1", &subscription(if filtered { filter } else { "" }))
                .await;
            clients.push(("late", filtered, spawn_collector(ws, "1", "items")));
        }
    }
    let all = table_rows(&backend, |_| true).await;
    let active = table_rows(&backend, |v| v["active"] == true).await;
    for (_, filtered, (rx, _)) in &clients {
        converges(rx, if *filtered { &active } else { &all }).await;
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
    backend.stop().await;
}

async fn a_lost_upstream_is_invisible_to_clients(kind: Kind) {
    let rows: Vec<String> = (1..=20)
        .map(|g| format!("({g}, 'n', {g}, true, 'gold')"))
        .collect();
    let (mut backend, sql, server) = items(
        kind,
        Some(&format!("INSERT INTO items VALUES {}", rows.join(", "))),
    )
    .await;
    let mut ws = Ws::connect(server.addr(), "graphql-transport-ws").await;
    ws.subscribe("r", &subscription("")).await;
    let (rx, handle) = spawn_collector(ws, "r", "items");
    sql.batch_execute("UPDATE items SET score = score + 1000 WHERE id <= 10")
        .await
        .unwrap();
    // The feed has applied a change after its snapshot (so it has a resume point) …
    converges(&rx, &table_rows(&backend, |_| true).await).await;
    drop(sql);
    // … when the upstream goes away.
    backend.interrupt().await;
    let sql = backend.sql().await;
    sql.batch_execute("INSERT INTO items VALUES (100, 'after', 1, false, NULL)")
        .await
        .unwrap();
    sql.batch_execute("DELETE FROM items WHERE id = 5")
        .await
        .unwrap();
    sql.batch_execute("UPDATE items SET name = 'renamed' WHERE id = 7")
        .await
        .unwrap();
    let expected = table_rows(&backend, |_| true).await;
    converges(&rx, &expected).await;
    common::wait_ready(server.addr()).await;
    // The feed continued where it stopped rather than taking a second snapshot.
    let metrics = common::http_get(server.addr(), "/metrics").await.unwrap().1;
    let metric = |name: &str| {
        let prefix = format!("{name}{{source=\"items\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str())?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(metric("viewcast_source_resumes_total") >= 1, "{metrics}");
    assert_eq!(metric("viewcast_source_snapshots_total"), 1, "{metrics}");
    server.shutdown().await;
    let log = handle
        .await
        .expect("no duplicate, no unknown key, no reset");
    assert!(log.iter().all(|u| u["operation"] != "RESET"));
    backend.stop().await;
}

async fn a_missing_relation_fails_its_source_only(kind: Kind) {
    let backend = Backend::start(kind).await;
    backend.create_table("items", TABLE).await;
    backend
        .sql()
        .await
        .batch_execute("INSERT INTO items VALUES (1, 'a', 10, true, 'gold')")
        .await
        .unwrap();
    let yaml = format!(
        "{}  ghosts:\n    primary_key: id\n{}    columns:\n      id: Integer\n",
        schema(&backend),
        backend.yaml_source_options()
    );
    let config = viewcast::config::load_str(std::path::Path::new("test.yaml"), &yaml).unwrap();
    let server = viewcast::server::Server::start(config, backend.options())
        .await
        .unwrap();
    let addr = server.addr();
    let missing = match kind {
        Kind::Postgres => "does not exist",
        Kind::RisingWave => "table or source not found: ghosts",
        _ => "unknown catalog item",
    };
    let (status, body) = eventually(
        || async move { common::http_get(addr, "/ready").await.unwrap() },
        |(_, body)| body.contains(missing) && body.contains(r#""items":{"status":"live"}"#),
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
            .contains(missing),
        "{error}"
    );
    ws.subscribe("i", &subscription("")).await;
    assert_eq!(
        ws.next_payload("i").await["data"]["items"]["data"]["id"],
        1,
        "other sources work"
    );
    server.shutdown().await;
    backend.stop().await;
}

async fn composite_keys_quoted_identifiers_and_schemas(kind: Kind) {
    let backend = Backend::start(kind).await;
    backend
        .sql()
        .await
        .batch_execute(r#"CREATE SCHEMA "Market""#)
        .await
        .unwrap();
    backend
        .create_table(
            r#""Market"."Order Book""#,
            r#"CREATE TABLE "Market"."Order Book" ("Venue" text, sym text, "Level" integer, qty bigint, PRIMARY KEY ("Venue", sym, "Level"))"#,
        )
        .await;
    let sql = backend.sql().await;
    sql.batch_execute(
        r#"INSERT INTO "Market"."Order Book" VALUES ('X', 'AAPL', 1, 100), ('X', 'AAPL', 2, 200), ('Y', 'AAPL', 1, 300)"#,
    )
    .await
    .unwrap();
    let schema = format!(
        r#"{}sources:
  book:
    table: '"Market"."Order Book"'
    primary_key: [venue, sym, level]
{}    columns:
      venue: {{ type: String, column: '"Venue"' }}
      sym: String
      level: {{ type: Integer, column: '"Level"' }}
      qty: BigInt
"#,
        backend.yaml_backend(),
        backend.yaml_source_options()
    );
    let server = backend.server(&schema).await;
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

    // A key change is a DELETE of the old key and an INSERT of the new one (in one batch, in
    // no particular order).
    sql.batch_execute(r#"UPDATE "Market"."Order Book" SET "Level" = 3, qty = 250 WHERE "Venue" = 'X' AND "Level" = 2"#).await.unwrap();
    let mut pair = vec![
        ws.next_payload("b").await["data"]["book"].clone(),
        ws.next_payload("b").await["data"]["book"].clone(),
    ];
    pair.sort_by_key(|u| u["operation"].as_str().map(str::to_owned));
    assert_eq!(
        (
            pair[0]["operation"].as_str(),
            pair[0]["data"]["level"].as_i64()
        ),
        (Some("DELETE"), Some(2)),
        "{pair:?}"
    );
    assert_eq!(
        (pair[1]["operation"].as_str(), &pair[1]["data"]),
        (
            Some("INSERT"),
            &json!({"venue": "X", "sym": "AAPL", "level": 3, "qty": "250"})
        ),
        "{pair:?}"
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
    backend.stop().await;
}

macro_rules! on_backend {
    ($module:ident, $kind:expr, [$($scenario:ident),* $(,)?]) => {
        mod $module {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario($kind).await;
                }
            )*
        }
    };
}

macro_rules! on_every_backend {
    ($($scenario:ident),* $(,)?) => {
        on_backend!(postgres, super::Kind::Postgres, [$($scenario),*]);
        on_backend!(materialize, super::Kind::Materialize, [$($scenario),*]);
        on_backend!(materialize_diff, super::Kind::MaterializeDiff, [$($scenario),*]);
        on_backend!(risingwave, super::Kind::RisingWave, [$($scenario),*]);
    };
}

on_every_backend!(
    snapshot_then_live_insert_update_delete,
    a_transaction_arrives_as_one_batch,
    filters_move_rows_in_and_out,
    late_joiners_during_a_burst_lose_nothing_and_see_nothing_twice,
    a_lost_upstream_is_invisible_to_clients,
    a_missing_relation_fails_its_source_only,
    composite_keys_quoted_identifiers_and_schemas,
);
