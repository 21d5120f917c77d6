//! Runs over plain HTTP, for callers without GraphQL:
//!
//! - `GET /runs/{id}/events?fromSeq=N&coalesce=true`: Server-Sent Events. `id:` is the seq,
//!   `event:` the type, `data:` the event as JSON; a `Last-Event-ID` header (what browsers
//!   send when they reconnect) resumes after that seq and wins over `fromSeq`. Heartbeats are
//!   comments. The response ends after the terminal event.
//! - `POST /runs` `{kind, input, idempotencyKey}`: 201 with the run (200 with the earlier run
//!   for a repeated idempotency key).
//! - `GET /runs/{id}`: the run.
//! - `POST /runs/{id}/events` `{events: [...], expectedSeq}`: appends (for workers; a run
//!   of an `http` kind needs `Authorization: Bearer <its run-scoped token>`).
//! - `POST /runs/{id}/cancel` `{reason}`: cancels.
//!
//! Errors are JSON `{"error": message, "code": CODE}` with the status the code implies.

use std::convert::Infallible;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};

use super::AppState;
use crate::auth::RunAccess;
use crate::run::stream::{Follow, Item};
use crate::run::{NewEvent, Run, RunError};

/// An error answer: `{"error": message, "code": CODE}`.
struct Problem {
    status: StatusCode,
    message: String,
    code: &'static str,
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": self.message, "code": self.code})),
        )
            .into_response()
    }
}

fn error(status: StatusCode, message: &str, code: &'static str) -> Problem {
    Problem {
        status,
        message: message.to_owned(),
        code,
    }
}

fn run_error(err: &RunError) -> Response {
    let status = match err {
        RunError::NotFound(_) => StatusCode::NOT_FOUND,
        RunError::Ended { .. } | RunError::SeqMismatch { .. } => StatusCode::CONFLICT,
        RunError::Invalid(_) => StatusCode::BAD_REQUEST,
        RunError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        RunError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        RunError::Forbidden(_) => StatusCode::FORBIDDEN,
        RunError::Lagged(_) => StatusCode::GONE,
        RunError::NoStore | RunError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, &err.to_string(), err.code()).into_response()
}

/// The caller's session and what it may do with runs (its role's grants); the refusal when
/// it has no valid credentials.
async fn runs_session(
    state: &AppState,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
) -> Result<(crate::auth::Session, RunAccess), Response> {
    let credentials = super::credentials_of(headers, uri);
    let session = match state.auth.authenticate(&credentials).await {
        Ok(session) => session,
        Err(err) => return Err(super::auth_refusal(&err)),
    };
    let access = state.schemas.grants(&session).run_access(&session);
    Ok((session, access))
}

/// The run `id`, if `access` may read it.
async fn readable(state: &AppState, access: &RunAccess, id: &str) -> Result<Run, RunError> {
    access.read(state.runs.get(id).await?)
}

/// The JSON body of a POST (an empty body is `{}`). The content type must say JSON, even for
/// an empty body: a browser sends a cross-site request without a preflight only with a form
/// or text type (or none), so this refuses cross-site forgery (a form that cancels a run).
fn body<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<T, Problem> {
    let bytes = super::body_within_limit(state, bytes).map_err(|refusal| Problem {
        status: refusal.status,
        message: refusal.error.message.clone(),
        code: if refusal.status == StatusCode::PAYLOAD_TOO_LARGE {
            "PAYLOAD_TOO_LARGE"
        } else {
            "BAD_REQUEST"
        },
    })?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .to_ascii_lowercase()
        .starts_with("application/json")
    {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the body as JSON, with content-type: application/json",
            "UNSUPPORTED_MEDIA_TYPE",
        ));
    }
    let text: &[u8] = if bytes.is_empty() { b"{}" } else { &bytes };
    serde_json::from_slice(text).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            &format!("invalid request body: {e}"),
            "BAD_USER_INPUT",
        )
    })
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StartBody {
    kind: String,
    #[serde(default)]
    input: Option<Value>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

pub async fn start(
    State(state): State<AppState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Response {
    let access = match runs_session(&state, &headers, &uri).await {
        Ok((_, access)) => access,
        Err(refusal) => return refusal,
    };
    let request: StartBody = match body(&state, &headers, bytes) {
        Ok(request) => request,
        Err(problem) => return problem.into_response(),
    };
    if let Err(err) = access.start(&request.kind) {
        return run_error(&err);
    }
    let input = request.input.unwrap_or_else(|| json!({}));
    let started = state
        .runs
        .start_or_get(
            &request.kind,
            &input,
            request.idempotency_key.as_deref(),
            access.created_by(),
        )
        .await
        .and_then(|(run, created)| Ok((access.earlier_start(run, created)?, created)));
    match started {
        Ok((run, created)) => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, Json(run.to_json())).into_response()
        }
        Err(err) => run_error(&err),
    }
}

pub async fn get_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let access = match runs_session(&state, &headers, &uri).await {
        Ok((_, access)) => access,
        Err(refusal) => return refusal,
    };
    match readable(&state, &access, &id).await {
        Ok(run) => Json(run.to_json()).into_response(),
        Err(err) => run_error(&err),
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AppendBody {
    events: Vec<NewEvent>,
    #[serde(default)]
    expected_seq: Option<i64>,
}

pub async fn append(
    State(state): State<AppState>,
    Path(id): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Response {
    let request: AppendBody = match body(&state, &headers, bytes) {
        Ok(request) => request,
        Err(problem) => return problem.into_response(),
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    // A worker appends to its run with the run-scoped token it was given, whoever it is;
    // anyone else needs a session that may.
    let is_worker = match token {
        Some(token) if state.auth.is_on() => state
            .runs
            .worker_token(&id)
            .await
            .is_ok_and(|expected| crate::auth::same_secret(token, &expected)),
        _ => false,
    };
    if !is_worker {
        let access = match runs_session(&state, &headers, &uri).await {
            Ok((_, access)) => access,
            Err(refusal) => return refusal,
        };
        let allowed = match state.runs.get(&id).await {
            Ok(run) => access.append(&run),
            Err(err) => Err(err),
        };
        if let Err(err) = allowed {
            return run_error(&err);
        }
    }
    match state
        .runs
        .append_as_worker(&id, &request.events, request.expected_seq, token)
        .await
    {
        Ok(events) => Json(json!({
            "events": events.iter().map(crate::run::Event::to_json).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(err) => run_error(&err),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    #[serde(default)]
    reason: Option<String>,
}

pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Response {
    let access = match runs_session(&state, &headers, &uri).await {
        Ok((_, access)) => access,
        Err(refusal) => return refusal,
    };
    let request: CancelBody = match body(&state, &headers, bytes) {
        Ok(request) => request,
        Err(problem) => return problem.into_response(),
    };
    let allowed = match state.runs.get(&id).await {
        Ok(run) => access.cancel(&run),
        Err(err) => Err(err),
    };
    if let Err(err) = allowed {
        return run_error(&err);
    }
    match state.runs.cancel(&id, request.reason.as_deref()).await {
        Ok(run) => Json(run.to_json()).into_response(),
        Err(err) => run_error(&err),
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventsParams {
    from_seq: Option<String>,
    coalesce: Option<String>,
}

/// Where an SSE stream starts: after `Last-Event-ID` if given, else at `fromSeq`, else 1.
fn start_seq(headers: &HeaderMap, params: &EventsParams) -> Result<i64, Problem> {
    if let Some(last) = headers.get("last-event-id") {
        let text = last.to_str().unwrap_or_default().trim();
        return match text.parse::<i64>() {
            Ok(seq) if seq >= 0 => Ok(seq + 1),
            _ => Err(error(
                StatusCode::BAD_REQUEST,
                &format!("Last-Event-ID {text:?} is not a seq (a number from an earlier `id:`)"),
                "BAD_USER_INPUT",
            )),
        };
    }
    match params.from_seq.as_deref() {
        None => Ok(1),
        Some(text) => match text.parse::<i64>() {
            Ok(seq) if seq >= 1 => Ok(seq),
            _ => Err(error(
                StatusCode::BAD_REQUEST,
                &format!("fromSeq {text:?} must be a number, 1 or more"),
                "BAD_USER_INPUT",
            )),
        },
    }
}

pub async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Query(params): Query<EventsParams>,
) -> Response {
    let (session, access) = match runs_session(&state, &headers, &uri).await {
        Ok(caller) => caller,
        Err(refusal) => return refusal,
    };
    let from_seq = match start_seq(&headers, &params) {
        Ok(seq) => seq,
        Err(problem) => return problem.into_response(),
    };
    let coalesce = match params.coalesce.as_deref() {
        None | Some("false" | "0") => false,
        Some("true" | "1" | "") => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("coalesce {other:?} must be true or false"),
                "BAD_USER_INPUT",
            )
            .into_response();
        }
    };
    let slot = match state.sse_slot() {
        Ok(slot) => slot,
        Err(refusal) => return *refusal,
    };
    if let Err(err) = readable(&state, &access, &id).await {
        return run_error(&err);
    }
    let follow = Follow {
        from_seq,
        coalesce,
        heartbeat: state.runs.settings().heartbeat,
    };
    let stream = match state.runs.follow(&id, follow).await {
        Ok(stream) => stream,
        Err(err) => return run_error(&err),
    };
    let shutdown = state.shutdown.clone();
    let frames = stream.map(move |item| {
        // The stream holds its place until it is dropped.
        let _ = &slot;
        let frame = match item {
            Ok(Item::Event(e)) => SseEvent::default()
                .id(e.seq.to_string())
                .event(e.event_type.clone())
                .data(e.to_json().to_string()),
            Ok(Item::Heartbeat { seq }) => SseEvent::default().comment(format!("heartbeat {seq}")),
            Err(err) => SseEvent::default()
                .event("error")
                .data(json!({"error": err.to_string(), "code": err.code()}).to_string()),
        };
        Ok::<_, Infallible>(frame)
    });
    // The stream ends when the caller's credential expires, with an error event saying so.
    let frames = super::until_expiry(frames, session.remaining(), || {
        Ok(SseEvent::default().event("error").data(
            json!({"error": "the credential has expired: reconnect with a fresh one", "code": "UNAUTHENTICATED"})
                .to_string(),
        ))
    })
    .take_until(shutdown.cancelled_owned());
    // A reconnecting browser waits 1 s; the first frame tells it.
    let first = futures::stream::once(async {
        Ok(SseEvent::default().retry(std::time::Duration::from_secs(1)))
    });
    let mut response = Sse::new(first.chain(frames)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    // nginx and similar proxies buffer responses unless told not to.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
