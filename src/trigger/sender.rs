//! Delivery: one task per trigger this replica evaluates sends its deliveries in order — the
//! oldest pending one first; a later event waits for it — with a bound on concurrent requests
//! across triggers.
//!
//! An attempt is claimed in the store before the request (attempts + 1, and a lease on the
//! row), so a crash mid-request leaves the delivery pending and it is sent again (at least
//! once; the receiver drops duplicates by `webhook-id`). 2xx delivers; 410 Gone disables the
//! trigger; 429/503 with `Retry-After` wait that long; anything else (another status, a
//! timeout, a refused connection) retries with exponential backoff and jitter, and after the
//! policy's last attempt the delivery is dead (the dead-letter queue). Each request carries
//! the Standard Webhooks headers; the target's addresses are checked again before every
//! request (a name may resolve elsewhere than when the trigger was created).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::model::{RetryPolicy, Trigger};
use super::payload::{self, Secret};
use super::target::check_target;
use crate::store::{Store, StoreError};

/// How long a claimed attempt keeps others off its delivery beyond the request's timeout.
const LEASE_MARGIN: Duration = Duration::from_secs(30);
/// How often an idle sender looks for work another replica (or a restart) left.
const POLL: Duration = Duration::from_secs(1);

/// What a sender shares with the others.
pub(super) struct Shared {
    pub store: Store,
    pub http: reqwest::Client,
    pub secrets: Vec<Secret>,
    pub allow_private: bool,
    pub concurrency: Semaphore,
}

/// The outcome of one attempt.
#[derive(Debug)]
enum Outcome {
    Delivered(u16),
    /// The receiver asked to stop (410 Gone).
    Gone(u16),
    /// Retry after this long (a 429/503 with `Retry-After`), or by the backoff (`None`).
    Failed {
        status: Option<u16>,
        error: String,
        retry_after: Option<Duration>,
    },
    /// The target may not be called (its address is internal now): dead at once.
    Refused(String),
}

/// The delay before attempt `attempt + 1` after `attempt` failed: exponential, capped, with
/// jitter (between half and all of it).
pub fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(30);
    let base = policy
        .initial_interval
        .saturating_mul(1u32 << exponent)
        .min(policy.max_interval);
    base.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

/// `Retry-After` as a delay (delta-seconds; an HTTP date is left to the backoff).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Sends the trigger's deliveries until cancelled; `trigger.wake` says there may be new ones.
pub(super) async fn run(trigger: Arc<Trigger>, shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        let wait = match next(&trigger, &shared).await {
            Ok(Some(wait)) => wait,
            Ok(None) => POLL,
            Err(err) => {
                tracing::warn!(source = %trigger.source.name, trigger = %trigger.spec.name, error = %err, "delivery store error");
                POLL
            }
        };
        if wait.is_zero() {
            continue;
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = trigger.wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Attempts the oldest pending delivery if it is due. `Some(ZERO)`: look again at once;
/// `Some(d)`: it is due in `d`; `None`: nothing is pending.
async fn next(trigger: &Trigger, shared: &Shared) -> Result<Option<Duration>, StoreError> {
    let client = shared.store.client().await?;
    let key = (
        &trigger.source.name,
        &trigger.spec.name,
        &trigger.generation,
    );
    // The trigger's status as stored (another replica may have disabled or enabled it), and
    // its oldest pending delivery.
    let head = client
        .query_opt(
            "SELECT t.status, d.id, EXTRACT(EPOCH FROM (d.next_attempt_at - now()))::float8 \
             FROM viewcast_triggers t LEFT JOIN LATERAL ( \
                 SELECT id, next_attempt_at FROM viewcast_deliveries \
                 WHERE source = t.source AND trigger_name = t.name AND generation = t.generation \
                   AND status = 'pending' \
                 ORDER BY id LIMIT 1) d ON true \
             WHERE t.source = $1 AND t.name = $2 AND t.generation = $3",
            &[key.0, key.1, key.2],
        )
        .await?;
    let Some(head) = head else {
        // Deleted (the evaluator stops this sender).
        return Ok(None);
    };
    let disabled = head.get::<_, String>(0) == "disabled";
    trigger.set_disabled(disabled);
    let (Some(id), Some(due_in), false) = (
        head.get::<_, Option<i64>>(1),
        head.get::<_, Option<f64>>(2),
        disabled,
    ) else {
        return Ok(None);
    };
    if due_in > 0.0 {
        return Ok(Some(Duration::from_secs_f64(due_in.min(86_400.0))));
    }
    // Claim the head only (a later delivery never overtakes it), unless another sender holds
    // it: attempts + 1 and a lease.
    let lease = trigger.spec.retry.timeout + LEASE_MARGIN;
    let claimed = client
        .query_opt(
            "UPDATE viewcast_deliveries SET attempts = attempts + 1, \
                    next_attempt_at = now() + make_interval(secs => $2) \
             WHERE id = (SELECT id FROM viewcast_deliveries WHERE id = $1 AND status = 'pending' \
                         AND next_attempt_at <= now() FOR UPDATE SKIP LOCKED) \
             RETURNING event_id, payload, attempts",
            &[&id, &lease.as_secs_f64()],
        )
        .await?;
    drop(client);
    let Some(claimed) = claimed else {
        return Ok(Some(POLL));
    };
    let event_id: String = claimed.get(0);
    let stored: Value = claimed.get(1);
    let attempts: i32 = claimed.get(2);
    let attempt = u32::try_from(attempts).unwrap_or(1);
    let started = SystemTime::now();
    let clock = std::time::Instant::now();
    let outcome = {
        let _permit = shared.concurrency.acquire().await;
        send(trigger, shared, &event_id, &stored, attempt).await
    };
    let attempted = Attempt {
        id,
        number: attempt,
        started,
        took: clock.elapsed(),
    };
    record(trigger, shared, &attempted, outcome).await?;
    Ok(Some(Duration::ZERO))
}

/// One HTTP attempt.
async fn send(
    trigger: &Trigger,
    shared: &Shared,
    event_id: &str,
    stored: &Value,
    attempt: u32,
) -> Outcome {
    if let Err(err) = check_target(&trigger.spec.webhook, shared.allow_private).await {
        return Outcome::Refused(err.to_string());
    }
    let body = payload::for_attempt(stored, attempt.saturating_sub(1));
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut request = shared
        .http
        .post(&trigger.spec.webhook)
        .timeout(trigger.spec.retry.timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", event_id)
        .header("webhook-timestamp", timestamp.to_string());
    if let Some(signature) = payload::signature(&shared.secrets, event_id, timestamp, &bytes) {
        request = request.header("webhook-signature", signature);
    }
    for (name, value) in &trigger.spec.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    match request.body(bytes).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            match status {
                200..=299 => Outcome::Delivered(status),
                410 => Outcome::Gone(status),
                429 | 503 => Outcome::Failed {
                    status: Some(status),
                    error: format!("HTTP {status}"),
                    retry_after: retry_after(response.headers()),
                },
                _ => Outcome::Failed {
                    status: Some(status),
                    error: format!("HTTP {status}"),
                    retry_after: None,
                },
            }
        }
        Err(err) => Outcome::Failed {
            status: None,
            error: if err.is_timeout() {
                format!(
                    "no answer within {} ms",
                    trigger.spec.retry.timeout.as_millis()
                )
            } else {
                format!("request failed: {err}")
            },
            retry_after: None,
        },
    }
}

/// One attempt at a delivery, for its history.
struct Attempt {
    /// The delivery's.
    id: i64,
    number: u32,
    started: SystemTime,
    took: Duration,
}

/// Runs `update` (an UPDATE of one delivery whose parameters are `params`, `$1` its id) and
/// records the attempt with its answer, in one statement.
async fn update_and_log(
    client: &deadpool_postgres::Object,
    update: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    attempt: &Attempt,
    status: Option<i32>,
    error: Option<&str>,
) -> Result<(), StoreError> {
    let n = params.len();
    let sql = format!(
        "WITH d AS ({update} RETURNING id) \
         INSERT INTO viewcast_delivery_attempts (delivery_id, attempt, started_at, duration_ms, status, error) \
         SELECT id, ${}, to_timestamp(${}), ${}, ${}, ${} FROM d",
        n + 1,
        n + 2,
        n + 3,
        n + 4,
        n + 5
    );
    let number = i32::try_from(attempt.number).unwrap_or(i32::MAX);
    let started = attempt
        .started
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let took = i32::try_from(attempt.took.as_millis()).unwrap_or(i32::MAX);
    let mut all: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params.to_vec();
    all.extend([
        &number as &(dyn tokio_postgres::types::ToSql + Sync),
        &started,
        &took,
        &status,
        &error,
    ]);
    client.execute(&sql, &all).await?;
    Ok(())
}

/// Saves an attempt's outcome.
async fn record(
    trigger: &Trigger,
    shared: &Shared,
    attempt: &Attempt,
    outcome: Outcome,
) -> Result<(), StoreError> {
    let client = shared.store.client().await?;
    let id = attempt.id;
    match outcome {
        Outcome::Delivered(status) => {
            let status = i32::from(status);
            update_and_log(
                &client,
                "UPDATE viewcast_deliveries SET status = 'delivered', delivered_at = now(), \
                 last_status = $2, last_error = NULL WHERE id = $1",
                &[&id, &status],
                attempt,
                Some(status),
                None,
            )
            .await?;
        }
        Outcome::Gone(status) => {
            // The receiver is gone: the trigger stops; this delivery waits for it to be
            // enabled again.
            let status = i32::from(status);
            let error = "HTTP 410: the receiver disabled the trigger";
            update_and_log(
                &client,
                "UPDATE viewcast_deliveries SET last_status = $2, last_error = $3, \
                 next_attempt_at = now(), attempts = attempts - 1 WHERE id = $1",
                &[&id, &status, &error],
                attempt,
                Some(status),
                Some(error),
            )
            .await?;
            client
                .execute(
                    "UPDATE viewcast_triggers SET status = 'disabled' WHERE source = $1 AND name = $2 AND generation = $3",
                    &[&trigger.source.name, &trigger.spec.name, &trigger.generation],
                )
                .await?;
            trigger.set_disabled(true);
            tracing::warn!(source = %trigger.source.name, trigger = %trigger.spec.name, "the webhook answered 410 Gone: trigger disabled");
        }
        Outcome::Refused(error) => {
            update_and_log(
                &client,
                "UPDATE viewcast_deliveries SET status = 'dead', last_status = NULL, last_error = $2 WHERE id = $1",
                &[&id, &error],
                attempt,
                None,
                Some(&error),
            )
            .await?;
        }
        Outcome::Failed {
            status,
            error,
            retry_after,
        } => {
            let policy = &trigger.spec.retry;
            let status = status.map(i32::from);
            if attempt.number >= policy.attempts {
                update_and_log(
                    &client,
                    "UPDATE viewcast_deliveries SET status = 'dead', last_status = $2, last_error = $3 WHERE id = $1",
                    &[&id, &status, &error],
                    attempt,
                    status,
                    Some(&error),
                )
                .await?;
                tracing::warn!(source = %trigger.source.name, trigger = %trigger.spec.name, delivery = id, error = %error, "delivery dead after its last attempt");
            } else {
                // Retry-After wins over the backoff (a receiver that asked for an hour gets it).
                let delay = retry_after
                    .unwrap_or_else(|| backoff(policy, attempt.number))
                    .as_secs_f64();
                update_and_log(
                    &client,
                    "UPDATE viewcast_deliveries SET last_status = $2, last_error = $3, \
                     next_attempt_at = now() + make_interval(secs => $4) WHERE id = $1",
                    &[&id, &status, &error, &delay],
                    attempt,
                    status,
                    Some(&error),
                )
                .await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let policy = RetryPolicy {
            attempts: 10,
            initial_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        };
        for (attempt, full) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (9, 1000)] {
            for _ in 0..50 {
                let d = backoff(&policy, attempt).as_millis() as u64;
                assert!(
                    d >= full / 2 && d <= full,
                    "attempt {attempt}: {d} ms, full {full}"
                );
            }
        }
    }
}
