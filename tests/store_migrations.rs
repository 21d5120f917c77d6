//! The store's migrations: replicas starting together on a new store apply each migration
//! once and all start; a store that a newer binary migrated is refused with a clear message.

mod common;

use common::TestDb;
use viewcast::store::{Store, StoreError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_on_a_new_store_all_start() {
    let db = TestDb::new().await;
    for round in 0..3 {
        let name = format!("replicas_{round}");
        db.client()
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("database");
        let url = match db.url.rsplit_once('/') {
            Some((prefix, _)) => format!("{prefix}/{name}"),
            None => unreachable!("a URL with a database"),
        };
        let starts = (0..8).map(|_| {
            let url = url.clone();
            tokio::spawn(async move { Store::connect(&url).await.map(drop) })
        });
        for start in futures::future::join_all(starts).await {
            start.expect("task").expect("every replica starts");
        }
        let client = common::connect(&url).await;
        let applied: i64 = client
            .query_one(
                "SELECT count(*) - count(DISTINCT version) FROM viewcast_migrations",
                &[],
            )
            .await
            .expect("migrations")
            .get(0);
        assert_eq!(applied, 0, "each migration applied once");
    }
    db.stop().await;
}

#[tokio::test]
async fn a_store_migrated_by_a_newer_binary_is_refused() {
    let db = TestDb::new().await;
    Store::connect(&db.url).await.expect("migrates");
    db.client()
        .await
        .batch_execute("INSERT INTO viewcast_migrations (version, name) VALUES (999, 'future')")
        .await
        .expect("a newer migration");
    match Store::connect(&db.url).await {
        Err(err @ StoreError::Newer { found: 999, .. }) => {
            assert!(err.to_string().contains("newer viewcast"), "{err}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    db.stop().await;
}
