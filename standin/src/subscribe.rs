//! Materialize's `SUBSCRIBE`, as its documentation and source describe it:
//!
//! - with `PROGRESS`, the first row is a progress row at the AS OF time;
//! - with `SNAPSHOT` (the default) the rows as of AS OF follow, stamped with it; the AS OF is
//!   then inclusive, without a snapshot it is exclusive (only updates after it);
//! - then updates in non-decreasing `mz_timestamp` order, consolidated per timestamp, in no
//!   particular order within a timestamp (an update is a -1 and a +1, in either order); a
//!   progress row at the new frontier after each batch of timestamps;
//! - an AS OF before the relation's compaction frontier is an error (`AS OF AT LEAST` moves
//!   it forward instead);
//! - `ENVELOPE UPSERT (KEY (…))`: `mz_state` (`upsert`, `delete`, `key_violation`), the key
//!   columns, then the others; one row per key per timestamp, value columns NULL on delete.

use std::collections::HashMap;
use std::sync::Arc;

use rand::seq::SliceRandom;

use crate::eval::{Scope, eval, holds};
use crate::sql::{Envelope, Expr, Subscribe};
use crate::store::{Column, Row, Store, table_key};
use crate::types::SqlType;
use crate::{Error, errors};

/// One row of SUBSCRIBE output, every field as text (`None` = NULL).
pub type OutRow = Vec<Option<String>>;

pub struct Subscription {
    store: Arc<Store>,
    key: String,
    table_name: String,
    /// Indices of the selected columns in the table.
    projection: Vec<usize>,
    columns: Vec<Column>,
    filter: Option<Expr>,
    params: Vec<Option<String>>,
    /// Upsert: indices of the key columns within the projection.
    upsert_key: Option<Vec<usize>>,
    progress: bool,
    /// The next timestamp to read.
    lower: u64,
    up_to: Option<u64>,
    hold: u64,
    /// Upsert envelope: each key's rows (a multiset), to know what a timestamp left behind.
    keyed: HashMap<Row, HashMap<Row, i64>>,
    /// Output rows not yet handed out (the start: progress row and snapshot).
    pending: Vec<OutRow>,
    ended: bool,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.store.release(self.hold);
    }
}

fn timestamp_arg(expr: &Expr, params: &[Option<String>]) -> Result<u64, Error> {
    let value = eval(
        expr,
        &Scope {
            columns: &[],
            row: None,
            params,
        },
    )
    .map_err(errors::syntax)?;
    value
        .into_text()
        .and_then(|t| t.parse::<u64>().ok())
        .ok_or_else(|| errors::syntax("AS OF and UP TO take a timestamp (a number)".into()))
}

impl Subscription {
    /// Validates the subscribe and waits until its AS OF is readable; queues the progress row
    /// and snapshot.
    pub async fn start(
        store: Arc<Store>,
        spec: &Subscribe,
        params: Vec<Option<String>>,
        schema: &str,
    ) -> Result<Subscription, Error> {
        let key = table_key(&spec.relation, schema);
        let as_of_arg = spec
            .as_of
            .as_ref()
            .map(|e| timestamp_arg(e, &params))
            .transpose()?;
        let up_to = spec
            .up_to
            .as_ref()
            .map(|e| timestamp_arg(e, &params))
            .transpose()?;
        let (columns, projection, upsert_key, as_of, hold) = {
            let catalog = store.lock();
            let table = catalog
                .tables
                .get(&key)
                .ok_or_else(|| errors::unknown_item(&spec.relation.name))?;
            let projection: Vec<usize> = match &spec.columns {
                None => (0..table.columns.len()).collect(),
                Some(names) => names
                    .iter()
                    .map(|n| {
                        table
                            .column_index(n)
                            .ok_or_else(|| errors::unknown_column(n))
                    })
                    .collect::<Result<_, _>>()?,
            };
            let upsert_key = match &spec.envelope {
                Envelope::Diff => None,
                Envelope::Upsert(keys) => Some(
                    keys.iter()
                        .map(|k| {
                            projection
                                .iter()
                                .position(|&i| table.columns[i].name == *k)
                                .ok_or_else(|| errors::unknown_column(k))
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
            };
            let latest = catalog.upper.saturating_sub(1).max(catalog.last_write);
            let as_of = match as_of_arg {
                None => latest.max(table.since),
                Some(t) if t >= table.since => t,
                Some(_) if spec.as_of_at_least => table.since,
                Some(t) => return Err(errors::not_valid_timestamp(t, table.since)),
            };
            if let Some(up_to) = up_to
                && up_to < as_of
            {
                return Err(errors::syntax(format!(
                    "UP TO ({up_to}) must not be less than AS OF ({as_of})"
                )));
            }
            (table.columns.clone(), projection, upsert_key, as_of, as_of)
        };
        let hold = store.hold(hold);
        let mut subscription = Subscription {
            store,
            key,
            table_name: spec.relation.name.clone(),
            projection,
            columns,
            filter: spec.filter.clone(),
            params,
            upsert_key,
            progress: spec.progress,
            lower: as_of + 1,
            up_to,
            hold,
            keyed: HashMap::new(),
            pending: Vec::new(),
            ended: false,
        };
        // Materialize waits until the AS OF is complete before it answers.
        if subscription.store.wait_complete(as_of).await.is_err() {
            return Err(errors::shutting_down());
        }
        if subscription.progress {
            subscription.pending.push(subscription.progress_row(as_of));
        }
        // The upsert envelope needs each key's state even without a snapshot, to tell an
        // update from a key violation.
        if spec.snapshot || subscription.upsert_key.is_some() {
            let rows = {
                let catalog = subscription.store.lock();
                let table = catalog
                    .tables
                    .get(&subscription.key)
                    .ok_or_else(|| errors::dropped(&subscription.table_name))?;
                table.snapshot_at(as_of)
            };
            let changes: Vec<(Row, i64)> = rows.into_iter().collect();
            let out = subscription.output(as_of, &changes)?;
            if spec.snapshot {
                subscription.pending.extend(out);
            }
        }
        subscription.store.move_hold(subscription.hold, as_of + 1);
        Ok(subscription)
    }

    /// The output columns: name and type.
    pub fn description(&self) -> Vec<(String, SqlType)> {
        let mut out = vec![("mz_timestamp".to_owned(), SqlType::Numeric)];
        if self.progress {
            out.push(("mz_progressed".into(), SqlType::Bool));
        }
        let selected = |i: usize| {
            let c = &self.columns[self.projection[i]];
            (c.name.clone(), c.ty)
        };
        match &self.upsert_key {
            None => {
                out.push(("mz_diff".into(), SqlType::Int8));
                out.extend((0..self.projection.len()).map(selected));
            }
            Some(keys) => {
                out.push(("mz_state".into(), SqlType::Text));
                out.extend(keys.iter().map(|&k| selected(k)));
                out.extend(
                    (0..self.projection.len())
                        .filter(|i| !keys.contains(i))
                        .map(selected),
                );
            }
        }
        out
    }

    /// The next rows: what is queued, else the timestamps that completed since the last call
    /// (waiting for the frontier to move), followed by a progress row. `Ok(None)` once UP TO
    /// is reached.
    pub async fn next(&mut self) -> Result<Option<Vec<OutRow>>, Error> {
        if !self.pending.is_empty() {
            return Ok(Some(std::mem::take(&mut self.pending)));
        }
        if self.ended {
            return Ok(None);
        }
        let mut upper_rx = self.store.watch_upper();
        let upper = loop {
            let upper = *upper_rx.borrow_and_update();
            if upper > self.lower {
                break upper;
            }
            if upper_rx.changed().await.is_err() {
                return Err(errors::shutting_down());
            }
        };
        let upper = self.up_to.map_or(upper, |u| upper.min(u));
        let batches = {
            let catalog = self.store.lock();
            let table = catalog
                .tables
                .get(&self.key)
                .ok_or_else(|| errors::dropped(&self.table_name))?;
            table.changes_between(self.lower, upper)
        };
        let mut rows = Vec::new();
        for (ts, changes) in batches {
            rows.extend(self.output(ts, &changes)?);
        }
        self.lower = upper;
        self.store.move_hold(self.hold, upper);
        if self.up_to.is_some_and(|u| upper >= u) {
            self.ended = true;
        } else if self.progress {
            rows.push(self.progress_row(upper));
        }
        Ok(Some(rows))
    }

    fn progress_row(&self, ts: u64) -> OutRow {
        let width = self.description().len();
        let mut row = vec![None; width];
        row[0] = Some(ts.to_string());
        row[1] = Some("t".into());
        row
    }

    /// The rows one timestamp's changes produce, consolidated, in random order.
    fn output(&mut self, ts: u64, changes: &[(Row, i64)]) -> Result<Vec<OutRow>, Error> {
        let mut consolidated: HashMap<Row, i64> = HashMap::new();
        for (row, diff) in changes {
            let scope = Scope {
                columns: &self.columns,
                row: Some(row),
                params: &self.params,
            };
            if !holds(self.filter.as_ref(), &scope).map_err(errors::data)? {
                continue;
            }
            let projected: Row = self.projection.iter().map(|&i| row[i].clone()).collect();
            *consolidated.entry(projected).or_insert(0) += diff;
        }
        consolidated.retain(|_, d| *d != 0);
        let head = |ts: u64, progress: bool| {
            let mut row = vec![Some(ts.to_string())];
            if progress {
                row.push(Some("f".into()));
            }
            row
        };
        let mut out = Vec::new();
        match self.upsert_key.clone() {
            None => {
                for (row, diff) in consolidated {
                    let mut line = head(ts, self.progress);
                    line.push(Some(diff.to_string()));
                    line.extend(row);
                    out.push(line);
                }
            }
            Some(keys) => {
                let mut touched: Vec<Row> = Vec::new();
                for (row, diff) in consolidated {
                    let key: Row = keys.iter().map(|&k| row[k].clone()).collect();
                    let rows = self.keyed.entry(key.clone()).or_default();
                    let count = rows.entry(row.clone()).or_insert(0);
                    *count += diff;
                    if *count == 0 {
                        rows.remove(&row);
                    }
                    if !touched.contains(&key) {
                        touched.push(key);
                    }
                }
                let values: Vec<usize> = (0..self.projection.len())
                    .filter(|i| !keys.contains(i))
                    .collect();
                for key in touched {
                    let rows = self.keyed.get(&key).cloned().unwrap_or_default();
                    let mut line = head(ts, self.progress);
                    let present: Vec<(&Row, &i64)> = rows.iter().collect();
                    match present.as_slice() {
                        [] => {
                            line.push(Some("delete".into()));
                            line.extend(key.iter().cloned());
                            line.extend(values.iter().map(|_| None));
                            self.keyed.remove(&key);
                        }
                        [(row, 1)] => {
                            line.push(Some("upsert".into()));
                            line.extend(key.iter().cloned());
                            line.extend(values.iter().map(|&v| row[v].clone()));
                        }
                        _ => {
                            line.push(Some("key_violation".into()));
                            line.extend(key.iter().cloned());
                            line.extend(values.iter().map(|_| None));
                        }
                    }
                    out.push(line);
                }
            }
        }
        out.shuffle(&mut rand::rng());
        Ok(out)
    }
}

/// Encodes rows in PostgreSQL's COPY text format: tab-separated, `\N` for NULL, `\\`, `\n`,
/// `\r`, `\t` escaped, one line per row.
pub fn copy_text(rows: &[OutRow]) -> Vec<u8> {
    let mut out = Vec::new();
    for row in rows {
        for (i, field) in row.iter().enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            match field {
                None => out.extend_from_slice(b"\\N"),
                Some(text) => {
                    for &b in text.as_bytes() {
                        match b {
                            b'\\' => out.extend_from_slice(b"\\\\"),
                            b'\n' => out.extend_from_slice(b"\\n"),
                            b'\r' => out.extend_from_slice(b"\\r"),
                            b'\t' => out.extend_from_slice(b"\\t"),
                            other => out.push(other),
                        }
                    }
                }
            }
        }
        out.push(b'\n');
    }
    out
}
