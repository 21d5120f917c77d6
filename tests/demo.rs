//! `viewcast demo` as a new user meets it: auth is on, the banner prints a token for each of
//! two roles and the admin secret, and each sees what the demo's `permissions:` grant it —
//! over HTTP, and over a WebSocket with the header line pasted into `connection_init` as
//! GraphiQL sends it.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt as _;

use common::{Ws, http_request};

/// The credentials the banner printed.
struct Banner {
    trader: String,
    analyst: String,
    admin: String,
}

/// Reads the banner up to its last line and picks out the credentials.
async fn read_banner(stdout: tokio::process::ChildStdout) -> Banner {
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut bearers = Vec::new();
    let mut admin = None;
    let quoted_after = |line: &str, key: &str| {
        let rest = &line[line.find(key)? + key.len()..];
        Some(rest[..rest.find('"')?].to_owned())
    };
    loop {
        let line = lines
            .next_line()
            .await
            .expect("stdout")
            .expect("the banner ends with Ctrl-C stops everything.");
        if let Some(token) = quoted_after(&line, r#""Authorization": "Bearer "#) {
            bearers.push(token);
        }
        if let Some(secret) = quoted_after(&line, r#""x-hasura-admin-secret": ""#) {
            admin = Some(secret);
        }
        if line.contains("Ctrl-C stops everything.") {
            break;
        }
    }
    let [trader, analyst] = <[String; 2]>::try_from(bearers).expect("two tokens");
    Banner {
        trader,
        analyst,
        admin: admin.expect("the admin secret"),
    }
}

/// POSTs `query` with one header line as the banner prints it (or none).
async fn query(addr: SocketAddr, header: Option<(&str, &str)>, query: &str) -> Value {
    let body = json!({ "query": query }).to_string();
    let mut headers = vec![("Content-Type", "application/json")];
    headers.extend(header);
    let (status, text) = http_request(addr, "POST", "/graphql", Some(&body), &headers)
        .await
        .expect("POST /graphql");
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).expect("JSON")
}

fn symbols(response: &Value, field: &str) -> BTreeSet<String> {
    response["data"][field]
        .as_array()
        .unwrap_or_else(|| panic!("rows: {response}"))
        .iter()
        .map(|row| row["symbol"].as_str().expect("symbol").to_owned())
        .collect()
}

fn code(response: &Value) -> &str {
    response["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("an error: {response}"))
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn the_demo_prints_a_token_per_role_and_each_sees_its_own_rows() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut demo = tokio::process::Command::new(env!("CARGO_BIN_EXE_viewcast"))
        .args(["demo", "--port", &port.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("viewcast demo starts");
    let stdout = demo.stdout.take().expect("stdout");
    let banner = tokio::time::timeout(std::time::Duration::from_secs(120), read_banner(stdout))
        .await
        .expect("the banner within 2 minutes");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    common::wait_ready(addr).await;
    let trader_header = format!("Bearer {}", banner.trader);
    let trader = Some(("Authorization", trader_header.as_str()));
    let analyst_header = format!("Bearer {}", banner.analyst);
    let analyst = Some(("Authorization", analyst_header.as_str()));
    let admin = Some(("x-hasura-admin-secret", banner.admin.as_str()));
    let all = set(&["AAPL", "AMZN", "GOOG", "MSFT", "NVDA", "TSLA"]);
    let own = set(&["AAPL", "MSFT"]);

    // Without a token: the guest role, the public prices only.
    let prices = query(addr, None, "{ instruments { symbol price } }").await;
    assert_eq!(symbols(&prices, "instruments"), all);
    let refused = query(addr, None, "{ trades { id } }").await;
    assert_eq!(code(&refused), "GRAPHQL_VALIDATION_FAILED", "{refused}");

    // The trader: positions and trades of her symbols only.
    let positions = query(addr, trader, "{ positions { symbol } }").await;
    assert_eq!(symbols(&positions, "positions"), own);
    let hers = common::eventually(
        || query(addr, trader, "{ trades { symbol price } }"),
        |r| !symbols(r, "trades").is_empty(),
    )
    .await;
    assert!(symbols(&hers, "trades").is_subset(&own), "{hers}");

    // The analyst: the large trades of every symbol, but no prices.
    let large = common::eventually(
        || query(addr, analyst, "{ trades { symbol quantity } }"),
        |r| !symbols(r, "trades").is_subset(&own),
    )
    .await;
    for trade in large["data"]["trades"].as_array().expect("trades") {
        assert!(
            trade["quantity"].as_i64().expect("quantity") >= 500,
            "{trade}"
        );
    }
    let refused = query(addr, analyst, "{ trades { price } }").await;
    assert_eq!(code(&refused), "GRAPHQL_VALIDATION_FAILED", "{refused}");
    let refused = query(addr, analyst, "{ positions { symbol } }").await;
    assert_eq!(code(&refused), "GRAPHQL_VALIDATION_FAILED", "{refused}");

    // The admin: everything.
    let positions = query(addr, admin, "{ positions { symbol } }").await;
    assert_eq!(symbols(&positions, "positions"), all);

    // A subscription with the trader's header line in `connection_init`, as GraphiQL sends
    // the Headers tab: a snapshot of her positions only.
    let mut ws = Ws::connect_with(
        addr,
        "graphql-transport-ws",
        json!({ "Authorization": trader_header }),
    )
    .await;
    ws.subscribe(
        "p",
        "subscription { positions(snapshot_end: true) { operation data { symbol } } }",
    )
    .await;
    let mut seen = BTreeSet::new();
    loop {
        let payload = ws.next_payload("p").await;
        let update = &payload["data"]["positions"];
        if update["operation"] == "SNAPSHOT_END" {
            break;
        }
        seen.insert(
            update["data"]["symbol"]
                .as_str()
                .expect("symbol")
                .to_owned(),
        );
    }
    assert_eq!(seen, own);

    // Ctrl-C (SIGTERM here) stops everything, and the demo exits cleanly.
    let pid = demo.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::time::timeout(std::time::Duration::from_secs(60), demo.wait())
        .await
        .expect("the demo stops within a minute")
        .expect("exit status");
    assert!(exit.success(), "{exit}");
}
