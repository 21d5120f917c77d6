//! TLS to every database: a private PostgreSQL cluster that accepts only TLS connections with
//! a client certificate (certificates made by the test), and the Materialize/RisingWave
//! stand-in (the project's test double) serving TLS. Live changes arrive under
//! `sslmode=verify-full`, over logical replication and the feeds; a wrong CA, a host name the
//! certificate does not list and `require` against a server without TLS each fail with a
//! message that says so, on `/ready`.

mod common;

use std::path::PathBuf;

use common::backend::{Backend, Kind};
use common::certs::{Ca, Files, Issued, server_config};
use common::{TestDb, Ws, eventually, http_get};
use serde_json::Value;
use viewcast::pgcluster::{ClusterOptions, ClusterTls, PgCluster};
use viewcast::server::{ServeOptions, Server};

const SCHEMA: &str = "backend: postgres\nsources:\n  items:\n    primary_key: id\n    columns:\n      id: Integer\n      name: String\n";

/// A cluster that takes only TLS connections presenting a client certificate of `ca`'s.
struct TlsDb {
    cluster: PgCluster,
    ca: Ca,
    files: Files,
    root: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl TlsDb {
    async fn start() -> TlsDb {
        let ca = Ca::new("viewcast test CA");
        // An address and a name, as managed databases' certificates have; not `localhost`.
        let server: Issued = ca.server(&["127.0.0.1", "db.viewcast.test"]);
        let client = ca.client("postgres");
        let cluster = PgCluster::start(ClusterOptions {
            tls: Some(ClusterTls {
                cert_pem: server.cert_pem,
                key_pem: server.key_pem,
                required: true,
                client_ca_pem: Some(ca.pem.clone()),
            }),
            ..ClusterOptions::default()
        })
        .await
        .expect("TLS cluster starts");
        let files = Files::new();
        let root = files.write("root.crt", &ca.pem);
        let client_cert = files.write("client.crt", &client.cert_pem);
        let client_key = files.write("client.key", &client.key_pem);
        TlsDb {
            cluster,
            ca,
            files,
            root,
            client_cert,
            client_key,
        }
    }

    /// A URL to `host` with `mode`, trusting `root`, presenting the client certificate.
    fn url(&self, host: &str, mode: &str, root: &std::path::Path) -> String {
        format!(
            "postgres://postgres@{host}:{}/postgres?sslmode={mode}&sslrootcert={}&sslcert={}&sslkey={}",
            self.cluster.port(),
            root.display(),
            self.client_cert.display(),
            self.client_key.display()
        )
    }

    /// A TLS cluster holding the `items` table of `SCHEMA`.
    async fn with_items() -> TlsDb {
        let db = TlsDb::start().await;
        db.sql()
            .await
            .batch_execute("CREATE TABLE items (id integer PRIMARY KEY, name text)")
            .await
            .expect("table");
        db
    }

    fn good_url(&self) -> String {
        self.url("127.0.0.1", "verify-full", &self.root)
    }

    async fn sql(&self) -> tokio_postgres::Client {
        let (client, connection) = viewcast::pgconn::connect(&self.good_url())
            .await
            .expect("connect over TLS");
        tokio::spawn(connection);
        client
    }
}

async fn serve(url: &str, configure: impl FnOnce(&mut ServeOptions)) -> Server {
    let config =
        viewcast::config::load_str(std::path::Path::new("test.yaml"), SCHEMA).expect("config");
    let mut options = ServeOptions {
        host: "127.0.0.1".into(),
        port: 0,
        database_url: Some(url.to_owned()),
        instance: format!("t{}", rand::random::<u32>()),
        apply_setup: true,
        ..ServeOptions::default()
    };
    configure(&mut options);
    Server::start(config, options).await.expect("server starts")
}

async fn ready(server: &Server) -> (u16, Value) {
    let (status, body) = http_get(server.addr(), "/ready").await.expect("/ready");
    (status, serde_json::from_str(&body).expect("JSON"))
}

/// Waits until `/ready` reports the source down for a reason containing `phrase`.
async fn down_because(server: &Server, phrase: &str) -> Value {
    let (status, body) = eventually(
        || ready(server),
        |(_, body)| {
            body["sources"]["items"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains(phrase))
        },
    )
    .await;
    assert_eq!(status, 503, "{body}");
    body
}

/// A subscriber to `items` whose snapshot has arrived.
async fn subscribed(server: &Server) -> Ws {
    let mut ws = Ws::connect(server.addr(), "graphql-transport-ws").await;
    ws.subscribe(
        "1",
        "subscription { items(snapshot_end: true) { operation data { id name } } }",
    )
    .await;
    let end = ws.next_payload("1").await;
    assert_eq!(end["data"]["items"]["operation"], "SNAPSHOT_END", "{end}");
    ws
}

#[tokio::test]
async fn live_changes_store_and_introspect_under_verify_full_with_a_client_certificate() {
    let db = TlsDb::with_items().await;
    let sql = db.sql().await;
    // The store (triggers and runs) is on the same database: ready means it connected too.
    let server = serve(&db.good_url(), |_| {}).await;
    common::wait_ready(server.addr()).await;
    let mut ws = subscribed(&server).await;
    sql.execute("INSERT INTO items VALUES (1, 'over tls')", &[])
        .await
        .expect("insert");
    let update = ws.next_payload("1").await;
    assert_eq!(update["data"]["items"]["operation"], "INSERT", "{update}");
    assert_eq!(update["data"]["items"]["data"]["name"], "over tls");
    // Every client connection, the walsender's included, is encrypted (the cluster refuses
    // others, and says so here).
    let rows = sql
        .query(
            "SELECT a.backend_type, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.client_addr IS NOT NULL",
            &[],
        )
        .await
        .expect("pg_stat_ssl");
    assert!(
        rows.iter()
            .any(|r| r.get::<_, String>(0) == "walsender" && r.get::<_, bool>(1)),
        "a TLS walsender"
    );
    assert!(rows.iter().all(|r| r.get::<_, bool>(1)), "only TLS clients");
    // A mutation reaches the store over TLS.
    let created = common::graphql(
        server.addr(),
        "mutation { startRun(kind: \"tls\") { id status } }",
        serde_json::json!({}),
    )
    .await;
    assert!(created["errors"].is_null(), "{created}");
    server.shutdown().await;

    let request = viewcast::introspect::Request {
        backend: Some(viewcast::config::Backend::Postgres),
        relations: vec!["items".into()],
        ..viewcast::introspect::Request::default()
    };
    let yaml = viewcast::introspect::introspect(&db.good_url(), &request)
        .await
        .expect("introspect over TLS");
    assert!(yaml.contains("items:"), "{yaml}");
    drop(db.files);
    db.cluster.stop().await.expect("stop");
}

#[tokio::test]
async fn tls_failures_say_what_failed_on_ready() {
    let db = TlsDb::with_items().await;
    let other = Ca::new("another CA");
    let other_root = db.files.write("other.crt", &other.pem);
    let cases = [
        (
            db.url("127.0.0.1", "verify-full", &other_root),
            "unknown CA",
        ),
        // The certificate names 127.0.0.1 and db.viewcast.test, not localhost.
        (
            db.url("localhost", "verify-full", &db.root),
            "host name mismatch",
        ),
        (
            format!(
                "postgres://postgres@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}",
                db.cluster.port(),
                db.root.display()
            ),
            "certificate",
        ),
    ];
    for (url, phrase) in cases {
        let server = serve(&url, |_| {}).await;
        let body = down_because(&server, phrase).await;
        assert_eq!(body["sources"]["items"]["permanent"], true, "{body}");
        // The store, on the same URL, says why too.
        let body = eventually(
            || ready(&server),
            |(_, body)| {
                body["store"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains(phrase))
            },
        )
        .await;
        assert_eq!(body.0, 503);
        server.shutdown().await;
    }
    // verify-ca checks the chain, not the name: localhost works (the replication connection
    // checks the chain and the certificate's own name).
    let server = serve(&db.url("localhost", "verify-ca", &db.root), |_| {}).await;
    common::wait_ready(server.addr()).await;
    server.shutdown().await;
    drop(db.ca);
    db.cluster.stop().await.expect("stop");

    // `require` against a server without TLS.
    let plain = TestDb::private().await;
    let url = format!("{}?sslmode=require", plain.url);
    let server = serve(&url, |_| {}).await;
    down_because(&server, "server does not support TLS").await;
    server.shutdown().await;
    plain.stop().await;
}

/// The stand-in serving TLS with a certificate for `names`.
async fn standin_backend(kind: Kind, ca: &Ca, names: &[&str]) -> Backend {
    let options = viewcast_standin::Options {
        tls: Some(server_config(&ca.server(names))),
        ..viewcast_standin::Options::default()
    };
    Backend::start_with(kind, options).await
}

#[tokio::test]
async fn materialize_and_risingwave_feeds_run_over_tls() {
    let ca = Ca::new("stand-in CA");
    let files = Files::new();
    let root = files.write("root.crt", &ca.pem);
    for kind in [Kind::Materialize, Kind::RisingWave] {
        let backend = standin_backend(kind, &ca, &["127.0.0.1"]).await;
        backend
            .create_table("items", "CREATE TABLE items (id integer, name text)")
            .await;
        let url = format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            backend.url(),
            root.display()
        );
        let mut options = backend.options();
        match kind {
            Kind::Materialize => options.materialize_url = Some(url),
            _ => options.risingwave_url = Some(url),
        }
        let yaml = format!(
            "{}sources:\n  items:\n{}    primary_key: id\n    columns:\n      id: Integer\n      name: String\n",
            backend.yaml_backend(),
            backend.yaml_source_options()
        );
        let config =
            viewcast::config::load_str(std::path::Path::new("test.yaml"), &yaml).expect("config");
        let server = Server::start(config, options).await.expect("starts");
        common::wait_ready(server.addr()).await;
        let standin = backend.standin.as_ref().expect("stand-in");
        assert!(
            standin.tls_sessions() > 0,
            "{kind:?}: the feed connected over TLS"
        );
        let mut ws = subscribed(&server).await;
        backend
            .sql()
            .await
            .batch_execute("INSERT INTO items VALUES (7, 'tls')")
            .await
            .expect("insert");
        let update = ws.next_payload("1").await;
        assert_eq!(
            update["data"]["items"]["data"]["id"], 7,
            "{kind:?}: {update}"
        );
        server.shutdown().await;
    }
    // A certificate for another name: verify-full refuses it, and says why.
    let backend = standin_backend(Kind::Materialize, &ca, &["db.example.test"]).await;
    backend
        .create_table("items", "CREATE TABLE items (id integer, name text)")
        .await;
    let mut options = backend.options();
    options.materialize_url = Some(format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        backend.url(),
        root.display()
    ));
    let config = viewcast::config::load_str(
        std::path::Path::new("test.yaml"),
        "backend: materialize\nsources:\n  items:\n    primary_key: id\n    columns:\n      id: Integer\n      name: String\n",
    )
    .expect("config");
    let server = Server::start(config, options).await.expect("starts");
    down_because(&server, "host name mismatch").await;
    server.shutdown().await;
}

/// `viewcast serve` on `url` with `env`, until `/ready` answers 200 (or the deadline).
async fn binary_ready(url: &str, env: &[(&str, String)]) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("addr")
        .port();
    let files = Files::new();
    let config = files.write("schema.yaml", SCHEMA);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_viewcast"));
    command
        .args(["serve", "--config", config.to_str().expect("path")])
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--apply-setup",
        ])
        .env("DATABASE_URL", url)
        .env_remove("VIEWCAST_STORE_URL")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("viewcast serve");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let (status, body) = eventually(
        || async { http_get(addr, "/ready").await.unwrap_or((0, String::new())) },
        |(status, _)| *status == 200,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let _ = child.kill();
    let _ = child.wait();
}

/// The environment's settings (`PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`) apply to
/// a URL without its own, and `sslrootcert=system` reads the system's CA bundle
/// (`SSL_CERT_FILE` names it; here it holds the test's CA) and verifies the full name.
#[tokio::test]
async fn the_environment_and_the_system_bundle_give_the_tls_settings() {
    let db = TlsDb::with_items().await;
    let plain_url = format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        db.cluster.port()
    );
    let path = |p: &std::path::Path| p.display().to_string();
    binary_ready(
        &plain_url,
        &[
            ("PGSSLMODE", "verify-full".into()),
            ("PGSSLROOTCERT", path(&db.root)),
            ("PGSSLCERT", path(&db.client_cert)),
            ("PGSSLKEY", path(&db.client_key)),
        ],
    )
    .await;
    binary_ready(
        &format!(
            "{plain_url}?sslrootcert=system&sslcert={}&sslkey={}",
            path(&db.client_cert),
            path(&db.client_key)
        ),
        &[("SSL_CERT_FILE", path(&db.root))],
    )
    .await;
    db.cluster.stop().await.expect("stop");
}
