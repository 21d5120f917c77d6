//! The fast path of subscriptions: a subscription's selection compiled once into a
//! [`JsonEncoder`], which serializes each event straight to the response JSON. Readers with the
//! same filter and the same selection share the serialized batches (see `hub::Encoder`), so a
//! batch is filtered and serialized once per distinct view, and each connection only copies
//! bytes.
//!
//! The GraphQL executor still validates every subscription and coerces its arguments: the
//! subscription resolver, when it finds a [`PlanSlot`] in the request data, records a
//! [`SubscriptionPlan`] instead of streaming, and the WebSocket layer runs the plan.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use async_graphql::SelectionField;

use super::output::to_graphql;
use crate::config::SourceDef;
use crate::filter::Filter;
use crate::hub::{Cursor, Encoder, Event, EventKind, Hub, Window};

/// Where the subscription resolver leaves its plan when the request asks for one.
#[derive(Clone, Default)]
pub struct PlanSlot(pub Arc<Mutex<Option<SubscriptionPlan>>>);

impl PlanSlot {
    pub fn take(&self) -> Option<SubscriptionPlan> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    pub(super) fn put(&self, plan: SubscriptionPlan) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(plan);
    }
}

/// A validated subscription, ready to run without the executor.
pub struct SubscriptionPlan {
    pub hub: Arc<Hub>,
    pub filter: Filter,
    pub after: Option<Cursor>,
    pub snapshot_end: bool,
    pub encoding: Encoding,
    /// The connection's use of the filter, held while the subscription runs.
    pub ticket: Option<crate::limits::FilterTicket>,
}

/// How a planned subscription's results are encoded.
pub enum Encoding {
    /// One result per update (`S`).
    Updates(Arc<JsonEncoder>),
    /// One result per window of updates (`S_batches`).
    Batches(Arc<BatchEncoder>, Window),
}

#[derive(Debug)]
enum UpdateField {
    Operation,
    Data(Vec<(String, DataField)>),
    Fields,
    Cursor,
    Timestamp,
    Typename,
}

#[derive(Debug)]
enum DataField {
    Column(usize),
    Typename,
}

/// The columns a `data` selection asks for, in order, repeated response keys merged.
fn data_columns(
    source: &SourceDef,
    selection: &SelectionField<'_>,
) -> Option<Vec<(String, DataField)>> {
    let mut columns: Vec<(String, DataField)> = Vec::new();
    for column in selection.selection_set() {
        let alias = column.alias().unwrap_or(column.name()).to_owned();
        if columns.iter().any(|(a, _)| *a == alias) {
            continue;
        }
        let kind = match column.name() {
            "__typename" => DataField::Typename,
            name => DataField::Column(source.column_index(name)?),
        };
        columns.push((alias, kind));
    }
    Some(columns)
}

/// A compiled `SUpdate` selection: writes one event as the JSON object the selection asks for.
struct UpdateSelection {
    source: Arc<SourceDef>,
    /// The columns the subscriber's role sees (`None`: all).
    visible: Option<Arc<[usize]>>,
    fields: Vec<(String, UpdateField)>,
}

impl UpdateSelection {
    /// `None` if the selection asks for something the encoder does not know.
    fn compile<'a>(
        source: &Arc<SourceDef>,
        selection: impl Iterator<Item = SelectionField<'a>>,
        visible: Option<Arc<[usize]>>,
    ) -> Option<UpdateSelection> {
        let mut fields: Vec<(String, UpdateField)> = Vec::new();
        for selection in selection {
            let alias = selection.alias().unwrap_or(selection.name()).to_owned();
            let kind = match selection.name() {
                "operation" => UpdateField::Operation,
                "fields" => UpdateField::Fields,
                "cursor" => UpdateField::Cursor,
                "timestamp" => UpdateField::Timestamp,
                "__typename" => UpdateField::Typename,
                "data" => UpdateField::Data(data_columns(source, &selection)?),
                _ => return None,
            };
            // GraphQL merges repeated response keys (validation guarantees they name the same
            // field); for `data`, the sub-selections merge too.
            match (fields.iter_mut().find(|(a, _)| *a == alias), kind) {
                (Some((_, UpdateField::Data(columns))), UpdateField::Data(more)) => {
                    for (column_alias, column) in more {
                        if !columns.iter().any(|(a, _)| *a == column_alias) {
                            columns.push((column_alias, column));
                        }
                    }
                }
                (Some(_), _) => {}
                (None, kind) => fields.push((alias, kind)),
            }
        }
        Some(UpdateSelection {
            source: source.clone(),
            visible,
            fields,
        })
    }

    /// What identifies the encoding (equal keys encode every event identically).
    fn key(&self) -> String {
        format!("{:?}{:?}", self.fields, self.visible)
    }

    /// Writes the update object; field errors go to `errors` with paths from `path` on.
    fn write(
        &self,
        out: &mut String,
        errors: &mut Vec<serde_json::Value>,
        path: &[&str],
        event: &Event,
    ) {
        out.push('{');
        for (i, (alias, field)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_string(out, alias);
            out.push(':');
            match field {
                UpdateField::Operation => push_json_string(out, operation_name(event.kind)),
                UpdateField::Typename => push_json_string(
                    out,
                    &crate::config::names::source_update_type(&self.source.name),
                ),
                UpdateField::Cursor => match event.cursor {
                    Some(cursor) => push_json_string(out, &cursor.to_string()),
                    None => out.push_str("null"),
                },
                UpdateField::Timestamp => {
                    let _ = write!(out, "\"{}\"", event.position.0);
                }
                UpdateField::Fields => {
                    out.push('[');
                    let names = event_field_names(&self.source, event, self.visible.as_deref());
                    for (n, name) in names.enumerate() {
                        if n > 0 {
                            out.push(',');
                        }
                        push_json_string(out, name);
                    }
                    out.push(']');
                }
                UpdateField::Data(columns) => {
                    self.write_data(out, errors, &joined(path, alias), columns, event);
                }
            }
        }
        out.push('}');
    }

    fn write_data(
        &self,
        out: &mut String,
        errors: &mut Vec<serde_json::Value>,
        path: &[&str],
        columns: &[(String, DataField)],
        event: &Event,
    ) {
        let Some(row) = &event.row else {
            out.push_str("null");
            return;
        };
        let visible = |index: usize| match &event.columns {
            None => true,
            Some(changed) => changed.contains(&index) || self.source.is_key_column(index),
        };
        let mut object = String::from("{");
        for (i, (column_alias, field)) in columns.iter().enumerate() {
            if i > 0 {
                object.push(',');
            }
            push_json_string(&mut object, column_alias);
            object.push(':');
            match field {
                DataField::Typename => push_json_string(&mut object, &self.source.name),
                DataField::Column(index) if !visible(*index) => object.push_str("null"),
                DataField::Column(index) => {
                    let column = &self.source.columns[*index];
                    match to_graphql(&column.ty, row.get(*index)) {
                        Ok(Some(value)) => object.push_str(
                            &serde_json::to_string(&value).unwrap_or_else(|_| "null".into()),
                        ),
                        Ok(None) if !self.source.is_key_column(*index) => object.push_str("null"),
                        Ok(None) => {
                            // A NULL key column cannot be represented (the type is non-null):
                            // like the executor, null the nearest nullable parent.
                            errors.push(field_error(
                                "key column is null",
                                &joined(path, column_alias),
                                None,
                            ));
                            out.push_str("null");
                            return;
                        }
                        Err(err) => {
                            let code = err
                                .extensions
                                .as_ref()
                                .and_then(|e| e.get("code"))
                                .map(ToString::to_string);
                            errors.push(field_error(
                                &err.message,
                                &joined(path, column_alias),
                                code,
                            ));
                            if self.source.is_key_column(*index) {
                                out.push_str("null");
                                return;
                            }
                            object.push_str("null");
                        }
                    }
                }
            }
        }
        object.push('}');
        out.push_str(&object);
    }
}

/// Serializes events as `{"data":{"<field>":{…}}}` for one selection set.
pub struct JsonEncoder {
    key: String,
    root: String,
    update: UpdateSelection,
}

impl JsonEncoder {
    /// Compiles the selection of a source's subscription field. `None` if it selects something
    /// the encoder does not know (the executor then serves the subscription).
    pub(super) fn compile(
        source: &Arc<SourceDef>,
        field: &SelectionField<'_>,
        visible: Option<Arc<[usize]>>,
    ) -> Option<JsonEncoder> {
        let root = field.alias().unwrap_or(field.name()).to_owned();
        let update = UpdateSelection::compile(source, field.selection_set(), visible)?;
        Some(JsonEncoder {
            key: format!("{root}{}", update.key()),
            root,
            update,
        })
    }
}

impl Encoder for JsonEncoder {
    type Item = Arc<str>;

    fn key(&self) -> &str {
        &self.key
    }

    fn encode(&self, event: &Event) -> Arc<str> {
        let mut out = String::with_capacity(128);
        let mut errors = Vec::new();
        out.push_str("{\"data\":{");
        push_json_string(&mut out, &self.root);
        out.push(':');
        self.update
            .write(&mut out, &mut errors, &[&self.root], event);
        out.push('}');
        if !errors.is_empty() {
            out.push_str(",\"errors\":");
            out.push_str(&serde_json::Value::Array(errors).to_string());
        }
        out.push('}');
        out.into()
    }

    fn visible(&self) -> Option<&[usize]> {
        self.update.visible.as_deref()
    }
}

/// One update of a batched subscription, encoded once per view: its element of `updates`, the
/// field errors it raised (paths from inside the element) and the cursor it carries.
pub struct BatchItem {
    update: Box<str>,
    errors: Vec<serde_json::Value>,
    cursor: Option<Cursor>,
}

/// A field of an `SBatch` selection.
#[derive(Debug)]
enum BatchField {
    Updates,
    Cursor,
    Typename,
}

/// Serializes a batched subscription (`S_batches`): each event once per view as an element of
/// `updates`; [`BatchEncoder::payload`] joins a window's elements into one result.
pub struct BatchEncoder {
    key: String,
    root: String,
    source: Arc<SourceDef>,
    fields: Vec<(String, BatchField)>,
    update: UpdateSelection,
}

impl BatchEncoder {
    /// Compiles the selection of a source's batches field. `None` if it selects something the
    /// encoder does not know, or `updates` under two names (the executor then serves it).
    pub(super) fn compile(
        source: &Arc<SourceDef>,
        field: &SelectionField<'_>,
        visible: Option<Arc<[usize]>>,
    ) -> Option<BatchEncoder> {
        let root = field.alias().unwrap_or(field.name()).to_owned();
        let mut fields: Vec<(String, BatchField)> = Vec::new();
        let mut updates = Vec::new();
        for selection in field.selection_set() {
            let alias = selection.alias().unwrap_or(selection.name()).to_owned();
            let kind = match selection.name() {
                "updates" => {
                    updates.push(selection);
                    BatchField::Updates
                }
                "cursor" => BatchField::Cursor,
                "__typename" => BatchField::Typename,
                _ => return None,
            };
            if !fields.iter().any(|(a, _)| *a == alias) {
                fields.push((alias, kind));
            }
        }
        let updates_fields = fields
            .iter()
            .filter(|(_, kind)| matches!(kind, BatchField::Updates))
            .count();
        if updates_fields > 1 {
            return None;
        }
        let update = UpdateSelection::compile(
            source,
            updates.iter().flat_map(SelectionField::selection_set),
            visible,
        )?;
        Some(BatchEncoder {
            key: format!("{root}{fields:?}{}", update.key()),
            root,
            source: source.clone(),
            fields,
            update,
        })
    }

    /// One window's result: `{"data":{"<field>":{"updates":[…],"cursor":…}}}`, with the errors
    /// of its updates at their places in the list. The cursor is the last one the window's
    /// updates carry.
    pub fn payload<'a>(&self, items: impl Iterator<Item = &'a Arc<BatchItem>>) -> String {
        let items: Vec<&Arc<BatchItem>> = items.collect();
        let mut out = String::with_capacity(
            64 + items
                .iter()
                .map(|item| item.update.len() + 1)
                .sum::<usize>(),
        );
        let mut errors = Vec::new();
        out.push_str("{\"data\":{");
        push_json_string(&mut out, &self.root);
        out.push_str(":{");
        for (i, (alias, field)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_string(&mut out, alias);
            out.push(':');
            match field {
                BatchField::Updates => {
                    out.push('[');
                    for (n, item) in items.iter().enumerate() {
                        if n > 0 {
                            out.push(',');
                        }
                        out.push_str(&item.update);
                        errors.extend(
                            item.errors
                                .iter()
                                .map(|error| at_element(error.clone(), &self.root, alias, n)),
                        );
                    }
                    out.push(']');
                }
                BatchField::Cursor => match items.iter().rev().find_map(|item| item.cursor) {
                    Some(cursor) => push_json_string(&mut out, &cursor.to_string()),
                    None => out.push_str("null"),
                },
                BatchField::Typename => push_json_string(
                    &mut out,
                    &crate::config::names::source_batch_type(&self.source.name),
                ),
            }
        }
        out.push_str("}}");
        if !errors.is_empty() {
            out.push_str(",\"errors\":");
            out.push_str(&serde_json::Value::Array(errors).to_string());
        }
        out.push('}');
        out
    }
}

/// An update's field error with its path from the result's root: `[root, updates, n, …]`.
fn at_element(
    mut error: serde_json::Value,
    root: &str,
    updates: &str,
    n: usize,
) -> serde_json::Value {
    let inner = match error.get_mut("path").map(serde_json::Value::take) {
        Some(serde_json::Value::Array(inner)) => inner,
        _ => Vec::new(),
    };
    let path: Vec<serde_json::Value> = [root.into(), updates.into(), n.into()]
        .into_iter()
        .chain(inner)
        .collect();
    error["path"] = path.into();
    error
}

impl Encoder for BatchEncoder {
    type Item = Arc<BatchItem>;

    fn key(&self) -> &str {
        &self.key
    }

    fn encode(&self, event: &Event) -> Arc<BatchItem> {
        let mut update = String::with_capacity(128);
        let mut errors = Vec::new();
        self.update.write(&mut update, &mut errors, &[], event);
        Arc::new(BatchItem {
            update: update.into(),
            errors,
            cursor: event.cursor,
        })
    }

    fn visible(&self) -> Option<&[usize]> {
        self.update.visible.as_deref()
    }
}

pub(super) fn operation_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Insert => "INSERT",
        EventKind::Update => "UPDATE",
        EventKind::Delete => "DELETE",
        EventKind::SnapshotEnd => "SNAPSHOT_END",
        EventKind::Reset => "RESET",
    }
}

/// The column names an event's `fields` lists: all for INSERT and DELETE, the changed ones for
/// UPDATE, none for markers; only those in `visible` when given (a role's columns).
pub(super) fn event_field_names<'a>(
    source: &'a SourceDef,
    event: &'a Event,
    visible: Option<&'a [usize]>,
) -> impl Iterator<Item = &'a str> + 'a {
    let indices: Box<dyn Iterator<Item = usize> + 'a> = match (&event.kind, &event.columns) {
        (EventKind::Update, Some(changed)) => Box::new(changed.iter().copied()),
        (EventKind::Insert | EventKind::Update | EventKind::Delete, _) => {
            Box::new(0..source.columns.len())
        }
        (EventKind::SnapshotEnd | EventKind::Reset, _) => Box::new(std::iter::empty()),
    };
    indices
        .filter(move |i| visible.is_none_or(|v| v.contains(i)))
        .map(|i| source.columns[i].name.as_str())
}

/// `path` with `last` after it.
fn joined<'a>(path: &[&'a str], last: &'a str) -> Vec<&'a str> {
    path.iter().copied().chain([last]).collect()
}

fn field_error(message: &str, path: &[&str], code: Option<String>) -> serde_json::Value {
    let mut error = serde_json::json!({ "message": message, "path": path });
    if let Some(code) = code {
        let code: serde_json::Value =
            serde_json::from_str(&code).unwrap_or(serde_json::Value::String(code));
        error["extensions"] = serde_json::json!({ "code": code });
    }
    error
}

fn push_json_string(out: &mut String, text: &str) {
    // serde_json escapes exactly as JSON requires; writing to a String cannot fail.
    out.push_str(&serde_json::to_string(text).unwrap_or_default());
}
