//! The rows of `SUBSCRIBE … WITH (PROGRESS)` turned into feed events (no I/O).
//!
//! The rules are Materialize's (see `../shared/reference/protocols.md` §1): rows come in
//! non-decreasing `mz_timestamp` order; a timestamp `t` is complete only when a row (data or
//! progress) with a greater timestamp arrives — a progress row at `T` says nothing earlier
//! than `T` will come, but rows *at* `T` still may; several timestamps can pass between
//! progress rows. The first row is a progress row at the AS OF time; with a snapshot, the
//! rows at that time are the snapshot. Each completed timestamp becomes one batch, never
//! split. The frontier (every timestamp before it applied) is where a new session resumes:
//! `AS OF frontier - 1` with `SNAPSHOT = false`, which is exclusive.

use std::collections::HashMap;
use std::sync::Arc;

use super::super::copytext::{CopyError, Fields};
use crate::config::{Envelope, SourceDef};
use crate::feed::{Batch, Change, FeedEvent, Net, Position, net_diff};
use crate::value::{Key, Row, Value, parse_text};

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error(transparent)]
    Copy(#[from] CopyError),
    #[error("the subscribe sent a row of {found} columns where {expected} were expected")]
    Width { found: usize, expected: usize },
    #[error("the subscribe sent an invalid {what}: {text:?}")]
    Meta { what: &'static str, text: String },
    #[error("column {column}: {message}")]
    Value { column: String, message: String },
    #[error("the subscribe went back in time: a row at {ts} after the frontier reached {frontier}")]
    Backwards { ts: u64, frontier: u64 },
}

/// Something the decoder tells its session.
#[derive(Debug)]
pub enum Output {
    /// A feed event for the hub.
    Event(FeedEvent),
    /// More than one row for a key at a timestamp: not applied.
    KeyViolation { ts: u64, key: Key },
}

/// Rows of a timestamp not yet complete, with their diffs, and the timestamp once known.
type Pending = (Option<u64>, Vec<(Row, i64)>);

/// Decodes one subscribe session's rows.
pub struct Decoder {
    source: Arc<SourceDef>,
    envelope: Envelope,
    /// For each data column of the output, the source column it holds.
    layout: Vec<usize>,
    /// Expecting a snapshot: its rows so far (the AS OF time is the first row's timestamp).
    snapshot: Option<Pending>,
    /// The open timestamp and its rows.
    open: Option<(u64, Vec<(Row, i64)>)>,
    /// Every timestamp before this one is complete (and handed out).
    frontier: u64,
    /// Scratch: the values of the row being decoded.
    values: Vec<Value>,
}

/// The output columns of a subscribe, in order: `(SQL column names in SELECT order, KEY
/// column names)`. Upsert output puts the key columns first.
pub fn output_layout(source: &SourceDef, envelope: Envelope) -> Vec<usize> {
    match envelope {
        Envelope::Diff => (0..source.columns.len()).collect(),
        Envelope::Upsert => {
            let mut layout = source.primary_key.clone();
            layout.extend((0..source.columns.len()).filter(|i| !source.is_key_column(*i)));
            layout
        }
    }
}

impl Decoder {
    /// A session that starts with a snapshot (`resume_from: None`), or one resumed with
    /// `AS OF resume_from - 1` and no snapshot.
    pub fn new(source: Arc<SourceDef>, envelope: Envelope, resume_from: Option<u64>) -> Decoder {
        let layout = output_layout(&source, envelope);
        Decoder {
            values: Vec::with_capacity(source.columns.len()),
            source,
            envelope,
            layout,
            snapshot: resume_from.is_none().then(|| (None, Vec::new())),
            open: None,
            frontier: resume_from.unwrap_or(0),
        }
    }

    /// Every timestamp before this is complete and handed out (0 before any row).
    pub fn frontier(&self) -> u64 {
        self.frontier
    }

    /// Whether the snapshot has been handed out (always, for a resumed session).
    pub fn snapshot_done(&self) -> bool {
        self.snapshot.is_none()
    }

    /// Decodes one row; completed timestamps are handed to `out`.
    pub fn row(
        &mut self,
        fields: &Fields<'_>,
        out: &mut impl FnMut(Output),
    ) -> Result<(), ProtocolError> {
        let expected = 3 + self.layout.len();
        if fields.len() != expected {
            return Err(ProtocolError::Width {
                found: fields.len(),
                expected,
            });
        }
        let ts_text = fields.get(0)?.unwrap_or("");
        let ts: u64 = ts_text.parse().map_err(|_| ProtocolError::Meta {
            what: "mz_timestamp",
            text: ts_text.to_owned(),
        })?;
        let progressed = match fields.get(1)? {
            Some("t" | "true") => true,
            Some("f" | "false") => false,
            other => {
                return Err(ProtocolError::Meta {
                    what: "mz_progressed",
                    text: other.unwrap_or("NULL").to_owned(),
                });
            }
        };
        if ts < self.frontier {
            // A resumed session's first progress row is at its AS OF, just below the
            // frontier; it says nothing new. Data there would be a duplicate.
            if progressed {
                return Ok(());
            }
            return Err(ProtocolError::Backwards {
                ts,
                frontier: self.frontier,
            });
        }
        self.close_before(ts, out);
        self.frontier = self.frontier.max(ts);
        if progressed {
            if let Some((as_of @ None, _)) = &mut self.snapshot {
                *as_of = Some(ts);
            }
            return Ok(());
        }
        let change = self.change(fields)?;
        match &mut self.snapshot {
            Some((as_of, rows)) if as_of.is_none_or(|t| t == ts) => {
                *as_of = Some(ts);
                rows.push(change);
            }
            _ => match &mut self.open {
                Some((open, rows)) if *open == ts => rows.push(change),
                _ => self.open = Some((ts, vec![change])),
            },
        }
        Ok(())
    }

    /// The row's values in source order, and its diff (+1 upsert, -1 delete, 0 key violation
    /// in the upsert envelope; `mz_diff` in the diff envelope).
    fn change(&mut self, fields: &Fields<'_>) -> Result<(Row, i64), ProtocolError> {
        let meta = fields.get(2)?;
        let diff = match self.envelope {
            Envelope::Diff => {
                let text = meta.unwrap_or("");
                text.parse::<i64>().map_err(|_| ProtocolError::Meta {
                    what: "mz_diff",
                    text: text.to_owned(),
                })?
            }
            Envelope::Upsert => match meta {
                Some("upsert" | "insert") => 1,
                Some("delete") => -1,
                Some("key_violation") => 0,
                other => {
                    return Err(ProtocolError::Meta {
                        what: "mz_state",
                        text: other.unwrap_or("NULL").to_owned(),
                    });
                }
            },
        };
        self.values.clear();
        self.values.resize(self.source.columns.len(), Value::Null);
        for (i, &column) in self.layout.iter().enumerate() {
            if let Some(text) = fields.get(3 + i)? {
                let def = &self.source.columns[column];
                self.values[column] =
                    parse_text(&def.ty, text).map_err(|e| ProtocolError::Value {
                        column: def.name.clone(),
                        message: e.to_string(),
                    })?;
            }
        }
        Ok((Row::new(self.values.clone()), diff))
    }

    /// Hands out everything at timestamps before `ts`.
    fn close_before(&mut self, ts: u64, out: &mut impl FnMut(Output)) {
        if let Some((Some(as_of), _)) = &self.snapshot
            && *as_of < ts
        {
            let as_of = *as_of;
            let (_, rows) = self.snapshot.take().unwrap_or_default();
            let mut snapshot = Vec::with_capacity(rows.len());
            for (key, net) in self.net(rows) {
                match net {
                    Net::Upsert(row) => snapshot.push(row),
                    Net::Violation => out(Output::KeyViolation { ts: as_of, key }),
                    Net::Delete | Net::Nothing => {}
                }
            }
            out(Output::Event(FeedEvent::Snapshot {
                position: Position(as_of),
                rows: snapshot,
            }));
        }
        if let Some((open, _)) = &self.open
            && *open < ts
        {
            let (open, rows) = self.open.take().unwrap_or_default();
            let mut changes = Vec::with_capacity(rows.len());
            for (key, net) in self.net(rows) {
                match net {
                    Net::Upsert(row) => changes.push(Change::Upsert {
                        row,
                        unchanged: None,
                    }),
                    Net::Delete => changes.push(Change::Delete { key }),
                    Net::Violation => out(Output::KeyViolation { ts: open, key }),
                    Net::Nothing => {}
                }
            }
            if !changes.is_empty() {
                out(Output::Event(FeedEvent::Batch(Batch {
                    position: Position(open),
                    changes,
                })));
            }
        }
    }

    /// The net effect per key of one timestamp's rows, in first-seen key order.
    fn net(&self, rows: Vec<(Row, i64)>) -> Vec<(Key, Net)> {
        let key_columns = &self.source.primary_key;
        let mut order: Vec<Key> = Vec::new();
        let mut per_key: HashMap<Key, Vec<(Row, i64)>> = HashMap::new();
        for (row, diff) in rows {
            let key = row.key(key_columns);
            per_key
                .entry(key)
                .or_insert_with_key(|k| {
                    order.push(k.clone());
                    Vec::new()
                })
                .push((row, diff));
        }
        order
            .into_iter()
            .map(|key| {
                let rows = per_key.remove(&key).unwrap_or_default();
                let net = match self.envelope {
                    Envelope::Upsert => match rows.as_slice() {
                        [(row, 1)] => Net::Upsert(row.clone()),
                        [(_, -1)] => Net::Delete,
                        _ => Net::Violation,
                    },
                    Envelope::Diff => net_diff(rows),
                };
                (key, net)
            })
            .collect()
    }
}
