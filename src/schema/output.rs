//! Rows as GraphQL values, and ordering for one-shot queries.

use std::cmp::Ordering;
use std::sync::Arc;

use async_graphql::{Name, Value as GqlValue};

use super::user_error;
use crate::config::{ColumnType, SourceDef};
use crate::value::{Row, Value};

/// A row as one GraphQL object: all columns, or only `columns` (an UPDATE's key and changes).
pub struct RowView {
    row: Arc<Row>,
    columns: Option<Arc<[usize]>>,
}

impl RowView {
    pub fn new(row: Arc<Row>, columns: Option<Arc<[usize]>>) -> RowView {
        RowView { row, columns }
    }

    /// The GraphQL value of column `index`; `None` for NULL and for columns this view omits.
    pub(super) fn value(
        &self,
        index: usize,
        ty: &ColumnType,
    ) -> async_graphql::Result<Option<GqlValue>> {
        if let Some(columns) = &self.columns
            && !columns.contains(&index)
        {
            return Ok(None);
        }
        to_graphql(ty, self.row.get(index))
    }
}

/// Converts one column value to its GraphQL representation.
pub fn to_graphql(ty: &ColumnType, value: &Value) -> async_graphql::Result<Option<GqlValue>> {
    Ok(Some(match (ty, value) {
        (_, Value::Null) => return Ok(None),
        (ColumnType::Integer, Value::Int(i)) => {
            let i = i32::try_from(*i).map_err(|_| {
                user_error(
                    format!(
                        "value {i} does not fit GraphQL Int (32 bits); declare the column as BigInt"
                    ),
                    "VALUE_OUT_OF_RANGE",
                )
            })?;
            GqlValue::Number(i.into())
        }
        (ColumnType::BigInt, Value::Int(i)) => GqlValue::String(i.to_string()),
        (_, Value::Int(i)) => GqlValue::Number((*i).into()),
        (_, Value::Float(f)) => {
            GqlValue::Number(serde_json::Number::from_f64(*f).ok_or_else(|| {
                user_error(
                    format!("value {f} cannot be represented in GraphQL Float"),
                    "VALUE_OUT_OF_RANGE",
                )
            })?)
        }
        (_, Value::Bool(b)) => GqlValue::Boolean(*b),
        (ColumnType::JsonValue, Value::Text(text)) => {
            let json: serde_json::Value = serde_json::from_str(text).map_err(|e| {
                user_error(format!("column holds invalid JSON: {e}"), "INVALID_VALUE")
            })?;
            GqlValue::from_json(json).map_err(|e| user_error(e.to_string(), "INVALID_VALUE"))?
        }
        (ColumnType::Enum(def), Value::Enum(ordinal)) => GqlValue::Enum(Name::new(
            def.values.get(*ordinal as usize).map_or("", String::as_str),
        )),
        (ColumnType::Enum(def), Value::Text(label)) => {
            return Err(user_error(
                format!(
                    "value {label:?} is not a label of enum {}; add it to the enum in schema.yaml",
                    def.name
                ),
                "INVALID_VALUE",
            ));
        }
        (_, Value::Text(text)) => GqlValue::String(text.to_string()),
        (_, Value::Enum(ordinal)) => GqlValue::Number((*ordinal).into()),
    }))
}

/// One `order_by` term: column, descending, nulls first.
pub(super) type OrderTerm = (usize, bool, bool);

pub(super) fn parse_order_by(
    source: &SourceDef,
    arg: Option<async_graphql::dynamic::ValueAccessor<'_>>,
) -> async_graphql::Result<Vec<OrderTerm>> {
    let mut terms = Vec::new();
    let Some(arg) = arg.filter(|a| !a.is_null()) else {
        return Ok(terms);
    };
    for item in arg.list()?.iter() {
        for (name, direction) in item.object()?.iter() {
            if direction.is_null() {
                continue;
            }
            let column = source.column_index(name.as_str()).ok_or_else(|| {
                user_error(
                    format!("unknown column {name} in order_by"),
                    "BAD_USER_INPUT",
                )
            })?;
            // PostgreSQL's defaults: NULLS LAST for ascending, NULLS FIRST for descending.
            let (descending, nulls_first) = match direction.enum_name()? {
                "asc" | "asc_nulls_last" => (false, false),
                "asc_nulls_first" => (false, true),
                "desc" | "desc_nulls_first" => (true, true),
                "desc_nulls_last" => (true, false),
                other => {
                    return Err(user_error(
                        format!("unknown order_by direction {other}"),
                        "BAD_USER_INPUT",
                    ));
                }
            };
            terms.push((column, descending, nulls_first));
        }
    }
    Ok(terms)
}

/// Sorts by the `order_by` terms, then by primary key so results are deterministic.
pub(super) fn sort_rows(source: &SourceDef, terms: &[OrderTerm], rows: &mut [Arc<Row>]) {
    let key_terms = source.primary_key.iter().map(|&i| (i, false, false));
    let terms: Vec<OrderTerm> = terms.iter().copied().chain(key_terms).collect();
    rows.sort_by(|a, b| {
        for &(column, descending, nulls_first) in &terms {
            let ordering = match (a.get(column), b.get(column)) {
                (Value::Null, Value::Null) => Ordering::Equal,
                (Value::Null, _) => {
                    if nulls_first {
                        Ordering::Less
                    } else {
                        Ordering::Greater
                    }
                }
                (_, Value::Null) => {
                    if nulls_first {
                        Ordering::Greater
                    } else {
                        Ordering::Less
                    }
                }
                (x, y) => {
                    let o = compare_values(&source.columns[column].ty, x, y);
                    if descending { o.reverse() } else { o }
                }
            };
            if ordering != Ordering::Equal {
                return ordering;
            }
        }
        Ordering::Equal
    });
}

/// Total order on non-null values of one column type (NaN sorts last, as in PostgreSQL).
fn compare_values(ty: &ColumnType, a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => x.cmp(y),
        (Value::Float(x), Value::Float(y)) => x.total_cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Enum(x), Value::Enum(y)) => x.cmp(y),
        (Value::Text(x), Value::Text(y)) if *ty == ColumnType::Numeric => {
            crate::filter::compare_decimal(x, y)
        }
        (Value::Text(x), Value::Text(y)) => x.cmp(y),
        // Declared enum labels sort before undeclared ones.
        (Value::Enum(_), Value::Text(_)) => Ordering::Less,
        (Value::Text(_), Value::Enum(_)) => Ordering::Greater,
        _ => Ordering::Equal,
    }
}
