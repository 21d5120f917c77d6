//! The stand-in against the behaviour Materialize's and RisingWave's documentation and source
//! describe (see ../shared/reference/protocols.md §1–2), through a real PostgreSQL client, so
//! that viewcast's feeds are tested against the databases' rules and not a copy of their own.

use std::time::Duration;

use futures::StreamExt;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};
use viewcast_standin::{Chunking, Options, StandIn};

async fn start(options: Options) -> (StandIn, Client) {
    let standin = StandIn::start(options).await.unwrap();
    let client = connect(&standin).await;
    (standin, client)
}

async fn connect(standin: &StandIn) -> Client {
    let (client, connection) = tokio_postgres::connect(&standin.url(), NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

fn per_row() -> Options {
    Options {
        chunking: Chunking::PerRow,
        ..Options::default()
    }
}

/// Text rows of a simple query.
async fn rows(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    client
        .simple_query(sql)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// Reads COPY rows (split on newlines, fields on tabs; no escapes in these tests) until
/// `done` says enough.
struct CopyReader {
    stream: std::pin::Pin<Box<tokio_postgres::CopyOutStream>>,
    buffer: Vec<u8>,
    chunks: usize,
}

impl CopyReader {
    async fn open(client: &Client, sql: &str) -> CopyReader {
        let stream = client.copy_out(sql).await.unwrap();
        CopyReader {
            stream: Box::pin(stream),
            buffer: Vec::new(),
            chunks: 0,
        }
    }

    async fn row(&mut self) -> Vec<String> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                let text = String::from_utf8(line[..line.len() - 1].to_vec()).unwrap();
                return text.split('\t').map(str::to_owned).collect();
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.stream.next())
                .await
                .expect("a row within 10 s")
                .expect("the stream goes on")
                .unwrap();
            self.chunks += 1;
            self.buffer.extend_from_slice(&chunk);
        }
    }

    /// Rows until (and including) the next progress row.
    async fn until_progress(&mut self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        loop {
            let row = self.row().await;
            let progress = row[1] == "t";
            out.push(row);
            if progress {
                return out;
            }
        }
    }
}

#[tokio::test]
async fn progress_then_snapshot_at_as_of_then_updates_as_minus_and_plus() {
    let (standin, client) = start(per_row()).await;
    client
        .batch_execute("CREATE TABLE t (id int, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b')")
        .await
        .unwrap();
    let mut copy = CopyReader::open(&client, "COPY (SUBSCRIBE t WITH (PROGRESS)) TO STDOUT").await;
    let client = connect(&standin).await;
    // The first row is a progress row at the AS OF time.
    let first = copy.row().await;
    assert_eq!(first[1], "t", "{first:?}");
    assert_eq!(&first[2..], ["\\N", "\\N", "\\N"]);
    let as_of: u64 = first[0].parse().unwrap();
    // Then the snapshot, stamped with the AS OF time, diff +1, closed by a later progress row.
    let mut snapshot = copy.until_progress().await;
    let closing = snapshot.pop().unwrap();
    assert!(closing[0].parse::<u64>().unwrap() > as_of);
    snapshot.sort();
    assert_eq!(
        snapshot,
        vec![
            vec![
                as_of.to_string(),
                "f".into(),
                "1".into(),
                "1".into(),
                "a".into()
            ],
            vec![
                as_of.to_string(),
                "f".into(),
                "1".into(),
                "2".into(),
                "b".into()
            ],
        ]
    );
    // An update is a -1 of the old row and a +1 of the new one at one timestamp.
    client
        .batch_execute("UPDATE t SET v = 'c' WHERE id = 1")
        .await
        .unwrap();
    let mut update = copy.until_progress().await;
    update.pop();
    assert_eq!(update.len(), 2, "{update:?}");
    assert_eq!(update[0][0], update[1][0], "one timestamp");
    let mut diffs: Vec<(String, String)> = update
        .iter()
        .map(|r| (r[2].clone(), r[4].clone()))
        .collect();
    diffs.sort();
    assert_eq!(
        diffs,
        vec![("-1".into(), "a".into()), ("1".into(), "c".into())]
    );
    drop(standin);
}

#[tokio::test]
async fn an_empty_relation_gives_two_progress_rows() {
    let (_standin, client) = start(per_row()).await;
    client
        .batch_execute("CREATE TABLE e (id int)")
        .await
        .unwrap();
    let mut copy = CopyReader::open(&client, "COPY (SUBSCRIBE e WITH (PROGRESS)) TO STDOUT").await;
    let a = copy.row().await;
    let b = copy.row().await;
    assert_eq!((a[1].as_str(), b[1].as_str()), ("t", "t"));
    assert!(b[0].parse::<u64>().unwrap() > a[0].parse::<u64>().unwrap());
}

#[tokio::test]
async fn a_transaction_commits_at_one_timestamp_and_consolidates() {
    let (standin, client) = start(per_row()).await;
    client
        .batch_execute("CREATE TABLE t (id int, v int)")
        .await
        .unwrap();
    let mut copy = CopyReader::open(&client, "COPY (SUBSCRIBE t WITH (PROGRESS)) TO STDOUT").await;
    let client = connect(&standin).await;
    copy.until_progress().await; // AS OF progress
    copy.until_progress().await; // empty snapshot, closed
    client
        .batch_execute(
            "BEGIN; INSERT INTO t VALUES (1, 1), (2, 2); INSERT INTO t VALUES (3, 3); DELETE FROM t WHERE id = 2; COMMIT",
        )
        .await
        .unwrap();
    let mut batch = copy.until_progress().await;
    batch.pop();
    // (2, 2) was inserted and deleted at the same timestamp: consolidated away.
    let mut ids: Vec<&str> = batch.iter().map(|r| r[3].as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["1", "3"]);
    assert!(batch.iter().all(|r| r[0] == batch[0][0]));
}

#[tokio::test]
async fn as_of_is_inclusive_with_a_snapshot_and_exclusive_without() {
    let (standin, client) = start(per_row()).await;
    client
        .batch_execute("CREATE TABLE t (id int); ALTER TABLE t SET (RETAIN HISTORY FOR '1h')")
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    // Find the insert's timestamp from a subscribe.
    let reader = connect(&standin).await;
    let mut copy = CopyReader::open(&reader, "COPY (SUBSCRIBE t WITH (PROGRESS)) TO STDOUT").await;
    copy.row().await;
    let row = copy.row().await;
    assert_eq!(row[3], "1");
    drop(copy);
    // Wait until the frontier has passed the first insert before the second.
    tokio::time::sleep(Duration::from_millis(30)).await;
    client
        .batch_execute("INSERT INTO t VALUES (2)")
        .await
        .unwrap();
    // The timestamp of row 2, from a subscribe as of now.
    let reader = connect(&standin).await;
    let mut now = CopyReader::open(&reader, "COPY (SUBSCRIBE t WITH (PROGRESS)) TO STDOUT").await;
    let as_of_now: u64 = now.row().await[0].parse().unwrap();
    drop(now);
    let history = rows(&client, "SELECT * FROM t ORDER BY id").await;
    assert_eq!(history.len(), 2);
    // AS OF an earlier time with a snapshot: the state then (row 1 only), then row 2 as an
    // update after it.
    let reader = connect(&standin).await;
    let mut early = CopyReader::open(
        &reader,
        &format!(
            "COPY (SUBSCRIBE t WITH (PROGRESS) AS OF {}) TO STDOUT",
            as_of_now - 1
        ),
    )
    .await;
    let progress = early.row().await;
    assert_eq!(progress[0], (as_of_now - 1).to_string());
    let mut seen = Vec::new();
    for _ in 0..4 {
        let row = early.row().await;
        if row[1] == "f" {
            seen.push((row[0].parse::<u64>().unwrap(), row[3].clone()));
        }
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen[0].1, "1");
    assert_eq!(seen[1].1, "2");
    let t2 = seen[1].0;
    // Without a snapshot, AS OF t2 - 1 yields the update at t2; AS OF t2 does not.
    let reader = connect(&standin).await;
    let mut before = CopyReader::open(
        &reader,
        &format!(
            "COPY (SUBSCRIBE t WITH (PROGRESS, SNAPSHOT = false) AS OF {}) TO STDOUT",
            t2 - 1
        ),
    )
    .await;
    let rows_before: Vec<Vec<String>> = {
        let mut all = before.until_progress().await;
        if all.len() == 1 {
            all.extend(before.until_progress().await);
        }
        all.into_iter().filter(|r| r[1] == "f").collect()
    };
    assert_eq!(rows_before.len(), 1, "{rows_before:?}");
    assert_eq!(rows_before[0][3], "2");
    let reader = connect(&standin).await;
    let mut at = CopyReader::open(
        &reader,
        &format!("COPY (SUBSCRIBE t WITH (PROGRESS, SNAPSHOT = false) AS OF {t2}) TO STDOUT"),
    )
    .await;
    let mut data = Vec::new();
    for _ in 0..3 {
        data.extend(
            at.until_progress()
                .await
                .into_iter()
                .filter(|r| r[1] == "f"),
        );
    }
    assert!(
        data.is_empty(),
        "AS OF t without a snapshot is exclusive: {data:?}"
    );
}

#[tokio::test]
async fn an_as_of_before_the_compaction_frontier_is_an_error() {
    let (standin, client) = start(per_row()).await;
    client
        .batch_execute("CREATE TABLE t (id int)")
        .await
        .unwrap();
    let old = standin.frontier() - 1;
    tokio::time::sleep(Duration::from_millis(20)).await;
    standin.compact_all();
    let err = client
        .copy_out(
            format!("COPY (SUBSCRIBE t WITH (PROGRESS, SNAPSHOT = false) AS OF {old}) TO STDOUT")
                .as_str(),
        )
        .await
        .err()
        .expect("an error");
    let message = err.as_db_error().unwrap().message().to_owned();
    assert!(message.contains("is not valid for all inputs"), "{message}");
    // AS OF AT LEAST moves forward instead.
    let mut copy = CopyReader::open(
        &client,
        &format!("COPY (SUBSCRIBE t WITH (PROGRESS) AS OF AT LEAST {old}) TO STDOUT"),
    )
    .await;
    let first: u64 = copy.row().await[0].parse().unwrap();
    assert!(first > old);
}

#[tokio::test]
async fn upsert_envelope_puts_keys_first_and_reports_deletes_and_violations() {
    let (standin, client) = start(per_row()).await;
    client
        .batch_execute("CREATE TABLE t (v text, id int, w int); INSERT INTO t VALUES ('a', 1, 10)")
        .await
        .unwrap();
    let reader = connect(&standin).await;
    let mut copy = CopyReader::open(
        &reader,
        "COPY (SUBSCRIBE (SELECT v, id, w FROM t) ENVELOPE UPSERT (KEY (id)) WITH (PROGRESS)) TO STDOUT",
    )
    .await;
    copy.row().await;
    let snapshot = copy.until_progress().await;
    assert_eq!(
        &snapshot[0][1..],
        ["f", "upsert", "1", "a", "10"],
        "mz_state, key, then the rest"
    );
    client
        .batch_execute("UPDATE t SET w = 11 WHERE id = 1")
        .await
        .unwrap();
    let update = copy.until_progress().await;
    assert_eq!(update.len(), 2, "one row per key per timestamp: {update:?}");
    assert_eq!(&update[0][2..], ["upsert", "1", "a", "11"]);
    client
        .batch_execute("DELETE FROM t WHERE id = 1")
        .await
        .unwrap();
    let delete = copy.until_progress().await;
    assert_eq!(&delete[0][2..], ["delete", "1", "\\N", "\\N"]);
    client
        .batch_execute("INSERT INTO t VALUES ('x', 2, 1), ('y', 2, 2)")
        .await
        .unwrap();
    let violation = copy.until_progress().await;
    assert_eq!(&violation[0][2..], ["key_violation", "2", "\\N", "\\N"]);
}

#[tokio::test]
async fn random_chunking_splits_rows_across_reads() {
    let (_standin, client) = start(Options {
        chunking: Chunking::Random { max_bytes: 7 },
        ..Options::default()
    })
    .await;
    client
        .batch_execute("CREATE TABLE t (id int, v text); INSERT INTO t VALUES (1, 'a long enough value'), (2, 'another one')")
        .await
        .unwrap();
    let mut copy = CopyReader::open(&client, "COPY (SUBSCRIBE t WITH (PROGRESS)) TO STDOUT").await;
    copy.row().await;
    let snapshot = copy.until_progress().await;
    assert_eq!(snapshot.len(), 3);
    assert!(copy.chunks > 8, "rows arrived in {} chunks", copy.chunks);
}

#[tokio::test]
async fn declare_and_fetch_a_subscribe_cursor() {
    let (standin, client) = start(per_row()).await;
    client
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (7)")
        .await
        .unwrap();
    client
        .batch_execute("BEGIN; DECLARE c CURSOR FOR SUBSCRIBE t WITH (PROGRESS)")
        .await
        .unwrap();
    let fetched = rows(&client, "FETCH ALL c WITH (timeout = '1s')").await;
    assert!(
        fetched.iter().any(|r| r[3].as_deref() == Some("7")),
        "{fetched:?}"
    );
    // DECLARE outside a transaction is refused, as Materialize refuses it.
    let other = connect(&standin).await;
    let err = other
        .batch_execute("DECLARE d CURSOR FOR SUBSCRIBE t")
        .await
        .unwrap_err();
    assert!(err.as_db_error().unwrap().message().contains("transaction"));
}

#[tokio::test]
async fn parameters_in_binary_and_typed_rows_round_trip() {
    let (_standin, client) = start(per_row()).await;
    client
        .batch_execute("CREATE TABLE p (id bigint, score int, ok boolean, name text, price float8)")
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO p VALUES ($1, $2, $3, $4, $5)",
            &[
                &9_007_199_254_740_993i64,
                &-5i32,
                &true,
                &"tab\there",
                &1.25f64,
            ],
        )
        .await
        .unwrap();
    client
        .execute(
            "UPDATE p SET score = score + $1 WHERE id = $2",
            &[&10i32, &9_007_199_254_740_993i64],
        )
        .await
        .unwrap();
    let got = rows(&client, "SELECT * FROM p").await;
    assert_eq!(
        got,
        vec![vec![
            Some("9007199254740993".into()),
            Some("5".into()),
            Some("t".into()),
            Some("tab\there".into()),
            Some("1.25".into())
        ]]
    );
    let typed = client
        .query("SELECT id, score FROM p WHERE ok = $1", &[&true])
        .await
        .unwrap();
    assert_eq!(typed[0].get::<_, i64>(0), 9_007_199_254_740_993);
    assert_eq!(typed[0].get::<_, i32>(1), 5);
}

#[tokio::test]
async fn unknown_relation_and_cluster_errors() {
    let (standin, client) = start(per_row()).await;
    let err = client
        .copy_out("COPY (SUBSCRIBE nope WITH (PROGRESS)) TO STDOUT")
        .await
        .err()
        .unwrap();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("unknown catalog item 'nope'")
    );
    let client = connect(&standin).await;
    client
        .batch_execute("CREATE TABLE t (id int); SET cluster = 'nowhere'")
        .await
        .unwrap();
    let err = client
        .copy_out("COPY (SUBSCRIBE t) TO STDOUT")
        .await
        .err()
        .unwrap();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("unknown cluster 'nowhere'")
    );
}

#[tokio::test]
async fn kill_streams_drops_only_streaming_connections() {
    let (standin, client) = start(per_row()).await;
    client
        .batch_execute("CREATE TABLE t (id int)")
        .await
        .unwrap();
    let streaming = connect(&standin).await;
    let mut copy =
        CopyReader::open(&streaming, "COPY (SUBSCRIBE t WITH (PROGRESS)) TO STDOUT").await;
    copy.row().await;
    assert_eq!(standin.kill_streams(), 1);
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match copy.stream.next().await {
                Some(Ok(_)) => {}
                other => return other.map(|r| r.is_err()),
            }
        }
    })
    .await
    .expect("the stream ends");
    assert!(ended.is_none() || ended == Some(true));
    // The other connection still works.
    client
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .unwrap();
}

#[tokio::test]
async fn risingwave_cursor_ops_timestamps_and_since() {
    let (_standin, client) = start(per_row()).await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'); \
             CREATE SUBSCRIPTION s FROM t WITH (retention = '1h')",
        )
        .await
        .unwrap();
    client
        .batch_execute("DECLARE c SUBSCRIPTION CURSOR FOR s FULL")
        .await
        .unwrap();
    // FULL: the table's rows as Insert with a NULL rw_timestamp (the insert is complete:
    // DECLARE waits for every committed write).
    let snapshot = rows(&client, "FETCH 10 FROM c").await;
    assert_eq!(
        snapshot,
        vec![vec![
            Some("1".into()),
            Some("a".into()),
            Some("Insert".into()),
            None
        ]]
    );
    client
        .batch_execute("UPDATE t SET v = 'b' WHERE id = 1")
        .await
        .unwrap();
    client
        .batch_execute("DELETE FROM t WHERE id = 1")
        .await
        .unwrap();
    let mut changes = Vec::new();
    while changes.len() < 3 {
        changes.extend(rows(&client, "FETCH 1 FROM c WITH (timeout = '2s')").await);
    }
    let ops: Vec<&str> = changes.iter().map(|r| r[2].as_deref().unwrap()).collect();
    assert_eq!(ops, ["UpdateDelete", "UpdateInsert", "Delete"]);
    assert_eq!(
        changes[0][3], changes[1][3],
        "an update's two rows share the epoch"
    );
    let update_ts: u64 = changes[0][3].as_deref().unwrap().parse().unwrap();
    // SINCE is inclusive: from the update's epoch on, the update comes again.
    client
        .batch_execute(&format!(
            "DECLARE d SUBSCRIPTION CURSOR FOR s SINCE {update_ts}"
        ))
        .await
        .unwrap();
    let again = rows(&client, "FETCH 10 FROM d").await;
    assert_eq!(again.len(), 3, "{again:?}");
    // Older than the retention: refused.
    let err = client
        .batch_execute("DECLARE e SUBSCRIPTION CURSOR FOR s SINCE 1")
        .await
        .unwrap_err();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("rw_timestamp is too small")
    );
    // Without a timeout FETCH returns at once, possibly with nothing.
    assert!(rows(&client, "FETCH 10 FROM d").await.is_empty());
}
