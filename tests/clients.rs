//! The real JavaScript clients against the server: graphql-ws, Apollo Client (`GraphQLWsLink`),
//! urql (`subscriptionExchange`), subscriptions-transport-ws, and GraphiQL as the server serves it,
//! in headless Chromium (`graphiql.test.js`; needs Debian's `chromium`). This test starts PostgreSQL
//! and the server with `tests/clients/schema.yaml`, then runs `node --test` in `tests/clients`
//! (the client tests are `tests/clients/*.test.js`) and asserts that every test passed. A
//! second server on the same database has auth on (a JWT secret, an unauthenticated role and
//! `permissions:`) and a history of 8 changes, for the console's credential and RESET tests;
//! its token is signed here.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::TestDb;

/// The second server's roles: a request without credentials is `guest`, which sees two columns
/// of `items_console`; the token is an `analyst`'s, which sees the rows scoring 60 or more.
const PERMISSIONS: &str = "
permissions:
  guest:
    sources:
      items_console:
        select: { columns: [id, name] }
  analyst:
    sources:
      items_console:
        select:
          filter: { score: { _gte: 60 } }
          columns: '*'
";
const JWT_SECRET: &str = "the console test's secret, thirty-two bytes or more";

/// An `analyst`'s token, valid for ten minutes.
fn analyst_token() -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    let claims = serde_json::json!({
        "sub": "ana",
        "exp": exp,
        (viewcast::auth::HASURA_NAMESPACE): {
            "x-hasura-allowed-roles": ["analyst"],
            "x-hasura-default-role": "analyst",
            "x-hasura-user-id": "ana",
        },
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("token")
}

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
    let yaml = std::fs::read_to_string(dir.join("schema.yaml")).expect("tests/clients/schema.yaml");
    let config = viewcast::config::load_str(&dir.join("schema.yaml"), &yaml).expect("valid");
    let guarded = viewcast::config::load_str(
        Path::new("tests/clients/schema.yaml + permissions"),
        &format!("{yaml}{PERMISSIONS}"),
    )
    .expect("valid with permissions");

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
    // The console test's webhook receiver listens on loopback.
    let server = common::start_server_with_options(&db, config, |options| {
        options.triggers.allow_private_targets = true;
    })
    .await;
    let addr = server.addr();
    let with_auth = common::start_server_with_options(&db, guarded, |options| {
        // A short history, so that the console test can outlive a cursor.
        options.hub_limits.max_changes = 8;
        options.hub_limits.max_batches = 8;
        options.auth = viewcast::auth::AuthSettings {
            jwt: Some(viewcast::auth::JwtSettings {
                key: viewcast::auth::KeySource::Secret(JWT_SECRET.into()),
                checks: viewcast::auth::Checks {
                    issuer: None,
                    audience: Vec::new(),
                    leeway: Duration::from_secs(5),
                },
                claims: viewcast::auth::ClaimsSource::default(),
            }),
            unauthenticated_role: Some("guest".into()),
            ..viewcast::auth::AuthSettings::default()
        };
    })
    .await;

    let started = Instant::now();
    // Output goes straight to this process's stdout/stderr, so it shows as the tests run. The
    // files use one table each and run in parallel.
    let mut node = tokio::process::Command::new("node")
        .args(["--test", "--test-concurrency=5", "--test-reporter=spec"])
        .current_dir(&dir)
        .env("VIEWCAST_HTTP", format!("http://{addr}/graphql"))
        .env("VIEWCAST_WS", format!("ws://{addr}/graphql"))
        .env("DATABASE_URL", &db.url)
        .env(
            "VIEWCAST_AUTH_HTTP",
            format!("http://{}/graphql", with_auth.addr()),
        )
        .env("VIEWCAST_AUTH_TOKEN", analyst_token())
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
    with_auth.shutdown().await;
    db.stop().await;
    assert!(
        status.success(),
        "the client tests failed ({status}); their output is above"
    );
}
