//! `viewcast introspect` end to end: read a catalog (real PostgreSQL; the Materialize
//! stand-in), write schema.yaml, serve it, and see the rows arrive.

mod common;

use common::backend::{Backend, Kind};
use common::{TestDb, Ws};
use serde_json::json;

/// Runs the binary (without blocking the runtime the stand-in serves on); returns (exit code,
/// stdout, stderr).
async fn introspect(args: &[&str]) -> (i32, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_viewcast"))
        .arg("introspect")
        .args(args)
        .env_remove("MATERIALIZE_URL")
        .env_remove("DATABASE_URL")
        .output()
        .await
        .expect("run viewcast");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_postgres_catalog_becomes_a_schema_the_server_serves() {
    let db = TestDb::new().await;
    let sql = db.client().await;
    sql.batch_execute(
        "CREATE TABLE orders (region text, id bigint, \"Amount\" numeric(12,2), placed timestamptz, \
         tags text[], side text, PRIMARY KEY (region, id)); \
         INSERT INTO orders VALUES ('eu', 1, 10.50, '2026-01-02 03:04:05+00', '{a,b}', 'buy')",
    )
    .await
    .unwrap();
    let (code, yaml, err) = introspect(&[
        "--backend",
        "postgres",
        "--url",
        &db.url,
        "--enum",
        "side=buy,sell",
        "--enum-column",
        "orders.side=side",
        "orders",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(yaml.contains("    table: public.orders\n"), "{yaml}");
    assert!(
        yaml.contains("    primary_key: [region, id]\n"),
        "the catalog's key: {yaml}"
    );
    assert!(
        yaml.contains("      Amount: { type: Numeric, column: '\"Amount\"' }\n"),
        "{yaml}"
    );
    assert!(
        yaml.contains("      placed: Timestamp\n      tags: Array\n      side: side\n"),
        "{yaml}"
    );
    let config = viewcast::config::load_str(std::path::Path::new("introspected.yaml"), &yaml)
        .expect("the written schema loads");
    let source = config.source("orders").expect("orders");
    assert_eq!(source.primary_key, vec![0, 1]);

    let server = common::start_server_with_config(&db, config).await;
    let mut ws = Ws::connect(server.addr(), "graphql-transport-ws").await;
    ws.subscribe(
        "o",
        "subscription { orders { operation data { region id Amount side } } }",
    )
    .await;
    assert_eq!(
        ws.next_payload("o").await["data"]["orders"]["data"],
        json!({"region": "eu", "id": "1", "Amount": "10.50", "side": "buy"})
    );
    server.shutdown().await;
    db.stop().await;
}

#[tokio::test]
async fn a_materialize_view_needs_its_key_from_a_flag() {
    let backend = Backend::start(Kind::Materialize).await;
    backend
        .create_table(
            "pnl",
            "CREATE TABLE pnl (instrument_id integer, symbol text, pnl double precision)",
        )
        .await;
    backend
        .sql()
        .await
        .batch_execute("INSERT INTO pnl VALUES (7, 'AAPL', 1.5)")
        .await
        .unwrap();
    let url = backend.url();
    let (code, _, err) = introspect(&["--url", &url, "pnl"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("--primary-key pnl="), "{err}");

    let (code, _, err) = introspect(&["--url", &url, "nope", "--primary-key", "nope=id"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("relation nope was not found"), "{err}");

    let (code, yaml, err) =
        introspect(&["--url", &url, "--primary-key", "pnl=instrument_id", "pnl"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(yaml.starts_with("# Written by `viewcast introspect`"));
    assert!(yaml.contains("backend: materialize\n"), "{yaml}");
    assert!(
        yaml.contains("    view: public.pnl\n    primary_key: instrument_id\n"),
        "{yaml}"
    );
    let server = backend.server(&yaml).await;
    let mut ws = Ws::connect(server.addr(), "graphql-transport-ws").await;
    ws.subscribe(
        "p",
        "subscription { pnl { data { instrument_id symbol pnl } } }",
    )
    .await;
    assert_eq!(
        ws.next_payload("p").await["data"]["pnl"]["data"],
        json!({"instrument_id": 7, "symbol": "AAPL", "pnl": 1.5})
    );
    server.shutdown().await;
}
