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
use crate::hub::{Cursor, Encoder, Event, EventKind, Hub};

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
    pub encoder: Arc<JsonEncoder>,
    /// The connection's use of the filter, held while the subscription runs.
    pub ticket: Option<crate::limits::FilterTicket>,
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

/// Serializes events as `{"data":{"<field>":{…}}}` for one selection set.
pub struct JsonEncoder {
    key: String,
    source: Arc<SourceDef>,
    /// The columns the subscriber's role sees (`None`: all).
    visible: Option<Arc<[usize]>>,
    root: String,
    fields: Vec<(String, UpdateField)>,
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
        let mut fields: Vec<(String, UpdateField)> = Vec::new();
        for selection in field.selection_set() {
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
        let key = format!("{root}{fields:?}{visible:?}");
        Some(JsonEncoder {
            key,
            source: source.clone(),
            visible,
            root,
            fields,
        })
    }

    fn write_data(
        &self,
        out: &mut String,
        errors: &mut Vec<serde_json::Value>,
        alias: &str,
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
                                &[&self.root, alias, column_alias],
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
                                &[&self.root, alias, column_alias],
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
        out.push_str(":{");
        for (i, (alias, field)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_string(&mut out, alias);
            out.push(':');
            match field {
                UpdateField::Operation => push_json_string(&mut out, operation_name(event.kind)),
                UpdateField::Typename => push_json_string(
                    &mut out,
                    &crate::config::names::source_update_type(&self.source.name),
                ),
                UpdateField::Cursor => match event.cursor {
                    Some(cursor) => push_json_string(&mut out, &cursor.to_string()),
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
                        push_json_string(&mut out, name);
                    }
                    out.push(']');
                }
                UpdateField::Data(columns) => {
                    self.write_data(&mut out, &mut errors, alias, columns, event);
                }
            }
        }
        out.push_str("}}");
        if !errors.is_empty() {
            out.push_str(",\"errors\":");
            out.push_str(&serde_json::Value::Array(errors).to_string());
        }
        out.push('}');
        out.into()
    }

    fn visible(&self) -> Option<&[usize]> {
        self.visible.as_deref()
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
