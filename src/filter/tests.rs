//! Tests of `where` filters: operators per column type, NULL handling, the logic rules,
//! canonical text, errors, and properties over arbitrary inputs.

use std::ops::Not as _;
use std::sync::Arc;

use async_graphql::{Name, Number, Value as Gql};
use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::config::{Backend, ColumnDef, ColumnType, EnumDef, QualifiedName, StartMode};
use crate::value::Value;

use Truth::{False as F, True as T, Unknown as U};

/// Every column type once; `side` is an enum declared as buy, sell, hold.
const COLUMNS: [&str; 14] = [
    "id", "big", "price", "amount", "name", "uid", "ts", "day", "at", "doc", "tags", "data", "ok",
    "side",
];

fn side() -> Arc<EnumDef> {
    Arc::new(EnumDef {
        name: "Side".into(),
        values: vec!["buy".into(), "sell".into(), "hold".into()],
    })
}

fn source() -> SourceDef {
    let types = [
        ColumnType::Integer,
        ColumnType::BigInt,
        ColumnType::Float,
        ColumnType::Numeric,
        ColumnType::String,
        ColumnType::Uuid,
        ColumnType::Timestamp,
        ColumnType::Date,
        ColumnType::Time,
        ColumnType::Json,
        ColumnType::Array,
        ColumnType::JsonValue,
        ColumnType::Boolean,
        ColumnType::Enum(side()),
    ];
    SourceDef {
        name: "trades".into(),
        relation: QualifiedName {
            schema: None,
            name: "trades".into(),
        },
        backend: Backend::Postgres,
        start: StartMode::Eager,
        columns: COLUMNS
            .iter()
            .zip(types)
            .map(|(name, ty)| ColumnDef {
                name: (*name).into(),
                sql_name: (*name).into(),
                ty,
            })
            .collect(),
        primary_key: vec![0],
        feed: crate::config::FeedOptions::default(),
    }
}

fn gql(json: serde_json::Value) -> Gql {
    Gql::from_json(json).expect("test JSON converts")
}

fn try_compile(json: serde_json::Value) -> Result<Filter, FilterError> {
    compile(&source(), &gql(json))
}

fn filter(json: serde_json::Value) -> Filter {
    let text = json.to_string();
    try_compile(json).unwrap_or_else(|e| panic!("{text} should compile: {e}"))
}

fn error(json: serde_json::Value) -> String {
    let text = json.to_string();
    match try_compile(json) {
        Ok(f) => panic!("{text} should not compile, got {}", f.canonical()),
        Err(e) => e.to_string(),
    }
}

/// A row with the given columns set and every other column NULL.
fn row(values: &[(&str, Value)]) -> Row {
    let mut row = vec![Value::Null; COLUMNS.len()];
    for (name, value) in values {
        let i = COLUMNS
            .iter()
            .position(|c| c == name)
            .expect("test column exists");
        row[i] = value.clone();
    }
    Row::new(row)
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

fn eval(json: serde_json::Value, row: &Row) -> Truth {
    filter(json).evaluate(row)
}

// ---------------------------------------------------------------------------------------------
// Operators × types

/// One column with a literal `x` and row values below, equal to, and above `x`.
struct Ladder {
    column: &'static str,
    operand: serde_json::Value,
    below: Value,
    equal: Value,
    above: Option<Value>,
}

fn l(
    column: &'static str,
    operand: serde_json::Value,
    below: Value,
    equal: Value,
    above: Value,
) -> Ladder {
    Ladder {
        column,
        operand,
        below,
        equal,
        above: Some(above),
    }
}

fn ladders() -> Vec<Ladder> {
    let mut all = number_ladders();
    all.extend(other_ladders());
    all
}

fn number_ladders() -> Vec<Ladder> {
    vec![
        l("id", json!(5), Value::Int(4), Value::Int(5), Value::Int(6)),
        l(
            "id",
            json!(-2_147_483_648),
            Value::Int(i64::from(i32::MIN) - 1),
            Value::Int(i64::from(i32::MIN)),
            Value::Int(0),
        ),
        l(
            "big",
            json!("9223372036854775806"),
            Value::Int(i64::MAX - 2),
            Value::Int(i64::MAX - 1),
            Value::Int(i64::MAX),
        ),
        l(
            "big",
            json!(-9_223_372_036_854_775_807_i64),
            Value::Int(i64::MIN),
            Value::Int(i64::MIN + 1),
            Value::Int(0),
        ),
        l(
            "big",
            json!("-0009"),
            Value::Int(-10),
            Value::Int(-9),
            Value::Int(-8),
        ),
        l(
            "price",
            json!(1.5),
            Value::Float(1.25),
            Value::Float(1.5),
            Value::Float(f64::NAN),
        ),
        l(
            "price",
            json!(0),
            Value::Float(f64::NEG_INFINITY),
            Value::Float(-0.0),
            Value::Float(f64::INFINITY),
        ),
        l(
            "amount",
            json!("12345678901234567890.0000000001"),
            text("12345678901234567890.00000000009"),
            text("0012345678901234567890.000000000100"),
            text("12345678901234567890.0000000002"),
        ),
        l(
            "amount",
            json!(-12.5),
            text("-12.50001"),
            text("-00012.500"),
            text("NaN"),
        ),
        l(
            "amount",
            json!("Infinity"),
            text("99999999999999999999999999999999999999"),
            text("Infinity"),
            text("NaN"),
        ),
    ]
}

fn other_ladders() -> Vec<Ladder> {
    vec![
        l("name", json!("b"), text("a"), text("b"), text("ba")),
        l("name", json!("z"), text("Z"), text("z"), text("é")),
        l(
            "uid",
            json!("00000000-0000-0000-0000-000000000002"),
            text("00000000-0000-0000-0000-000000000001"),
            text("00000000-0000-0000-0000-000000000002"),
            text("00000000-0000-0000-0000-00000000000a"),
        ),
        l(
            "ts",
            json!("2024-01-02 03:04:05"),
            text("2024-01-02 03:04:04.999"),
            text("2024-01-02 03:04:05"),
            text("2024-01-02 03:04:05.000001"),
        ),
        l(
            "day",
            json!("2024-01-02"),
            text("2024-01-01"),
            text("2024-01-02"),
            text("2024-01-03"),
        ),
        l(
            "at",
            json!("12:00:00"),
            text("11:59:59"),
            text("12:00:00"),
            text("12:00:01"),
        ),
        l(
            "doc",
            json!(r#"{"a": 1}"#),
            text(r#"{"a": 0}"#),
            text(r#"{"a": 1}"#),
            text(r#"{"b": 0}"#),
        ),
        l(
            "tags",
            json!("{1,2}"),
            text("{1,1}"),
            text("{1,2}"),
            text("{1,3}"),
        ),
        l("data", json!("[1]"), text("[0]"), text("[1]"), text("[2]")),
        l(
            "side",
            json!("sell"),
            Value::Enum(0),
            Value::Enum(1),
            Value::Enum(2),
        ),
        Ladder {
            column: "ok",
            operand: json!(true),
            below: Value::Bool(false),
            equal: Value::Bool(true),
            above: None,
        },
    ]
}

/// Expected results below / equal / above the operand, per operator.
const COMPARISONS: [(&str, [Truth; 3]); 6] = [
    ("_eq", [F, T, F]),
    ("_neq", [T, F, T]),
    ("_gt", [F, F, T]),
    ("_gte", [F, T, T]),
    ("_lt", [T, F, F]),
    ("_lte", [T, T, F]),
];

#[test]
fn comparison_operators_on_every_type() {
    let mut checked = 0;
    for ladder in ladders() {
        let rows = [
            Some(&ladder.below),
            Some(&ladder.equal),
            ladder.above.as_ref(),
        ];
        for (op, want) in COMPARISONS {
            if ladder.column == "ok" && !matches!(op, "_eq" | "_neq") {
                continue;
            }
            let f = filter(json!({ ladder.column: { op: ladder.operand.clone() } }));
            for (value, want) in rows.iter().zip(want) {
                let Some(value) = value else { continue };
                let got = f.evaluate(&row(&[(ladder.column, (*value).clone())]));
                assert_eq!(
                    got, want,
                    "{} {op} {} on {value:?}",
                    ladder.column, ladder.operand
                );
                checked += 1;
            }
            assert_eq!(f.evaluate(&row(&[])), U, "{} {op} on NULL", ladder.column);
        }
    }
    assert!(checked > 300, "only {checked} cases ran");
}

#[test]
fn membership_operators_on_every_type() {
    for ladder in ladders() {
        let x = ladder.operand.clone();
        let in_x = filter(json!({ ladder.column: { "_in": [x.clone()] } }));
        let nin_x = filter(json!({ ladder.column: { "_nin": [x.clone()] } }));
        let in_empty = filter(json!({ ladder.column: { "_in": [] } }));
        let nin_empty = filter(json!({ ladder.column: { "_nin": [] } }));
        let in_single = filter(json!({ ladder.column: { "_in": x.clone() } }));
        let rows = [(&ladder.below, F), (&ladder.equal, T)];
        for (value, is_in) in rows {
            let r = row(&[(ladder.column, value.clone())]);
            let label = format!("{} {x} on {value:?}", ladder.column);
            assert_eq!(in_x.evaluate(&r), is_in, "_in {label}");
            assert_eq!(in_single.evaluate(&r), is_in, "_in single {label}");
            assert_eq!(nin_x.evaluate(&r), is_in.not(), "_nin {label}");
            assert_eq!(in_empty.evaluate(&r), F, "_in [] {label}");
            assert_eq!(nin_empty.evaluate(&r), T, "_nin [] {label}");
        }
        let null = row(&[]);
        for f in [&in_x, &nin_x, &in_empty, &nin_empty] {
            assert_eq!(f.evaluate(&null), U, "{} on NULL", f.canonical());
        }
    }
}

#[test]
fn in_lists_match_any_member() {
    let f = filter(json!({"id": {"_in": [1, 3, 5]}}));
    let g = filter(json!({"id": {"_nin": [1, 3, 5]}}));
    for i in 0..7 {
        let r = row(&[("id", Value::Int(i))]);
        assert_eq!(f.matches(&r), i % 2 == 1 && i < 6, "{i}");
        assert_eq!(g.matches(&r), !(i % 2 == 1 && i < 6), "{i}");
    }
    let amounts = filter(json!({"amount": {"_in": ["1.50", 2, "NaN"]}}));
    for (value, want) in [("1.5", T), ("2.000", T), ("NaN", T), ("1.51", F)] {
        assert_eq!(
            amounts.evaluate(&row(&[("amount", text(value))])),
            want,
            "{value}"
        );
    }
}

#[test]
fn is_null_is_never_unknown() {
    for (column, value) in [
        ("id", Value::Int(0)),
        ("big", Value::Int(0)),
        ("price", Value::Float(f64::NAN)),
        ("amount", text("NaN")),
        ("name", text("")),
        ("uid", text("x")),
        ("ts", text("x")),
        ("day", text("x")),
        ("at", text("x")),
        ("doc", text("null")),
        ("tags", text("{}")),
        ("data", text("null")),
        ("ok", Value::Bool(false)),
        ("side", Value::Enum(0)),
        ("side", text("void")),
    ] {
        let is_null = filter(json!({ column: {"_is_null": true} }));
        let not_null = filter(json!({ column: {"_is_null": false} }));
        let set = row(&[(column, value)]);
        assert_eq!(is_null.evaluate(&set), F, "{column}");
        assert_eq!(not_null.evaluate(&set), T, "{column}");
        assert_eq!(is_null.evaluate(&row(&[])), T, "{column}");
        assert_eq!(not_null.evaluate(&row(&[])), F, "{column}");
    }
}

const TEXT_COLUMNS: [&str; 8] = ["name", "uid", "ts", "day", "at", "doc", "tags", "data"];

#[test]
fn text_operators_on_every_textual_type() {
    // (operator, pattern, value, result)
    let cases = [
        ("_like", "ab%", "abc", T),
        ("_like", "ab%", "ABC", F),
        ("_like", "a_c", "abc", T),
        ("_like", "a_c", "abbc", F),
        ("_like", r"50\%", "50%", T),
        ("_like", r"50\%", "500", F),
        ("_like", r"a\_c", "abc", F),
        ("_like", r"a\\c", r"a\c", T),
        ("_nlike", "ab%", "abc", F),
        ("_nlike", "ab%", "xbc", T),
        ("_ilike", "AB%", "abc", T),
        ("_ilike", "ab%", "ABC", T),
        ("_ilike", "%ÉTÉ", "un été", T),
        ("_ilike", "ab", "abc", F),
        ("_nilike", "AB%", "abc", F),
        ("_nilike", "AB%", "xbc", T),
        ("_regex", "^a.c$", "abc", T),
        ("_regex", "b", "abc", T),
        ("_regex", "^B", "bcd", F),
        ("_nregex", "b", "abc", F),
        ("_nregex", "^B", "bcd", T),
        ("_iregex", "^B", "bcd", T),
        ("_iregex", "^x", "bcd", F),
        ("_niregex", "^B", "bcd", F),
        ("_niregex", "^x", "bcd", T),
    ];
    for column in TEXT_COLUMNS {
        for (op, pattern, value, want) in cases {
            let f = filter(json!({ column: { op: pattern } }));
            assert_eq!(
                f.evaluate(&row(&[(column, text(value))])),
                want,
                "{column}: {value:?} {op} {pattern:?}"
            );
            assert_eq!(f.evaluate(&row(&[])), U, "{column}: NULL {op} {pattern:?}");
        }
    }
}

#[test]
fn text_operators_do_not_apply_to_other_types() {
    for column in ["id", "big", "price", "amount", "ok", "side"] {
        for op in [
            "_like", "_nlike", "_ilike", "_nilike", "_regex", "_nregex", "_iregex", "_niregex",
        ] {
            let message = error(json!({ column: { op: "a" } }));
            assert!(
                message.contains(&format!("operator `{op}`")) && message.contains("does not apply"),
                "{message}"
            );
        }
    }
}

#[test]
fn boolean_has_no_ordering() {
    for op in ["_gt", "_gte", "_lt", "_lte"] {
        let message = error(json!({"ok": { op: true }}));
        assert!(message.contains("Boolean"), "{message}");
        assert!(
            message.contains("`_eq`"),
            "lists what is allowed: {message}"
        );
    }
    let f = filter(json!({"ok": {"_eq": false}}));
    assert_eq!(f.evaluate(&row(&[("ok", Value::Bool(false))])), T);
    assert_eq!(f.evaluate(&row(&[("ok", Value::Bool(true))])), F);
}

// ---------------------------------------------------------------------------------------------
// Types in detail

#[test]
fn bigint_is_exact_at_the_extremes() {
    let max = row(&[("big", Value::Int(i64::MAX))]);
    let min = row(&[("big", Value::Int(i64::MIN))]);
    assert_eq!(
        eval(json!({"big": {"_eq": "9223372036854775807"}}), &max),
        T
    );
    assert_eq!(
        eval(json!({"big": {"_eq": "9223372036854775806"}}), &max),
        F
    );
    assert_eq!(
        eval(json!({"big": {"_gt": "9223372036854775807"}}), &max),
        F
    );
    assert_eq!(
        eval(
            json!({"big": {"_gte": 9_223_372_036_854_775_807_i64}}),
            &max
        ),
        T
    );
    assert_eq!(
        eval(json!({"big": {"_eq": "-9223372036854775808"}}), &min),
        T
    );
    assert_eq!(
        eval(json!({"big": {"_lt": "-9223372036854775808"}}), &min),
        F
    );
    assert_eq!(
        eval(json!({"big": {"_lt": "-9223372036854775807"}}), &min),
        T
    );
    assert_eq!(
        eval(
            json!({"big": {"_in": ["+7", "007"]}}),
            &row(&[("big", Value::Int(7))])
        ),
        T
    );
    for out_of_range in [
        json!("9223372036854775808"),
        json!(9_223_372_036_854_775_808_u64),
    ] {
        let message = error(json!({"big": {"_eq": out_of_range}}));
        assert!(message.contains("9223372036854775807"), "{message}");
    }
    for not_an_integer in [
        json!("1.5"),
        json!("12a"),
        json!(""),
        json!(1.5),
        json!(true),
    ] {
        error(json!({"big": {"_eq": not_an_integer}}));
    }
}

#[test]
fn integer_takes_integer_literals_only() {
    assert_eq!(
        eval(json!({"id": {"_eq": 3}}), &row(&[("id", Value::Int(3))])),
        T
    );
    for bad in [json!("3"), json!(3.5), json!(3.0), json!(true), json!([3])] {
        let message = error(json!({"id": {"_eq": bad}}));
        assert!(
            message.contains("where.id._eq") && message.contains("an integer"),
            "{message}"
        );
    }
}

#[test]
fn float_orders_nan_above_everything_and_equal_to_itself() {
    let nan = row(&[("price", Value::Float(f64::NAN))]);
    assert_eq!(eval(json!({"price": {"_gt": 1e308}}), &nan), T);
    assert_eq!(eval(json!({"price": {"_lt": 1e308}}), &nan), F);
    assert_eq!(eval(json!({"price": {"_eq": 1.0}}), &nan), F);
    assert_eq!(eval(json!({"price": {"_neq": 1.0}}), &nan), T);
    let inf = row(&[("price", Value::Float(f64::INFINITY))]);
    assert_eq!(eval(json!({"price": {"_gt": 1e308}}), &inf), T);
    assert_eq!(
        eval(
            json!({"price": {"_eq": 2}}),
            &row(&[("price", Value::Float(2.0))])
        ),
        T
    );
    assert!(super::node::float_cmp(f64::NAN, f64::INFINITY).is_gt());
    assert!(super::node::float_cmp(f64::NAN, f64::NAN).is_eq());
    assert!(super::node::float_cmp(-0.0, 0.0).is_eq());
    error(json!({"price": {"_eq": "1.5"}}));
}

#[test]
fn numeric_is_exact_beyond_f64() {
    let r = row(&[("amount", text("12345678901234567890.0000000001"))]);
    assert_eq!(
        eval(
            json!({"amount": {"_lt": "12345678901234567890.0000000002"}}),
            &r
        ),
        T
    );
    assert_eq!(
        eval(
            json!({"amount": {"_eq": "12345678901234567890.0000000002"}}),
            &r
        ),
        F
    );
    assert_eq!(
        eval(
            json!({"amount": {"_eq": "12345678901234567890.00000000010"}}),
            &r
        ),
        T
    );
    let nan = row(&[("amount", text("NaN"))]);
    assert_eq!(eval(json!({"amount": {"_eq": "NaN"}}), &nan), T);
    assert_eq!(eval(json!({"amount": {"_gt": "Infinity"}}), &nan), T);
    let neg_inf = row(&[("amount", text("-Infinity"))]);
    assert_eq!(eval(json!({"amount": {"_lt": -1e300}}), &neg_inf), T);
    assert_eq!(
        eval(
            json!({"amount": {"_eq": 0.1}}),
            &row(&[("amount", text("0.10"))])
        ),
        T
    );
    let long = format!("1{}", "0".repeat(500));
    assert_eq!(
        eval(
            json!({"amount": {"_gt": "1e499"}}),
            &row(&[("amount", text(&long))])
        ),
        T
    );
    assert_eq!(
        eval(
            json!({"amount": {"_eq": "1e500"}}),
            &row(&[("amount", text(&long))])
        ),
        T
    );
    for bad in [json!("12abc"), json!(""), json!("-NaN"), json!(true)] {
        let message = error(json!({"amount": {"_eq": bad}}));
        assert!(message.contains("decimal number"), "{message}");
    }
}

#[test]
fn enums_order_by_declaration_and_compare_undeclared_labels_by_text() {
    let buy = row(&[("side", Value::Enum(0))]);
    let hold = row(&[("side", Value::Enum(2))]);
    let void = row(&[("side", text("void"))]);
    // Declaration order buy < sell < hold, not alphabetical.
    assert_eq!(eval(json!({"side": {"_gt": "sell"}}), &hold), T);
    assert_eq!(eval(json!({"side": {"_lt": "sell"}}), &buy), T);
    assert_eq!(eval(json!({"side": {"_lt": "hold"}}), &buy), T);
    // Undeclared labels: equality by text, ordering unknown.
    assert_eq!(eval(json!({"side": {"_eq": "buy"}}), &void), F);
    assert_eq!(eval(json!({"side": {"_neq": "buy"}}), &void), T);
    assert_eq!(eval(json!({"side": {"_in": ["buy", "hold"]}}), &void), F);
    assert_eq!(eval(json!({"side": {"_nin": ["buy", "hold"]}}), &void), T);
    for op in ["_gt", "_gte", "_lt", "_lte"] {
        assert_eq!(eval(json!({"side": { op: "sell" }}), &void), U, "{op}");
    }
    // An undeclared label spelled like a declared one (should not happen) still equals it.
    assert_eq!(
        eval(
            json!({"side": {"_eq": "buy"}}),
            &row(&[("side", text("buy"))])
        ),
        T
    );
}

#[test]
fn enum_operands_may_be_enum_values_or_strings() {
    let source = source();
    let as_enum = Gql::Object(
        [(
            Name::new("side"),
            Gql::Object(
                [
                    (Name::new("_eq"), Gql::Enum(Name::new("sell"))),
                    (
                        Name::new("_in"),
                        Gql::List(vec![
                            Gql::Enum(Name::new("buy")),
                            Gql::String("hold".into()),
                        ]),
                    ),
                ]
                .into_iter()
                .collect(),
            ),
        )]
        .into_iter()
        .collect(),
    );
    let from_enum = compile(&source, &as_enum).expect("enum operands compile");
    let from_strings = filter(json!({"side": {"_eq": "sell", "_in": ["buy", "hold"]}}));
    assert_eq!(from_enum.canonical(), from_strings.canonical());
    assert_eq!(from_enum.evaluate(&row(&[("side", Value::Enum(1))])), F);
    let unknown = Gql::Object(
        [(
            Name::new("side"),
            Gql::Object(
                [(Name::new("_gt"), Gql::Enum(Name::new("SELL")))]
                    .into_iter()
                    .collect(),
            ),
        )]
        .into_iter()
        .collect(),
    );
    let message = compile(&source, &unknown)
        .expect_err("undeclared label")
        .to_string();
    assert_eq!(
        message,
        "`SELL` at `where.side._gt` is not a value of enum Side; use one of `buy`, `sell` or `hold`"
    );
    error(json!({"side": {"_eq": 1}}));
}

// ---------------------------------------------------------------------------------------------
// Logic

#[test]
fn sibling_keys_are_all_anded() {
    let f = filter(json!({
        "id": {"_eq": 1},
        "_or": [{"name": {"_eq": "x"}}, {"name": {"_eq": "y"}}],
        "_not": {"ok": {"_eq": true}},
        "_and": [{"price": {"_gt": 0}}]
    }));
    let good = [
        ("id", Value::Int(1)),
        ("name", text("x")),
        ("ok", Value::Bool(false)),
        ("price", Value::Float(1.0)),
    ];
    assert_eq!(f.evaluate(&row(&good)), T);
    for (i, spoiler) in [
        ("id", Value::Int(2)),
        ("name", text("z")),
        ("ok", Value::Bool(true)),
        ("price", Value::Float(0.0)),
    ]
    .into_iter()
    .enumerate()
    {
        let mut values = good.to_vec();
        values[i] = spoiler;
        assert_eq!(f.evaluate(&row(&values)), F, "spoiled by {:?}", values[i]);
    }
    // Several operators on one column are combined with AND too.
    let range = filter(json!({"id": {"_gt": 1, "_lt": 4}}));
    let hits: Vec<i64> = (0..6)
        .filter(|&i| range.matches(&row(&[("id", Value::Int(i))])))
        .collect();
    assert_eq!(hits, [2, 3]);
}

#[test]
fn empty_forms() {
    let r = row(&[]);
    assert_eq!(eval(json!({}), &r), T);
    assert_eq!(eval(json!({"_and": []}), &r), T);
    assert_eq!(eval(json!({"_or": []}), &r), F);
    assert_eq!(eval(json!({"id": {}}), &r), T);
    assert_eq!(eval(json!({"_not": {}}), &r), F);
    assert_eq!(eval(json!({"_not": {"_or": []}}), &r), T);
    assert_eq!(eval(json!({"_or": [{}]}), &r), T);
    assert_eq!(eval(json!({"_and": [{"_or": []}]}), &r), F);
    assert!(Filter::always().matches(&r));
    assert!(
        compile(&source(), &Gql::Null)
            .expect("null where")
            .matches(&r)
    );
}

#[test]
fn not_of_unknown_is_unknown() {
    let null = row(&[]);
    for op in ["_eq", "_neq", "_gt", "_lt"] {
        let f = filter(json!({"_not": {"id": { op: 1 }}}));
        assert_eq!(f.evaluate(&null), U, "{op}");
        assert!(!f.matches(&null), "{op}");
    }
    assert!(!filter(json!({"_not": {"name": {"_like": "%"}}})).matches(&null));
    assert!(filter(json!({"_not": {"name": {"_is_null": false}}})).matches(&null));
}

#[test]
fn kleene_tables() {
    // On this row: `t` is TRUE, `f` FALSE, `u` UNKNOWN.
    let r = row(&[("id", Value::Int(1))]);
    let t = json!({"id": {"_eq": 1}});
    let f = json!({"id": {"_eq": 2}});
    let u = json!({"name": {"_eq": "x"}});
    let leaves = [(&t, T), (&f, F), (&u, U)];
    let and = |a: Truth, b: Truth| match (a, b) {
        (F, _) | (_, F) => F,
        (T, T) => T,
        _ => U,
    };
    let or = |a: Truth, b: Truth| match (a, b) {
        (T, _) | (_, T) => T,
        (F, F) => F,
        _ => U,
    };
    for (a, ta) in leaves {
        assert_eq!(eval(a.clone(), &r), ta);
        assert_eq!(eval(json!({"_not": a}), &r), ta.not());
        for (b, tb) in leaves {
            assert_eq!(
                eval(json!({"_and": [a, b]}), &r),
                and(ta, tb),
                "{ta:?} AND {tb:?}"
            );
            assert_eq!(
                eval(json!({"_or": [a, b]}), &r),
                or(ta, tb),
                "{ta:?} OR {tb:?}"
            );
            assert_eq!(ta.and(tb), and(ta, tb));
            assert_eq!(ta.or(tb), or(ta, tb));
        }
    }
    assert_eq!((T.not(), F.not(), U.not()), (F, T, U));
}

#[test]
fn explicit_nulls_are_ignored() {
    let null = row(&[]);
    let five = row(&[("id", Value::Int(5))]);
    for json in [
        json!({"id": {"_eq": null}}),
        json!({"id": {"_in": null, "_gt": null}}),
        json!({"id": null}),
        json!({"_and": null}),
        json!({"_or": null}),
        json!({"_not": null}),
    ] {
        let text = json.to_string();
        let f = filter(json);
        assert!(f.matches(&null) && f.matches(&five), "{text}");
        assert_eq!(f.canonical(), "{}", "{text}");
        assert!(f.columns().is_empty(), "{text}");
    }
    let f = filter(json!({"id": {"_eq": null, "_gt": 3}}));
    assert!(f.matches(&five));
    assert!(!f.matches(&row(&[("id", Value::Int(2))])));
}

#[test]
fn lists_accept_a_single_object() {
    let r = row(&[("id", Value::Int(1))]);
    assert_eq!(eval(json!({"_and": {"id": {"_eq": 2}}}), &r), F);
    assert_eq!(eval(json!({"_or": {"id": {"_eq": 1}}}), &r), T);
    assert_eq!(
        filter(json!({"_or": {"id": {"_eq": 1}}})).canonical(),
        filter(json!({"_or": [{"id": {"_eq": 1}}]})).canonical()
    );
}

// ---------------------------------------------------------------------------------------------
// Columns and canonical text

#[test]
fn columns_are_sorted_and_deduplicated() {
    let f = filter(json!({
        "side": {"_eq": "buy"},
        "id": {"_gt": 1, "_lt": 9},
        "_or": [{"id": {"_eq": 3}}, {"name": {"_like": "a%"}}],
        "price": {"_eq": null},
        "ok": {}
    }));
    assert_eq!(f.columns(), [0, 4, 13]);
    assert!(Filter::always().columns().is_empty());
}

#[test]
fn canonical_text_sorts_keys_and_normalizes_operands() {
    let a = filter(json!({
        "name": {"_like": "a%", "_eq": "a\"b"},
        "big": {"_in": ["007", 8]},
        "amount": {"_gte": "-00012.500"},
        "price": {"_eq": 2},
        "_or": [{"id": {"_eq": 1}}, {"id": {"_eq": 2}}]
    }));
    assert_eq!(
        a.canonical(),
        r#"{"_or":[{"id":{"_eq":1}},{"id":{"_eq":2}}],"amount":{"_gte":"-12.5"},"big":{"_in":[7,8]},"name":{"_eq":"a\"b","_like":"a%"},"price":{"_eq":2.0}}"#
    );
    let b = filter(json!({
        "_or": [{"id": {"_eq": 1}}, {"id": {"_eq": 2}}],
        "price": {"_eq": 2.0, "_lt": null},
        "amount": {"_gte": -12.5},
        "big": {"_in": [7, "8"]},
        "name": {"_eq": "a\"b", "_like": "a%"}
    }));
    assert_eq!(a.canonical(), b.canonical());
    // Lists keep their order; different filters differ.
    let c = filter(json!({"_or": [{"id": {"_eq": 2}}, {"id": {"_eq": 1}}]}));
    let d = filter(json!({"_or": [{"id": {"_eq": 1}}, {"id": {"_eq": 2}}]}));
    assert_ne!(c.canonical(), d.canonical());
    assert_ne!(
        filter(json!({"name": {"_eq": "1"}})).canonical(),
        filter(json!({"name": {"_like": "1"}})).canonical()
    );
    assert_ne!(
        filter(json!({"price": {"_eq": 0.1}})).canonical(),
        filter(json!({"price": {"_eq": 0.100_000_000_000_000_02}})).canonical()
    );
    assert_eq!(
        filter(json!({"price": {"_eq": -0.0}})).canonical(),
        filter(json!({"price": {"_eq": 0}})).canonical()
    );
    assert_eq!(Filter::always().canonical(), "{}");
    assert_eq!(
        filter(json!({"name": {"_eq": "\n"}})).canonical(),
        r#"{"name":{"_eq":"\u000a"}}"#
    );
}

#[test]
fn filters_are_cheap_to_share() {
    fn assert_shareable<X: Clone + std::fmt::Debug + Send + Sync + 'static>() {}
    assert_shareable::<Filter>();
    assert_shareable::<FilterError>();
    let f = filter(json!({"name": {"_regex": "a+"}}));
    let g = f.clone();
    assert!(Arc::ptr_eq(&f.inner, &g.inner));
}

// ---------------------------------------------------------------------------------------------
// Errors

#[test]
fn error_messages_name_the_place_and_the_fix() {
    let cases = [
        (
            json!(5),
            "`where` must be an object of column filters (or `_and`, `_or`, `_not`), not the number 5",
        ),
        (
            json!([]),
            "`where` must be an object of column filters (or `_and`, `_or`, `_not`), not a list",
        ),
        (
            json!({"_and": [{}, "x"]}),
            "`where._and[1]` must be an object of column filters (or `_and`, `_or`, `_not`), not the string \"x\"",
        ),
        (
            json!({"_or": 3}),
            "`where._or` must be a list of filter objects, not the number 3",
        ),
        (
            json!({"_and": [null]}),
            "`where._and[0]` is null; a list of filters must hold filter objects only",
        ),
        (
            json!({"_not": [{}]}),
            "`where._not` must be an object of column filters (or `_and`, `_or`, `_not`), not a list",
        ),
        (
            json!({"nope": {"_eq": 1}}),
            "unknown column `nope` at `where.nope`; `trades` has the columns `id`, `big`, `price`, `amount`, `name`, `uid`, `ts`, `day`, `at`, `doc`, `tags`, `data`, `ok`, `side`, plus `_and`, `_or` and `_not`",
        ),
        (
            json!({"id": 5}),
            "`where.id` must be an object of operators such as `{_eq: ...}`, not the number 5",
        ),
        (
            json!({"ok": {"_equals": true}}),
            "unknown operator `_equals` at `where.ok._equals`; a Boolean column supports `_eq`, `_neq`, `_in`, `_nin` or `_is_null`",
        ),
        (
            json!({"ok": {"_gt": true}}),
            "operator `_gt` at `where.ok._gt` does not apply to a Boolean column; use one of `_eq`, `_neq`, `_in`, `_nin` or `_is_null`",
        ),
        (
            json!({"name": {"_eq": 1}}),
            "`where.name._eq` expects a string, not the number 1",
        ),
        (
            json!({"id": {"_in": [1, null]}}),
            "`where.id._in[1]` expects an integer (test for null with `_is_null`), not null",
        ),
        (
            json!({"id": {"_is_null": "yes"}}),
            "`where.id._is_null` expects a boolean, not the string \"yes\"",
        ),
        (
            json!({"name": {"_like": 5}}),
            "`where.name._like` expects a string pattern, not the number 5",
        ),
        (
            json!({"name": {"_like": "abc\\"}}),
            "the pattern at `where.name._like` ends with an escape character `\\`; write `\\\\` to match a backslash",
        ),
        (
            json!({"_or": [{"_and": [{"id": {"_eq": {}}}]}]}),
            "`where._or[0]._and[0].id._eq` expects an integer, not an object",
        ),
    ];
    for (json, want) in cases {
        let text = json.to_string();
        let got = error(json);
        assert_eq!(got, want, "for {text}");
    }
    let message = error(json!({"name": {"_regex": "a("}}));
    assert!(
        message.starts_with("the regular expression at `where.name._regex` is invalid: "),
        "{message}"
    );
    let long = error(json!({"id": {"_eq": "x".repeat(100)}}));
    assert!(long.len() < 150, "long operands are cut short: {long}");
}

#[test]
fn messages_are_lowercase() {
    for json in [
        json!(5),
        json!({"nope": {}}),
        json!({"id": {"_x": 1}}),
        json!({"side": {"_eq": "nope"}}),
        json!({"name": {"_regex": "("}}),
    ] {
        let message = error(json);
        let first = message.chars().next().expect("non-empty message");
        assert!(!first.is_uppercase(), "{message}");
    }
}

#[test]
fn nesting_is_bounded() {
    let nest = |depth: usize| {
        let mut json = json!({"id": {"_eq": 1}});
        for _ in 0..depth {
            json = json!({ "_not": json });
        }
        json
    };
    let r = row(&[("id", Value::Int(1))]);
    assert_eq!(eval(nest(super::compile::MAX_DEPTH), &r), T);
    let message = error(nest(super::compile::MAX_DEPTH + 1));
    assert!(message.contains("nested more than 32 levels"), "{message}");
    let message = error(nest(200));
    assert!(message.contains("flatten"), "{message}");
    // Built directly (serde_json itself recurses on deep input): compilation stops at the
    // limit instead of recursing through the whole value.
    let mut deep = object(vec![]);
    for _ in 0..5000 {
        deep = object(vec![("_not", deep)]);
    }
    let result = compile(&source(), &deep);
    assert!(
        matches!(result, Err(FilterError::TooDeep { .. })),
        "{result:?}"
    );
    // Take the value apart iteratively: dropping it whole would recurse 5000 levels deep.
    while let Gql::Object(mut fields) = deep {
        deep = fields.swap_remove("_not").unwrap_or(Gql::Null);
    }
}

#[test]
fn malformed_rows_do_not_panic() {
    let f = filter(json!({"id": {"_eq": 1}, "name": {"_like": "a"}, "side": {"_gt": "buy"}}));
    assert_eq!(f.evaluate(&Row::new(vec![])), U);
    let wrong = Row::new(vec![text("1"); COLUMNS.len()]);
    assert_eq!(
        f.evaluate(&wrong),
        F,
        "name does not match, the rest is unknown"
    );
    assert_eq!(
        eval(
            json!({"amount": {"_eq": 1}}),
            &row(&[("amount", text("x"))])
        ),
        U
    );
}

// ---------------------------------------------------------------------------------------------
// Properties

static KEYS: [&str; 40] = [
    "id",
    "big",
    "price",
    "amount",
    "name",
    "uid",
    "ts",
    "day",
    "at",
    "doc",
    "tags",
    "data",
    "ok",
    "side",
    "_and",
    "_or",
    "_not",
    "_eq",
    "_neq",
    "_gt",
    "_gte",
    "_lt",
    "_lte",
    "_in",
    "_nin",
    "_is_null",
    "_like",
    "_nlike",
    "_ilike",
    "_nilike",
    "_regex",
    "_nregex",
    "_iregex",
    "_niregex",
    "",
    "_",
    "__typename",
    "_EQ",
    "Id",
    "nope",
];

static STRINGS: [&str; 22] = [
    "",
    "a",
    "ab%",
    "_",
    "%",
    "\\",
    "a\\",
    "\\%",
    "(",
    "[a-",
    "^a.*$",
    "12",
    "-0012.50",
    "NaN",
    "Infinity",
    "1e5",
    "9223372036854775808",
    "buy",
    "sell",
    "hold",
    "void",
    "é€",
];

fn number() -> impl Strategy<Value = Number> {
    prop_oneof![
        any::<i64>().prop_map(Number::from),
        (-3_i64..4).prop_map(Number::from),
        any::<u64>().prop_map(Number::from),
        any::<f64>().prop_filter_map("finite", Number::from_f64),
    ]
}

fn junk_leaf() -> impl Strategy<Value = Gql> {
    prop_oneof![
        Just(Gql::Null),
        number().prop_map(Gql::Number),
        prop::sample::select(&STRINGS[..]).prop_map(|s| Gql::String(s.into())),
        "\\PC{0,6}".prop_map(Gql::String),
        any::<bool>().prop_map(Gql::Boolean),
        prop::sample::select(&STRINGS[17..]).prop_map(|s| Gql::Enum(Name::new(s))),
        Just(Gql::Binary(bytes::Bytes::from_static(b"\x00"))),
    ]
}

fn object(entries: Vec<(&str, Gql)>) -> Gql {
    Gql::Object(
        entries
            .into_iter()
            .map(|(k, v)| (Name::new(k), v))
            .collect(),
    )
}

/// Arbitrary values shaped loosely like filters: mostly wrong, sometimes right.
fn junk_where() -> impl Strategy<Value = Gql> {
    junk_leaf().prop_recursive(6, 64, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Gql::List),
            prop::collection::vec((prop::sample::select(&KEYS[..]), inner), 0..5).prop_map(object),
        ]
    })
}

fn text_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(&STRINGS[..]).prop_map(str::to_owned),
        "[a-cA-C%_\\\\é]{0,4}",
    ]
}

/// One valid column filter `{column: {op: operand}}`.
fn valid_leaf() -> impl Strategy<Value = Gql> {
    let ints = || (-3_i64..4).prop_map(|i| Gql::Number(i.into()));
    let cmp = || prop::sample::select(vec!["_eq", "_neq", "_gt", "_gte", "_lt", "_lte"]);
    let op_leaf = |column: &'static str, op: &'static str, operand: Gql| {
        object(vec![(column, object(vec![(op, operand)]))])
    };
    let bigints = prop_oneof![
        (-3_i64..4).prop_map(|i| Gql::String(i.to_string())),
        Just(Gql::String(i64::MAX.to_string())),
        Just(Gql::Number(i64::MIN.into())),
    ];
    let floats = prop::sample::select(vec![-1.5, 0.0, 1.5, 1e308])
        .prop_filter_map("finite", |f| Number::from_f64(f).map(Gql::Number));
    let amounts = prop::sample::select(vec!["-1.5", "0", "0.0001", "1", "NaN", "Infinity"])
        .prop_map(|s| Gql::String(s.into()));
    let labels =
        prop::sample::select(vec!["buy", "sell", "hold"]).prop_map(|s| Gql::Enum(Name::new(s)));
    let patterns = prop::sample::select(vec!["a%", "%b", "_", "\\%", "A%", "%"]);
    let regexes = prop::sample::select(vec!["^a", "b$", "é", "^$"]);
    prop_oneof![
        (cmp(), ints()).prop_map(move |(op, v)| op_leaf("id", op, v)),
        (cmp(), bigints).prop_map(move |(op, v)| op_leaf("big", op, v)),
        (cmp(), floats).prop_map(move |(op, v)| op_leaf("price", op, v)),
        (cmp(), amounts).prop_map(move |(op, v)| op_leaf("amount", op, v)),
        (cmp(), labels.clone()).prop_map(move |(op, v)| op_leaf("side", op, v)),
        (cmp(), text_value()).prop_map(move |(op, v)| op_leaf("name", op, Gql::String(v))),
        (
            prop::sample::select(vec!["_like", "_nlike", "_ilike", "_nilike"]),
            patterns
        )
            .prop_map(move |(op, p)| op_leaf("name", op, Gql::String(p.into()))),
        (
            prop::sample::select(vec!["_regex", "_nregex", "_iregex", "_niregex"]),
            regexes
        )
            .prop_map(move |(op, p)| op_leaf("doc", op, Gql::String(p.into()))),
        (
            prop::sample::select(vec!["_in", "_nin"]),
            prop::collection::vec(ints(), 0..3)
        )
            .prop_map(move |(op, v)| op_leaf("id", op, Gql::List(v))),
        (
            prop::sample::select(vec!["_in", "_nin"]),
            prop::collection::vec(labels, 0..3)
        )
            .prop_map(move |(op, v)| op_leaf("side", op, Gql::List(v))),
        (prop::sample::select(vec!["_eq", "_neq"]), any::<bool>())
            .prop_map(move |(op, b)| op_leaf("ok", op, Gql::Boolean(b))),
        (prop::sample::select(COLUMNS.to_vec()), any::<bool>()).prop_map(move |(c, b)| op_leaf(
            c,
            "_is_null",
            Gql::Boolean(b)
        )),
    ]
}

/// Valid filters nested through `_and`, `_or`, `_not` and sibling keys.
fn valid_where() -> impl Strategy<Value = Gql> {
    valid_leaf().prop_recursive(4, 32, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3)
                .prop_map(|v| object(vec![("_and", Gql::List(v))])),
            prop::collection::vec(inner.clone(), 0..3)
                .prop_map(|v| object(vec![("_or", Gql::List(v))])),
            inner.clone().prop_map(|v| object(vec![("_not", v)])),
            (inner.clone(), inner).prop_map(|(a, b)| {
                // Siblings: a's keys plus b under `_and` (its keys may clash with a's).
                match a {
                    Gql::Object(mut fields) => {
                        fields.insert(Name::new("_and"), Gql::List(vec![b]));
                        Gql::Object(fields)
                    }
                    other => other,
                }
            }),
        ]
    })
}

fn any_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => prop_oneof![(-3_i64..4), Just(i64::MIN), Just(i64::MAX)].prop_map(Value::Int),
        1 => prop_oneof![any::<f64>(), Just(f64::NAN), Just(-0.0), Just(1.5)].prop_map(Value::Float),
        1 => text_value().prop_map(|s| Value::Text(s.into())),
        1 => (0_u32..5).prop_map(Value::Enum),
    ]
}

/// Rows of the right width with values of any type (mostly fitting, NULL often).
fn any_row() -> impl Strategy<Value = Row> {
    prop::collection::vec(any_value(), COLUMNS.len()).prop_map(Row::new)
}

/// A value fitting `column`'s type, or NULL.
fn fitting_value(column: usize) -> BoxedStrategy<Value> {
    let fit: BoxedStrategy<Value> = match COLUMNS[column] {
        "id" | "big" => prop_oneof![(-3_i64..4), Just(i64::MIN), Just(i64::MAX)]
            .prop_map(Value::Int)
            .boxed(),
        "price" => prop::sample::select(vec![-1.5, 0.0, -0.0, 1.5, 1e308, f64::INFINITY, f64::NAN])
            .prop_map(Value::Float)
            .boxed(),
        "amount" => prop::sample::select(vec![
            "-1.50",
            "0",
            "0.0001",
            "1",
            "NaN",
            "-Infinity",
            "1e400",
        ])
        .prop_map(|s| Value::Text(s.into()))
        .boxed(),
        "ok" => any::<bool>().prop_map(Value::Bool).boxed(),
        "side" => prop_oneof![
            (0_u32..3).prop_map(Value::Enum),
            Just(Value::Text("void".into()))
        ]
        .boxed(),
        _ => text_value().prop_map(|s| Value::Text(s.into())).boxed(),
    };
    prop_oneof![1 => Just(Value::Null), 3 => fit].boxed()
}

fn fitting_row() -> impl Strategy<Value = Row> {
    (0..COLUMNS.len())
        .map(fitting_value)
        .collect::<Vec<_>>()
        .prop_map(Row::new)
}

/// Reverses the key order of every object, recursively.
fn reversed(value: &Gql) -> Gql {
    match value {
        Gql::Object(fields) => Gql::Object(
            fields
                .iter()
                .rev()
                .map(|(k, v)| (k.clone(), reversed(v)))
                .collect(),
        ),
        Gql::List(items) => Gql::List(items.iter().map(reversed).collect()),
        other => other.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_input_never_panics(where_ in junk_where(), rows in prop::collection::vec(any_row(), 4)) {
        let source = source();
        if let Ok(f) = compile(&source, &where_) {
            for r in &rows {
                let _ = f.matches(r);
            }
            let _ = f.matches(&Row::new(vec![]));
            prop_assert!(f.columns().windows(2).all(|w| w[0] < w[1]));
            prop_assert!(f.columns().iter().all(|&c| c < COLUMNS.len()));
        }
    }

    #[test]
    fn canonical_text_compiles_to_itself(where_ in valid_where(), rows in prop::collection::vec(fitting_row(), 8)) {
        let source = source();
        let f = compile(&source, &where_).expect("valid filters compile");
        let json: serde_json::Value = serde_json::from_str(f.canonical()).expect("canonical text is JSON");
        let again = compile(&source, &Gql::from_json(json).expect("converts")).expect("canonical compiles");
        prop_assert_eq!(f.canonical(), again.canonical());
        prop_assert_eq!(f.columns(), again.columns());
        let shuffled = compile(&source, &reversed(&where_)).expect("reordered compiles");
        prop_assert_eq!(f.canonical(), shuffled.canonical());
        for r in &rows {
            prop_assert_eq!(f.evaluate(r), again.evaluate(r));
            prop_assert_eq!(f.evaluate(r), shuffled.evaluate(r));
        }
    }

    #[test]
    fn not_is_true_exactly_where_the_filter_is_false(where_ in valid_where(), rows in prop::collection::vec(fitting_row(), 8)) {
        let source = source();
        let f = compile(&source, &where_).expect("valid filters compile");
        let not = compile(&source, &object(vec![("_not", where_)])).expect("negation compiles");
        for r in &rows {
            prop_assert_eq!(not.evaluate(r), f.evaluate(r).not());
            prop_assert_eq!(not.matches(r), f.evaluate(r) == Truth::False);
        }
    }

    #[test]
    fn and_or_are_kleene(a in valid_where(), b in valid_where(), rows in prop::collection::vec(fitting_row(), 8)) {
        let source = source();
        let fa = compile(&source, &a).expect("a compiles");
        let fb = compile(&source, &b).expect("b compiles");
        let and = compile(&source, &object(vec![("_and", Gql::List(vec![a.clone(), b.clone()]))])).expect("and");
        let or = compile(&source, &object(vec![("_or", Gql::List(vec![a, b]))])).expect("or");
        for r in &rows {
            prop_assert_eq!(and.evaluate(r), fa.evaluate(r).and(fb.evaluate(r)));
            prop_assert_eq!(or.evaluate(r), fa.evaluate(r).or(fb.evaluate(r)));
        }
    }

    #[test]
    fn numeric_order_agrees_with_integers(a in any::<i64>(), b in any::<i64>(), za in 0_usize..3, zb in 0_usize..3) {
        let pad = |i: i64, zeros: usize| {
            let digits = i.unsigned_abs().to_string();
            let sign = if i < 0 { "-" } else { "" };
            format!("{sign}{}{digits}.{}", "0".repeat(zeros), "0".repeat(zeros))
        };
        let amount = filter(json!({"amount": {"_lt": pad(b, zb)}}));
        let big = filter(json!({"big": {"_lt": b.to_string()}}));
        let r = row(&[("amount", text(&pad(a, za))), ("big", Value::Int(a))]);
        prop_assert_eq!(amount.matches(&r), a < b);
        prop_assert_eq!(big.matches(&r), a < b);
    }
}

#[test]
fn required_equalities_are_found_at_the_top_level_only() {
    use super::EqKey;
    let col = |name: &str| COLUMNS.iter().position(|c| *c == name).unwrap();
    for (json, expected) in [
        (json!({"id": {"_eq": 7}}), Some((col("id"), EqKey::Int(7)))),
        (
            json!({"name": {"_eq": "x"}, "id": {"_gt": 1}}),
            Some((col("name"), EqKey::Text("x".into()))),
        ),
        (
            json!({"_and": [{"price": {"_gt": 1}}, {"side": {"_eq": "sell"}}]}),
            Some((col("side"), EqKey::Enum(1))),
        ),
        (
            json!({"ok": {"_eq": true}}),
            Some((col("ok"), EqKey::Bool(true))),
        ),
        // Floats and decimals compare equal across spellings: not indexed.
        (json!({"price": {"_eq": 1.5}}), None),
        (json!({"amount": {"_eq": "1.50"}}), None),
        // Not required: under `_or` or `_not`, or another operator.
        (
            json!({"_or": [{"id": {"_eq": 1}}, {"id": {"_eq": 2}}]}),
            None,
        ),
        (json!({"_not": {"id": {"_eq": 1}}}), None),
        (json!({"id": {"_neq": 1}}), None),
        (json!({}), None),
    ] {
        let shown = json.to_string();
        let found = filter(json.clone()).required_equality();
        assert_eq!(found, expected, "{shown}");
        // A row whose key differs never matches; one with the key may.
        if let Some((column, key)) = found {
            let mut values = vec![Value::Null; COLUMNS.len()];
            values[column] = match &key {
                EqKey::Int(i) => Value::Int(i + 1),
                EqKey::Text(t) => text(&format!("{t}!")),
                EqKey::Bool(b) => Value::Bool(!b),
                EqKey::Enum(o) => Value::Enum(o + 1),
            };
            let other = Row::new(values);
            assert_ne!(super::eq_key(&other.values()[column]), Some(key));
            assert!(!filter(json).matches(&other), "{shown}");
        }
    }
}

#[test]
fn sizes_are_checked_before_compiling() {
    let limits = FilterLimits {
        max_nodes: 10,
        max_in: 3,
        max_pattern_bytes: 8,
    };
    let check = |json: serde_json::Value| check_size(&gql(json), &limits);
    assert_eq!(
        check(json!({"id": {"_in": [1, 2, 3]}, "name": {"_like": "abc%"}})),
        Ok(())
    );
    assert_eq!(
        check(json!({"_and": [{"id": {"_nin": [1, 2, 3, 4]}}]})),
        Err(FilterError::InListTooLong {
            at: "where._and[0].id._nin".into(),
            count: 4,
            max: 3
        })
    );
    assert_eq!(
        check(json!({"_not": {"name": {"_iregex": "a{1000}b{1000}"}}})),
        Err(FilterError::PatternTooLong {
            at: "where._not.name._iregex".into(),
            bytes: 14,
            max: 8
        })
    );
    // Keys and list items count: six `{}` in an `_or`, and its key, and four columns.
    let many = json!({"_or": [{}, {}, {}, {}, {}, {}], "id": {"_eq": 1}, "name": {"_eq": "x"}});
    assert_eq!(check(many), Err(FilterError::TooManyNodes { max: 10 }));
    // The default limits take what real filters hold.
    let real = gql(
        json!({"_or": [{"side": {"_eq": "buy"}}, {"price": {"_gte": 10}}], "id": {"_in": [1, 2, 3]}}),
    );
    assert_eq!(check_size(&real, &FilterLimits::default()), Ok(()));
    assert!(FilterError::TooManyNodes { max: 1 }.is_limit());
}
