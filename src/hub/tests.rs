//! Hub and reader semantics without a database: boundaries, conflation, resume, re-snapshots.

use std::sync::Arc;

use super::*;
use crate::change::{Batch, Change, FeedEvent, Position};
use crate::config::{Backend, ColumnDef, ColumnType, QualifiedName, SourceDef, StartMode};
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
async fn take<E: Encoder<Item = Event>>(
    reader: &mut Reader<E>,
    n: usize,
) -> Vec<(EventKind, i64, i64)> {
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

fn no_more<E: Encoder>(reader: &mut Reader<E>) {
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
    let rounds = super::consumer::CONFLATE_AFTER as u64 / 2 + 1;
    for n in 0..rounds {
        batch(
            &hub,
            10 + 2 * n,
            vec![upsert(1, 100 + n as i64), upsert(9, 1)],
        );
        batch(&hub, 11 + 2 * n, vec![delete(9)]);
    }
    // Conflated up to a block's end, then what the view has: fewer events than changes; in the
    // end key 9 came and went and key 1 has its last value.
    let events = ready(&mut reader);
    assert!(
        events.len() < rounds as usize * 3,
        "{} events",
        events.len()
    );
    let mut table = [(1, 10), (2, 20)].into();
    apply_events(&mut table, events);
    assert_eq!(table, [(1, 100 + rounds as i64 - 1), (2, 20)].into());
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
    // Beyond the log, and beyond what the view keeps.
    for n in 0..super::view::RECENT_OUTPUTS as u64 + 10 {
        batch(&hub, 10 + n, vec![upsert(1, n as i64)]);
    }
    assert!(matches!(
        reader.next().await,
        Err(CursorError::Behind { .. })
    ));
}

#[tokio::test]
async fn the_first_snapshot_keeps_a_keys_last_row_and_only_the_cache_holds_its_rows() {
    let hub = Hub::new(source(), HubLimits::default(), Arc::default());
    hub.apply(FeedEvent::Snapshot {
        position: Position(1),
        rows: vec![row(2, 20), row(1, 10), row(2, 21)],
    });
    assert_eq!(hub.rows().unwrap(), [row(1, 10), row(2, 21)]);
    {
        // No batch in the log holds the first snapshot's rows: for a large source they would
        // be held twice, by the cache and by the log, until later changes pushed them out.
        let state = hub.lock();
        assert!(state.log.is_empty());
        assert!(state.cache.values().all(|row| row.holders() == 1));
    }
    // What follows is logged and read as usual, from the snapshot's cursor on.
    let mut reader = past_snapshot(&hub).await;
    batch(&hub, 2, vec![upsert(1, 11)]);
    assert_eq!(take(&mut reader, 1).await, [(EventKind::Update, 1, 11)]);
    let read = hub.read_log(1, false).unwrap();
    assert_eq!(read.batches.iter().map(|b| b.seq).collect::<Vec<_>>(), [2]);
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

/// Every event a reader has ready now, without waiting.
fn ready<E: Encoder<Item = Event>>(reader: &mut Reader<E>) -> Vec<Event> {
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut out = Vec::new();
    loop {
        let next = reader.next();
        futures::pin_mut!(next);
        match std::future::Future::poll(next.as_mut(), &mut cx) {
            std::task::Poll::Ready(event) => out.push(event.unwrap()),
            std::task::Poll::Pending => return out,
        }
    }
}

#[tokio::test]
async fn views_found_by_their_equality_see_every_row_enter_and_leave() {
    use rand::{Rng as _, SeedableRng as _};
    let hub = hub(HubLimits::default());
    let filters = [
        serde_json::json!({"score": {"_eq": 0}}),
        serde_json::json!({"score": {"_eq": 1}}),
        serde_json::json!({"score": {"_eq": 2}}),
        serde_json::json!({"score": {"_eq": 3}}),
        serde_json::json!({"_and": [{"score": {"_eq": 1}}, {"id": {"_gt": 4}}]}),
        serde_json::json!({"id": {"_eq": 3}, "score": {"_lt": 2}}),
        serde_json::json!({"score": {"_gte": 2}}),
    ];
    let filters: Vec<Filter> = filters.into_iter().map(filter).collect();
    let mut readers = Vec::new();
    for f in &filters {
        readers.push(
            Reader::open(hub.clone(), f.clone(), None, false)
                .await
                .unwrap(),
        );
    }
    let mut seen: Vec<std::collections::HashMap<i64, i64>> =
        vec![std::collections::HashMap::default(); readers.len()];
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for position in 2..400 {
        let changes = (0..rng.random_range(1..4))
            .map(|_| {
                let id = rng.random_range(1..12);
                if rng.random_bool(0.2) {
                    delete(id)
                } else {
                    upsert(id, rng.random_range(0..4))
                }
            })
            .collect();
        batch(&hub, position, changes);
        // Read now and then, so that readers both keep up and fall behind.
        if rng.random_bool(0.3) {
            for (reader, rows) in readers.iter_mut().zip(&mut seen) {
                apply_events(rows, ready(reader));
            }
        }
    }
    let now = hub.rows().unwrap();
    for ((reader, rows), f) in readers.iter_mut().zip(&mut seen).zip(&filters) {
        apply_events(rows, ready(reader));
        let mut expected: Vec<(i64, i64)> = now
            .iter()
            .filter(|row| f.matches(row))
            .map(|row| match (row.get(0), row.get(1)) {
                (Value::Int(id), Value::Int(score)) => (*id, *score),
                _ => unreachable!(),
            })
            .collect();
        expected.sort_unstable();
        let mut got: Vec<(i64, i64)> = rows.iter().map(|(k, v)| (*k, *v)).collect();
        got.sort_unstable();
        assert_eq!(got, expected, "{}", f.canonical());
    }
}

fn apply_events(rows: &mut std::collections::HashMap<i64, i64>, events: Vec<Event>) {
    for event in events {
        let Some(row) = &event.row else { continue };
        let (Value::Int(id), Value::Int(score)) = (row.get(0), row.get(1)) else {
            continue;
        };
        match event.kind {
            EventKind::Insert => assert!(rows.insert(*id, *score).is_none(), "{id} inserted twice"),
            EventKind::Update => assert!(rows.insert(*id, *score).is_some(), "{id} updated unseen"),
            EventKind::Delete => assert!(rows.remove(id).is_some(), "{id} deleted unseen"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_change_visits_only_the_views_its_values_can_match() {
    let hub = hub(HubLimits::default());
    let mut readers = Vec::new();
    for k in 0..100 {
        let f = filter(serde_json::json!({"score": {"_eq": k}}));
        readers.push(Reader::open(hub.clone(), f, None, false).await.unwrap());
    }
    let scanned = filter(serde_json::json!({"score": {"_gte": 15}}));
    readers.push(
        Reader::open(hub.clone(), scanned, None, false)
            .await
            .unwrap(),
    );
    for reader in &mut readers {
        ready(reader);
    }
    let evaluations = || hub.metrics().view_evaluations.get();
    let before = evaluations();
    // Row 1 moves from score 10 to 11: the views of 10 and 11, and the scanned one.
    batch(&hub, 2, vec![upsert(1, 11)]);
    assert_eq!(evaluations() - before, 3);
    // A new row with a score no view asks for: only the scanned one.
    batch(&hub, 3, vec![upsert(7, 500)]);
    assert_eq!(evaluations() - before, 4);
    let kinds = |events: Vec<Event>| events.into_iter().map(|e| e.kind).collect::<Vec<_>>();
    assert_eq!(kinds(ready(&mut readers[10])), [EventKind::Delete]);
    assert_eq!(kinds(ready(&mut readers[11])), [EventKind::Insert]);
    assert_eq!(kinds(ready(&mut readers[100])), [EventKind::Insert]);
    assert!(ready(&mut readers[12]).is_empty());
}

#[tokio::test]
async fn views_evaluated_on_every_change_have_their_own_cap() {
    let hub = hub(HubLimits {
        max_views: 3,
        max_scanned_views: 1,
        ..HubLimits::default()
    });
    let open = |json: serde_json::Value| Reader::open(hub.clone(), filter(json), None, false);
    let scanned = open(serde_json::json!({"score": {"_gte": 1}}))
        .await
        .expect("first");
    match open(serde_json::json!({"score": {"_gte": 2}})).await {
        Err(CursorError::TooManyScannedViews { max: 1, .. }) => {}
        other => panic!("expected TooManyScannedViews, got {:?}", other.map(|_| ())),
    }
    // Indexed views are not scanned: they count against the total only.
    let _a = open(serde_json::json!({"id": {"_eq": 1}}))
        .await
        .expect("indexed");
    let _b = open(serde_json::json!({"id": {"_eq": 2}}))
        .await
        .expect("indexed");
    match open(serde_json::json!({"id": {"_eq": 3}})).await {
        Err(CursorError::TooManyViews { max: 3, .. }) => {}
        other => panic!("expected TooManyViews, got {:?}", other.map(|_| ())),
    }
    drop(scanned);
    open(serde_json::json!({"score": {"_gte": 2}}))
        .await
        .expect("the scanned view's place came back");
}

#[test]
fn the_rate_averages_whole_seconds_and_forgets_old_ones() {
    let mut rate = Rate::default();
    rate.add(10, 30);
    rate.add(11, 20);
    rate.add(12, 7);
    // At second 12 (still filling): 10 and 11 count, over the window of 5.
    assert!((rate.per_second(12) - 10.0).abs() < 1e-9);
    // A bucket reused 8 seconds later starts again.
    rate.add(18, 5);
    assert!(
        (rate.per_second(19) - 1.0).abs() < 1e-9,
        "{}",
        rate.per_second(19)
    );
    assert!(rate.per_second(40).abs() < 1e-9);
}

#[test]
fn an_equality_on_the_key_is_a_lookup_with_the_same_answer_as_a_scan() {
    let hub = hub(HubLimits::default());
    let rows = |f: serde_json::Value| {
        let mut rows: Vec<Row> = hub
            .rows_matching(&filter(f), usize::MAX, super::Pick::KeyOrder)
            .unwrap();
        rows.sort_by_key(|r| match r.get(0) {
            Value::Int(i) => *i,
            _ => 0,
        });
        rows
    };
    assert_eq!(rows(serde_json::json!({"id": {"_eq": 2}})), [row(2, 20)]);
    // The rest of the filter still applies to the row found.
    assert!(rows(serde_json::json!({"id": {"_eq": 2}, "score": {"_lt": 5}})).is_empty());
    assert!(rows(serde_json::json!({"id": {"_eq": 9}})).is_empty());
    assert_eq!(
        rows(serde_json::json!({"_and": [{"id": {"_eq": 1}}, {"score": {"_gte": 10}}]})),
        [row(1, 10)]
    );
    assert_eq!(
        hub.count_matching(&filter(serde_json::json!({"id": {"_eq": 1}}))),
        Some(1)
    );
    assert_eq!(
        hub.count_matching(&filter(serde_json::json!({"id": {"_eq": 3}}))),
        Some(0)
    );
}

#[tokio::test]
async fn by_default_single_row_commits_do_not_shorten_the_history() {
    let hub = hub(HubLimits::default());
    let mut reader = past_snapshot(&hub).await;
    // More single-change batches than the old 32,768-batch history: the reader, which read
    // none of them, conflates them rather than being told to resubscribe.
    for n in 0..40_000 {
        batch(&hub, 2 + n, vec![upsert(1 + (n as i64 % 2), n as i64)]);
    }
    // At most an update per key and block of the log, until the reader is close enough to
    // the head to read the view's output (a change each).
    let events = ready(&mut reader);
    let blocks = 40_000 / super::consumer::CONFLATE_SCAN + 2;
    assert!(
        events.len() <= 2 * blocks + super::consumer::CONFLATE_AFTER,
        "{} events",
        events.len()
    );
    let mut table = [(1, 10), (2, 20)].into();
    apply_events(&mut table, events);
    assert_eq!(table, [(1, 39_998), (2, 39_999)].into());
}

#[test]
fn key_order_stops_at_the_first_rows_and_a_pick_by_order_finds_the_smallest() {
    let hub = hub(HubLimits::default());
    // Keys inserted out of order: the cache keeps key order, negative and large ones too.
    let ids: Vec<i64> = (0..500).map(|i| (i * 7_919) % 1_000 - 300).collect();
    hub.apply(FeedEvent::Snapshot {
        position: Position(1),
        rows: ids
            .iter()
            .map(|&id| row(id, (id * 31).rem_euclid(97)))
            .collect(),
    });
    let all = filter(serde_json::json!({}));
    let id = |r: &Row| match r.get(0) {
        Value::Int(i) => *i,
        _ => unreachable!(),
    };
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    let first: Vec<i64> = hub
        .rows_matching(&all, 10, super::Pick::KeyOrder)
        .unwrap()
        .iter()
        .map(id)
        .collect();
    assert_eq!(first, sorted[..10]);

    // The 25 smallest by (score desc, id): the same as sorting everything, for a first
    // larger and smaller than the selection's working set.
    let int = |r: &Row, column: usize| match r.get(column) {
        Value::Int(i) => *i,
        _ => unreachable!(),
    };
    let by_score_desc =
        |a: &Row, b: &Row| int(b, 1).cmp(&int(a, 1)).then(int(a, 0).cmp(&int(b, 0)));
    let mut everything: Vec<Row> = ids
        .iter()
        .map(|&i| row(i, (i * 31).rem_euclid(97)))
        .collect();
    everything.sort_by(by_score_desc);
    for first in [1, 25, 64, 200, 499, 500, 800] {
        let mut picked: Vec<Row> = hub
            .rows_matching(&all, first, super::Pick::By(&by_score_desc))
            .unwrap();
        picked.sort_by(by_score_desc);
        assert_eq!(picked, everything[..first.min(500)], "first {first}");
    }
    assert!(
        hub.rows_matching(&all, 0, super::Pick::KeyOrder)
            .unwrap()
            .is_empty()
    );
}

/// Events, counting how many it encoded.
#[derive(Default)]
struct Counting(std::sync::atomic::AtomicUsize);

impl Encoder for Counting {
    type Item = Event;

    fn key(&self) -> &'static str {
        "counting"
    }

    fn encode(&self, event: &Event) -> Event {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        event.clone()
    }
}

fn hub_of(rows: i64) -> Arc<Hub> {
    let hub = Hub::new(source(), HubLimits::default(), Arc::default());
    hub.apply(FeedEvent::Snapshot {
        position: Position(1),
        rows: (1..=rows).map(|id| row(id, id % 3)).collect(),
    });
    hub
}

fn id_of(event: &Event) -> i64 {
    match event.row.as_ref().map(|r| r.get(0)) {
        Some(Value::Int(id)) => *id,
        _ => 0,
    }
}

#[tokio::test]
async fn a_snapshot_streams_a_chunk_at_a_time_and_its_last_row_carries_the_cursor() {
    let chunk = super::view::SNAPSHOT_CHUNK;
    let rows = i64::try_from(3 * chunk + 7).unwrap();
    let hub = hub_of(rows);
    let mut position = 1;
    for (json, snapshot_end) in [
        (serde_json::json!({}), false),
        (serde_json::json!({"score": {"_eq": 1}}), true),
        // Only the first chunk matches: the cursor still rides on its last row.
        (serde_json::json!({"id": {"_lte": 10}}), false),
    ] {
        let encoder = Arc::new(Counting::default());
        let mut reader = Reader::open_encoded(
            hub.clone(),
            filter(json.clone()),
            encoder.clone(),
            None,
            snapshot_end,
        )
        .await
        .unwrap();
        let first = reader.next().await.unwrap();
        assert_eq!(first.kind, EventKind::Insert);
        assert!(
            encoder.0.load(std::sync::atomic::Ordering::Relaxed) <= chunk,
            "{json}: the first row waits for one chunk's encoding, not the snapshot's"
        );
        let expected: Vec<i64> = (1..=rows)
            .filter(|id| filter(json.clone()).matches(&row(*id, id % 3)))
            .collect();
        let mut got = vec![first];
        while got.len() < expected.len() + usize::from(snapshot_end) {
            got.push(reader.next().await.unwrap());
        }
        no_more(&mut reader);
        let (rows_got, end) = got.split_at(expected.len());
        assert_eq!(
            rows_got.iter().map(id_of).collect::<Vec<_>>(),
            expected,
            "{json}"
        );
        let with_cursor: Vec<usize> = got
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.cursor.map(|_| i))
            .collect();
        assert_eq!(
            with_cursor,
            vec![got.len() - 1],
            "{json}: one cursor, at the end"
        );
        if snapshot_end {
            assert_eq!(end[0].kind, EventKind::SnapshotEnd);
        }
        // Then exactly what follows: a row that enters every filter, and leaves.
        batch(&hub, position + 1, vec![upsert(0, 1)]);
        batch(&hub, position + 2, vec![delete(0)]);
        position += 2;
        let next = take(&mut reader, 2).await;
        assert_eq!(
            next,
            [(EventKind::Insert, 0, 1), (EventKind::Delete, 0, 1)],
            "{json}"
        );
    }
}

#[tokio::test]
async fn readers_at_one_head_share_a_small_snapshot_and_a_large_one_is_let_go_once_streamed() {
    let hub = hub_of(100);
    let encoder = Arc::new(Counting::default());
    let count = || encoder.0.load(std::sync::atomic::Ordering::Relaxed);
    let mut readers = Vec::new();
    for _ in 0..2 {
        let mut reader =
            Reader::open_encoded(hub.clone(), Filter::always(), encoder.clone(), None, true)
                .await
                .unwrap();
        for _ in 0..101 {
            reader.next().await.unwrap();
        }
        readers.push(reader);
    }
    assert_eq!(
        count(),
        100 + 2,
        "the second reader encoded only its SNAPSHOT_END"
    );

    let rows = i64::try_from(super::view::KEEP_ENCODED_UP_TO + 1).unwrap();
    let hub = hub_of(rows);
    let held = |hub: &Hub| {
        let state = hub.lock();
        let first = state.cache.values().next().unwrap();
        first.holders()
    };
    let before = held(&hub);
    let mut reader = Reader::open(hub.clone(), Filter::always(), None, true)
        .await
        .unwrap();
    reader.next().await.unwrap();
    assert!(
        held(&hub) > before,
        "a reader streaming the snapshot holds its rows"
    );
    while reader.next().await.unwrap().kind != EventKind::SnapshotEnd {}
    assert_eq!(
        held(&hub),
        before,
        "nothing holds a large snapshot once its reader has streamed it"
    );
}

#[tokio::test]
async fn a_far_behind_reader_conflates_a_slice_at_a_time_to_the_exact_net_change() {
    use rand::{Rng as _, SeedableRng as _};
    let keys = 20_000;
    let hub = hub_of(keys);
    for seed in 0..3u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut reader = Reader::open(hub.clone(), Filter::always(), None, true)
            .await
            .unwrap();
        let mut client: std::collections::BTreeMap<i64, i64> = std::collections::BTreeMap::new();
        let apply = |client: &mut std::collections::BTreeMap<i64, i64>, event: &Event| {
            let id = id_of(event);
            let score = match event.row.as_ref().map(|r| r.get(1)) {
                Some(Value::Int(score)) => *score,
                _ => 0,
            };
            match event.kind {
                EventKind::Insert => assert!(client.insert(id, score).is_none(), "INSERT of {id}"),
                EventKind::Update => assert!(client.insert(id, score).is_some(), "UPDATE of {id}"),
                EventKind::Delete => assert!(client.remove(&id).is_some(), "DELETE of {id}"),
                EventKind::SnapshotEnd | EventKind::Reset => {}
            }
        };
        loop {
            let event = reader.next().await.unwrap();
            apply(&mut client, &event);
            if event.kind == EventKind::SnapshotEnd {
                break;
            }
        }
        // Far more changes, over more keys, than one conflation step scans: inserts, updates
        // and deletes, several per batch, some keys changed many times.
        let position = hub.lock().position.0;
        for n in 0..super::consumer::CONFLATE_AFTER as u64 + 100 {
            let changes = (0..5)
                .map(|_| {
                    let id = if rng.random_bool(0.2) {
                        rng.random_range(1..=50)
                    } else {
                        rng.random_range(1..=keys + 100)
                    };
                    if rng.random_bool(0.1) {
                        delete(id)
                    } else {
                        upsert(id, rng.random_range(0..1_000))
                    }
                })
                .collect();
            batch(&hub, position + 1 + n, changes);
        }
        let first = reader.next().await.unwrap();
        assert!(
            reader.queued() < super::consumer::CONFLATE_SCAN,
            "one step queues at most a slice's changes, not the whole backlog"
        );
        // Between two cursors (a conflation's end, a block's), at most one event per key.
        let mut since_cursor = std::collections::HashSet::new();
        for event in std::iter::once(first).chain(ready(&mut reader)) {
            assert!(since_cursor.insert(id_of(&event)), "two events of one key");
            if event.cursor.is_some() {
                since_cursor.clear();
            }
            apply(&mut client, &event);
        }
        let cache: std::collections::BTreeMap<i64, i64> = hub
            .lock()
            .cache
            .values()
            .map(|row| match (row.get(0), row.get(1)) {
                (Value::Int(id), Value::Int(score)) => (*id, *score),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(client, cache, "seed {seed}: the client holds the table");
        assert!(hub.metrics().conflated.get() > 0);
    }
}

#[test]
fn a_long_chain_of_linked_batches_drops_without_recursion() {
    let batch = |seq| {
        Arc::new(AppliedBatch {
            seq,
            position: Position(seq),
            changes: vec![RowChange::Insert(row(1, 1))],
            applied_at: std::time::Instant::now(),
            prev: vec![seq - 1].into(),
            next: vec![std::sync::OnceLock::new()].into(),
        })
    };
    // Each batch held only by its predecessor's link, as when a reader holds an old batch
    // after the log dropped the ones after it.
    let first = batch(1);
    let mut last = first.clone();
    for seq in 2..=1_000_000 {
        let next = batch(seq);
        last.next[0].set((next.clone(), 0)).unwrap();
        last = next;
    }
    drop(last);
    drop(first);
}

#[tokio::test]
async fn readers_far_behind_share_their_views_conflation_of_each_block() {
    let hub = hub_of(100);
    let encoder = Arc::new(Counting::default());
    let mut readers = Vec::new();
    let mut tables = Vec::new();
    for _ in 0..2 {
        let mut reader =
            Reader::open_encoded(hub.clone(), Filter::always(), encoder.clone(), None, false)
                .await
                .unwrap();
        let mut table = std::collections::HashMap::new();
        apply_events(&mut table, ready(&mut reader));
        assert_eq!(table.len(), 100);
        readers.push(reader);
        tables.push(table);
    }
    // Single-row commits, far more than a view keeps: both readers are far behind.
    let changes = 6 * super::consumer::CONFLATE_SCAN + 10;
    let mut expected = tables[0].clone();
    for k in 0..changes {
        let (id, score) = (
            i64::try_from(k % 100).unwrap() + 1,
            i64::try_from(k).unwrap(),
        );
        batch(&hub, 2 + k as u64, vec![upsert(id, score)]);
        expected.insert(id, score);
    }
    let mut encodings = Vec::new();
    for (reader, table) in readers.iter_mut().zip(&mut tables) {
        let before = encoder.0.load(std::sync::atomic::Ordering::Relaxed);
        let events = ready(reader);
        encodings.push(encoder.0.load(std::sync::atomic::Ordering::Relaxed) - before);
        assert!(
            events.len() < changes / 4,
            "{} events: conflated",
            events.len()
        );
        apply_events(table, events);
        assert_eq!(*table, expected, "the reader ends at the source's rows");
        no_more(reader);
    }
    // The first reader conflated up to the first block's end for itself, then every block
    // for the view (at most a row per key each); the second only up to that block's end.
    assert!(
        encodings[1] * 3 < encodings[0],
        "encodings by the first and the second reader: {encodings:?}"
    );
}

#[tokio::test]
async fn a_block_of_one_large_transaction_is_conflated_a_step_at_a_time() {
    let scan = super::consumer::CONFLATE_SCAN;
    let hub = hub_of(100);
    let mut reader = Reader::open(hub.clone(), Filter::always(), None, false)
        .await
        .unwrap();
    let mut table = std::collections::HashMap::new();
    apply_events(&mut table, ready(&mut reader));
    // A block of single-row commits, a block that is one transaction three steps long, then
    // enough commits for the reader to be far behind its view.
    let mut position = 2;
    let mut commit = |changes| {
        batch(&hub, position, changes);
        position += 1;
    };
    let score = |k: usize| i64::try_from(k).unwrap();
    for k in 0..scan {
        commit(vec![upsert(score(k % 100) + 1, score(k) + 10)]);
    }
    commit((0..3 * scan).map(|k| upsert(1_000 + score(k), 0)).collect());
    let last = super::consumer::CONFLATE_AFTER;
    for k in 0..last {
        commit(vec![upsert(score(k % 100) + 1, -score(k))]);
    }
    let mut events = Vec::new();
    loop {
        let next = ready_one(&mut reader);
        let Some(event) = next else { break };
        if id_of(&event) >= 1_000 {
            assert!(
                reader.queued() < scan,
                "the transaction's keys come a step's worth at a time: {} queued",
                reader.queued()
            );
        }
        events.push(event);
    }
    apply_events(&mut table, events);
    assert_eq!(table.len(), 100 + 3 * scan);
    for id in 1..=100usize {
        // The last commit's `k` with `k % 100 == id - 1`.
        let k = (last - id) / 100 * 100 + id - 1;
        assert_eq!(table[&score(id)], -score(k));
    }
}

/// The next event a reader has ready now, if any.
fn ready_one(reader: &mut Reader) -> Option<Event> {
    let waker = futures::task::noop_waker();
    let next = reader.next();
    futures::pin_mut!(next);
    match std::future::Future::poll(next.as_mut(), &mut std::task::Context::from_waker(&waker)) {
        std::task::Poll::Ready(event) => Some(event.unwrap()),
        std::task::Poll::Pending => None,
    }
}
