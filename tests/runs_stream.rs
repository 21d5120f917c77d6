//! Run events from append to consumer against a real PostgreSQL: the outbox publisher (one
//! per store, whatever the number of replicas), the bus and the consumers' replay-then-live
//! streams: every consumer gets exactly the persisted sequence, whatever the interleaving
//! with appends, however often it reconnects, on whichever replica it is.

mod common;

use std::time::Duration;

use common::TestDb;
use futures::StreamExt;
use rand::Rng;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use viewcast::run::stream::{Follow, Item};
use viewcast::run::{NewEvent, RunSettings, Runs};
use viewcast::store::{Connector, Store};

/// One replica's runs: its own pool, publisher and bus.
struct Replica {
    runs: Runs,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Replica {
    async fn start(db: &TestDb, heartbeat: Duration) -> Replica {
        let settings = RunSettings {
            heartbeat,
            ..RunSettings::default()
        };
        Replica::start_with(db, settings).await
    }

    async fn start_with(db: &TestDb, settings: RunSettings) -> Replica {
        let store = Store::connect(&db.url).await.expect("store");
        let runs = Runs::with(Connector::ready(store), settings);
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        runs.spawn(&shutdown, &tasks);
        let mut listening = runs.bus().listening();
        tokio::time::timeout(common::DEADLINE, listening.wait_for(|l| *l))
            .await
            .expect("the bus listens")
            .expect("bus alive");
        Replica {
            runs,
            shutdown,
            tasks,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

fn event(event_type: &str, n: i64) -> NewEvent {
    NewEvent {
        event_type: event_type.into(),
        message: Some(format!("event {n}")),
        ..NewEvent::default()
    }
}

fn follow(from_seq: i64) -> Follow {
    Follow {
        from_seq,
        coalesce: false,
        heartbeat: Duration::from_secs(15),
    }
}

/// Appends `total` events (the last one COMPLETED) in batches of random size.
async fn append_all(runs: &Runs, id: &str, total: i64) {
    let mut seq = 1;
    while seq <= total {
        let size = rand::rng().random_range(1..=5).min(total - seq + 1);
        let batch: Vec<NewEvent> = (seq..seq + size)
            .map(|n| event(if n == total { "COMPLETED" } else { "PROGRESS" }, n))
            .collect();
        runs.append(id, &batch, Some(seq)).await.expect("append");
        seq += size;
        if rand::rng().random_bool(0.3) {
            tokio::task::yield_now().await;
        }
    }
}

/// Reads a stream to its end: the seqs of its events (heartbeats left out).
async fn seqs(runs: &Runs, id: &str, from_seq: i64) -> Vec<i64> {
    let stream = runs.follow(id, follow(from_seq)).await.expect("follow");
    let items: Vec<Item> = tokio::time::timeout(
        common::DEADLINE,
        stream.map(|i| i.expect("no error")).collect(),
    )
    .await
    .expect("the stream ends after the terminal event");
    items
        .into_iter()
        .filter_map(|i| match i {
            Item::Event(e) => Some(e.seq),
            Item::Heartbeat { .. } => None,
        })
        .collect()
}

#[tokio::test]
async fn consumers_joining_at_any_point_get_exactly_the_persisted_sequence() {
    let db = TestDb::new().await;
    let replica = Replica::start(&db, Duration::from_secs(15)).await;
    let runs = replica.runs.clone();
    for _ in 0..5 {
        let run = runs.start("job", &json!({}), None).await.expect("start");
        let total = 300;
        let writer = {
            let runs = runs.clone();
            let id = run.id.clone();
            tokio::spawn(async move { append_all(&runs, &id, total).await })
        };
        // Consumers join while the writer appends, from the start or from where it is.
        let mut readers = Vec::new();
        for k in 0..8 {
            let runs = runs.clone();
            let id = run.id.clone();
            readers.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(k * 15)).await;
                let from = if k % 2 == 0 {
                    1
                } else {
                    runs.get(&id).await.expect("get").next_seq
                };
                (from, seqs(&runs, &id, from).await)
            }));
        }
        writer.await.expect("writer");
        for reader in readers {
            let (from, got) = reader.await.expect("reader");
            assert_eq!(
                got,
                (from..=total).collect::<Vec<_>>(),
                "consumer from {from}"
            );
        }
    }
    replica.stop().await;
    db.stop().await;
}

#[tokio::test]
async fn the_outbox_is_published_in_per_run_order_under_concurrent_appends() {
    let db = TestDb::new().await;
    let replica = Replica::start(&db, Duration::from_secs(15)).await;
    let runs = replica.runs.clone();
    let mut ids = Vec::new();
    let mut writers = Vec::new();
    for _ in 0..20 {
        let id = runs.start("job", &json!({}), None).await.expect("start").id;
        ids.push(id.clone());
        let runs = runs.clone();
        writers.push(tokio::spawn(
            async move { append_all(&runs, &id, 100).await },
        ));
    }
    for w in writers {
        w.await.expect("writer");
    }
    for id in &ids {
        assert_eq!(seqs(&runs, id, 1).await, (1..=100).collect::<Vec<_>>());
    }
    let sql = db.client().await;
    // Every event published, none left in the outbox; within a run, an event is never
    // published before the one ahead of it.
    assert_eq!(common::runs::outbox_state(&sql).await, (0, 0, 0));
    replica.stop().await;
    db.stop().await;
}

#[tokio::test]
async fn a_consumer_that_reconnects_at_random_points_ends_with_the_whole_sequence() {
    let db = TestDb::new().await;
    let replica = Replica::start(&db, Duration::from_secs(15)).await;
    let runs = replica.runs.clone();
    let run = runs.start("job", &json!({}), None).await.expect("start");
    let total = 2_000;
    let writer = {
        let runs = runs.clone();
        let id = run.id.clone();
        tokio::spawn(async move {
            for chunk in 0..total / 20 {
                let first = chunk * 20 + 1;
                let batch: Vec<NewEvent> = (first..first + 20)
                    .map(|n| event(if n == total { "FAILED" } else { "LOG" }, n))
                    .collect();
                runs.append(&id, &batch, None).await.expect("append");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut seen: Vec<i64> = Vec::new();
    let mut reconnects = 0;
    loop {
        let from = seen.last().map_or(1, |s| s + 1);
        let mut stream = runs.follow(&run.id, follow(from)).await.expect("follow");
        let take = rand::rng().random_range(1..=60);
        for _ in 0..take {
            match tokio::time::timeout(common::DEADLINE, stream.next())
                .await
                .expect("an item in time")
            {
                Some(Ok(Item::Event(e))) => seen.push(e.seq),
                Some(Ok(Item::Heartbeat { .. })) => {}
                Some(Err(err)) => panic!("stream error: {err}"),
                None => {
                    assert_eq!(seen.last(), Some(&total), "ended before the terminal event");
                    break;
                }
            }
        }
        if seen.last() == Some(&total) {
            break;
        }
        reconnects += 1;
        drop(stream);
    }
    writer.await.expect("writer");
    assert!(reconnects >= 30, "{reconnects} reconnects");
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());
    replica.stop().await;
    db.stop().await;
}

#[tokio::test]
async fn a_consumer_on_one_replica_sees_events_appended_on_another_live() {
    let db = TestDb::new().await;
    let a = Replica::start(&db, Duration::from_secs(15)).await;
    let b = Replica::start(&db, Duration::from_secs(15)).await;
    let run = a.runs.start("job", &json!({}), None).await.expect("start");
    let mut stream = b
        .runs
        .follow(&run.id, follow(1))
        .await
        .expect("follow on B");
    for n in 1..=20 {
        a.runs
            .append(&run.id, &[event("LOG", n)], Some(n))
            .await
            .expect("append on A");
        // Each event reaches B before the next is written: it arrived live.
        let item = tokio::time::timeout(common::DEADLINE, stream.next())
            .await
            .expect("live on B")
            .expect("open")
            .expect("no error");
        assert!(matches!(item, Item::Event(e) if e.seq == n));
    }
    // Only one replica publishes: the publisher's advisory lock is held once.
    let held: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND ((classid::bigint << 32) | objid::bigint) = $1",
            &[&0x7663_7075_626c_7368_i64],
        )
        .await
        .expect("locks")
        .get(0);
    assert_eq!(held, 1);
    // The publishing replica stops: the other takes over and events keep flowing.
    a.stop().await;
    let other = Runs::new(Store::connect(&db.url).await.expect("store"));
    other
        .append(&run.id, &[event("COMPLETED", 21)], Some(21))
        .await
        .expect("append");
    let rest: Vec<i64> = tokio::time::timeout(
        common::DEADLINE,
        stream
            .filter_map(|i| async move {
                match i.expect("no error") {
                    Item::Event(e) => Some(e.seq),
                    Item::Heartbeat { .. } => None,
                }
            })
            .collect::<Vec<_>>(),
    )
    .await
    .expect("published by B after A stopped");
    assert_eq!(rest, vec![21]);
    b.stop().await;
    db.stop().await;
}

#[tokio::test]
async fn coalescing_sends_at_most_one_progress_a_second_and_always_the_latest() {
    let db = TestDb::new().await;
    let replica = Replica::start(&db, Duration::from_secs(15)).await;
    let runs = replica.runs.clone();
    let run = runs.start("job", &json!({}), None).await.expect("start");
    runs.append(&run.id, &[event("STARTED", 1)], None)
        .await
        .expect("append");
    let mut coalesced = runs
        .follow(
            &run.id,
            Follow {
                coalesce: true,
                ..follow(1)
            },
        )
        .await
        .expect("follow");
    // Read as events arrive, noting when.
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(item) = tokio::time::timeout(common::DEADLINE, coalesced.next())
            .await
            .expect("in time")
        {
            if let Item::Event(e) = item.expect("no error") {
                got.push((e.seq, e.event_type.clone(), tokio::time::Instant::now()));
            }
        }
        got
    });
    let all = runs.follow(&run.id, follow(1)).await.expect("follow");
    // STARTED, then 1.5 s of progress every 10 ms, a LOG, more progress, COMPLETED.
    let mut seq = 2;
    let until = tokio::time::Instant::now() + Duration::from_millis(1_500);
    while tokio::time::Instant::now() < until {
        runs.append(&run.id, &[event("PROGRESS", seq)], None)
            .await
            .expect("append");
        seq += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log = seq;
    runs.append(&run.id, &[event("LOG", log)], None)
        .await
        .expect("append");
    for n in log + 1..log + 30 {
        runs.append(&run.id, &[event("PROGRESS", n)], None)
            .await
            .expect("append");
    }
    let last_progress = log + 29;
    runs.append(&run.id, &[event("COMPLETED", log + 30)], None)
        .await
        .expect("append");

    let received = reader.await.expect("reader");
    let got: Vec<i64> = received.iter().map(|(seq, _, _)| *seq).collect();
    let everything: Vec<i64> = all
        .filter_map(|i| async move {
            match i.expect("no error") {
                Item::Event(e) => Some(e.seq),
                Item::Heartbeat { .. } => None,
            }
        })
        .collect()
        .await;
    assert_eq!(
        everything,
        (1..=log + 30).collect::<Vec<_>>(),
        "without coalescing: all"
    );
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
    assert_eq!(got[0], 1, "STARTED");
    assert!(got.contains(&log), "the LOG event");
    assert!(
        got.contains(&(log - 1)),
        "the latest progress before the LOG: {got:?}"
    );
    assert!(got.contains(&last_progress), "the latest progress: {got:?}");
    assert_eq!(*got.last().expect("events"), log + 30, "COMPLETED");
    assert!(got.len() < 12, "coalesced: {got:?}");
    // During the first 1.5 s (one progress event every 10 ms or so), progress went out at
    // most once a second: the first at once, then one per elapsed second, so at most 3
    // (times are not compared: under load the reader's clock lags the sender's).
    let appended_early = log - 1 - 2;
    assert!(
        appended_early >= 10,
        "{appended_early} progress events appended"
    );
    let early: Vec<_> = received
        .iter()
        .filter(|(seq, t, _)| t == "PROGRESS" && *seq < log - 1)
        .collect();
    assert!((1..=3).contains(&early.len()), "{early:?}");
    replica.stop().await;
    db.stop().await;
}

#[tokio::test]
async fn a_quiet_run_gets_heartbeats_and_a_stream_past_the_end_ends() {
    let db = TestDb::new().await;
    let replica = Replica::start(&db, Duration::from_millis(300)).await;
    let runs = replica.runs.clone();
    let run = runs.start("job", &json!({}), None).await.expect("start");
    runs.append(&run.id, &[event("STARTED", 1), event("LOG", 2)], None)
        .await
        .expect("append");
    let mut stream = runs
        .follow(
            &run.id,
            Follow {
                heartbeat: Duration::from_millis(300),
                ..follow(1)
            },
        )
        .await
        .expect("follow");
    let mut items = Vec::new();
    while items.len() < 4 {
        items.push(
            tokio::time::timeout(common::DEADLINE, stream.next())
                .await
                .expect("in time")
                .expect("open")
                .expect("no error"),
        );
    }
    assert!(matches!(&items[0], Item::Event(e) if e.seq == 1));
    assert!(matches!(&items[1], Item::Event(e) if e.seq == 2));
    assert_eq!(items[2], Item::Heartbeat { seq: 2 });
    assert_eq!(items[3], Item::Heartbeat { seq: 2 });
    runs.cancel(&run.id, Some("enough")).await.expect("cancel");
    let last = tokio::time::timeout(common::DEADLINE, async {
        loop {
            match stream.next().await {
                Some(Ok(Item::Event(e))) => break e,
                Some(Ok(Item::Heartbeat { .. })) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("the cancellation arrives");
    assert_eq!((last.seq, last.event_type.as_str()), (3, "CANCELLED"));
    assert!(
        stream.next().await.is_none(),
        "ends after the terminal event"
    );
    // From past the end of an ended run: nothing, and the stream ends.
    assert_eq!(seqs(&runs, &run.id, 4).await, Vec::<i64>::new());
    assert_eq!(seqs(&runs, &run.id, 3).await, vec![3]);
    // An unknown run fails at once.
    let unknown = runs
        .follow("00000000-0000-0000-0000-000000000000", follow(1))
        .await;
    assert!(matches!(unknown, Err(viewcast::run::RunError::NotFound(_))));
    replica.stop().await;
    db.stop().await;
}

/// Many consumers starting at once on runs with nothing published yet (each reads an empty
/// page, then the run): the store's pool must not run dry (it once deadlocked here, each
/// consumer holding one connection while waiting for another).
#[tokio::test]
async fn many_consumers_starting_on_empty_runs_at_once_leave_the_store_usable() {
    let db = TestDb::new().await;
    let replica = Replica::start(&db, Duration::from_secs(15)).await;
    let runs = replica.runs.clone();
    let mut ids = Vec::new();
    for _ in 0..64 {
        ids.push(runs.start("job", &json!({}), None).await.expect("start").id);
    }
    let streams = futures::future::join_all(ids.iter().map(|id| runs.follow(id, follow(1)))).await;
    let readers: Vec<_> = streams
        .into_iter()
        .map(|stream| {
            let stream = stream.expect("follow");
            tokio::spawn(async move {
                stream
                    .filter_map(|i| async move {
                        match i.expect("no error") {
                            Item::Event(e) => Some(e.seq),
                            Item::Heartbeat { .. } => None,
                        }
                    })
                    .collect::<Vec<i64>>()
                    .await
            })
        })
        .collect();
    for id in &ids {
        tokio::time::timeout(
            common::DEADLINE,
            runs.append(id, &[event("STARTED", 1), event("COMPLETED", 2)], Some(1)),
        )
        .await
        .expect("the store answers")
        .expect("append");
    }
    for reader in readers {
        let seqs = tokio::time::timeout(common::DEADLINE, reader)
            .await
            .expect("in time")
            .expect("reader");
        assert_eq!(seqs, vec![1, 2]);
    }
    replica.stop().await;
    db.stop().await;
}

#[tokio::test]
async fn runs_that_ended_past_the_retention_are_deleted_with_their_events() {
    let db = TestDb::new().await;
    let replica = Replica::start_with(
        &db,
        RunSettings {
            retention: Some(Duration::from_secs(1)),
            ..RunSettings::default()
        },
    )
    .await;
    let runs = replica.runs.clone();
    let ended = runs.start("job", &json!({}), None).await.expect("start").id;
    runs.append(&ended, &[event("STARTED", 1), event("COMPLETED", 2)], None)
        .await
        .expect("append");
    let running = runs.start("job", &json!({}), None).await.expect("start").id;
    runs.append(&running, &[event("STARTED", 1)], None)
        .await
        .expect("append");
    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    while runs.get(&ended).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ended run was not deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM viewcast_run_events WHERE run_id = $1::text::uuid",
            &[&ended],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0, "its events went with it");
    let kept = runs.get(&running).await.expect("a running run is kept");
    assert_eq!(kept.next_seq, 2);
    replica.stop().await;
    db.stop().await;
}
