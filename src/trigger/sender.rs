//! Delivery: one dispatcher per source sends the deliveries of the triggers this replica
//! evaluates. Each round it claims, in one statement, the oldest pending delivery of every
//! trigger that has nothing in flight (a later event of a trigger waits for the one before
//! it: order per trigger) and is due and active, up to the free request slots; the requests
//! run concurrently, bounded across triggers; their outcomes are recorded together, with
//! each attempt, in one statement.
//!
//! A claim counts the attempt and leases the row (the request's timeout and a margin) before
//! the request, so a crash mid-request leaves the delivery pending and it is sent again once
//! the lease ends (at least once; the receiver drops duplicates by `webhook-id`). 2xx
//! delivers; 410 Gone disables the trigger; 429/503 with `Retry-After` wait that long;
//! anything else (another status, a timeout, a refused connection) retries with exponential
//! backoff and jitter, and after the policy's last attempt the delivery is dead (the
//! dead-letter queue). Each request carries the Standard Webhooks headers; the target's
//! addresses are checked again before every request (a name may resolve elsewhere than when
//! the trigger was created).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::model::{RetryPolicy, Trigger};
use super::payload::{self, Secret};
use super::target::check_target;
use crate::store::{Store, StoreError};

/// How long a claimed attempt keeps others off its delivery beyond the request's timeout.
const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// How often an idle dispatcher looks for work another replica (or a restart) left.
const POLL: Duration = Duration::from_secs(1);

/// What the dispatchers share.
pub(super) struct Shared {
    pub store: Store,
    pub http: reqwest::Client,
    pub secrets: Vec<Secret>,
    /// Where requests may go (the client checks each name it resolves; hosts written as
    /// addresses are checked here before each request).
    pub egress: crate::egress::Egress,
    /// Requests in flight, across sources.
    pub concurrency: Arc<Semaphore>,
    /// Requests in flight per target host, across sources.
    pub hosts: Arc<HostSlots>,
}

/// Requests in flight per webhook host (`host:port`), each host at most `per_host` of the
/// shared slots: a slow or tarpitting receiver (many triggers can point at one) holds no
/// more, and the others keep being served.
#[derive(Debug)]
pub(super) struct HostSlots {
    per_host: usize,
    // A std Mutex: a map update per attempt, never held across an await.
    in_flight: Mutex<std::collections::HashMap<String, usize>>,
}

impl HostSlots {
    pub fn new(per_host: usize) -> HostSlots {
        HostSlots {
            per_host: per_host.max(1),
            in_flight: Mutex::default(),
        }
    }

    /// Takes a slot for `host` unless it has `per_host` requests in flight.
    fn take(&self, host: &str) -> bool {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = in_flight.entry(host.to_owned()).or_default();
        if *n >= self.per_host {
            return false;
        }
        *n += 1;
        true
    }

    fn give(&self, host: &str) {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = in_flight.get_mut(host) {
            *n -= 1;
            if *n == 0 {
                in_flight.remove(host);
            }
        }
    }
}

/// The host (and port) a trigger's webhook targets, as the per-host slots count it.
fn host_of(trigger: &Trigger) -> String {
    reqwest::Url::parse(&trigger.spec.webhook).map_or_else(
        |_| trigger.spec.webhook.clone(),
        |url| {
            format!(
                "{}:{}",
                url.host_str().unwrap_or_default(),
                url.port_or_known_default().unwrap_or_default()
            )
        },
    )
}

/// What a source's evaluator, the API and its dispatcher share: the triggers to send for
/// (the ones the evaluator owns), which of them may have a delivery to send, and the wake-up.
#[derive(Default)]
pub(super) struct Owned {
    /// std Mutexes: never held across an await.
    triggers: Mutex<Vec<Arc<Trigger>>>,
    dirty: Mutex<Dirty>,
    wake: Notify,
}

/// Triggers that may have a due delivery.
#[derive(Default)]
struct Dirty {
    /// Any of them (a redelivery, a trigger enabled, a retry due, a periodic look).
    all: bool,
    some: HashSet<usize>,
}

impl Owned {
    /// The evaluator's triggers now.
    pub fn set(&self, triggers: Vec<Arc<Trigger>>) {
        *self
            .triggers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = triggers;
    }

    /// New deliveries of these triggers were saved.
    pub fn saved<'a>(&self, triggers: impl IntoIterator<Item = &'a Arc<Trigger>>) {
        let mut dirty = self.dirty();
        dirty.some.extend(triggers.into_iter().map(key));
        drop(dirty);
        self.wake.notify_one();
    }

    /// Any trigger may have a delivery due (redelivered, enabled).
    pub fn wake_all(&self) {
        self.dirty().all = true;
        self.wake.notify_one();
    }

    fn dirty(&self) -> std::sync::MutexGuard<'_, Dirty> {
        self.dirty
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The triggers to look at now: not disabled, nothing in flight, and dirty.
    fn candidates(
        &self,
        in_flight: &HashSet<usize>,
        carry: &mut HashSet<usize>,
    ) -> Vec<Arc<Trigger>> {
        let dirty = std::mem::take(&mut *self.dirty());
        let wanted = |k: &usize| dirty.all || dirty.some.contains(k) || carry.contains(k);
        let picked = self
            .triggers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|t| {
                let k = key(t);
                !t.is_disabled() && !in_flight.contains(&k) && wanted(&k)
            })
            .cloned()
            .collect();
        carry.clear();
        picked
    }
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

/// One HTTP attempt.
async fn send(claimed: &Claimed, shared: &Shared) -> Outcome {
    let trigger = &claimed.trigger;
    let (event_id, stored, attempt) = (&claimed.event_id, &claimed.payload, claimed.attempt);
    // A name is checked as the client connects (the address checked is the address used); a
    // host written as an address is checked here.
    match super::target::parse(&trigger.spec.webhook) {
        Ok(target) if target.host.parse::<std::net::IpAddr>().is_ok() => {
            if let Err(err) = check_target(&trigger.spec.webhook, &shared.egress).await {
                return Outcome::Refused(err.to_string());
            }
        }
        Ok(_) => {}
        Err(err) => return Outcome::Refused(err.to_string()),
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
        // The name resolved to internal addresses only: refused like an internal address.
        Err(err) if crate::egress::refusal(&err).is_some() => Outcome::Refused(format!(
            "webhook {}: {}",
            crate::egress::redact_url(&trigger.spec.webhook),
            crate::egress::describe_error(&err, trigger.spec.retry.timeout)
        )),
        Err(err) => Outcome::Failed {
            status: None,
            error: crate::egress::describe_error(&err, trigger.spec.retry.timeout),
            retry_after: None,
        },
    }
}

/// A delivery claimed for one attempt.
struct Claimed {
    id: i64,
    trigger: Arc<Trigger>,
    event_id: String,
    payload: Value,
    attempt: u32,
}

/// An attempt and its outcome, to record.
struct Done {
    trigger: Arc<Trigger>,
    id: i64,
    attempt: u32,
    started: SystemTime,
    took: Duration,
    outcome: Outcome,
}

/// Sends the deliveries of the `owned` triggers until cancelled.
pub(super) async fn dispatch(
    source: String,
    owned: Arc<Owned>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let (recorded_tx, mut recorded_rx) = mpsc::unbounded_channel::<Recorded>();
    // Triggers with a request in flight, or whose outcome is being recorded.
    let mut in_flight: HashSet<usize> = HashSet::new();
    // One recording at a time, overlapping the claims; outcomes wait in `finished`.
    let mut recording = false;
    // Candidates a saturated claim left for the next round.
    let mut carry: HashSet<usize> = HashSet::new();
    let mut finished: Vec<Done> = Vec::new();
    let mut next_poll = Instant::now();
    // The earliest retry this dispatcher scheduled.
    let mut next_retry: Option<Instant> = None;
    loop {
        while let Ok(done) = done_rx.try_recv() {
            finished.push(done);
        }
        while let Ok(recorded) = recorded_rx.try_recv() {
            recording = false;
            recorded.settle(&source, &mut in_flight, &mut carry, &mut next_retry);
        }
        if !recording && !finished.is_empty() {
            recording = true;
            let batch = std::mem::take(&mut finished);
            let (shared, recorded_tx) = (shared.clone(), recorded_tx.clone());
            tokio::spawn(async move {
                let triggers = batch.iter().map(|d| key(&d.trigger)).collect();
                let result = record(&shared, batch).await;
                let _ = recorded_tx.send(Recorded { triggers, result });
            });
        }
        let now = Instant::now();
        if now >= next_poll {
            // Work a restart or another replica left, or a trigger enabled elsewhere (the
            // status itself is followed by `Triggers::follow`).
            next_poll = now + POLL;
            owned.dirty().all = true;
        }
        if next_retry.is_some_and(|r| r <= now) {
            next_retry = None;
            owned.dirty().all = true;
        }
        // Each candidate takes its host's slot now; a host at its share waits for the next
        // round (its candidates are carried), the others go ahead.
        let mut candidates = owned.candidates(&in_flight, &mut carry);
        candidates.retain(|t| {
            let room = shared.hosts.take(&host_of(t));
            if !room {
                carry.insert(key(t));
            }
            room
        });
        let slots = shared.concurrency.available_permits().max(1);
        if !candidates.is_empty() {
            match claim(&shared.store, &source, &candidates, slots).await {
                Ok(claimed) => {
                    if claimed.len() >= slots {
                        // Saturated: the others are looked at again next round.
                        carry.extend(candidates.iter().map(key));
                    }
                    let claimed_keys: HashSet<usize> =
                        claimed.iter().map(|c| key(&c.trigger)).collect();
                    for t in candidates
                        .iter()
                        .filter(|t| !claimed_keys.contains(&key(t)))
                    {
                        shared.hosts.give(&host_of(t));
                    }
                    for claimed in claimed {
                        carry.remove(&key(&claimed.trigger));
                        in_flight.insert(key(&claimed.trigger));
                        tokio::spawn(attempt(claimed, shared.clone(), done_tx.clone()));
                    }
                }
                Err(err) => {
                    for t in &candidates {
                        shared.hosts.give(&host_of(t));
                    }
                    carry.extend(candidates.iter().map(key));
                    tracing::warn!(source = %source, error = %err, "cannot claim deliveries");
                }
            }
        }
        let until = next_retry.map_or(next_poll, |r| r.min(next_poll));
        tokio::select! {
            () = cancel.cancelled() => return,
            () = owned.wake.notified() => {}
            Some(done) = done_rx.recv() => finished.push(done),
            Some(recorded) = recorded_rx.recv() => {
                recording = false;
                recorded.settle(&source, &mut in_flight, &mut carry, &mut next_retry);
            }
            () = tokio::time::sleep_until(until) => {}
        }
    }
}

/// Outcomes recorded (or not): their triggers may send again.
struct Recorded {
    triggers: Vec<usize>,
    result: Result<Option<Instant>, StoreError>,
}

impl Recorded {
    /// Its triggers may send again (they are looked at next round); a retry it scheduled is
    /// remembered.
    fn settle(
        self,
        source: &str,
        in_flight: &mut HashSet<usize>,
        carry: &mut HashSet<usize>,
        next_retry: &mut Option<Instant>,
    ) {
        for k in self.triggers {
            in_flight.remove(&k);
            carry.insert(k);
        }
        match self.result {
            Ok(Some(retry)) => *next_retry = Some(next_retry.map_or(retry, |r| r.min(retry))),
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(source = %source, error = %err, "cannot record delivery outcomes; their deliveries are sent again after their lease");
            }
        }
    }
}

/// One attempt, within the concurrency bound; its outcome goes to `done`.
async fn attempt(claimed: Claimed, shared: Arc<Shared>, done: mpsc::UnboundedSender<Done>) {
    // The host's slot (taken at the claim) goes back when the attempt ends, however it ends.
    struct HostSlot(Arc<Shared>, String);
    impl Drop for HostSlot {
        fn drop(&mut self) {
            self.0.hosts.give(&self.1);
        }
    }
    let _host = HostSlot(shared.clone(), host_of(&claimed.trigger));
    let Ok(_permit) = shared.concurrency.clone().acquire_owned().await else {
        return;
    };
    let started = SystemTime::now();
    let clock = std::time::Instant::now();
    let outcome = send(&claimed, &shared).await;
    let _ = done.send(Done {
        trigger: claimed.trigger,
        id: claimed.id,
        attempt: claimed.attempt,
        started,
        took: clock.elapsed(),
        outcome,
    });
}

/// A trigger's identity while it is evaluated here.
fn key(trigger: &Arc<Trigger>) -> usize {
    Arc::as_ptr(trigger) as usize
}

/// Claims the oldest pending delivery of each of `idle` that is due and active, at most
/// `limit`, skipping rows another replica holds.
async fn claim(
    store: &Store,
    source: &str,
    idle: &[Arc<Trigger>],
    limit: usize,
) -> Result<Vec<Claimed>, StoreError> {
    let names: Vec<&str> = idle.iter().map(|t| t.spec.name.as_str()).collect();
    let generations: Vec<i64> = idle.iter().map(|t| t.generation).collect();
    let leases: Vec<f64> = idle
        .iter()
        .map(|t| (t.spec.retry.timeout + LEASE_MARGIN).as_secs_f64())
        .collect();
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let client = store.client().await?;
    let rows = client
        .query(
            "WITH heads AS MATERIALIZED ( \
                 SELECT h.id, t.lease FROM unnest($2::text[], $3::bigint[], $4::float8[]) \
                        AS t(name, generation, lease) \
                 JOIN viewcast_triggers tr ON tr.source = $1 AND tr.name = t.name \
                      AND tr.generation = t.generation AND tr.status = 'active' \
                 CROSS JOIN LATERAL ( \
                     SELECT id, next_attempt_at FROM viewcast_deliveries d \
                     WHERE d.source = $1 AND d.trigger_name = t.name \
                       AND d.generation = t.generation AND d.status = 'pending' \
                     ORDER BY d.id LIMIT 1) h \
                 WHERE h.next_attempt_at <= now() \
                 LIMIT $5), \
             locked AS MATERIALIZED ( \
                 SELECT d.id FROM viewcast_deliveries d \
                 WHERE d.id = ANY (ARRAY(SELECT id FROM heads)) AND d.status = 'pending' \
                 FOR UPDATE SKIP LOCKED) \
             UPDATE viewcast_deliveries d SET attempts = d.attempts + 1, \
                    next_attempt_at = now() + make_interval(secs => \
                        (SELECT lease FROM heads WHERE heads.id = d.id)) \
             WHERE d.id = ANY (ARRAY(SELECT id FROM locked)) \
             RETURNING d.id, d.trigger_name, d.generation, d.event_id, d.payload, d.attempts",
            &[&source, &names, &generations, &leases, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let (name, generation): (&str, i64) = (row.get(1), row.get(2));
            let trigger = idle
                .iter()
                .find(|t| t.spec.name == name && t.generation == generation)?;
            Some(Claimed {
                id: row.get(0),
                trigger: trigger.clone(),
                event_id: row.get(3),
                payload: row.get(4),
                attempt: u32::try_from(row.get::<_, i32>(5)).unwrap_or(1),
            })
        })
        .collect())
}

/// Records attempts and their outcomes in one statement (a delivery no longer pending —
/// its trigger deleted meanwhile — is left as it is). Returns when the earliest retry it
/// scheduled is due.
async fn record(shared: &Shared, done: Vec<Done>) -> Result<Option<Instant>, StoreError> {
    let n = done.len();
    let mut ids = Vec::with_capacity(n);
    let mut statuses: Vec<&str> = Vec::with_capacity(n);
    let mut codes: Vec<Option<i32>> = Vec::with_capacity(n);
    let mut errors: Vec<Option<String>> = Vec::with_capacity(n);
    let mut delays: Vec<f64> = Vec::with_capacity(n);
    let mut undo: Vec<i32> = Vec::with_capacity(n);
    let mut attempts: Vec<i32> = Vec::with_capacity(n);
    let mut started: Vec<f64> = Vec::with_capacity(n);
    let mut took: Vec<i32> = Vec::with_capacity(n);
    let mut gone: Vec<&Arc<Trigger>> = Vec::new();
    let mut earliest: Option<Duration> = None;
    for d in &done {
        let (status, code, error, delay, back) = match &d.outcome {
            Outcome::Delivered(code) => ("delivered", Some(*code), None, 0.0, 0),
            Outcome::Gone(code) => {
                gone.push(&d.trigger);
                let error = "HTTP 410: the receiver disabled the trigger".to_owned();
                ("pending", Some(*code), Some(error), 0.0, -1)
            }
            Outcome::Refused(error) => ("dead", None, Some(error.clone()), 0.0, 0),
            Outcome::Failed {
                status,
                error,
                retry_after,
            } => {
                let policy = &d.trigger.spec.retry;
                if d.attempt >= policy.attempts {
                    tracing::warn!(source = %d.trigger.source.name, trigger = %d.trigger.spec.name, delivery = d.id, error = %error, "delivery dead after its last attempt");
                    ("dead", *status, Some(error.clone()), 0.0, 0)
                } else {
                    // Retry-After wins over the backoff (a receiver that asked for an hour
                    // gets it).
                    let delay = retry_after.unwrap_or_else(|| backoff(policy, d.attempt));
                    earliest = Some(earliest.map_or(delay, |e| e.min(delay)));
                    (
                        "pending",
                        *status,
                        Some(error.clone()),
                        delay.as_secs_f64(),
                        0,
                    )
                }
            }
        };
        ids.push(d.id);
        statuses.push(status);
        codes.push(code.map(i32::from));
        errors.push(error);
        delays.push(delay);
        undo.push(back);
        attempts.push(i32::try_from(d.attempt).unwrap_or(i32::MAX));
        started.push(
            d.started
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |t| t.as_secs_f64()),
        );
        took.push(i32::try_from(d.took.as_millis()).unwrap_or(i32::MAX));
    }
    let client = shared.store.client().await?;
    client
        .execute(
            "WITH o AS ( \
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::int4[], $4::text[], \
                                      $5::float8[], $6::int4[], $7::int4[], $8::float8[], $9::int4[]) \
                 AS o(id, status, code, error, delay, undo, attempt, started, took)), \
             u AS ( \
                 UPDATE viewcast_deliveries d SET status = o.status, last_status = o.code, \
                        last_error = o.error, attempts = d.attempts + o.undo, \
                        delivered_at = CASE WHEN o.status = 'delivered' THEN now() END, \
                        next_attempt_at = CASE WHEN o.status = 'pending' \
                            THEN now() + make_interval(secs => o.delay) ELSE d.next_attempt_at END \
                 FROM o WHERE d.id = o.id AND d.status = 'pending' RETURNING d.id) \
             INSERT INTO viewcast_delivery_attempts \
                 (delivery_id, attempt, started_at, duration_ms, status, error) \
             SELECT o.id, o.attempt, to_timestamp(o.started), o.took, o.code, o.error \
             FROM o JOIN u ON u.id = o.id",
            &[
                &ids, &statuses, &codes, &errors, &delays, &undo, &attempts, &started, &took,
            ],
        )
        .await?;
    for trigger in gone {
        client
            .execute(
                "UPDATE viewcast_triggers SET status = 'disabled' WHERE source = $1 AND name = $2 AND generation = $3",
                &[&trigger.source.name, &trigger.spec.name, &trigger.generation],
            )
            .await?;
        trigger.set_disabled(true);
        tracing::warn!(source = %trigger.source.name, trigger = %trigger.spec.name, "the webhook answered 410 Gone: trigger disabled");
    }
    Ok(earliest.map(|e| Instant::now() + e))
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
