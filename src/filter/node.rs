//! The compiled form of a filter and its evaluation in three-valued logic.
//!
//! Operands are already in the column's typed representation, LIKE patterns and regular
//! expressions are already compiled: evaluating a [`Node`] on a row reads the row in place and
//! never allocates. A row value of an unexpected type (which the feeds never produce) is
//! treated like NULL: the comparison is UNKNOWN, never a panic.

use std::cmp::Ordering;

use regex::Regex;

use super::decimal::{DecRef, Decimal};
use super::like::LikePattern;
use crate::value::{Row, Value};

/// A truth value of SQL's three-valued (Kleene) logic; ordered so that AND is `min` and OR is
/// `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Truth {
    False,
    Unknown,
    True,
}

impl Truth {
    #[must_use]
    pub fn and(self, other: Truth) -> Truth {
        self.min(other)
    }

    #[must_use]
    pub fn or(self, other: Truth) -> Truth {
        self.max(other)
    }
}

/// Kleene negation: NOT UNKNOWN is UNKNOWN.
impl std::ops::Not for Truth {
    type Output = Truth;

    fn not(self) -> Truth {
        match self {
            Truth::False => Truth::True,
            Truth::Unknown => Truth::Unknown,
            Truth::True => Truth::False,
        }
    }
}

impl From<bool> for Truth {
    fn from(value: bool) -> Truth {
        if value { Truth::True } else { Truth::False }
    }
}

impl From<Option<bool>> for Truth {
    fn from(value: Option<bool>) -> Truth {
        value.map_or(Truth::Unknown, Truth::from)
    }
}

/// How a column's row values are read and compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `Integer`, `BigInt`: `Value::Int`.
    Int,
    /// `Float`: `Value::Float`, NaN equal to itself and above every number.
    Float,
    /// `Numeric`: `Value::Text` holding decimal text, compared exactly.
    Numeric,
    /// Every other textual type: `Value::Text`, compared bytewise.
    Text,
    /// `Boolean`: `Value::Bool`, equality only.
    Bool,
    /// A user enum: `Value::Enum(ordinal)`, or `Value::Text` for an undeclared label.
    Enum,
}

/// A literal operand, in the column's typed representation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Operand {
    Int(i64),
    Float(f64),
    Numeric(Decimal),
    Text(Box<str>),
    Bool(bool),
    /// A declared label; `label` is kept to compare with undeclared labels in the data.
    Enum {
        ordinal: u32,
        label: Box<str>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Neq,
    Gt,
    Gte,
    Lt,
    Lte,
}

#[derive(Debug, Clone)]
pub(crate) enum Node {
    /// `{}`, `_and: []` (true) and `_or: []` (false).
    Const(bool),
    And(Box<[Node]>),
    Or(Box<[Node]>),
    Not(Box<Node>),
    /// `_is_null: is_null`; never UNKNOWN.
    IsNull {
        column: usize,
        is_null: bool,
    },
    Compare {
        column: usize,
        kind: Kind,
        op: CmpOp,
        operand: Operand,
    },
    /// `_in` (or `_nin` when `negated`).
    In {
        column: usize,
        kind: Kind,
        negated: bool,
        set: Box<[Operand]>,
    },
    Like {
        column: usize,
        negated: bool,
        pattern: LikePattern,
    },
    Regex {
        column: usize,
        negated: bool,
        regex: Regex,
    },
}

/// Stands in for a column the row does not have (rows always have every column; this keeps
/// a malformed row from panicking).
static MISSING: Value = Value::Null;

fn cell(row: &Row, column: usize) -> &Value {
    row.values().get(column).unwrap_or(&MISSING)
}

/// A row value read for comparison with an operand of its column's kind.
#[derive(Clone, Copy)]
enum Lhs<'a> {
    Int(i64),
    Float(f64),
    Numeric(DecRef<'a>),
    Text(&'a str),
    Bool(bool),
    Enum(u32),
    /// An enum label that is not declared in the configuration.
    Undeclared(&'a str),
}

/// `None` for NULL and for values that do not fit the column's kind.
fn lhs(kind: Kind, value: &Value) -> Option<Lhs<'_>> {
    Some(match (kind, value) {
        (Kind::Int, Value::Int(i)) => Lhs::Int(*i),
        (Kind::Float, Value::Float(f)) => Lhs::Float(*f),
        (Kind::Numeric, Value::Text(t)) => Lhs::Numeric(DecRef::parse(t)?),
        (Kind::Text, Value::Text(t)) => Lhs::Text(t),
        (Kind::Bool, Value::Bool(b)) => Lhs::Bool(*b),
        (Kind::Enum, Value::Enum(o)) => Lhs::Enum(*o),
        (Kind::Enum, Value::Text(t)) => Lhs::Undeclared(t),
        _ => return None,
    })
}

/// Postgres's float order: NaN equals NaN and sorts above everything; -0 equals 0.
pub(crate) fn float_cmp(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// The order of a row value against an operand; `None` when it is UNKNOWN.
fn compare(lhs: Lhs<'_>, operand: &Operand) -> Option<Ordering> {
    Some(match (lhs, operand) {
        (Lhs::Int(a), Operand::Int(b)) => a.cmp(b),
        (Lhs::Float(a), Operand::Float(b)) => float_cmp(a, *b),
        (Lhs::Numeric(a), Operand::Numeric(b)) => a.cmp(&b.as_ref()),
        (Lhs::Text(a), Operand::Text(b)) => a.as_bytes().cmp(b.as_bytes()),
        (Lhs::Bool(a), Operand::Bool(b)) => a.cmp(b),
        (Lhs::Enum(a), Operand::Enum { ordinal, .. }) => a.cmp(ordinal),
        _ => return None,
    })
}

/// Equality of a row value and an operand; an undeclared enum label compares by its text.
fn equals(lhs: Lhs<'_>, operand: &Operand) -> Option<bool> {
    match (lhs, operand) {
        (Lhs::Undeclared(text), Operand::Enum { label, .. }) => Some(text == &**label),
        _ => compare(lhs, operand).map(Ordering::is_eq),
    }
}

impl Node {
    /// See [`super::Filter::required_equality`]. Floats and decimals are left out (NaN, -0
    /// and decimal spellings compare equal without being the same value); so are enum labels
    /// the data may hold undeclared.
    pub(crate) fn required_equality(&self) -> Option<(usize, super::EqKey)> {
        use super::EqKey;
        match self {
            Node::Compare {
                column,
                kind,
                op: CmpOp::Eq,
                operand,
            } => {
                let key = match (kind, operand) {
                    (Kind::Int, Operand::Int(i)) => EqKey::Int(*i),
                    (Kind::Text, Operand::Text(t)) => EqKey::Text(t.clone()),
                    (Kind::Bool, Operand::Bool(b)) => EqKey::Bool(*b),
                    (Kind::Enum, Operand::Enum { ordinal, .. }) => EqKey::Enum(*ordinal),
                    _ => return None,
                };
                Some((*column, key))
            }
            Node::And(nodes) => nodes.iter().find_map(Node::required_equality),
            _ => None,
        }
    }

    pub(crate) fn eval(&self, row: &Row) -> Truth {
        match self {
            Node::Const(value) => Truth::from(*value),
            Node::And(nodes) => {
                let mut result = Truth::True;
                for node in nodes {
                    result = result.and(node.eval(row));
                    if result == Truth::False {
                        break;
                    }
                }
                result
            }
            Node::Or(nodes) => {
                let mut result = Truth::False;
                for node in nodes {
                    result = result.or(node.eval(row));
                    if result == Truth::True {
                        break;
                    }
                }
                result
            }
            Node::Not(node) => !node.eval(row),
            Node::IsNull { column, is_null } => {
                Truth::from(cell(row, *column).is_null() == *is_null)
            }
            Node::Compare {
                column,
                kind,
                op,
                operand,
            } => {
                let Some(lhs) = lhs(*kind, cell(row, *column)) else {
                    return Truth::Unknown;
                };
                Truth::from(match op {
                    CmpOp::Eq => equals(lhs, operand),
                    CmpOp::Neq => equals(lhs, operand).map(|eq| !eq),
                    CmpOp::Gt => compare(lhs, operand).map(Ordering::is_gt),
                    CmpOp::Gte => compare(lhs, operand).map(Ordering::is_ge),
                    CmpOp::Lt => compare(lhs, operand).map(Ordering::is_lt),
                    CmpOp::Lte => compare(lhs, operand).map(Ordering::is_le),
                })
            }
            Node::In {
                column,
                kind,
                negated,
                set,
            } => {
                let Some(lhs) = lhs(*kind, cell(row, *column)) else {
                    return Truth::Unknown;
                };
                // x IN (a, b) is x = a OR x = b.
                let mut result = Truth::False;
                for operand in set {
                    result = result.or(Truth::from(equals(lhs, operand)));
                    if result == Truth::True {
                        break;
                    }
                }
                if *negated { !result } else { result }
            }
            Node::Like {
                column,
                negated,
                pattern,
            } => match cell(row, *column) {
                Value::Text(text) => Truth::from(pattern.matches(text) != *negated),
                _ => Truth::Unknown,
            },
            Node::Regex {
                column,
                negated,
                regex,
            } => match cell(row, *column) {
                Value::Text(text) => Truth::from(regex.is_match(text) != *negated),
                _ => Truth::Unknown,
            },
        }
    }

    /// Pushes every column this node reads onto `out` (unsorted, with repeats).
    pub(crate) fn collect_columns(&self, out: &mut Vec<usize>) {
        match self {
            Node::Const(_) => {}
            Node::And(nodes) | Node::Or(nodes) => {
                for node in nodes {
                    node.collect_columns(out);
                }
            }
            Node::Not(node) => node.collect_columns(out),
            Node::IsNull { column, .. }
            | Node::Compare { column, .. }
            | Node::In { column, .. }
            | Node::Like { column, .. }
            | Node::Regex { column, .. } => out.push(*column),
        }
    }
}
