//! Decoding of pgoutput messages (protocol version 1, text mode).
//!
//! [`decode`] turns the bytes of one pgoutput message (the payload of one `XLogData` frame) into
//! a [`Message`], following Postgres's "Logical Replication Message Formats" for protocol
//! version 1. Tuple values and names borrow from the input, so decoding a row allocates only
//! the list of its values; a [`Relation`] owns its strings because the feed keeps it.
//!
//! This module owns the wire format and nothing else: it knows nothing of sources, configured
//! columns or value types (that is `relation`'s job) and does no I/O. It must never panic on
//! any input, and never allocate from a length or count field before checking that the bytes
//! it announces are there.

use std::borrow::Cow;
use std::fmt;

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin<'a>),
    Relation(Relation),
    Type(Type<'a>),
    Insert(Insert<'a>),
    Update(Update<'a>),
    Delete(Delete<'a>),
    Truncate(Truncate),
    /// A logical decoding message (`pg_logical_emit_message`), tag 'M'.
    Logical(LogicalMessage<'a>),
}

/// 'B': the start of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    /// The LSN of the transaction's commit record.
    pub final_lsn: u64,
    /// Microseconds since 2000-01-01 00:00:00 UTC.
    pub commit_time: i64,
    pub xid: u32,
}

/// 'C': the end of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// Currently always 0.
    pub flags: u8,
    pub commit_lsn: u64,
    /// The end LSN of the transaction: the position to acknowledge once it is applied.
    pub end_lsn: u64,
    /// Microseconds since 2000-01-01 00:00:00 UTC.
    pub commit_time: i64,
}

/// 'O': the transaction came from another node (replication origin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin<'a> {
    pub commit_lsn: u64,
    pub name: Cow<'a, str>,
}

/// 'R': the shape of a table. Sent before the first change to it in a session and again after
/// its definition changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The table's OID; every change names its table by it.
    pub id: u32,
    /// The schema; empty for `pg_catalog`.
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    /// The published columns, in table order (generated columns are never sent).
    pub columns: Vec<Column>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Bit 1 ([`Column::KEY`]) marks a column of the replica identity.
    pub flags: u8,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

impl Column {
    /// The flag bit of a column that is part of the replica identity (the "key").
    pub const KEY: u8 = 1;

    /// Whether this column is part of the replica identity, so that key-only old tuples
    /// ('K') carry its value.
    pub fn is_key(&self) -> bool {
        self.flags & Self::KEY != 0
    }
}

/// `pg_class.relreplident`: which old values Postgres logs for updates and deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// 'd': the primary key's columns.
    Default,
    /// 'n': nothing.
    Nothing,
    /// 'f': the whole old row.
    Full,
    /// 'i': the columns of a chosen unique index.
    Index,
    /// Any other byte, kept so that decoding does not fail on a future setting.
    Other(u8),
}

impl ReplicaIdentity {
    pub fn from_byte(byte: u8) -> ReplicaIdentity {
        match byte {
            b'd' => ReplicaIdentity::Default,
            b'n' => ReplicaIdentity::Nothing,
            b'f' => ReplicaIdentity::Full,
            b'i' => ReplicaIdentity::Index,
            other => ReplicaIdentity::Other(other),
        }
    }

    pub fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
            ReplicaIdentity::Other(byte) => byte,
        }
    }
}

/// 'Y': a non-built-in data type used by a following Relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Type<'a> {
    pub oid: u32,
    /// The schema; empty for `pg_catalog`.
    pub namespace: Cow<'a, str>,
    pub name: Cow<'a, str>,
}

/// 'I': a new row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert<'a> {
    pub relation_id: u32,
    pub new: Tuple<'a>,
}

/// 'U': a changed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update<'a> {
    pub relation_id: u32,
    /// The old key ('K') or old row ('O'), when the replica identity calls for it.
    pub old: Option<OldTuple<'a>>,
    pub new: Tuple<'a>,
}

/// 'D': a removed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete<'a> {
    pub relation_id: u32,
    pub old: OldTuple<'a>,
}

/// The old values an Update or Delete carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple<'a> {
    /// 'K': only the replica identity's columns are meaningful; the others are sent as null.
    Key(Tuple<'a>),
    /// 'O': the whole old row (REPLICA IDENTITY FULL).
    Full(Tuple<'a>),
}

impl<'a> OldTuple<'a> {
    pub fn tuple(&self) -> &Tuple<'a> {
        match self {
            OldTuple::Key(tuple) | OldTuple::Full(tuple) => tuple,
        }
    }
}

/// 'T': one or more tables were truncated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// [`Truncate::CASCADE`] and [`Truncate::RESTART_IDENTITY`] bits.
    pub options: u8,
    pub relation_ids: Vec<u32>,
}

impl Truncate {
    pub const CASCADE: u8 = 1;
    pub const RESTART_IDENTITY: u8 = 2;
}

/// 'M': a logical decoding message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage<'a> {
    /// Bit 1 ([`LogicalMessage::TRANSACTIONAL`]) marks a transactional message.
    pub flags: u8,
    pub lsn: u64,
    pub prefix: Cow<'a, str>,
    pub content: Cow<'a, [u8]>,
}

impl LogicalMessage<'_> {
    pub const TRANSACTIONAL: u8 = 1;

    pub fn is_transactional(&self) -> bool {
        self.flags & Self::TRANSACTIONAL != 0
    }
}

/// The values of one row, one per published column of its relation, in table order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuple<'a>(pub Vec<TupleValue<'a>>);

/// One column value of a [`Tuple`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue<'a> {
    /// 'n': SQL NULL (or, in a key-only old tuple, a column outside the key).
    Null,
    /// 'u': a toasted value that did not change; its value is not sent.
    Unchanged,
    /// 't': the value in Postgres's text output format.
    Text(Cow<'a, str>),
    /// 'b': the value in binary format (only sent when the `binary` option is on, which viewcast
    /// never sets).
    Binary(Cow<'a, [u8]>),
}

/// Why a pgoutput message could not be decoded. Always an internal error: Postgres sent
/// something this decoder does not understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty pgoutput message")]
    Empty,
    #[error(
        "unknown pgoutput message type {}; viewcast requests protocol version 1, which never \
         sends it",
        show_byte(*.0)
    )]
    UnknownMessage(u8),
    #[error("pgoutput message ends early: {what} needs {needed} bytes but {remaining} are left")]
    Truncated {
        what: &'static str,
        needed: usize,
        remaining: usize,
    },
    #[error("pgoutput message ends inside {what}: no terminating nul byte")]
    UnterminatedString { what: &'static str },
    #[error("pgoutput {what} is not valid utf-8; viewcast needs a database with encoding UTF8")]
    InvalidUtf8 { what: &'static str },
    #[error("pgoutput {what} is {}, expected {expected}", show_byte(*.found))]
    UnexpectedByte {
        what: &'static str,
        found: u8,
        expected: &'static str,
    },
    #[error("pgoutput {what} is negative ({length})")]
    NegativeLength { what: &'static str, length: i32 },
    #[error("pgoutput {message} message has {count} unexpected bytes after its end")]
    TrailingBytes { message: &'static str, count: usize },
}

/// A byte as `'X'` when it is printable ASCII, else as hex.
fn show_byte(byte: u8) -> String {
    if byte.is_ascii_graphic() {
        format!("'{}'", char::from(byte))
    } else {
        format!("0x{byte:02x}")
    }
}

/// Decodes one pgoutput message (protocol version 1). The whole input must be one message.
pub fn decode(bytes: &[u8]) -> Result<Message<'_>, DecodeError> {
    let (&tag, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
    let mut reader = Reader { bytes: rest };
    let r = &mut reader;
    let (message, name) = match tag {
        b'B' => (
            Message::Begin(Begin {
                final_lsn: r.u64("begin final lsn")?,
                commit_time: r.i64("begin commit time")?,
                xid: r.u32("begin xid")?,
            }),
            "begin",
        ),
        b'C' => (
            Message::Commit(Commit {
                flags: r.u8("commit flags")?,
                commit_lsn: r.u64("commit lsn")?,
                end_lsn: r.u64("commit end lsn")?,
                commit_time: r.i64("commit time")?,
            }),
            "commit",
        ),
        b'O' => (
            Message::Origin(Origin {
                commit_lsn: r.u64("origin commit lsn")?,
                name: Cow::Borrowed(r.str("origin name")?),
            }),
            "origin",
        ),
        b'R' => (Message::Relation(r.relation()?), "relation"),
        b'Y' => (
            Message::Type(Type {
                oid: r.u32("type oid")?,
                namespace: Cow::Borrowed(r.str("type namespace")?),
                name: Cow::Borrowed(r.str("type name")?),
            }),
            "type",
        ),
        b'I' => {
            let relation_id = r.u32("insert relation id")?;
            r.expect(b'N', "insert tuple marker", "'N'")?;
            let new = r.tuple()?;
            (Message::Insert(Insert { relation_id, new }), "insert")
        }
        b'U' => (Message::Update(r.update()?), "update"),
        b'D' => {
            let relation_id = r.u32("delete relation id")?;
            let old = match r.u8("delete tuple marker")? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                found => {
                    return Err(DecodeError::UnexpectedByte {
                        what: "delete tuple marker",
                        found,
                        expected: "'K' or 'O'",
                    });
                }
            };
            (Message::Delete(Delete { relation_id, old }), "delete")
        }
        b'T' => (Message::Truncate(r.truncate()?), "truncate"),
        b'M' => {
            let flags = r.u8("message flags")?;
            let lsn = r.u64("message lsn")?;
            let prefix = Cow::Borrowed(r.str("message prefix")?);
            let length = r.length("message content length")?;
            let content = Cow::Borrowed(r.take(length, "message content")?);
            (
                Message::Logical(LogicalMessage {
                    flags,
                    lsn,
                    prefix,
                    content,
                }),
                "logical decoding",
            )
        }
        other => return Err(DecodeError::UnknownMessage(other)),
    };
    if reader.bytes.is_empty() {
        Ok(message)
    } else {
        Err(DecodeError::TrailingBytes {
            message: name,
            count: reader.bytes.len(),
        })
    }
}

/// The unread rest of a message. Every read checks the remaining length first.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if count > self.bytes.len() {
            return Err(self.truncated(what, count));
        }
        let (head, tail) = self.bytes.split_at(count);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let (head, tail) = self
            .bytes
            .split_first_chunk::<N>()
            .ok_or_else(|| self.truncated(what, N))?;
        self.bytes = tail;
        Ok(*head)
    }

    fn truncated(&self, what: &'static str, needed: usize) -> DecodeError {
        DecodeError::Truncated {
            what,
            needed,
            remaining: self.bytes.len(),
        }
    }

    /// Fails unless `count` items of at least `min_size` bytes each can still follow, so that
    /// a count field never makes us reserve memory for data that is not there.
    fn ensure_room(
        &self,
        count: usize,
        min_size: usize,
        what: &'static str,
    ) -> Result<(), DecodeError> {
        match count.checked_mul(min_size) {
            Some(needed) if needed <= self.bytes.len() => Ok(()),
            needed => Err(self.truncated(what, needed.unwrap_or(usize::MAX))),
        }
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        self.array(what).map(u16::from_be_bytes)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.array(what).map(u32::from_be_bytes)
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        self.array(what).map(i32::from_be_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        self.array(what).map(u64::from_be_bytes)
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        self.array(what).map(i64::from_be_bytes)
    }

    /// An Int32 length that must not be negative.
    fn length(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let length = self.i32(what)?;
        usize::try_from(length).map_err(|_| DecodeError::NegativeLength { what, length })
    }

    /// A nul-terminated UTF-8 string.
    fn str(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let end = self
            .bytes
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::UnterminatedString { what })?;
        let text = utf8(&self.bytes[..end], what)?;
        self.bytes = &self.bytes[end + 1..];
        Ok(text)
    }

    fn expect(
        &mut self,
        wanted: u8,
        what: &'static str,
        expected: &'static str,
    ) -> Result<(), DecodeError> {
        match self.u8(what)? {
            found if found == wanted => Ok(()),
            found => Err(DecodeError::UnexpectedByte {
                what,
                found,
                expected,
            }),
        }
    }

    fn relation(&mut self) -> Result<Relation, DecodeError> {
        let id = self.u32("relation id")?;
        let namespace = self.str("relation namespace")?.to_owned();
        let name = self.str("relation name")?.to_owned();
        let replica_identity = ReplicaIdentity::from_byte(self.u8("relation replica identity")?);
        let count = usize::from(self.u16("relation column count")?);
        // Flags, an empty name's nul, the type OID and the type modifier.
        self.ensure_room(count, 1 + 1 + 4 + 4, "relation columns")?;
        let mut columns = Vec::with_capacity(count);
        for _ in 0..count {
            columns.push(Column {
                flags: self.u8("relation column flags")?,
                name: self.str("relation column name")?.to_owned(),
                type_oid: self.u32("relation column type oid")?,
                type_modifier: self.i32("relation column type modifier")?,
            });
        }
        Ok(Relation {
            id,
            namespace,
            name,
            replica_identity,
            columns,
        })
    }

    fn update(&mut self) -> Result<Update<'a>, DecodeError> {
        let relation_id = self.u32("update relation id")?;
        let old = match self.u8("update tuple marker")? {
            b'N' => None,
            marker @ (b'K' | b'O') => {
                let tuple = self.tuple()?;
                self.expect(b'N', "update new tuple marker", "'N'")?;
                Some(if marker == b'K' {
                    OldTuple::Key(tuple)
                } else {
                    OldTuple::Full(tuple)
                })
            }
            found => {
                return Err(DecodeError::UnexpectedByte {
                    what: "update tuple marker",
                    found,
                    expected: "'K', 'O' or 'N'",
                });
            }
        };
        let new = self.tuple()?;
        Ok(Update {
            relation_id,
            old,
            new,
        })
    }

    fn truncate(&mut self) -> Result<Truncate, DecodeError> {
        let count = self.u32("truncate relation count")? as usize;
        let options = self.u8("truncate options")?;
        self.ensure_room(count, 4, "truncate relation ids")?;
        let mut relation_ids = Vec::with_capacity(count);
        for _ in 0..count {
            relation_ids.push(self.u32("truncate relation id")?);
        }
        Ok(Truncate {
            options,
            relation_ids,
        })
    }

    fn tuple(&mut self) -> Result<Tuple<'a>, DecodeError> {
        let count = usize::from(self.u16("tuple column count")?);
        // Every value takes at least its kind byte.
        self.ensure_room(count, 1, "tuple values")?;
        let mut values = Vec::with_capacity(count);
        for _ in 0..count {
            values.push(match self.u8("tuple value kind")? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::Unchanged,
                b't' => {
                    let length = self.length("text value length")?;
                    let bytes = self.take(length, "text value")?;
                    TupleValue::Text(Cow::Borrowed(utf8(bytes, "text value")?))
                }
                b'b' => {
                    let length = self.length("binary value length")?;
                    TupleValue::Binary(Cow::Borrowed(self.take(length, "binary value")?))
                }
                found => {
                    return Err(DecodeError::UnexpectedByte {
                        what: "tuple value kind",
                        found,
                        expected: "'n', 'u', 't' or 'b'",
                    });
                }
            });
        }
        Ok(Tuple(values))
    }
}

fn utf8<'a>(bytes: &'a [u8], what: &'static str) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8 { what })
}

impl fmt::Display for ReplicaIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicaIdentity::Default => f.write_str("DEFAULT"),
            ReplicaIdentity::Nothing => f.write_str("NOTHING"),
            ReplicaIdentity::Full => f.write_str("FULL"),
            ReplicaIdentity::Index => f.write_str("USING INDEX"),
            ReplicaIdentity::Other(byte) => write!(f, "unknown ({})", show_byte(*byte)),
        }
    }
}

/// A test-only encoder, written from the protocol documentation, so that tests can build
/// messages without spelling out their bytes.
#[cfg(test)]
pub(crate) mod test_encode {
    use super::{Message, OldTuple, Tuple, TupleValue};

    pub(crate) fn encode(message: &Message<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        match message {
            Message::Begin(begin) => {
                out.push(b'B');
                out.extend(begin.final_lsn.to_be_bytes());
                out.extend(begin.commit_time.to_be_bytes());
                out.extend(begin.xid.to_be_bytes());
            }
            Message::Commit(commit) => {
                out.push(b'C');
                out.push(commit.flags);
                out.extend(commit.commit_lsn.to_be_bytes());
                out.extend(commit.end_lsn.to_be_bytes());
                out.extend(commit.commit_time.to_be_bytes());
            }
            Message::Origin(origin) => {
                out.push(b'O');
                out.extend(origin.commit_lsn.to_be_bytes());
                string(&mut out, &origin.name);
            }
            Message::Relation(relation) => {
                out.push(b'R');
                out.extend(relation.id.to_be_bytes());
                string(&mut out, &relation.namespace);
                string(&mut out, &relation.name);
                out.push(relation.replica_identity.as_byte());
                out.extend((relation.columns.len() as u16).to_be_bytes());
                for column in &relation.columns {
                    out.push(column.flags);
                    string(&mut out, &column.name);
                    out.extend(column.type_oid.to_be_bytes());
                    out.extend(column.type_modifier.to_be_bytes());
                }
            }
            Message::Type(ty) => {
                out.push(b'Y');
                out.extend(ty.oid.to_be_bytes());
                string(&mut out, &ty.namespace);
                string(&mut out, &ty.name);
            }
            Message::Insert(insert) => {
                out.push(b'I');
                out.extend(insert.relation_id.to_be_bytes());
                out.push(b'N');
                tuple(&mut out, &insert.new);
            }
            Message::Update(update) => {
                out.push(b'U');
                out.extend(update.relation_id.to_be_bytes());
                if let Some(old) = &update.old {
                    old_tuple(&mut out, old);
                }
                out.push(b'N');
                tuple(&mut out, &update.new);
            }
            Message::Delete(delete) => {
                out.push(b'D');
                out.extend(delete.relation_id.to_be_bytes());
                old_tuple(&mut out, &delete.old);
            }
            Message::Truncate(truncate) => {
                out.push(b'T');
                out.extend((truncate.relation_ids.len() as u32).to_be_bytes());
                out.push(truncate.options);
                for id in &truncate.relation_ids {
                    out.extend(id.to_be_bytes());
                }
            }
            Message::Logical(message) => {
                out.push(b'M');
                out.push(message.flags);
                out.extend(message.lsn.to_be_bytes());
                string(&mut out, &message.prefix);
                out.extend((message.content.len() as i32).to_be_bytes());
                out.extend(message.content.iter());
            }
        }
        out
    }

    fn string(out: &mut Vec<u8>, text: &str) {
        out.extend(text.as_bytes());
        out.push(0);
    }

    fn old_tuple(out: &mut Vec<u8>, old: &OldTuple<'_>) {
        match old {
            OldTuple::Key(key) => {
                out.push(b'K');
                tuple(out, key);
            }
            OldTuple::Full(row) => {
                out.push(b'O');
                tuple(out, row);
            }
        }
    }

    fn tuple(out: &mut Vec<u8>, tuple: &Tuple<'_>) {
        out.extend((tuple.0.len() as u16).to_be_bytes());
        for value in &tuple.0 {
            match value {
                TupleValue::Null => out.push(b'n'),
                TupleValue::Unchanged => out.push(b'u'),
                TupleValue::Text(text) => {
                    out.push(b't');
                    out.extend((text.len() as i32).to_be_bytes());
                    out.extend(text.as_bytes());
                }
                TupleValue::Binary(bytes) => {
                    out.push(b'b');
                    out.extend((bytes.len() as i32).to_be_bytes());
                    out.extend(bytes.iter());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_encode::encode;
    use super::*;
    use proptest::prelude::*;

    /// Concatenates byte pieces, so that hand-written messages read field by field.
    fn bytes(pieces: &[&[u8]]) -> Vec<u8> {
        pieces.concat()
    }

    fn text(value: &str) -> TupleValue<'_> {
        TupleValue::Text(Cow::Borrowed(value))
    }

    const OID: u32 = 16_384;

    #[test]
    fn decodes_a_hand_written_relation() {
        let input = bytes(&[
            b"R",
            &OID.to_be_bytes(),
            b"public\0",
            b"orders\0",
            b"d",
            &2u16.to_be_bytes(),
            &[1],
            b"id\0",
            &20u32.to_be_bytes(),
            &(-1i32).to_be_bytes(),
            &[0],
            b"price\0",
            &1700u32.to_be_bytes(),
            &0x000a_0006i32.to_be_bytes(),
        ]);
        let expected = Relation {
            id: OID,
            namespace: "public".into(),
            name: "orders".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                Column {
                    flags: 1,
                    name: "id".into(),
                    type_oid: 20,
                    type_modifier: -1,
                },
                Column {
                    flags: 0,
                    name: "price".into(),
                    type_oid: 1700,
                    type_modifier: 0x000a_0006,
                },
            ],
        };
        assert_eq!(decode(&input), Ok(Message::Relation(expected.clone())));
        assert!(expected.columns[0].is_key());
        assert!(!expected.columns[1].is_key());
    }

    #[test]
    fn decodes_a_hand_written_insert_with_every_value_kind() {
        let input = bytes(&[
            b"I",
            &OID.to_be_bytes(),
            b"N",
            &4u16.to_be_bytes(),
            b"t",
            &2i32.to_be_bytes(),
            b"42",
            b"n",
            b"u",
            b"b",
            &3i32.to_be_bytes(),
            &[0, 255, 7],
        ]);
        assert_eq!(
            decode(&input),
            Ok(Message::Insert(Insert {
                relation_id: OID,
                new: Tuple(vec![
                    text("42"),
                    TupleValue::Null,
                    TupleValue::Unchanged,
                    TupleValue::Binary(Cow::Borrowed(&[0, 255, 7])),
                ]),
            }))
        );
    }

    #[test]
    fn decodes_hand_written_updates_with_and_without_old_tuples() {
        let new = bytes(&[b"N", &1u16.to_be_bytes(), b"t", &1i32.to_be_bytes(), b"2"]);
        let old = bytes(&[&1u16.to_be_bytes(), b"t", &1i32.to_be_bytes(), b"1"]);
        let expected_new = Tuple(vec![text("2")]);
        let expected_old = Tuple(vec![text("1")]);

        let plain = bytes(&[b"U", &OID.to_be_bytes(), &new]);
        assert_eq!(
            decode(&plain),
            Ok(Message::Update(Update {
                relation_id: OID,
                old: None,
                new: expected_new.clone(),
            }))
        );

        let keyed = bytes(&[b"U", &OID.to_be_bytes(), b"K", &old, &new]);
        assert_eq!(
            decode(&keyed),
            Ok(Message::Update(Update {
                relation_id: OID,
                old: Some(OldTuple::Key(expected_old.clone())),
                new: expected_new.clone(),
            }))
        );

        let full = bytes(&[b"U", &OID.to_be_bytes(), b"O", &old, &new]);
        assert_eq!(
            decode(&full),
            Ok(Message::Update(Update {
                relation_id: OID,
                old: Some(OldTuple::Full(expected_old)),
                new: expected_new,
            }))
        );

        // An old tuple must be followed by the new one.
        let missing_new = bytes(&[b"U", &OID.to_be_bytes(), b"K", &old]);
        assert!(matches!(
            decode(&missing_new),
            Err(DecodeError::Truncated {
                what: "update new tuple marker",
                ..
            })
        ));
    }

    #[test]
    fn decodes_hand_written_deletes() {
        let old = bytes(&[&2u16.to_be_bytes(), b"t", &1i32.to_be_bytes(), b"7", b"n"]);
        let expected = Tuple(vec![text("7"), TupleValue::Null]);
        for (marker, wrap) in [
            (
                b"K",
                OldTuple::Key as fn(Tuple<'static>) -> OldTuple<'static>,
            ),
            (b"O", OldTuple::Full),
        ] {
            let input = bytes(&[b"D", &OID.to_be_bytes(), marker, &old]);
            assert_eq!(
                decode(&input),
                Ok(Message::Delete(Delete {
                    relation_id: OID,
                    old: wrap(expected.clone()),
                }))
            );
        }
        let bad = bytes(&[b"D", &OID.to_be_bytes(), b"N", &old]);
        assert_eq!(
            decode(&bad),
            Err(DecodeError::UnexpectedByte {
                what: "delete tuple marker",
                found: b'N',
                expected: "'K' or 'O'",
            })
        );
    }

    #[test]
    fn decodes_a_hand_written_truncate() {
        let input = bytes(&[
            b"T",
            &2u32.to_be_bytes(),
            &[Truncate::CASCADE | Truncate::RESTART_IDENTITY],
            &OID.to_be_bytes(),
            &(OID + 1).to_be_bytes(),
        ]);
        assert_eq!(
            decode(&input),
            Ok(Message::Truncate(Truncate {
                options: 3,
                relation_ids: vec![OID, OID + 1],
            }))
        );
    }

    #[test]
    fn rejects_invalid_utf8_text() {
        let input = bytes(&[
            b"I",
            &OID.to_be_bytes(),
            b"N",
            &1u16.to_be_bytes(),
            b"t",
            &2i32.to_be_bytes(),
            &[0xc3, 0x28],
        ]);
        assert_eq!(
            decode(&input),
            Err(DecodeError::InvalidUtf8 { what: "text value" })
        );
    }

    #[test]
    fn rejects_counts_larger_than_the_message_before_allocating() {
        let huge_truncate = bytes(&[b"T", &u32::MAX.to_be_bytes(), &[0]]);
        assert!(matches!(
            decode(&huge_truncate),
            Err(DecodeError::Truncated {
                what: "truncate relation ids",
                ..
            })
        ));
        let huge_tuple = bytes(&[b"I", &OID.to_be_bytes(), b"N", &u16::MAX.to_be_bytes()]);
        assert!(matches!(
            decode(&huge_tuple),
            Err(DecodeError::Truncated {
                what: "tuple values",
                ..
            })
        ));
        let negative = bytes(&[
            b"I",
            &OID.to_be_bytes(),
            b"N",
            &1u16.to_be_bytes(),
            b"t",
            &(-5i32).to_be_bytes(),
        ]);
        assert_eq!(
            decode(&negative),
            Err(DecodeError::NegativeLength {
                what: "text value length",
                length: -5,
            })
        );
    }

    #[test]
    fn rejects_unknown_tags_trailing_bytes_and_empty_input() {
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
        // 'S' is Stream Start, which only protocol version 2 sends.
        let err = decode(b"S\0\0\0\x01\x01").unwrap_err();
        assert_eq!(err, DecodeError::UnknownMessage(b'S'));
        assert!(err.to_string().contains("'S'"), "{err}");
        assert_eq!(
            decode(&bytes(&[
                b"Y",
                &25u32.to_be_bytes(),
                b"public\0",
                b"t\0",
                b"!"
            ])),
            Err(DecodeError::TrailingBytes {
                message: "type",
                count: 1,
            })
        );
    }

    fn sample_messages() -> Vec<Message<'static>> {
        vec![
            Message::Begin(Begin {
                final_lsn: 0x0000_0001_0000_0028,
                commit_time: 789_000_000_123,
                xid: 731,
            }),
            Message::Commit(Commit {
                flags: 0,
                commit_lsn: 0x0000_0001_0000_0028,
                end_lsn: 0x0000_0001_0000_0058,
                commit_time: -1,
            }),
            Message::Origin(Origin {
                commit_lsn: u64::MAX,
                name: "node_a".into(),
            }),
            Message::Relation(Relation {
                id: OID,
                namespace: String::new(),
                name: "Mixed Case ✓".into(),
                replica_identity: ReplicaIdentity::Full,
                columns: vec![Column {
                    flags: 0,
                    name: String::new(),
                    type_oid: 25,
                    type_modifier: -1,
                }],
            }),
            Message::Type(Type {
                oid: 70_000,
                namespace: "public".into(),
                name: "mood".into(),
            }),
            Message::Insert(Insert {
                relation_id: OID,
                new: Tuple(vec![text("1"), TupleValue::Null, text("")]),
            }),
            Message::Update(Update {
                relation_id: OID,
                old: Some(OldTuple::Full(Tuple(vec![text("1"), text("a")]))),
                new: Tuple(vec![text("1"), TupleValue::Unchanged]),
            }),
            Message::Delete(Delete {
                relation_id: OID,
                old: OldTuple::Key(Tuple(vec![text("1"), TupleValue::Null])),
            }),
            Message::Truncate(Truncate {
                options: 0,
                relation_ids: vec![],
            }),
            Message::Logical(LogicalMessage {
                flags: LogicalMessage::TRANSACTIONAL,
                lsn: 99,
                prefix: "viewcast".into(),
                content: Cow::Borrowed(b"\0binary\xff"),
            }),
        ]
    }

    #[test]
    fn every_message_kind_round_trips() {
        let samples = sample_messages();
        let tags: Vec<u8> = samples.iter().map(|m| encode(m)[0]).collect();
        assert_eq!(tags, b"BCORYIUDTM");
        for message in samples {
            assert_eq!(decode(&encode(&message)), Ok(message));
        }
    }

    fn tuple_strategy() -> impl Strategy<Value = Tuple<'static>> {
        let value = prop_oneof![
            Just(TupleValue::Null),
            Just(TupleValue::Unchanged),
            any::<String>().prop_map(|s| TupleValue::Text(Cow::Owned(s))),
            proptest::collection::vec(any::<u8>(), 0..8)
                .prop_map(|b| TupleValue::Binary(Cow::Owned(b))),
        ];
        proptest::collection::vec(value, 0..6).prop_map(Tuple)
    }

    fn old_strategy() -> impl Strategy<Value = OldTuple<'static>> {
        prop_oneof![
            tuple_strategy().prop_map(OldTuple::Key),
            tuple_strategy().prop_map(OldTuple::Full),
        ]
    }

    /// A string as Postgres sends names: any text without a nul byte.
    fn name_strategy() -> impl Strategy<Value = String> {
        any::<String>().prop_map(|s| s.replace('\0', ""))
    }

    fn message_strategy() -> impl Strategy<Value = Message<'static>> {
        let column = (any::<u8>(), name_strategy(), any::<u32>(), any::<i32>()).prop_map(
            |(flags, name, type_oid, type_modifier)| Column {
                flags,
                name,
                type_oid,
                type_modifier,
            },
        );
        prop_oneof![
            (any::<u64>(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, commit_time, xid)| {
                Message::Begin(Begin {
                    final_lsn,
                    commit_time,
                    xid,
                })
            }),
            (any::<u8>(), any::<u64>(), any::<u64>(), any::<i64>()).prop_map(
                |(flags, commit_lsn, end_lsn, commit_time)| Message::Commit(Commit {
                    flags,
                    commit_lsn,
                    end_lsn,
                    commit_time,
                })
            ),
            (any::<u64>(), name_strategy()).prop_map(|(commit_lsn, name)| {
                Message::Origin(Origin {
                    commit_lsn,
                    name: name.into(),
                })
            }),
            (
                any::<u32>(),
                name_strategy(),
                name_strategy(),
                any::<u8>(),
                proptest::collection::vec(column, 0..5)
            )
                .prop_map(|(id, namespace, name, identity, columns)| {
                    Message::Relation(Relation {
                        id,
                        namespace,
                        name,
                        replica_identity: ReplicaIdentity::from_byte(identity),
                        columns,
                    })
                }),
            (any::<u32>(), name_strategy(), name_strategy()).prop_map(|(oid, namespace, name)| {
                Message::Type(Type {
                    oid,
                    namespace: namespace.into(),
                    name: name.into(),
                })
            }),
            (any::<u32>(), tuple_strategy())
                .prop_map(|(relation_id, new)| Message::Insert(Insert { relation_id, new })),
            (
                any::<u32>(),
                proptest::option::of(old_strategy()),
                tuple_strategy()
            )
                .prop_map(|(relation_id, old, new)| Message::Update(Update {
                    relation_id,
                    old,
                    new,
                })),
            (any::<u32>(), old_strategy())
                .prop_map(|(relation_id, old)| Message::Delete(Delete { relation_id, old })),
            (any::<u8>(), proptest::collection::vec(any::<u32>(), 0..5)).prop_map(
                |(options, relation_ids)| Message::Truncate(Truncate {
                    options,
                    relation_ids,
                })
            ),
            (
                any::<u8>(),
                any::<u64>(),
                name_strategy(),
                proptest::collection::vec(any::<u8>(), 0..16)
            )
                .prop_map(|(flags, lsn, prefix, content)| {
                    Message::Logical(LogicalMessage {
                        flags,
                        lsn,
                        prefix: prefix.into(),
                        content: content.into(),
                    })
                }),
        ]
    }

    proptest! {
        #[test]
        fn decode_never_panics_on_arbitrary_bytes(
            input in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let _ = decode(&input);
        }

        #[test]
        fn decode_never_panics_on_arbitrary_bytes_after_a_valid_tag(
            tag in prop::sample::select(b"BCORYIUDTM".to_vec()),
            rest in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut input = vec![tag];
            input.extend(rest);
            let _ = decode(&input);
        }

        #[test]
        fn generated_messages_round_trip_and_every_prefix_is_rejected(
            message in message_strategy(),
        ) {
            let encoded = encode(&message);
            prop_assert_eq!(decode(&encoded), Ok(message));
            for cut in 0..encoded.len() {
                prop_assert!(decode(&encoded[..cut]).is_err(), "prefix of {} bytes decoded", cut);
            }
        }

        #[test]
        fn decode_never_panics_on_mutated_messages(
            message in message_strategy(),
            mutations in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut encoded = encode(&message);
            for (index, byte) in mutations {
                let at = index.index(encoded.len());
                encoded[at] = byte;
            }
            let _ = decode(&encoded);
        }
    }
}
