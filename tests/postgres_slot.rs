//! One replication slot per server and database, on a PostgreSQL with stock limits: many
//! sources share one publication, one slot and one WAL sender; a source that joins while the
//! stream runs (a lazy one) snapshots its table alongside it, exactly, under concurrent writes
//! (updates that leave TOASTed values unchanged included).

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use common::{TestDb, Ws};
use serde_json::{Value, json};
use viewcast::pgcluster::ClusterOptions;

/// A private cluster with PostgreSQL's stock replication limits (10 WAL senders, 10 slots).
async fn stock_db() -> TestDb {
    TestDb::private_with(ClusterOptions {
        settings: vec![
            ("max_wal_senders".into(), "10".into()),
            ("max_replication_slots".into(), "10".into()),
        ],
        ..ClusterOptions::default()
    })
    .await
}

async fn count(sql: &tokio_postgres::Client, query: &str) -> i64 {
    sql.query_one(query, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn thirty_sources_share_one_slot_and_one_wal_sender_per_server() {
    const SOURCES: usize = 30;
    let db = stock_db().await;
    let sql = db.client().await;
    let limit = count(
        &sql,
        "SELECT setting::bigint FROM pg_settings WHERE name = 'max_wal_senders'",
    )
    .await;
    assert_eq!(limit, 10, "the stock limit, fewer than the sources");
    let mut yaml = String::from("backend: postgres\nsources:\n");
    for i in 0..SOURCES {
        sql.batch_execute(&format!(
            "CREATE TABLE t{i} (id integer PRIMARY KEY, v integer); INSERT INTO t{i} SELECT g, g * {i} FROM generate_series(1, 5) g"
        ))
        .await
        .unwrap();
        let _ = write!(
            yaml,
            "  t{i}:\n    primary_key: id\n    columns:\n      id: Integer\n      v: Integer\n"
        );
    }
    let config = || viewcast::config::load_str(std::path::Path::new("t.yaml"), &yaml).unwrap();
    // Two servers: each is live on all thirty with one slot and one WAL sender of its own.
    let a = common::start_server_with_options(&db, config(), |o| o.instance = "a".into()).await;
    let b = common::start_server_with_options(&db, config(), |o| o.instance = "b".into()).await;
    assert_eq!(
        count(&sql, "SELECT count(*) FROM pg_replication_slots").await,
        2
    );
    assert_eq!(
        count(
            &sql,
            "SELECT count(*) FROM pg_stat_replication WHERE application_name LIKE 'viewcast%'"
        )
        .await,
        2
    );
    assert_eq!(
        count(&sql, "SELECT count(*) FROM pg_publication").await,
        1,
        "one publication"
    );

    // One transaction over every table reaches every source, on both servers.
    let mut watchers = Vec::new();
    for server in [&a, &b] {
        for i in 0..SOURCES {
            let mut ws = Ws::connect(server.addr(), "graphql-transport-ws").await;
            ws.subscribe(
                "1",
                &format!(
                    "subscription {{ t{i}(snapshot_end: true) {{ operation data {{ id v }} }} }}"
                ),
            )
            .await;
            let mut ids = Vec::new();
            loop {
                let update = ws.next_payload("1").await["data"][format!("t{i}")].clone();
                if update["operation"] == "SNAPSHOT_END" {
                    break;
                }
                ids.push(update["data"]["id"].as_i64().unwrap());
            }
            ids.sort_unstable();
            assert_eq!(ids, [1, 2, 3, 4, 5], "t{i}");
            watchers.push((i, ws));
        }
    }
    let mut write = String::from("BEGIN;");
    for i in 0..SOURCES {
        let _ = write!(write, "UPDATE t{i} SET v = -1 - {i} WHERE id = 3;");
    }
    write.push_str("COMMIT;");
    sql.batch_execute(&write).await.unwrap();
    for (i, ws) in &mut watchers {
        let update = ws.next_payload("1").await["data"][format!("t{i}")].clone();
        assert_eq!(update["operation"], "UPDATE", "{update}");
        assert_eq!(update["data"]["v"], -1 - *i as i64, "{update}");
    }
    a.shutdown().await;
    b.shutdown().await;
    assert_eq!(
        count(&sql, "SELECT count(*) FROM pg_replication_slots").await,
        0,
        "slots dropped at shutdown"
    );
    db.stop().await;
}

const ITEMS: &str = "CREATE TABLE items (id integer PRIMARY KEY, v integer, big text);
    ALTER TABLE items ALTER COLUMN big SET STORAGE EXTERNAL;
    CREATE TABLE other (id integer PRIMARY KEY);";

/// `count` sources (`items0`, `items1`, …) on the table `items`, started lazily, and an
/// eager source on another table that starts the stream.
fn lazy_yaml(count: usize) -> String {
    let mut yaml = String::from(
        "backend: postgres\nsources:\n  other:\n    primary_key: id\n    columns:\n      id: Integer\n",
    );
    for i in 0..count {
        let _ = write!(
            yaml,
            "  items{i}:\n    table: items\n    start: lazy\n    primary_key: id\n    columns:\n      id: Integer\n      v: Integer\n      big: String\n"
        );
    }
    yaml
}

/// A pseudo-random write: an insert, an update of `v` only (its out-of-line `big` unchanged,
/// so the stream says "unchanged" for it), an update of `big`, or a delete, over 200 keys.
fn random_write(state: &mut u64) -> String {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    let id = *state % 200;
    let v = (*state >> 8) % 1000;
    match (*state >> 20) % 5 {
        0 | 1 => format!(
            "INSERT INTO items VALUES ({id}, {v}, repeat('{v}', 1000)) ON CONFLICT (id) DO UPDATE SET v = {v}"
        ),
        2 => format!("UPDATE items SET v = {v} WHERE id = {id}"),
        3 => format!("UPDATE items SET big = repeat('x{v}', 700) WHERE id = {id}"),
        _ => format!("DELETE FROM items WHERE id = {id}"),
    }
}

async fn table_rows(sql: &tokio_postgres::Client) -> BTreeMap<i64, Value> {
    sql.query("SELECT id, v, big FROM items", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let id: i32 = r.get(0);
            let v: Option<i32> = r.get(1);
            let big: Option<String> = r.get(2);
            (i64::from(id), json!({"id": id, "v": v, "big": big}))
        })
        .collect()
}

async fn served_rows(addr: std::net::SocketAddr, source: &str) -> BTreeMap<i64, Value> {
    let data = common::graphql(addr, &format!("{{ {source} {{ id v big }} }}"), json!({})).await;
    data["data"][source]
        .as_array()
        .unwrap_or_else(|| panic!("{data}"))
        .iter()
        .map(|row| (row["id"].as_i64().unwrap(), row.clone()))
        .collect()
}

#[tokio::test]
async fn sources_that_join_a_running_stream_snapshot_exactly_under_writes() {
    const JOINERS: usize = 6;
    let db = stock_db().await;
    let sql = db.client().await;
    sql.batch_execute(ITEMS).await.unwrap();
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    for _ in 0..300 {
        sql.batch_execute(&random_write(&mut state)).await.unwrap();
    }
    let server = common::start_server(&db, &lazy_yaml(JOINERS)).await;
    let addr = server.addr();

    // Writers run throughout; the lazy sources join one after another while they do.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut writers = Vec::new();
    for seed in 1..=3u64 {
        let client = db.client().await;
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut state = seed.wrapping_mul(0x2545_F491_4F6C_DD1D);
            let mut done = 0u64;
            while !stop.is_cancelled() {
                client
                    .batch_execute(&random_write(&mut state))
                    .await
                    .unwrap();
                done += 1;
            }
            done
        }));
    }
    let mut watchers = Vec::new();
    for i in 0..JOINERS {
        let mut ws = Ws::connect(addr, "graphql-transport-ws").await;
        ws.subscribe(
            "1",
            &format!("subscription {{ items{i} {{ operation data {{ id v big }} fields }} }}"),
        )
        .await;
        let (rx, handle) =
            common::spawn_collector(ws, "1", Box::leak(format!("items{i}").into_boxed_str()));
        // The next one joins once this one is live: its first rows arrived (its snapshot
        // taken while the writers run).
        let mut live = rx.clone();
        tokio::time::timeout(
            common::DEADLINE,
            live.wait_for(|rows| !rows.rows.is_empty()),
        )
        .await
        .expect("the lazy source goes live")
        .expect("collector running");
        watchers.push((rx, handle));
    }
    stop.cancel();
    let mut written = 0;
    for writer in writers {
        written += writer.await.unwrap();
    }
    assert!(written > 0);
    let expected = table_rows(&sql).await;
    for i in 0..JOINERS {
        served_converges(addr, &format!("items{i}"), &expected).await;
    }
    // Subscribers converge on the table as well.
    let as_client: BTreeMap<String, serde_json::Map<String, Value>> = expected
        .values()
        .map(|row| (row["id"].to_string(), row.as_object().unwrap().clone()))
        .collect();
    for (rx, _) in &watchers {
        common::converges(rx, &as_client).await;
    }
    assert_eq!(
        count(&sql, "SELECT count(*) FROM pg_replication_slots").await,
        1,
        "the lazy sources took no slot of their own"
    );
    server.shutdown().await;
    db.stop().await;
}

/// Waits until `source` serves exactly `expected`; on timeout, names the rows that differ.
async fn served_converges(
    addr: std::net::SocketAddr,
    source: &str,
    expected: &BTreeMap<i64, Value>,
) {
    let deadline = Instant::now() + common::DEADLINE;
    loop {
        let served = served_rows(addr, source).await;
        if served == *expected {
            return;
        }
        if Instant::now() >= deadline {
            let brief = |row: Option<&Value>| {
                row.map(|r| {
                    format!(
                        "v={} big={} chars",
                        r["v"],
                        r["big"].as_str().map_or(0, str::len)
                    )
                })
            };
            let ids: std::collections::BTreeSet<&i64> =
                expected.keys().chain(served.keys()).collect();
            let differing: Vec<String> = ids
                .into_iter()
                .filter(|id| served.get(id) != expected.get(id))
                .map(|id| {
                    format!(
                        "{id}: served {:?}, table {:?}",
                        brief(served.get(id)),
                        brief(expected.get(id))
                    )
                })
                .collect();
            panic!("{source} did not converge: {}", differing.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A source that starts while the feed waits out a failure hears why at once, not after the
/// next attempt (30 s away for an operator's problem such as a missing publication).
#[tokio::test]
async fn a_source_that_joins_while_the_feed_is_down_says_why() {
    let db = stock_db().await;
    let sql = db.client().await;
    sql.batch_execute(ITEMS).await.unwrap();
    let config = viewcast::config::load_str(std::path::Path::new("t.yaml"), &lazy_yaml(1)).unwrap();
    // Without --apply-setup and without the publication: the feed cannot stream.
    let server = viewcast::server::Server::start(
        config,
        viewcast::server::ServeOptions {
            host: "127.0.0.1".into(),
            port: 0,
            database_url: Some(db.url.clone()),
            instance: "down".into(),
            apply_setup: false,
            ..viewcast::server::ServeOptions::default()
        },
    )
    .await
    .expect("server starts");
    let addr = server.addr();
    let missing = "publication viewcast does not exist";
    let reason = |body: &str, source: &str| -> Option<String> {
        let body: Value = serde_json::from_str(body).ok()?;
        body["sources"][source]["reason"]
            .as_str()
            .map(str::to_owned)
    };
    common::eventually(
        || async move { common::http_get(addr, "/ready").await.unwrap() },
        |(_, body)| reason(body, "other").is_some_and(|r| r.contains(missing)),
    )
    .await;
    // The lazy source starts with its first consumer, while the feed waits.
    let mut ws = Ws::connect(addr, "graphql-transport-ws").await;
    ws.subscribe("1", "subscription { items0 { operation } }")
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = common::http_get(addr, "/ready").await.unwrap();
        if reason(&body, "items0").is_some_and(|r| r.contains(missing)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the joining source does not say why: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown().await;
    db.stop().await;
}
