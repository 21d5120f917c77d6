//! Authorization against a served schema: the attacks of a signed-in user on what its role
//! may not see or do. Row filters that a client's own `where` (or `_or`) tries to widen,
//! columns it may not see (selected, aliased, in a fragment, in a filter, in an order, through
//! `__type`), a role without a source, batches, subscriptions whose rows enter and leave the
//! row filter, updates of hidden columns, another user's runs, trigger administration by a
//! read-only role, a missing session variable, an API key acting as its user, and a token that expires mid-subscription over
//! WebSocket and graphql-sse. Every case checks the exact error, and that nothing leaked or
//! changed (the admin looks afterwards).

mod common;

use std::net::SocketAddr;
use std::time::SystemTime;

use common::{TestDb, Ws, http_request};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use viewcast::auth::{AuthSettings, Checks, ClaimsSource, JwtSettings, KeySource};
use viewcast::server::Server;

const SCHEMA: &str = r"
backend: postgres
runs:
  job: { executor: external }
  other: { executor: external }
sources:
  orders:
    primary_key: id
    columns:
      id: Integer
      owner: String
      item: String
      cost: Integer
      secret: String
permissions:
  user:
    sources:
      orders:
        select:
          filter: { owner: { _eq: X-Hasura-User-Id } }
          columns: [id, owner, item, cost]
          limit: 2
    runs: { start: [job], read: own, cancel: own }
  auditor:
    sources:
      orders:
        select: { columns: '*' }
        triggers: [read]
    runs: { read: all }
api_keys:
  reporting:
    sha256: 78d9fd933f3eb46bbb1ef2ff8313084b27a7b59ada3678fe103b0e11a1d17cc7   # of svc-key-for-bob
    role: user
    session: { x-hasura-user-id: bob }
";
/// The API key whose SHA-256 is in `SCHEMA`: a service acting as the user bob.
const BOB_KEY: &str = "svc-key-for-bob";
const SECRET: &str = "a shared secret of at least thirty-two bytes";
const ADMIN: &str = "the-admin-secret";

/// A token for `user` acting as `role`, valid for `ttl` seconds.
fn token(user: Option<&str>, role: &str, ttl: i64) -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut hasura = json!({
        "x-hasura-allowed-roles": ["user", "auditor", "guest"],
        "x-hasura-default-role": role,
    });
    if let Some(user) = user {
        hasura["x-hasura-user-id"] = user.into();
    }
    let claims = json!({ "sub": user, "exp": now + ttl, "https://hasura.io/jwt/claims": hasura });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

struct Fixture {
    db: TestDb,
    server: Server,
    sql: tokio_postgres::Client,
}

impl Fixture {
    async fn start() -> Fixture {
        let db = TestDb::new().await;
        let sql = db.client().await;
        sql.batch_execute(
            "CREATE TABLE orders (id integer PRIMARY KEY, owner text, item text, cost integer, secret text);
             INSERT INTO orders VALUES
               (1, 'alice', 'apple', 3, 's1'), (2, 'alice', 'pear', 4, 's2'),
               (3, 'alice', 'plum', 5, 's3'), (4, 'bob', 'fig', 6, 's4');",
        )
        .await
        .expect("table");
        let config =
            viewcast::config::load_str(std::path::Path::new("t.yaml"), SCHEMA).expect("config");
        let server = common::start_server_with_options(&db, config, |options| {
            options.triggers.allow_private_targets = true;
            options.auth = AuthSettings {
                jwt: Some(JwtSettings {
                    key: KeySource::Secret(SECRET.into()),
                    checks: Checks {
                        issuer: None,
                        audience: Vec::new(),
                        leeway: std::time::Duration::ZERO,
                    },
                    claims: ClaimsSource::default(),
                }),
                admin_secret: Some(ADMIN.into()),
                ..AuthSettings::default()
            };
        })
        .await;
        Fixture { db, server, sql }
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    async fn stop(self) {
        self.server.shutdown().await;
        self.db.stop().await;
    }
}

/// POSTs `body` (a request or a batch) as `who` (a token, or the admin): (status, JSON).
async fn post_as(addr: SocketAddr, who: &str, body: &Value) -> (u16, Value) {
    let credential = if who == ADMIN {
        ("x-hasura-admin-secret", who.to_owned())
    } else {
        ("Authorization", format!("Bearer {who}"))
    };
    let (status, text) = http_request(
        addr,
        "POST",
        "/graphql",
        Some(&body.to_string()),
        &[
            ("Content-Type", "application/json"),
            (credential.0, &credential.1),
        ],
    )
    .await
    .expect("POST");
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON: {text}")),
    )
}

async fn query_as(addr: SocketAddr, who: &str, query: &str) -> Value {
    post_as(addr, who, &json!({ "query": query })).await.1
}

/// A request to the runs endpoints with `token`: (status, body).
async fn rest(
    addr: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let bearer = format!("Bearer {token}");
    let headers = [
        ("Content-Type", "application/json"),
        ("Authorization", bearer.as_str()),
    ];
    http_request(addr, method, path, body, &headers)
        .await
        .expect("HTTP")
}

/// `query` (with `$ID` for the run's id) as `who`.
async fn on_run(addr: SocketAddr, who: &str, query: &str, id: &str) -> Value {
    query_as(addr, who, &query.replace("$ID", id)).await
}

fn code(response: &Value) -> &str {
    response["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("a coded error: {response}"))
}

/// The ids of `orders` in a query response.
fn ids(response: &Value) -> Vec<i64> {
    response["data"]["orders"]
        .as_array()
        .unwrap_or_else(|| panic!("rows: {response}"))
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect()
}

/// A refusal by validation: the error names the field, and no data at all comes back.
fn assert_invalid(response: &Value, mentions: &str) {
    assert_eq!(code(response), "GRAPHQL_VALIDATION_FAILED", "{response}");
    assert!(
        response["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains(mentions),
        "{response}"
    );
    assert!(response["data"].is_null(), "no data: {response}");
}

#[tokio::test]
async fn a_row_filter_cannot_be_widened_and_caps_rows() {
    let f = Fixture::start().await;
    let addr = f.addr();
    let alice = token(Some("alice"), "user", 300);
    let bob = token(Some("bob"), "user", 300);

    // The row filter applies, and the role's cap on rows (2) whatever `limit` asks.
    let all = query_as(
        addr,
        &alice,
        "{ orders(order_by: {id: asc}, limit: 100) { id owner } }",
    )
    .await;
    assert_eq!(ids(&all), [1, 2], "{all}");
    let response = query_as(addr, &bob, "{ orders { id owner item cost } }").await;
    assert_eq!(
        response["data"]["orders"],
        json!([{"id": 4, "owner": "bob", "item": "fig", "cost": 6}])
    );
    // A client's `where` narrows; it cannot widen, whatever its form.
    for widen in [
        r#"{owner: {_eq: "bob"}}"#,
        r#"{_or: [{owner: {_eq: "bob"}}, {id: {_gt: 0}}]}"#,
        r#"{_not: {owner: {_eq: "alice"}}}"#,
        "{owner: {_is_null: false}}",
    ] {
        let response = query_as(
            addr,
            &alice,
            &format!("{{ orders(where: {widen}) {{ id }} }}"),
        )
        .await;
        assert!(
            ids(&response).iter().all(|id| *id <= 3),
            "{widen}: {response}"
        );
        assert!(!ids(&response).contains(&4), "{widen}: {response}");
    }
    let narrowed = query_as(
        addr,
        &alice,
        r#"{ orders(where: {item: {_eq: "pear"}}) { id } }"#,
    )
    .await;
    assert_eq!(ids(&narrowed), [2]);
    // `viewer { sources }` lists what the session may read, counting the rows it sees.
    let sources = "{ viewer { sources { name status reason rows } } }";
    for (who, rows) in [(alice.as_str(), 3), (bob.as_str(), 1), (ADMIN, 4)] {
        let response = query_as(addr, who, sources).await;
        assert_eq!(
            response["data"]["viewer"]["sources"],
            json!([{"name": "orders", "status": "LIVE", "reason": null, "rows": rows}]),
            "{response}"
        );
    }
    let guest = token(Some("carol"), "guest", 300);
    let response = query_as(addr, &guest, sources).await;
    assert_eq!(
        response["data"]["viewer"]["sources"],
        json!([]),
        "{response}"
    );
    // A change shows in the source's rate for the next few seconds.
    f.sql
        .batch_execute("UPDATE orders SET cost = cost + 1 WHERE id = 3")
        .await
        .unwrap();
    common::eventually(
        || query_as(addr, &alice, "{ viewer { sources { changesPerSecond } } }"),
        |r| r["data"]["viewer"]["sources"][0]["changesPerSecond"].as_f64() > Some(0.0),
    )
    .await;
    // An API key acts with its role and session variables; an unknown one is refused.
    let response = query_as(addr, BOB_KEY, "{ orders { id } }").await;
    assert_eq!(ids(&response), [4], "{response}");
    let (status, response) = post_as(
        addr,
        "svc-key-for-eve",
        &json!({"query": "{ orders { id } }"}),
    )
    .await;
    assert_eq!(
        (status, code(&response)),
        (401, "UNAUTHENTICATED"),
        "{response}"
    );
    // A token without the variable the row filter needs: refused, nothing returned.
    let anonymous = token(None, "user", 300);
    let response = query_as(addr, &anonymous, "{ orders { id } }").await;
    assert_eq!(code(&response), "FORBIDDEN", "{response}");
    assert!(response["data"].is_null(), "{response}");
    f.stop().await;
}

#[tokio::test]
async fn hidden_columns_sources_and_operations_fail_validation_however_asked() {
    let f = Fixture::start().await;
    let addr = f.addr();
    let alice = token(Some("alice"), "user", 300);
    // A column the role may not see: every way of asking is a validation error with no data.
    for (query, mentions) in [
        ("{ orders { id secret } }", "secret"),
        ("{ orders { id s: secret } }", "secret"),
        (
            "{ orders { ...F } } fragment F on orders { secret }",
            "secret",
        ),
        ("{ orders { ... on orders { secret } } }", "secret"),
        (
            r#"{ orders(where: {secret: {_eq: "s1"}}) { id } }"#,
            "secret",
        ),
        ("{ orders(order_by: {secret: asc}) { id } }", "secret"),
        (
            r#"{ orders(where: {_or: [{secret: {_like: "s%"}}]}) { id } }"#,
            "secret",
        ),
        ("subscription { orders { data { secret } } }", "secret"),
        ("{ orders_triggers { name } }", "orders_triggers"),
        (
            "mutation { create_orders_trigger(input: {name: \"t\", webhook: \"http://127.0.0.1:9/\", fire: {}}) { name } }",
            "create_orders_trigger",
        ),
    ] {
        let (status, response) = post_as(addr, &alice, &json!({ "query": query })).await;
        assert_eq!(status, 200, "{response}");
        assert_invalid(&response, mentions);
    }
    // Introspection shows only what the role may use.
    let fields = query_as(
        addr,
        &alice,
        r#"{ __type(name: "orders") { fields { name } } }"#,
    )
    .await;
    assert_eq!(
        fields["data"]["__type"]["fields"],
        json!([{"name": "id"}, {"name": "owner"}, {"name": "item"}, {"name": "cost"}])
    );
    let schema = query_as(
        addr,
        &alice,
        "{ __schema { types { name } mutationType { fields { name } } } }",
    )
    .await;
    let text = schema.to_string();
    assert!(
        !text.contains("trigger") && !text.contains("appendRunEvents"),
        "{text}"
    );
    // A batch is no way around it: each operation is validated on its own.
    let (status, batch) = post_as(
        addr,
        &alice,
        &json!([{ "query": "{ orders { id } }" }, { "query": "{ orders { secret } }" }]),
    )
    .await;
    assert_eq!(status, 200, "{batch}");
    assert_eq!(ids(&batch[0]), [1, 2]);
    assert_invalid(&batch[1], "secret");

    // A role without the source (in the token's allowed roles, but no permissions).
    let guest = token(Some("carol"), "guest", 300);
    for query in [
        "{ orders { id } }",
        "{ o: orders { id } }",
        "subscription { orders { operation } }",
        "{ run(id: \"00000000-0000-0000-0000-000000000000\") { id } }",
    ] {
        assert_invalid(&query_as(addr, &guest, query).await, "");
    }
    let types = query_as(addr, &guest, "{ __schema { types { name } } }").await;
    assert!(!types.to_string().contains("orders"), "{types}");
    assert!(
        query_as(addr, &guest, r#"{ __type(name: "orders") { name } }"#).await["data"]["__type"]
            .is_null()
    );
    let viewer = query_as(addr, &guest, "{ viewer { role userId } }").await;
    assert_eq!(
        viewer["data"]["viewer"],
        json!({"role": "guest", "userId": "carol"})
    );

    f.stop().await;
}

/// A WebSocket connection initialised with a token of bob's, as a user.
async fn as_bob(addr: SocketAddr) -> Ws {
    let bob = token(Some("bob"), "user", 300);
    let payload = json!({ "Authorization": format!("Bearer {bob}") });
    Ws::connect_with(addr, "graphql-transport-ws", payload).await
}

/// The next payload of subscription `id` as its `orders` update.
async fn next_update(ws: &mut Ws) -> Value {
    let payload = ws.next_payload("1").await;
    assert!(payload["errors"].is_null(), "{payload}");
    payload["data"]["orders"].clone()
}

#[tokio::test]
async fn subscriptions_see_rows_enter_and_leave_the_row_filter_and_never_hidden_changes() {
    let f = Fixture::start().await;
    let addr = f.addr();
    let mut ws = as_bob(addr).await;
    // bob tries to widen his filter to alice's rows: his own row only.
    ws.subscribe(
        "1",
        r#"subscription { orders(where: {_or: [{owner: {_eq: "alice"}}, {id: {_gt: 0}}]}, snapshot_end: true) { operation fields data { id owner item } } }"#,
    )
    .await;
    assert_eq!(
        next_update(&mut ws).await,
        json!({"operation": "INSERT", "fields": ["id", "owner", "item", "cost"], "data": {"id": 4, "owner": "bob", "item": "fig"}})
    );
    assert_eq!(next_update(&mut ws).await["operation"], "SNAPSHOT_END");
    // Changes outside the filter, then of a hidden column only: nothing. The next change he
    // may see comes first, so nothing was sent before it.
    f.sql
        .batch_execute("INSERT INTO orders VALUES (5, 'alice', 'kiwi', 1, 's5')")
        .await
        .unwrap();
    f.sql
        .batch_execute("UPDATE orders SET secret = 'changed' WHERE id = 4")
        .await
        .unwrap();
    f.sql
        .batch_execute("UPDATE orders SET item = 'date' WHERE id = 4")
        .await
        .unwrap();
    assert_eq!(
        next_update(&mut ws).await,
        // An UPDATE carries the key and the changed columns.
        json!({"operation": "UPDATE", "fields": ["item"], "data": {"id": 4, "owner": null, "item": "date"}})
    );
    // A row given to him enters as an INSERT; his row given away leaves as a DELETE.
    f.sql
        .batch_execute("UPDATE orders SET owner = 'bob' WHERE id = 1")
        .await
        .unwrap();
    let entered = next_update(&mut ws).await;
    assert_eq!(
        (&entered["operation"], &entered["data"]["id"]),
        (&json!("INSERT"), &json!(1)),
        "{entered}"
    );
    f.sql
        .batch_execute("UPDATE orders SET owner = 'alice' WHERE id = 4")
        .await
        .unwrap();
    let left = next_update(&mut ws).await;
    assert_eq!(
        (&left["operation"], &left["data"]["id"]),
        (&json!("DELETE"), &json!(4)),
        "{left}"
    );
    // An update of a visible and a hidden column lists only the visible one.
    f.sql
        .batch_execute("UPDATE orders SET cost = 9, secret = 'x' WHERE id = 1")
        .await
        .unwrap();
    let both = next_update(&mut ws).await;
    assert_eq!(both["fields"], json!(["cost"]), "{both}");
    f.stop().await;
}

#[tokio::test]
async fn batched_subscriptions_keep_the_row_filter_and_never_show_hidden_columns() {
    let f = Fixture::start().await;
    let mut ws = as_bob(f.addr()).await;
    // A hidden column does not exist in the batch's updates either.
    ws.subscribe(
        "0",
        "subscription { orders_batches { updates { data { id secret } } } }",
    )
    .await;
    let refused = ws.recv_skipping_keepalives().await.unwrap();
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(
        refused["payload"][0]["extensions"]["code"], "GRAPHQL_VALIDATION_FAILED",
        "{refused}"
    );
    ws.subscribe(
        "1",
        r#"subscription { orders_batches(where: {_or: [{owner: {_eq: "alice"}}, {id: {_gt: 0}}]}, snapshot_end: true, max_ms: 0) { updates { operation fields data { id owner item } } } }"#,
    )
    .await;
    let window = |payload: Value| payload["data"]["orders_batches"]["updates"].clone();
    assert_eq!(
        window(ws.next_payload("1").await),
        json!([
            {"operation": "INSERT", "fields": ["id", "owner", "item", "cost"], "data": {"id": 4, "owner": "bob", "item": "fig"}},
            {"operation": "SNAPSHOT_END", "fields": [], "data": null}
        ])
    );
    // Another user's row, then a hidden column of his: nothing; the next window holds only
    // the change he may see.
    for statement in [
        "INSERT INTO orders VALUES (5, 'alice', 'kiwi', 1, 's5')",
        "UPDATE orders SET secret = 'changed' WHERE id = 4",
        "UPDATE orders SET item = 'date', secret = 'again' WHERE id = 4",
    ] {
        f.sql.batch_execute(statement).await.unwrap();
    }
    assert_eq!(
        window(ws.next_payload("1").await),
        json!([{"operation": "UPDATE", "fields": ["item"], "data": {"id": 4, "owner": null, "item": "date"}}])
    );
    f.stop().await;
}

#[tokio::test]
async fn a_permitted_subscription_ends_when_its_token_expires() {
    let f = Fixture::start().await;
    let addr = f.addr();
    let short = token(Some("alice"), "user", 3);
    // WebSocket: the data flows, then the connection closes with 4403.
    let mut ws = Ws::connect_with(
        addr,
        "graphql-transport-ws",
        json!({ "Authorization": format!("Bearer {short}") }),
    )
    .await;
    ws.subscribe("1", "subscription { orders { operation data { id } } }")
        .await;
    assert_eq!(next_update(&mut ws).await["operation"], "INSERT");
    // graphql-sse: the stream ends with UNAUTHENTICATED (read to its end).
    let body = json!({ "query": "subscription { orders { data { id } } }" }).to_string();
    let bearer = format!("Bearer {short}");
    let sse = tokio::spawn(async move {
        http_request(
            addr,
            "POST",
            "/graphql",
            Some(&body),
            &[
                ("Content-Type", "application/json"),
                ("Accept", "text/event-stream"),
                ("Authorization", &bearer),
            ],
        )
        .await
    });
    let closed = loop {
        match ws.recv().await {
            Ok(message) => assert_ne!(message["type"], "error", "{message}"),
            Err(closed) => break closed,
        }
    };
    assert_eq!(closed.0, 4403, "{closed:?}");
    let (status, text) = tokio::time::timeout(common::DEADLINE, sse)
        .await
        .expect("the SSE stream ends")
        .unwrap()
        .expect("SSE");
    assert_eq!(status, 200);
    assert!(text.contains("\"id\":1"), "data first: {text}");
    assert!(text.contains("UNAUTHENTICATED"), "{text}");
    f.stop().await;
}

#[tokio::test]
async fn a_users_runs_are_its_own() {
    let f = Fixture::start().await;
    let addr = f.addr();
    let alice = token(Some("alice"), "user", 300);
    let bob = token(Some("bob"), "user", 300);
    let started = query_as(
        addr,
        &alice,
        r#"mutation { startRun(kind: "job") { id createdBy } }"#,
    )
    .await;
    let id = started["data"]["startRun"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{started}"))
        .to_owned();
    assert_eq!(started["data"]["startRun"]["createdBy"], "alice");
    // Another kind than the role's: FORBIDDEN.
    let other = query_as(
        addr,
        &alice,
        r#"mutation { startRun(kind: "other") { id } }"#,
    )
    .await;
    assert_eq!(code(&other), "FORBIDDEN", "{other}");

    // bob: alice's run does not exist for him, over GraphQL and HTTP, and stays running.
    let seen = on_run(
        addr,
        &bob,
        r#"{ run(id: "$ID") { id } runs { edges { node { id } } } }"#,
        &id,
    )
    .await;
    assert_eq!(
        seen["data"],
        json!({"run": null, "runs": {"edges": []}}),
        "{seen}"
    );
    let events = on_run(addr, &bob, r#"{ runEvents(runId: "$ID") { seq } }"#, &id).await;
    assert_eq!(code(&events), "NOT_FOUND", "{events}");
    let cancel = on_run(
        addr,
        &bob,
        r#"mutation { cancelRun(runId: "$ID") { id } }"#,
        &id,
    )
    .await;
    assert_eq!(code(&cancel), "NOT_FOUND", "{cancel}");
    for (method, path, body) in [
        ("POST", format!("/runs/{id}/cancel"), Some("{}")),
        ("GET", format!("/runs/{id}"), None),
        ("GET", format!("/runs/{id}/events"), None),
        (
            "POST",
            format!("/runs/{id}/events"),
            Some(r#"{"events":[{"type":"PROGRESS"}]}"#),
        ),
    ] {
        let (status, text) = rest(addr, &bob, method, &path, body).await;
        assert_eq!(status, 404, "{method} {path}: {text}");
    }
    let (status, text) = rest(addr, &bob, "POST", "/runs", Some(r#"{"kind":"other"}"#)).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("FORBIDDEN"), "{text}");
    let admin = on_run(
        addr,
        ADMIN,
        r#"{ run(id: "$ID") { status lastSeq } runs { edges { node { id } } } }"#,
        &id,
    )
    .await;
    assert_eq!(
        admin["data"]["run"],
        json!({"status": "PENDING", "lastSeq": 0}),
        "{admin}"
    );
    assert_eq!(
        admin["data"]["runs"]["edges"].as_array().unwrap().len(),
        1,
        "{admin}"
    );

    f.stop().await;
}

#[tokio::test]
async fn an_auditor_reads_every_run_and_cancels_none() {
    let f = Fixture::start().await;
    let addr = f.addr();
    let alice = token(Some("alice"), "user", 300);
    let auditor = token(Some("dana"), "auditor", 300);
    let started = query_as(addr, &alice, r#"mutation { startRun(kind: "job") { id } }"#).await;
    let id = started["data"]["startRun"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{started}"))
        .to_owned();
    // The auditor reads every run but cannot cancel (no such mutation in its schema).
    let read = on_run(addr, &auditor, r#"{ run(id: "$ID") { createdBy } }"#, &id).await;
    assert_eq!(read["data"]["run"]["createdBy"], "alice", "{read}");
    assert_invalid(
        &on_run(
            addr,
            &auditor,
            r#"mutation { cancelRun(runId: "$ID") { id } }"#,
            &id,
        )
        .await,
        "",
    );
    let (status, text) = rest(
        addr,
        &auditor,
        "POST",
        &format!("/runs/{id}/cancel"),
        Some("{}"),
    )
    .await;
    assert_eq!(status, 403, "{text}");

    // alice cancels her own.
    let cancelled = on_run(
        addr,
        &alice,
        r#"mutation { cancelRun(runId: "$ID") { status } }"#,
        &id,
    )
    .await;
    assert_eq!(
        cancelled["data"]["cancelRun"]["status"], "CANCELLED",
        "{cancelled}"
    );

    f.stop().await;
}

#[tokio::test]
async fn a_read_only_role_reads_triggers_and_changes_none() {
    let f = Fixture::start().await;
    let addr = f.addr();
    let auditor = token(Some("dana"), "auditor", 300);
    // Triggers: the auditor reads them; creating, deleting or disabling is not in its schema,
    // and nothing changed.
    let created = query_as(
        addr,
        ADMIN,
        r#"mutation { create_orders_trigger(input: {name: "watch", webhook: "http://127.0.0.1:9/", fire: {cost: {_gt: 1000}}}) { name } }"#,
    )
    .await;
    assert_eq!(
        created["data"]["create_orders_trigger"]["name"], "watch",
        "{created}"
    );
    let listed = query_as(addr, &auditor, "{ orders_triggers { name status } }").await;
    let before = listed["data"]["orders_triggers"].clone();
    assert_eq!(before[0]["name"], "watch", "{listed}");
    for mutation in [
        r#"mutation { create_orders_trigger(input: {name: "t", webhook: "http://127.0.0.1:9/", fire: {}}) { name } }"#,
        r#"mutation { delete_orders_trigger(name: "watch") { name } }"#,
        r#"mutation { disable_orders_trigger(name: "watch") { name } }"#,
    ] {
        assert_invalid(&query_as(addr, &auditor, mutation).await, "");
    }
    let after = query_as(addr, ADMIN, "{ orders_triggers { name status } }").await;
    assert_eq!(after["data"]["orders_triggers"], before, "{after}");
    f.stop().await;
}
