//! What the server shows never holds a secret: database passwords (in the URLs of all three
//! backends and the store) appear in no log line, `/ready`, `/metrics`, GraphQL error, nor in
//! the output of `viewcast check` and `viewcast introspect`, whatever fails; webhook URLs
//! (whose path is often the credential) show only scheme and host in reads and errors.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestDb, eventually, http_get};
use serde_json::{Value, json};

const PASSWORD: &str = "Pw-9f83kq-never-shown";

const SCHEMA: &str = "\
sources:
  present:
    backend: postgres
    primary_key: id
    columns:
      id: Integer
  missing:
    backend: postgres
    table: no_such_table
    primary_key: id
    columns:
      id: Integer
  mz:
    backend: materialize
    primary_key: id
    columns:
      id: Integer
  rw:
    backend: risingwave
    primary_key: id
    columns:
      id: Integer
";

/// The password in a database URL for `db`'s cluster (trust authentication: it is accepted
/// and never checked, so every URL below connects or fails for another reason).
fn with_password(db: &TestDb, query: &str) -> String {
    let port = db.cluster.as_ref().expect("private cluster").port();
    format!("postgres://postgres:{PASSWORD}@127.0.0.1:{port}/postgres{query}")
}

fn assert_clean(what: &str, text: &str) {
    assert!(
        !text.contains(PASSWORD),
        "{what} shows the password:\n{text}"
    );
}

#[tokio::test]
async fn database_passwords_appear_in_no_log_ready_metrics_error_or_command_output() {
    let db = TestDb::private().await;
    db.client()
        .await
        .batch_execute("CREATE TABLE present (id integer PRIMARY KEY)")
        .await
        .expect("table");
    let scratch = common::binary::Scratch::new();
    let config = scratch.0.join("schema.yaml");
    std::fs::write(&config, SCHEMA).expect("config");
    let log_path = scratch.0.join("server.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("addr")
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_viewcast"))
        .args(["serve", "--config", config.to_str().expect("path")])
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--apply-setup", "--log", "debug"])
        .env("DATABASE_URL", with_password(&db, ""))
        // Nothing listens on port 1: the Materialize feed fails to connect, again and again.
        .env(
            "MATERIALIZE_URL",
            format!("postgres://materialize:{PASSWORD}@127.0.0.1:1/materialize"),
        )
        // The cluster offers no TLS: `require` fails.
        .env("RISINGWAVE_URL", with_password(&db, "?sslmode=require"))
        .env_remove("VIEWCAST_STORE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log file"))
        .spawn()
        .expect("viewcast serve");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    // Every failing source has said why.
    let (_, ready) = eventually(
        || async { http_get(addr, "/ready").await.unwrap_or((0, String::new())) },
        |(_, body)| {
            let body: Value = serde_json::from_str(body).unwrap_or_default();
            ["missing", "mz", "rw"]
                .iter()
                .all(|s| body["sources"][s]["reason"].is_string())
        },
    )
    .await;
    assert_clean("/ready", &ready);
    let (_, metrics) = http_get(addr, "/metrics").await.expect("/metrics");
    assert_clean("/metrics", &metrics);
    for query in [
        "{ missing { id } }",
        "{ mz { id } }",
        "{ rw { id } }",
        "subscription { rw { operation } }",
    ] {
        let response = common::graphql(addr, query, json!({})).await;
        assert!(!response["errors"].is_null(), "{response}");
        assert_clean("a GraphQL error", &response.to_string());
    }
    let started = Instant::now();
    // SIGTERM: the shutdown's logs too.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).expect("pid"),
        rustix::process::Signal::TERM,
    )
    .expect("SIGTERM");
    while child.try_wait().expect("wait").is_none() {
        assert!(
            started.elapsed() < common::DEADLINE,
            "viewcast did not stop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(
        log.contains("materialize"),
        "the log has the failures:\n{log}"
    );
    assert_clean("the server's log", &log);

    commands_show_no_password(&db, &config);
    db.stop().await;
}

/// `viewcast check` (with a password in `DATABASE_URL`) and `viewcast introspect` (against URLs
/// that fail in different ways) print no password.
fn commands_show_no_password(db: &TestDb, config: &std::path::Path) {
    for args in [
        vec!["check", "--config", config.to_str().expect("path")],
        vec![
            "check",
            "--config",
            config.to_str().expect("path"),
            "--setup-sql",
        ],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_viewcast"))
            .args(&args)
            .env("DATABASE_URL", with_password(db, ""))
            .output()
            .expect("viewcast check");
        assert_clean("viewcast check", &String::from_utf8_lossy(&output.stdout));
        assert_clean("viewcast check", &String::from_utf8_lossy(&output.stderr));
    }
    for url in [
        format!("postgres://postgres:{PASSWORD}@127.0.0.1:1/postgres"),
        with_password(db, "?sslmode=verify-full"),
        with_password(db, "?sslmode=require"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_viewcast"))
            .args([
                "introspect",
                "--backend",
                "postgres",
                "--url",
                &url,
                "present",
            ])
            .output()
            .expect("viewcast introspect");
        assert!(!output.status.success());
        assert_clean(
            "viewcast introspect",
            &String::from_utf8_lossy(&output.stderr),
        );
    }
}

#[tokio::test]
async fn webhook_urls_show_scheme_and_host_only_in_reads_and_errors() {
    let db = TestDb::new().await;
    db.client()
        .await
        .batch_execute("CREATE TABLE present (id integer PRIMARY KEY)")
        .await
        .expect("table");
    let yaml = "backend: postgres\nsources:\n  present:\n    primary_key: id\n    columns:\n      id: Integer\n";
    let config = viewcast::config::load_str(std::path::Path::new("t.yaml"), yaml).expect("config");
    let server = common::start_server_with_options(&db, config, |options| {
        options.triggers.allow_private_targets = true;
    })
    .await;
    let addr = server.addr();
    // Port 1 refuses connections: every attempt fails, with an error to read.
    let secret_url = "http://user:pw@127.0.0.1:1/services/T000/B000/XXXXsecretXXXX?token=abc";
    let created = common::graphql(
        addr,
        "mutation($input: presentTriggerInput!) { create_present_trigger(input: $input) { webhook } }",
        json!({ "input": {
            "name": "slack", "webhook": secret_url, "fire": { "id": { "_gte": 0 } },
            "retry": { "attempts": 1 },
        } }),
    )
    .await;
    assert_eq!(
        created["data"]["create_present_trigger"]["webhook"], "http://127.0.0.1:1/…",
        "{created}"
    );
    db.client()
        .await
        .batch_execute("INSERT INTO present VALUES (1)")
        .await
        .expect("insert");
    let dead = eventually(
        || {
            common::graphql(
                addr,
                "{ present_triggers { webhook } present_dead_letters(trigger: \"slack\") { last_error recent_attempts { error } } }",
                json!({}),
            )
        },
        |r| {
            r["data"]["present_dead_letters"]
                .as_array()
                .is_some_and(|d| !d.is_empty())
        },
    )
    .await;
    let text = dead.to_string();
    for secret in ["XXXXsecretXXXX", "token=abc", "user:pw", "/services"] {
        assert!(!text.contains(secret), "{secret} shows in {text}");
    }
    assert!(text.contains("cannot connect"), "{text}");
    server.shutdown().await;
    db.stop().await;
}
