//! Evaluation: one task per source with triggers reads every batch of the source's hub (the
//! log, never conflated) and moves each trigger's keys in and out of its condition.
//!
//! A key **enters** when `fire` holds and **leaves** when `fire` does not hold and `clear`
//! (default: not `fire`) holds, or when its row is deleted; changes while inside send nothing.
//! Conditions are evaluated once per distinct condition per change, whatever the number of
//! triggers sharing them. Each batch's transitions — the FIRE/CLEAR deliveries and the inside
//! keys — are written to the store in one transaction before anything is sent.
//!
//! A new trigger's state is established from the rows at its creation: the hub's batch
//! boundary then (on the replica that created it; when the source was not synced, the first
//! snapshot after creation), or the upstream position then (another replica). Those rows
//! enter without a FIRE (or with one, with `fire_existing`); later batches are applied as
//! usual, however late the evaluator gets to the trigger. A trigger with stored state (a
//! restart, a takeover, or after falling behind the hub's log) is compared with the rows: a
//! FIRE for each row that entered and a CLEAR for each key that left while it was not
//! evaluated. On Materialize and RisingWave a trigger sees the view at each timestamp (epoch):
//! a row that enters and leaves within one is never inside.
//!
//! Each trigger is evaluated by one replica: the one holding its advisory lock. The position
//! each replica's written state reflects is stored (`viewcast_trigger_positions`); a replica
//! taking a trigger over waits until its own view of the source is that far (at most
//! `CATCH_UP`), so it never compares the stored keys with older rows.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::model::Trigger;
use super::payload::{self, EventType};
use super::{Triggers, sender};
use crate::config::SourceDef;
use crate::feed::Position;
use crate::hub::{AppliedBatch, Hub, LogError, LogRead, RowChange};
use crate::store::{Store, StoreError};
use crate::value::Row;

/// How often a replica retries taking over triggers another one owns.
const OWNERSHIP_RETRY: Duration = Duration::from_secs(5);

/// One trigger as its evaluator holds it.
struct State {
    trigger: Arc<Trigger>,
    /// Keys inside the condition (JSON text) → the row as last seen inside.
    inside: HashMap<String, Value>,
    /// Last FIRE per key, for the cooldown.
    last_fire: HashMap<String, Instant>,
}

/// A transition to persist.
struct Transition {
    trigger: Arc<Trigger>,
    event: EventType,
    body: Value,
    id: String,
}

/// What a batch does to the store.
#[derive(Default)]
struct Writes {
    transitions: Vec<Transition>,
    /// (trigger, key, Some(row): now inside with this row / None: left).
    keys: Vec<(Arc<Trigger>, Value, Option<Value>)>,
    initialized: Vec<Arc<Trigger>>,
    /// The position the written state reflects (saved with the keys).
    reached: Option<Position>,
}

fn now_rfc3339() -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        rest / 3600,
        (rest / 60) % 60,
        rest % 60,
        now.subsec_micros()
    )
}

/// Where and when a transition happened: the source position it was read at (part of the
/// event id) and the wall-clock time put in the body.
#[derive(Clone, Copy)]
struct Stamp<'a> {
    position: Position,
    at: &'a str,
}

impl State {
    fn transition(
        &mut self,
        writes: &mut Writes,
        event: EventType,
        key: &Value,
        old: Option<&Value>,
        new: Option<&Value>,
        stamp: Stamp<'_>,
    ) {
        let id = payload::event_id(&self.trigger, key, event, stamp.position);
        let body = payload::body(&self.trigger, event, &id, stamp.at, old, new);
        writes.transitions.push(Transition {
            trigger: self.trigger.clone(),
            event,
            body,
            id,
        });
    }

    /// A key leaves: CLEAR with `old` (default: the row as last seen inside) and `new`.
    fn clear(
        &mut self,
        writes: &mut Writes,
        key: &Value,
        key_string: &str,
        old: Option<Value>,
        new: Option<&Value>,
        stamp: Stamp<'_>,
    ) {
        let last = self.inside.remove(key_string);
        let old = old.or(last);
        self.transition(writes, EventType::Clear, key, old.as_ref(), new, stamp);
        writes.keys.push((self.trigger.clone(), key.clone(), None));
    }

    /// Whether a row inside leaves (`fire` fails and `clear` holds).
    fn leaves(&self, fire: bool, row: &Row) -> bool {
        !fire
            && self
                .trigger
                .spec
                .clear
                .as_ref()
                .is_none_or(|clear| clear.matches(row))
    }
}

/// Evaluates the triggers of one source until shutdown.
pub(super) async fn run(
    triggers: Arc<Triggers>,
    store: Store,
    hub: Arc<Hub>,
    shared: Arc<sender::Shared>,
    shutdown: CancellationToken,
) {
    let source = hub.source().clone();
    // Deliveries are sent by the source's dispatcher, for the triggers evaluated here.
    let dispatcher = triggers.owned(&source.name);
    dispatcher.set(Vec::new());
    tokio::spawn(sender::dispatch(
        source.name.clone(),
        dispatcher.clone(),
        shared,
        shutdown.clone(),
    ));
    let mut changes = triggers.watch_changes();
    let mut head_rx = hub.watch_head();
    let mut status_rx = hub.watch_status();
    let mut states: Vec<State> = Vec::new();
    // Processed through this batch; `None`: establish every state from the rows.
    let mut seq: Option<u64> = None;
    let mut owner = loop {
        match Owner::connect(&store).await {
            Ok(owner) => break owner,
            Err(err) => {
                tracing::warn!(source = %source.name, error = %err, "trigger evaluation waits for the store");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let mut claim = true;
    // Claimed, not yet established (the source is not synced, or not as far as a trigger's
    // creation).
    let mut pending: Vec<Arc<Trigger>> = Vec::new();
    // When a taken-over trigger started waiting for this replica's view to catch up.
    let mut waits: HashMap<usize, Instant> = HashMap::new();
    // Claims are retried on a schedule that a busy source (woken constantly) cannot postpone.
    let mut next_claim = tokio::time::Instant::now() + OWNERSHIP_RETRY;
    loop {
        // A change noticed with another wake-up still asks for a claim.
        if changes.has_changed().unwrap_or(false) {
            claim = true;
        }
        if tokio::time::Instant::now() >= next_claim {
            claim = true;
        }
        changes.borrow_and_update();
        head_rx.borrow_and_update();
        status_rx.borrow_and_update();
        let wanted = triggers.list(&source.name);
        states.retain(|s| wanted.iter().any(|t| Arc::ptr_eq(t, &s.trigger)));
        pending.retain(|p| wanted.iter().any(|t| Arc::ptr_eq(t, p)));
        owner.release_missing(&wanted).await;
        // Triggers this replica takes over now (new ones, or ones another replica left).
        // The locks it holds live as long as their connection: it is checked first.
        let alive = if claim { owner.ping().await } else { Ok(()) };
        if claim && alive.is_ok() {
            next_claim = tokio::time::Instant::now() + OWNERSHIP_RETRY;
            owner.claim_new(&wanted, &states, &mut pending).await;
            claim = false;
        }
        let result = match alive {
            Ok(()) => {
                let mut evaluation = Evaluation {
                    store: &store,
                    hub: &hub,
                    instance: &triggers.settings.instance,
                    waits: &mut waits,
                };
                evaluation.step(&mut states, &mut seq, &mut pending).await
            }
            Err(err) => Err(err),
        };
        tracing::trace!(source = %source.name, evaluated = states.len(), seq = ?seq, result = ?result, "trigger evaluation step");
        dispatcher.set(states.iter().map(|s| s.trigger.clone()).collect());
        match result {
            Ok(saved) => dispatcher.saved(&saved),
            Err(err) => {
                // Nothing of this read was saved: start over from the rows.
                tracing::warn!(source = %source.name, error = %err, "trigger evaluation lost the store; starting over from the rows once it is back");
                seq = None;
                states.clear();
                pending.clear();
                owner.reset().await;
                claim = true;
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                if let Err(err) = owner.reconnect(&store).await {
                    tracing::warn!(source = %source.name, error = %err, "trigger ownership connection lost");
                }
                continue;
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = changes.changed() => claim = true,
            _ = head_rx.changed() => {}
            _ = status_rx.changed() => {}
            () = tokio::time::sleep_until(next_claim) => claim = true,
        }
    }
}

/// One evaluation step's context.
struct Evaluation<'a> {
    store: &'a Store,
    hub: &'a Hub,
    /// This server's name (the stored position of its writes).
    instance: &'a str,
    /// When each taken-over trigger started waiting for this replica's view to catch up.
    waits: &'a mut HashMap<usize, Instant>,
}

/// How long a trigger taken over waits for this replica's view of the source to reach the
/// stored state's position; after that (the upstream was reset, say) it goes on, with a warning.
const CATCH_UP: Duration = Duration::from_secs(30);

impl Evaluation<'_> {
    /// Reads what the hub applied since the last step, establishes the triggers in `pending`
    /// that can be, and saves the transitions; returns the triggers with new deliveries.
    async fn step(
        &mut self,
        states: &mut Vec<State>,
        seq: &mut Option<u64>,
        pending: &mut Vec<Arc<Trigger>>,
    ) -> Result<Vec<Arc<Trigger>>, StoreError> {
        let (store, hub) = (self.store, self.hub);
        // A new trigger is established at its creation position, which may be in the log.
        let history = !pending.is_empty();
        let after = if history { 0 } else { seq.unwrap_or(0) };
        let read = match hub.read_log(after, seq.is_none() || history) {
            Err(LogError::NotSynced) => return Ok(Vec::new()),
            Err(LogError::Behind) => hub
                .read_log(0, true)
                .map_err(|_| StoreError::Unavailable("the source is not synced".into()))?,
            Ok(read) => read,
        };
        let mut writes = Writes::default();
        let at = now_rfc3339();
        // Whether the states evaluated so far can go on from the batches read.
        let continuous = seq.is_some_and(|seq| {
            seq >= read.head || read.batches.first().is_some_and(|b| b.seq <= seq + 1)
        });
        if continuous {
            let done = seq.unwrap_or(0);
            for batch in read.batches.iter().filter(|b| b.seq > done) {
                apply_batch(states, &batch.changes, batch.position, &at, &mut writes);
            }
        }
        let rows = read.rows.as_deref().unwrap_or_default();
        if !continuous && !states.is_empty() {
            tracing::warn!(source = %hub.source().name, "trigger evaluation fell behind the source's history; comparing with the rows");
            for state in std::mem::take(states) {
                let stored = Stored::load(store, &state.trigger).await?;
                let stamp = Stamp {
                    position: read.position,
                    at: &at,
                };
                states.push(establish(state.trigger, stored, rows, stamp, &mut writes));
            }
        }
        let mut waiting = Vec::new();
        for trigger in pending.drain(..) {
            let stored = Stored::load(store, &trigger).await?;
            let since = if stored.initialized {
                self.caught_up(&trigger, stored.position, read.position)
            } else {
                creation(&trigger, &read)
            };
            let (later, position) = match since {
                Since::Wait => {
                    waiting.push(trigger);
                    continue;
                }
                Since::Now => (Vec::new(), read.position),
                Since::Batches(later) => {
                    // The position at creation (part of the ids of events found there).
                    let position = trigger.created_position.unwrap_or_else(|| {
                        read.batches
                            .iter()
                            .rev()
                            .find(|b| later.first().is_none_or(|first| b.seq < first.seq))
                            .map_or(read.position, |b| b.position)
                    });
                    (later, position)
                }
            };
            // The rows at creation: undo the batches after it, establish, then apply them.
            let before = rows_before(&trigger.source, rows, &later);
            let stamp = Stamp { position, at: &at };
            let mut state = [establish(trigger, stored, &before, stamp, &mut writes)];
            for batch in later {
                apply_batch(&mut state, &batch.changes, batch.position, &at, &mut writes);
            }
            let [state] = state;
            states.push(state);
        }
        *pending = waiting;
        let saved: Vec<Arc<Trigger>> = {
            let mut seen = std::collections::HashSet::new();
            writes
                .transitions
                .iter()
                .filter(|t| seen.insert(Arc::as_ptr(&t.trigger) as usize))
                .map(|t| t.trigger.clone())
                .collect()
        };
        if !writes.keys.is_empty() {
            writes.reached = Some(read.position);
        }
        persist(store, &hub.source().name, self.instance, writes).await?;
        *seq = Some(read.head);
        Ok(saved)
    }

    /// Whether this replica's view (at `now`) has reached the stored state of a trigger it
    /// takes over (written at `stored`), or has waited long enough.
    fn caught_up(
        &mut self,
        trigger: &Arc<Trigger>,
        stored: Option<Position>,
        now: Position,
    ) -> Since<'static> {
        let key = Arc::as_ptr(trigger) as usize;
        let Some(stored) = stored.filter(|&stored| stored > now) else {
            self.waits.remove(&key);
            return Since::Now;
        };
        let since = *self.waits.entry(key).or_insert_with(Instant::now);
        if since.elapsed() < CATCH_UP {
            return Since::Wait;
        }
        self.waits.remove(&key);
        tracing::warn!(source = %trigger.source.name, trigger = %trigger.spec.name, stored = ?stored, now = ?now, "this server's view of the source is behind the trigger's stored state and did not catch up; going on from the rows it has");
        Since::Now
    }
}

/// Where a trigger's state is established from.
enum Since<'a> {
    /// The rows read now.
    Now,
    /// The rows before these batches (the trigger was created before them).
    Batches(Vec<&'a Arc<AppliedBatch>>),
    /// Not read yet: the source is not as far as the trigger's creation.
    Wait,
}

/// The batches read after a new trigger's creation: by the hub's boundary on the replica
/// that created it, else by the upstream position (another replica, or a restart).
fn creation<'a>(trigger: &Trigger, read: &'a LogRead) -> Since<'a> {
    let after: Vec<&Arc<AppliedBatch>> = match (trigger.created_boundary, trigger.created_position)
    {
        (Some(boundary), _) if boundary > read.head => return Since::Wait,
        (Some(boundary), _) => read.batches.iter().filter(|b| b.seq > boundary).collect(),
        (None, Some(position)) if position > read.position => return Since::Wait,
        (None, Some(position)) => read
            .batches
            .iter()
            .filter(|b| b.position > position)
            .collect(),
        (None, None) => return Since::Now,
    };
    if after.len() == read.batches.len() && !after.is_empty() {
        tracing::debug!(source = %trigger.source.name, trigger = %trigger.spec.name, "the source's history no longer reaches the trigger's creation; rows matching at the oldest point kept count as matching at creation");
    }
    Since::Batches(after)
}

/// The rows before `batches` were applied to `rows`: the batches undone, newest first.
fn rows_before(
    source: &SourceDef,
    rows: &[Arc<Row>],
    batches: &[&Arc<AppliedBatch>],
) -> Vec<Arc<Row>> {
    if batches.is_empty() {
        return rows.to_vec();
    }
    let key = |row: &Row| payload::key_json(source, row).to_string();
    let mut by_key: HashMap<String, Arc<Row>> =
        rows.iter().map(|row| (key(row), row.clone())).collect();
    for batch in batches.iter().rev() {
        for change in batch.changes.iter().rev() {
            match change {
                RowChange::Insert(new) => {
                    by_key.remove(&key(new));
                }
                RowChange::Update { old, .. } | RowChange::Delete(old) => {
                    by_key.insert(key(old), old.clone());
                }
            }
        }
    }
    by_key.into_values().collect()
}

/// Moves keys in and out for one batch.
fn apply_batch(
    states: &mut [State],
    changes: &[RowChange],
    position: Position,
    at: &str,
    writes: &mut Writes,
) {
    let Some(first) = states.first() else {
        return;
    };
    let source = first.trigger.source.clone();
    // Distinct `fire` conditions: each is evaluated once per change, whatever the number of
    // triggers sharing it.
    let mut conditions: Vec<crate::filter::Filter> = Vec::new();
    let condition_of: Vec<usize> = states
        .iter()
        .map(|s| {
            let fire = &s.trigger.spec.fire;
            conditions
                .iter()
                .position(|c| c.canonical() == fire.canonical())
                .unwrap_or_else(|| {
                    conditions.push(fire.clone());
                    conditions.len() - 1
                })
        })
        .collect();
    let mut fired: Vec<Option<bool>> = vec![None; conditions.len()];
    for change in changes {
        let (old, new) = match change {
            RowChange::Insert(new) => (None, Some(new)),
            RowChange::Update { old, new, .. } => (Some(old), Some(new)),
            RowChange::Delete(old) => (Some(old), None),
        };
        let Some(any) = new.or(old) else { continue };
        let stamp = Stamp { position, at };
        let key = payload::key_json(&source, any);
        let key_string = key.to_string();
        fired.fill(None);
        for (state, &condition) in states.iter_mut().zip(&condition_of) {
            let fields = state.trigger.spec.fields.clone();
            let render = |row: &Row| payload::row_json(&source, row, fields.as_deref());
            let inside = state.inside.contains_key(&key_string);
            let Some(row) = new else {
                if inside {
                    let old_json = old.map(|r| render(r));
                    state.clear(writes, &key, &key_string, old_json, None, stamp);
                }
                continue;
            };
            let fire = *fired[condition].get_or_insert_with(|| conditions[condition].matches(row));
            if inside {
                let new_json = render(row);
                if state.leaves(fire, row) {
                    state.clear(writes, &key, &key_string, None, Some(&new_json), stamp);
                } else {
                    state.inside.insert(key_string.clone(), new_json.clone());
                    writes
                        .keys
                        .push((state.trigger.clone(), key.clone(), Some(new_json)));
                }
            } else if fire {
                let cooling = state.trigger.spec.cooldown.is_some_and(|cooldown| {
                    state
                        .last_fire
                        .get(&key_string)
                        .is_some_and(|at| at.elapsed() < cooldown)
                });
                if cooling {
                    // Within the cooldown the key stays out; its next change looks again.
                    continue;
                }
                let new_json = render(row);
                let old_json = old.map(|r| render(r));
                state.transition(
                    writes,
                    EventType::Fire,
                    &key,
                    old_json.as_ref(),
                    Some(&new_json),
                    stamp,
                );
                state.last_fire.insert(key_string.clone(), Instant::now());
                state.inside.insert(key_string.clone(), new_json.clone());
                writes
                    .keys
                    .push((state.trigger.clone(), key.clone(), Some(new_json)));
            }
        }
    }
}

/// What the store holds of a trigger's evaluation.
struct Stored {
    /// Its state was established once (a restart compares rows with `keys`).
    initialized: bool,
    /// Keys inside (JSON text) → (key, row as last seen inside).
    keys: HashMap<String, (Value, Value)>,
    /// The furthest position any server wrote the source's trigger state at.
    position: Option<Position>,
}

impl Stored {
    async fn load(store: &Store, trigger: &Trigger) -> Result<Stored, StoreError> {
        let client = store.client().await?;
        let initialized: bool = client
            .query_opt(
                "SELECT initialized FROM viewcast_triggers WHERE source = $1 AND name = $2 AND generation = $3",
                &[&trigger.source.name, &trigger.spec.name, &trigger.generation],
            )
            .await?
            .is_some_and(|r| r.get(0));
        let keys = client
            .query(
                "SELECT key, row FROM viewcast_trigger_keys WHERE source = $1 AND name = $2",
                &[&trigger.source.name, &trigger.spec.name],
            )
            .await?
            .into_iter()
            .map(|r| {
                let key: Value = r.get(0);
                (key.to_string(), (key, r.get(1)))
            })
            .collect();
        let position = client
            .query_one(
                "SELECT max(position) FROM viewcast_trigger_positions WHERE source = $1",
                &[&trigger.source.name],
            )
            .await?
            .get::<_, Option<i64>>(0)
            .map(Position::from_stored);
        Ok(Stored {
            initialized,
            keys,
            position,
        })
    }
}

/// A trigger's state from the rows at a batch boundary (see the module documentation).
fn establish(
    trigger: Arc<Trigger>,
    stored: Stored,
    rows: &[Arc<Row>],
    stamp: Stamp<'_>,
    writes: &mut Writes,
) -> State {
    let Stored {
        initialized,
        keys: stored,
        ..
    } = stored;
    let mut state = State {
        trigger: trigger.clone(),
        inside: stored
            .iter()
            .map(|(k, (_, row))| (k.clone(), row.clone()))
            .collect(),
        last_fire: HashMap::new(),
    };
    let source = trigger.source.clone();
    let fields = trigger.spec.fields.clone();
    let mut seen = std::collections::HashSet::new();
    for row in rows {
        let key = payload::key_json(&source, row);
        let key_string = key.to_string();
        seen.insert(key_string.clone());
        let fire = trigger.spec.fire.matches(row);
        let json = payload::row_json(&source, row, fields.as_deref());
        if state.inside.contains_key(&key_string) {
            if state.leaves(fire, row) {
                state.clear(writes, &key, &key_string, None, Some(&json), stamp);
            } else if state.inside.get(&key_string) != Some(&json) {
                state.inside.insert(key_string, json.clone());
                writes.keys.push((trigger.clone(), key, Some(json)));
            }
        } else if fire {
            if initialized || trigger.spec.fire_existing {
                state.transition(writes, EventType::Fire, &key, None, Some(&json), stamp);
            }
            state.inside.insert(key_string, json.clone());
            writes.keys.push((trigger.clone(), key, Some(json)));
        }
    }
    // Keys inside whose rows are gone left while the trigger was not evaluated.
    for (key_string, (key, _)) in &stored {
        if !seen.contains(key_string) {
            state.clear(writes, key, key_string, None, None, stamp);
        }
    }
    if !initialized {
        writes.initialized.push(trigger);
    }
    state
}

/// Writes a read's transitions and key changes in one transaction (nothing for a trigger
/// deleted meanwhile, here or on another replica: this evaluator drops it on its next step).
async fn persist(
    store: &Store,
    source: &str,
    instance: &str,
    writes: Writes,
) -> Result<(), StoreError> {
    if writes.transitions.is_empty() && writes.keys.is_empty() && writes.initialized.is_empty() {
        return Ok(());
    }
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    let insert = tx
        .prepare(
            "INSERT INTO viewcast_deliveries (event_id, source, trigger_name, generation, event_type, payload) \
             SELECT $1, $2, $3, $4, $5, $6 WHERE EXISTS (SELECT 1 FROM viewcast_triggers \
                 WHERE source = $2 AND name = $3 AND generation = $4) \
             ON CONFLICT (event_id) DO NOTHING",
        )
        .await?;
    for t in &writes.transitions {
        tracing::debug!(source = %t.trigger.source.name, trigger = %t.trigger.spec.name, event = t.event.as_str(), event_id = %t.id, "transition");
        tx.execute(
            &insert,
            &[
                &t.id,
                &t.trigger.source.name,
                &t.trigger.spec.name,
                &t.trigger.generation,
                &t.event.as_str(),
                &t.body,
            ],
        )
        .await?;
    }
    let upsert = tx
        .prepare(
            "INSERT INTO viewcast_trigger_keys (source, name, key, row) \
             SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM viewcast_triggers \
                 WHERE source = $1 AND name = $2 AND generation = $5) \
             ON CONFLICT (source, name, key) DO UPDATE SET row = excluded.row",
        )
        .await?;
    let remove = tx
        .prepare(
            "DELETE FROM viewcast_trigger_keys WHERE source = $1 AND name = $2 AND key = $3 \
             AND EXISTS (SELECT 1 FROM viewcast_triggers \
                 WHERE source = $1 AND name = $2 AND generation = $4)",
        )
        .await?;
    for (trigger, key, row) in &writes.keys {
        match row {
            Some(row) => {
                tx.execute(
                    &upsert,
                    &[
                        &trigger.source.name,
                        &trigger.spec.name,
                        key,
                        row,
                        &trigger.generation,
                    ],
                )
                .await?;
            }
            None => {
                tx.execute(
                    &remove,
                    &[
                        &trigger.source.name,
                        &trigger.spec.name,
                        key,
                        &trigger.generation,
                    ],
                )
                .await?;
            }
        }
    }
    if let Some(position) = writes.reached {
        tx.execute(
            "INSERT INTO viewcast_trigger_positions (source, instance, position) VALUES ($1, $2, $3) \
             ON CONFLICT (source, instance) DO UPDATE SET position = excluded.position",
            &[&source, &instance, &position.to_stored()],
        )
        .await?;
    }
    for trigger in &writes.initialized {
        tx.execute(
            "UPDATE viewcast_triggers SET initialized = true WHERE source = $1 AND name = $2 AND generation = $3",
            &[&trigger.source.name, &trigger.spec.name, &trigger.generation],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The connection that holds this replica's advisory locks on the triggers it evaluates.
struct Owner {
    client: deadpool_postgres::Object,
    held: Vec<Arc<Trigger>>,
}

fn lock_key(trigger: &Trigger) -> String {
    format!(
        "viewcast trigger {}/{}",
        trigger.source.name, trigger.spec.name
    )
}

impl Owner {
    async fn connect(store: &Store) -> Result<Owner, StoreError> {
        Ok(Owner {
            client: store.client().await?,
            held: Vec::new(),
        })
    }

    async fn reconnect(&mut self, store: &Store) -> Result<(), StoreError> {
        *self = Owner::connect(store).await?;
        Ok(())
    }

    /// Checks the connection that holds the locks (if it died, so did they: another replica
    /// may evaluate the triggers now).
    async fn ping(&self) -> Result<(), StoreError> {
        self.client.simple_query("").await?;
        Ok(())
    }

    /// Takes the trigger's lock if no other replica holds it.
    async fn claim(&mut self, trigger: &Arc<Trigger>) -> Result<bool, StoreError> {
        if self.held.iter().any(|t| Arc::ptr_eq(t, trigger)) {
            return Ok(true);
        }
        let row = self
            .client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                &[&lock_key(trigger)],
            )
            .await?;
        let won: bool = row.get(0);
        if won {
            self.held.push(trigger.clone());
        }
        Ok(won)
    }

    /// Claims the `wanted` triggers not evaluated here yet; those won go to `pending`.
    async fn claim_new(
        &mut self,
        wanted: &[Arc<Trigger>],
        states: &[State],
        pending: &mut Vec<Arc<Trigger>>,
    ) {
        for trigger in wanted {
            let known = |t: &Arc<Trigger>| Arc::ptr_eq(t, trigger);
            if states.iter().any(|s| known(&s.trigger)) || pending.iter().any(known) {
                continue;
            }
            match self.claim(trigger).await {
                Ok(true) => pending.push(trigger.clone()),
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(source = %trigger.source.name, trigger = %trigger.spec.name, error = %err, "cannot claim a trigger");
                }
            }
        }
    }

    /// Releases the locks of triggers that were deleted.
    async fn release_missing(&mut self, wanted: &[Arc<Trigger>]) {
        let (keep, gone): (Vec<_>, Vec<_>) = self
            .held
            .drain(..)
            .partition(|t| wanted.iter().any(|w| Arc::ptr_eq(w, t)));
        self.held = keep;
        for trigger in gone {
            let _ = self
                .client
                .execute(
                    "SELECT pg_advisory_unlock(hashtextextended($1, 0))",
                    &[&lock_key(&trigger)],
                )
                .await;
        }
    }

    /// Gives up every lock (state is established again).
    async fn reset(&mut self) {
        self.held.clear();
        let _ = self
            .client
            .execute("SELECT pg_advisory_unlock_all()", &[])
            .await;
    }
}
