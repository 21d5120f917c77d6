//! Batched subscriptions (`S_batches`) against a real PostgreSQL: windows of at most
//! `max_rows` updates, open `max_ms` after their first, the same on the fast path and through
//! the executor, resumable from their cursor; bad windows refused.

mod common;

use common::{TestDb, Ws, start_server};
use serde_json::{Value, json};

const SCHEMA: &str = "backend: postgres\nsources:\n  items:\n    primary_key: id\n    columns: { id: Integer, name: String }\n";

/// The (operation, id) of each update in a window, and the window's cursor.
fn window(payload: &Value) -> (Vec<(String, i64)>, Option<String>) {
    let batch = &payload["data"]["items_batches"];
    let updates = batch["updates"]
        .as_array()
        .unwrap_or_else(|| panic!("a window: {payload}"))
        .iter()
        .map(|u| {
            (
                u["operation"].as_str().unwrap_or_default().to_owned(),
                u["data"]["id"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    (updates, batch["cursor"].as_str().map(str::to_owned))
}

fn ops(list: &[(&str, i64)]) -> Vec<(String, i64)> {
    list.iter()
        .map(|(op, id)| ((*op).to_owned(), *id))
        .collect()
}

#[tokio::test]
async fn windows_hold_the_snapshot_then_changes_on_both_paths_and_resume_at_their_cursor() {
    let db = TestDb::new().await;
    let sql = db.client().await;
    sql.batch_execute(
        "CREATE TABLE items (id integer PRIMARY KEY, name text);
         INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, 5) g",
    )
    .await
    .unwrap();
    let server = start_server(&db, SCHEMA).await;
    let query = "subscription { items_batches(max_rows: 2, max_ms: 300, snapshot_end: true) { updates { operation data { id name } } cursor } }";
    // A directive sends the same subscription through the executor instead.
    let executor = query.replace("data {", "data @include(if: true) {");
    let mut fast = Ws::connect(server.addr(), "graphql-transport-ws").await;
    let mut slow = Ws::connect(server.addr(), "graphql-transport-ws").await;
    fast.subscribe("b", query).await;
    slow.subscribe("b", &executor).await;
    let mut received = (Vec::new(), Vec::new());
    // The snapshot is there at once: its windows fill to max_rows without waiting.
    for _ in 0..3 {
        received.0.push(fast.next_payload("b").await);
        received.1.push(slow.next_payload("b").await);
    }
    // One transaction of three rows: two windows, the second with the transaction's cursor.
    sql.batch_execute("INSERT INTO items VALUES (6, 'n6'), (7, 'n7'), (8, 'n8')")
        .await
        .unwrap();
    for _ in 0..2 {
        received.0.push(fast.next_payload("b").await);
        received.1.push(slow.next_payload("b").await);
    }
    assert_eq!(
        received.0, received.1,
        "the fast path answers as the executor"
    );
    let windows: Vec<_> = received.0.iter().map(window).collect();
    let expected = [
        ops(&[("INSERT", 1), ("INSERT", 2)]),
        ops(&[("INSERT", 3), ("INSERT", 4)]),
        ops(&[("INSERT", 5), ("SNAPSHOT_END", 0)]),
        ops(&[("INSERT", 6), ("INSERT", 7)]),
        ops(&[("INSERT", 8)]),
    ];
    for (n, ((updates, _), expected)) in windows.iter().zip(&expected).enumerate() {
        assert_eq!(updates, expected, "window {n}: {}", received.0[n]);
    }
    let cursors: Vec<bool> = windows.iter().map(|(_, c)| c.is_some()).collect();
    assert_eq!(
        cursors,
        [false, false, true, false, true],
        "a window's cursor is the last its updates carry"
    );
    assert_eq!(
        received.0[0]["data"]["items_batches"]["updates"][0]["data"],
        json!({"id": 1, "name": "n1"})
    );

    // Resuming after the snapshot's cursor: no snapshot, exactly the changes after it.
    let snapshot_cursor = windows[2].1.clone().unwrap();
    let resume = format!(
        "subscription {{ items_batches(after: \"{snapshot_cursor}\", max_rows: 10, max_ms: 0) {{ updates {{ operation data {{ id }} }} cursor }} }}"
    );
    let mut resumed = Ws::connect(server.addr(), "graphql-transport-ws").await;
    resumed.subscribe("r", &resume).await;
    let (updates, cursor) = window(&resumed.next_payload("r").await);
    assert_eq!(updates, ops(&[("INSERT", 6), ("INSERT", 7), ("INSERT", 8)]));
    assert_eq!(cursor, windows[4].1);

    // Separate transactions within one window's time arrive together.
    let mut grouped = Ws::connect(server.addr(), "graphql-transport-ws").await;
    grouped
        .subscribe(
            "g",
            "subscription { items_batches(max_ms: 3000, snapshot_end: true) { updates { operation data { id } } } }",
        )
        .await;
    let (snapshot, _) = window(&grouped.next_payload("g").await);
    assert_eq!(snapshot.len(), 9, "the default max_rows holds the snapshot");
    for id in 9..12 {
        sql.batch_execute(&format!("INSERT INTO items VALUES ({id}, 'x')"))
            .await
            .unwrap();
    }
    let (updates, _) = window(&grouped.next_payload("g").await);
    assert_eq!(
        updates,
        ops(&[("INSERT", 9), ("INSERT", 10), ("INSERT", 11)])
    );
    server.shutdown().await;
    db.stop().await;
}

#[tokio::test]
async fn windows_out_of_range_are_refused() {
    let db = TestDb::new().await;
    db.client()
        .await
        .batch_execute("CREATE TABLE items (id integer PRIMARY KEY, name text)")
        .await
        .unwrap();
    let server = start_server(&db, SCHEMA).await;
    let mut ws = Ws::connect(server.addr(), "graphql-transport-ws").await;
    for (n, (args, message)) in [
        (
            "max_rows: 0",
            "max_rows must be between 1 and 100000, got 0",
        ),
        (
            "max_rows: 100001",
            "max_rows must be between 1 and 100000, got 100001",
        ),
        ("max_ms: -1", "max_ms must be between 0 and 60000, got -1"),
        (
            "max_ms: 60001",
            "max_ms must be between 0 and 60000, got 60001",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let id = n.to_string();
        ws.subscribe(
            &id,
            &format!("subscription {{ items_batches({args}) {{ cursor }} }}"),
        )
        .await;
        let reply = ws.recv_skipping_keepalives().await.unwrap();
        assert_eq!(reply["type"], "error", "{args}: {reply}");
        assert_eq!(reply["payload"][0]["message"], message, "{reply}");
        assert_eq!(
            reply["payload"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{reply}"
        );
    }
    server.shutdown().await;
    db.stop().await;
}
