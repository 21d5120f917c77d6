//! The runs' store against a real PostgreSQL: a run's lifecycle through `Runs`, and its
//! invariants attacked directly in SQL (a repeated seq, a gap, a second terminal event, an
//! event after the end, a changed or deleted event), which the database must refuse whatever
//! the code does; concurrent appends numbered without gap or repeat.

mod common;

use common::TestDb;
use serde_json::json;
use viewcast::run::{NewEvent, RunError, Runs};
use viewcast::store::Store;

async fn runs(db: &TestDb) -> Runs {
    Runs::new(Store::connect(&db.url).await.expect("store"))
}

fn progress(stage: &str, done: i64, total: i64) -> NewEvent {
    NewEvent {
        event_type: "PROGRESS".into(),
        stage: Some(stage.into()),
        message: Some(format!("file {done} of {total}")),
        percentage: Some(100.0 * done as f64 / total as f64),
        counters: Some(json!({"files_done": done, "files_total": total})),
        data: None,
    }
}

fn event(event_type: &str) -> NewEvent {
    NewEvent {
        event_type: event_type.into(),
        ..NewEvent::default()
    }
}

#[tokio::test]
async fn a_run_starts_reports_progress_and_ends_once() {
    let db = TestDb::new().await;
    let runs = runs(&db).await;
    let run = runs
        .start("index", &json!({"path": "/repo"}), Some("job-1"))
        .await
        .unwrap();
    assert_eq!((run.status.as_str(), run.next_seq), ("pending", 1));
    // The same key: the same run.
    let again = runs
        .start("index", &json!({"path": "/other"}), Some("job-1"))
        .await
        .unwrap();
    assert_eq!(again, run);
    let other = runs
        .start("index", &json!({}), Some("job-2"))
        .await
        .unwrap();
    assert_ne!(other.id, run.id);

    let first = runs
        .append(
            &run.id,
            &[event("STARTED"), progress("Parsing", 1, 3)],
            Some(1),
        )
        .await
        .unwrap();
    assert_eq!(first.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(
        first[1].counters,
        Some(json!({"files_done": 1, "files_total": 3}))
    );
    let running = runs.get(&run.id).await.unwrap();
    assert_eq!((running.status.as_str(), running.next_seq), ("running", 3));
    assert!(running.started_at.is_some());

    // A writer that lost track is told where the run is.
    let stale = runs
        .append(&run.id, &[progress("Parsing", 2, 3)], Some(2))
        .await
        .unwrap_err();
    assert!(
        matches!(
            stale,
            RunError::SeqMismatch {
                expected: 2,
                next: 3,
                ..
            }
        ),
        "{stale}"
    );
    runs.append(&run.id, &[progress("Parsing", 2, 3)], Some(3))
        .await
        .unwrap();
    let mut done = event("COMPLETED");
    done.message = Some("indexed 3 files".into());
    runs.append(&run.id, &[progress("Indexing", 3, 3), done], None)
        .await
        .unwrap();
    let ended = runs.get(&run.id).await.unwrap();
    assert_eq!(ended.status, "completed");
    assert_eq!(ended.terminal_type.as_deref(), Some("COMPLETED"));
    assert_eq!(ended.terminal_message.as_deref(), Some("indexed 3 files"));
    assert!(ended.finished_at.is_some());

    // Nothing after the end, whoever asks.
    let late = runs
        .append(&run.id, &[event("LOG")], None)
        .await
        .unwrap_err();
    assert_eq!(
        late.to_string(),
        format!(
            "run {} has ended with COMPLETED: no event may follow it",
            run.id
        )
    );
    assert!(matches!(
        runs.cancel(&run.id, Some("too late")).await.unwrap_err(),
        RunError::Ended { .. }
    ));
    let events = runs.events(&run.id, 1, 100).await.unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| (e.seq, e.event_type.as_str()))
            .collect::<Vec<_>>(),
        [
            (1, "STARTED"),
            (2, "PROGRESS"),
            (3, "PROGRESS"),
            (4, "PROGRESS"),
            (5, "COMPLETED")
        ]
    );
    assert_eq!(runs.events(&run.id, 4, 1).await.unwrap()[0].seq, 4);

    db.stop().await;
}

#[tokio::test]
async fn cancelling_writes_one_cancelled_event() {
    let db = TestDb::new().await;
    let runs = runs(&db).await;
    let run = runs.start("crawl", &json!({}), None).await.unwrap();
    runs.append(&run.id, &[event("STARTED")], None)
        .await
        .unwrap();
    let cancelled = runs.cancel(&run.id, Some("user asked")).await.unwrap();
    assert_eq!(cancelled.status, "cancelled");
    // Cancelling again changes nothing.
    assert_eq!(runs.cancel(&run.id, None).await.unwrap(), cancelled);
    let events = runs.events(&run.id, 1, 10).await.unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| (e.event_type.as_str(), e.message.as_deref()))
            .collect::<Vec<_>>(),
        [("STARTED", None), ("CANCELLED", Some("user asked"))]
    );
    db.stop().await;
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let db = TestDb::new().await;
    let runs = runs(&db).await;
    let run = runs.start("index", &json!({}), None).await.unwrap();
    let cases: [(&[NewEvent], &str); 4] = [
        (&[event("progress")], "must be capitals, digits and _"),
        (
            &[NewEvent {
                percentage: Some(120.0),
                ..event("PROGRESS")
            }],
            "percentage 120 must be between 0 and 100",
        ),
        (
            &[NewEvent {
                counters: Some(json!([1, 2])),
                ..event("PROGRESS")
            }],
            "counters must be an object",
        ),
        (
            &[event("FAILED"), event("LOG")],
            "event 1 (FAILED) ends the run",
        ),
    ];
    for (events, message) in cases {
        let err = runs.append(&run.id, events, None).await.unwrap_err();
        assert!(err.to_string().contains(message), "{err}");
    }
    for id in ["nope", "00000000-0000-0000-0000-000000000000"] {
        assert!(matches!(
            runs.get(id).await.unwrap_err(),
            RunError::NotFound(_)
        ));
        assert!(matches!(
            runs.append(id, &[event("LOG")], None).await.unwrap_err(),
            RunError::NotFound(_)
        ));
    }
    assert_eq!(
        runs.get(&run.id).await.unwrap().next_seq,
        1,
        "nothing was written"
    );
    db.stop().await;
}

/// The database refuses what breaks a run's invariants, whatever the code does.
#[tokio::test]
async fn the_database_refuses_broken_invariants() {
    let db = TestDb::new().await;
    let runs = runs(&db).await;
    let run = runs.start("index", &json!({}), None).await.unwrap();
    runs.append(&run.id, &[event("STARTED"), event("LOG")], None)
        .await
        .unwrap();
    let sql = db.client().await;
    let insert = |seq: i64, event_type: &'static str| {
        let sql = &sql;
        let id = run.id.clone();
        async move {
            sql.execute(
                "INSERT INTO viewcast_run_events (run_id, seq, type) VALUES ($1::text::uuid, $2, $3)",
                &[&id, &seq, &event_type],
            )
            .await
            .map_err(|e| e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default())
        }
    };
    let refused = |result: Result<u64, String>, text: &str| {
        let message = result.expect_err("the database must refuse it");
        assert!(message.contains(text), "{message}");
    };
    refused(
        insert(2, "LOG").await,
        "event seq 2 is not the next one (3)",
    );
    refused(
        insert(5, "LOG").await,
        "event seq 5 is not the next one (3)",
    );
    refused(insert(0, "LOG").await, "not the next one");
    refused(
        sql.execute(
            "UPDATE viewcast_run_events SET type = 'COMPLETED' WHERE run_id = $1::text::uuid AND seq = 2",
            &[&run.id],
        )
        .await
        .map_err(|e| e.as_db_error().unwrap().message().to_owned()),
        "cannot change once written",
    );
    refused(
        sql.execute(
            "DELETE FROM viewcast_run_events WHERE run_id = $1::text::uuid AND seq = 2",
            &[&run.id],
        )
        .await
        .map_err(|e| e.as_db_error().unwrap().message().to_owned()),
        "cannot be deleted",
    );
    // Publishing is the one change allowed.
    sql.execute(
        "UPDATE viewcast_run_events SET published_at = now() WHERE run_id = $1::text::uuid",
        &[&run.id],
    )
    .await
    .unwrap();
    insert(3, "FAILED").await.unwrap();
    refused(insert(4, "LOG").await, "has ended with FAILED");
    refused(insert(4, "COMPLETED").await, "has ended with FAILED");
    // Even with the run's bookkeeping forged, a second terminal event is refused.
    sql.execute(
        "UPDATE viewcast_runs SET status = 'running', terminal_type = NULL WHERE id = $1::text::uuid",
        &[&run.id],
    )
    .await
    .unwrap();
    refused(
        insert(4, "COMPLETED").await,
        "viewcast_run_events_one_terminal",
    );
    // Deleting the run takes its events and outbox rows with it.
    sql.execute(
        "DELETE FROM viewcast_runs WHERE id = $1::text::uuid",
        &[&run.id],
    )
    .await
    .unwrap();
    let left: i64 = sql
        .query_one(
            "SELECT (SELECT count(*) FROM viewcast_run_events) + (SELECT count(*) FROM viewcast_run_outbox)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    db.stop().await;
}

/// Writers appending to one run at once: every event gets its own seq, 1 to N, and the
/// outbox holds each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_numbered_without_gap_or_repeat() {
    let db = TestDb::new().await;
    let runs = runs(&db).await;
    let run = runs.start("crawl", &json!({}), None).await.unwrap();
    let mut writers = Vec::new();
    for w in 0..8 {
        let (runs, id) = (runs.clone(), run.id.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..25 {
                let batch = [progress(&format!("writer {w}"), i, 25), event("LOG")];
                runs.append(&id, &batch, None).await.unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let events = runs.events(&run.id, 1, 1000).await.unwrap();
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=400).collect::<Vec<_>>());
    // A writer's two events of one append are adjacent.
    for pair in events.chunks(2) {
        assert_eq!(
            (pair[0].event_type.as_str(), pair[1].event_type.as_str()),
            ("PROGRESS", "LOG")
        );
    }
    let sql = db.client().await;
    let outbox: i64 = sql
        .query_one(
            "SELECT count(DISTINCT seq) FROM viewcast_run_outbox WHERE run_id = $1::text::uuid \
             AND seq BETWEEN 1 AND 400",
            &[&run.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(outbox, 400);
    db.stop().await;
}
