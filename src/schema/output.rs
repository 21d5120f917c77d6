//! Rows as GraphQL values, and ordering for one-shot queries.

use std::cmp::Ordering;
use std::sync::Arc;

use async_graphql::{Name, Value as GqlValue};

use super::user_error;
use crate::config::{ColumnType, SourceDef};
use crate::value::{Row, Value};

/// A row as one GraphQL object: all columns, or only `columns` (an UPDATE's key and changes).
pub struct RowView {
    row: Row,
    columns: Option<Arc<[usize]>>,
}

impl RowView {
    pub fn new(row: Row, columns: Option<Arc<[usize]>>) -> RowView {
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
    // GraphQL input coercion: a single object where a list is expected is a list of one.
    let list = arg.list().ok();
    let items: Vec<_> = match &list {
        Some(list) => list.iter().collect(),
        None => vec![arg],
    };
    for item in items {
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

/// The order `terms` give, then by primary key, so the order is total.
pub(super) fn comparator<'a>(
    source: &'a SourceDef,
    terms: &[OrderTerm],
) -> impl Fn(&Row, &Row) -> Ordering + Send + Sync + use<'a> {
    let key_terms = source.primary_key.iter().map(|&i| (i, false, false));
    let terms: Vec<OrderTerm> = terms.iter().copied().chain(key_terms).collect();
    move |a: &Row, b: &Row| {
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
    }
}

/// Whether the cache's key order ([`Value`]'s `Ord`) is the order `terms` give: no terms, and
/// no key column whose values sort otherwise (`Numeric` compares decimals, not text).
pub(super) fn is_key_order(source: &SourceDef, terms: &[OrderTerm]) -> bool {
    terms.is_empty()
        && source
            .primary_key
            .iter()
            .all(|&i| source.columns[i].ty != ColumnType::Numeric)
}

/// The rows `offset` to `offset + limit` of `rows` in the order `terms` give (then by primary
/// key, so the order is total): only those rows are sorted (a selection finds them in linear
/// time), not the whole set.
pub(super) fn window(
    source: &SourceDef,
    terms: &[OrderTerm],
    mut rows: Vec<Row>,
    offset: usize,
    limit: usize,
) -> Vec<Row> {
    let order = comparator(source, terms);
    let compare = |a: &Row, b: &Row| order(a, b);
    let end = offset.saturating_add(limit);
    if end == 0 || offset >= rows.len() {
        return Vec::new();
    }
    if rows.len() > end {
        rows.select_nth_unstable_by(end - 1, compare);
        rows.truncate(end);
    }
    rows.sort_by(compare);
    rows.drain(..offset);
    rows
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn source() -> Arc<SourceDef> {
        let yaml = "backend: postgres\nsources:\n  t:\n    primary_key: id\n    columns:\n      id: Integer\n      v: Integer\n";
        crate::config::load_str(std::path::Path::new("t.yaml"), yaml)
            .expect("config")
            .sources[0]
            .clone()
    }

    proptest! {
        /// The window is the same slice of the same order as sorting every row would give.
        #[test]
        fn a_window_is_the_slice_of_the_full_order(
            values in proptest::collection::vec(proptest::option::of(0..5i64), 0..60),
            offset in 0..70usize,
            limit in 0..70usize,
            descending: bool,
            nulls_first: bool,
        ) {
            let source = source();
            let rows: Vec<Row> = values
                .iter()
                .enumerate()
                .map(|(i, v)| Row::new(vec![Value::Int(i as i64), v.map_or(Value::Null, Value::Int)]))
                .collect();
            let terms = [(1, descending, nulls_first)];
            let full = window(&source, &terms, rows.clone(), 0, usize::MAX);
            let expected: Vec<_> = full.iter().skip(offset).take(limit).cloned().collect();
            let got = window(&source, &terms, rows, offset, limit);
            prop_assert_eq!(got, expected);
        }

        /// The cache's key order is the results' order for every type but `Numeric`, so a
        /// query without `order_by` may stop at its limit.
        #[test]
        fn the_key_order_is_the_result_order(
            ints in proptest::collection::vec(proptest::option::of(any::<i64>()), 2),
            floats in proptest::collection::vec(proptest::option::of(any::<f64>()), 2),
            texts in proptest::collection::vec(proptest::option::of(".{0,3}"), 2),
            enums in proptest::collection::vec(proptest::option::of(0..3u32), 2),
            flags in proptest::collection::vec(proptest::option::of(any::<bool>()), 2),
        ) {
            let cases: Vec<(ColumnType, Vec<Value>)> = vec![
                (ColumnType::Integer, ints.iter().map(|v| v.map_or(Value::Null, Value::Int)).collect()),
                (ColumnType::Float, floats.iter().map(|v| v.map_or(Value::Null, Value::Float)).collect()),
                (ColumnType::String, texts.iter().map(|v| v.as_deref().map_or(Value::Null, |t| Value::Text(t.into()))).collect()),
                (ColumnType::Boolean, flags.iter().map(|v| v.map_or(Value::Null, Value::Bool)).collect()),
                // An enum column: declared labels by ordinal, an undeclared one as text.
                (ColumnType::Integer, enums.iter().map(|v| match v {
                    Some(2) => Value::Text("undeclared".into()),
                    Some(o) => Value::Enum(*o),
                    None => Value::Null,
                }).collect()),
            ];
            for (ty, values) in cases {
                let yaml = format!("backend: postgres\nsources:\n  t:\n    primary_key: k\n    columns:\n      k: {}\n", ty_name(&ty));
                let source = crate::config::load_str(std::path::Path::new("t.yaml"), &yaml).expect("config").sources[0].clone();
                prop_assert!(is_key_order(&source, &[]));
                let order = comparator(&source, &[]);
                let (a, b) = (Row::new(vec![values[0].clone()]), Row::new(vec![values[1].clone()]));
                prop_assert_eq!(order(&a, &b), values[0].cmp(&values[1]), "{:?}", values);
            }
        }
    }

    fn ty_name(ty: &ColumnType) -> &'static str {
        match ty {
            ColumnType::Float => "Float",
            ColumnType::String => "String",
            ColumnType::Boolean => "Boolean",
            _ => "Integer",
        }
    }

    #[test]
    fn a_numeric_key_is_not_in_result_order() {
        let yaml = "backend: postgres\nsources:\n  t:\n    primary_key: k\n    columns:\n      k: Numeric\n";
        let source = crate::config::load_str(std::path::Path::new("t.yaml"), yaml)
            .expect("config")
            .sources[0]
            .clone();
        assert!(!is_key_order(&source, &[]));
        // "10" sorts before "9" as text, after it as a decimal.
        let (ten, nine) = (Value::Text("10".into()), Value::Text("9".into()));
        assert_eq!(ten.cmp(&nine), Ordering::Less);
        let order = comparator(&source, &[]);
        assert_eq!(
            order(&Row::new(vec![ten]), &Row::new(vec![nine])),
            Ordering::Greater
        );
        // An order_by is never the key order.
        assert!(!is_key_order(&self::source(), &[(1, false, false)]));
    }
}
