//! Hasura-style `where` filters, compiled once per distinct filter and evaluated on typed rows.
//!
//! This module owns the meaning of a `where` argument: [`compile`] checks it against a
//! source's columns and types and turns it into a [`Filter`], a tree with operands already in
//! each column's typed representation and patterns already compiled; [`Filter::matches`]
//! evaluates it on a [`Row`] without allocating. It is pure code: it never does I/O, never
//! spawns, never logs, and never panics on what a client sends.
//!
//! # Semantics
//!
//! - Every key of a filter object is combined with AND: column keys, `_and: [..]`, `_or: [..]` and
//!   `_not: {..}` alike. `{}` and `_and: []` are TRUE, `_or: []` is FALSE, and a column with no
//!   operators (`price: {}`) is TRUE. A single object where a list is expected (`_and: {..}`,
//!   `_in: 5`) is a list of one, as in GraphQL input coercion.
//! - Evaluation follows SQL's three-valued logic ([`Truth`]): every comparison with a NULL
//!   value is UNKNOWN (`_neq`, `_nin`, `_nlike`... included), AND/OR/NOT are Kleene's (`_not`
//!   of UNKNOWN is UNKNOWN), and a row matches only when the whole filter is TRUE.
//!   `_is_null: true|false` is the way to test for NULL; it is never UNKNOWN.
//! - An explicit null is ignored, as Hasura does by default: `{price: {_eq: null}}`,
//!   `{price: null}`, `{_and: null}`, `{_or: null}` and `{_not: null}` all mean TRUE (the
//!   operator or key is dropped). Null items inside `_and`/`_or`/`_in`/`_nin` lists are errors.
//! - Operators: `_eq _neq _gt _gte _lt _lte _in _nin _is_null` on every type except that
//!   `Boolean` has no ordering; `_like _nlike _ilike _nilike` (SQL LIKE: `%`, `_`, backslash
//!   escapes) and `_regex _nregex _iregex _niregex` (the `regex` crate's syntax, unanchored,
//!   like Postgres's `~`) on the textual types: `String`, `UUID`, `Timestamp`, `Date`, `Time`,
//!   `JSON`, `Array` and `JSONValue`.
//! - Types: `Integer` compares with integer literals; `BigInt` with integers or decimal
//!   strings, exactly (i64); `Float` with numbers, NaN equal to NaN and above every number;
//!   `Numeric` with decimal strings or numbers, exactly, in Postgres's order (NaN last);
//!   the textual types bytewise (code-point order; string literals only, `JSONValue`
//!   included); enums by label, ordered by their position in `schema.yaml`. A label that the
//!   data holds but the configuration does not declare equals only itself and is UNKNOWN for
//!   ordering.

mod compile;
mod decimal;
mod error;
mod like;
mod node;
#[cfg(test)]
mod tests;

use std::sync::{Arc, LazyLock};

pub use error::FilterError;
pub use node::Truth;

use crate::config::SourceDef;
use crate::value::Row;
use node::Node;

/// A compiled `where` filter. Cloning is a reference-count increment.
#[derive(Debug, Clone)]
pub struct Filter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: Node,
    columns: Box<[usize]>,
    canonical: Box<str>,
}

static ALWAYS: LazyLock<Filter> = LazyLock::new(|| Filter {
    inner: Arc::new(Inner {
        root: Node::Const(true),
        columns: Box::new([]),
        canonical: "{}".into(),
    }),
});

/// How big a `where` argument a client may send: every filter is evaluated on every change
/// of its source, under the source's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterLimits {
    /// Keys in all its objects (columns, operators, `_and`, `_or`, `_not`) and items of its
    /// `_and`/`_or` lists.
    pub max_nodes: usize,
    /// Values in one `_in` or `_nin` list.
    pub max_in: usize,
    /// Bytes of one `_like`/`_regex` (and their variants) pattern.
    pub max_pattern_bytes: usize,
}

impl Default for FilterLimits {
    fn default() -> Self {
        FilterLimits {
            max_nodes: 256,
            max_in: 1_000,
            max_pattern_bytes: 1_024,
        }
    }
}

/// Refuses a `where` value beyond `limits`, before it is compiled (patterns are compiled,
/// `_in` values parsed, only once it fits).
pub fn check_size(where_: &async_graphql::Value, limits: &FilterLimits) -> Result<(), FilterError> {
    use async_graphql::Value as Gql;
    let mut nodes = 0usize;
    let mut pending: Vec<(&Gql, String)> = vec![(where_, "where".to_owned())];
    while let Some((value, at)) = pending.pop() {
        match value {
            Gql::Object(fields) => {
                for (key, value) in fields {
                    nodes += 1;
                    if nodes > limits.max_nodes {
                        return Err(FilterError::TooManyNodes {
                            max: limits.max_nodes,
                        });
                    }
                    let key = key.as_str();
                    let here = format!("{at}.{key}");
                    match (key, value) {
                        ("_in" | "_nin", Gql::List(items)) if items.len() > limits.max_in => {
                            return Err(FilterError::InListTooLong {
                                at: here,
                                count: items.len(),
                                max: limits.max_in,
                            });
                        }
                        (
                            "_like" | "_nlike" | "_ilike" | "_nilike" | "_regex" | "_nregex"
                            | "_iregex" | "_niregex",
                            Gql::String(pattern),
                        ) if pattern.len() > limits.max_pattern_bytes => {
                            return Err(FilterError::PatternTooLong {
                                at: here,
                                bytes: pattern.len(),
                                max: limits.max_pattern_bytes,
                            });
                        }
                        ("_in" | "_nin", _) => {}
                        _ => pending.push((value, here)),
                    }
                }
            }
            Gql::List(items) => {
                // Each item of `_and`/`_or` is a condition too (`_and: [{}, {}, …]`).
                nodes += items.len();
                if nodes > limits.max_nodes {
                    return Err(FilterError::TooManyNodes {
                        max: limits.max_nodes,
                    });
                }
                for (i, item) in items.iter().enumerate() {
                    pending.push((item, format!("{at}[{i}]")));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Compiles the `where` argument of a query or subscription on `source`.
///
/// `where_` is the argument's value with variables resolved; `null` means no filter. Enum
/// operands may be GraphQL enum values or strings.
pub fn compile(source: &SourceDef, where_: &async_graphql::Value) -> Result<Filter, FilterError> {
    if matches!(where_, async_graphql::Value::Null) {
        return Ok(Filter::always());
    }
    let piece = compile::filter_object(source, where_, "where", 0)?;
    let mut columns = Vec::new();
    piece.node.collect_columns(&mut columns);
    columns.sort_unstable();
    columns.dedup();
    Ok(Filter {
        inner: Arc::new(Inner {
            root: piece.node,
            columns: columns.into_boxed_slice(),
            canonical: piece.canonical.into_boxed_str(),
        }),
    })
}

impl Filter {
    /// The filter that matches every row: no `where`, or `where: null`.
    pub fn always() -> Filter {
        ALWAYS.clone()
    }

    /// Whether `row` satisfies the filter, that is, the filter evaluates to TRUE (not FALSE,
    /// not UNKNOWN).
    pub fn matches(&self, row: &Row) -> bool {
        self.evaluate(row) == Truth::True
    }

    /// The filter's three-valued result on `row`.
    pub fn evaluate(&self, row: &Row) -> Truth {
        self.inner.root.eval(row)
    }

    /// The indices of the columns the filter reads, sorted and without repeats.
    pub fn columns(&self) -> &[usize] {
        &self.inner.columns
    }

    /// A column and value the filter requires (an `_eq` at the top level or in a top-level
    /// `_and`) on an integer, text, boolean or enum column: a row whose value there has
    /// another [`eq_key`] cannot match. `None` when the filter has no such equality.
    pub fn required_equality(&self) -> Option<(usize, EqKey)> {
        self.inner.root.required_equality()
    }

    /// A canonical text of the filter, for sharing work between clients with the same filter
    /// on the same source: keys are sorted, lists keep their order, ignored nulls are dropped
    /// and operands are in a normal form (`"007"` and `7` on a `BigInt` column, `"1.50"` and
    /// `1.5` on a `Numeric` one, an enum value and its string print alike). Two filters of one
    /// source with the same text select the same rows.
    pub fn canonical(&self) -> &str {
        &self.inner.canonical
    }
}

/// A value a filter requires a column to equal, keyed as rows are looked up by [`eq_key`]:
/// an index of filters by these keys visits only the filters a row can satisfy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EqKey {
    Int(i64),
    Text(Box<str>),
    Bool(bool),
    Enum(u32),
}

/// The key of a row's value, to look up filters by their [`Filter::required_equality`]
/// (`None`: NULL or a float, which no indexed equality matches).
pub fn eq_key(value: &crate::value::Value) -> Option<EqKey> {
    use crate::value::Value;
    match value {
        Value::Int(i) => Some(EqKey::Int(*i)),
        Value::Text(t) => Some(EqKey::Text(t.as_str().into())),
        Value::Bool(b) => Some(EqKey::Bool(*b)),
        Value::Enum(o) => Some(EqKey::Enum(*o)),
        Value::Null | Value::Float(_) => None,
    }
}

/// Orders two PostgreSQL numeric texts exactly (NaN last); unparseable text sorts after
/// every number, by its bytes.
pub fn compare_decimal(a: &str, b: &str) -> std::cmp::Ordering {
    match (decimal::DecRef::parse(a), decimal::DecRef::parse(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}
