//! The real JavaScript clients against the server: graphql-ws, Apollo Client (`GraphQLWsLink`),
//! urql (`subscriptionExchange`), subscriptions-transport-ws, and GraphiQL as the server serves it,
//! in headless Chromium (`graphiql.test.js`; needs Debian's `chromium`). This test starts PostgreSQL
//! and the server with `tests/clients/schema.yaml`, then runs `node --test` in `tests/clients`
//! (the client tests are `tests/clients/*.test.js`) and asserts that every test passed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::TestDb;

/// Node's whole run; each client test has its own, shorter deadlines.
const NODE_DEADLINE: Duration = Duration::from_secs(240);

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_graphql_clients_subscribe_and_query() {
    let dir = clients_dir();
    assert!(
        dir.join("node_modules").is_dir(),
        "{}/node_modules is missing: run `npm ci --prefix tests/clients` first \
         (scripts/test does), with Node 20 and npm",
        dir.display()
    );
    let config =
        viewcast::config::load(&dir.join("schema.yaml")).expect("tests/clients/schema.yaml");

    let db = TestDb::new().await;
    let sql = db.client().await;
    // Every source has the same columns; the client tests write the rows.
    for source in &config.sources {
        sql.batch_execute(&format!(
            "CREATE TABLE {} (id integer PRIMARY KEY, name text, score integer, active boolean, rank text)",
            source.name
        ))
        .await
        .expect("create table");
    }
    let server = common::start_server_with_config(&db, config).await;
    let addr = server.addr();

    let started = Instant::now();
    // Output goes straight to this process's stdout/stderr, so it shows as the tests run. The
    // files use one table each and run in parallel.
    let mut node = tokio::process::Command::new("node")
        .args(["--test", "--test-concurrency=5", "--test-reporter=spec"])
        .current_dir(&dir)
        .env("VIEWCAST_HTTP", format!("http://{addr}/graphql"))
        .env("VIEWCAST_WS", format!("ws://{addr}/graphql"))
        .env("DATABASE_URL", &db.url)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("run `node` (Node 20 must be on PATH)");
    let status = tokio::time::timeout(NODE_DEADLINE, node.wait())
        .await
        .unwrap_or_else(|_| panic!("node --test did not finish within {NODE_DEADLINE:?}"))
        .expect("wait for node");
    eprintln!("node --test finished in {:?}", started.elapsed());

    server.shutdown().await;
    db.stop().await;
    assert!(
        status.success(),
        "the client tests failed ({status}); their output is above"
    );
}
