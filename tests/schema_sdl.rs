//! Golden tests: the GraphQL SDL generated for each valid configuration.

use std::path::Path;

fn sdl(case: &str) -> String {
    let path = format!("tests/fixtures/valid/{case}/schema.yaml");
    let config = viewcast::config::load(Path::new(&path)).expect("valid fixture");
    viewcast::schema::build(
        &config,
        viewcast::schema::Services::default(),
        viewcast::schema::SchemaLimits::default(),
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
