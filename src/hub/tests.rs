//! Hub and reader semantics without a database: boundaries, conflation, resume, re-snapshots.

use std::sync::Arc;

use super::*;
use crate::config::{Backend, ColumnDef, ColumnType, QualifiedName, SourceDef, StartMode};
use crate::feed::{Batch, Change, FeedEvent, Position};
use crate::filter::Filter;
use crate::value::{Key, Row, Value};

fn source() -> Arc<SourceDef> {
    let column = |name: &str, ty| ColumnDef {
        name: name.into(),
        sql_name: name.into(),
        ty,
    };
    Arc::new(SourceDef {
        name: "items".into(),
        relation: QualifiedName {
            schema: None,
            name: "items".into(),
        },
        backend: Backend::Postgres,
        start: StartMode::Eager,
        columns: vec![
            column("id", ColumnType::Integer),
            column("score", ColumnType::Integer),
        ],
        primary_key: vec![0],
        feed: crate::config::FeedOptions::default(),
    })
}

fn row(id: i64, score: i64) -> Row {
    Row::new(vec![Value::Int(id), Value::Int(score)])
}

fn upsert(id: i64, score: i64) -> Change {
    Change::Upsert {
        row: row(id, score),
        unchanged: None,
    }
}

fn delete(id: i64) -> Change {
    Change::Delete {
        key: Key(vec![Value::Int(id)].into()),
    }
}

fn hub(limits: HubLimits) -> Arc<Hub> {
    let hub = Hub::new(source(), limits, Arc::default());
    hub.apply(FeedEvent::Snapshot {
        position: Position(1),
        rows: vec![row(1, 10), row(2, 20)],
    });
    hub
}

fn batch(hub: &Hub, position: u64, changes: Vec<Change>) {
    hub.apply(FeedEvent::Batch(Batch {
        position: Position(position),
        changes,
    }));
}

fn filter(json: serde_json::Value) -> Filter {
    crate::filter::compile(&source(), &async_graphql::Value::from_json(json).unwrap()).unwrap()
}

/// (operation, id, score) of the next `n` events.
async fn take(reader: &mut Reader, n: usize) -> Vec<(EventKind, i64, i64)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let event = reader.next().await.unwrap();
        let (id, score) = match &event.row {
            Some(row) => match (row.get(0), row.get(1)) {
                (Value::Int(id), Value::Int(score)) => (*id, *score),
                _ => (0, 0),
            },
            None => (0, 0),
        };
        out.push((event.kind, id, score));
    }
    out
}

/// An unfiltered reader that has consumed the snapshot (two rows and `SNAPSHOT_END`).
async fn past_snapshot(hub: &Arc<Hub>) -> Reader {
    let mut reader = Reader::open(hub.clone(), Filter::always(), None, true)
        .await
        .unwrap();
    take(&mut reader, 3).await;
    reader
}

fn no_more(reader: &mut Reader) {
    let next = reader.next();
    futures::pin_mut!(next);
    let waker = futures::task::noop_waker();
    let poll =
        std::future::Future::poll(next.as_mut(), &mut std::task::Context::from_waker(&waker));
    assert!(poll.is_pending(), "no further events");
}

#[tokio::test]
async fn a_late_reader_gets_the_boundary_then_exactly_the_following_batches() {
    let hub = hub(HubLimits::default());
    batch(&hub, 2, vec![upsert(3, 30)]);
    let mut reader = Reader::open(hub.clone(), Filter::always(), None, true)
        .await
        .unwrap();
    let mut snapshot = take(&mut reader, 3).await;
    snapshot.sort_by_key(|e| e.1);
    assert_eq!(
        snapshot,
        [
            (EventKind::Insert, 1, 10),
            (EventKind::Insert, 2, 20),
            (EventKind::Insert, 3, 30)
        ]
    );
    assert_eq!(take(&mut reader, 1).await[0].0, EventKind::SnapshotEnd);
    batch(&hub, 3, vec![upsert(1, 11), delete(2)]);
    assert_eq!(
        take(&mut reader, 2).await,
        [(EventKind::Update, 1, 11), (EventKind::Delete, 2, 20)]
    );
    no_more(&mut reader);
}

#[tokio::test]
async fn rows_enter_and_leave_a_filter() {
    let hub = hub(HubLimits::default());
    let mut reader = Reader::open(
        hub.clone(),
        filter(serde_json::json!({"score": {"_gte": 15}})),
        None,
        false,
    )
    .await
    .unwrap();
    assert_eq!(take(&mut reader, 1).await, [(EventKind::Insert, 2, 20)]);
    batch(&hub, 2, vec![upsert(1, 15)]);
    batch(&hub, 3, vec![upsert(2, 5)]);
    batch(&hub, 4, vec![upsert(2, 6)]);
    assert_eq!(
        take(&mut reader, 2).await,
        [(EventKind::Insert, 1, 15), (EventKind::Delete, 2, 20)]
    );
    no_more(&mut reader);
}

#[tokio::test]
async fn a_reader_far_behind_conflates_per_key() {
    let hub = hub(HubLimits::default());
    let mut reader = past_snapshot(&hub).await;
    // More outputs than a reader takes from its view before it conflates from the log.
    for n in 0..100 {
        batch(
            &hub,
            10 + 2 * n,
            vec![upsert(1, 100 + n as i64), upsert(9, 1)],
        );
        batch(&hub, 11 + 2 * n, vec![delete(9)]);
    }
    // Key 9 came and went: nothing. Key 1: one UPDATE to its last value.
    assert_eq!(take(&mut reader, 1).await, [(EventKind::Update, 1, 199)]);
    no_more(&mut reader);
    assert!(hub.metrics().conflated.get() > 0);
}

#[tokio::test]
async fn resume_after_a_cursor_or_reset_when_it_is_too_old() {
    let hub = hub(HubLimits {
        max_batches: 4,
        max_changes: 100,
        ..HubLimits::default()
    });
    let mut reader = Reader::open(hub.clone(), Filter::always(), None, true)
        .await
        .unwrap();
    take(&mut reader, 2).await;
    let end = reader.next().await.unwrap();
    let cursor = end.cursor.expect("SNAPSHOT_END carries the cursor");
    batch(&hub, 2, vec![upsert(1, 11)]);
    let mut resumed = Reader::open(hub.clone(), Filter::always(), Some(cursor), false)
        .await
        .unwrap();
    assert_eq!(
        take(&mut resumed, 1).await,
        [(EventKind::Update, 1, 11)],
        "no snapshot, just what followed"
    );

    for n in 0..10 {
        batch(&hub, 3 + n, vec![upsert(2, 21 + n as i64)]);
    }
    let mut reset = Reader::open(hub.clone(), Filter::always(), Some(cursor), false)
        .await
        .unwrap();
    let events = take(&mut reset, 3).await;
    assert_eq!(
        events[0].0,
        EventKind::Reset,
        "the cursor is older than the log"
    );
    let foreign = Cursor {
        epoch: cursor.epoch + 1,
        seq: cursor.seq,
    };
    let mut other = Reader::open(hub.clone(), Filter::always(), Some(foreign), false)
        .await
        .unwrap();
    assert_eq!(
        take(&mut other, 1).await[0].0,
        EventKind::Reset,
        "a cursor from another process"
    );
}

#[tokio::test]
async fn a_reader_behind_the_whole_log_is_told_to_resubscribe() {
    let hub = hub(HubLimits {
        max_batches: 4,
        max_changes: 100,
        ..HubLimits::default()
    });
    let mut reader = past_snapshot(&hub).await;
    for n in 0..300 {
        batch(&hub, 10 + n, vec![upsert(1, n as i64)]);
    }
    assert!(matches!(
        reader.next().await,
        Err(CursorError::Behind { .. })
    ));
}

#[tokio::test]
async fn a_new_snapshot_publishes_only_the_difference() {
    let hub = hub(HubLimits::default());
    let mut reader = past_snapshot(&hub).await;
    hub.apply(FeedEvent::Down {
        reason: "lost".into(),
        permanent: false,
    });
    assert!(hub.status().is_synced(), "the cache is kept while down");
    hub.apply(FeedEvent::Snapshot {
        position: Position(9),
        rows: vec![row(1, 10), row(3, 30)],
    });
    let mut events = take(&mut reader, 2).await;
    events.sort_by_key(|e| e.1);
    assert_eq!(
        events,
        [(EventKind::Delete, 2, 20), (EventKind::Insert, 3, 30)]
    );
    no_more(&mut reader);
    assert_eq!(hub.status(), HubStatus::Live);
}

#[tokio::test]
async fn changes_inside_one_batch_are_merged_per_key() {
    let hub = hub(HubLimits::default());
    let mut reader = past_snapshot(&hub).await;
    batch(
        &hub,
        2,
        vec![
            upsert(5, 1),
            upsert(5, 2),
            delete(1),
            upsert(1, 10),
            delete(2),
            upsert(6, 1),
            delete(6),
        ],
    );
    let events = take(&mut reader, 2).await;
    assert_eq!(
        events,
        [(EventKind::Insert, 5, 2), (EventKind::Delete, 2, 20)],
        "key 1 ended as it began"
    );
    no_more(&mut reader);
}

#[tokio::test]
async fn views_beyond_the_cap_are_refused_and_their_places_come_back() {
    let hub = hub(HubLimits {
        max_views: 2,
        ..HubLimits::default()
    });
    hub.apply(FeedEvent::Snapshot {
        position: Position(1),
        rows: Vec::new(),
    });
    let a = Reader::open(hub.clone(), Filter::always(), None, false)
        .await
        .expect("first view");
    let b = Reader::open(
        hub.clone(),
        filter(serde_json::json!({"id": {"_eq": 1}})),
        None,
        false,
    )
    .await
    .expect("second view");
    // A reader of an existing view takes no new place.
    let a_again = Reader::open(hub.clone(), Filter::always(), None, false)
        .await
        .expect("same view");
    let third = filter(serde_json::json!({"id": {"_eq": 2}}));
    match Reader::open(hub.clone(), third.clone(), None, false).await {
        Err(CursorError::TooManyViews { max: 2, .. }) => {}
        other => panic!("expected TooManyViews, got {:?}", other.map(|_| ())),
    }
    drop(b);
    Reader::open(hub.clone(), third, None, false)
        .await
        .expect("a view's place came back with its last reader");
    drop((a, a_again));
}
