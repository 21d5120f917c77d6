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
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::model::Trigger;
use super::payload::{self, EventType};
use super::{Triggers, sender};
use crate::change::Position;
use crate::config::SourceDef;
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
    let mut index: Option<Index> = None;
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
                    index: &mut index,
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
    /// The states' index, kept across steps.
    index: &'a mut Option<Index>,
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
        let at = crate::store::now_rfc3339();
        // Whether the states evaluated so far can go on from the batches read.
        let continuous = seq.is_some_and(|seq| {
            seq >= read.head || read.batches.first().is_some_and(|b| b.seq <= seq + 1)
        });
        if continuous {
            let done = seq.unwrap_or(0);
            let index = Index::current(self.index, states);
            for (i, batch) in read.batches.iter().filter(|b| b.seq > done).enumerate() {
                apply_batch(
                    states,
                    index,
                    &batch.changes,
                    batch.position,
                    &at,
                    &mut writes,
                );
                if i % 256 == 255 {
                    // A long catch-up leaves the runtime to the other tasks now and then.
                    tokio::task::yield_now().await;
                }
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
            *self.index = None;
        }
        *pending = self
            .establish_pending(std::mem::take(pending), &read, &at, &mut writes, states)
            .await?;
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

    /// Establishes the claimed triggers that can be (see [`creation`]); returns the others.
    async fn establish_pending(
        &mut self,
        pending: Vec<Arc<Trigger>>,
        read: &LogRead,
        at: &str,
        writes: &mut Writes,
        states: &mut Vec<State>,
    ) -> Result<Vec<Arc<Trigger>>, StoreError> {
        let store = self.store;
        let rows = read.rows.as_deref().unwrap_or_default();
        let mut waiting = Vec::new();
        for trigger in pending {
            let stored = Stored::load(store, &trigger).await?;
            let since = if stored.initialized {
                self.caught_up(&trigger, stored.position, read.position)
            } else {
                creation(&trigger, read)
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
            let stamp = Stamp { position, at };
            let mut state = [establish(trigger, stored, &before, stamp, writes)];
            let mut own = Index::build(&state);
            for batch in later {
                apply_batch(
                    &mut state,
                    &mut own,
                    &batch.changes,
                    batch.position,
                    at,
                    writes,
                );
            }
            let [state] = state;
            states.push(state);
        }
        Ok(waiting)
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
fn rows_before(source: &SourceDef, rows: &[Row], batches: &[&Arc<AppliedBatch>]) -> Vec<Row> {
    if batches.is_empty() {
        return rows.to_vec();
    }
    let key = |row: &Row| payload::key_json(source, row).to_string();
    let mut by_key: HashMap<String, Row> = rows.iter().map(|row| (key(row), row.clone())).collect();
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

/// What a batch's evaluation needs to visit only the triggers a change can concern: the
/// distinct `fire` conditions (each evaluated once per change, whatever the number of
/// triggers sharing it), those requiring a column value (`group_id = 7`) indexed by it, and
/// the triggers each key is inside. Built for one list of states; kept up to date by
/// [`apply_batch`] as keys enter and leave.
struct Index {
    /// The states it was built for (their triggers, by pointer), to know when it is stale.
    built_for: Vec<usize>,
    conditions: Vec<crate::filter::Filter>,
    /// Per condition: the states using it.
    states_of: Vec<Vec<usize>>,
    /// Per state: its condition.
    condition_of: Vec<usize>,
    /// Conditions by the column value they require.
    by_value: HashMap<(usize, crate::filter::EqKey), Vec<usize>>,
    /// The columns `by_value` is keyed by.
    indexed_columns: Vec<usize>,
    /// Conditions every change must evaluate.
    unindexed: Vec<usize>,
    /// Key (JSON text) → the states it is inside.
    inside: HashMap<String, Vec<usize>>,
}

impl Index {
    fn build(states: &[State]) -> Index {
        let mut index = Index {
            built_for: states
                .iter()
                .map(|s| Arc::as_ptr(&s.trigger) as usize)
                .collect(),
            conditions: Vec::new(),
            states_of: Vec::new(),
            condition_of: Vec::new(),
            by_value: HashMap::new(),
            indexed_columns: Vec::new(),
            unindexed: Vec::new(),
            inside: HashMap::new(),
        };
        let mut distinct: HashMap<&str, usize> = HashMap::new();
        for (i, state) in states.iter().enumerate() {
            let fire = &state.trigger.spec.fire;
            let condition = *distinct.entry(fire.canonical()).or_insert_with(|| {
                index.conditions.push(fire.clone());
                index.states_of.push(Vec::new());
                let c = index.conditions.len() - 1;
                match fire.required_equality() {
                    Some((column, value)) => {
                        index.by_value.entry((column, value)).or_default().push(c);
                        if !index.indexed_columns.contains(&column) {
                            index.indexed_columns.push(column);
                        }
                    }
                    None => index.unindexed.push(c),
                }
                c
            });
            index.states_of[condition].push(i);
            index.condition_of.push(condition);
            for key in state.inside.keys() {
                index.inside.entry(key.clone()).or_default().push(i);
            }
        }
        index
    }

    /// The index for `states`, rebuilt when `slot` holds none or one for other states.
    fn current<'a>(slot: &'a mut Option<Index>, states: &[State]) -> &'a mut Index {
        let fits = slot.as_ref().is_some_and(|index| {
            index.built_for.len() == states.len()
                && index
                    .built_for
                    .iter()
                    .zip(states)
                    .all(|(&p, s)| p == Arc::as_ptr(&s.trigger) as usize)
        });
        if !fits {
            *slot = Some(Index::build(states));
        }
        slot.as_mut().expect("built above")
    }

    /// The states a change of `key` from `old` to `new` can concern, in order.
    fn candidates(&self, key: &str, old: Option<&Row>, new: Option<&Row>) -> Vec<usize> {
        if self.indexed_columns.is_empty() {
            // No condition is indexed: every state.
            return (0..self.condition_of.len()).collect();
        }
        let mut conditions: Vec<usize> = self.unindexed.clone();
        for &column in &self.indexed_columns {
            for row in [old, new].into_iter().flatten() {
                let value = row.values().get(column).and_then(crate::filter::eq_key);
                if let Some(found) = value.and_then(|v| self.by_value.get(&(column, v))) {
                    conditions.extend(found);
                }
            }
        }
        let mut states: Vec<usize> = conditions
            .iter()
            .flat_map(|&c| self.states_of[c].iter().copied())
            .collect();
        if let Some(inside) = self.inside.get(key) {
            states.extend(inside);
        }
        states.sort_unstable();
        states.dedup();
        states
    }

    fn entered(&mut self, key: &str, state: usize) {
        let list = self.inside.entry(key.to_owned()).or_default();
        if !list.contains(&state) {
            list.push(state);
        }
    }

    fn left(&mut self, key: &str, state: usize) {
        if let Some(list) = self.inside.get_mut(key) {
            list.retain(|&s| s != state);
            if list.is_empty() {
                self.inside.remove(key);
            }
        }
    }
}

/// Applies one batch's changes to the states (`index` is theirs).
fn apply_batch(
    states: &mut [State],
    index: &mut Index,
    changes: &[RowChange],
    position: Position,
    at: &str,
    writes: &mut Writes,
) {
    let Some(first) = states.first() else {
        return;
    };
    let source = first.trigger.source.clone();
    for change in changes {
        let (old, new) = change.rows();
        let Some(any) = new.or(old) else { continue };
        let stamp = Stamp { position, at };
        let key = payload::key_json(&source, any);
        let key_string = key.to_string();
        let candidates = index.candidates(&key_string, old, new);
        // Each distinct condition once per change.
        let mut fired: Vec<(usize, bool)> = Vec::new();
        for i in candidates {
            let state = &mut states[i];
            let fields = state.trigger.spec.fields.clone();
            let render = |row: &Row| payload::row_json(&source, row, fields.as_deref());
            let inside = state.inside.contains_key(&key_string);
            let Some(row) = new else {
                if inside {
                    let old_json = old.map(&render);
                    state.clear(writes, &key, &key_string, old_json, None, stamp);
                    index.left(&key_string, i);
                }
                continue;
            };
            let condition = index.condition_of[i];
            let fire = if let Some(&(_, fire)) = fired.iter().find(|(c, _)| *c == condition) {
                fire
            } else {
                let fire = index.conditions[condition].matches(row);
                fired.push((condition, fire));
                fire
            };
            if inside {
                let new_json = render(row);
                if state.leaves(fire, row) {
                    state.clear(writes, &key, &key_string, None, Some(&new_json), stamp);
                    index.left(&key_string, i);
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
                let old_json = old.map(&render);
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
                index.entered(&key_string, i);
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
        let (initialized, position) = client
            .query_opt(
                "SELECT initialized, \
                        (SELECT max(position) FROM viewcast_trigger_positions WHERE source = $1) \
                 FROM viewcast_triggers WHERE source = $1 AND name = $2 AND generation = $3",
                &[
                    &trigger.source.name,
                    &trigger.spec.name,
                    &trigger.generation,
                ],
            )
            .await?
            .map_or((false, None), |r| {
                (
                    r.get(0),
                    r.get::<_, Option<i64>>(1).map(Position::from_stored),
                )
            });
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
    rows: &[Row],
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
        let fire = trigger.spec.fire.matches(row);
        // Keys are inside only if stored so (each row's key is its own): a row that does
        // not match and no stored key needs nothing more.
        if !fire && stored.is_empty() {
            continue;
        }
        let key = payload::key_json(&source, row);
        let key_string = key.to_string();
        if !stored.is_empty() {
            seen.insert(key_string.clone());
        }
        if !fire && !state.inside.contains_key(&key_string) {
            continue;
        }
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

/// Which keys are inside: the last write of each key wins (one statement cannot change a
/// row twice).
async fn write_keys(
    tx: &deadpool_postgres::Transaction<'_>,
    source: &str,
    keys: &[(Arc<Trigger>, Value, Option<Value>)],
) -> Result<(), StoreError> {
    let mut last: HashMap<(usize, String), usize> = HashMap::new();
    for (i, (trigger, key, _)) in keys.iter().enumerate() {
        last.insert((Arc::as_ptr(trigger) as usize, key.to_string()), i);
    }
    let mut order: Vec<usize> = last.into_values().collect();
    order.sort_unstable();
    let (upserts, removals): (Vec<usize>, Vec<usize>) =
        order.into_iter().partition(|&i| keys[i].2.is_some());
    let column = |list: &[usize]| -> (Vec<&str>, Vec<i64>, Vec<&Value>) {
        (
            list.iter().map(|&i| keys[i].0.spec.name.as_str()).collect(),
            list.iter().map(|&i| keys[i].0.generation).collect(),
            list.iter().map(|&i| &keys[i].1).collect(),
        )
    };
    if !upserts.is_empty() {
        let (names, generations, key_values) = column(&upserts);
        let rows: Vec<&Value> = upserts.iter().filter_map(|&i| keys[i].2.as_ref()).collect();
        tx.execute(
            "INSERT INTO viewcast_trigger_keys (source, name, key, row) \
             SELECT $1, k.name, k.key, k.row \
             FROM unnest($2::text[], $3::bigint[], $4::jsonb[], $5::json[]) AS k(name, generation, key, row) \
             WHERE EXISTS (SELECT 1 FROM viewcast_triggers t \
                 WHERE t.source = $1 AND t.name = k.name AND t.generation = k.generation) \
             ON CONFLICT (source, name, key) DO UPDATE SET row = excluded.row",
            &[&source, &names, &generations, &key_values, &rows],
        )
        .await?;
    }
    if !removals.is_empty() {
        let (names, generations, key_values) = column(&removals);
        tx.execute(
            "DELETE FROM viewcast_trigger_keys k \
             USING unnest($2::text[], $3::bigint[], $4::jsonb[]) AS d(name, generation, key) \
             WHERE k.source = $1 AND k.name = d.name AND k.key = d.key \
               AND EXISTS (SELECT 1 FROM viewcast_triggers t \
                   WHERE t.source = $1 AND t.name = d.name AND t.generation = d.generation)",
            &[&source, &names, &generations, &key_values],
        )
        .await?;
    }
    Ok(())
}

/// Writes a read's transitions and key changes in one transaction, a statement per kind of
/// write (nothing for a trigger deleted meanwhile, here or on another replica: this
/// evaluator drops it on its next step).
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
    if !writes.transitions.is_empty() {
        let t = &writes.transitions;
        for t in t {
            tracing::debug!(source = %source, trigger = %t.trigger.spec.name, event = t.event.as_str(), event_id = %t.id, "transition");
        }
        let ids: Vec<&str> = t.iter().map(|t| t.id.as_str()).collect();
        let names: Vec<&str> = t.iter().map(|t| t.trigger.spec.name.as_str()).collect();
        let generations: Vec<i64> = t.iter().map(|t| t.trigger.generation).collect();
        let events: Vec<&str> = t.iter().map(|t| t.event.as_str()).collect();
        let bodies: Vec<&Value> = t.iter().map(|t| &t.body).collect();
        // In transition order: a trigger's deliveries are sent in id order.
        tx.execute(
            "INSERT INTO viewcast_deliveries (event_id, source, trigger_name, generation, event_type, payload) \
             SELECT d.event_id, $1, d.name, d.generation, d.event_type, d.payload \
             FROM unnest($2::text[], $3::text[], $4::bigint[], $5::text[], $6::json[]) \
                  WITH ORDINALITY AS d(event_id, name, generation, event_type, payload, n) \
             WHERE EXISTS (SELECT 1 FROM viewcast_triggers t \
                 WHERE t.source = $1 AND t.name = d.name AND t.generation = d.generation) \
             ORDER BY d.n \
             ON CONFLICT (event_id) DO NOTHING",
            &[&source, &ids, &names, &generations, &events, &bodies],
        )
        .await?;
    }
    write_keys(&tx, source, &writes.keys).await?;
    if let Some(position) = writes.reached {
        tx.execute(
            "INSERT INTO viewcast_trigger_positions (source, instance, position) VALUES ($1, $2, $3) \
             ON CONFLICT (source, instance) DO UPDATE SET position = excluded.position",
            &[&source, &instance, &position.to_stored()],
        )
        .await?;
    }
    if !writes.initialized.is_empty() {
        let names: Vec<&str> = writes
            .initialized
            .iter()
            .map(|t| t.spec.name.as_str())
            .collect();
        let generations: Vec<i64> = writes.initialized.iter().map(|t| t.generation).collect();
        tx.execute(
            "UPDATE viewcast_triggers t SET initialized = true \
             FROM unnest($2::text[], $3::bigint[]) AS i(name, generation) \
             WHERE t.source = $1 AND t.name = i.name AND t.generation = i.generation",
            &[&source, &names, &generations],
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        Backend, ColumnDef, ColumnType, FeedOptions, QualifiedName, SourceDef, StartMode,
    };
    use crate::trigger::{TriggerRecord, TriggerSpec, TriggerStatus};
    use crate::value::Value as V;

    fn source() -> Arc<SourceDef> {
        let column = |name: &str| ColumnDef {
            name: name.into(),
            sql_name: name.into(),
            ty: ColumnType::Integer,
        };
        Arc::new(SourceDef {
            name: "t".into(),
            relation: QualifiedName {
                schema: None,
                name: "t".into(),
            },
            backend: Backend::Postgres,
            start: StartMode::Eager,
            columns: vec![column("id"), column("grp"), column("value")],
            primary_key: vec![0],
            feed: FeedOptions::default(),
        })
    }

    /// Triggers on group equality with hysteresis (indexed), one without an equality (not
    /// indexed), and two sharing a condition.
    fn states(source: &Arc<SourceDef>) -> Vec<State> {
        let mut inputs: Vec<Value> = (0..4)
            .map(|g| {
                serde_json::json!({"name": format!("g{g}"), "webhook": "http://x/",
                    "fire": {"grp": {"_eq": g}, "value": {"_gte": 50}},
                    "clear": {"value": {"_lt": 30}}})
            })
            .collect();
        inputs.push(serde_json::json!({"name": "high", "webhook": "http://x/", "fire": {"value": {"_gt": 90}}}));
        inputs.push(
            serde_json::json!({"name": "g1_again", "webhook": "http://x/",
            "fire": {"value": {"_gte": 50}, "grp": {"_eq": 1}}}),
        );
        inputs
            .iter()
            .enumerate()
            .map(|(i, input)| {
                let spec = TriggerSpec::from_input(source, input).unwrap();
                let record = TriggerRecord {
                    status: TriggerStatus::Active,
                    declared: false,
                    generation: i as i64,
                    created_at: String::new(),
                    created_position: None,
                    created_boundary: None,
                };
                State {
                    trigger: Arc::new(Trigger::new(source.clone(), spec, record)),
                    inside: HashMap::new(),
                    last_fire: HashMap::new(),
                }
            })
            .collect()
    }

    /// The index visits only the triggers a change can concern, yet every transition is the
    /// one visiting every trigger finds: compared over random changes that move rows between
    /// groups while inside, delete them, and bring them back.
    #[test]
    fn the_index_finds_the_transitions_visiting_every_trigger_finds() {
        let source = source();
        let (mut fast, mut slow) = (states(&source), states(&source));
        let mut fast_index = Index::build(&fast);
        let mut slow_index = Index::build(&slow);
        // The reference: every condition evaluated for every change.
        slow_index.unindexed = (0..slow_index.conditions.len()).collect();
        slow_index.by_value.clear();
        slow_index.indexed_columns.clear();
        assert!(fast_index.unindexed.len() < fast_index.conditions.len());

        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n) as i64
        };
        let mut table: HashMap<i64, Row> = HashMap::new();
        let (mut fast_writes, mut slow_writes) = (Writes::default(), Writes::default());
        for step in 0..3000u64 {
            let id = next(12);
            let row = Row::new(vec![V::Int(id), V::Int(next(4)), V::Int(next(100))]);
            let change = match (table.get(&id).cloned(), next(10)) {
                (Some(old), 0) => {
                    table.remove(&id);
                    RowChange::Delete(old)
                }
                (Some(old), _) => {
                    table.insert(id, row.clone());
                    RowChange::Update {
                        old,
                        new: row,
                        changed: Arc::from(vec![1, 2]),
                    }
                }
                (None, _) => {
                    table.insert(id, row.clone());
                    RowChange::Insert(row)
                }
            };
            let changes = [change];
            let position = Position(step);
            apply_batch(
                &mut fast,
                &mut fast_index,
                &changes,
                position,
                "at",
                &mut fast_writes,
            );
            apply_batch(
                &mut slow,
                &mut slow_index,
                &changes,
                position,
                "at",
                &mut slow_writes,
            );
        }
        let summary = |writes: &Writes| -> Vec<(String, &'static str, String)> {
            writes
                .transitions
                .iter()
                .map(|t| (t.trigger.spec.name.clone(), t.event.as_str(), t.id.clone()))
                .collect()
        };
        let mut fast_events = summary(&fast_writes);
        let mut slow_events = summary(&slow_writes);
        assert!(slow_events.len() > 500, "{} transitions", slow_events.len());
        fast_events.sort();
        slow_events.sort();
        assert_eq!(fast_events, slow_events);
        for (f, s) in fast.iter().zip(&slow) {
            let mut a: Vec<&String> = f.inside.keys().collect();
            let mut b: Vec<&String> = s.inside.keys().collect();
            a.sort();
            b.sort();
            assert_eq!(a, b, "{}", f.trigger.spec.name);
        }
    }
}
