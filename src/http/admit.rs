//! Admission of GraphQL requests: every transport (POST, GET, graphql-sse, both WebSocket
//! protocols) passes each request through [`admit`] before async-graphql parses it, so no
//! document reaches the parser, and no operation reaches validation, beyond the limits.

use async_graphql::ServerError;
use axum::http::StatusCode;

use super::AppState;
use crate::limits::{self, DocumentError};

/// A request refused before it ran: the error to send, and the HTTP status it gets.
pub(crate) struct Refusal {
    pub status: StatusCode,
    pub error: Box<ServerError>,
}

impl Refusal {
    pub fn new(status: StatusCode, message: impl Into<String>, code: &'static str) -> Refusal {
        let mut error = ServerError::new(message, None);
        error
            .extensions
            .get_or_insert_with(Default::default)
            .set("code", code);
        Refusal {
            status,
            error: Box::new(error),
        }
    }

    /// The errors as a GraphQL response body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "errors": [&self.error] })
    }
}

impl From<DocumentError> for Refusal {
    fn from(err: DocumentError) -> Refusal {
        let status = match err {
            DocumentError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        Refusal::new(status, err.to_string(), err.code())
    }
}

/// Checks `request` against the GraphQL limits and parses it (once: the executor reuses the
/// parsed document). A document that does not parse is let through: the executor reports it
/// as usual (`GRAPHQL_PARSE_FAILED`).
pub(crate) fn admit(state: &AppState, request: &mut async_graphql::Request) -> Result<(), Refusal> {
    let checked = check(state, request);
    if let Err(err) = &checked
        && let Some(limit) = err.limit()
    {
        state.metrics.limits.count(limit);
    }
    Ok(checked?)
}

fn check(state: &AppState, request: &mut async_graphql::Request) -> Result<(), DocumentError> {
    limits::check_text(&request.query, &state.graphql)?;
    limits::check_variables(&request.variables, &state.graphql)?;
    if let Ok(document) = async_graphql::parser::parse_query(&request.query) {
        limits::check_operations(
            &document,
            &request.variables,
            &state.cost_model,
            &state.graphql,
        )?;
        request.set_parsed_query(document);
    }
    Ok(())
}

/// Whether the (admitted) request's document has an operation of type `ty`.
pub(crate) fn has_operation(
    request: &mut async_graphql::Request,
    ty: async_graphql::parser::types::OperationType,
) -> bool {
    request
        .parsed_query()
        .is_ok_and(|doc| doc.operations.iter().any(|(_, op)| op.node.ty == ty))
}
