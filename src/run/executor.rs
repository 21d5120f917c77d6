//! Executors: what drives the runs of the `demo` and `http` kinds.
//!
//! Each replica's [`Orchestrator`] claims runs of those kinds that no live replica drives
//! (a lease in the run's row: owner and expiry, renewed every second while it drives them;
//! a replica restarted under the same `--instance` takes its own runs back at once, others
//! wait for the lease to expire) and drives each in a task of its own.
//!
//! A run is a state machine whose state is its last persisted event: the driver reads it,
//! decides the next step ([`demo_step`], [`http_step`]), **persists the transition as an
//! event before acting on it**, then acts. After a crash the next driver reads the same
//! state and carries on from there: a demo run resumes the item it was processing; an http
//! run whose worker has not reported since it was dispatched is dispatched again (workers
//! must accept a run id twice). Every append carries the seq the driver expects, so two
//! drivers never both advance a run. Cancellation is observed between steps (and ends a
//! demo step's wait at once): `cancelRun` appends the one CANCELLED event and the driver's
//! next append is refused, which ends it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{Event, NewEvent, Run, RunError, Runs, TERMINAL};
use crate::config::Executor;

/// How long a claim lasts without renewal.
const LEASE_SECS: f64 = 30.0;
/// How often claims are made and leases renewed.
const ROUND: Duration = Duration::from_secs(1);
/// Attempts to deliver a run to an http worker before the run fails.
const DISPATCH_ATTEMPTS: u32 = 4;

/// The event types executors write besides the terminal ones.
pub const STARTED: &str = "STARTED";
pub const PROGRESS: &str = "PROGRESS";
pub const DISPATCHED: &str = "DISPATCHED";

/// What a demo run's driver does next.
#[derive(Debug, Clone, PartialEq)]
pub enum DemoStep {
    /// Persist `event` (a transition with no work before it), then decide again.
    Advance(NewEvent),
    /// Do `act` (the work the last transition announced), then persist `event`.
    Act { act: Duration, event: NewEvent },
    /// Nothing more to do (the run has ended).
    Done,
}

/// What an http run's driver does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpStep {
    /// Send the run to the worker.
    Dispatch,
    /// The worker drives it: fail it unless an event arrives within `left`.
    Watch { left: Duration },
    /// Nothing more to do (the run has ended).
    Done,
}

fn counters(done: u32, total: u32) -> serde_json::Value {
    json!({"items_done": done, "items_total": total})
}

fn percentage(done: u32, total: u32) -> f64 {
    (f64::from(done) * 100.0 / f64::from(total.max(1))).min(100.0)
}

/// The demo's next step after `last` (its last STARTED or PROGRESS event, if any):
/// Start → Process item 1 … item `items` (each announced by a PROGRESS event, then worked on
/// for `item`) → Finish (COMPLETED).
pub fn demo_step(items: u32, item: Duration, last: Option<&Event>) -> DemoStep {
    let items = items.max(1);
    let processing = |k: u32| NewEvent {
        event_type: PROGRESS.into(),
        stage: Some("Process".into()),
        message: Some(format!("item {k} of {items}")),
        percentage: Some(percentage(k - 1, items)),
        counters: Some(counters(k - 1, items)),
        data: None,
    };
    let Some(last) = last else {
        return DemoStep::Advance(NewEvent {
            event_type: STARTED.into(),
            stage: Some("Start".into()),
            message: Some(format!("{items} items to process")),
            percentage: Some(0.0),
            counters: Some(counters(0, items)),
            data: None,
        });
    };
    match last.event_type.as_str() {
        t if TERMINAL.contains(&t) => DemoStep::Done,
        PROGRESS => {
            // Announced: item k (k - 1 done). Work on it, then announce the next.
            let done = last
                .counters
                .as_ref()
                .and_then(|c| c["items_done"].as_u64())
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0)
                .min(items - 1);
            let k = done + 1;
            let event = if k < items {
                processing(k + 1)
            } else {
                NewEvent {
                    event_type: "COMPLETED".into(),
                    stage: Some("Finish".into()),
                    message: Some(format!("processed {items} items")),
                    percentage: Some(100.0),
                    counters: Some(counters(items, items)),
                    data: None,
                }
            };
            DemoStep::Act { act: item, event }
        }
        _ => DemoStep::Advance(processing(1)),
    }
}

/// An http run's last event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Last {
    None,
    /// Our DISPATCHED: the worker has not reported since.
    Dispatch,
    /// The worker's (or anyone's) event.
    Other,
}

/// What an http run's driver knows when it decides.
#[derive(Debug, Clone, Copy)]
pub struct HttpState {
    pub ended: bool,
    pub last: Last,
    /// This driver has sent it to the worker.
    pub dispatched_here: bool,
    /// How long ago its last event was.
    pub quiet: Duration,
}

/// An http run's next step: dispatch it unless the worker has reported since it was
/// dispatched or this driver has sent it; then watch the deadline from the last event.
pub fn http_step(state: HttpState, deadline: Duration) -> HttpStep {
    if state.ended {
        return HttpStep::Done;
    }
    if state.last == Last::None || (state.last == Last::Dispatch && !state.dispatched_here) {
        return HttpStep::Dispatch;
    }
    HttpStep::Watch {
        left: deadline.saturating_sub(state.quiet),
    }
}

/// This replica's executor of runs.
pub struct Orchestrator {
    runs: Runs,
    instance: String,
    /// The URL workers reach this server at (for the `eventsUrl` they are sent).
    public_url: String,
    http: reqwest::Client,
    egress: crate::egress::Egress,
    /// Runs driven here (std Mutex: in-memory only).
    driving: Mutex<HashSet<String>>,
}

/// Why a driver stopped early.
enum Stop {
    /// The run ended, or another replica holds it now.
    Finished,
    Failed(RunError),
}

impl From<RunError> for Stop {
    fn from(err: RunError) -> Stop {
        match err {
            RunError::Ended { .. } | RunError::NotFound(_) => Stop::Finished,
            other => Stop::Failed(other),
        }
    }
}

impl Orchestrator {
    /// `egress` says where workers may be (their URLs are guarded as webhooks are).
    pub fn new(
        runs: Runs,
        instance: String,
        public_url: &str,
        egress: crate::egress::Egress,
    ) -> Orchestrator {
        Orchestrator {
            runs,
            instance,
            public_url: public_url.trim_end_matches('/').to_owned(),
            http: egress.client(Some(Duration::from_secs(10))),
            egress,
            driving: Mutex::new(HashSet::new()),
        }
    }

    fn driving(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.driving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The kinds this replica drives (demo and http).
    fn driven_kinds(&self) -> Vec<String> {
        self.runs
            .kinds
            .iter()
            .flat_map(|kinds| kinds.iter())
            .filter(|k| !matches!(k.executor, Executor::External))
            .map(|k| k.name.clone())
            .collect()
    }

    /// Claims and drives runs until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        shutdown: CancellationToken,
        tasks: tokio_util::task::TaskTracker,
    ) {
        let kinds = self.driven_kinds();
        if kinds.is_empty() || self.runs.connector.until_ready(&shutdown).await.is_none() {
            return;
        }
        let mut announcements = self.runs.bus().statuses();
        self.claim_until(&kinds, &mut announcements, &shutdown, &tasks)
            .await;
        // Shutting down: hand the runs held here over at once (rather than when the leases
        // expire). A driver still appending is refused by the seq it expects.
        if let Ok(client) = self.runs.client().await {
            let released = client
                .execute(
                    "UPDATE viewcast_runs SET executor_owner = NULL, executor_lease_until = NULL \
                     WHERE executor_owner = $1 AND status IN ('pending', 'running')",
                    &[&self.instance],
                )
                .await;
            if let Err(err) = released {
                tracing::warn!(error = %err, "could not release the runs driven here");
            }
        }
    }

    async fn claim_until(
        self: &Arc<Self>,
        kinds: &[String],
        announcements: &mut tokio::sync::broadcast::Receiver<super::Announcement>,
        shutdown: &CancellationToken,
        tasks: &tokio_util::task::TaskTracker,
    ) {
        loop {
            match self.claim(kinds).await {
                Ok(claimed) => {
                    for id in claimed {
                        let this = self.clone();
                        let stop = shutdown.clone();
                        tasks.spawn(async move {
                            this.drive(&id, stop).await;
                            this.driving().remove(&id);
                        });
                    }
                }
                Err(err) => tracing::warn!(error = %err, "cannot claim runs; retrying"),
            }
            // Woken early when a run is created (it may be one of ours to drive).
            let deadline = tokio::time::Instant::now() + ROUND;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep_until(deadline) => break,
                    a = announcements.recv() => match a {
                        Ok(a) if a.status == "pending" => break,
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            tokio::time::sleep_until(deadline).await;
                            break;
                        }
                    },
                }
            }
        }
    }

    /// Renews the leases of the runs driven here and claims runs nobody drives; returns the
    /// newly claimed ones (marked as driven here).
    async fn claim(&self, kinds: &[String]) -> Result<Vec<String>, RunError> {
        let client = self.runs.client().await?;
        let driving: Vec<String> = self.driving().iter().cloned().collect();
        client
            .execute(
                "UPDATE viewcast_runs SET executor_lease_until = now() + make_interval(secs => $3) \
                 WHERE executor_owner = $1 AND id = ANY($2::text[]::uuid[]) \
                   AND status IN ('pending', 'running')",
                &[&self.instance, &driving, &LEASE_SECS],
            )
            .await?;
        let rows = client
            .query(
                "UPDATE viewcast_runs SET executor_owner = $1, \
                     executor_lease_until = now() + make_interval(secs => $4) \
                 WHERE id IN ( \
                     SELECT id FROM viewcast_runs \
                     WHERE status IN ('pending', 'running') AND kind = ANY($2) \
                       AND (executor_owner IS NULL OR executor_lease_until < now() \
                            OR (executor_owner = $1 AND NOT id = ANY($3::text[]::uuid[]))) \
                     ORDER BY created_at LIMIT 200 FOR UPDATE SKIP LOCKED) \
                 RETURNING id::text",
                &[&self.instance, &kinds, &driving, &LEASE_SECS],
            )
            .await?;
        let mut driving = self.driving();
        Ok(rows
            .iter()
            .map(|r| r.get::<_, String>(0))
            .filter(|id| driving.insert(id.clone()))
            .collect())
    }

    /// Whether this replica still holds run `id` (and renews the lease if so).
    async fn holds(&self, id: &str) -> Result<bool, RunError> {
        let client = self.runs.client().await?;
        let n = client
            .execute(
                "UPDATE viewcast_runs SET executor_lease_until = now() + make_interval(secs => $3) \
                 WHERE id = $1::text::uuid AND executor_owner = $2",
                &[&id, &self.instance, &LEASE_SECS],
            )
            .await?;
        Ok(n == 1)
    }

    async fn drive(&self, id: &str, shutdown: CancellationToken) {
        let result = async {
            let run = self.runs.get(id).await?;
            let Some(kind) = self.runs.kind(&run.kind) else {
                self.fail(
                    &run,
                    &format!("run kind {:?} is no longer declared", run.kind),
                )
                .await?;
                return Ok(());
            };
            match kind.executor {
                Executor::Demo { items, item } => {
                    self.drive_demo(&run, items, item, &shutdown).await
                }
                Executor::Http { url, deadline } => {
                    self.drive_http(&run, &url, deadline, &shutdown).await
                }
                Executor::External => Ok(()),
            }
        }
        .await;
        match result {
            Ok(()) | Err(Stop::Finished) => {}
            Err(Stop::Failed(err)) => {
                tracing::warn!(run = %id, error = %err, "run driver stopped; it is claimed again");
            }
        }
    }

    /// Waits `duration`, ending early at shutdown (false) or when the run ends (false).
    async fn wait(&self, id: &str, duration: Duration, shutdown: &CancellationToken) -> bool {
        let channel = self.runs.bus().channel(id);
        let mut published = channel.watch();
        let ended = async {
            loop {
                if published.borrow_and_update().ended {
                    return;
                }
                if published.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            () = tokio::time::sleep(duration) => true,
            () = shutdown.cancelled() => false,
            () = ended => false,
        }
    }

    /// Appends `event` at `next_seq` if this replica still holds the run.
    async fn persist(&self, run_id: &str, next_seq: i64, event: NewEvent) -> Result<(), Stop> {
        if !self.holds(run_id).await? {
            return Err(Stop::Finished);
        }
        match self.runs.append(run_id, &[event], Some(next_seq)).await {
            Ok(_) | Err(RunError::SeqMismatch { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    async fn drive_demo(
        &self,
        run: &Run,
        items: u32,
        item: Duration,
        shutdown: &CancellationToken,
    ) -> Result<(), Stop> {
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let current = self.runs.get(&run.id).await?;
            if current.is_ended() {
                return Ok(());
            }
            let last = self
                .runs
                .last_event_of(&run.id, &[STARTED, PROGRESS])
                .await?;
            match demo_step(items, item, last.as_ref()) {
                DemoStep::Advance(event) => {
                    self.persist(&run.id, current.next_seq, event).await?;
                }
                DemoStep::Act { act, event } => {
                    if !self.wait(&run.id, act, shutdown).await {
                        return Ok(());
                    }
                    let next_seq = self.runs.get(&run.id).await?.next_seq;
                    self.persist(&run.id, next_seq, event).await?;
                }
                DemoStep::Done => return Ok(()),
            }
        }
    }

    async fn drive_http(
        &self,
        run: &Run,
        url: &str,
        deadline: Duration,
        shutdown: &CancellationToken,
    ) -> Result<(), Stop> {
        let mut dispatched_here = false;
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let current = self.runs.get(&run.id).await?;
            let last = self.runs.last_event(&run.id).await?;
            let quiet = self.runs.quiet_for(&run.id).await?;
            let state = HttpState {
                ended: current.is_ended(),
                last: match &last {
                    None => Last::None,
                    Some(e) if e.event_type == DISPATCHED => Last::Dispatch,
                    Some(_) => Last::Other,
                },
                dispatched_here,
                quiet,
            };
            match http_step(state, deadline) {
                HttpStep::Dispatch => {
                    if last.is_none() {
                        let event = NewEvent {
                            event_type: DISPATCHED.into(),
                            stage: Some("Dispatch".into()),
                            message: Some(format!("sent to the worker at {url}")),
                            ..NewEvent::default()
                        };
                        self.persist(&run.id, current.next_seq, event).await?;
                    }
                    if let Err(reason) = self.dispatch(&current, url, shutdown).await {
                        self.fail(&current, &reason).await?;
                        return Ok(());
                    }
                    dispatched_here = true;
                }
                HttpStep::Watch { left } if left.is_zero() => {
                    let message = format!(
                        "the worker reported nothing for {} s (deadline_s)",
                        deadline.as_secs()
                    );
                    self.fail(&current, &message).await?;
                    return Ok(());
                }
                HttpStep::Watch { left } => {
                    // Woken by the run's next published event, or at the deadline.
                    let channel = self.runs.bus().channel(&run.id);
                    let mut published = channel.watch();
                    published.borrow_and_update();
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(left.min(ROUND * 5)) => {}
                        _ = published.changed() => {}
                    }
                    if !self.holds(&run.id).await? {
                        return Ok(());
                    }
                }
                HttpStep::Done => return Ok(()),
            }
        }
    }

    /// POSTs the run to its worker, retrying; the reason it could not, if so.
    async fn dispatch(
        &self,
        run: &Run,
        url: &str,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        let token = self
            .runs
            .worker_token(&run.id)
            .await
            .map_err(|e| e.to_string())?;
        let body = json!({
            "run": run.to_json(),
            "token": token,
            "eventsUrl": format!("{}/runs/{}/events", self.public_url, run.id),
            "graphqlUrl": format!("{}/graphql", self.public_url),
        })
        .to_string();
        // Messages (and the run's FAILED event) name the worker by scheme and host only.
        let shown = crate::egress::redact_url(url);
        // A name is checked as the client connects; a host written as an address, here.
        if let Ok(target) = crate::trigger::parse_target(url)
            && target.host.parse::<std::net::IpAddr>().is_ok()
            && let Err(err) = self.egress.resolve(&target.host).await
        {
            return Err(format!(
                "the worker {shown}: {err} (--worker-allow-private)"
            ));
        }
        let mut last_error = String::new();
        for attempt in 0..DISPATCH_ATTEMPTS {
            if attempt > 0 {
                let backoff = Duration::from_millis(500 << (attempt - 1));
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(backoff) => {}
                }
            }
            let sent = self
                .http
                .post(url)
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {token}"))
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => return Ok(()),
                // The worker refused the run itself: asking again would not change that.
                Ok(response)
                    if response.status().is_client_error()
                        && !matches!(response.status().as_u16(), 408 | 429) =>
                {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    let body: String = body.chars().take(300).collect();
                    return Err(format!("the worker refused the run: {status} {body}")
                        .trim_end()
                        .to_owned());
                }
                Ok(response) => last_error = format!("the worker answered {}", response.status()),
                Err(err) if crate::egress::refusal(&err).is_some() => {
                    return Err(format!(
                        "the worker {shown}: {} (--worker-allow-private)",
                        crate::egress::describe_error(&err, Duration::from_secs(10))
                    ));
                }
                Err(err) => {
                    last_error = format!(
                        "the worker is unreachable: {}",
                        crate::egress::describe_error(&err, Duration::from_secs(10))
                    );
                }
            }
            tracing::warn!(run = %run.id, worker = %shown, attempt, error = %last_error, "dispatching a run failed");
        }
        Err(format!(
            "{last_error} (after {DISPATCH_ATTEMPTS} attempts to reach {shown})"
        ))
    }

    /// Ends the run with FAILED (unless it has ended meanwhile).
    async fn fail(&self, run: &Run, message: &str) -> Result<(), Stop> {
        let event = NewEvent {
            event_type: "FAILED".into(),
            message: Some(message.to_owned()),
            ..NewEvent::default()
        };
        match self.runs.append(&run.id, &[event], None).await {
            Ok(_) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(e: &NewEvent, seq: i64) -> Event {
        Event {
            run_id: "r".into(),
            seq,
            event_type: e.event_type.clone(),
            stage: e.stage.clone(),
            message: e.message.clone(),
            percentage: e.percentage,
            counters: e.counters.clone(),
            data: e.data.clone(),
            created_at: String::new(),
        }
    }

    /// Walks the demo machine from nothing to the end, as a driver would, and returns the
    /// events it persists.
    fn walk(items: u32, resume_at: Option<usize>) -> Vec<Event> {
        let item = Duration::from_millis(5);
        let mut events: Vec<Event> = Vec::new();
        let mut crashed = false;
        for _ in 0..1_000 {
            let last = events.iter().rev().find(|e| {
                e.event_type == STARTED
                    || e.event_type == PROGRESS
                    || TERMINAL.contains(&e.event_type.as_str())
            });
            match demo_step(items, item, last) {
                DemoStep::Advance(event) => {
                    events.push(stored(&event, events.len() as i64 + 1));
                }
                DemoStep::Act { act, event } => {
                    assert_eq!(act, item);
                    // A crash between the announcement and the work: the next driver starts
                    // from the same state and does the same work.
                    if resume_at == Some(events.len()) && !crashed {
                        crashed = true;
                        continue;
                    }
                    events.push(stored(&event, events.len() as i64 + 1));
                }
                DemoStep::Done => return events,
            }
        }
        panic!("the demo never finished")
    }

    #[test]
    fn the_demo_goes_start_process_finish_with_progress() {
        let events = walk(3, None);
        let summary: Vec<(&str, Option<&str>, Option<f64>)> = events
            .iter()
            .map(|e| (e.event_type.as_str(), e.message.as_deref(), e.percentage))
            .collect();
        assert_eq!(
            summary,
            [
                ("STARTED", Some("3 items to process"), Some(0.0)),
                ("PROGRESS", Some("item 1 of 3"), Some(0.0)),
                ("PROGRESS", Some("item 2 of 3"), Some(100.0 / 3.0)),
                ("PROGRESS", Some("item 3 of 3"), Some(200.0 / 3.0)),
                ("COMPLETED", Some("processed 3 items"), Some(100.0)),
            ]
        );
        assert_eq!(events[4].counters, Some(counters(3, 3)));
    }

    #[test]
    fn a_demo_resumed_after_a_crash_persists_each_transition_once() {
        for crash in 0..6 {
            assert_eq!(walk(4, Some(crash)), walk(4, None), "crash at {crash}");
        }
    }

    #[test]
    fn a_demo_step_after_a_foreign_event_or_the_end() {
        let log = stored(
            &NewEvent {
                event_type: "LOG".into(),
                ..NewEvent::default()
            },
            2,
        );
        // A LOG is not a demo state: the driver only looks at STARTED and PROGRESS, but a
        // bare last event of another type starts processing.
        assert!(matches!(
            demo_step(2, Duration::ZERO, Some(&log)),
            DemoStep::Advance(_)
        ));
        let done = stored(
            &NewEvent {
                event_type: "CANCELLED".into(),
                ..NewEvent::default()
            },
            3,
        );
        assert_eq!(demo_step(2, Duration::ZERO, Some(&done)), DemoStep::Done);
    }

    #[test]
    fn http_runs_are_dispatched_once_per_driver_then_watched_against_the_deadline() {
        let minute = Duration::from_secs(60);
        let s = Duration::from_secs;
        let state = |last, dispatched_here, quiet| HttpState {
            ended: false,
            last,
            dispatched_here,
            quiet,
        };
        assert_eq!(
            http_step(state(Last::None, false, s(0)), minute),
            HttpStep::Dispatch
        );
        // Dispatched by an earlier driver (crash or takeover), the worker silent: again.
        assert_eq!(
            http_step(state(Last::Dispatch, false, s(5)), minute),
            HttpStep::Dispatch
        );
        // Dispatched here: watch.
        assert_eq!(
            http_step(state(Last::Dispatch, true, s(5)), minute),
            HttpStep::Watch { left: s(55) }
        );
        // The worker reported: watch from its last event, whoever dispatched.
        assert_eq!(
            http_step(state(Last::Other, false, s(59)), minute),
            HttpStep::Watch { left: s(1) }
        );
        assert_eq!(
            http_step(state(Last::Other, true, s(61)), minute),
            HttpStep::Watch {
                left: Duration::ZERO
            }
        );
        let ended = HttpState {
            ended: true,
            ..state(Last::Other, false, s(0))
        };
        assert_eq!(http_step(ended, minute), HttpStep::Done);
    }
}
