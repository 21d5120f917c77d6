//! What every request passes before its handler: the `Origin` check (with CORS for the origins
//! allowed) and the request timeout.
//!
//! Browsers send `Origin` on WebSocket upgrades and on cross-site requests; other clients send
//! none and pass. A page on another site may use the API only if its origin is in
//! `--allowed-origins` (by default none: only pages this server serves, such as GraphiQL),
//! which also refuses cross-site WebSocket hijacking with `403`. Allowed origins get CORS
//! answers (preflights included).

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::limits::Limit;

/// Which browser origins may use the API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// Only the server's own (the `Origin` names the `Host` the request was sent to).
    #[default]
    SameOrigin,
    /// These, and the server's own.
    List(Vec<String>),
    /// Any (`*`).
    Any,
}

impl AllowedOrigins {
    /// From `--allowed-origins` values: origins like `https://app.example.com`, or `*`.
    pub fn parse(values: &[String]) -> Result<AllowedOrigins, String> {
        let values: Vec<&str> = values
            .iter()
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .collect();
        if values.contains(&"*") {
            return Ok(AllowedOrigins::Any);
        }
        if values.is_empty() {
            return Ok(AllowedOrigins::SameOrigin);
        }
        let mut list = Vec::new();
        for value in values {
            let valid = value == "null"
                || ((value.starts_with("http://") || value.starts_with("https://"))
                    && !value.trim_end_matches('/').contains(['?', '#'])
                    && value.matches('/').count() == 2);
            if !valid {
                return Err(format!(
                    "{value:?} is not an origin: give scheme://host[:port] (no path), e.g. https://app.example.com, or *"
                ));
            }
            list.push(value.to_ascii_lowercase());
        }
        Ok(AllowedOrigins::List(list))
    }

    fn allows(&self, origin: &str, headers: &HeaderMap) -> bool {
        let same = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|host| {
                origin
                    .split_once("://")
                    .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
            });
        match self {
            AllowedOrigins::Any => true,
            AllowedOrigins::SameOrigin => same,
            AllowedOrigins::List(list) => {
                same || list.iter().any(|o| o.eq_ignore_ascii_case(origin))
            }
        }
    }
}

/// Headers a browser may send cross-site (answered to preflights).
const ALLOWED_HEADERS: &str =
    "authorization, content-type, accept, last-event-id, x-hasura-role, x-hasura-admin-secret";

/// Refuses requests from origins that are not allowed; answers preflights; marks responses
/// to allowed cross-site origins for the browser.
pub(crate) async fn origins(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(origin) = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return next.run(request).await;
    };
    if !state
        .http
        .allowed_origins
        .allows(&origin, request.headers())
    {
        state.metrics.limits.count(Limit::Origin);
        tracing::info!(origin = %origin, path = %request.uri().path(), "request from an origin that is not allowed");
        return super::json_response(
            StatusCode::FORBIDDEN,
            &serde_json::json!({ "errors": [{
                "message": format!("origin {origin} may not use this server: add it to --allowed-origins (VIEWCAST_ALLOWED_ORIGINS)"),
                "extensions": { "code": "FORBIDDEN_ORIGIN" },
            }]}),
        );
    }
    let Ok(origin) = HeaderValue::from_str(&origin) else {
        return next.run(request).await;
    };
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOWED_HEADERS),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        response
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    response
}

/// Ends a request whose handler has not answered in time (`408`). Streams (SSE, WebSocket)
/// are answered at once and run past it.
pub(crate) async fn timeout(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let limit: Duration = state.http.request_timeout;
    if let Ok(response) = tokio::time::timeout(limit, next.run(request)).await {
        return response;
    }
    state.metrics.limits.count(Limit::RequestTimeout);
    super::json_response(
        StatusCode::REQUEST_TIMEOUT,
        &serde_json::json!({ "errors": [{
            "message": format!("the request took longer than {} s (--http-request-timeout)", limit.as_secs_f64()),
            "extensions": { "code": "REQUEST_TIMEOUT" },
        }]}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(value).expect("header"));
        headers
    }

    #[test]
    fn the_servers_own_origin_is_always_allowed_and_others_only_when_listed() {
        let same = AllowedOrigins::SameOrigin;
        assert!(same.allows("http://127.0.0.1:4000", &host("127.0.0.1:4000")));
        assert!(same.allows("https://API.example.com", &host("api.example.com")));
        assert!(!same.allows("http://evil.example", &host("127.0.0.1:4000")));
        assert!(!same.allows("null", &host("127.0.0.1:4000")));
        let list = AllowedOrigins::parse(&["https://app.example.com".into()]).expect("valid");
        assert!(list.allows("https://app.example.com", &host("api.example.com")));
        assert!(!list.allows("https://app.example.com.evil", &host("api.example.com")));
        assert!(!list.allows("http://app.example.com", &host("api.example.com")));
        let any = AllowedOrigins::parse(&["*".into()]).expect("valid");
        assert!(any.allows("http://anything", &host("x")));
    }

    #[test]
    fn values_that_are_not_origins_are_refused() {
        for bad in ["app.example.com", "https://app.example.com/path", "ftp://x"] {
            assert!(AllowedOrigins::parse(&[bad.into()]).is_err(), "{bad}");
        }
        assert_eq!(AllowedOrigins::parse(&[]), Ok(AllowedOrigins::SameOrigin));
    }
}
