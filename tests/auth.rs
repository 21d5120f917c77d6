//! Authentication against a served schema, over every transport: tokens that are forged,
//! expired or not yet valid, of another issuer or audience, or signed with the wrong key or
//! algorithm; roles outside the allowed ones; the admin secret; a JWKS whose keys rotate;
//! credentials in each place clients put them; a token that expires mid-connection. Every case
//! checks the exact status, error code or close code.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use common::{TestDb, Ws, http_request};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use viewcast::auth::{AuthSettings, Checks, ClaimsSource, JwtSettings, KeySource};
use viewcast::server::Server;

const SCHEMA: &str =
    "backend: postgres\nsources:\n  items:\n    primary_key: id\n    columns:\n      id: Integer\n";
const SECRET: &str = "a shared secret of at least thirty-two bytes";
const ADMIN: &str = "the-admin-secret";
const RSA_PRIVATE: &str = include_str!("fixtures/auth/rsa-private.pem");

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims for `role` (allowed: `user` and `editor`), valid for `ttl` seconds.
fn claims(role: &str, ttl: i64) -> Value {
    json!({
        "sub": "u1",
        "iss": "https://issuer.test/",
        "aud": "viewcast",
        "exp": (now() as i64 + ttl),
        "https://hasura.io/jwt/claims": {
            "x-hasura-allowed-roles": ["user", "editor"],
            "x-hasura-default-role": role,
            "x-hasura-user-id": "u1",
        },
    })
}

fn hs256(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn checks() -> Checks {
    Checks {
        issuer: Some("https://issuer.test/".into()),
        audience: vec!["viewcast".into()],
        leeway: Duration::ZERO,
    }
}

struct Fixture {
    db: TestDb,
    server: Server,
}

impl Fixture {
    async fn start(auth: AuthSettings) -> Fixture {
        let db = TestDb::new().await;
        db.client()
            .await
            .batch_execute(
                "CREATE TABLE items (id integer PRIMARY KEY); INSERT INTO items VALUES (1)",
            )
            .await
            .expect("table");
        let config =
            viewcast::config::load_str(std::path::Path::new("t.yaml"), SCHEMA).expect("config");
        let server = common::start_server_with_options(&db, config, |options| {
            options.auth = auth;
        })
        .await;
        Fixture { db, server }
    }

    async fn with_secret() -> Fixture {
        Fixture::start(AuthSettings {
            jwt: Some(JwtSettings {
                key: KeySource::Secret(SECRET.into()),
                checks: checks(),
                claims: ClaimsSource::default(),
            }),
            admin_secret: Some(ADMIN.into()),
            metrics_token: Some("metrics-token".into()),
            ..AuthSettings::default()
        })
        .await
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    async fn stop(self) {
        self.server.shutdown().await;
        self.db.stop().await;
    }
}

/// POSTs a query with `headers`: (status, JSON, the raw response).
async fn post(addr: SocketAddr, query: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    let body = json!({ "query": query }).to_string();
    let (status, text) = http_request(addr, "POST", "/graphql", Some(&body), &all)
        .await
        .expect("POST");
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON: {text}")),
    )
}

fn code(response: &Value) -> &str {
    response["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("a coded error: {response}"))
}

#[tokio::test]
async fn http_requests_need_valid_credentials_and_see_their_roles_schema() {
    let f = Fixture::with_secret().await;
    let addr = f.addr();
    let query = "{ items { id } }";
    // No credentials: 401, with the scheme to use.
    let (status, text) = http_request(
        addr,
        "POST",
        "/graphql",
        Some(&json!({ "query": query }).to_string()),
        &[("Content-Type", "application/json")],
    )
    .await
    .expect("POST");
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("UNAUTHENTICATED"), "{text}");
    // Forged, expired, not yet valid, wrong issuer, wrong audience: 401.
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none"})),
        b64(&claims("user", 60))
    );
    let other_secret = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("user", 60),
        &EncodingKey::from_secret(b"some other secret of thirty-two bytes"),
    )
    .unwrap();
    let mut not_yet = claims("user", 60);
    not_yet["nbf"] = (now() + 600).into();
    let mut other_issuer = claims("user", 60);
    other_issuer["iss"] = "https://elsewhere.test/".into();
    let mut other_audience = claims("user", 60);
    other_audience["aud"] = "someone-else".into();
    for (what, token) in [
        ("alg none", alg_none),
        ("another key", other_secret),
        ("expired", hs256(&claims("user", -10))),
        ("nbf in the future", hs256(&not_yet)),
        ("another issuer", hs256(&other_issuer)),
        ("another audience", hs256(&other_audience)),
    ] {
        let bearer = format!("Bearer {token}");
        let (status, response) = post(addr, query, &[("Authorization", &bearer)]).await;
        assert_eq!(
            (status, code(&response)),
            (401, "UNAUTHENTICATED"),
            "{what}: {response}"
        );
    }
    // A role outside the allowed ones: 403.
    let bearer = format!("Bearer {}", hs256(&claims("user", 60)));
    let (status, response) = post(
        addr,
        query,
        &[("Authorization", &bearer), ("x-hasura-role", "admin")],
    )
    .await;
    assert_eq!((status, code(&response)), (403, "FORBIDDEN"), "{response}");
    // A valid token for a role without permissions: only `viewer` exists for it.
    let (status, response) = post(addr, query, &[("Authorization", &bearer)]).await;
    assert_eq!(status, 200);
    assert_eq!(code(&response), "GRAPHQL_VALIDATION_FAILED", "{response}");
    assert!(response["data"].is_null(), "{response}");
    let (_, response) = post(
        addr,
        "{ viewer { role userId } }",
        &[("Authorization", &bearer), ("x-hasura-role", "editor")],
    )
    .await;
    assert_eq!(
        response["data"]["viewer"],
        json!({"role": "editor", "userId": "u1"})
    );
    // The admin secret: everything; a wrong one: 401.
    let (_, response) = post(addr, query, &[("x-hasura-admin-secret", ADMIN)]).await;
    assert_eq!(response["data"]["items"], json!([{"id": 1}]), "{response}");
    let (status, _) = post(addr, query, &[("x-hasura-admin-secret", "guess")]).await;
    assert_eq!(status, 401);
    // /metrics has its own token; /ready tells what is configured.
    let (status, _) = http_request(addr, "GET", "/metrics", None, &[])
        .await
        .unwrap();
    assert_eq!(status, 401);
    let (status, _) = http_request(
        addr,
        "GET",
        "/metrics",
        None,
        &[("Authorization", "Bearer metrics-token")],
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let (_, ready) = common::http_get(addr, "/ready").await.unwrap();
    let ready: Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(
        ready["auth"]["methods"],
        json!(["jwt (shared secret)", "admin secret"])
    );
    f.stop().await;
}

#[tokio::test]
async fn runs_endpoints_and_event_streams_need_credentials_too() {
    let f = Fixture::with_secret().await;
    let addr = f.addr();
    let user = format!("Bearer {}", hs256(&claims("user", 60)));
    let body = json!({ "kind": "job" }).to_string();
    let json_type = ("Content-Type", "application/json");
    let (status, _) = http_request(addr, "POST", "/runs", Some(&body), &[json_type])
        .await
        .unwrap();
    assert_eq!(status, 401);
    let (status, text) = http_request(
        addr,
        "POST",
        "/runs",
        Some(&body),
        &[json_type, ("Authorization", &user)],
    )
    .await
    .unwrap();
    assert_eq!(status, 403, "{text}");
    let (status, text) = http_request(
        addr,
        "POST",
        "/runs",
        Some(&body),
        &[json_type, ("x-hasura-admin-secret", ADMIN)],
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{text}");
    let id = serde_json::from_str::<Value>(&text).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // An EventSource cannot set headers: the token may come as access_token.
    let path = format!("/runs/{id}/events");
    let (status, _) = http_request(addr, "GET", &path, None, &[]).await.unwrap();
    assert_eq!(status, 401);
    let token = hs256(&claims("user", 60));
    let (status, _) = http_request(
        addr,
        "GET",
        &format!("{path}?access_token={token}"),
        None,
        &[],
    )
    .await
    .unwrap();
    // The token was read (not 401): to a role that may not read runs, none exists.
    assert_eq!(status, 404);
    f.stop().await;
}

#[tokio::test]
async fn websockets_authenticate_at_connection_init_and_close_when_the_token_expires() {
    let f = Fixture::with_secret().await;
    let addr = f.addr();
    // No credentials, a forged one: 4403 (graphql-transport-ws), connection_error then a
    // close (legacy).
    for payload in [json!({}), json!({ "Authorization": "Bearer not.a.token" })] {
        let mut ws = Ws::open(addr, "graphql-transport-ws").await;
        ws.send(json!({ "type": "connection_init", "payload": payload }))
            .await;
        assert_eq!(ws.recv().await.unwrap_err().0, 4403, "{payload}");
        let mut legacy = Ws::open(addr, "graphql-ws").await;
        legacy
            .send(json!({ "type": "connection_init", "payload": payload }))
            .await;
        let error = legacy.recv().await.expect("connection_error");
        assert_eq!(error["type"], "connection_error", "{error}");
        assert_eq!(error["payload"]["extensions"]["code"], "UNAUTHENTICATED");
        assert_eq!(legacy.recv().await.unwrap_err().0, 4403);
    }
    // Every form clients use to send a token.
    let token = hs256(&claims("user", 60));
    for payload in [
        json!({ "Authorization": format!("Bearer {token}") }),
        json!({ "headers": { "Authorization": format!("Bearer {token}") } }),
        json!({ "authToken": token }),
    ] {
        let mut ws = Ws::open(addr, "graphql-transport-ws").await;
        ws.send(json!({ "type": "connection_init", "payload": payload }))
            .await;
        let ack = ws.recv_skipping_keepalives().await.expect("ack");
        assert_eq!(ack["type"], "connection_ack", "{payload}");
        ws.subscribe("1", "{ viewer { role } }").await;
        let data = ws.next_payload("1").await;
        assert_eq!(data["data"]["viewer"]["role"], "user");
    }
    // The admin secret in the payload: the whole schema.
    let mut ws = Ws::connect_with(
        addr,
        "graphql-transport-ws",
        json!({ "x-hasura-admin-secret": ADMIN }),
    )
    .await;
    ws.subscribe("1", "subscription { items { operation data { id } } }")
        .await;
    let first = ws.next_payload("1").await;
    assert_eq!(first["data"]["items"]["data"]["id"], 1, "{first}");
    // A token that expires in two seconds: the connection closes then, with 4403.
    let short = hs256(&claims("user", 2));
    let mut ws = Ws::connect_with(
        addr,
        "graphql-transport-ws",
        json!({ "Authorization": format!("Bearer {short}") }),
    )
    .await;
    let closed = loop {
        match ws.recv().await {
            Ok(_) => {}
            Err((code, reason)) => break (code, reason),
        }
    };
    assert_eq!(closed.0, 4403, "{closed:?}");
    assert!(closed.1.contains("expired"), "{closed:?}");
    f.stop().await;
}

/// A JWKS served over HTTP whose keys the test changes.
struct JwksServer {
    addr: SocketAddr,
    keys: std::sync::Arc<std::sync::Mutex<Value>>,
    _task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(keys: Value) -> JwksServer {
        let keys = std::sync::Arc::new(std::sync::Mutex::new(keys));
        let served = keys.clone();
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let served = served.clone();
                async move { axum::Json(served.lock().unwrap().clone()) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        JwksServer {
            addr,
            keys,
            _task: task,
        }
    }
}

/// The JWK of the fixture RSA key, named `kid`.
fn jwk(kid: &str) -> Value {
    let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_value(jwk).unwrap()
}

fn rs256(kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn jwks_keys_verify_tokens_and_rotate_without_a_restart() {
    let jwks = JwksServer::start(json!({ "keys": [jwk("k1")] })).await;
    let f = Fixture::start(AuthSettings {
        jwt: Some(JwtSettings {
            key: KeySource::Jwks(format!("http://{}/jwks.json", jwks.addr)),
            checks: checks(),
            claims: ClaimsSource::default(),
        }),
        ..AuthSettings::default()
    })
    .await;
    let addr = f.addr();
    let viewer = "{ viewer { role } }";
    let bearer = |token: String| format!("Bearer {token}");
    let (status, response) = post(
        addr,
        viewer,
        &[("Authorization", &bearer(rs256("k1", &claims("user", 60))))],
    )
    .await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["data"]["viewer"]["role"], "user");
    // HS256 with the RSA key's public half as the secret: refused.
    let public = include_str!("fixtures/auth/rsa-public.pem");
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    let forged = jsonwebtoken::encode(
        &header,
        &claims("user", 60),
        &EncodingKey::from_secret(public.as_bytes()),
    )
    .unwrap();
    let (status, _) = post(addr, viewer, &[("Authorization", &bearer(forged))]).await;
    assert_eq!(status, 401);
    // A key the JWKS does not have yet: refused; once the JWKS has it, accepted (fetched
    // again, at most every few seconds).
    let rotated = rs256("k2", &claims("user", 60));
    let (status, response) =
        post(addr, viewer, &[("Authorization", &bearer(rotated.clone()))]).await;
    assert_eq!(
        (status, code(&response)),
        (401, "UNAUTHENTICATED"),
        "{response}"
    );
    *jwks.keys.lock().unwrap() = json!({ "keys": [jwk("k2")] });
    let rotated_bearer = bearer(rotated);
    let (status, _) = common::eventually(
        || async {
            let headers = [("Authorization", rotated_bearer.as_str())];
            post(addr, viewer, &headers).await
        },
        |(status, _)| *status == 200,
    )
    .await;
    assert_eq!(status, 200);
    f.stop().await;
}
