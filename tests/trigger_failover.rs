//! Triggers across failures, against a real PostgreSQL and a real HTTP receiver: the binary
//! killed with SIGKILL in the middle of a burst of deliveries to a slow receiver, then
//! restarted, delivers every transition (a repeat only with the same `webhook-id` and body)
//! and invents none; two replicas against one database deliver each transition once, and
//! the one left running takes over the triggers of the one that stops.
//!
//! The expected webhooks are computed from the SQL the tests run (`Model`): the trigger
//! `score > 50` with the default `clear` (not `fire`).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::binary::{Binary, Scratch};
use common::receiver::{Received, Receiver, Reply};
use common::{DEADLINE, TestDb};
use serde_json::{Value, json};
use viewcast::server::Server;

const TABLE: &str = "CREATE TABLE scores (id integer PRIMARY KEY, score integer NOT NULL)";
const YAML: &str = "backend: postgres\nsources:\n  scores:\n    primary_key: id\n    columns:\n      id: Integer\n      score: Integer\n";
/// The rows the bursts move: ids 1..=KEYS, all at score 0 (outside) before any trigger.
const KEYS: i32 = 8;
/// `fire: {score: {_gt: THRESHOLD}}`.
const THRESHOLD: i32 = 50;
/// The commit-order slot of transitions whose order among themselves is not defined: those
/// of rows written while the server was stopped (or being killed), found at its restart by
/// comparing the rows with the stored keys.
const AT_RESTART: usize = usize::MAX;

/// One transaction: upserts (`Some(score)`) and deletes (`None`), in statement order, each
/// key at most once.
type Writes = Vec<(i32, Option<i32>)>;

/// A webhook a trigger must send.
#[derive(Debug, Clone)]
struct Expected {
    event_type: &'static str,
    key: i64,
    data: Value,
    /// The transaction that caused it, in commit order (or `AT_RESTART`).
    txn: usize,
}

/// The trigger `score > 50` evaluated on the writes the test makes.
struct Model {
    /// Keys inside → score as last seen inside (what a CLEAR for a deleted row carries).
    inside: BTreeMap<i32, i32>,
    events: Vec<Expected>,
}

impl Model {
    fn new() -> Model {
        Model {
            inside: BTreeMap::new(),
            events: Vec::new(),
        }
    }

    fn apply(&mut self, txn: usize, writes: &[(i32, Option<i32>)]) {
        for &(key, score) in writes {
            let mut event = |event_type, score: i32| {
                self.events.push(Expected {
                    event_type,
                    key: i64::from(key),
                    data: json!({"id": key, "score": score}),
                    txn,
                });
            };
            let was_inside = self.inside.get(&key).copied();
            match (was_inside, score) {
                (None, Some(score)) if score > THRESHOLD => {
                    event("FIRE", score);
                    self.inside.insert(key, score);
                }
                (Some(_), Some(score)) if score > THRESHOLD => {
                    self.inside.insert(key, score);
                }
                (Some(_), Some(score)) => {
                    event("CLEAR", score);
                    self.inside.remove(&key);
                }
                (Some(last), None) => {
                    event("CLEAR", last);
                    self.inside.remove(&key);
                }
                (None, _) => {}
            }
        }
    }

    /// Writes made while no server evaluates the trigger: its next server compares the rows
    /// with the stored keys, which is the net write per key applied at once.
    fn apply_unseen(&mut self, transactions: &[Writes]) {
        let mut net: BTreeMap<i32, Option<i32>> = BTreeMap::new();
        for &(key, score) in transactions.iter().flatten() {
            net.insert(key, score);
        }
        self.apply(AT_RESTART, &net.into_iter().collect::<Vec<_>>());
    }

    fn outside(&self) -> Vec<i32> {
        (1..=KEYS)
            .filter(|k| !self.inside.contains_key(k))
            .collect()
    }
}

/// Transactions `first..first + count` of a deterministic burst over keys 1..=KEYS: every
/// fifth writes two keys, the others one; scores cross the threshold often.
fn burst(first: usize, count: usize) -> Vec<Writes> {
    (first..first + count)
        .map(|i| {
            let i = i32::try_from(i).expect("a small burst");
            let score = |key: i32| (i * 37 + key * 53) % 100;
            let key = (i * 3) % KEYS + 1;
            let mut writes = vec![(key, Some(score(key)))];
            if i % 5 == 4 {
                let other = (key + 3) % KEYS + 1;
                writes.push((other, Some(score(other))));
            }
            writes
        })
        .collect()
}

/// Runs one transaction.
async fn write(sql: &tokio_postgres::Client, writes: &[(i32, Option<i32>)]) {
    let mut text = String::from("BEGIN;");
    for (key, score) in writes {
        match score {
            Some(score) => write!(
                text,
                "INSERT INTO scores VALUES ({key}, {score}) ON CONFLICT (id) DO UPDATE SET score = excluded.score;"
            ),
            None => write!(text, "DELETE FROM scores WHERE id = {key};"),
        }
        .expect("write to a String");
    }
    text.push_str("COMMIT;");
    sql.batch_execute(&text).await.expect("transaction");
}

/// The table with keys 1..=KEYS at score 0.
async fn create_table(sql: &tokio_postgres::Client) {
    sql.batch_execute(TABLE).await.expect("create table");
    sql.batch_execute(&format!(
        "INSERT INTO scores SELECT g, 0 FROM generate_series(1, {KEYS}) g"
    ))
    .await
    .expect("insert rows");
}

async fn create_trigger(addr: SocketAddr, input: Value) {
    let result = common::graphql(
        addr,
        "mutation($input: scoresTriggerInput!) { create_scores_trigger(input: $input) { name } }",
        json!({ "input": input }),
    )
    .await;
    assert!(result["errors"].is_null(), "{result}");
}

/// Receives webhooks into `got` until `done` holds, up to `within`; whether it does.
async fn receive_until(
    receiver: &mut Receiver,
    got: &mut Vec<Received>,
    within: Duration,
    done: impl Fn(&[Received]) -> bool,
) -> bool {
    let deadline = Instant::now() + within;
    while !done(got) {
        let left = deadline.saturating_duration_since(Instant::now());
        match receiver.next_within(left).await {
            Some(request) => got.push(request),
            None => return false,
        }
    }
    true
}

/// Distinct `webhook-id`s received on `path`.
fn distinct(got: &[Received], path: &str) -> usize {
    got.iter()
        .filter(|r| r.path == path)
        .map(|r| r.header("webhook-id"))
        .collect::<BTreeSet<_>>()
        .len()
}

fn summary<'a>(got: impl Iterator<Item = &'a Received>) -> String {
    got.fold(String::new(), |mut out, r| {
        let _ = writeln!(
            out,
            "  {} {} {} {}",
            r.path,
            r.header("webhook-id"),
            r.body["event_type"],
            r.body["data"]
        );
        out
    })
}

/// Checks one trigger's webhooks (in arrival order) against its expected transitions: each
/// distinct `webhook-id` is one of them, every one arrived, per key in order, across keys in
/// commit order (transitions of one transaction in any order); a repeated id repeats the
/// same body. Returns how many requests were repeats.
fn check(trigger: &str, got: &[&Received], expected: &[Expected]) -> usize {
    let mut first: HashMap<&str, &Received> = HashMap::new();
    let mut distinct: Vec<&Received> = Vec::new();
    let mut repeats = 0;
    for request in got {
        let id = request.header("webhook-id");
        if let Some(earlier) = first.get(id) {
            assert_eq!(
                earlier.raw, request.raw,
                "{trigger}: a repeat of {id} with another body"
            );
            repeats += 1;
            continue;
        }
        assert!(id.starts_with("evt_"), "{trigger}: webhook-id {id:?}");
        assert_eq!(request.body["event_id"], id, "{trigger}: {}", request.body);
        assert_eq!(
            request.body["trigger_name"], trigger,
            "{trigger}: {}",
            request.body
        );
        first.insert(id, request);
        distinct.push(request);
    }
    // Per key: exactly the expected transitions, in order.
    let by_key = |events: Vec<(i64, String, Value)>| {
        let mut map: BTreeMap<i64, Vec<(String, Value)>> = BTreeMap::new();
        for (key, kind, data) in events {
            map.entry(key).or_default().push((kind, data));
        }
        map
    };
    let received = by_key(
        distinct
            .iter()
            .map(|r| {
                (
                    r.body["data"]["id"].as_i64().unwrap_or(-1),
                    r.body["event_type"].as_str().unwrap_or("?").to_owned(),
                    r.body["data"].clone(),
                )
            })
            .collect(),
    );
    let wanted = by_key(
        expected
            .iter()
            .map(|e| (e.key, e.event_type.to_owned(), e.data.clone()))
            .collect(),
    );
    let mut differences = String::new();
    for key in received
        .keys()
        .chain(wanted.keys())
        .collect::<BTreeSet<_>>()
    {
        let (have, want) = (received.get(key), wanted.get(key));
        if have != want {
            let _ = writeln!(
                differences,
                "  key {key}: received {have:?}\n  {}expected {want:?}",
                " ".repeat(key.to_string().len() + 4)
            );
        }
    }
    assert!(
        differences.is_empty(),
        "{trigger}: {} distinct webhooks, {} transitions expected; per key:\n{differences}",
        distinct.len(),
        expected.len()
    );
    // Across keys: commit order.
    let mut nth: HashMap<i64, usize> = HashMap::new();
    let mut expected_of: HashMap<i64, Vec<&Expected>> = HashMap::new();
    for e in expected {
        expected_of.entry(e.key).or_default().push(e);
    }
    let mut last = 0;
    for request in &distinct {
        let key = request.body["data"]["id"].as_i64().unwrap_or(-1);
        let n = nth.entry(key).or_default();
        let txn = expected_of[&key][*n].txn;
        *n += 1;
        assert!(
            txn >= last,
            "{trigger}: {} (transaction {txn}) arrived after a transition of transaction {last}:\n{}",
            request.body,
            summary(distinct.iter().copied())
        );
        last = txn;
    }
    repeats
}

/// Deliveries in the store by status.
async fn statuses(sql: &tokio_postgres::Client) -> BTreeMap<String, i64> {
    sql.query(
        "SELECT status, count(*) FROM viewcast_deliveries GROUP BY status",
        &[],
    )
    .await
    .expect("query deliveries")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Waits until the store holds exactly `count` deliveries, all delivered.
async fn all_delivered(sql: &tokio_postgres::Client, count: usize) {
    let count = i64::try_from(count).expect("a small count");
    let by_status = common::eventually(
        || statuses(sql),
        |s| s.get("delivered") == Some(&count) && s.len() == 1,
    )
    .await;
    assert_eq!(by_status, BTreeMap::from([("delivered".to_owned(), count)]));
}

/// Crash: a burst of transitions, a receiver that takes 150 ms per webhook, `kill -9` once
/// the receiver has seen some of them (every transition of the burst is stored by then, so
/// the crash lands in the middle of their delivery; a request is in flight), a few more
/// writes racing the kill and more while the server is down, a restart: every transition
/// arrives, repeats carry the same id and body, nothing else arrives, and the store holds
/// each as delivered.
///
/// Rows written around and during the outage move at most once each: whether the killed
/// server stored such a transition or its successor finds it by comparing the rows with the
/// stored keys, the webhook is the same (a row that goes in and out while the server is down
/// sends nothing, as documented).
#[tokio::test]
async fn kill_9_mid_burst_loses_no_transition() {
    let db = TestDb::private().await;
    let sql = db.client().await;
    create_table(&sql).await;
    let scratch = Scratch::new();
    let config = scratch.0.join("schema.yaml");
    std::fs::write(&config, YAML).expect("write schema.yaml");
    let mut receiver = Receiver::start().await;
    receiver.default_reply(Reply::After(Duration::from_millis(150), 200));
    let server = Binary::start(&db, &scratch, &config, "first").await;
    create_trigger(
        server.addr,
        json!({
            "name": "burst",
            "webhook": receiver.url("/burst"),
            "fire": {"score": {"_gt": THRESHOLD}},
            // A short timeout: the request in flight at the kill holds its lease (the
            // timeout plus a margin) before it is sent again.
            "retry": {"attempts": 20, "initial_interval_ms": 100, "max_interval_ms": 1000, "timeout_ms": 2000}
        }),
    )
    .await;

    let mut model = Model::new();
    for (txn, writes) in burst(0, 60).iter().enumerate() {
        model.apply(txn, writes);
        write(&sql, writes).await;
    }
    let stored = model.events.len();
    assert!(stored >= 20, "the burst makes {stored} transitions");
    let mut got = Vec::new();
    assert!(
        receive_until(&mut receiver, &mut got, DEADLINE, |got| got.len() >= 5).await,
        "the first webhooks: {} within {DEADLINE:?}",
        got.len()
    );
    common::eventually(
        || statuses(&sql),
        |s| s.values().sum::<i64>() == i64::try_from(stored).unwrap(),
    )
    .await;

    // Each moving one row at most once: they race the kill.
    let (inside, outside) = (
        model.inside.keys().copied().collect::<Vec<_>>(),
        model.outside(),
    );
    assert!(
        inside.len() >= 3 && outside.len() >= 3,
        "after the burst: inside {inside:?}, outside {outside:?}"
    );
    for writes in [
        vec![(inside[0], Some(5))],
        vec![(outside[0], Some(95))],
        vec![(101, Some(77))],
    ] {
        model.apply(AT_RESTART, &writes);
        write(&sql, &writes).await;
    }
    drop(server);
    let killed = Instant::now();
    let left = statuses(&sql).await;
    assert!(
        left.get("pending").is_some_and(|n| *n > 0),
        "the kill came after every delivery: {left:?}"
    );

    // While the server is down.
    let still_inside = model.inside[&inside[2]];
    let unseen = [
        vec![(inside[1], None)],
        vec![(outside[1], Some(90))],
        vec![(outside[1], Some(3))],
        vec![(inside[2], Some(still_inside + 1))],
        vec![(102, Some(20))],
        vec![(outside[2], Some(66))],
    ];
    for writes in &unseen {
        write(&sql, writes).await;
    }
    model.apply_unseen(&unseen);

    receiver.default_reply(Reply::Status(200));
    let restarted = Instant::now();
    let server = Binary::start(&db, &scratch, &config, "restarted").await;
    let expected = model.events.clone();
    // The request in flight at the kill keeps its lease (the timeout and a margin) and holds
    // back the trigger's later deliveries until then.
    let all = receive_until(&mut receiver, &mut got, Duration::from_secs(120), |got| {
        distinct(got, "/burst") >= expected.len()
    })
    .await;
    if !all {
        check("burst", &got.iter().collect::<Vec<_>>(), &expected);
        panic!("not every transition arrived:\n{}", summary(got.iter()));
    }
    all_delivered(&sql, expected.len()).await;
    receiver.assert_quiet(Duration::from_secs(1)).await;

    let requests: Vec<&Received> = got.iter().collect();
    let repeats = check("burst", &requests, &expected);
    sent_on_stored_attempts(&sql, &got).await;
    let first_after = got.iter().find(|r| r.at > restarted).map(|r| r.at - killed);
    eprintln!(
        "{} transitions ({stored} from the burst), {} webhooks before the kill, {repeats} repeated; \
         first webhook after the restart {first_after:?} after the kill",
        expected.len(),
        got.iter().filter(|r| r.at < killed).count(),
    );
    drop(server);
    db.stop().await;
}

/// The store's deliveries are the webhooks received, and a webhook was only sent on an
/// attempt the store counted.
async fn sent_on_stored_attempts(sql: &tokio_postgres::Client, got: &[Received]) {
    let attempts: BTreeMap<String, i32> = sql
        .query("SELECT event_id, attempts FROM viewcast_deliveries", &[])
        .await
        .expect("query deliveries")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut sent: BTreeMap<String, i32> = BTreeMap::new();
    for request in got {
        *sent
            .entry(request.header("webhook-id").to_owned())
            .or_default() += 1;
    }
    assert_eq!(
        attempts.keys().collect::<Vec<_>>(),
        sent.keys().collect::<Vec<_>>(),
        "the store's event ids are the ones received"
    );
    for (id, count) in &sent {
        assert!(
            *count <= attempts[id],
            "{id} received {count} times, {} attempts stored",
            attempts[id]
        );
    }
}

/// A replica of the server against `db`, named in its store connections' application name
/// (to tell which replica holds a trigger's lock) and in its replication slots.
async fn replica(db: &TestDb, name: &str) -> Server {
    let config = viewcast::config::load_str(Path::new("test.yaml"), YAML).expect("valid config");
    common::start_server_with_options(db, config, |options| {
        options.store_url = Some(format!("{}?application_name=replica_{name}", db.url));
        options.instance = format!("replica_{name}");
        options.triggers.allow_private_targets = true;
    })
    .await
}

/// A database with the table, a receiver, and replica `a`.
async fn replica_setup() -> (TestDb, tokio_postgres::Client, Receiver, Server) {
    let db = TestDb::private().await;
    let sql = db.client().await;
    create_table(&sql).await;
    let receiver = Receiver::start().await;
    let a = replica(&db, "a").await;
    (db, sql, receiver, a)
}

/// The trigger `score > THRESHOLD` named `name`, sending to `/<name>` on `receiver`.
fn threshold_trigger(receiver: &Receiver, name: &str) -> Value {
    json!({"name": name, "webhook": receiver.url(&format!("/{name}")), "fire": {"score": {"_gt": THRESHOLD}}})
}

/// The replicas holding `trigger`'s advisory lock: the one evaluating it (the lock is
/// `pg_try_advisory_lock(hashtextextended('viewcast trigger <source>/<name>', 0))`).
async fn owners(sql: &tokio_postgres::Client, trigger: &str) -> Vec<String> {
    sql.query(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
           AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended($1, 0)",
        &[&format!("viewcast trigger scores/{trigger}")],
    )
    .await
    .expect("query pg_locks")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Waits until `replica` alone holds `trigger`; `why` explains a failure.
async fn wait_owner(sql: &tokio_postgres::Client, trigger: &str, replica: &str, why: &str) {
    let want = vec![format!("replica_{replica}")];
    let deadline = Instant::now() + DEADLINE;
    loop {
        let have = owners(sql, trigger).await;
        if have == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{trigger} is held by {have:?}, not by replica {replica} within {DEADLINE:?}: {why}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The names of the triggers a replica serves.
async fn trigger_names(server: &Server) -> Vec<String> {
    let result = common::graphql(server.addr(), "{ scores_triggers { name } }", json!({})).await;
    result["data"]["scores_triggers"]
        .as_array()
        .unwrap_or_else(|| panic!("{result}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Runs `writes`, then checks each trigger's webhooks: every transition once (the receiver
/// answers at once and nothing is in flight across a stop, so exactly once is guaranteed).
async fn burst_delivered_once(
    sql: &tokio_postgres::Client,
    receiver: &mut Receiver,
    model: &mut Model,
    writes: &[Writes],
    first_txn: usize,
    triggers: &[&str],
) {
    let before = model.events.len();
    for (i, w) in writes.iter().enumerate() {
        model.apply(first_txn + i, w);
        write(sql, w).await;
    }
    let expected = &model.events[before..];
    assert!(
        expected.len() >= 15,
        "the burst makes {} transitions",
        expected.len()
    );
    let mut got = Vec::new();
    let all = receive_until(receiver, &mut got, DEADLINE, |got| {
        triggers
            .iter()
            .all(|t| distinct(got, &format!("/{t}")) >= expected.len())
    })
    .await;
    for trigger in triggers.iter().filter(|_| !all) {
        let path = format!("/{trigger}");
        check(
            trigger,
            &got.iter().filter(|r| r.path == path).collect::<Vec<_>>(),
            expected,
        );
    }
    assert!(
        all,
        "not every transition arrived:\n{}",
        summary(got.iter())
    );
    all_delivered(sql, model.events.len() * triggers.len()).await;
    receiver.assert_quiet(Duration::from_millis(500)).await;
    for trigger in triggers {
        let path = format!("/{trigger}");
        let requests: Vec<&Received> = got.iter().filter(|r| r.path == path).collect();
        let repeats = check(trigger, &requests, expected);
        assert_eq!(
            repeats,
            0,
            "{trigger}: a transition was delivered more than once:\n{}",
            summary(requests.iter().copied())
        );
    }
}

/// Two replicas on one database: each trigger is evaluated and delivered by one of them
/// (the holder of its lock), so each transition arrives once, whether the trigger was
/// created before the other replica started (`t_before`, which it loads from the store) or
/// while it ran (`t_after`). When the owner stops, the other replica takes both triggers over
/// (within the ownership retry) and delivers the later transitions, again once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_deliver_each_transition_once() {
    let (db, sql, mut receiver, a) = replica_setup().await;
    let trigger = |name: &str| threshold_trigger(&receiver, name);
    create_trigger(a.addr(), trigger("t_before")).await;
    wait_owner(&sql, "t_before", "a", "the replica that created it").await;
    let b = replica(&db, "b").await;
    create_trigger(a.addr(), trigger("t_after")).await;
    wait_owner(&sql, "t_after", "a", "the replica that created it").await;
    assert!(
        trigger_names(&b).await.contains(&"t_before".to_owned()),
        "replica b loads the triggers stored before it started"
    );

    let mut model = Model::new();
    let triggers = ["t_before", "t_after"];
    let first = burst(0, 40);
    burst_delivered_once(&sql, &mut receiver, &mut model, &first, 0, &triggers).await;

    // Nothing is in flight: every delivery is stored as delivered.
    a.shutdown().await;
    wait_owner(&sql, "t_before", "b", "b knew it and must take it over").await;
    let names = trigger_names(&b).await;
    wait_owner(
        &sql,
        "t_after",
        "b",
        &format!("b must take over a trigger created through a while b ran (b serves {names:?})"),
    )
    .await;
    let second = burst(40, 40);
    burst_delivered_once(&sql, &mut receiver, &mut model, &second, 40, &triggers).await;

    b.shutdown().await;
    db.stop().await;
}

/// A trigger deleted through one replica while another evaluates it: the evaluating replica
/// follows the delete (drops it, releases its lock) and goes on delivering the source's other
/// triggers, every transition once; the deleted one sends nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_on_another_replica_stops_only_that_trigger() {
    let (db, sql, mut receiver, a) = replica_setup().await;
    let trigger = |name: &str| threshold_trigger(&receiver, name);
    create_trigger(a.addr(), trigger("t_x")).await;
    create_trigger(a.addr(), trigger("t_y")).await;
    wait_owner(&sql, "t_x", "a", "the replica that created it").await;
    wait_owner(&sql, "t_y", "a", "the replica that created it").await;
    let b = replica(&db, "b").await;
    let deleted = common::graphql(
        b.addr(),
        "mutation { delete_scores_trigger(name: \"t_x\") { name } }",
        json!({}),
    )
    .await;
    assert!(deleted["errors"].is_null(), "{deleted}");
    let addr = a.addr();
    common::eventually(
        || async move {
            let result = common::graphql(addr, "{ scores_triggers { name } }", json!({})).await;
            result["data"]["scores_triggers"].clone()
        },
        |names| *names == json!([{"name": "t_y"}]),
    )
    .await;
    let sql = &sql;
    common::eventually(|| owners(sql, "t_x"), Vec::is_empty).await;

    let mut model = Model::new();
    let writes = burst(0, 40);
    burst_delivered_once(sql, &mut receiver, &mut model, &writes, 0, &["t_y"]).await;
    a.shutdown().await;
    b.shutdown().await;
    db.stop().await;
}
