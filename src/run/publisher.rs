//! The outbox publisher: the only publisher of run events.
//!
//! One replica at a time publishes (a session-level advisory lock on a connection of its
//! own; when that connection ends, another replica takes over within a second). It wakes on
//! the appends' NOTIFY and polls every 200 ms besides, in case a notification is lost. A round
//! takes outbox rows in id order (a run's rows are in seq order: its appends are serialized by
//! the run's row lock), marks their events published, deletes the rows and announces, per
//! run, the highest seq now published — all in one transaction, so the announcement is sent
//! at commit, once the events are visible as published. A round's events share its
//! transaction's time as `published_at`.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Announcement, OUTBOX_CHANNEL, PUBLISHED_CHANNEL};
use crate::store::{Connector, StoreError};
use crate::telemetry::RunMetrics;

/// `pg_advisory_lock` key of the publisher ("vcpublsh" in ASCII).
const PUBLISHER_LOCK: i64 = 0x7663_7075_626c_7368;

/// How often the outbox is read without a notification.
pub const POLL: Duration = Duration::from_millis(200);

/// How often a replica that is not publishing tries to become the publisher.
const STANDBY_RETRY: Duration = Duration::from_secs(1);

/// Outbox rows per round.
const ROUND: i64 = 2_000;

/// Publishes while this replica holds the publisher lock; runs until `shutdown`.
pub async fn run(
    connector: std::sync::Arc<Connector>,
    metrics: std::sync::Arc<RunMetrics>,
    retention: Option<Duration>,
    shutdown: CancellationToken,
) {
    loop {
        let Some(store) = connector.until_ready(&shutdown).await else {
            return;
        };
        let led = lead(&store, &metrics, retention, &shutdown).await;
        metrics.publishing.set(0);
        match led {
            Ok(()) => return,
            Err(err) => tracing::warn!(error = %err, "run outbox publisher stopped; retrying"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(STANDBY_RETRY) => {}
        }
    }
}

/// Waits to hold the lock, then publishes until shutdown (`Ok`) or the connection fails.
async fn lead(
    store: &crate::store::Store,
    metrics: &RunMetrics,
    retention: Option<Duration>,
    shutdown: &CancellationToken,
) -> Result<(), StoreError> {
    let (client, mut notifications) = store.dedicated().await?;
    loop {
        let held: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&PUBLISHER_LOCK])
            .await?
            .get(0);
        if held {
            break;
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(STANDBY_RETRY) => {}
        }
    }
    tracing::info!("this replica publishes run events");
    metrics.publishing.set(1);
    client
        .batch_execute(&format!("LISTEN {OUTBOX_CHANNEL}"))
        .await?;
    let mut client = client;
    let prune_every = retention.map(|r| (r / 2).clamp(POLL, PRUNE_INTERVAL));
    let mut pruned = tokio::time::Instant::now();
    loop {
        if let (Some(retention), Some(every)) = (retention, prune_every)
            && pruned.elapsed() >= every
        {
            prune(&client, retention).await?;
            pruned = tokio::time::Instant::now();
        }
        // Drain: a full round may leave more behind.
        loop {
            let published = publish_round(&mut client).await?;
            metrics.published.add(u64::try_from(published).unwrap_or(0));
            if published < ROUND {
                break;
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            woke = notifications.recv() => {
                if woke.is_none() {
                    return Err(StoreError::Unavailable("the publisher's connection closed".into()));
                }
                // Coalesce a burst of notifications into one round.
                while notifications.try_recv().is_ok() {}
            }
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

/// How often, at most, ended runs past the retention are deleted.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// Deletes runs that ended longer than `retention` ago, with their events (once all of them
/// are published), a thousand at a time.
async fn prune(client: &tokio_postgres::Client, retention: Duration) -> Result<(), StoreError> {
    let mut deleted = 0;
    loop {
        let n = client
            .execute(
                "DELETE FROM viewcast_runs WHERE id IN ( \
                     SELECT r.id FROM viewcast_runs r \
                     WHERE r.finished_at < now() - make_interval(secs => $1) \
                       AND NOT EXISTS (SELECT 1 FROM viewcast_run_outbox o WHERE o.run_id = r.id) \
                     LIMIT 1000)",
                &[&retention.as_secs_f64()],
            )
            .await?;
        deleted += n;
        if n < 1000 {
            break;
        }
    }
    if deleted > 0 {
        tracing::info!(deleted, "ended runs past the retention deleted");
    }
    Ok(())
}

/// Publishes up to `ROUND` outbox rows; returns how many.
async fn publish_round(client: &mut tokio_postgres::Client) -> Result<i64, StoreError> {
    let tx = client.transaction().await?;
    // A round touches a few events by primary key; planned as a join, the planner would take
    // `taken` at its LIMIT and hash all of `viewcast_run_events` (measured: a round read
    // the whole history). Index lookups it is, whatever the table's size.
    tx.batch_execute("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
        .await?;
    let rows = tx
        .query(
            "WITH taken AS (
                 DELETE FROM viewcast_run_outbox
                 WHERE id IN (SELECT id FROM viewcast_run_outbox ORDER BY id LIMIT $1)
                 RETURNING run_id, seq),
             marked AS (
                 UPDATE viewcast_run_events e SET published_at = now()
                 FROM taken t WHERE e.run_id = t.run_id AND e.seq = t.seq
                 RETURNING e.run_id, e.seq, e.type)
             SELECT m.run_id::text, max(m.seq), count(*), r.status,
                    bool_or(m.type IN ('COMPLETED', 'FAILED', 'CANCELLED'))
             FROM marked m JOIN viewcast_runs r ON r.id = m.run_id
             GROUP BY m.run_id, r.status",
            &[&ROUND],
        )
        .await?;
    let mut taken = 0;
    let entries: Vec<String> = rows
        .iter()
        .map(|row| {
            taken += row.get::<_, i64>(2);
            Announcement {
                run_id: row.get(0),
                upto: row.get(1),
                status: row.get(3),
                ended: row.get(4),
            }
            .to_string()
        })
        .collect();
    for payload in chunks(&entries) {
        tx.execute(
            &format!("SELECT pg_notify('{PUBLISHED_CHANNEL}', $1)"),
            &[&payload],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(taken)
}

/// Joins entries with `,` into payloads under PostgreSQL's NOTIFY limit (8,000 bytes).
fn chunks(entries: &[String]) -> Vec<String> {
    const LIMIT: usize = 7_900;
    let mut payloads = Vec::new();
    let mut current = String::new();
    for entry in entries {
        if !current.is_empty() && current.len() + 1 + entry.len() > LIMIT {
            payloads.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(',');
        }
        current.push_str(entry);
    }
    if !current.is_empty() {
        payloads.push(current);
    }
    payloads
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_stay_under_the_notify_limit_and_keep_every_entry() {
        let entries: Vec<String> = (0..1_000)
            .map(|i| {
                Announcement {
                    run_id: format!("{i:036}"),
                    upto: i,
                    status: "running".into(),
                    ended: false,
                }
                .to_string()
            })
            .collect();
        let payloads = chunks(&entries);
        assert!(payloads.len() > 1);
        assert!(payloads.iter().all(|p| p.len() <= 7_900));
        let joined: Vec<&str> = payloads.iter().flat_map(|p| p.split(',')).collect();
        assert_eq!(
            joined,
            entries.iter().map(String::as_str).collect::<Vec<_>>()
        );
        assert!(chunks(&[]).is_empty());
    }
}
