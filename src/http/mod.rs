//! HTTP and WebSocket transport: `/graphql` (POST, GET, WebSocket, GraphiQL), `/assets` (the
//! embedded files of the pages, see `assets`), `/health`,
//! `/ready`, `/metrics`, and runs over plain HTTP and SSE (`/runs`, see `runs`).
//!
//! [`router`] is a plain function over [`AppState`], so tests drive it on a real socket. This
//! module translates between wire formats and the GraphQL executor; it never reads hubs or
//! databases except to report readiness.

mod admit;
mod assets;
mod protect;
mod runs;
pub(crate) mod serve;
mod ws;

pub use protect::AllowedOrigins;
pub use ws::ConnectionParams;

use std::sync::Arc;
use std::time::Duration;

use async_graphql::dynamic::Schema;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::hub::{HubStatus, Hubs};
use crate::limits::{CostModel, GraphqlLimits, Limit};
use crate::telemetry::Metrics;
use admit::{Refusal, admit, has_operation};

/// WebSocket protocol settings.
#[derive(Debug, Clone, Copy)]
pub struct WsSettings {
    /// How long a client has to send `connection_init` (graphql-ws closes with 4408 after it).
    pub init_timeout: Duration,
    /// Interval of server keep-alives (`ping` on graphql-transport-ws, `ka` on legacy graphql-ws).
    pub keepalive: Duration,
    /// Largest accepted client message.
    pub max_message_bytes: usize,
    /// Most concurrent operations on one connection.
    pub max_operations: usize,
    /// How long a write to a client may block before the connection is dropped.
    pub write_timeout: Duration,
    /// How long a client may send nothing (no message, no pong to the server's pings)
    /// before the connection is closed.
    pub idle_timeout: Duration,
    /// Most distinct filters (per source) one connection's subscriptions may use.
    pub max_filters: usize,
}

impl Default for WsSettings {
    fn default() -> Self {
        WsSettings {
            init_timeout: Duration::from_secs(3),
            keepalive: Duration::from_secs(12),
            max_message_bytes: 1 << 20,
            max_operations: 200,
            write_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_filters: 100,
        }
    }
}

/// HTTP settings and limits.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// How long a request may take until its response starts (streams run past it).
    pub request_timeout: Duration,
    /// Most open connections.
    pub max_connections: usize,
    /// Most open connections from one client address (0: no cap).
    pub max_connections_per_address: usize,
    /// Most open Server-Sent Events streams (graphql-sse and runs).
    pub max_sse_streams: usize,
    /// Browser origins that may use the API.
    pub allowed_origins: AllowedOrigins,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            max_body_bytes: 1 << 20,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            max_connections_per_address: 1_000,
            max_sse_streams: 10_000,
            allowed_origins: AllowedOrigins::SameOrigin,
        }
    }
}

/// Open Server-Sent Events streams, against `HttpSettings::max_sse_streams`.
#[derive(Debug, Default)]
pub(crate) struct SseStreams(std::sync::atomic::AtomicUsize);

/// One open stream's place, given back when the stream is dropped.
pub(crate) struct SseSlot(Arc<SseStreams>);

impl Drop for SseSlot {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl AppState {
    /// A place for one more SSE stream, or the refusal (`503`) to answer with.
    pub(crate) fn sse_slot(&self) -> Result<SseSlot, Box<Response>> {
        use std::sync::atomic::Ordering;
        let open = &self.sse_streams.0;
        if open.fetch_add(1, Ordering::Relaxed) >= self.http.max_sse_streams {
            open.fetch_sub(1, Ordering::Relaxed);
            self.metrics.limits.count(Limit::SseStreams);
            let mut response = json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({ "errors": [{
                    "message": format!("too many open event streams (--sse-max-streams {}); try again later", self.http.max_sse_streams),
                    "extensions": { "code": "TOO_MANY_STREAMS" },
                }]}),
            );
            response.headers_mut().insert(
                header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
            return Err(Box::new(response));
        }
        Ok(SseSlot(self.sse_streams.clone()))
    }
}

/// Everything a request handler needs.
#[derive(Clone)]
pub struct AppState {
    /// The schema each caller sees (by role).
    pub schemas: Arc<crate::schema::Schemas>,
    pub auth: crate::auth::Auth,
    pub hubs: Arc<Hubs>,
    pub triggers: Arc<crate::trigger::Triggers>,
    pub runs: crate::run::Runs,
    pub metrics: Arc<Metrics>,
    pub ws: WsSettings,
    pub graphql: GraphqlLimits,
    pub http: HttpSettings,
    /// List sizes of the schema, for the cost of an operation.
    pub cost_model: Arc<CostModel>,
    pub(crate) sse_streams: Arc<SseStreams>,
    /// Cancelled at shutdown: WebSocket connections close with 1001.
    pub shutdown: CancellationToken,
}

/// The HTTP application.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/assets/{*path}", get(assets::serve))
        .route("/console", get(assets::console))
        .route(
            "/",
            get(|| async { axum::response::Redirect::to("/console") }),
        )
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/runs", axum::routing::post(runs::start))
        .route("/runs/{id}", get(runs::get_run))
        .route("/runs/{id}/events", get(runs::events).post(runs::append))
        .route("/runs/{id}/cancel", axum::routing::post(runs::cancel))
        .layer(axum::extract::DefaultBodyLimit::max(
            state.http.max_body_bytes,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            protect::timeout,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            protect::origins,
        ))
        .with_state(state)
}

/// Who is calling, and the schema it sees; or the answer that refuses it (401 with
/// `WWW-Authenticate`, or 403).
pub(crate) async fn caller(
    state: &AppState,
    credentials: &crate::auth::Credentials,
) -> Result<(crate::auth::Session, Schema), Response> {
    match state.auth.authenticate(credentials).await {
        Ok(session) => {
            let schema = state.schemas.for_session(&session).clone();
            Ok((session, schema))
        }
        Err(err) => Err(auth_refusal(&err)),
    }
}

/// The HTTP answer to a failed authentication.
pub(crate) fn auth_refusal(err: &crate::auth::AuthError) -> Response {
    let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let mut response = refusal_response(&Refusal::new(status, err.to_string(), err.code()));
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

/// The credentials of an HTTP request: its headers, or (for a browser's `EventSource`, which
/// cannot set headers) an `access_token` query parameter, as RFC 6750 allows.
pub(crate) fn credentials_of(
    headers: &HeaderMap,
    uri: &axum::http::Uri,
) -> crate::auth::Credentials {
    let mut credentials = crate::auth::Credentials::from_headers(headers);
    if credentials.bearer.is_none()
        && let Some(query) = uri.query()
    {
        credentials.bearer = query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            (key == "access_token")
                .then(|| percent_decode(value))
                .flatten()
        });
    }
    credentials
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                out.push(u8::from_str_radix(text.get(i + 1..i + 3)?, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A request body, or the refusal to answer with when it is over `--http-max-body-bytes`.
pub(crate) fn body_within_limit(
    state: &AppState,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Bytes, Refusal> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            state.metrics.limits.count(Limit::BodyBytes);
            Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is over {} bytes (--http-max-body-bytes)",
                    state.http.max_body_bytes
                ),
                "PAYLOAD_TOO_LARGE",
            )
        } else {
            Refusal::new(rejection.status(), rejection.body_text(), "BAD_REQUEST")
        }
    })
}

async fn graphql_get(State(state): State<AppState>, request: axum::extract::Request) -> Response {
    let (mut parts, _body) = request.into_parts();
    let credentials = credentials_of(&parts.headers, &parts.uri);
    if parts.headers.contains_key(header::UPGRADE) {
        // The WebSocket keeps its connection counted (see `serve`).
        let slot = parts.extensions.get::<serve::ConnectionSlot>().cloned();
        return match axum::extract::ws::WebSocketUpgrade::from_request_parts(&mut parts, &state)
            .await
        {
            // The upgrade's own credentials stand in for those connection_init may omit.
            Ok(upgrade) => ws::upgrade(upgrade, state, slot, credentials),
            Err(rejection) => rejection.into_response(),
        };
    }
    let wants_html = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    let query = Query::<GetParams>::try_from_uri(&parts.uri);
    match query {
        Ok(Query(params)) if params.query.is_some() => {
            let mut request = match params.into_request() {
                Ok(request) => request,
                Err(message) => return graphql_error_response(StatusCode::BAD_REQUEST, &message),
            };
            if let Err(refusal) = admit(&state, &mut request) {
                return refusal_response(&refusal);
            }
            let caller = match caller(&state, &credentials).await {
                Ok(caller) => caller,
                Err(refusal) => return refusal,
            };
            if wants_event_stream(&parts.headers, &mut request) {
                if is_mutation(&mut request) {
                    return graphql_error_response(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "mutations must use POST",
                    );
                }
                return graphql_sse(&state, &caller, request);
            }
            execute(&state, &caller, request, true).await
        }
        _ if wants_html => assets::graphiql().into_response(),
        _ => graphql_error_response(
            StatusCode::BAD_REQUEST,
            "GET /graphql needs a `query` parameter (or open it in a browser for GraphiQL, or upgrade to a WebSocket)",
        ),
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct GetParams {
    query: Option<String>,
    operation_name: Option<String>,
    variables: Option<String>,
}

impl GetParams {
    fn into_request(self) -> Result<async_graphql::Request, String> {
        let mut request = async_graphql::Request::new(self.query.unwrap_or_default());
        if let Some(name) = self.operation_name {
            request = request.operation_name(name);
        }
        if let Some(variables) = self.variables {
            let json: serde_json::Value = serde_json::from_str(&variables)
                .map_err(|e| format!("`variables` is not valid JSON: {e}"))?;
            request = request.variables(async_graphql::Variables::from_json(json));
        }
        Ok(request)
    }
}

async fn graphql_post(
    State(state): State<AppState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body_within_limit(&state, body) {
        Ok(body) => body,
        Err(refusal) => return refusal_response(&refusal),
    };
    let caller = match caller(&state, &credentials_of(&headers, &uri)).await {
        Ok(caller) => caller,
        Err(refusal) => return refusal,
    };
    // A JSON or GraphQL content type, always: a browser sends a cross-site request without a
    // preflight only with a form or text type (or none), so this refuses cross-site forgery.
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("application/graphql") && !content_type.contains("json") {
        let query = String::from_utf8_lossy(&body).into_owned();
        let mut request = async_graphql::Request::new(query);
        if let Err(refusal) = admit(&state, &mut request) {
            return refusal_response(&refusal);
        }
        return execute(&state, &caller, request, false).await;
    }
    if !content_type.starts_with("application/json")
        && !content_type.starts_with("application/graphql-response+json")
    {
        return refusal_response(&Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "POST /graphql takes a JSON body (content-type: application/json) or a document (application/graphql)",
            "UNSUPPORTED_MEDIA_TYPE",
        ));
    }
    let batch = match serde_json::from_slice::<async_graphql::BatchRequest>(&body) {
        Ok(batch) => batch,
        Err(err) => {
            return graphql_error_response(
                StatusCode::BAD_REQUEST,
                &format!("request body is not a GraphQL request: {err}"),
            );
        }
    };
    match batch {
        async_graphql::BatchRequest::Single(mut request) => {
            if let Err(refusal) = admit(&state, &mut request) {
                return refusal_response(&refusal);
            }
            if wants_event_stream(&headers, &mut request) {
                graphql_sse(&state, &caller, request)
            } else {
                execute(&state, &caller, request, false).await
            }
        }
        async_graphql::BatchRequest::Batch(requests) => {
            if requests.len() > state.graphql.max_batch {
                state.metrics.limits.count(Limit::Batch);
                return refusal_response(&Refusal::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the batch has {} operations; the limit is {} (--graphql-max-batch)",
                        requests.len(),
                        state.graphql.max_batch
                    ),
                    "BATCH_LIMIT_EXCEEDED",
                ));
            }
            let mut responses = Vec::with_capacity(requests.len());
            for mut request in requests {
                state.metrics.http_requests.inc();
                responses.push(match admit(&state, &mut request) {
                    Ok(()) => run(&caller, request).await,
                    Err(refusal) => async_graphql::Response::from_errors(vec![*refusal.error]),
                });
            }
            json_response(StatusCode::OK, &responses)
        }
    }
}

/// Who calls, and the schema it sees.
type Caller = (crate::auth::Session, Schema);

async fn execute(
    state: &AppState,
    caller: &Caller,
    mut request: async_graphql::Request,
    via_get: bool,
) -> Response {
    state.metrics.http_requests.inc();
    if via_get && is_mutation(&mut request) {
        return graphql_error_response(StatusCode::METHOD_NOT_ALLOWED, "mutations must use POST");
    }
    let response = run(caller, request).await;
    json_response(StatusCode::OK, &response)
}

/// Whether to answer `request` as an event stream (GraphQL over SSE): the client accepts
/// `text/event-stream`, and either accepts nothing else (graphql-sse) or sends a subscription.
/// A client that also takes JSON (urql's fetch lists both) gets JSON for a query.
fn wants_event_stream(headers: &HeaderMap, request: &mut async_graphql::Request) -> bool {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    accept.contains("text/event-stream")
        && (!accept.contains("json")
            || has_operation(
                request,
                async_graphql::parser::types::OperationType::Subscription,
            ))
}

/// GraphQL over Server-Sent Events (the graphql-sse protocol's "distinct connections" mode):
/// each result of the operation is an `event: next` with the result as JSON `data`, then one
/// `event: complete`. Subscriptions, queries and mutations alike; a subscription streams until
/// it ends, the client goes away or the server shuts down. Subscriptions run through the
/// GraphQL executor here (the WebSocket transport has the shared-bytes fast path).
fn graphql_sse(state: &AppState, caller: &Caller, request: async_graphql::Request) -> Response {
    use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
    use futures::StreamExt;
    state.metrics.http_requests.inc();
    let slot = match state.sse_slot() {
        Ok(slot) => slot,
        Err(refusal) => return *refusal,
    };
    let (session, schema) = caller;
    let query = request.query.clone();
    let results = schema
        .execute_stream(request.data(session.clone()))
        .map(move |mut response| {
            // The stream holds its place until it is dropped.
            let _ = &slot;
            coded(&mut response.errors, &query);
            let data = serde_json::to_string(&response).unwrap_or_else(|e| {
                format!(r#"{{"errors":[{{"message":"cannot serialize the result: {e}"}}]}}"#)
            });
            Ok::<_, std::convert::Infallible>(SseEvent::default().event("next").data(data))
        });
    // A stream ends when its credential expires: a last result says why.
    let results = until_expiry(results, session.remaining(), || {
        let error = serde_json::json!({ "errors": [{
            "message": "the credential has expired: subscribe again with a fresh one",
            "extensions": { "code": "UNAUTHENTICATED" },
        }]});
        Ok(SseEvent::default().event("next").data(error.to_string()))
    });
    let complete =
        futures::stream::once(async { Ok(SseEvent::default().event("complete").data("")) });
    let events = results
        .chain(complete)
        .take_until(state.shutdown.clone().cancelled_owned());
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    // nginx and similar proxies buffer responses unless told not to.
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    response
}

/// `stream` until it ends, or until `remaining` has passed: then `expired()` is its last item.
pub(crate) fn until_expiry<S, T>(
    stream: S,
    remaining: Option<Duration>,
    expired: impl FnOnce() -> T + Send + 'static,
) -> futures::stream::BoxStream<'static, T>
where
    S: futures::Stream<Item = T> + Send + 'static,
    T: Send + 'static,
{
    use futures::StreamExt;
    let Some(remaining) = remaining else {
        return stream.boxed();
    };
    // `expired` is taken when it fires: the next poll ends the stream, whether or not the
    // inner stream has anything more.
    let state = (
        stream.boxed(),
        Box::pin(tokio::time::sleep(remaining)),
        Some(expired),
    );
    futures::stream::unfold(
        state,
        |(mut stream, mut deadline, mut expired)| async move {
            expired.as_ref()?;
            tokio::select! {
                item = stream.next() => item.map(|item| (item, (stream, deadline, expired))),
                () = &mut deadline => {
                    let last = expired.take()?();
                    Some((last, (stream, deadline, None)))
                }
            }
        },
    )
    .boxed()
}

/// Executes `request` as `caller`; every error of the response carries an `extensions.code`.
async fn run(caller: &Caller, request: async_graphql::Request) -> async_graphql::Response {
    let (session, schema) = caller;
    let query = request.query.clone();
    let mut response = schema.execute(request.data(session.clone())).await;
    coded(&mut response.errors, &query);
    response
}

/// Gives a code to the errors async-graphql reports without one (viewcast's own errors have
/// theirs): `GRAPHQL_PARSE_FAILED` when the document does not parse,
/// `GRAPHQL_VALIDATION_FAILED` for a request-level error (no path: validation, an unknown
/// operation, a bad variable), `BAD_USER_INPUT` for one at a field (an argument it refused).
pub(crate) fn coded(errors: &mut [async_graphql::ServerError], query: &str) {
    if errors.iter().all(|e| {
        e.extensions
            .as_ref()
            .is_some_and(|x| x.get("code").is_some())
    }) {
        return;
    }
    let parses = async_graphql::parser::parse_query(query).is_ok();
    for error in errors {
        if error
            .extensions
            .as_ref()
            .is_some_and(|x| x.get("code").is_some())
        {
            continue;
        }
        let code = if !parses {
            "GRAPHQL_PARSE_FAILED"
        } else if error.path.is_empty() {
            "GRAPHQL_VALIDATION_FAILED"
        } else {
            "BAD_USER_INPUT"
        };
        error
            .extensions
            .get_or_insert_with(Default::default)
            .set("code", code);
    }
}

fn is_mutation(request: &mut async_graphql::Request) -> bool {
    has_operation(
        request,
        async_graphql::parser::types::OperationType::Mutation,
    )
}

fn refusal_response(refusal: &Refusal) -> Response {
    json_response(refusal.status, &refusal.body())
}

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn graphql_error_response(status: StatusCode, message: &str) -> Response {
    json_response(
        status,
        &serde_json::json!({ "errors": [{ "message": message }] }),
    )
}

async fn ready(State(state): State<AppState>) -> Response {
    let mut ready = true;
    let mut sources = serde_json::Map::new();
    for (name, status) in state.hubs.statuses() {
        let entry = match status {
            None => {
                serde_json::json!({ "status": "idle", "reason": "lazy source: starts with its first consumer" })
            }
            Some(HubStatus::Live) => serde_json::json!({ "status": "live" }),
            Some(HubStatus::Starting) => {
                ready = false;
                serde_json::json!({ "status": "starting", "reason": "waiting for the first snapshot" })
            }
            Some(HubStatus::Down {
                reason,
                permanent,
                synced,
            }) => {
                ready = false;
                serde_json::json!({ "status": "down", "reason": reason, "permanent": permanent, "serving_cached_rows": synced })
            }
        };
        sources.insert(name, entry);
    }
    let mut body = serde_json::json!({ "ready": ready, "sources": sources });
    body["auth"] = state.auth.describe().await;
    if let Some(reason) = state.triggers.not_ready() {
        ready = false;
        body["ready"] = false.into();
        body["store"] = serde_json::json!({ "status": "down", "reason": reason });
    }
    if let Some(reason) = state.runs.not_ready() {
        ready = false;
        body["ready"] = false.into();
        body["runs"] = serde_json::json!({ "status": "down", "reason": reason });
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &body)
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !state
        .auth
        .metrics_allowed(&crate::auth::Credentials::from_headers(&headers))
    {
        return auth_refusal(&crate::auth::AuthError::Invalid(
            "/metrics needs its token (--metrics-token)".into(),
        ));
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
