//! Evaluating the stand-in's expressions against a row: literals, parameters, columns,
//! arithmetic, comparisons (NULL never compares), AND/OR/NOT, IN and IS NULL.

use std::cmp::Ordering;

use crate::sql::Expr;
use crate::store::{Column, Row, now_ms};
use crate::types::{SqlType, float_text};

#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Text(String),
}

impl Val {
    /// The value as PostgreSQL text (`None` for NULL).
    pub fn into_text(self) -> Option<String> {
        match self {
            Val::Null => None,
            Val::Bool(b) => Some(if b { "t" } else { "f" }.into()),
            Val::Int(i) => Some(i.to_string()),
            Val::Float(f) => Some(float_text(f)),
            Val::Text(t) => Some(t),
        }
    }

    fn number(&self) -> Option<f64> {
        match self {
            Val::Int(i) => Some(*i as f64),
            Val::Float(f) => Some(*f),
            Val::Text(t) => t.trim().parse().ok(),
            _ => None,
        }
    }

    fn truth(&self) -> Option<bool> {
        match self {
            Val::Null => None,
            Val::Bool(b) => Some(*b),
            Val::Text(t) => match t.as_str() {
                "t" | "true" => Some(true),
                _ => Some(false),
            },
            _ => Some(false),
        }
    }
}

/// A column value of a stored row as a [`Val`].
pub fn column_val(column: &Column, text: Option<&String>) -> Val {
    let Some(text) = text else {
        return Val::Null;
    };
    match column.ty {
        SqlType::Int2 | SqlType::Int4 | SqlType::Int8 => text
            .parse()
            .map_or_else(|_| Val::Text(text.clone()), Val::Int),
        SqlType::Float4 | SqlType::Float8 | SqlType::Numeric => text
            .parse()
            .map_or_else(|_| Val::Text(text.clone()), Val::Float),
        SqlType::Bool => Val::Bool(text == "t"),
        _ => Val::Text(text.clone()),
    }
}

/// The row an expression is evaluated against.
pub struct Scope<'a> {
    pub columns: &'a [Column],
    pub row: Option<&'a Row>,
    pub params: &'a [Option<String>],
}

pub fn eval(expr: &Expr, scope: &Scope<'_>) -> Result<Val, String> {
    Ok(match expr {
        Expr::Null => Val::Null,
        Expr::Bool(b) => Val::Bool(*b),
        Expr::Number(n) => match n.parse::<i128>() {
            Ok(i) => Val::Int(i),
            Err(_) => Val::Float(n.parse().map_err(|_| format!("bad number {n}"))?),
        },
        Expr::Str(s) => Val::Text(s.clone()),
        Expr::Param(n) => match scope.params.get(n.wrapping_sub(1)) {
            Some(Some(text)) => Val::Text(text.clone()),
            Some(None) => Val::Null,
            None => return Err(format!("there is no parameter ${n}")),
        },
        Expr::Call(name) => match name.as_str() {
            "now" | "mz_now" => Val::Int(i128::from(now_ms())),
            "current_schema" => Val::Text("public".into()),
            other => return Err(format!("function {other}() does not exist")),
        },
        Expr::Column(name) => {
            let index = scope
                .columns
                .iter()
                .position(|c| c.name == *name)
                .ok_or_else(|| format!("column \"{name}\" does not exist"))?;
            match scope.row {
                Some(row) => column_val(&scope.columns[index], row[index].as_ref()),
                None => return Err(format!("column \"{name}\" is not allowed here")),
            }
        }
        Expr::Neg(inner) => match eval(inner, scope)? {
            Val::Null => Val::Null,
            Val::Int(i) => Val::Int(-i),
            other => Val::Float(-other.number().ok_or("cannot negate a non-number")?),
        },
        Expr::Not(inner) => match eval(inner, scope)?.truth() {
            None => Val::Null,
            Some(b) => Val::Bool(!b),
        },
        Expr::IsNull(inner, negated) => Val::Bool((eval(inner, scope)? == Val::Null) != *negated),
        Expr::InList(inner, list, negated) => {
            let value = eval(inner, scope)?;
            if value == Val::Null {
                return Ok(Val::Null);
            }
            let mut found = false;
            for item in list {
                if compare(&value, &eval(item, scope)?) == Some(Ordering::Equal) {
                    found = true;
                }
            }
            Val::Bool(found != *negated)
        }
        Expr::Cast(inner, ty) => match eval(inner, scope)?.into_text() {
            None => Val::Null,
            Some(text) => {
                let text = ty.normalize(&text)?;
                column_val(
                    &Column {
                        name: String::new(),
                        ty: *ty,
                        not_null: false,
                    },
                    Some(&text),
                )
            }
        },
        Expr::Binary(op, left, right) => binary(op, eval(left, scope)?, eval(right, scope)?)?,
    })
}

fn binary(op: &str, left: Val, right: Val) -> Result<Val, String> {
    match op {
        "and" => Ok(match (left.truth(), right.truth()) {
            (Some(false), _) | (_, Some(false)) => Val::Bool(false),
            (Some(true), Some(true)) => Val::Bool(true),
            _ => Val::Null,
        }),
        "or" => Ok(match (left.truth(), right.truth()) {
            (Some(true), _) | (_, Some(true)) => Val::Bool(true),
            (Some(false), Some(false)) => Val::Bool(false),
            _ => Val::Null,
        }),
        _ if left == Val::Null || right == Val::Null => Ok(Val::Null),
        "=" | "<>" | "<" | "<=" | ">" | ">=" => {
            let Some(ordering) = compare(&left, &right) else {
                return Ok(Val::Null);
            };
            Ok(Val::Bool(match op {
                "=" => ordering == Ordering::Equal,
                "<>" => ordering != Ordering::Equal,
                "<" => ordering == Ordering::Less,
                "<=" => ordering != Ordering::Greater,
                ">" => ordering == Ordering::Greater,
                _ => ordering != Ordering::Less,
            }))
        }
        "||" => Ok(Val::Text(format!(
            "{}{}",
            left.into_text().unwrap_or_default(),
            right.into_text().unwrap_or_default()
        ))),
        _ => {
            if let (Val::Int(a), Val::Int(b)) = (&left, &right) {
                let result = match op {
                    "+" => a.checked_add(*b),
                    "-" => a.checked_sub(*b),
                    "*" => a.checked_mul(*b),
                    _ => {
                        if *b == 0 {
                            return Err("division by zero".into());
                        }
                        a.checked_div(*b)
                    }
                };
                return result
                    .map(Val::Int)
                    .ok_or_else(|| "integer out of range".into());
            }
            let (Some(a), Some(b)) = (left.number(), right.number()) else {
                return Err(format!("operator {op} needs numbers"));
            };
            Ok(Val::Float(match op {
                "+" => a + b,
                "-" => a - b,
                "*" => a * b,
                _ => a / b,
            }))
        }
    }
}

/// SQL comparison of two non-NULL values: numerically when either side is a number.
pub fn compare(left: &Val, right: &Val) -> Option<Ordering> {
    match (left, right) {
        (Val::Null, _) | (_, Val::Null) => None,
        (Val::Int(a), Val::Int(b)) => Some(a.cmp(b)),
        (Val::Bool(a), b) => b.truth().map(|b| a.cmp(&b)),
        (a, Val::Bool(b)) => a.truth().map(|a| a.cmp(b)),
        (Val::Text(a), Val::Text(b)) => Some(a.cmp(b)),
        (a, b) => a.number()?.partial_cmp(&b.number()?),
    }
}

/// Whether a filter holds for a row (NULL counts as false).
pub fn holds(filter: Option<&Expr>, scope: &Scope<'_>) -> Result<bool, String> {
    match filter {
        None => Ok(true),
        Some(expr) => Ok(eval(expr, scope)?.truth() == Some(true)),
    }
}
