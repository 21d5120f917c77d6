//! Wiring: configuration → hubs and feeds → schema → HTTP server, and ordered shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::change::FeedEvent;
use crate::config::{Backend, Config};
use crate::feed::materialize::MzFeedSettings;
use crate::feed::postgres::{PgFeed, PgFeedSettings};
use crate::feed::risingwave::RwFeedSettings;
use crate::http::{AppState, HttpSettings, WsSettings};
use crate::hub::{Hub, HubLimits, Hubs, Starter};
use crate::telemetry::Metrics;

/// How to run a server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    /// PostgreSQL URL for `postgres` sources.
    pub database_url: Option<String>,
    /// Materialize URL for `materialize` sources.
    pub materialize_url: Option<String>,
    /// RisingWave URL for `risingwave` sources.
    pub risingwave_url: Option<String>,
    /// PostgreSQL URL of the store for triggers and runs (default: `database_url`).
    pub store_url: Option<String>,
    pub triggers: crate::trigger::TriggerSettings,
    pub runs: crate::run::RunSettings,
    /// The URL workers reach this server at (default: from the address it listens on).
    pub public_url: Option<String>,
    /// Names this server's replication slots (several servers on one database need distinct ones).
    pub instance: String,
    pub apply_setup: bool,
    /// Workers of `http` run kinds may be at loopback and private addresses.
    pub allow_private_workers: bool,
    pub ws: WsSettings,
    pub http: HttpSettings,
    /// How requests are authenticated (nothing configured: everyone is the admin).
    pub auth: crate::auth::AuthSettings,
    pub hub_limits: HubLimits,
    pub graphql: crate::limits::GraphqlLimits,
    pub shutdown_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            host: "127.0.0.1".into(),
            port: 4000,
            database_url: None,
            materialize_url: None,
            risingwave_url: None,
            store_url: None,
            triggers: crate::trigger::TriggerSettings::default(),
            runs: crate::run::RunSettings::default(),
            public_url: None,
            instance: "default".into(),
            apply_setup: false,
            allow_private_workers: false,
            ws: WsSettings::default(),
            http: HttpSettings::default(),
            auth: crate::auth::AuthSettings::default(),
            hub_limits: HubLimits::default(),
            graphql: crate::limits::GraphqlLimits::default(),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

impl ServeOptions {
    /// Where webhooks may go.
    pub fn webhook_egress(&self) -> crate::egress::Egress {
        crate::egress::Egress {
            allow_private: self.triggers.allow_private_targets,
            lookup: self.triggers.lookup.clone(),
        }
    }

    /// Where the workers of `http` run kinds may be.
    pub fn worker_egress(&self) -> crate::egress::Egress {
        crate::egress::Egress {
            allow_private: self.allow_private_workers,
            lookup: self.triggers.lookup.clone(),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot build the GraphQL schema: {0}")]
    Schema(String),
    #[error("authentication: {0}")]
    Auth(String),
    #[error("trigger {name} of source {source_name}: {reason}")]
    DeclaredTrigger {
        source_name: String,
        name: String,
        reason: String,
    },
    #[error("run kind {kind}: its worker {reason}")]
    DeclaredWorker { kind: String, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    hubs: Arc<Hubs>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    timeout: Duration,
    /// Kept until the server is dropped (its feeds run there).
    _feeds: FeedRuntime,
}

/// The runtime change feeds run on: one thread of its own, so reading the upstream and
/// applying batches never waits behind the connections' writers on the serving runtime (whose
/// threads a burst of fan-out keeps busy), and the kernel wakes it as soon as data arrives.
struct FeedRuntime(Option<tokio::runtime::Runtime>);

impl FeedRuntime {
    fn new() -> FeedRuntime {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("viewcast-feeds")
            .enable_all()
            .build()
            .expect("a tokio runtime for the feeds");
        FeedRuntime(Some(runtime))
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.0
            .as_ref()
            .map(|r| r.handle().clone())
            .expect("the feed runtime lives as long as the server")
    }
}

impl Drop for FeedRuntime {
    fn drop(&mut self) {
        // Dropping a runtime would block; the server may be dropped inside async code.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The webhooks of triggers declared in schema.yaml may not reach internal addresses (unless
/// allowed): refused at start-up. A name that does not resolve yet is only a warning (every
/// request checks again).
async fn check_declared_targets(
    config: &Config,
    egress: &crate::egress::Egress,
) -> Result<(), ServerError> {
    for declared in &config.triggers {
        let webhook = declared.input["webhook"].as_str().unwrap_or_default();
        match crate::trigger::check_target(webhook, egress).await {
            Ok(_) => {}
            Err(err @ crate::trigger::TargetError::Resolve { .. }) => {
                tracing::warn!(source = %declared.source, trigger = %declared.name, error = %err, "a declared trigger's webhook does not resolve yet");
            }
            Err(err) => {
                return Err(ServerError::DeclaredTrigger {
                    source_name: declared.source.clone(),
                    name: declared.name.clone(),
                    reason: err.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// The workers of `http` run kinds (declared in schema.yaml) may not be at internal addresses
/// (unless allowed): refused at start-up, as declared webhooks are.
async fn check_declared_workers(
    config: &Config,
    egress: &crate::egress::Egress,
) -> Result<(), ServerError> {
    for kind in config.run_kinds.iter().flatten() {
        let crate::config::Executor::Http { url, .. } = &kind.executor else {
            continue;
        };
        let Ok(target) = crate::trigger::parse_target(url) else {
            continue;
        };
        match egress.resolve(&target.host).await {
            Ok(_) => {}
            Err(err @ crate::egress::EgressError::Resolve { .. }) => {
                tracing::warn!(kind = %kind.name, error = %err, "a run kind's worker does not resolve yet");
            }
            Err(err) => {
                return Err(ServerError::DeclaredWorker {
                    kind: kind.name.clone(),
                    reason: format!("{err} (--worker-allow-private)"),
                });
            }
        }
    }
    Ok(())
}

impl Server {
    /// Starts feeds (eager sources), binds and serves. Returns once the socket is listening.
    pub async fn start(config: Config, options: ServeOptions) -> Result<Server, ServerError> {
        check_declared_targets(&config, &options.webhook_egress()).await?;
        check_declared_workers(&config, &options.worker_egress()).await?;
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let metrics = Arc::new(Metrics::default());
        let feeds = FeedRuntime::new();
        let starter = feed_starter(&options, shutdown.clone(), tasks.clone(), feeds.handle());
        let hubs = Hubs::new(&config, options.hub_limits, &metrics, starter);
        let connector = crate::store::Connector::start(
            options
                .store_url
                .clone()
                .or_else(|| options.database_url.clone()),
            shutdown.clone(),
        );
        let triggers = crate::trigger::Triggers::start(
            Arc::new(config.clone()),
            crate::trigger::TriggerSettings {
                instance: options.instance.clone(),
                ..options.triggers.clone()
            },
            connector.clone(),
            Some(hubs.clone()),
            metrics.limits.clone(),
            shutdown.clone(),
            tasks.clone(),
        );
        let runs = crate::run::Runs::with(connector.clone(), options.runs.clone())
            .with_kinds(config.run_kinds.clone())
            .with_metrics(metrics.runs.clone())
            .with_rejections(metrics.limits.clone());
        runs.spawn(&shutdown, &tasks);
        let services = crate::schema::Services {
            hubs: Some(hubs.clone()),
            triggers: Some(triggers.clone()),
            runs: Some(runs.clone()),
            rejections: Some(metrics.limits.clone()),
        };
        let schemas = crate::schema::Schemas::build(&config, services, &options.graphql)
            .map_err(|e| ServerError::Schema(e.to_string()))?;
        let auth = start_auth(&options, &config).await?;
        let addr = format!("{}:{}", options.host, options.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr: addr.clone(),
                source,
            })?;
        let local = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        let orchestrator = Arc::new(crate::run::executor::Orchestrator::new(
            runs.clone(),
            options.instance.clone(),
            &public_url(&options, local),
            options.worker_egress(),
        ));
        tasks.spawn(orchestrator.run(shutdown.clone(), tasks.clone()));
        let state = AppState {
            schemas: Arc::new(schemas),
            auth,
            hubs: hubs.clone(),
            triggers,
            runs,
            metrics: metrics.clone(),
            ws: options.ws,
            http: options.http.clone(),
            sse_streams: Arc::default(),
            graphql: options.graphql,
            cost_model: Arc::new(crate::schema::cost_model(&config, &options.graphql)),
            shutdown: shutdown.clone(),
        };
        let app = crate::http::router(state);
        tasks.spawn(
            crate::http::serve::serve(
                listener,
                app,
                options.http.clone(),
                metrics.clone(),
                shutdown.clone(),
                tasks.clone(),
            )
            .instrument(tracing::info_span!("http")),
        );
        tracing::info!(addr = %local, "viewcast listening");
        Ok(Server {
            addr: local,
            hubs,
            metrics,
            shutdown,
            tasks,
            timeout: options.shutdown_timeout,
            _feeds: feeds,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn hubs(&self) -> &Arc<Hubs> {
        &self.hubs
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stops accepting, closes client connections (1001), stops feeds (dropping their
    /// replication slots) and waits for it all, up to the shutdown timeout.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(self.timeout, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = self.tasks.len(),
                "shutdown deadline passed with tasks still running"
            );
        }
    }
}

/// The URL workers reach this server at: `--public-url`, else the address it listens on
/// (loopback for an unspecified one).
fn public_url(options: &ServeOptions, local: SocketAddr) -> String {
    options.public_url.clone().unwrap_or_else(|| {
        let host = if local.ip().is_unspecified() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            local.ip()
        };
        format!("http://{}", SocketAddr::new(host, local.port()))
    })
}

/// The authenticator (its JWKS fetched), with the API keys of `schema.yaml`; with none
/// configured, a warning that everyone has full access.
async fn start_auth(
    options: &ServeOptions,
    config: &Config,
) -> Result<crate::auth::Auth, ServerError> {
    let mut settings = options.auth.clone();
    settings.api_keys.extend(config.api_keys.iter().cloned());
    let auth = crate::auth::Auth::new(settings).map_err(ServerError::Auth)?;
    if auth.is_on() {
        auth.prefetch().await;
    } else if config.permissions.is_empty() {
        tracing::warn!(
            "no authentication is configured: anyone who can reach this server has full access (see --jwt-secret, --jwks-url, --admin-secret)"
        );
    } else {
        tracing::warn!(
            "schema.yaml has permissions, but no authentication is configured: they have no effect, and anyone who can reach this server has full access (see --jwt-secret, --jwks-url, --admin-secret)"
        );
    }
    Ok(auth)
}

/// Spawns a hub's feed according to its backend.
fn feed_starter(
    options: &ServeOptions,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    runtime: tokio::runtime::Handle,
) -> Starter {
    let pg = options.database_url.as_ref().map(|url| {
        Arc::new(PgFeedSettings {
            url: url.clone(),
            prefix: "viewcast".into(),
            instance: options.instance.clone(),
            apply_setup: options.apply_setup,
        })
    });
    let rw = options
        .risingwave_url
        .as_ref()
        .map(|url| Arc::new(RwFeedSettings { url: url.clone() }));
    let mz = options
        .materialize_url
        .as_ref()
        .map(|url| Arc::new(MzFeedSettings { url: url.clone() }));
    // One feed for every postgres source: started with the first of them.
    let pg_feed: std::sync::Mutex<Option<PgFeed>> = std::sync::Mutex::new(None);
    Arc::new(move |hub: Arc<Hub>| {
        let source = hub.source().clone();
        let span =
            tracing::info_span!("feed", source = %source.name, backend = source.backend.as_str());
        match (source.backend, &pg) {
            (Backend::Postgres, Some(settings)) => {
                let mut feed = pg_feed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let feed = feed.get_or_insert_with(|| {
                    let (feed, task) = PgFeed::new(settings.clone(), shutdown.clone());
                    let span = tracing::info_span!("feed", backend = "postgres");
                    runtime.spawn(tasks.track_future(task.instrument(span)));
                    feed
                });
                feed.add(hub);
            }
            (Backend::Postgres, None) => hub.apply(FeedEvent::Down {
                reason: "no PostgreSQL URL: set DATABASE_URL or pass --database-url".into(),
                permanent: true,
            }),
            (Backend::Materialize, _) => match &mz {
                Some(settings) => {
                    runtime.spawn(
                        tasks.track_future(
                            crate::feed::materialize::run(hub, settings.clone(), shutdown.clone())
                                .instrument(span),
                        ),
                    );
                }
                None => hub.apply(FeedEvent::Down {
                    reason: "no Materialize URL: set MATERIALIZE_URL or pass --materialize-url"
                        .into(),
                    permanent: true,
                }),
            },
            (Backend::RisingWave, _) => match &rw {
                Some(settings) => {
                    runtime.spawn(
                        tasks.track_future(
                            crate::feed::risingwave::run(hub, settings.clone(), shutdown.clone())
                                .instrument(span),
                        ),
                    );
                }
                None => hub.apply(FeedEvent::Down {
                    reason: "no RisingWave URL: set RISINGWAVE_URL or pass --risingwave-url".into(),
                    permanent: true,
                }),
            },
        }
    })
}
