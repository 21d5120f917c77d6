//! Command-line interface: `serve`, `check`, `demo`. Every flag has an environment variable.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::feed::postgres::{PgFeedSettings, setup_sql};
use crate::server::{ServeOptions, Server};

/// Live GraphQL API over the views of a streaming database.
///
/// viewcast reads a schema.yaml naming sources (tables or views, their primary keys and typed
/// columns), generates a GraphQL schema from it and serves, on /graphql, one-shot queries and
/// subscriptions (a snapshot, then row changes, with Hasura-style `where` filters) over
/// WebSocket (graphql-transport-ws and legacy graphql-ws) for Apollo, urql, graphql-ws and
/// GraphiQL. /health, /ready and /metrics serve operators.
#[derive(Debug, Parser)]
#[command(name = "viewcast", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter (tracing env-filter syntax, e.g. `info` or `viewcast=debug,info`).
    #[arg(long, global = true, env = "VIEWCAST_LOG", default_value = "info")]
    pub log: String,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "VIEWCAST_LOG_JSON")]
    pub log_json: bool,
}

// Doc comments here are the --help text users read, not rustdoc: no Markdown backticks.
#[allow(clippy::doc_markdown)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the GraphQL API for the sources in a schema.yaml.
    Serve(Box<ServeArgs>),
    /// Validate a schema.yaml and print the GraphQL schema (SDL) it generates.
    Check(CheckArgs),
    /// Run a self-contained demo: a private PostgreSQL, a live trading dataset and the server.
    Demo(DemoArgs),
    /// Write a schema.yaml for views or tables of a database, from its catalog.
    ///
    /// Example: viewcast introspect --backend materialize live_pnl trades
    ///   --primary-key live_pnl=instrument_id --primary-key trades=id
    ///   --enum side=buy,sell --enum-column trades.side=side --output schema.yaml
    Introspect(IntrospectArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The schema.yaml to serve.
    #[arg(long, short, env = "VIEWCAST_CONFIG", default_value = "schema.yaml")]
    pub config: PathBuf,
    /// PostgreSQL URL for `backend: postgres` sources (postgres://user:password@host:port/db).
    /// Every database URL takes libpq's TLS settings: ?sslmode=verify-full&sslrootcert=ca.pem
    /// (or system), sslcert and sslkey, or PGSSLMODE, PGSSLROOTCERT, PGSSLCERT, PGSSLKEY.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Materialize URL for `backend: materialize` sources
    /// (`postgres://materialize@host:6875/materialize`).
    #[arg(long, env = "MATERIALIZE_URL", hide_env_values = true)]
    pub materialize_url: Option<String>,
    /// RisingWave URL for `backend: risingwave` sources (`postgres://root@host:4566/dev`).
    #[arg(long, env = "RISINGWAVE_URL", hide_env_values = true)]
    pub risingwave_url: Option<String>,
    /// PostgreSQL database viewcast keeps triggers, deliveries and runs in (default:
    /// `DATABASE_URL`).
    #[arg(long, env = "VIEWCAST_STORE_URL", hide_env_values = true)]
    pub store_url: Option<String>,
    /// Let webhooks reach loopback and private addresses (refused by default).
    #[arg(long, env = "VIEWCAST_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: bool,
    /// Let the workers of http run kinds be at loopback and private addresses (refused by
    /// default, as webhooks are).
    #[arg(long, env = "VIEWCAST_WORKER_ALLOW_PRIVATE")]
    pub worker_allow_private: bool,
    /// Secrets that sign webhooks (Standard Webhooks: `whsec_<base64>`, or any text); give
    /// several, comma-separated, while rotating: each delivery carries one signature per secret.
    #[arg(
        long = "webhook-secret",
        env = "VIEWCAST_WEBHOOK_SECRETS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub webhook_secrets: Vec<String>,
    /// Seconds delivered webhook events (and their attempts) are kept for the API before they
    /// are deleted; 0 keeps them forever. Dead ones are kept until redelivered.
    #[arg(long, env = "VIEWCAST_DELIVERY_RETENTION", default_value_t = 7 * 86_400)]
    pub delivery_retention: u64,
    /// The URL workers of `http` run kinds reach this server at (sent with each run as
    /// `eventsUrl`); default: http://<host>:<port> as listened on (127.0.0.1 for 0.0.0.0).
    #[arg(long, env = "VIEWCAST_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Seconds without events after which run subscribers (GraphQL and SSE) get a heartbeat.
    #[arg(long, env = "VIEWCAST_RUN_HEARTBEAT", default_value_t = 15)]
    pub run_heartbeat: u64,
    /// Seconds after which ended runs are deleted with their events; 0 keeps them forever.
    #[arg(long, env = "VIEWCAST_RUN_RETENTION", default_value_t = 0)]
    pub run_retention: u64,
    /// Webhook requests in flight at once, across triggers.
    #[arg(long, env = "VIEWCAST_WEBHOOK_CONCURRENCY", default_value_t = 256)]
    pub webhook_concurrency: usize,
    /// Address to listen on.
    #[arg(long, env = "VIEWCAST_HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, short, env = "VIEWCAST_PORT", default_value_t = 4000)]
    pub port: u16,
    /// Name of this server in replication slot names; give each server on one database its own.
    #[arg(long, env = "VIEWCAST_INSTANCE", default_value = "default")]
    pub instance: String,
    /// Create missing publications and fix replica identities instead of reporting them.
    #[arg(long, env = "VIEWCAST_APPLY_SETUP")]
    pub apply_setup: bool,
    /// Seconds a WebSocket client has to send `connection_init`.
    #[arg(long, env = "VIEWCAST_WS_INIT_TIMEOUT", default_value_t = 3)]
    pub ws_init_timeout: u64,
    /// Seconds between server keep-alives on WebSockets.
    #[arg(long, env = "VIEWCAST_WS_KEEPALIVE", default_value_t = 12)]
    pub ws_keepalive: u64,
    /// Most concurrent operations on one WebSocket connection.
    #[arg(long, env = "VIEWCAST_WS_MAX_OPERATIONS", default_value_t = 200)]
    pub ws_max_operations: usize,
    /// Row changes each source keeps for subscribers that fall behind or resume with `after`
    /// (the history's bound: it holds the changed rows, old and new).
    #[arg(long, env = "VIEWCAST_HISTORY_CHANGES", default_value_t = 262_144)]
    pub history_changes: usize,
    /// Most batches (upstream transactions) in that history; by default as many as changes,
    /// so single-row commits get the whole history too.
    #[arg(long, env = "VIEWCAST_HISTORY_BATCHES", default_value_t = 262_144)]
    pub history_batches: usize,
    /// Seconds to wait for connections and feeds to stop on shutdown.
    #[arg(long, env = "VIEWCAST_SHUTDOWN_TIMEOUT", default_value_t = 10)]
    pub shutdown_timeout: u64,
    /// Browser origins whose pages may use this server (`https://app.example.com`, no path),
    /// comma-separated, or * for any; by default only pages this server serves. Requests and
    /// WebSocket upgrades from other origins are refused with 403; allowed ones get CORS
    /// answers.
    #[arg(long, env = "VIEWCAST_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Who may use the server. Nothing configured: everyone has full access (a warning says so).
/// Tokens follow Hasura's conventions, so an identity provider set up for Hasura works as is.
#[allow(clippy::doc_markdown)]
#[derive(Debug, Args)]
#[command(next_help_heading = "Authentication")]
pub struct AuthArgs {
    /// Verify JWTs with this shared secret (HS256, HS384, HS512; at least 32 bytes).
    #[arg(
        long,
        env = "VIEWCAST_JWT_SECRET",
        hide_env_values = true,
        group = "jwt_key"
    )]
    pub jwt_secret: Option<String>,
    /// Verify JWTs with the public key in this PEM file (RS*, PS*, ES256/384, EdDSA).
    #[arg(long, env = "VIEWCAST_JWT_PUBLIC_KEY", group = "jwt_key")]
    pub jwt_public_key: Option<PathBuf>,
    /// Verify JWTs with the keys of this JWKS URL (cached as it says; fetched again for an
    /// unknown kid, so keys rotate without a restart).
    #[arg(long, env = "VIEWCAST_JWKS_URL", group = "jwt_key")]
    pub jwks_url: Option<String>,
    /// The issuer (iss) tokens must have.
    #[arg(long, env = "VIEWCAST_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Audiences (aud) a token must have one of, comma-separated.
    #[arg(long, env = "VIEWCAST_JWT_AUDIENCE", value_delimiter = ',')]
    pub jwt_audience: Vec<String>,
    /// Seconds of clock skew allowed on exp and nbf.
    #[arg(long, env = "VIEWCAST_JWT_LEEWAY", default_value_t = 30)]
    pub jwt_leeway: u64,
    /// The claim holding Hasura's claims object.
    #[arg(
        long,
        env = "VIEWCAST_JWT_CLAIMS_NAMESPACE",
        default_value = "https://hasura.io/jwt/claims"
    )]
    pub jwt_claims_namespace: String,
    /// A JSON path to the claims object instead (e.g. $.app.hasura).
    #[arg(long, env = "VIEWCAST_JWT_CLAIMS_NAMESPACE_PATH")]
    pub jwt_claims_namespace_path: Option<String>,
    /// A claims map instead (JSON, as Hasura's): each x-hasura-* claim a literal or
    /// {"path": "$.…", "default": …}.
    #[arg(long, env = "VIEWCAST_JWT_CLAIMS_MAP")]
    pub jwt_claims_map: Option<String>,
    /// The admin secret (x-hasura-admin-secret): full access.
    #[arg(long, env = "VIEWCAST_ADMIN_SECRET", hide_env_values = true)]
    pub admin_secret: Option<String>,
    /// The role of requests without credentials (none: they are refused).
    #[arg(long, env = "VIEWCAST_UNAUTHENTICATED_ROLE")]
    pub unauthenticated_role: Option<String>,
    /// A bearer token /metrics asks for (none: /metrics is open).
    #[arg(long, env = "VIEWCAST_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
}

impl AuthArgs {
    pub fn settings(&self) -> anyhow::Result<crate::auth::AuthSettings> {
        use crate::auth::{ClaimsSource, JwtSettings, KeySource};
        let key = match (&self.jwt_secret, &self.jwt_public_key, &self.jwks_url) {
            (Some(secret), _, _) => Some(KeySource::Secret(secret.clone())),
            (_, Some(path), _) => Some(KeySource::Pem(
                std::fs::read_to_string(path)
                    .with_context(|| format!("--jwt-public-key {}", path.display()))?,
            )),
            (_, _, Some(url)) => Some(KeySource::Jwks(url.clone())),
            _ => None,
        };
        let claims = match (&self.jwt_claims_map, &self.jwt_claims_namespace_path) {
            (Some(map), _) => match serde_json::from_str(map) {
                Ok(serde_json::Value::Object(map)) => ClaimsSource::Map(map),
                _ => anyhow::bail!("--jwt-claims-map must be a JSON object"),
            },
            (None, Some(path)) => ClaimsSource::NamespacePath(path.clone()),
            (None, None) => ClaimsSource::Namespace(self.jwt_claims_namespace.clone()),
        };
        Ok(crate::auth::AuthSettings {
            jwt: key.map(|key| JwtSettings {
                key,
                checks: crate::auth::Checks {
                    issuer: self.jwt_issuer.clone(),
                    audience: self.jwt_audience.clone(),
                    leeway: Duration::from_secs(self.jwt_leeway),
                },
                claims,
            }),
            admin_secret: self.admin_secret.clone(),
            unauthenticated_role: self.unauthenticated_role.clone(),
            metrics_token: self.metrics_token.clone(),
            api_keys: Vec::new(),
        })
    }
}

/// What one client may ask: every limit refuses with a coded error and counts in
/// viewcast_limit_rejections_total{limit=…}.
#[allow(clippy::doc_markdown)]
#[derive(Debug, Args)]
#[command(next_help_heading = "Limits")]
pub struct LimitArgs {
    /// Longest GraphQL document accepted, in bytes.
    #[arg(
        long,
        env = "VIEWCAST_GRAPHQL_MAX_DOCUMENT_BYTES",
        default_value_t = 65_536
    )]
    pub graphql_max_document_bytes: usize,
    /// Deepest nesting of brackets in a GraphQL document, and of lists and objects in its
    /// variables (refused before parsing: GRAPHQL_PARSE_FAILED); at most 128, which the
    /// parser's stack holds with room to spare.
    #[arg(long, env = "VIEWCAST_GRAPHQL_MAX_NESTING", default_value_t = 64)]
    pub graphql_max_nesting: usize,
    /// Deepest selection (fields within fields) of an operation.
    #[arg(long, env = "VIEWCAST_GRAPHQL_MAX_DEPTH", default_value_t = 16)]
    pub graphql_max_depth: usize,
    /// Most operations in one batched HTTP request.
    #[arg(long, env = "VIEWCAST_GRAPHQL_MAX_BATCH", default_value_t = 10)]
    pub graphql_max_batch: usize,
    /// Most aliased fields in one operation.
    #[arg(long, env = "VIEWCAST_GRAPHQL_MAX_ALIASES", default_value_t = 30)]
    pub graphql_max_aliases: usize,
    /// Most root fields in one operation.
    #[arg(long, env = "VIEWCAST_GRAPHQL_MAX_ROOT_FIELDS", default_value_t = 30)]
    pub graphql_max_root_fields: usize,
    /// Highest estimated cost of an operation: the values its response can hold, each list
    /// counted at its limit or first argument (or their default).
    #[arg(long, env = "VIEWCAST_GRAPHQL_MAX_COST", default_value_t = 50_000)]
    pub graphql_max_cost: u64,
    /// Rows a one-shot query returns when it gives no limit.
    #[arg(long, env = "VIEWCAST_QUERY_DEFAULT_LIMIT", default_value_t = 1_000)]
    pub query_default_limit: usize,
    /// Highest limit a one-shot query may give.
    #[arg(long, env = "VIEWCAST_QUERY_MAX_LIMIT", default_value_t = 10_000)]
    pub query_max_limit: usize,
    /// Highest offset a one-shot query may give.
    #[arg(long, env = "VIEWCAST_QUERY_MAX_OFFSET", default_value_t = 100_000)]
    pub query_max_offset: usize,
    /// Most conditions in a where argument (columns, operators, _and/_or/_not keys and their
    /// list items).
    #[arg(long, env = "VIEWCAST_FILTER_MAX_NODES", default_value_t = 256)]
    pub filter_max_nodes: usize,
    /// Most values in one _in or _nin list.
    #[arg(long, env = "VIEWCAST_FILTER_MAX_IN", default_value_t = 1_000)]
    pub filter_max_in: usize,
    /// Longest _like/_regex pattern (and their variants), in bytes.
    #[arg(
        long,
        env = "VIEWCAST_FILTER_MAX_PATTERN_BYTES",
        default_value_t = 1_024
    )]
    pub filter_max_pattern_bytes: usize,
    /// Most distinct views (filter and selection) of one source; a subscription that needs
    /// another gets TOO_MANY_VIEWS.
    #[arg(long, env = "VIEWCAST_MAX_VIEWS_PER_SOURCE", default_value_t = 100_000)]
    pub max_views_per_source: usize,
    /// Of those, most whose filter has no top-level _eq on an integer, text, boolean or enum
    /// column: such a view is evaluated on every change of its source (one with the _eq only
    /// on the changes holding its value).
    #[arg(
        long,
        env = "VIEWCAST_MAX_SCANNED_VIEWS_PER_SOURCE",
        default_value_t = 1_000
    )]
    pub max_scanned_views_per_source: usize,
    /// Most distinct filters (per source) the subscriptions of one WebSocket connection use.
    #[arg(long, env = "VIEWCAST_WS_MAX_FILTERS", default_value_t = 100)]
    pub ws_max_filters: usize,
    /// Largest run input, and largest run event (stage, message, counters and data together),
    /// as JSON text in bytes (PAYLOAD_TOO_LARGE).
    #[arg(long, env = "VIEWCAST_RUN_MAX_PAYLOAD_BYTES", default_value_t = 65_536)]
    pub run_max_payload_bytes: usize,
    /// Most events in one append (appendRunEvents, POST /runs/{id}/events).
    #[arg(
        long,
        env = "VIEWCAST_RUN_MAX_EVENTS_PER_APPEND",
        default_value_t = 1_000
    )]
    pub run_max_events_per_append: usize,
    /// Triggers one source may have (LIMIT_EXCEEDED).
    #[arg(long, env = "VIEWCAST_MAX_TRIGGERS_PER_SOURCE", default_value_t = 100)]
    pub max_triggers_per_source: usize,
    /// The most attempts a trigger's retry policy may ask for (1 to 100).
    #[arg(long, env = "VIEWCAST_TRIGGER_MAX_ATTEMPTS", default_value_t = 100)]
    pub trigger_max_attempts: u32,
    /// The longest timeout per webhook attempt a trigger may ask for, in ms (up to 300000).
    #[arg(
        long,
        env = "VIEWCAST_TRIGGER_MAX_TIMEOUT_MS",
        default_value_t = 300_000
    )]
    pub trigger_max_timeout_ms: u64,
    /// Deliveries one redeliver_S_trigger may queue (the width of its id range).
    #[arg(long, env = "VIEWCAST_TRIGGER_MAX_REDELIVER", default_value_t = 1_000)]
    pub trigger_max_redeliver: usize,
    /// Webhook requests in flight to one host at once, so a slow receiver holds no more of
    /// the shared slots (default: a quarter of --webhook-concurrency).
    #[arg(long, env = "VIEWCAST_WEBHOOK_MAX_PER_HOST")]
    pub webhook_max_per_host: Option<usize>,
    /// Largest HTTP request body, in bytes (413 PAYLOAD_TOO_LARGE).
    #[arg(long, env = "VIEWCAST_HTTP_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub http_max_body_bytes: usize,
    /// Seconds a client may take to send a request's headers.
    #[arg(long, env = "VIEWCAST_HTTP_HEADER_TIMEOUT", default_value_t = 10)]
    pub http_header_timeout: u64,
    /// Seconds a request may take until its response starts (408 REQUEST_TIMEOUT); streams
    /// (WebSocket, SSE) run past it.
    #[arg(long, env = "VIEWCAST_HTTP_REQUEST_TIMEOUT", default_value_t = 30)]
    pub http_request_timeout: u64,
    /// Most open connections; more are answered 503 and closed.
    #[arg(long, env = "VIEWCAST_HTTP_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub http_max_connections: usize,
    /// Most open connections from one client address (0: no cap); behind a proxy every
    /// client shares its address, so raise it or set 0 there.
    #[arg(
        long,
        env = "VIEWCAST_HTTP_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 1_000
    )]
    pub http_max_connections_per_address: usize,
    /// Most open Server-Sent Events streams (graphql-sse and runs); more get 503.
    #[arg(long, env = "VIEWCAST_SSE_MAX_STREAMS", default_value_t = 10_000)]
    pub sse_max_streams: usize,
    /// Largest WebSocket message (and frame) in bytes; a larger one closes the connection
    /// with 1009.
    #[arg(long, env = "VIEWCAST_WS_MAX_MESSAGE_BYTES", default_value_t = 1 << 20)]
    pub ws_max_message_bytes: usize,
    /// Seconds a WebSocket client may send nothing, not even a pong to the server's pings,
    /// before the connection is closed (4408).
    #[arg(long, env = "VIEWCAST_WS_IDLE_TIMEOUT", default_value_t = 60)]
    pub ws_idle_timeout: u64,
}

impl LimitArgs {
    pub fn graphql(&self) -> crate::limits::GraphqlLimits {
        crate::limits::GraphqlLimits {
            max_document_bytes: self.graphql_max_document_bytes.max(1),
            max_nesting: self
                .graphql_max_nesting
                .clamp(1, crate::limits::MAX_NESTING),
            max_batch: self.graphql_max_batch.max(1),
            max_aliases: self.graphql_max_aliases,
            max_root_fields: self.graphql_max_root_fields.max(1),
            max_cost: self.graphql_max_cost.max(1),
            max_depth: self.graphql_max_depth.max(1),
            query_default_limit: self
                .query_default_limit
                .clamp(1, self.query_max_limit.max(1)),
            query_max_limit: self.query_max_limit.max(1),
            query_max_offset: self.query_max_offset,
            filter: crate::filter::FilterLimits {
                max_nodes: self.filter_max_nodes.max(1),
                max_in: self.filter_max_in.max(1),
                max_pattern_bytes: self.filter_max_pattern_bytes.max(1),
            },
        }
    }
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The schema.yaml to check.
    #[arg(long, short, env = "VIEWCAST_CONFIG", default_value = "schema.yaml")]
    pub config: PathBuf,
    /// Print the SQL that prepares PostgreSQL for the postgres sources instead of the SDL.
    #[arg(long)]
    pub setup_sql: bool,
    /// Instance name used in replication slot names (as for `serve`).
    #[arg(long, env = "VIEWCAST_INSTANCE", default_value = "default")]
    pub instance: String,
    /// Print the schema this role sees (its permissions in schema.yaml) instead of the admin's.
    #[arg(long, conflicts_with = "setup_sql")]
    pub role: Option<String>,
}

// Doc comments here are the --help text users read, not rustdoc: no Markdown backticks.
#[allow(clippy::doc_markdown)]
#[derive(Debug, Args)]
pub struct IntrospectArgs {
    /// Relations to serve, `[schema.]name` (quote mixed-case names: '"MyView"').
    #[arg(required = true)]
    pub relations: Vec<String>,
    /// The database: materialize, risingwave or postgres.
    #[arg(long, default_value = "materialize", value_parser = ["materialize", "risingwave", "postgres"])]
    pub backend: String,
    /// Its URL (default: MATERIALIZE_URL, RISINGWAVE_URL or DATABASE_URL, by backend).
    #[arg(long, hide_env_values = true)]
    pub url: Option<String>,
    /// A relation's primary key, overriding the catalog (views have none): REL=COL[,COL…].
    #[arg(long = "primary-key", value_name = "REL=COLS")]
    pub primary_keys: Vec<String>,
    /// Declare an enum, values in their order: NAME=V1,V2,…
    #[arg(long = "enum", value_name = "NAME=VALUES")]
    pub enums: Vec<String>,
    /// A column holding an enum's labels: REL.COLUMN=ENUM.
    #[arg(long = "enum-column", value_name = "REL.COL=ENUM")]
    pub enum_columns: Vec<String>,
    /// Map numeric to Float (tycostream's mapping) instead of the exact Numeric.
    #[arg(long)]
    pub numeric_as_float: bool,
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

impl IntrospectArgs {
    /// The request the flags describe, or what is wrong with them.
    pub fn request(&self) -> anyhow::Result<crate::introspect::Request> {
        use anyhow::Context as _;
        let backend = match self.backend.as_str() {
            "postgres" => crate::config::Backend::Postgres,
            "risingwave" => crate::config::Backend::RisingWave,
            _ => crate::config::Backend::Materialize,
        };
        let pair = |flag: &str, value: &str| -> anyhow::Result<(String, String)> {
            let (left, right) = value
                .split_once('=')
                .with_context(|| format!("--{flag} {value:?}: expected LEFT=RIGHT"))?;
            anyhow::ensure!(
                !left.is_empty() && !right.is_empty(),
                "--{flag} {value:?}: both sides of = are needed"
            );
            Ok((left.to_owned(), right.to_owned()))
        };
        let list = |text: &str| text.split(',').map(|v| v.trim().to_owned()).collect();
        let mut request = crate::introspect::Request {
            backend: Some(backend),
            relations: self.relations.clone(),
            numeric_as_float: self.numeric_as_float,
            ..crate::introspect::Request::default()
        };
        for value in &self.primary_keys {
            let (relation, columns) = pair("primary-key", value)?;
            request.primary_keys.insert(relation, list(&columns));
        }
        for value in &self.enums {
            let (name, values) = pair("enum", value)?;
            request.enums.push((name, list(&values)));
        }
        for value in &self.enum_columns {
            let (column, name) = pair("enum-column", value)?;
            request.enum_columns.insert(column, name);
        }
        Ok(request)
    }

    pub fn url(&self) -> anyhow::Result<String> {
        if let Some(url) = &self.url {
            return Ok(url.clone());
        }
        let var = match self.backend.as_str() {
            "postgres" => "DATABASE_URL",
            "risingwave" => "RISINGWAVE_URL",
            _ => "MATERIALIZE_URL",
        };
        std::env::var(var).map_err(|_| anyhow::anyhow!("no database URL: pass --url or set {var}"))
    }
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address to listen on.
    #[arg(long, env = "VIEWCAST_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on.
    #[arg(long, short, env = "VIEWCAST_PORT", default_value_t = 4000)]
    pub port: u16,
    /// Price ticks per second from the generator.
    #[arg(long, env = "VIEWCAST_DEMO_TICKS", default_value_t = 20)]
    pub ticks_per_second: u32,
    /// Serve everything to everyone, as before auth: no tokens, no admin secret.
    #[arg(long, env = "VIEWCAST_DEMO_NO_AUTH")]
    pub no_auth: bool,
}

impl ServeArgs {
    pub fn options(&self) -> anyhow::Result<ServeOptions> {
        let secrets = self
            .webhook_secrets
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| crate::trigger::Secret::parse(s.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("--webhook-secret / VIEWCAST_WEBHOOK_SECRETS: {e}"))?;
        let mut options = ServeOptions {
            host: self.host.clone(),
            port: self.port,
            database_url: self.database_url.clone(),
            materialize_url: self.materialize_url.clone(),
            risingwave_url: self.risingwave_url.clone(),
            store_url: self.store_url.clone(),
            triggers: crate::trigger::TriggerSettings {
                allow_private_targets: self.webhook_allow_private,
                lookup: std::sync::Arc::new(crate::egress::SystemLookup),
                secrets,
                max_concurrent_deliveries: self.webhook_concurrency.max(1),
                instance: self.instance.clone(),
                delivery_retention: (self.delivery_retention > 0)
                    .then(|| Duration::from_secs(self.delivery_retention)),
                max_per_host: self
                    .limits
                    .webhook_max_per_host
                    .unwrap_or(self.webhook_concurrency / 4)
                    .max(1),
                max_per_source: self.limits.max_triggers_per_source,
                max_redeliver: self.limits.trigger_max_redeliver.max(1),
                max_attempts: self.limits.trigger_max_attempts.clamp(1, 100),
                max_timeout: Duration::from_millis(
                    self.limits.trigger_max_timeout_ms.clamp(1, 300_000),
                ),
            },
            public_url: self.public_url.clone(),
            runs: crate::run::RunSettings {
                heartbeat: Duration::from_secs(self.run_heartbeat.max(1)),
                retention: (self.run_retention > 0)
                    .then(|| Duration::from_secs(self.run_retention)),
                max_payload_bytes: self.limits.run_max_payload_bytes.max(1),
                max_events_per_append: self.limits.run_max_events_per_append.max(1),
            },
            instance: self.instance.clone(),
            apply_setup: self.apply_setup,
            allow_private_workers: self.worker_allow_private,
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout),
            graphql: self.limits.graphql(),
            auth: self.auth.settings()?,
            http: crate::http::HttpSettings {
                max_body_bytes: self.limits.http_max_body_bytes.max(1),
                header_timeout: Duration::from_secs(self.limits.http_header_timeout.max(1)),
                request_timeout: Duration::from_secs(self.limits.http_request_timeout.max(1)),
                max_connections: self.limits.http_max_connections.max(1),
                max_connections_per_address: self.limits.http_max_connections_per_address,
                max_sse_streams: self.limits.sse_max_streams,
                allowed_origins: crate::http::AllowedOrigins::parse(&self.allowed_origins)
                    .map_err(|e| anyhow::anyhow!("--allowed-origins: {e}"))?,
            },
            ..ServeOptions::default()
        };
        options.ws.max_message_bytes = self.limits.ws_max_message_bytes.max(1024);
        options.ws.idle_timeout = Duration::from_secs(self.limits.ws_idle_timeout.max(1));
        options.ws.max_filters = self.limits.ws_max_filters.max(1);
        options.hub_limits.max_views = self.limits.max_views_per_source.max(1);
        options.hub_limits.max_scanned_views = self.limits.max_scanned_views_per_source.max(1);
        options.ws.init_timeout = Duration::from_secs(self.ws_init_timeout);
        options.ws.keepalive = Duration::from_secs(self.ws_keepalive.max(1));
        options.ws.max_operations = self.ws_max_operations;
        options.hub_limits.max_batches = self.history_batches.max(1);
        options.hub_limits.max_changes = self.history_changes.max(1);
        Ok(options)
    }
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    crate::telemetry::init_logging(&cli.log, cli.log_json);
    match cli.command {
        Command::Serve(args) => {
            let config = crate::config::load(&args.config)?;
            for (url, flag) in [
                (&args.database_url, "DATABASE_URL / --database-url"),
                (&args.materialize_url, "MATERIALIZE_URL / --materialize-url"),
                (&args.risingwave_url, "RISINGWAVE_URL / --risingwave-url"),
                (&args.store_url, "VIEWCAST_STORE_URL / --store-url"),
            ] {
                if let Some(url) = url {
                    check_database_url(url, flag)?;
                }
            }
            let server = Server::start(config, args.options()?).await?;
            wait_for_signal().await;
            tracing::info!("shutting down");
            server.shutdown().await;
            Ok(())
        }
        Command::Check(args) => {
            let config = crate::config::load(&args.config)?;
            if args.setup_sql {
                let settings = PgFeedSettings {
                    url: String::new(),
                    prefix: "viewcast".into(),
                    instance: args.instance,
                    apply_setup: false,
                };
                print!("{}", setup_sql(&config, &settings));
            } else {
                let grants = match args.role.as_deref() {
                    None | Some(crate::auth::ADMIN_ROLE) => crate::auth::Grants::Admin,
                    Some(role) => {
                        if config.role(role).is_none() {
                            eprintln!(
                                "role {role:?} has no entry in permissions: it sees nothing but viewer"
                            );
                        }
                        crate::auth::Grants::role(role, config.role(role))
                    }
                };
                let schema = crate::schema::build_for(
                    &config,
                    &grants,
                    crate::schema::Services::default(),
                    &crate::limits::GraphqlLimits::default(),
                )
                .context("the configuration is valid but its GraphQL schema is not")?;
                print!("{}", schema.sdl());
            }
            Ok(())
        }
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Introspect(args) => {
            let request = args.request()?;
            let url = args.url()?;
            let yaml = crate::introspect::introspect(&url, &request).await?;
            match &args.output {
                Some(path) => {
                    std::fs::write(path, &yaml)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!("wrote {}", path.display());
                }
                None => print!("{yaml}"),
            }
            Ok(())
        }
    }
}

/// Refuses a database URL the server could never use (its syntax, its TLS settings and the
/// certificate files they name), before anything starts.
fn check_database_url(url: &str, flag: &str) -> anyhow::Result<()> {
    crate::pgconn::Database::parse(url)
        .map(drop)
        .map_err(|e| anyhow::anyhow!("the database URL ({flag}): {e}"))
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = ctrl_c.await;
            return;
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
