//! What one client may ask of the server: every limit, its default, and the counter of the
//! requests it refused (`viewcast_limit_rejections_total{limit=…}`).
//!
//! `document` holds the checks on GraphQL documents that run before and right after parsing
//! (size, nesting, aliases, root fields, cost). They are pure: no tokio, no I/O. The transports
//! (`http`) and the resolvers (`schema`) apply them; this module never sees a socket.

pub mod document;

use std::sync::atomic::{AtomicU64, Ordering};

pub use document::{CostModel, DocumentError, check_operations, check_text, check_variables};

/// Every limit a request can hit, as it is labelled in `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// A GraphQL document longer than `max_document_bytes`.
    DocumentBytes,
    /// Brackets (selection sets, lists, objects, arguments) or variables nested deeper than
    /// `max_nesting`.
    Nesting,
    /// More operations in one batched HTTP request than `max_batch`.
    Batch,
    /// More aliased fields in an operation than `max_aliases`.
    Aliases,
    /// More root fields in an operation than `max_root_fields`.
    RootFields,
    /// An operation whose estimated cost (values it can return) exceeds `max_cost`.
    Cost,
    /// A `where` argument beyond the filter limits (conditions, `_in` values, pattern size).
    Filter,
    /// A subscription that would add a view to a source with `--max-views-per-source` views.
    Views,
    /// A subscription that would give one connection more than `--ws-max-filters` filters.
    ConnectionFilters,
    /// A one-shot query's `limit` above `query_max_limit`, or `offset` above `query_max_offset`.
    QueryRows,
    /// A run input or event beyond `--run-max-payload-bytes`, or an append beyond
    /// `--run-max-events-per-append`.
    RunPayload,
    /// A trigger beyond `--max-triggers-per-source`.
    Triggers,
    /// A redelivery of more than `--trigger-max-redeliver` deliveries.
    Redeliver,
    /// A trigger asking for more attempts or a longer timeout than the server allows.
    TriggerRetry,
    /// A client that did not send a request's headers within `--http-header-timeout`.
    HeaderTimeout,
    /// A connection beyond `--http-max-connections`.
    Connections,
    /// A connection beyond `--http-max-connections-per-address` from one client address.
    ConnectionsPerAddress,
    /// A request body beyond `--http-max-body-bytes`.
    BodyBytes,
    /// A request whose handler did not answer within `--http-request-timeout`.
    RequestTimeout,
    /// A browser request (or WebSocket upgrade) from an origin that is not allowed.
    Origin,
    /// A Server-Sent Events stream beyond `--sse-max-streams`.
    SseStreams,
    /// A WebSocket message (or frame) beyond `--ws-max-message-bytes`.
    WsMessageBytes,
    /// An operation beyond `--ws-max-operations` on one WebSocket connection.
    WsOperations,
    /// A WebSocket connection that sent nothing (not even a pong) for `--ws-idle-timeout`.
    WsIdle,
}

impl Limit {
    pub const ALL: [Limit; 24] = [
        Limit::DocumentBytes,
        Limit::Nesting,
        Limit::Batch,
        Limit::Aliases,
        Limit::RootFields,
        Limit::Cost,
        Limit::Filter,
        Limit::Views,
        Limit::ConnectionFilters,
        Limit::QueryRows,
        Limit::RunPayload,
        Limit::Triggers,
        Limit::Redeliver,
        Limit::TriggerRetry,
        Limit::HeaderTimeout,
        Limit::Connections,
        Limit::ConnectionsPerAddress,
        Limit::BodyBytes,
        Limit::RequestTimeout,
        Limit::Origin,
        Limit::SseStreams,
        Limit::WsMessageBytes,
        Limit::WsOperations,
        Limit::WsIdle,
    ];

    /// The `limit` label in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Limit::DocumentBytes => "document_bytes",
            Limit::Nesting => "nesting",
            Limit::Batch => "batch",
            Limit::Aliases => "aliases",
            Limit::RootFields => "root_fields",
            Limit::Cost => "cost",
            Limit::Filter => "filter",
            Limit::Views => "views",
            Limit::ConnectionFilters => "connection_filters",
            Limit::QueryRows => "query_rows",
            Limit::RunPayload => "run_payload",
            Limit::Triggers => "triggers",
            Limit::Redeliver => "redeliver",
            Limit::TriggerRetry => "trigger_retry",
            Limit::HeaderTimeout => "header_timeout",
            Limit::Connections => "connections",
            Limit::ConnectionsPerAddress => "connections_per_address",
            Limit::BodyBytes => "body_bytes",
            Limit::RequestTimeout => "request_timeout",
            Limit::Origin => "origin",
            Limit::SseStreams => "sse_streams",
            Limit::WsMessageBytes => "ws_message_bytes",
            Limit::WsOperations => "ws_operations",
            Limit::WsIdle => "ws_idle",
        }
    }

    fn index(self) -> usize {
        Limit::ALL
            .iter()
            .position(|l| *l == self)
            .unwrap_or_default()
    }
}

/// Requests refused per limit, since start.
#[derive(Debug, Default)]
pub struct Rejections([AtomicU64; Limit::ALL.len()]);

impl Rejections {
    pub fn count(&self, limit: Limit) {
        self.0[limit.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, limit: Limit) -> u64 {
        self.0[limit.index()].load(Ordering::Relaxed)
    }
}

/// The distinct filters one connection's subscriptions use (per source), against a cap: each
/// distinct filter is a view its source evaluates on every change, so one client may not take
/// the whole `--max-views-per-source` budget. Cheap to share: a subscription holds a
/// [`FilterTicket`] for as long as it runs.
#[derive(Debug)]
pub struct FilterBudget {
    max: usize,
    // A std Mutex: a map update per subscription start and end, never held across an await.
    used: std::sync::Mutex<std::collections::HashMap<(String, String), usize>>,
}

/// A subscription's use of a filter, given back when it is dropped.
#[derive(Debug)]
pub struct FilterTicket {
    budget: std::sync::Arc<FilterBudget>,
    key: (String, String),
}

impl FilterBudget {
    pub fn new(max: usize) -> std::sync::Arc<FilterBudget> {
        std::sync::Arc::new(FilterBudget {
            max,
            used: std::sync::Mutex::default(),
        })
    }

    /// A ticket for `filter` (canonical text) on `source`: always for one already in use on
    /// this connection, for a new one only below the cap (`None`: over it).
    pub fn acquire(
        self: &std::sync::Arc<Self>,
        source: &str,
        filter: &str,
    ) -> Option<FilterTicket> {
        let key = (source.to_owned(), filter.to_owned());
        let mut used = self
            .used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !used.contains_key(&key) && used.len() >= self.max {
            return None;
        }
        *used.entry(key.clone()).or_default() += 1;
        Some(FilterTicket {
            budget: self.clone(),
            key,
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

impl Drop for FilterTicket {
    fn drop(&mut self) {
        let mut used = self
            .budget
            .used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = used.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                used.remove(&self.key);
            }
        }
    }
}

/// The highest `max_nesting` accepted: async-graphql's parser recurses per level and
/// overflows a 2 MiB thread stack (tokio's) between 256 and 512 levels in a debug build.
pub const MAX_NESTING: usize = 128;

/// The limits on GraphQL requests. Each is a flag of `viewcast serve` (see `cli`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphqlLimits {
    /// Longest accepted document, in bytes.
    pub max_document_bytes: usize,
    /// Deepest nesting of brackets in a document, and of lists and objects in its variables.
    pub max_nesting: usize,
    /// Most operations in one batched HTTP request.
    pub max_batch: usize,
    /// Most aliased fields in one operation.
    pub max_aliases: usize,
    /// Most root fields in one operation.
    pub max_root_fields: usize,
    /// Highest estimated cost of one operation (see [`CostModel`]).
    pub max_cost: u64,
    /// Deepest selection (fields within fields) of one operation.
    pub max_depth: usize,
    /// Rows a one-shot query returns when it gives no `limit`.
    pub query_default_limit: usize,
    /// Highest `limit` a one-shot query may give.
    pub query_max_limit: usize,
    /// Highest `offset` a one-shot query may give.
    pub query_max_offset: usize,
    /// How big a `where` argument may be.
    pub filter: crate::filter::FilterLimits,
}

impl Default for GraphqlLimits {
    fn default() -> Self {
        GraphqlLimits {
            max_document_bytes: 64 * 1024,
            max_nesting: 64,
            max_batch: 10,
            max_aliases: 30,
            max_root_fields: 30,
            max_cost: 50_000,
            max_depth: 16,
            query_default_limit: 1_000,
            query_max_limit: 10_000,
            query_max_offset: 100_000,
            filter: crate::filter::FilterLimits::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_reuses_its_filters_freely_and_adds_new_ones_up_to_the_cap() {
        let budget = FilterBudget::new(2);
        let a = budget.acquire("trades", "{a}").expect("first");
        let a_again = budget.acquire("trades", "{a}").expect("same filter");
        let b = budget.acquire("trades", "{b}").expect("second");
        assert!(budget.acquire("trades", "{c}").is_none(), "over the cap");
        // The same filter on another source is another view.
        assert!(budget.acquire("orders", "{a}").is_none());
        drop(a);
        assert!(
            budget.acquire("trades", "{c}").is_none(),
            "{{a}} is still used"
        );
        drop(a_again);
        let c = budget
            .acquire("trades", "{c}")
            .expect("a place was given back");
        drop((b, c));
    }
}
