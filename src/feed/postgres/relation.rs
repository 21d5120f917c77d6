//! Mapping of one replicated table onto one configured source.
//!
//! A [`RelationMap`] is built from a source's configuration and the latest Relation message for
//! its table. It turns that table's Insert, Update and Delete messages into [`Change`]s over the
//! configured columns, in configuration order, parsing every value with [`parse_text`], and
//! reports a Truncate of the table as [`Mapped::Truncated`] for the feed to expand.
//!
//! It is pure: no I/O and no memory of earlier rows. It never guesses: a value it was not sent
//! is either taken from the old tuple of the same message or marked unchanged for the hub's
//! cache, and a key it was not sent is an error, never a made-up value.

use std::fmt::Write as _;

use crate::config::{ColumnType, QualifiedName, SourceDef};
use crate::feed::Change;
use crate::feed::postgres::pgoutput::{
    Column, Message, OldTuple, Relation, ReplicaIdentity, Tuple, TupleValue,
};
use crate::value::{Key, Row, Value, parse_text};

/// What one pgoutput message means for the mapped source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Mapped {
    /// One or more changes were appended (an Update that changes the key appends a Delete of
    /// the old key and an Upsert).
    Changes,
    /// The table was truncated: every row the source holds is gone.
    Truncated,
    /// The message is about another table, or is not a row change (Begin, Commit, Relation…).
    Unrelated,
}

/// Why a replicated row could not be mapped onto its source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error(
        "source `{source_name}`: table {table} has no column {}; its columns are {}; hint: \
         correct the column's name in schema.yaml, or add the column to the table (and to the \
         publication's column list, if it has one)",
        quoted_list(.missing),
        quoted_list(.available)
    )]
    MissingColumns {
        source_name: String,
        table: String,
        missing: Vec<String>,
        available: Vec<String>,
    },
    #[error(
        "source `{source_name}`: column {column} has the value {} which is not a valid {ty}; \
         hint: change the column's type in schema.yaml to match the database column",
        shorten(.text)
    )]
    InvalidValue {
        source_name: String,
        column: String,
        ty: String,
        text: String,
    },
    #[error(
        "source `{source_name}`: postgres sent {operation} on table {table} without the \
         configured primary-key {}, because the table's replica identity does not include \
         {}; hint: run `ALTER TABLE {table} REPLICA IDENTITY FULL`, or make the source's \
         primary_key match the table's primary key",
        column_phrase(.columns),
        if .columns.len() == 1 { "it" } else { "them" }
    )]
    KeyNotSent {
        source_name: String,
        table: String,
        operation: &'static str,
        columns: Vec<String>,
    },
    #[error(
        "source `{source_name}`: postgres sent primary-key column {column} of an update on table \
         {table} as an unchanged TOASTed value without the old row, so the row's key is \
         unknown; hint: run `ALTER TABLE {table} REPLICA IDENTITY FULL` so that postgres sends \
         the old row"
    )]
    UnchangedKey {
        source_name: String,
        table: String,
        column: String,
    },
    #[error(
        "source `{source_name}`: table {table} has REPLICA IDENTITY NOTHING, so postgres sends no \
         key for updates and deletes; hint: run `ALTER TABLE {table} REPLICA IDENTITY FULL`, or \
         give the table a primary key that matches the source's primary_key"
    )]
    NoReplicaIdentity { source_name: String, table: String },
    #[error(
        "source `{source_name}`: the configured primary-key {} not part of table {table}'s \
         replica identity ({identity}), so postgres does not send the old key when it changes \
         and the old row would stay visible; hint: run `ALTER TABLE {table} REPLICA IDENTITY \
         FULL`, or make the source's primary_key match the table's primary key",
        column_phrase_verb(.columns)
    )]
    KeyOutsideReplicaIdentity {
        source_name: String,
        table: String,
        identity: ReplicaIdentity,
        columns: Vec<String>,
    },
    #[error(
        "source `{source_name}`: {operation} on table {table} carries {found} values, but the \
         table's relation message announced {expected} columns"
    )]
    ValueCount {
        source_name: String,
        table: String,
        operation: &'static str,
        found: usize,
        expected: usize,
    },
    #[error(
        "source `{source_name}`: postgres sent column {column} of table {table} in binary \
         format, but viewcast asks for text and cannot read it"
    )]
    BinaryValue {
        source_name: String,
        table: String,
        column: String,
    },
    #[error(
        "source `{source_name}`: an insert into table {table} carries column {column} as an \
         unchanged TOASTed value, which postgres sends only in updates"
    )]
    UnchangedInInsert {
        source_name: String,
        table: String,
        column: String,
    },
}

impl MappingError {
    /// Whether the user can fix this (configuration or table definition), as opposed to
    /// Postgres sending something viewcast does not expect.
    pub fn is_user_error(&self) -> bool {
        match self {
            MappingError::MissingColumns { .. }
            | MappingError::InvalidValue { .. }
            | MappingError::KeyNotSent { .. }
            | MappingError::UnchangedKey { .. }
            | MappingError::NoReplicaIdentity { .. }
            | MappingError::KeyOutsideReplicaIdentity { .. } => true,
            MappingError::ValueCount { .. }
            | MappingError::BinaryValue { .. }
            | MappingError::UnchangedInInsert { .. } => false,
        }
    }
}

/// `"a", "b"` — names as SQL would quote them, for messages.
fn quoted_list(names: &[String]) -> String {
    let mut out = String::new();
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&crate::config::quote_ident(name));
    }
    if out.is_empty() {
        out.push_str("(none)");
    }
    out
}

fn column_phrase(columns: &[String]) -> String {
    match columns {
        [one] => format!("column {one}"),
        many => format!("columns {}", many.join(", ")),
    }
}

fn column_phrase_verb(columns: &[String]) -> String {
    match columns {
        [one] => format!("column {one} is"),
        many => format!("columns {} are", many.join(", ")),
    }
}

/// A value for a message: quoted, and cut after 80 characters so a misconfigured column of
/// large documents does not flood the log.
fn shorten(text: &str) -> String {
    const LIMIT: usize = 80;
    match text.char_indices().nth(LIMIT) {
        None => format!("{text:?}"),
        Some((end, _)) => format!("{:?}… ({} bytes)", &text[..end], text.len()),
    }
}

/// A configured column and where the table sends it.
#[derive(Debug, Clone)]
struct MappedColumn {
    /// Index into the relation's columns (and so into every tuple).
    position: usize,
    /// How messages name the column: the database name, and the GraphQL name when it differs.
    label: String,
    ty: ColumnType,
}

/// How one table's replicated rows become one source's rows.
#[derive(Debug, Clone)]
pub struct RelationMap {
    source_name: String,
    /// The table as SQL text, for messages and hints.
    table: String,
    relation_id: u32,
    /// How many values every tuple of the table carries.
    width: usize,
    /// Per relation column: whether it belongs to the replica identity.
    in_identity: Vec<bool>,
    replica_identity: ReplicaIdentity,
    /// The configured columns, in configuration order.
    columns: Vec<MappedColumn>,
    /// Indices into `columns` of the configured primary key.
    primary_key: Vec<usize>,
}

impl RelationMap {
    /// Maps every configured column of `source` to its position in `relation`. Columns of the
    /// table that the source does not configure are ignored.
    pub fn new(source: &SourceDef, relation: &Relation) -> Result<RelationMap, MappingError> {
        let table = QualifiedName {
            schema: Some(if relation.namespace.is_empty() {
                "pg_catalog".to_owned()
            } else {
                relation.namespace.clone()
            }),
            name: relation.name.clone(),
        }
        .sql();
        let mut columns = Vec::with_capacity(source.columns.len());
        let mut missing = Vec::new();
        for def in &source.columns {
            match relation.columns.iter().position(|c| c.name == def.sql_name) {
                Some(position) => {
                    let mut label = crate::config::quote_ident(&def.sql_name);
                    if def.name != def.sql_name {
                        let _ = write!(label, " (field `{}`)", def.name);
                    }
                    columns.push(MappedColumn {
                        position,
                        label,
                        ty: def.ty.clone(),
                    });
                }
                None => missing.push(def.sql_name.clone()),
            }
        }
        if !missing.is_empty() {
            return Err(MappingError::MissingColumns {
                source_name: source.name.clone(),
                table,
                missing,
                available: relation.columns.iter().map(|c| c.name.clone()).collect(),
            });
        }
        Ok(RelationMap {
            source_name: source.name.clone(),
            table,
            relation_id: relation.id,
            width: relation.columns.len(),
            in_identity: relation.columns.iter().map(Column::is_key).collect(),
            replica_identity: relation.replica_identity,
            columns,
            primary_key: source.primary_key.clone(),
        })
    }

    /// The OID of the mapped table.
    pub fn relation_id(&self) -> u32 {
        self.relation_id
    }

    /// Checks that Postgres will send the configured primary key of every updated and
    /// deleted row: the replica identity must be FULL or include every configured key column.
    /// Otherwise deletes fail to map and a change of the configured key goes unnoticed (the old
    /// row stays). The feed decides whether that is fatal (an insert-only table is fine).
    pub fn check_replica_identity(&self) -> Result<(), MappingError> {
        match self.replica_identity {
            ReplicaIdentity::Full => Ok(()),
            ReplicaIdentity::Nothing => Err(MappingError::NoReplicaIdentity {
                source_name: self.source_name.clone(),
                table: self.table.clone(),
            }),
            identity => {
                let outside = self.key_labels(|column| !self.in_identity[column.position]);
                if outside.is_empty() {
                    Ok(())
                } else {
                    Err(MappingError::KeyOutsideReplicaIdentity {
                        source_name: self.source_name.clone(),
                        table: self.table.clone(),
                        identity,
                        columns: outside,
                    })
                }
            }
        }
    }

    /// Maps one message, appending its changes (if any) to `changes`. On error nothing is
    /// appended.
    pub fn map(
        &self,
        message: &Message<'_>,
        changes: &mut Vec<Change>,
    ) -> Result<Mapped, MappingError> {
        match message {
            Message::Insert(insert) if insert.relation_id == self.relation_id => {
                changes.push(self.insert(&insert.new)?);
            }
            Message::Update(update) if update.relation_id == self.relation_id => {
                let (old_key_delete, upsert) = self.update(update.old.as_ref(), &update.new)?;
                changes.extend(old_key_delete);
                changes.push(upsert);
            }
            Message::Delete(delete) if delete.relation_id == self.relation_id => {
                let key = self.old_key(&delete.old, "a delete")?;
                changes.push(Change::Delete { key });
            }
            Message::Truncate(truncate) if truncate.relation_ids.contains(&self.relation_id) => {
                return Ok(Mapped::Truncated);
            }
            _ => return Ok(Mapped::Unrelated),
        }
        Ok(Mapped::Changes)
    }

    fn insert(&self, new: &Tuple<'_>) -> Result<Change, MappingError> {
        self.check_count(new, "an insert")?;
        let mut values = Vec::with_capacity(self.columns.len());
        for column in &self.columns {
            match self.value(column, &new.0[column.position])? {
                Some(value) => values.push(value),
                None => {
                    return Err(MappingError::UnchangedInInsert {
                        source_name: self.source_name.clone(),
                        table: self.table.clone(),
                        column: column.label.clone(),
                    });
                }
            }
        }
        Ok(Change::Upsert {
            row: Row::new(values),
            unchanged: None,
        })
    }

    /// An Upsert of the new row, preceded by a Delete of the old key when the old tuple shows
    /// that the configured key changed.
    fn update(
        &self,
        old: Option<&OldTuple<'_>>,
        new: &Tuple<'_>,
    ) -> Result<(Option<Change>, Change), MappingError> {
        self.check_count(new, "an update")?;
        if let Some(old) = old {
            self.check_count(old.tuple(), "an update")?;
        }
        let mut values = Vec::with_capacity(self.columns.len());
        let mut unchanged: Option<Box<[bool]>> = None;
        for (index, column) in self.columns.iter().enumerate() {
            if let Some(value) = self.value(column, &new.0[column.position])? {
                values.push(value);
                continue;
            }
            // An unchanged toasted value: the old tuple may carry it.
            if let Some(value) = old
                .map(|old| self.old_value(column, old))
                .transpose()?
                .flatten()
            {
                values.push(value);
                continue;
            }
            if self.primary_key.contains(&index) {
                return Err(MappingError::UnchangedKey {
                    source_name: self.source_name.clone(),
                    table: self.table.clone(),
                    column: column.label.clone(),
                });
            }
            // The hub takes this column from its cache; the placeholder is never shown.
            values.push(Value::Null);
            unchanged.get_or_insert_with(|| vec![false; self.columns.len()].into_boxed_slice())
                [index] = true;
        }
        let row = Row::new(values);
        let delete = match old {
            Some(old) => {
                let old_key = self.old_key(old, "an update")?;
                (old_key != row.key(&self.primary_key)).then_some(Change::Delete { key: old_key })
            }
            None => None,
        };
        Ok((delete, Change::Upsert { row, unchanged }))
    }

    /// The configured primary key of the row an old tuple describes.
    fn old_key(&self, old: &OldTuple<'_>, operation: &'static str) -> Result<Key, MappingError> {
        self.check_count(old.tuple(), operation)?;
        let mut values = Vec::with_capacity(self.primary_key.len());
        for &index in &self.primary_key {
            match self.old_value(&self.columns[index], old)? {
                Some(value) => values.push(value),
                None => {
                    return Err(MappingError::KeyNotSent {
                        source_name: self.source_name.clone(),
                        table: self.table.clone(),
                        operation,
                        columns: self.key_labels(|column| {
                            !matches!(self.old_value(column, old), Ok(Some(_)))
                        }),
                    });
                }
            }
        }
        Ok(Key(values.into_boxed_slice()))
    }

    /// A column's value in an old tuple, or `None` when the tuple does not carry it (a
    /// key-only tuple carries only the replica identity's columns).
    fn old_value(
        &self,
        column: &MappedColumn,
        old: &OldTuple<'_>,
    ) -> Result<Option<Value>, MappingError> {
        match old {
            OldTuple::Key(_) if !self.in_identity[column.position] => Ok(None),
            OldTuple::Key(tuple) | OldTuple::Full(tuple) => {
                self.value(column, &tuple.0[column.position])
            }
        }
    }

    /// The labels of the configured key columns that satisfy `pick`.
    fn key_labels(&self, pick: impl Fn(&MappedColumn) -> bool) -> Vec<String> {
        self.primary_key
            .iter()
            .map(|&index| &self.columns[index])
            .filter(|column| pick(column))
            .map(|column| column.label.clone())
            .collect()
    }

    /// One value, parsed as its column's type; `None` for an unchanged toasted value.
    fn value(
        &self,
        column: &MappedColumn,
        value: &TupleValue<'_>,
    ) -> Result<Option<Value>, MappingError> {
        match value {
            TupleValue::Null => Ok(Some(Value::Null)),
            TupleValue::Unchanged => Ok(None),
            TupleValue::Text(text) => {
                parse_text(&column.ty, text)
                    .map(Some)
                    .map_err(|err| MappingError::InvalidValue {
                        source_name: self.source_name.clone(),
                        column: column.label.clone(),
                        ty: column.ty.yaml_name().to_owned(),
                        text: err.text,
                    })
            }
            TupleValue::Binary(_) => Err(MappingError::BinaryValue {
                source_name: self.source_name.clone(),
                table: self.table.clone(),
                column: column.label.clone(),
            }),
        }
    }

    /// Every tuple must carry one value per relation column, or positions mean nothing.
    fn check_count(&self, tuple: &Tuple<'_>, operation: &'static str) -> Result<(), MappingError> {
        if tuple.0.len() == self.width {
            Ok(())
        } else {
            Err(MappingError::ValueCount {
                source_name: self.source_name.clone(),
                table: self.table.clone(),
                operation,
                found: tuple.0.len(),
                expected: self.width,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::config::{Backend, ColumnDef, StartMode};
    use crate::feed::postgres::pgoutput::test_encode::encode;
    use crate::feed::postgres::pgoutput::{Begin, Delete, Insert, Truncate, Update, decode};

    const OID: u32 = 16_384;

    fn column(name: &str, ty: ColumnType) -> ColumnDef {
        ColumnDef {
            name: name.into(),
            sql_name: name.into(),
            ty,
        }
    }

    fn source(columns: Vec<ColumnDef>, primary_key: &[usize]) -> SourceDef {
        SourceDef {
            name: "orders".into(),
            relation: QualifiedName {
                schema: Some("public".into()),
                name: "orders".into(),
            },
            backend: Backend::Postgres,
            start: StartMode::Eager,
            columns,
            primary_key: primary_key.to_vec(),
            feed: crate::config::FeedOptions::default(),
        }
    }

    /// A relation whose columns are `(name, part of the replica identity)`.
    fn relation(identity: ReplicaIdentity, columns: &[(&str, bool)]) -> Relation {
        Relation {
            id: OID,
            namespace: "public".into(),
            name: "orders".into(),
            replica_identity: identity,
            columns: columns
                .iter()
                .map(|&(name, key)| Column {
                    flags: u8::from(key),
                    name: name.into(),
                    type_oid: 25,
                    type_modifier: -1,
                })
                .collect(),
        }
    }

    fn t(text: &str) -> TupleValue<'_> {
        TupleValue::Text(Cow::Borrowed(text))
    }

    fn tuple<'a>(values: &[TupleValue<'a>]) -> Tuple<'a> {
        Tuple(values.to_vec())
    }

    fn text(value: &str) -> Value {
        Value::Text(value.into())
    }

    fn upsert(values: Vec<Value>) -> Change {
        Change::Upsert {
            row: Row::new(values),
            unchanged: None,
        }
    }

    fn delete_of(key: Vec<Value>) -> Change {
        Change::Delete {
            key: Key(key.into_boxed_slice()),
        }
    }

    fn insert<'a>(values: &[TupleValue<'a>]) -> Message<'a> {
        Message::Insert(Insert {
            relation_id: OID,
            new: tuple(values),
        })
    }

    fn update<'a>(old: Option<OldTuple<'a>>, new: &[TupleValue<'a>]) -> Message<'a> {
        Message::Update(Update {
            relation_id: OID,
            old,
            new: tuple(new),
        })
    }

    fn delete(old: OldTuple<'_>) -> Message<'_> {
        Message::Delete(Delete {
            relation_id: OID,
            old,
        })
    }

    fn run(map: &RelationMap, message: &Message<'_>) -> Result<Vec<Change>, MappingError> {
        let mut changes = Vec::new();
        let mapped = map.map(message, &mut changes)?;
        assert_eq!(mapped, Mapped::Changes);
        Ok(changes)
    }

    /// `orders(id BigInt key, status String, body String)` over a table that orders its columns
    /// differently and has one more.
    fn orders_map(identity: ReplicaIdentity) -> RelationMap {
        let source = source(
            vec![
                column("id", ColumnType::BigInt),
                column("status", ColumnType::String),
                column("body", ColumnType::String),
            ],
            &[0],
        );
        let relation = relation(
            identity,
            &[
                ("body", false),
                ("internal", false),
                ("id", true),
                ("status", false),
            ],
        );
        RelationMap::new(&source, &relation).unwrap()
    }

    #[test]
    fn reorders_columns_and_ignores_extra_table_columns() {
        let map = orders_map(ReplicaIdentity::Default);
        assert_eq!(map.relation_id(), OID);
        let changes = run(&map, &insert(&[t("hello"), t("secret"), t("7"), t("open")])).unwrap();
        assert_eq!(
            changes,
            vec![upsert(vec![Value::Int(7), text("open"), text("hello")])]
        );
    }

    #[test]
    fn missing_columns_are_named_with_the_table_columns_listed() {
        let source = source(
            vec![
                column("id", ColumnType::BigInt),
                column("stauts", ColumnType::String),
            ],
            &[0],
        );
        let relation = relation(ReplicaIdentity::Default, &[("id", true), ("status", false)]);
        let err = RelationMap::new(&source, &relation).unwrap_err();
        assert!(err.is_user_error());
        assert_eq!(
            err.to_string(),
            "source `orders`: table \"public\".\"orders\" has no column \"stauts\"; its columns \
             are \"id\", \"status\"; hint: correct the column's name in schema.yaml, or add the \
             column to the table (and to the publication's column list, if it has one)"
        );
    }

    #[test]
    fn nulls_map_to_null() {
        let map = orders_map(ReplicaIdentity::Default);
        let changes = run(
            &map,
            &insert(&[TupleValue::Null, TupleValue::Null, t("1"), TupleValue::Null]),
        )
        .unwrap();
        assert_eq!(
            changes,
            vec![upsert(vec![Value::Int(1), Value::Null, Value::Null])]
        );
    }

    #[test]
    fn composite_keys_come_from_key_tuples_and_detect_key_changes() {
        let source = source(
            vec![
                column("tenant", ColumnType::String),
                column("id", ColumnType::Integer),
                column("qty", ColumnType::Integer),
            ],
            &[0, 1],
        );
        let relation = relation(
            ReplicaIdentity::Default,
            &[("id", true), ("qty", false), ("tenant", true)],
        );
        let map = RelationMap::new(&source, &relation).unwrap();
        map.check_replica_identity().unwrap();

        let old_key = OldTuple::Key(tuple(&[t("5"), TupleValue::Null, t("acme")]));
        assert_eq!(
            run(&map, &delete(old_key.clone())).unwrap(),
            vec![delete_of(vec![text("acme"), Value::Int(5)])]
        );
        // Moving the row to another tenant changes its key.
        assert_eq!(
            run(&map, &update(Some(old_key), &[t("5"), t("3"), t("globex")])).unwrap(),
            vec![
                delete_of(vec![text("acme"), Value::Int(5)]),
                upsert(vec![text("globex"), Value::Int(5), Value::Int(3)]),
            ]
        );
    }

    #[test]
    fn a_primary_key_change_is_a_delete_then_an_upsert() {
        let map = orders_map(ReplicaIdentity::Default);
        let old = OldTuple::Key(tuple(&[
            TupleValue::Null,
            TupleValue::Null,
            t("1"),
            TupleValue::Null,
        ]));
        assert_eq!(
            run(
                &map,
                &update(Some(old), &[t("b"), t("x"), t("2"), t("open")])
            )
            .unwrap(),
            vec![
                delete_of(vec![Value::Int(1)]),
                upsert(vec![Value::Int(2), text("open"), text("b")]),
            ]
        );
    }

    #[test]
    fn an_update_that_keeps_its_key_is_one_upsert() {
        let map = orders_map(ReplicaIdentity::Full);
        let new = [t("b"), t("x"), t("1"), t("closed")];
        let expected = vec![upsert(vec![Value::Int(1), text("closed"), text("b")])];
        let old = OldTuple::Full(tuple(&[t("a"), t("x"), t("1"), t("open")]));
        assert_eq!(run(&map, &update(Some(old), &new)).unwrap(), expected);
        assert_eq!(run(&map, &update(None, &new)).unwrap(), expected);
    }

    #[test]
    fn unchanged_toasted_values_are_marked_unless_the_old_row_has_them() {
        let map = orders_map(ReplicaIdentity::Default);
        let new = [TupleValue::Unchanged, t("x"), t("1"), t("closed")];
        let marked = Change::Upsert {
            row: Row::new(vec![Value::Int(1), text("closed"), Value::Null]),
            unchanged: Some(vec![false, false, true].into_boxed_slice()),
        };
        assert_eq!(
            run(&map, &update(None, &new)).unwrap(),
            vec![marked.clone()]
        );
        // A key-only old tuple does not carry `body`, whatever it sends in its place.
        let old_key = OldTuple::Key(tuple(&[t("stale"), t("x"), t("1"), TupleValue::Null]));
        assert_eq!(
            run(&map, &update(Some(old_key), &new)).unwrap(),
            vec![marked]
        );
        // A full old row does.
        let old_row = OldTuple::Full(tuple(&[t("big body"), t("x"), t("1"), t("open")]));
        assert_eq!(
            run(&map, &update(Some(old_row), &new)).unwrap(),
            vec![upsert(vec![
                Value::Int(1),
                text("closed"),
                text("big body")
            ])]
        );
    }

    #[test]
    fn an_unchanged_key_without_the_old_row_is_an_error() {
        let source = source(
            vec![
                column("doc", ColumnType::String),
                column("n", ColumnType::Integer),
            ],
            &[0],
        );
        let relation = relation(ReplicaIdentity::Default, &[("doc", true), ("n", false)]);
        let map = RelationMap::new(&source, &relation).unwrap();
        let err = run(&map, &update(None, &[TupleValue::Unchanged, t("2")])).unwrap_err();
        assert!(err.is_user_error());
        assert_eq!(
            err.to_string(),
            "source `orders`: postgres sent primary-key column \"doc\" of an update on table \
             \"public\".\"orders\" as an unchanged TOASTed value without the old row, so the \
             row's key is unknown; hint: run `ALTER TABLE \"public\".\"orders\" REPLICA \
             IDENTITY FULL` so that postgres sends the old row"
        );
        // With the old row the key is known again.
        let old = OldTuple::Full(tuple(&[t("long key"), t("1")]));
        assert_eq!(
            run(&map, &update(Some(old), &[TupleValue::Unchanged, t("2")])).unwrap(),
            vec![upsert(vec![text("long key"), Value::Int(2)])]
        );
    }

    /// The table's own primary key is `id`, but the source is keyed on `code`.
    fn keyed_on_code(identity: ReplicaIdentity) -> RelationMap {
        let source = source(
            vec![
                column("code", ColumnType::String),
                column("id", ColumnType::Integer),
            ],
            &[0],
        );
        let relation = relation(identity, &[("id", true), ("code", false)]);
        RelationMap::new(&source, &relation).unwrap()
    }

    #[test]
    fn a_delete_without_the_configured_key_says_how_to_fix_it() {
        let map = keyed_on_code(ReplicaIdentity::Default);
        let old = OldTuple::Key(tuple(&[t("1"), TupleValue::Null]));
        let mut changes = vec![upsert(vec![text("kept"), Value::Int(0)])];
        let err = map.map(&delete(old.clone()), &mut changes).unwrap_err();
        assert_eq!(changes.len(), 1, "nothing is appended on error");
        assert!(err.is_user_error());
        assert_eq!(
            err.to_string(),
            "source `orders`: postgres sent a delete on table \"public\".\"orders\" without the \
             configured primary-key column \"code\", because the table's replica identity does \
             not include it; hint: run `ALTER TABLE \"public\".\"orders\" REPLICA IDENTITY \
             FULL`, or make the source's primary_key match the table's primary key"
        );
        // An update whose old key lacks `code` cannot tell whether `code` changed.
        assert!(matches!(
            run(&map, &update(Some(old), &[t("2"), t("a")])),
            Err(MappingError::KeyNotSent {
                operation: "an update",
                ..
            })
        ));
        // The same problem, reported before any row arrives.
        let err = map.check_replica_identity().unwrap_err();
        assert!(
            err.to_string().contains(
                "the configured primary-key column \"code\" is not part of table \
                 \"public\".\"orders\"'s replica identity (DEFAULT)"
            ),
            "{err}"
        );
    }

    #[test]
    fn full_replica_identity_carries_any_configured_key() {
        let map = keyed_on_code(ReplicaIdentity::Full);
        map.check_replica_identity().unwrap();
        let old = OldTuple::Full(tuple(&[t("1"), t("abc")]));
        assert_eq!(
            run(&map, &delete(old)).unwrap(),
            vec![delete_of(vec![text("abc")])]
        );
        let nothing = keyed_on_code(ReplicaIdentity::Nothing);
        assert!(matches!(
            nothing.check_replica_identity(),
            Err(MappingError::NoReplicaIdentity { .. })
        ));
    }

    #[test]
    fn an_unparseable_value_names_source_column_type_and_text() {
        let mut source = source(
            vec![
                column("id", ColumnType::Integer),
                column("paid", ColumnType::Boolean),
            ],
            &[0],
        );
        source.columns[1].name = "isPaid".into();
        let relation = relation(ReplicaIdentity::Default, &[("id", true), ("paid", false)]);
        let map = RelationMap::new(&source, &relation).unwrap();
        let err = run(&map, &insert(&[t("1"), t("yes")])).unwrap_err();
        assert!(err.is_user_error());
        assert_eq!(
            err.to_string(),
            "source `orders`: column \"paid\" (field `isPaid`) has the value \"yes\" which is \
             not a valid Boolean; hint: change the column's type in schema.yaml to match the \
             database column"
        );
        let long = "x".repeat(500);
        let err = run(&map, &insert(&[t(&long), t("t")])).unwrap_err();
        assert!(err.to_string().contains("… (500 bytes)"), "{err}");
        assert!(matches!(err, MappingError::InvalidValue { ref ty, .. } if ty == "Integer"));
    }

    #[test]
    fn multibyte_text_survives_encoding_decoding_and_mapping() {
        let map = orders_map(ReplicaIdentity::Default);
        let body = "Zürich — 東京 🚀 \u{0301}e";
        let bytes = encode(&insert(&[
            TupleValue::Text(Cow::Owned(body.to_owned())),
            TupleValue::Null,
            t("3"),
            t("ñ"),
        ]));
        let message = decode(&bytes).unwrap();
        assert_eq!(
            run(&map, &message).unwrap(),
            vec![upsert(vec![Value::Int(3), text("ñ"), text(body)])]
        );
    }

    #[test]
    fn int8_extremes_and_long_numerics_stay_exact() {
        let source = source(
            vec![
                column("id", ColumnType::BigInt),
                column("amount", ColumnType::Numeric),
            ],
            &[0],
        );
        let relation = relation(ReplicaIdentity::Default, &[("id", true), ("amount", false)]);
        let map = RelationMap::new(&source, &relation).unwrap();
        let numeric = "123456789012345678901234567890.123456789012345678901234567890";
        for (id, expected) in [
            ("9223372036854775807", i64::MAX),
            ("-9223372036854775808", i64::MIN),
        ] {
            assert_eq!(
                run(&map, &insert(&[t(id), t(numeric)])).unwrap(),
                vec![upsert(vec![Value::Int(expected), text(numeric)])]
            );
        }
        assert!(matches!(
            run(&map, &insert(&[t("9223372036854775808"), t("1")])),
            Err(MappingError::InvalidValue { .. })
        ));
    }

    #[test]
    fn truncates_of_the_table_are_reported_and_other_messages_are_unrelated() {
        let map = orders_map(ReplicaIdentity::Default);
        let mut changes = Vec::new();
        let truncate = |ids: Vec<u32>| {
            Message::Truncate(Truncate {
                options: 0,
                relation_ids: ids,
            })
        };
        assert_eq!(
            map.map(&truncate(vec![1, OID]), &mut changes),
            Ok(Mapped::Truncated)
        );
        assert_eq!(
            map.map(&truncate(vec![1, 2]), &mut changes),
            Ok(Mapped::Unrelated)
        );
        let other = Message::Insert(Insert {
            relation_id: OID + 1,
            new: tuple(&[t("not ours")]),
        });
        assert_eq!(map.map(&other, &mut changes), Ok(Mapped::Unrelated));
        let begin = Message::Begin(Begin {
            final_lsn: 1,
            commit_time: 0,
            xid: 1,
        });
        assert_eq!(map.map(&begin, &mut changes), Ok(Mapped::Unrelated));
        assert!(changes.is_empty());
    }

    #[test]
    fn protocol_surprises_are_internal_errors() {
        let map = orders_map(ReplicaIdentity::Default);
        let short = run(&map, &insert(&[t("1")])).unwrap_err();
        assert!(!short.is_user_error());
        assert_eq!(
            short.to_string(),
            "source `orders`: an insert on table \"public\".\"orders\" carries 1 values, but \
             the table's relation message announced 4 columns"
        );
        let binary = TupleValue::Binary(Cow::Borrowed(&[0, 0, 0, 1]));
        let err = run(&map, &insert(&[t("b"), t("x"), binary, t("s")])).unwrap_err();
        assert!(matches!(err, MappingError::BinaryValue { .. }));
        assert!(!err.is_user_error());
        let err = run(
            &map,
            &insert(&[TupleValue::Unchanged, t("x"), t("1"), t("s")]),
        )
        .unwrap_err();
        assert!(matches!(err, MappingError::UnchangedInInsert { .. }));
    }
}
