//! The example worker (`examples/index-worker.rs`, compiled in here as it is) driven by the
//! server's `http` executor: it indexes a directory and reports Cloning → Parsing file X of
//! Y → Indexing → Complete, or FAILED with the reason for a path that is not a directory.

mod common;
#[path = "../examples/index-worker.rs"]
#[allow(dead_code)]
mod index_worker;

use common::graphql;
use common::runs::{SCHEMA, items_db, run_when_ended};
use serde_json::{Value, json};

async fn run_to_end(addr: std::net::SocketAddr, path: &str) -> Value {
    let started = graphql(
        addr,
        "mutation($path: String!) { startRun(kind: \"index\", input: {path: $path}) { id } }",
        json!({"path": path}),
    )
    .await;
    let id = started["data"]["startRun"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let selection =
        "status terminalMessage events(limit: 1000) { seq type stage message counters data }";
    run_when_ended(addr, &id, selection).await
}

#[tokio::test]
async fn the_example_worker_indexes_a_directory_and_fails_clearly_on_a_bad_path() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let worker = listener.local_addr().expect("addr");
    tokio::spawn(index_worker::serve(listener));

    let db = items_db(false).await;
    let yaml =
        format!("{SCHEMA}runs:\n  index:\n    executor: http\n    url: http://{worker}/runs\n");
    let config = viewcast::config::load_str(std::path::Path::new("t.yaml"), &yaml).expect("config");
    // The worker listens on loopback.
    let server =
        common::start_server_with_options(&db, config, |o| o.allow_private_workers = true).await;
    let addr = server.addr();

    let repo = std::env::temp_dir().join(format!("viewcast-index-{}", rand::random::<u32>()));
    std::fs::create_dir_all(repo.join("src")).expect("dirs");
    std::fs::create_dir_all(repo.join(".git")).expect("dirs");
    std::fs::write(repo.join("README.md"), "viewcast viewcast streams\n").expect("file");
    std::fs::write(
        repo.join("src/main.rs"),
        "fn main() {\n    println!(\"viewcast\");\n}\n",
    )
    .expect("file");
    std::fs::write(repo.join(".git/HEAD"), "ref: refs/heads/main\n").expect("file");

    let run = run_to_end(addr, repo.to_str().expect("path")).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    let events = run["events"].as_array().expect("events");
    let steps: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["stage"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("DISPATCHED", "Dispatch"),
            ("STARTED", "Cloning"),
            ("PROGRESS", "Parsing"),
            ("PROGRESS", "Parsing"),
            ("PROGRESS", "Indexing"),
            ("COMPLETED", "Complete"),
        ]
    );
    assert_eq!(events[2]["message"], "file 1 of 2: README.md");
    assert_eq!(
        events[3]["counters"],
        json!({"files_done": 1, "files_total": 2})
    );
    let summary = &events[5]["data"];
    assert_eq!(summary["files"], 2, ".git is left out: {summary}");
    assert_eq!(summary["lines"], 4);
    assert_eq!(summary["top_terms"][0], json!(["viewcast", 3]));

    let missing = run_to_end(addr, "/no/such/directory").await;
    assert_eq!(missing["status"], "FAILED");
    let message = missing["terminalMessage"].as_str().expect("message");
    assert!(
        message.contains("cannot read /no/such/directory"),
        "{message}"
    );
    let _ = std::fs::remove_dir_all(&repo);
    server.shutdown().await;
    db.stop().await;
}
