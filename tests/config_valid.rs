//! Valid configurations (`tests/fixtures/valid/<case>/schema.yaml`) and the values they
//! resolve to: relation names folded or quoted, SQL column names, key indices, defaults.

use std::path::Path;

use viewcast::config::{Backend, ColumnType, Config, QualifiedName, SourceDef, StartMode};

fn load(case: &str) -> Config {
    let path = Path::new("tests/fixtures/valid")
        .join(case)
        .join("schema.yaml");
    viewcast::config::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn rel(schema: Option<&str>, name: &str) -> QualifiedName {
    QualifiedName {
        schema: schema.map(str::to_owned),
        name: name.to_owned(),
    }
}

fn column_names(source: &SourceDef) -> Vec<(&str, &str, &str)> {
    source
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.sql_name.as_str(), c.ty.yaml_name()))
        .collect()
}

#[test]
fn tycostream_example_loads_with_tycostream_defaults() {
    let config = load("tycostream_example");
    assert_eq!(
        config.path,
        Path::new("tests/fixtures/valid/tycostream_example/schema.yaml")
    );
    let enums: Vec<(&str, Vec<&str>)> = config
        .enums
        .iter()
        .map(|e| {
            (
                e.name.as_str(),
                e.values.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        enums,
        [
            ("side", vec!["buy", "sell"]),
            ("event_type", vec!["FIRE", "CLEAR"])
        ]
    );
    let names: Vec<&str> = config.sources.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["live_pnl", "trades", "alerts"]);
    for source in &config.sources {
        // tycostream read from Materialize, started sources on demand only; viewcast keeps
        // Materialize as the default backend and starts eagerly.
        assert_eq!(source.backend, Backend::Materialize);
        assert_eq!(source.start, StartMode::Eager);
        assert_eq!(source.relation, rel(None, &source.name));
        assert_eq!(source.primary_key, [0]);
    }
    let trades = config.source("trades").unwrap();
    assert_eq!(
        column_names(trades),
        [
            ("id", "id", "Integer"),
            ("instrument_id", "instrument_id", "Integer"),
            ("side", "side", "side"),
            ("quantity", "quantity", "Integer"),
            ("price", "price", "Float"),
            ("executed_at", "executed_at", "Timestamp"),
        ]
    );
    match &trades.columns[2].ty {
        ColumnType::Enum(side) => {
            assert!(std::sync::Arc::ptr_eq(side, &config.enums[0]));
            assert_eq!(side.ordinal("sell"), Some(1));
        }
        other => panic!("side resolved to {other:?}"),
    }
    let alerts = config.source("alerts").unwrap();
    assert_eq!(alerts.columns[5].ty, ColumnType::Json);
    assert!(matches!(&alerts.columns[4].ty, ColumnType::Enum(e) if e.name == "event_type"));
    assert_eq!(
        config.source("live_pnl").unwrap().columns[2].ty,
        ColumnType::BigInt
    );
}

#[test]
fn composite_keys_quoted_identifiers_and_overrides() {
    let config = load("composite_key");
    assert!(config.enums.is_empty());

    let positions = config.source("positions").unwrap();
    assert_eq!(positions.relation, rel(Some("trading"), "Open Positions"));
    assert_eq!(positions.relation.sql(), r#""trading"."Open Positions""#);
    assert_eq!(positions.backend, Backend::Postgres);
    assert_eq!(positions.start, StartMode::Eager);
    assert_eq!(
        column_names(positions),
        [
            ("symbol", "Symbol", "String"),
            ("quantity", "quantity", "Numeric"),
            ("account", r#"Account "Main" Id"#, "String"),
            ("AvgPrice", "avgprice", "Float"),
        ]
    );
    // Key order is the order of `primary_key`, not of the columns.
    assert_eq!(positions.primary_key, [2, 0]);
    assert!(positions.is_key_column(0) && !positions.is_key_column(1));

    let fills = config.source("fills").unwrap();
    assert_eq!(fills.relation, rel(None, "Fills.Live"));
    assert_eq!(fills.backend, Backend::Materialize);
    assert_eq!(fills.start, StartMode::Lazy);
    assert_eq!(fills.primary_key, [0]);
    assert_eq!(
        column_names(fills),
        [("fill_id", "fill_id", "UUID"), ("Venue", "venue", "String")]
    );

    let quotes = config.source("Quotes").unwrap();
    assert_eq!(quotes.relation, rel(None, "quotes"));
    assert_eq!(quotes.backend, Backend::RisingWave);
    assert_eq!(quotes.start, StartMode::Lazy);
}

#[test]
fn every_type_resolves() {
    assert!(std::env::var_os("VIEWCAST_TEST_UNSET_BACKEND").is_none());
    let config = load("every_type");
    let source = &config.sources[0];
    // The default of `${env.VIEWCAST_TEST_UNSET_BACKEND:-risingwave}`.
    assert_eq!(source.backend, Backend::RisingWave);
    let types: Vec<&str> = source.columns.iter().map(|c| c.ty.yaml_name()).collect();
    let mut expected: Vec<&str> = ColumnType::BUILTIN_NAMES.to_vec();
    expected.push("level");
    assert_eq!(types, expected);
    for column in &source.columns[..13] {
        assert_eq!(
            ColumnType::builtin(column.ty.yaml_name()).as_ref(),
            Some(&column.ty)
        );
    }
    assert_eq!(source.column_index("level_val"), Some(13));
}

#[test]
fn every_valid_fixture_loads() {
    let dir = Path::new("tests/fixtures/valid");
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path().join("schema.yaml");
        if let Err(e) = viewcast::config::load(&path) {
            panic!("{e}");
        }
        count += 1;
    }
    assert!(count >= 3);
}

#[test]
fn triggers_declared_under_a_source_load_in_file_order() {
    let config = load("triggers");
    let declared: Vec<(&str, &str)> = config
        .triggers
        .iter()
        .map(|t| (t.source.as_str(), t.name.as_str()))
        .collect();
    assert_eq!(declared, [("trades", "large_buy"), ("trades", "any_sell")]);
    let large = &config.triggers[0].input;
    assert_eq!(large["name"], "large_buy");
    assert_eq!(large["headers"]["x-team"], "risk");
    assert_eq!(large["retry"]["attempts"], 5);
    assert_eq!(large["fire"]["side"]["_eq"], "buy");
    // The same validation as the API's: the spec is what `create_trades_trigger` would make.
    let source = config.source("trades").unwrap();
    let spec = viewcast::trigger::TriggerSpec::from_input(source, large).unwrap();
    assert_eq!(spec.retry.attempts, 5);
    assert_eq!(spec.format, viewcast::trigger::PayloadFormat::Hasura);
    assert_eq!(spec.fields, Some(vec![0, 2]));
    assert_eq!(spec.cooldown, Some(std::time::Duration::from_secs(60)));
    assert_eq!(spec.headers, [("x-team".to_owned(), "risk".to_owned())]);
}

#[test]
fn run_kinds_resolve_with_their_executors_and_defaults() {
    use std::time::Duration;
    use viewcast::config::Executor;
    let config = load("runs");
    let kinds: Vec<(&str, &Executor)> = config
        .run_kinds
        .as_ref()
        .expect("declared kinds")
        .iter()
        .map(|k| (k.name.as_str(), &k.executor))
        .collect();
    assert_eq!(
        kinds,
        [
            ("index", &Executor::External),
            (
                "demo",
                &Executor::Demo {
                    items: 3,
                    item: Duration::from_millis(50)
                }
            ),
            (
                "crawl",
                &Executor::Http {
                    url: "http://worker:8080/runs".into(),
                    deadline: Duration::from_secs(60)
                }
            ),
            (
                "crawl-slow",
                &Executor::Http {
                    url: "https://worker.internal/runs".into(),
                    deadline: Duration::from_secs(600)
                }
            ),
        ]
    );
    assert!(config.run_kind("unknown").is_none());
    // Without a `runs:` section every kind is external.
    let open = load("tycostream_example");
    assert_eq!(open.run_kinds, None);
    assert_eq!(
        open.run_kind("anything").map(|k| k.executor),
        Some(Executor::External)
    );
}

#[test]
fn permissions_and_api_keys_resolve() {
    use viewcast::config::{Kinds, Scope, TriggerAction};
    let config = load("permissions");
    let trades = config.source("trades").unwrap();
    let user = config.role("user").unwrap();
    let select = user.source("trades").unwrap().select.as_ref().unwrap();
    // Columns in the source's order, whatever the order in the list.
    assert_eq!(select.columns, [0, 2, 3, 4]);
    assert_eq!(select.limit, Some(50));
    assert!(user.source("trades").unwrap().triggers.is_empty());
    assert_eq!(user.runs.start, Kinds::Only(vec!["import".into()]));
    assert_eq!(
        (user.runs.read, user.runs.cancel, user.runs.append),
        (Scope::Own, Scope::Own, Scope::None)
    );
    let desk = config.role("desk").unwrap();
    let desk_trades = desk.source("trades").unwrap();
    assert_eq!(
        desk_trades.select.as_ref().unwrap().columns,
        [0, 1, 2, 3, 4, 5]
    );
    assert!(desk_trades.triggers.is_empty());
    let ops = config.role("ops").unwrap().source("trades").unwrap();
    assert!(ops.may(TriggerAction::Read));
    assert!(!ops.may(TriggerAction::Create));
    assert_eq!(ops.select.as_ref().unwrap().filter, None);
    assert_eq!(desk.runs.start, Kinds::All);
    assert!(config.role("nobody").is_none());

    let [key] = config.api_keys.as_slice() else {
        panic!("one API key: {:?}", config.api_keys)
    };
    assert_eq!(key.role, "desk");
    assert_eq!(key.sha256[..2], [0x2c, 0xf2]);
    assert_eq!(key.variables["x-hasura-user-id"], "exporter");

    // Session variables are substituted and coerced to the column's type.
    let vars = |name: &str| key.variables.get(name).cloned();
    let filter = desk_trades
        .select
        .as_ref()
        .unwrap()
        .row_filter(trades, &vars)
        .unwrap()
        .unwrap();
    assert_eq!(
        filter.into_json().unwrap(),
        serde_json::json!({"_or": [{"symbol": {"_in": ["AAPL", "MSFT"]}}, {"side": {"_eq": "buy"}}]})
    );
    let user_filter = |id: &str| {
        select.row_filter(trades, &|name| {
            (name == "x-hasura-user-id").then(|| id.to_owned())
        })
    };
    assert_eq!(
        user_filter("42").unwrap().unwrap().into_json().unwrap(),
        serde_json::json!({"account_id": {"_eq": 42}})
    );
    assert_eq!(
        user_filter("abc").unwrap_err().to_string(),
        "session variable x-hasura-user-id is \"abc\", not a value of column account_id (Integer)"
    );
    assert_eq!(
        select
            .row_filter(trades, &|_| None)
            .unwrap_err()
            .to_string(),
        "the session has no x-hasura-user-id, which this role's row filter on trades needs"
    );
}
