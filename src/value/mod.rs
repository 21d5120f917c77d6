//! Typed column values, rows and primary keys, and parsing of PostgreSQL's text output.
//!
//! Every feed delivers column values as PostgreSQL text (pgoutput in text mode, the simple
//! query protocol, COPY text after unescaping), so there is exactly one parser, here. Values
//! are kept exact: integers as `i64`, numerics as their decimal text, strings byte-for-byte.
//! This module does no I/O.

use std::hash::{Hash, Hasher};

use arcstr::ArcStr;
use triomphe::ThinArc;

use crate::config::ColumnType;

/// One column value.
#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Bool(bool),
    /// `Integer` and `BigInt` columns.
    Int(i64),
    Float(f64),
    /// Every textual type: `String`, `UUID`, `Timestamp`, `Date`, `Time`, `JSON`, `Array`,
    /// `Numeric` (decimal text, every digit kept) and `JSONValue` (JSON text). Also an enum
    /// label that is not one of the enum's declared values.
    Text(ArcStr),
    /// A declared enum label, by ordinal (its position in `schema.yaml`).
    Enum(u32),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(text) => Some(text),
            _ => None,
        }
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            // Bitwise, so that NaN equals itself and a row is equal to its own copy.
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
            (Value::Text(a), Value::Text(b)) => a == b,
            (Value::Enum(a), Value::Enum(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

/// A total order consistent with equality, and with the order query results are sorted in
/// for every column type but `Numeric` (decimal text): booleans, integers, floats (IEEE total
/// order), declared enum labels by ordinal before undeclared ones, text by bytes, and NULL
/// last. The cache keeps rows in this order of their keys.
impl Ord for Value {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        fn rank(value: &Value) -> u8 {
            match value {
                Value::Bool(_) => 0,
                Value::Int(_) => 1,
                Value::Float(_) => 2,
                Value::Enum(_) => 3,
                Value::Text(_) => 4,
                Value::Null => 5,
            }
        }
        match (self, other) {
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (Value::Int(a), Value::Int(b)) => a.cmp(b),
            (Value::Float(a), Value::Float(b)) => a.total_cmp(b),
            (Value::Enum(a), Value::Enum(b)) => a.cmp(b),
            (Value::Text(a), Value::Text(b)) => a.cmp(b),
            (a, b) => rank(a).cmp(&rank(b)),
        }
    }
}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Hash for Value {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            Value::Null => {}
            Value::Bool(b) => b.hash(state),
            Value::Int(i) => i.hash(state),
            Value::Float(f) => f.to_bits().hash(state),
            Value::Text(t) => t.hash(state),
            Value::Enum(e) => e.hash(state),
        }
    }
}

/// A full row: one value per configured column, in configuration order. One allocation (a
/// reference count, the length and the values) behind one word, shared by cloning: the cache,
/// the log and every snapshot hold the same row.
#[derive(Clone, PartialEq, Eq)]
pub struct Row(ThinArc<(), Value>);

impl Row {
    pub fn new(values: Vec<Value>) -> Row {
        Row(ThinArc::from_header_and_iter((), values.into_iter()))
    }

    pub fn get(&self, column: usize) -> &Value {
        &self.0.slice[column]
    }

    pub fn values(&self) -> &[Value] {
        &self.0.slice
    }

    /// Whether both are the same row (one allocation), not only equal ones.
    pub fn ptr_eq(a: &Row, b: &Row) -> bool {
        std::ptr::eq(a.0.ptr(), b.0.ptr())
    }

    /// How many references to this row there are (tests: who holds on to rows).
    #[cfg(test)]
    pub(crate) fn holders(&self) -> usize {
        ThinArc::strong_count(&self.0)
    }

    /// This row with the columns `unchanged` marks taken from `old` (PostgreSQL sends an
    /// unchanged TOASTed value as "same as before").
    #[must_use]
    pub fn with_unchanged_from(&self, unchanged: &[bool], old: &Row) -> Row {
        Row::new(
            self.values()
                .iter()
                .enumerate()
                .map(|(i, value)| {
                    if unchanged.get(i).copied().unwrap_or(false) {
                        old.get(i).clone()
                    } else {
                        value.clone()
                    }
                })
                .collect(),
        )
    }

    /// The primary key of this row, given the key's column indices.
    pub fn key(&self, key_columns: &[usize]) -> Key {
        Key(key_columns.iter().map(|&i| self.get(i).clone()).collect())
    }
}

impl std::fmt::Debug for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Row").field(&self.values()).finish()
    }
}

/// A primary key value (one value per key column), ordered column by column.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub Box<[Value]>);

/// Why a text value could not be read as its column's type.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("value {text:?} is not a valid {ty}")]
pub struct ValueError {
    pub text: String,
    pub ty: &'static str,
}

/// Parses PostgreSQL's text output for a column of type `ty`.
pub fn parse_text(ty: &ColumnType, text: &str) -> Result<Value, ValueError> {
    let invalid = |ty: &'static str| ValueError {
        text: text.to_owned(),
        ty,
    };
    Ok(match ty {
        ColumnType::Integer => Value::Int(text.parse().map_err(|_| invalid("Integer"))?),
        ColumnType::BigInt => Value::Int(text.parse().map_err(|_| invalid("BigInt"))?),
        ColumnType::Float => Value::Float(parse_float(text).ok_or_else(|| invalid("Float"))?),
        ColumnType::Boolean => Value::Bool(match text {
            "t" | "true" => true,
            "f" | "false" => false,
            _ => return Err(invalid("Boolean")),
        }),
        ColumnType::Enum(def) => match def.ordinal(text) {
            Some(ordinal) => Value::Enum(ordinal),
            None => Value::Text(text.into()),
        },
        ColumnType::String
        | ColumnType::Uuid
        | ColumnType::Timestamp
        | ColumnType::Date
        | ColumnType::Time
        | ColumnType::Json
        | ColumnType::Array
        | ColumnType::Numeric
        | ColumnType::JsonValue => Value::Text(text.into()),
    })
}

/// PostgreSQL prints `NaN`, `Infinity` and `-Infinity`; Rust's parser spells them otherwise.
fn parse_float(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EnumDef;
    use std::sync::Arc;

    #[test]
    fn integers_are_exact_at_the_extremes() {
        assert_eq!(
            parse_text(&ColumnType::BigInt, "9223372036854775807"),
            Ok(Value::Int(i64::MAX))
        );
        assert_eq!(
            parse_text(&ColumnType::BigInt, "-9223372036854775808"),
            Ok(Value::Int(i64::MIN))
        );
        assert!(parse_text(&ColumnType::Integer, "12.5").is_err());
    }

    #[test]
    fn booleans_reject_anything_but_postgres_spellings() {
        assert_eq!(parse_text(&ColumnType::Boolean, "t"), Ok(Value::Bool(true)));
        assert_eq!(
            parse_text(&ColumnType::Boolean, "f"),
            Ok(Value::Bool(false))
        );
        assert!(parse_text(&ColumnType::Boolean, "yes").is_err());
    }

    #[test]
    fn floats_accept_postgres_special_values() {
        assert!(matches!(parse_text(&ColumnType::Float, "NaN"), Ok(Value::Float(f)) if f.is_nan()));
        assert_eq!(
            parse_text(&ColumnType::Float, "-Infinity"),
            Ok(Value::Float(f64::NEG_INFINITY))
        );
        assert_eq!(
            parse_text(&ColumnType::Float, "1e-3"),
            Ok(Value::Float(0.001))
        );
    }

    #[test]
    fn numeric_keeps_every_digit() {
        let text = "123456789012345678901234567890.000000000000000001";
        assert_eq!(
            parse_text(&ColumnType::Numeric, text),
            Ok(Value::Text(text.into()))
        );
    }

    #[test]
    fn values_and_rows_are_compact() {
        // Every cached row holds one value per column and is held by the cache, the log and
        // snapshots: a word more in either is megabytes for a large source.
        assert_eq!(std::mem::size_of::<Value>(), 16);
        assert_eq!(std::mem::size_of::<Row>(), 8);
        let row = Row::new(vec![Value::Int(1), Value::Text("a".into())]);
        assert!(Row::ptr_eq(&row, &row.clone()));
        assert!(!Row::ptr_eq(&row, &Row::new(row.values().to_vec())));
        assert_eq!(row, Row::new(row.values().to_vec()));
    }

    #[test]
    fn enums_map_to_ordinals_and_keep_unknown_labels() {
        let def = Arc::new(EnumDef {
            name: "side".into(),
            values: vec!["buy".into(), "sell".into()],
        });
        let ty = ColumnType::Enum(def);
        assert_eq!(parse_text(&ty, "sell"), Ok(Value::Enum(1)));
        assert_eq!(parse_text(&ty, "hold"), Ok(Value::Text("hold".into())));
    }
}
