//! Golden tests: the GraphQL SDL generated for each valid configuration.

use std::path::Path;

fn sdl(case: &str) -> String {
    let path = format!("tests/fixtures/valid/{case}/schema.yaml");
    let config = viewcast::config::load(Path::new(&path)).expect("valid fixture");
    viewcast::schema::build(
        &config,
        viewcast::schema::Services::default(),
        &viewcast::limits::GraphqlLimits::default(),
    )
    .expect("schema builds")
    .sdl()
}

#[test]
fn tycostream_example() {
    let sdl = sdl("tycostream_example");
    // tycostream's names, which its clients depend on.
    for expected in [
        "type live_pnlUpdate {",
        "operation: RowOperation!",
        "data: live_pnl",
        "fields: [String!]!",
        "input live_pnlExpression {",
        "_and: [live_pnlExpression!]",
        "): live_pnlUpdate!",
        "input sideComparison {",
    ] {
        assert!(sdl.contains(expected), "missing {expected:?} in\n{sdl}");
    }
    insta::assert_snapshot!(sdl);
}

#[test]
fn composite_key() {
    insta::assert_snapshot!(sdl("composite_key"));
}

#[test]
fn every_type() {
    insta::assert_snapshot!(sdl("every_type"));
}

/// Every type the schema defines is either generated from the configuration or one of the
/// names the configuration loader reserves, so a source can never collide with viewcast's own.
#[test]
fn every_own_type_is_reserved() {
    use viewcast::config::names;
    let path = Path::new("tests/fixtures/valid/every_type/schema.yaml");
    let config = viewcast::config::load(path).expect("valid fixture");
    let sdl = sdl("every_type");
    let mut generated: Vec<String> = Vec::new();
    for source in &config.sources {
        generated.extend(names::source_type_names(&source.name));
    }
    for def in &config.enums {
        generated.extend(names::enum_type_names(&def.name));
    }
    for line in sdl.lines() {
        let mut words = line.split_whitespace();
        let (Some(kind), Some(name)) = (words.next(), words.next()) else {
            continue;
        };
        if !["type", "input", "enum", "scalar"].contains(&kind) {
            continue;
        }
        assert!(
            generated.iter().any(|g| g == name) || names::GLOBAL_TYPE_NAMES.contains(&name),
            "{kind} {name} is neither generated from the configuration nor in GLOBAL_TYPE_NAMES"
        );
    }
}

/// The schema a role of the `permissions` fixture sees.
fn role_sdl(role: &str) -> String {
    let path = "tests/fixtures/valid/permissions/schema.yaml";
    let config = viewcast::config::load(Path::new(path)).expect("valid fixture");
    let grants = match role {
        "admin" => viewcast::auth::Grants::Admin,
        role => viewcast::auth::Grants::role(role, config.role(role)),
    };
    viewcast::schema::build_for(
        &config,
        &grants,
        viewcast::schema::Services::default(),
        &viewcast::limits::GraphqlLimits::default(),
    )
    .expect("schema builds")
    .sdl()
}

/// The body of `type`/`input` `name` in an SDL.
fn block<'a>(sdl: &'a str, kind: &str, name: &str) -> Option<&'a str> {
    let start = sdl.find(&format!("\n{kind} {name} {{"))?;
    let end = sdl[start..].find("\n}")?;
    Some(&sdl[start..start + end])
}

#[test]
fn each_role_sees_only_what_it_may_use() {
    let user = role_sdl("user");
    let trades = block(&user, "type", "trades").expect("trades type");
    let expression = block(&user, "input", "tradesExpression").expect("where type");
    for hidden in ["account_id", "secret_note"] {
        assert!(!trades.contains(hidden), "{hidden} in\n{trades}");
        assert!(!expression.contains(hidden), "{hidden} in\n{expression}");
        assert!(
            !block(&user, "input", "trades_order_by")
                .unwrap()
                .contains(hidden)
        );
    }
    for visible in ["id: Int!", "symbol: String", "side: side", "price: Float"] {
        assert!(trades.contains(visible), "{visible} missing in\n{trades}");
    }
    let mutation = block(&user, "type", "Mutation").expect("user may start runs");
    assert!(mutation.contains("startRun(") && mutation.contains("cancelRun("));
    assert!(!mutation.contains("appendRunEvents"), "{mutation}");
    assert!(
        !user.contains("trigger"),
        "no trigger API for user:\n{user}"
    );
    insta::assert_snapshot!(user);

    let ops = role_sdl("ops");
    let query = block(&ops, "type", "Query").unwrap();
    assert!(
        query.contains("trades_triggers") && query.contains("trades_dead_letters"),
        "{query}"
    );
    let mutation = block(&ops, "type", "Mutation");
    assert!(
        mutation.is_none(),
        "a read-only role has no mutations: {mutation:?}"
    );
    assert!(!ops.contains("run("), "ops has no runs grant");

    // A role without an entry: viewer, and nothing that names a source, an enum or a run.
    let nobody = role_sdl("nobody");
    let query = block(&nobody, "type", "Query").unwrap();
    // Outside the descriptions, one field.
    let fields: String = query.split("\"\"\"").step_by(2).collect();
    assert_eq!(fields.matches(':').count(), 1, "{query}");
    for absent in [
        "trades",
        "enum side",
        "type Mutation",
        "type Subscription",
        "Run",
    ] {
        assert!(!nobody.contains(absent), "{absent} in\n{nobody}");
    }
    // The admin's is the whole schema.
    let admin = role_sdl("admin");
    assert!(admin.contains("secret_note") && admin.contains("create_trades_trigger"));
}
