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
