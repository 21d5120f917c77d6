//! The Materialize and RisingWave feeds against the wire-level stand-in (the project's one
//! test double): lossless resume across many lost connections, with retained history
//! (Materialize `AS OF`, RisingWave `SINCE`) and after the history is gone (fresh snapshot,
//! difference only); Materialize key violations and clusters.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::backend::{Backend, Kind};
use common::{Ws, converges, eventually, spawn_collector};
use serde_json::{Value, json};
use viewcast_standin::Options;

const TABLE: &str =
    "CREATE TABLE items (id integer PRIMARY KEY, name text, score integer, active boolean)";

fn schema(backend: &Backend) -> String {
    format!(
        "{}sources:\n  items:\n    primary_key: id\n{}    columns:\n      id: Integer\n      name: String\n      score: Integer\n      active: Boolean\n",
        backend.yaml_backend(),
        backend.yaml_source_options()
    )
}

fn metric(metrics: &str, name: &str) -> u64 {
    let prefix = format!("{name}{{source=\"items\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str())?.trim().parse().ok())
        .unwrap_or(0)
}

async fn table(
    backend: &Backend,
    keep: impl Fn(&Value) -> bool,
) -> BTreeMap<String, serde_json::Map<String, Value>> {
    backend
        .rows("SELECT id, name, score, active FROM items")
        .await
        .into_iter()
        .map(|r| {
            json!({
                "id": r[0].as_deref().unwrap().parse::<i64>().unwrap(),
                "name": r[1],
                "score": r[2].as_deref().map(|s| s.parse::<i64>().unwrap()),
                "active": r[3].as_deref().map(|v| v == "t"),
            })
        })
        .filter(|v| keep(v))
        .map(|v| (v["id"].to_string(), v.as_object().cloned().unwrap()))
        .collect()
}

/// Writes random changes (inserts, updates, deletes, two-statement transactions) until `stop`
/// (after the statement in flight, so the table is final once it returns) or its connection
/// fails; returns how many statements it ran.
fn spawn_writer(
    sql: tokio_postgres::Client,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut present: std::collections::BTreeSet<u64> = (0..50).collect();
        for step in 0.. {
            if stop.is_cancelled() {
                return step;
            }
            let id = next() % 80;
            let statement = if present.contains(&id) {
                match next() % 5 {
                    0 => {
                        present.remove(&id);
                        format!("DELETE FROM items WHERE id = {id}")
                    }
                    1 => format!(
                        "BEGIN; UPDATE items SET score = score + 1 WHERE id = {id}; UPDATE items SET active = NOT active WHERE id = {id}; COMMIT"
                    ),
                    _ => format!(
                        "UPDATE items SET score = {}, name = 's{step}' WHERE id = {id}",
                        next() % 100
                    ),
                }
            } else {
                present.insert(id);
                format!(
                    "INSERT INTO items VALUES ({id}, 'i{step}', {}, {})",
                    next() % 100,
                    next() % 2 == 0
                )
            };
            if sql.batch_execute(&statement).await.is_err() {
                return step;
            }
            tokio::task::yield_now().await;
        }
        unreachable!()
    })
}

/// A write burst while the feed's connection is killed `kills` times at random moments;
/// afterwards every client holds exactly the table. With `compact`, the history is compacted
/// after each kill, so every resume must take a fresh snapshot.
async fn resume_under_random_kills(kind: Kind, kills: usize, compact: bool) {
    let backend = Backend::start_with(kind, Options::default()).await;
    backend.create_table("items", TABLE).await;
    let sql = backend.sql().await;
    let rows: Vec<String> = (0..50).map(|i| format!("({i}, 'n', {i}, true)")).collect();
    sql.batch_execute(&format!("INSERT INTO items VALUES {}", rows.join(", ")))
        .await
        .unwrap();
    let server = backend.server(&schema(&backend)).await;
    let addr = server.addr();
    let mut clients = Vec::new();
    for filter in [
        "",
        "(where: {active: {_eq: true}})",
        "(where: {score: {_lt: 50}})",
    ] {
        let mut ws = Ws::connect(addr, "graphql-transport-ws").await;
        ws.subscribe("1", &format!("subscription {{ items{filter} {{ operation data {{ id name score active }} fields }} }}")).await;
        clients.push((filter, spawn_collector(ws, "1", "items")));
    }

    let standin = backend.standin.as_ref().expect("a stand-in");
    let stop_writer = tokio_util::sync::CancellationToken::new();
    let writer = spawn_writer(backend.sql().await, stop_writer.clone());
    // Kill the feed's stream at random moments until the feed has lost its connection `kills`
    // times (its reconnect counter; a kill can land on a connection already closing).
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let lost = || async {
        metric(
            &common::http_get(addr, "/metrics").await.unwrap().1,
            "viewcast_source_reconnects_total",
        )
    };
    while lost().await < kills as u64 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // A random point in the burst, not a synchronisation: any moment is a valid test.
        tokio::time::sleep(Duration::from_micros(rng % 30_000)).await;
        if standin.kill_streams() > 0 && compact {
            standin.compact_all();
        }
    }
    stop_writer.cancel();
    let statements = writer.await.expect("the writer ran");
    assert!(statements > 100, "{statements} statements during the kills");
    let expected = [
        table(&backend, |_| true).await,
        table(&backend, |v| v["active"] == true).await,
        table(&backend, |v| v["score"].as_i64().is_some_and(|s| s < 50)).await,
    ];
    for ((filter, (rx, _)), expected) in clients.iter().zip(&expected) {
        converges(rx, expected).await;
        assert!(!expected.is_empty(), "filter {filter} selects something");
    }
    let metrics = common::http_get(addr, "/metrics").await.unwrap().1;
    let snapshots = metric(&metrics, "viewcast_source_snapshots_total");
    let resumes = metric(&metrics, "viewcast_source_resumes_total");
    if compact {
        assert!(
            snapshots > 1,
            "resumes after compaction take a snapshot: {snapshots}"
        );
    } else if kind == Kind::RisingWave {
        // A cursor killed before its first epoch after a FULL snapshot has no resume point
        // (snapshot rows carry no rw_timestamp) and takes a snapshot again.
        assert!(
            resumes * 2 >= kills as u64,
            "most sessions resume SINCE their last epoch: {resumes} resumes, {snapshots} snapshots"
        );
    } else {
        assert_eq!(
            snapshots, 1,
            "with retained history every resume uses AS OF"
        );
        // The last kill's session may still be reconnecting.
        eventually(
            || async {
                metric(
                    &common::http_get(addr, "/metrics").await.unwrap().1,
                    "viewcast_source_resumes_total",
                )
            },
            |resumes| *resumes >= kills as u64,
        )
        .await;
    }
    server.shutdown().await;
    for (_, (_, handle)) in clients {
        handle
            .await
            .expect("no duplicate INSERT, no unknown key, no reset");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_as_of_across_fifty_lost_connections() {
    resume_under_random_kills(Kind::Materialize, 50, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_as_of_across_fifty_lost_connections_diff_envelope() {
    resume_under_random_kills(Kind::MaterializeDiff, 50, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_past_the_compaction_horizon_takes_a_snapshot_and_sends_only_the_difference() {
    resume_under_random_kills(Kind::Materialize, 50, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn risingwave_resumes_since_its_last_epoch_across_fifty_lost_connections() {
    resume_under_random_kills(Kind::RisingWave, 50, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn risingwave_past_its_retention_takes_a_snapshot_and_sends_only_the_difference() {
    resume_under_random_kills(Kind::RisingWave, 50, true).await;
}

#[tokio::test]
async fn a_key_violation_is_counted_and_not_applied() {
    let backend = Backend::start(Kind::Materialize).await;
    // Materialize views have no enforced key: this table has none.
    backend
        .create_table(
            "items",
            "CREATE TABLE items (id integer, name text, score integer, active boolean)",
        )
        .await;
    let sql = backend.sql().await;
    sql.batch_execute("INSERT INTO items VALUES (1, 'a', 1, true)")
        .await
        .unwrap();
    let server = backend.server(&schema(&backend)).await;
    let mut ws = Ws::connect(server.addr(), "graphql-transport-ws").await;
    ws.subscribe("k", "subscription { items { operation data { id name } } }")
        .await;
    let first = ws.next_payload("k").await["data"]["items"].clone();
    assert_eq!(first["data"], json!({"id": 1, "name": "a"}));
    // Two rows for key 2 at one timestamp: a violation; then a clean change.
    sql.batch_execute("INSERT INTO items VALUES (2, 'x', 1, true), (2, 'y', 2, true)")
        .await
        .unwrap();
    sql.batch_execute("INSERT INTO items VALUES (3, 'c', 3, true)")
        .await
        .unwrap();
    let next = ws.next_payload("k").await["data"]["items"].clone();
    assert_eq!(
        next["data"],
        json!({"id": 3, "name": "c"}),
        "the violating key was not applied"
    );
    let metrics = common::http_get(server.addr(), "/metrics").await.unwrap().1;
    assert_eq!(metric(&metrics, "viewcast_source_key_violations_total"), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn an_unknown_cluster_is_reported_for_its_source() {
    unknown_setting_is_reported("cluster: nowhere", "unknown cluster 'nowhere'").await;
}

#[tokio::test]
async fn an_unknown_database_is_reported_for_its_source() {
    unknown_setting_is_reported("database: nowhere", "unknown database 'nowhere'").await;
}

/// A source whose `setting` names something Materialize does not have reports `message`.
async fn unknown_setting_is_reported(setting: &str, message: &'static str) {
    let backend = Backend::start(Kind::Materialize).await;
    backend.create_table("items", TABLE).await;
    let yaml = schema(&backend).replace(
        "    primary_key: id\n",
        &format!("    primary_key: id\n    {setting}\n"),
    );
    let config = viewcast::config::load_str(std::path::Path::new("test.yaml"), &yaml).unwrap();
    let server = viewcast::server::Server::start(config, backend.options())
        .await
        .unwrap();
    let addr = server.addr();
    let (status, body) = eventually(
        || async move { common::http_get(addr, "/ready").await.unwrap() },
        |(_, body)| body.contains(message),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    server.shutdown().await;
}
