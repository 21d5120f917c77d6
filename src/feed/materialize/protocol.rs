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
        let mut values = vec![Value::Null; self.source.columns.len()];
        for (i, &column) in self.layout.iter().enumerate() {
            if let Some(text) = fields.get(3 + i)? {
                let def = &self.source.columns[column];
                values[column] = parse_text(&def.ty, text).map_err(|e| ProtocolError::Value {
                    column: def.name.clone(),
                    message: e.to_string(),
                })?;
            }
        }
        Ok((Row::new(values), diff))
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
        if self.envelope == Envelope::Upsert {
            // At most one row per key per timestamp: no grouping needed (and an upsert's key
            // is not needed at all).
            return rows
                .into_iter()
                .map(|(row, diff)| match diff {
                    1 => (Key(Box::default()), Net::Upsert(row)),
                    -1 => (row.key(key_columns), Net::Delete),
                    _ => (row.key(key_columns), Net::Violation),
                })
                .collect();
        }
        super::super::group_by_key(rows, key_columns)
            .into_iter()
            .map(|(key, rows)| {
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::config::{ColumnDef, ColumnType, FeedOptions, QualifiedName, StartMode};
    use crate::feed::copytext::{CopyDecoder, encode_row};

    fn source() -> Arc<SourceDef> {
        let column = |name: &str, ty| ColumnDef {
            name: name.into(),
            sql_name: name.into(),
            ty,
        };
        Arc::new(SourceDef {
            name: "t".into(),
            relation: QualifiedName {
                schema: None,
                name: "t".into(),
            },
            backend: crate::config::Backend::Materialize,
            start: StartMode::Eager,
            columns: vec![
                column("id", ColumnType::BigInt),
                column("note", ColumnType::String),
                column("amount", ColumnType::Numeric),
            ],
            primary_key: vec![0],
            feed: FeedOptions::default(),
        })
    }

    /// Decodes COPY text (cut into `chunks`) and returns what the decoder handed out.
    fn run(decoder: &mut Decoder, chunks: &[&[u8]]) -> Vec<Output> {
        let mut copy = CopyDecoder::new();
        let mut out = Vec::new();
        for chunk in chunks {
            copy.feed(chunk, |fields| decoder.row(fields, &mut |o| out.push(o)))
                .unwrap();
        }
        out
    }

    fn text(rows: &[&[Option<&str>]]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for row in rows {
            encode_row(row, &mut bytes);
        }
        bytes
    }

    #[test]
    fn the_documented_sequence_progress_snapshot_updates() {
        // Materialize's docs: a progress row at the AS OF time, the snapshot at that time,
        // then updates; an update is a -1 and a +1 at one timestamp, in either order.
        let mut decoder = Decoder::new(source(), Envelope::Diff, None);
        let bytes = text(&[
            &[Some("100"), Some("t"), None, None, None, None],
            &[
                Some("100"),
                Some("f"),
                Some("1"),
                Some("1"),
                Some("a"),
                Some("1.50"),
            ],
            &[
                Some("100"),
                Some("f"),
                Some("1"),
                Some("2"),
                Some("b"),
                None,
            ],
            &[Some("105"), Some("t"), None, None, None, None],
            &[
                Some("107"),
                Some("f"),
                Some("1"),
                Some("1"),
                Some("a2"),
                Some("1.50"),
            ],
            &[
                Some("107"),
                Some("f"),
                Some("-1"),
                Some("1"),
                Some("a"),
                Some("1.50"),
            ],
            // Timestamp 107 is still open: rows at 107 may follow the progress row at 107.
            &[Some("107"), Some("t"), None, None, None, None],
            &[
                Some("107"),
                Some("f"),
                Some("-1"),
                Some("2"),
                Some("b"),
                None,
            ],
        ]);
        let out = run(&mut decoder, &[&bytes]);
        assert_eq!(out.len(), 1, "only the snapshot is complete: {out:?}");
        let Output::Event(FeedEvent::Snapshot { position, rows }) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(*position, Position(100));
        assert_eq!(rows.len(), 2);
        assert_eq!(decoder.frontier(), 107);
        // A later progress row closes 107: one batch with the update and the delete.
        let out = run(
            &mut decoder,
            &[&text(&[&[Some("110"), Some("t"), None, None, None, None]])],
        );
        let Output::Event(FeedEvent::Batch(batch)) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(batch.position, Position(107));
        assert_eq!(batch.changes.len(), 2);
        assert!(
            matches!(&batch.changes[0], Change::Upsert { row, .. } if row.get(1) == &Value::Text("a2".into()))
        );
        assert!(matches!(&batch.changes[1], Change::Delete { key } if key.0[0] == Value::Int(2)));
    }

    #[test]
    fn an_empty_relation_has_an_empty_snapshot_closed_by_the_second_progress_row() {
        let mut decoder = Decoder::new(source(), Envelope::Upsert, None);
        let out = run(
            &mut decoder,
            &[&text(&[
                &[Some("5"), Some("t"), None, None, None, None],
                &[Some("6"), Some("t"), None, None, None, None],
            ])],
        );
        assert!(
            matches!(&out[..], [Output::Event(FeedEvent::Snapshot { rows, .. })] if rows.is_empty())
        );
        assert!(decoder.snapshot_done());
    }

    #[test]
    fn several_timestamps_between_progress_rows_are_separate_batches() {
        let mut decoder = Decoder::new(source(), Envelope::Upsert, Some(10));
        let out = run(
            &mut decoder,
            &[&text(&[
                // A resumed session's first progress row is at its AS OF (frontier - 1).
                &[Some("9"), Some("t"), None, None, None, None],
                &[
                    Some("11"),
                    Some("f"),
                    Some("upsert"),
                    Some("1"),
                    Some("x"),
                    None,
                ],
                &[
                    Some("12"),
                    Some("f"),
                    Some("upsert"),
                    Some("2"),
                    Some("y"),
                    None,
                ],
                &[Some("12"), Some("f"), Some("delete"), Some("1"), None, None],
                &[Some("13"), Some("t"), None, None, None, None],
            ])],
        );
        let positions: Vec<u64> = out
            .iter()
            .map(|o| match o {
                Output::Event(FeedEvent::Batch(b)) => b.position.0,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(positions, [11, 12]);
    }

    #[test]
    fn data_before_the_resume_frontier_is_refused() {
        let mut decoder = Decoder::new(source(), Envelope::Upsert, Some(10));
        let mut copy = CopyDecoder::new();
        let bytes = text(&[&[
            Some("9"),
            Some("f"),
            Some("upsert"),
            Some("1"),
            Some("x"),
            None,
        ]]);
        let result = copy.feed(&bytes, |fields| decoder.row(fields, &mut |_| {}));
        assert!(matches!(
            result,
            Err(ProtocolError::Backwards {
                ts: 9,
                frontier: 10
            })
        ));
    }

    #[test]
    fn upsert_key_violations_are_reported_not_applied() {
        let mut decoder = Decoder::new(source(), Envelope::Upsert, Some(1));
        let out = run(
            &mut decoder,
            &[&text(&[
                &[
                    Some("2"),
                    Some("f"),
                    Some("key_violation"),
                    Some("7"),
                    None,
                    None,
                ],
                &[Some("3"), Some("t"), None, None, None, None],
            ])],
        );
        assert!(
            matches!(&out[..], [Output::KeyViolation { ts: 2, key }] if key.0[0] == Value::Int(7))
        );
    }

    fn value_text() -> impl Strategy<Value = Option<String>> {
        prop::option::of(prop_oneof![
            "\\PC{0,12}",
            "[\\t\\n\\r\\\\]{1,4}",
            Just(String::new()),
            "[€ü日本語😀]{1,6}",
        ])
    }

    fn numeric_text() -> impl Strategy<Value = Option<String>> {
        // Far beyond f64: 60 integer digits and 40 decimals.
        prop::option::of("-?[1-9][0-9]{0,59}(\\.[0-9]{1,40})?")
    }

    proptest! {
        /// Rows with text of every kind, int8 extremes and numerics beyond f64, cut into
        /// chunks anywhere, come out exactly as they went in, one batch per timestamp.
        #[test]
        fn values_survive_any_chunking_exactly(
            rows in prop::collection::vec(
                (prop_oneof![Just(i64::MIN), Just(i64::MAX), any::<i64>()], value_text(), numeric_text()),
                1..20,
            ),
            cuts in prop::collection::vec(0usize..100_000, 0..16),
        ) {
            // Distinct keys, each inserted at its own timestamp.
            let mut seen = std::collections::HashSet::new();
            let rows: Vec<_> = rows.into_iter().filter(|r| seen.insert(r.0)).collect();
            let mut bytes = text(&[&[Some("1"), Some("t"), None, None, None, None]]);
            for (i, (id, note, amount)) in rows.iter().enumerate() {
                let ts = (2 + i).to_string();
                let id = id.to_string();
                encode_row(&[Some(&ts), Some("f"), Some("1"), Some(&id), note.as_deref(), amount.as_deref()], &mut bytes);
            }
            encode_row(&[Some("999"), Some("t"), None, None, None, None], &mut bytes);
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut at = 0;
            for p in points {
                chunks.push(&bytes[at..p]);
                at = p;
            }
            chunks.push(&bytes[at..]);
            let mut decoder = Decoder::new(source(), Envelope::Diff, None);
            let out = run(&mut decoder, &chunks);
            let empty_snapshot =
                matches!(&out[0], Output::Event(FeedEvent::Snapshot { rows, .. }) if rows.is_empty());
            prop_assert!(empty_snapshot, "the snapshot comes first, empty");
            prop_assert_eq!(out.len(), rows.len() + 1);
            for ((id, note, amount), output) in rows.iter().zip(&out[1..]) {
                let Output::Event(FeedEvent::Batch(batch)) = output else { panic!("{output:?}") };
                let [Change::Upsert { row, .. }] = batch.changes.as_slice() else { panic!("{batch:?}") };
                prop_assert_eq!(row.get(0), &Value::Int(*id));
                let text_of = |v: &Option<String>| v.as_deref().map_or(Value::Null, |t| Value::Text(t.into()));
                prop_assert_eq!(row.get(1), &text_of(note));
                prop_assert_eq!(row.get(2), &text_of(amount));
            }
        }
    }
}
