//! A table's snapshot taken while the shared replication stream runs, without a slot of its own.
//!
//! The table's rows are read in one `REPEATABLE READ` transaction, streamed with `COPY` (no
//! second copy of the table in memory, progress in the logs), whose snapshot `S` is recorded with
//! `pg_current_snapshot()`. Meanwhile the stream goes on: every change to the table from the
//! moment its snapshot was requested lands in an [`Overlay`], with the id of the transaction
//! that made it. After the read, a watermark (`pg_logical_emit_message`) is written: every
//! transaction `S` sees committed before it, so once the stream has passed the watermark the
//! rows and the overlay can be merged — a key some transaction `S` does not see touched takes
//! the stream's value (it is newer than the read), every other key the read's. The result is
//! the table exactly as of the stream's position, handed to the hub as one snapshot; changes
//! after it flow as batches.
//!
//! This is the watermark scheme of `DBLog` and Debezium's incremental snapshots, with transaction
//! visibility in place of a low watermark: a change is attributed to the read or to the stream
//! by whether `S` sees its transaction, not by where it falls between two watermarks.

use std::collections::HashMap;
use std::fmt::Write as _;

use futures::StreamExt as _;

use super::FeedError;
use super::setup::Table;
use crate::config::SourceDef;
use crate::feed::Change;
use crate::feed::copytext::{CopyDecoder, CopyError, Fields};
use crate::value::{Key, Row, Value, parse_text};

/// The prefix of the watermark messages in the WAL.
pub(super) const WATERMARK_PREFIX: &str = "viewcast.snapshot";

/// Rows between two progress lines in the logs.
const PROGRESS_ROWS: usize = 500_000;

/// Session settings that make PostgreSQL's text output identical on the snapshot and the
/// replication connection (so a re-snapshot diff sees no spurious changes).
pub(super) const SESSION_SETTINGS: &[(&str, &str)] = &[
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "1"),
];

/// Which transactions a snapshot sees: PostgreSQL's `pg_current_snapshot()`,
/// `xmin:xmax:xip,…` with 64-bit transaction ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Visibility {
    xmin: u64,
    xmax: u64,
    in_progress: Vec<u64>,
}

impl Visibility {
    pub fn parse(text: &str) -> Result<Visibility, String> {
        let bad = || format!("unexpected pg_current_snapshot() {text:?}");
        let mut parts = text.split(':');
        let (Some(xmin), Some(xmax), Some(xip), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let number = |s: &str| s.parse::<u64>().map_err(|_| bad());
        let in_progress = if xip.is_empty() {
            Vec::new()
        } else {
            xip.split(',').map(number).collect::<Result<_, _>>()?
        };
        Ok(Visibility {
            xmin: number(xmin)?,
            xmax: number(xmax)?,
            in_progress,
        })
    }

    /// Widens a 32-bit transaction id (as the replication stream reports it) to the 64-bit id
    /// nearest below `xmax`'s epoch boundary: ids are assigned in order, so one the stream
    /// reports was assigned at most 2³¹ ids away from this snapshot's.
    fn widen(&self, xid: u32) -> u64 {
        let epoch = self.xmax & !0xFFFF_FFFF;
        let candidate = epoch | u64::from(xid);
        if candidate >= self.xmax + (1 << 31) {
            candidate.saturating_sub(1 << 32)
        } else if candidate + (1 << 31) < self.xmax {
            candidate + (1 << 32)
        } else {
            candidate
        }
    }

    /// Whether the snapshot sees the effects of transaction `xid` (it had committed).
    pub fn sees(&self, xid: u32) -> bool {
        let xid = self.widen(xid);
        xid < self.xmin || (xid < self.xmax && !self.in_progress.contains(&xid))
    }

    /// Transactions in progress when the snapshot was taken, as 32-bit ids.
    pub fn in_progress(&self) -> impl Iterator<Item = u32> + '_ {
        #[allow(clippy::cast_possible_truncation)]
        self.in_progress.iter().map(|&xid| xid as u32)
    }
}

/// The latest state of one key as the stream reported it.
#[derive(Debug, Clone, PartialEq)]
enum Latest {
    Row {
        row: Row,
        unchanged: Option<Box<[bool]>>,
    },
    Deleted,
}

#[derive(Debug)]
struct Touch {
    latest: Latest,
    /// Every transaction that changed the key since tracking began.
    xids: Vec<u32>,
}

/// The stream's changes to one table while its snapshot is read.
#[derive(Debug)]
pub(super) struct Overlay {
    key_columns: Vec<usize>,
    touched: HashMap<Key, Touch>,
    truncated_by: Vec<u32>,
    /// The stream's commit count when tracking began.
    pub started: u64,
}

/// A read that cannot be merged: take it again.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Retry(pub &'static str);

impl Overlay {
    pub fn new(key_columns: Vec<usize>, started: u64) -> Overlay {
        Overlay {
            key_columns,
            touched: HashMap::new(),
            truncated_by: Vec::new(),
            started,
        }
    }

    /// Records the changes one transaction made to the table.
    pub fn record(&mut self, xid: u32, changes: Vec<Change>) {
        for change in changes {
            let (key, latest) = match change {
                Change::Upsert { row, unchanged } => {
                    (row.key(&self.key_columns), Latest::Row { row, unchanged })
                }
                Change::Delete { key } => (key, Latest::Deleted),
                Change::Truncate => {
                    self.touched.clear();
                    self.truncated_by.push(xid);
                    continue;
                }
            };
            match self.touched.get_mut(&key) {
                Some(touch) => {
                    touch.latest = fill(latest, &touch.latest);
                    if touch.xids.last() != Some(&xid) {
                        touch.xids.push(xid);
                    }
                }
                None => {
                    self.touched.insert(
                        key,
                        Touch {
                            latest,
                            xids: vec![xid],
                        },
                    );
                }
            }
        }
    }

    /// The table as of the stream's position: `rows` (read under `snapshot`) with every key a
    /// transaction `snapshot` does not see touched taken from the stream.
    pub fn merge(self, mut rows: Vec<Row>, snapshot: &Visibility) -> Result<Vec<Row>, Retry> {
        if self.truncated_by.iter().any(|&xid| !snapshot.sees(xid)) {
            return Err(Retry("the table was truncated during the read"));
        }
        let mut newer: HashMap<Key, Latest> = self
            .touched
            .into_iter()
            .filter(|(_, touch)| touch.xids.iter().any(|&xid| !snapshot.sees(xid)))
            .map(|(key, touch)| (key, touch.latest))
            .collect();
        if newer.is_empty() {
            return Ok(rows);
        }
        let mut kept = Vec::with_capacity(rows.len());
        for row in rows.drain(..) {
            match newer.remove(&row.key(&self.key_columns)) {
                None => kept.push(row),
                Some(Latest::Deleted) => {}
                Some(Latest::Row {
                    row: new,
                    unchanged,
                }) => kept.push(match unchanged {
                    Some(mask) => new.with_unchanged_from(&mask, &row),
                    None => new,
                }),
            }
        }
        for (_, latest) in newer {
            match latest {
                Latest::Deleted => {}
                Latest::Row {
                    row,
                    unchanged: None,
                } => kept.push(row),
                // An update that kept TOASTed values of a row the read did not have.
                Latest::Row { .. } => return Err(Retry("an update kept values the read lacks")),
            }
        }
        Ok(kept)
    }
}

/// `latest` with its unchanged values taken from the key's previous state, where it has them.
fn fill(latest: Latest, previous: &Latest) -> Latest {
    match (latest, previous) {
        (
            Latest::Row {
                row,
                unchanged: Some(mask),
            },
            Latest::Row {
                row: old,
                unchanged: old_mask,
            },
        ) => {
            let still: Box<[bool]> = mask
                .iter()
                .enumerate()
                .map(|(i, &u)| u && old_mask.as_ref().is_some_and(|m| m[i]))
                .collect();
            let row = row.with_unchanged_from(&mask, old);
            let unchanged = still.iter().any(|&u| u).then_some(still);
            Latest::Row { row, unchanged }
        }
        (latest, _) => latest,
    }
}

/// Reads the whole of `table` in one repeatable-read transaction, streamed with `COPY … TO
/// STDOUT` (text format: PostgreSQL's text output, as the replication stream sends it).
pub(super) async fn read(
    client: &tokio_postgres::Client,
    source: &SourceDef,
    table: &Table,
) -> Result<(Visibility, Vec<Row>), FeedError> {
    let failed = |e: &tokio_postgres::Error| {
        FeedError::from_db(&format!("cannot read {}", table.qualified()), e)
    };
    let columns = source
        .columns
        .iter()
        .map(|c| crate::config::quote_ident(&c.sql_name))
        .collect::<Vec<_>>()
        .join(", ");
    let mut begin = String::from("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;");
    for (name, value) in SESSION_SETTINGS {
        let _ = write!(begin, "SET LOCAL {name} = '{value}';");
    }
    client.batch_execute(&begin).await.map_err(|e| failed(&e))?;
    let result = async {
        let snapshot = client
            .query_one("SELECT pg_current_snapshot()::text", &[])
            .await
            .map_err(|e| failed(&e))?;
        let visibility = Visibility::parse(snapshot.get(0)).map_err(FeedError::Connection)?;
        let stream = client
            .copy_out(&format!(
                "COPY (SELECT {columns} FROM {}) TO STDOUT",
                table.qualified()
            ))
            .await
            .map_err(|e| failed(&e))?;
        futures::pin_mut!(stream);
        let mut copy = CopyDecoder::new();
        let mut rows = Vec::new();
        let mut next_report = PROGRESS_ROWS;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| failed(&e))?;
            copy.feed(&chunk, |fields| {
                rows.push(parse_row(source, fields)?);
                Ok::<_, ReadError>(())
            })
            .map_err(|e| match e {
                ReadError::Copy(e) => FeedError::Connection(format!(
                    "cannot read {}: {e}",
                    table.qualified()
                )),
                ReadError::Feed(e) => e,
            })?;
            if rows.len() >= next_report {
                tracing::info!(source = %source.name, rows = rows.len(), "postgres snapshot reading");
                next_report += PROGRESS_ROWS;
            }
        }
        if copy.has_partial() {
            return Err(FeedError::Connection(format!(
                "cannot read {}: the copy ended mid-row",
                table.qualified()
            )));
        }
        Ok((visibility, rows))
    }
    .await;
    // A failed read leaves the transaction aborted; either way it ends here.
    let end = client.batch_execute("ROLLBACK").await;
    let read = result?;
    end.map_err(|e| failed(&e))?;
    Ok(read)
}

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Copy(#[from] CopyError),
    #[error(transparent)]
    Feed(#[from] FeedError),
}

fn parse_row(source: &SourceDef, fields: &Fields<'_>) -> Result<Row, ReadError> {
    let mut values = Vec::with_capacity(source.columns.len());
    for (i, column) in source.columns.iter().enumerate() {
        values.push(match fields.get(i)? {
            None => Value::Null,
            Some(text) => parse_text(&column.ty, text).map_err(|e| {
                FeedError::Setup(format!(
                    "column {} of source {}: {e}; change its type in schema.yaml",
                    column.name, source.name
                ))
            })?,
        });
    }
    Ok(Row::new(values))
}

/// Writes the watermark `token` into the WAL, as a transaction of its own.
pub(super) async fn watermark(
    client: &tokio_postgres::Client,
    token: &str,
) -> Result<(), FeedError> {
    client
        .execute(
            "SELECT pg_logical_emit_message(true, $1, $2)",
            &[&WATERMARK_PREFIX, &token],
        )
        .await
        .map_err(|e| FeedError::from_db("cannot write the snapshot watermark", &e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, name: &str) -> Row {
        Row::new(vec![Value::Int(id), Value::Text(name.into())])
    }

    fn key(id: i64) -> Key {
        Key(vec![Value::Int(id)].into_boxed_slice())
    }

    fn upsert(id: i64, name: &str) -> Change {
        Change::Upsert {
            row: row(id, name),
            unchanged: None,
        }
    }

    fn sorted(mut rows: Vec<Row>) -> Vec<Row> {
        rows.sort_by_key(|r| match r.get(0) {
            Value::Int(i) => *i,
            _ => unreachable!(),
        });
        rows
    }

    #[test]
    fn visibility_follows_pg_current_snapshot() {
        let s = Visibility::parse("100:105:101,103").unwrap();
        assert!(s.sees(99));
        assert!(!s.sees(101) && !s.sees(103), "in progress");
        assert!(s.sees(102) && s.sees(104));
        assert!(!s.sees(105) && !s.sees(200), "not yet assigned");
        assert_eq!(s.in_progress().collect::<Vec<_>>(), [101, 103]);
        assert!(Visibility::parse("7:7:").unwrap().sees(6));
        for bad in ["", "1:2", "a:2:", "1:2:3:4", "1:2:x"] {
            assert!(Visibility::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn visibility_widens_ids_across_an_epoch() {
        // xmax just past the first wraparound: 32-bit ids near the top belong to epoch 0.
        let epoch1 = 1u64 << 32;
        let s = Visibility::parse(&format!("{}:{}:", epoch1 - 10, epoch1 + 5)).unwrap();
        assert!(s.sees(u32::MAX - 20), "epoch 0, below xmin");
        assert!(s.sees(u32::MAX - 2), "epoch 0, between xmin and xmax");
        assert!(s.sees(3), "epoch 1, below xmax");
        assert!(!s.sees(6), "epoch 1, not yet assigned");
    }

    #[test]
    fn a_key_changed_by_a_transaction_the_read_did_not_see_takes_the_stream_value() {
        let read = vec![row(1, "read"), row(2, "read"), row(3, "read")];
        let snapshot = Visibility::parse("50:60:55").unwrap();
        let mut overlay = Overlay::new(vec![0], 0);
        overlay.record(40, vec![upsert(1, "seen by the read")]);
        overlay.record(55, vec![upsert(2, "in progress at the read")]);
        overlay.record(61, vec![Change::Delete { key: key(3) }, upsert(4, "new")]);
        let merged = sorted(overlay.merge(read, &snapshot).unwrap());
        assert_eq!(
            merged,
            vec![
                row(1, "read"),
                row(2, "in progress at the read"),
                row(4, "new")
            ]
        );
    }

    #[test]
    fn an_unchanged_toasted_value_comes_from_the_read_or_the_stream() {
        let mask: Box<[bool]> = vec![false, true].into_boxed_slice();
        let partial = |id| Change::Upsert {
            row: row(id, ""),
            unchanged: Some(mask.clone()),
        };
        let snapshot = Visibility::parse("50:60:").unwrap();
        // From the read.
        let mut overlay = Overlay::new(vec![0], 0);
        overlay.record(70, vec![partial(1)]);
        assert_eq!(
            overlay.merge(vec![row(1, "big")], &snapshot).unwrap(),
            vec![row(1, "big")]
        );
        // From an earlier change in the stream (the read never had the row).
        let mut overlay = Overlay::new(vec![0], 0);
        overlay.record(70, vec![upsert(2, "inserted")]);
        overlay.record(71, vec![partial(2)]);
        assert_eq!(
            overlay.merge(Vec::new(), &snapshot).unwrap(),
            vec![row(2, "inserted")]
        );
        // From nowhere: read again.
        let mut overlay = Overlay::new(vec![0], 0);
        overlay.record(70, vec![partial(3)]);
        assert!(overlay.merge(Vec::new(), &snapshot).is_err());
    }

    #[test]
    fn a_truncate_the_read_did_not_see_means_reading_again() {
        let snapshot = Visibility::parse("50:60:").unwrap();
        let mut overlay = Overlay::new(vec![0], 0);
        overlay.record(45, vec![upsert(1, "a"), Change::Truncate]);
        overlay.record(46, vec![upsert(2, "b")]);
        assert_eq!(
            overlay.merge(vec![row(2, "b")], &snapshot).unwrap(),
            vec![row(2, "b")]
        );
        let mut overlay = Overlay::new(vec![0], 0);
        overlay.record(65, vec![Change::Truncate]);
        assert!(overlay.merge(vec![row(2, "b")], &snapshot).is_err());
    }
}
