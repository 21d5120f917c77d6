//! The deliveries as the API shows them: a trigger's recent deliveries and their attempts,
//! its counters, the dead-letter queue, and redelivery.
//!
//! Everything here reads or resets rows of the store; the senders pick up what a reset
//! queued (a redelivered event keeps its event id, so a receiver that already has it drops it).

use serde_json::Value;

use super::model::Trigger;
use crate::store::{Store, StoreError, rfc3339};

/// Where a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Waiting for its first or next attempt (or for its trigger to be enabled).
    Pending,
    Delivered,
    /// Every attempt failed (or the target became internal): the dead-letter queue.
    Dead,
    /// Its trigger was deleted before it was delivered.
    Cancelled,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 4] = [
        DeliveryStatus::Pending,
        DeliveryStatus::Delivered,
        DeliveryStatus::Dead,
        DeliveryStatus::Cancelled,
    ];

    /// The store's spelling (the GraphQL enum is the same in capitals).
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
            DeliveryStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<DeliveryStatus> {
        DeliveryStatus::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(text))
    }
}

/// One FIRE or CLEAR and how its delivery went.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: i64,
    /// The `webhook-id` (idempotency key).
    pub event_id: String,
    pub source: String,
    pub trigger_name: String,
    /// `FIRE` or `CLEAR`.
    pub event_type: String,
    pub status: DeliveryStatus,
    pub attempts: i32,
    /// The last answer's HTTP status, if there was an answer.
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    /// When the next attempt is due (pending deliveries only); RFC 3339.
    pub next_attempt_at: Option<String>,
    pub created_at: String,
    pub delivered_at: Option<String>,
    /// The body as stored (the first attempt's; later ones carry their attempt number).
    pub payload: Value,
}

/// One attempt at a delivery.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub attempt: i32,
    pub started_at: String,
    pub duration_ms: i32,
    pub status: Option<i32>,
    pub error: Option<String>,
}

/// A trigger's deliveries, counted by kind and status (its current generation only).
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    pub fired: i64,
    pub cleared: i64,
    pub pending: i64,
    pub delivered: i64,
    pub dead: i64,
}

const DELIVERY_COLUMNS: &str = concat!(
    "d.id, d.event_id, d.source, d.trigger_name, d.event_type, d.status, d.attempts, ",
    "d.last_status, d.last_error, ",
    "CASE WHEN d.status = 'pending' THEN ",
    rfc3339!("d.next_attempt_at"),
    " END, ",
    rfc3339!("d.created_at"),
    ", ",
    rfc3339!("d.delivered_at"),
    ", d.payload"
);

fn delivery(row: &tokio_postgres::Row) -> Delivery {
    Delivery {
        id: row.get(0),
        event_id: row.get(1),
        source: row.get(2),
        trigger_name: row.get(3),
        event_type: row.get(4),
        status: DeliveryStatus::parse(row.get(5)).unwrap_or(DeliveryStatus::Pending),
        attempts: row.get(6),
        last_status: row.get(7),
        last_error: row.get(8),
        next_attempt_at: row.get(9),
        created_at: row.get(10),
        delivered_at: row.get(11),
        payload: row.get(12),
    }
}

/// Which deliveries a listing returns: newest first, `limit` of them, older than `before`.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub status: Option<DeliveryStatus>,
    pub limit: i64,
    pub before: Option<i64>,
}

/// The trigger's deliveries (its current generation).
pub async fn of_trigger(
    store: &Store,
    trigger: &Trigger,
    page: Page,
) -> Result<Vec<Delivery>, StoreError> {
    let client = store.client().await?;
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM viewcast_deliveries d \
         WHERE d.source = $1 AND d.trigger_name = $2 AND d.generation = $3 \
           AND ($4::text IS NULL OR d.status = $4) AND ($5::bigint IS NULL OR d.id < $5) \
         ORDER BY d.id DESC LIMIT $6"
    );
    let rows = client
        .query(
            &sql,
            &[
                &trigger.source.name,
                &trigger.spec.name,
                &trigger.generation,
                &page.status.map(DeliveryStatus::as_str),
                &page.before,
                &page.limit,
            ],
        )
        .await?;
    Ok(rows.iter().map(delivery).collect())
}

/// The dead-letter queue of a source's triggers (of one, with `trigger`), newest first.
pub async fn dead_letters(
    store: &Store,
    source: &str,
    trigger: Option<&str>,
    page: Page,
) -> Result<Vec<Delivery>, StoreError> {
    let client = store.client().await?;
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM viewcast_deliveries d \
         JOIN viewcast_triggers t ON t.source = d.source AND t.name = d.trigger_name \
                                 AND t.generation = d.generation \
         WHERE d.source = $1 AND d.status = 'dead' AND ($2::text IS NULL OR d.trigger_name = $2) \
           AND ($3::bigint IS NULL OR d.id < $3) \
         ORDER BY d.id DESC LIMIT $4"
    );
    let rows = client
        .query(&sql, &[&source, &trigger, &page.before, &page.limit])
        .await?;
    Ok(rows.iter().map(delivery).collect())
}

/// A delivery's attempts, newest first.
pub async fn attempts(
    store: &Store,
    delivery_id: i64,
    limit: i64,
) -> Result<Vec<AttemptRecord>, StoreError> {
    let client = store.client().await?;
    let sql = concat!(
        "SELECT attempt, ",
        rfc3339!("started_at"),
        ", duration_ms, status, error FROM viewcast_delivery_attempts ",
        "WHERE delivery_id = $1 ORDER BY id DESC LIMIT $2"
    );
    let rows = client.query(sql, &[&delivery_id, &limit]).await?;
    Ok(rows
        .iter()
        .map(|row| AttemptRecord {
            attempt: row.get(0),
            started_at: row.get(1),
            duration_ms: row.get(2),
            status: row.get(3),
            error: row.get(4),
        })
        .collect())
}

/// The trigger's counters.
pub async fn counters(store: &Store, trigger: &Trigger) -> Result<Counters, StoreError> {
    let client = store.client().await?;
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE event_type = 'FIRE'), \
                    count(*) FILTER (WHERE event_type = 'CLEAR'), \
                    count(*) FILTER (WHERE status = 'pending'), \
                    count(*) FILTER (WHERE status = 'delivered'), \
                    count(*) FILTER (WHERE status = 'dead') \
             FROM viewcast_deliveries WHERE source = $1 AND trigger_name = $2 AND generation = $3",
            &[
                &trigger.source.name,
                &trigger.spec.name,
                &trigger.generation,
            ],
        )
        .await?;
    Ok(Counters {
        fired: row.get(0),
        cleared: row.get(1),
        pending: row.get(2),
        delivered: row.get(3),
        dead: row.get(4),
    })
}

/// Queues the trigger's deliveries with ids from `from` to `to` again (whatever their status,
/// pending ones made due now): attempts start over. Returns them, oldest first.
pub async fn redeliver(
    store: &Store,
    trigger: &Trigger,
    from: i64,
    to: i64,
) -> Result<Vec<Delivery>, StoreError> {
    let client = store.client().await?;
    let sql = format!(
        "WITH d AS ( \
             UPDATE viewcast_deliveries SET status = 'pending', attempts = 0, \
                    next_attempt_at = now(), delivered_at = NULL \
             WHERE source = $1 AND trigger_name = $2 AND generation = $3 \
               AND id BETWEEN $4 AND $5 AND status <> 'cancelled' \
             RETURNING *) \
         SELECT {DELIVERY_COLUMNS} FROM d ORDER BY d.id"
    );
    let rows = client
        .query(
            &sql,
            &[
                &trigger.source.name,
                &trigger.spec.name,
                &trigger.generation,
                &from,
                &to,
            ],
        )
        .await?;
    Ok(rows.iter().map(delivery).collect())
}

/// Deletes delivered and cancelled deliveries older than `retention` (their attempts go
/// with them), a bounded number per call; dead ones stay until redelivered. Returns how many.
pub async fn prune(store: &Store, retention: std::time::Duration) -> Result<u64, StoreError> {
    let client = store.client().await?;
    let deleted = client
        .execute(
            "DELETE FROM viewcast_deliveries WHERE id IN ( \
                 SELECT id FROM viewcast_deliveries \
                 WHERE status IN ('delivered', 'cancelled') \
                   AND coalesce(delivered_at, created_at) < now() - make_interval(secs => $1) \
                 LIMIT 10000)",
            &[&retention.as_secs_f64()],
        )
        .await?;
    Ok(deleted)
}

/// Stores the trigger's status.
pub async fn set_disabled(
    store: &Store,
    trigger: &Trigger,
    disabled: bool,
) -> Result<(), StoreError> {
    let client = store.client().await?;
    let status = if disabled { "disabled" } else { "active" };
    client
        .execute(
            "UPDATE viewcast_triggers SET status = $4 WHERE source = $1 AND name = $2 AND generation = $3",
            &[
                &trigger.source.name,
                &trigger.spec.name,
                &trigger.generation,
                &status,
            ],
        )
        .await?;
    Ok(())
}
