//! Turns a GraphQL `where` value into a [`Node`] tree and its canonical text, checking every
//! column, operator and operand against the source's configuration.

use std::fmt::Write as _;

use async_graphql::Value as Gql;
use regex::RegexBuilder;

use super::FilterError;
use super::decimal::Decimal;
use super::like::{LikeError, LikePattern};
use super::node::{CmpOp, Kind, Node, Operand};
use crate::config::{ColumnType, EnumDef, SourceDef};

/// How deeply filter objects may nest through `_and`, `_or` and `_not`. Compilation and
/// evaluation recurse, so this bounds their stack use whatever the client sends.
pub(crate) const MAX_DEPTH: usize = 32;

/// Compiled regular expressions larger than this are refused (the `regex` default is 10 MiB
/// per expression, too generous for a value any client can send).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A compiled piece of filter with its canonical text.
pub(crate) struct Piece {
    pub(crate) node: Node,
    pub(crate) canonical: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Neq,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
    Nin,
    IsNull,
    Like,
    Nlike,
    Ilike,
    Nilike,
    Regex,
    Nregex,
    Iregex,
    Niregex,
}

const OPERATORS: [(&str, Op); 17] = [
    ("_eq", Op::Eq),
    ("_neq", Op::Neq),
    ("_gt", Op::Gt),
    ("_gte", Op::Gte),
    ("_lt", Op::Lt),
    ("_lte", Op::Lte),
    ("_in", Op::In),
    ("_nin", Op::Nin),
    ("_is_null", Op::IsNull),
    ("_like", Op::Like),
    ("_nlike", Op::Nlike),
    ("_ilike", Op::Ilike),
    ("_nilike", Op::Nilike),
    ("_regex", Op::Regex),
    ("_nregex", Op::Nregex),
    ("_iregex", Op::Iregex),
    ("_niregex", Op::Niregex),
];

/// A column's type as far as filtering is concerned.
#[derive(Clone, Copy)]
enum ColKind<'a> {
    Integer,
    BigInt,
    Float,
    Numeric,
    Text,
    Bool,
    Enum(&'a EnumDef),
}

impl<'a> ColKind<'a> {
    fn of(ty: &'a ColumnType) -> ColKind<'a> {
        match ty {
            ColumnType::Integer => ColKind::Integer,
            ColumnType::BigInt => ColKind::BigInt,
            ColumnType::Float => ColKind::Float,
            ColumnType::Numeric => ColKind::Numeric,
            ColumnType::Boolean => ColKind::Bool,
            ColumnType::Enum(def) => ColKind::Enum(def),
            ColumnType::String
            | ColumnType::Uuid
            | ColumnType::Timestamp
            | ColumnType::Date
            | ColumnType::Time
            | ColumnType::Json
            | ColumnType::Array
            | ColumnType::JsonValue => ColKind::Text,
        }
    }

    fn runtime(self) -> Kind {
        match self {
            ColKind::Integer | ColKind::BigInt => Kind::Int,
            ColKind::Float => Kind::Float,
            ColKind::Numeric => Kind::Numeric,
            ColKind::Text => Kind::Text,
            ColKind::Bool => Kind::Bool,
            ColKind::Enum(_) => Kind::Enum,
        }
    }

    fn allows(self, op: Op) -> bool {
        match op {
            Op::Eq | Op::Neq | Op::In | Op::Nin | Op::IsNull => true,
            Op::Gt | Op::Gte | Op::Lt | Op::Lte => !matches!(self, ColKind::Bool),
            Op::Like
            | Op::Nlike
            | Op::Ilike
            | Op::Nilike
            | Op::Regex
            | Op::Nregex
            | Op::Iregex
            | Op::Niregex => matches!(self, ColKind::Text),
        }
    }

    /// The operators this kind supports, for messages: "`_eq`, `_neq` and `_is_null`".
    fn allowed_list(self) -> String {
        let names: Vec<String> = OPERATORS
            .iter()
            .filter(|(_, op)| self.allows(*op))
            .map(|(name, _)| format!("`{name}`"))
            .collect();
        english_list(&names)
    }
}

/// Compiles the filter object `value` found at `at`.
pub(crate) fn filter_object(
    source: &SourceDef,
    value: &Gql,
    at: &str,
    depth: usize,
) -> Result<Piece, FilterError> {
    if depth > MAX_DEPTH {
        return Err(FilterError::TooDeep {
            at: at.to_owned(),
            max: MAX_DEPTH,
        });
    }
    let Gql::Object(fields) = value else {
        return Err(FilterError::NotAFilter {
            at: at.to_owned(),
            found: describe(value),
        });
    };
    let mut entries: Vec<(&str, Piece)> = Vec::with_capacity(fields.len());
    for (key, value) in fields {
        // An explicit null anywhere a filter or an operand goes is ignored.
        if matches!(value, Gql::Null) {
            continue;
        }
        let key = key.as_str();
        let here = format!("{at}.{key}");
        let piece = match key {
            "_and" | "_or" => {
                let items = filter_list(source, value, &here, depth)?;
                let canonical = bracketed(items.iter().map(|p| p.canonical.as_str()));
                let nodes: Vec<Node> = items.into_iter().map(|p| p.node).collect();
                let node = if key == "_and" {
                    all_of(nodes)
                } else {
                    any_of(nodes)
                };
                Piece { node, canonical }
            }
            "_not" => {
                let inner = filter_object(source, value, &here, depth + 1)?;
                Piece {
                    node: Node::Not(Box::new(inner.node)),
                    canonical: inner.canonical,
                }
            }
            column => match column_filter(source, column, value, &here)? {
                Some(piece) => piece,
                None => continue,
            },
        };
        entries.push((key, piece));
    }
    Ok(object_piece(entries))
}

/// ANDs named pieces, ordering them (and the canonical text) by key.
fn object_piece(mut entries: Vec<(&str, Piece)>) -> Piece {
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let mut canonical = String::from("{");
    for (i, (key, piece)) in entries.iter().enumerate() {
        if i > 0 {
            canonical.push(',');
        }
        push_json_str(&mut canonical, key);
        canonical.push(':');
        canonical.push_str(&piece.canonical);
    }
    canonical.push('}');
    Piece {
        node: all_of(entries.into_iter().map(|(_, p)| p.node).collect()),
        canonical,
    }
}

/// The filter objects of `_and`/`_or`. A single object stands for a list of one, as GraphQL's
/// input coercion has it.
fn filter_list(
    source: &SourceDef,
    value: &Gql,
    at: &str,
    depth: usize,
) -> Result<Vec<Piece>, FilterError> {
    match value {
        Gql::List(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let here = format!("{at}[{i}]");
                if matches!(item, Gql::Null) {
                    return Err(FilterError::NullInList { at: here });
                }
                filter_object(source, item, &here, depth + 1)
            })
            .collect(),
        Gql::Object(_) => Ok(vec![filter_object(source, value, at, depth + 1)?]),
        other => Err(FilterError::NotAList {
            at: at.to_owned(),
            found: describe(other),
        }),
    }
}

fn all_of(mut nodes: Vec<Node>) -> Node {
    match nodes.len() {
        0 => Node::Const(true),
        1 => nodes.remove(0),
        _ => Node::And(nodes.into_boxed_slice()),
    }
}

fn any_of(mut nodes: Vec<Node>) -> Node {
    match nodes.len() {
        0 => Node::Const(false),
        1 => nodes.remove(0),
        _ => Node::Or(nodes.into_boxed_slice()),
    }
}

/// `column: {op: operand, ...}`; `None` when no operator is left once nulls are ignored.
fn column_filter(
    source: &SourceDef,
    column: &str,
    value: &Gql,
    at: &str,
) -> Result<Option<Piece>, FilterError> {
    let Some(index) = source.column_index(column) else {
        let names: Vec<String> = source
            .columns
            .iter()
            .map(|c| format!("`{}`", c.name))
            .collect();
        return Err(FilterError::UnknownColumn {
            at: at.to_owned(),
            column: column.to_owned(),
            source_name: source.name.clone(),
            columns: format!("{}, plus `_and`, `_or` and `_not`", names.join(", ")),
        });
    };
    let ty = &source.columns[index].ty;
    let kind = ColKind::of(ty);
    let Gql::Object(ops) = value else {
        return Err(FilterError::NotOperators {
            at: at.to_owned(),
            found: describe(value),
        });
    };
    let mut entries = Vec::with_capacity(ops.len());
    for (name, operand) in ops {
        let name = name.as_str();
        let here = format!("{at}.{name}");
        let Some(&(_, op)) = OPERATORS.iter().find(|(n, _)| *n == name) else {
            return Err(FilterError::UnknownOperator {
                at: here,
                operator: name.to_owned(),
                ty: ty.yaml_name().to_owned(),
                allowed: kind.allowed_list(),
            });
        };
        if !kind.allows(op) {
            return Err(FilterError::UnsupportedOperator {
                at: here,
                operator: name.to_owned(),
                ty: ty.yaml_name().to_owned(),
                allowed: kind.allowed_list(),
            });
        }
        if matches!(operand, Gql::Null) {
            continue;
        }
        entries.push((name, operator(index, kind, op, operand, &here)?));
    }
    if entries.is_empty() {
        return Ok(None);
    }
    Ok(Some(object_piece(entries)))
}

/// One operator applied to `column`, with a non-null operand.
fn operator(
    column: usize,
    kind: ColKind<'_>,
    op: Op,
    value: &Gql,
    at: &str,
) -> Result<Piece, FilterError> {
    let compare = |op| compare_piece(column, kind, op, value, at);
    match op {
        Op::Eq => compare(CmpOp::Eq),
        Op::Neq => compare(CmpOp::Neq),
        Op::Gt => compare(CmpOp::Gt),
        Op::Gte => compare(CmpOp::Gte),
        Op::Lt => compare(CmpOp::Lt),
        Op::Lte => compare(CmpOp::Lte),
        Op::In => set_piece(column, kind, false, value, at),
        Op::Nin => set_piece(column, kind, true, value, at),
        Op::IsNull => match value {
            Gql::Boolean(is_null) => Ok(Piece {
                node: Node::IsNull {
                    column,
                    is_null: *is_null,
                },
                canonical: is_null.to_string(),
            }),
            other => Err(FilterError::BadOperand {
                at: at.to_owned(),
                expected: "a boolean".to_owned(),
                found: describe(other),
            }),
        },
        Op::Like => like_piece(column, false, false, value, at),
        Op::Nlike => like_piece(column, true, false, value, at),
        Op::Ilike => like_piece(column, false, true, value, at),
        Op::Nilike => like_piece(column, true, true, value, at),
        Op::Regex => regex_piece(column, false, false, value, at),
        Op::Nregex => regex_piece(column, true, false, value, at),
        Op::Iregex => regex_piece(column, false, true, value, at),
        Op::Niregex => regex_piece(column, true, true, value, at),
    }
}

fn compare_piece(
    column: usize,
    kind: ColKind<'_>,
    op: CmpOp,
    value: &Gql,
    at: &str,
) -> Result<Piece, FilterError> {
    let (operand, canonical) = operand(kind, value, at)?;
    Ok(Piece {
        node: Node::Compare {
            column,
            kind: kind.runtime(),
            op,
            operand,
        },
        canonical,
    })
}

/// `_in` / `_nin`. A single value stands for a list of one, as GraphQL's input coercion has it.
fn set_piece(
    column: usize,
    kind: ColKind<'_>,
    negated: bool,
    value: &Gql,
    at: &str,
) -> Result<Piece, FilterError> {
    let items = match value {
        Gql::List(items) => items.as_slice(),
        single => std::slice::from_ref(single),
    };
    let mut operands = Vec::with_capacity(items.len());
    let mut texts = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let here = format!("{at}[{i}]");
        if matches!(item, Gql::Null) {
            return Err(FilterError::BadOperand {
                at: here,
                expected: format!("{} (test for null with `_is_null`)", expected(kind)),
                found: "null".to_owned(),
            });
        }
        let (operand, canonical) = operand(kind, item, &here)?;
        operands.push(operand);
        texts.push(canonical);
    }
    Ok(Piece {
        node: Node::In {
            column,
            kind: kind.runtime(),
            negated,
            set: operands.into_boxed_slice(),
        },
        canonical: bracketed(texts.iter().map(String::as_str)),
    })
}

/// The string operand of a pattern operator, and its canonical text.
fn pattern<'v>(value: &'v Gql, at: &str) -> Result<(&'v str, String), FilterError> {
    match value {
        Gql::String(s) => {
            let mut canonical = String::new();
            push_json_str(&mut canonical, s);
            Ok((s.as_str(), canonical))
        }
        other => Err(FilterError::BadOperand {
            at: at.to_owned(),
            expected: "a string pattern".to_owned(),
            found: describe(other),
        }),
    }
}

fn like_piece(
    column: usize,
    negated: bool,
    case_insensitive: bool,
    value: &Gql,
    at: &str,
) -> Result<Piece, FilterError> {
    let (text, canonical) = pattern(value, at)?;
    let pattern = LikePattern::compile(text, case_insensitive).map_err(|e| match e {
        LikeError::TrailingEscape => FilterError::TrailingEscape { at: at.to_owned() },
    })?;
    Ok(Piece {
        node: Node::Like {
            column,
            negated,
            pattern,
        },
        canonical,
    })
}

fn regex_piece(
    column: usize,
    negated: bool,
    case_insensitive: bool,
    value: &Gql,
    at: &str,
) -> Result<Piece, FilterError> {
    let (text, canonical) = pattern(value, at)?;
    let regex = RegexBuilder::new(text)
        .case_insensitive(case_insensitive)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| FilterError::BadRegex {
            at: at.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(Piece {
        node: Node::Regex {
            column,
            negated,
            regex,
        },
        canonical,
    })
}

/// What an operand of `kind` must look like, for messages.
fn expected(kind: ColKind<'_>) -> String {
    match kind {
        ColKind::Integer => "an integer".to_owned(),
        ColKind::BigInt => format!(
            "an integer from {} to {}, as a string or a number",
            i64::MIN,
            i64::MAX
        ),
        ColKind::Float => "a number".to_owned(),
        ColKind::Numeric => {
            "a decimal number, as a string (such as \"-12.50\" or \"NaN\") or a number".to_owned()
        }
        ColKind::Text => "a string".to_owned(),
        ColKind::Bool => "a boolean".to_owned(),
        ColKind::Enum(def) => format!("a value of enum {}", def.name),
    }
}

/// Reads a non-null literal into the column's typed representation and its canonical text.
fn operand(kind: ColKind<'_>, value: &Gql, at: &str) -> Result<(Operand, String), FilterError> {
    let bad = || FilterError::BadOperand {
        at: at.to_owned(),
        expected: expected(kind),
        found: describe(value),
    };
    let int = |i: i64| (Operand::Int(i), i.to_string());
    match (kind, value) {
        (ColKind::Integer | ColKind::BigInt, Gql::Number(n)) => n.as_i64().map(int).ok_or_else(bad),
        (ColKind::BigInt, Gql::String(s)) => s.parse::<i64>().map(int).map_err(|_| bad()),
        (ColKind::Float, Gql::Number(n)) => {
            let f = n.as_f64().ok_or_else(bad)?;
            // -0 equals 0, so both print as 0.
            let f = if f == 0.0 { 0.0 } else { f };
            Ok((Operand::Float(f), format!("{f:?}")))
        }
        (ColKind::Numeric, Gql::String(s)) => numeric(s).ok_or_else(bad),
        (ColKind::Numeric, Gql::Number(n)) => numeric(&n.to_string()).ok_or_else(bad),
        (ColKind::Text, Gql::String(s)) => {
            let mut canonical = String::new();
            push_json_str(&mut canonical, s);
            Ok((Operand::Text(s.as_str().into()), canonical))
        }
        (ColKind::Bool, Gql::Boolean(b)) => Ok((Operand::Bool(*b), b.to_string())),
        (ColKind::Enum(def), Gql::Enum(name)) => label(def, name.as_str(), at),
        (ColKind::Enum(def), Gql::String(s)) => label(def, s, at),
        _ => Err(bad()),
    }
}

/// A label of `def`, which must be declared.
fn label(def: &EnumDef, label: &str, at: &str) -> Result<(Operand, String), FilterError> {
    let Some(ordinal) = def.ordinal(label) else {
        let labels: Vec<String> = def.values.iter().map(|v| format!("`{v}`")).collect();
        return Err(FilterError::UnknownLabel {
            at: at.to_owned(),
            label: label.to_owned(),
            enum_name: def.name.clone(),
            labels: english_list(&labels),
        });
    };
    let mut canonical = String::new();
    push_json_str(&mut canonical, label);
    Ok((
        Operand::Enum {
            ordinal,
            label: label.into(),
        },
        canonical,
    ))
}

fn numeric(text: &str) -> Option<(Operand, String)> {
    let decimal = Decimal::parse(text)?;
    let mut canonical = String::new();
    push_json_str(&mut canonical, &decimal.to_string());
    Some((Operand::Numeric(decimal), canonical))
}

/// A short description of a GraphQL value for messages, quoting at most a few characters.
fn describe(value: &Gql) -> String {
    const QUOTE_AT_MOST: usize = 40;
    match value {
        Gql::Null => "null".to_owned(),
        Gql::Number(n) => format!("the number {n}"),
        Gql::String(s) if s.chars().count() > QUOTE_AT_MOST => {
            let head: String = s.chars().take(QUOTE_AT_MOST).collect();
            format!("the string {head:?}...")
        }
        Gql::String(s) => format!("the string {s:?}"),
        Gql::Boolean(b) => format!("the boolean {b}"),
        Gql::Binary(_) => "binary data".to_owned(),
        Gql::Enum(name) => format!("the enum value {name}"),
        Gql::List(_) => "a list".to_owned(),
        Gql::Object(_) => "an object".to_owned(),
    }
}

/// "`a`", "`a` or `b`", "`a`, `b` or `c`".
fn english_list(items: &[String]) -> String {
    match items {
        [] => "nothing".to_owned(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

fn bracketed<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::from("[");
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item);
    }
    out.push(']');
    out
}

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
