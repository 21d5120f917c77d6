//! `viewcast demo`: a private PostgreSQL cluster, a live trading dataset and the server.
//!
//! Everything it starts it also stops: Ctrl-C (or SIGTERM) shuts the server down, stops the
//! generator and the cluster, and removes the cluster's temporary directory.
//!
//! Auth is on as in a real deployment: a JWT secret and an admin secret made up at each start,
//! the `permissions:` of the demo's schema.yaml, and a token for each of its two signed-in
//! roles printed in the banner (a request without one is the `guest` role).

use std::time::Duration;

use anyhow::Context as _;
use rand::Rng as _;
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthSettings, Checks, ClaimsSource, JwtSettings, KeySource};
use crate::cli::DemoArgs;
use crate::pgcluster::{ClusterOptions, PgCluster};
use crate::server::{ServeOptions, Server};

/// The demo's schema.yaml.
pub const SCHEMA_YAML: &str = include_str!("../../examples/demo/schema.yaml");
/// The demo's tables and first rows.
pub const SETUP_SQL: &str = include_str!("../../examples/demo/setup.sql");

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    eprintln!("starting a private PostgreSQL cluster …");
    let cluster = PgCluster::start(ClusterOptions::default())
        .await
        .context("cannot start the demo's PostgreSQL")?;
    let result = serve(&cluster, &args).await;
    eprintln!("stopping PostgreSQL …");
    cluster
        .stop()
        .await
        .context("cannot stop the demo's PostgreSQL")?;
    result
}

async fn serve(cluster: &PgCluster, args: &DemoArgs) -> anyhow::Result<()> {
    let url = cluster.url("postgres");
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    let connection = tokio::spawn(connection);
    client
        .batch_execute(SETUP_SQL)
        .await
        .context("cannot create the demo tables")?;

    let config = crate::config::load_str(
        std::path::Path::new("examples/demo/schema.yaml"),
        SCHEMA_YAML,
    )?;
    let mut options = ServeOptions {
        host: args.host.clone(),
        port: args.port,
        database_url: Some(url.clone()),
        instance: "demo".into(),
        apply_setup: true,
        // A local sandbox: triggers and workers may reach receivers on this machine.
        allow_private_workers: true,
        ..ServeOptions::default()
    };
    options.triggers.allow_private_targets = true;
    let credentials = (!args.no_auth).then(Credentials::new).transpose()?;
    if let Some(credentials) = &credentials {
        options.auth = credentials.settings();
    }
    let server = Server::start(config, options).await?;
    let stop = CancellationToken::new();
    let generator = tokio::spawn(generate(client, args.ticks_per_second.max(1), stop.clone()));
    print_banner(server.addr(), &url, credentials.as_ref());

    crate::cli::wait_for_signal().await;
    eprintln!("\nshutting down …");
    stop.cancel();
    let generated = generator.await;
    server.shutdown().await;
    connection.abort();
    match generated {
        Ok(result) => result,
        Err(err) => Err(err.into()),
    }
}

/// How long the demo's tokens are valid.
const TOKEN_HOURS: u64 = 12;

/// The demo's secrets and tokens, made up at each start.
struct Credentials {
    jwt_secret: String,
    admin_secret: String,
    /// `tess`, role `trader`: the trades and positions of AAPL and MSFT.
    trader: String,
    /// `ana`, role `analyst`: the trades of 500 shares or more, of every symbol, without prices.
    analyst: String,
}

impl Credentials {
    fn new() -> anyhow::Result<Credentials> {
        let jwt_secret = random_hex(32);
        let sign = |user: &str, role: &str, extra: serde_json::Value| {
            let exp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs()
                + TOKEN_HOURS * 3600;
            let mut claims = serde_json::json!({
                "x-hasura-allowed-roles": [role],
                "x-hasura-default-role": role,
                "x-hasura-user-id": user,
            });
            if let (Some(claims), serde_json::Value::Object(extra)) =
                (claims.as_object_mut(), extra)
            {
                claims.extend(extra);
            }
            let token = jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &serde_json::json!({
                    "sub": user,
                    "exp": exp,
                    (crate::auth::HASURA_NAMESPACE): claims,
                }),
                &jsonwebtoken::EncodingKey::from_secret(jwt_secret.as_bytes()),
            )?;
            anyhow::Ok(token)
        };
        Ok(Credentials {
            trader: sign(
                "tess",
                "trader",
                serde_json::json!({"x-hasura-symbols": "{AAPL,MSFT}"}),
            )?,
            analyst: sign("ana", "analyst", serde_json::json!({}))?,
            admin_secret: random_hex(16),
            jwt_secret,
        })
    }

    fn settings(&self) -> AuthSettings {
        AuthSettings {
            jwt: Some(JwtSettings {
                key: KeySource::Secret(self.jwt_secret.clone()),
                checks: Checks {
                    issuer: None,
                    audience: Vec::new(),
                    leeway: Duration::from_secs(60),
                },
                claims: ClaimsSource::default(),
            }),
            admin_secret: Some(self.admin_secret.clone()),
            unauthenticated_role: Some("guest".into()),
            ..AuthSettings::default()
        }
    }
}

fn random_hex(bytes: usize) -> String {
    let mut hex = String::with_capacity(bytes * 2);
    for _ in 0..bytes {
        let _ = std::fmt::Write::write_fmt(&mut hex, format_args!("{:02x}", rand::random::<u8>()));
    }
    hex
}

fn print_banner(addr: std::net::SocketAddr, url: &str, credentials: Option<&Credentials>) {
    println!(
        r#"
viewcast demo is running — live prices, trades and positions in a private PostgreSQL.

  Console (open in a browser)    http://{addr}/console
  GraphiQL (open in a browser)   http://{addr}/graphql
  GraphQL over WebSocket         ws://{addr}/graphql
  Readiness / metrics            http://{addr}/ready   http://{addr}/metrics
  PostgreSQL (write to it!)      psql {url}

Try these in GraphiQL with the trader's token or the admin's secret (below; the analyst
may read trades but not their price, and no positions):

  subscription {{ trades(where: {{side: {{_eq: buy}}, quantity: {{_gte: 500}}}}) {{
      operation data {{ id symbol side quantity price executed_at }} fields cursor }} }}

  subscription {{ positions {{ operation data {{ symbol net_quantity market_value unrealized_pnl }} fields }} }}

  query {{ instruments(order_by: [{{price: desc}}]) {{ symbol price updated_at }} }}

Runs — a long job whose progress you can watch and replay (the built-in demo executor):

  mutation {{ startRun(kind: "rebalance", input: {{portfolio: "main"}}) {{ id status }} }}

  subscription {{ runEvents(runId: "<id from above>", fromSeq: 1) {{
      seq type stage message percentage counters createdAt }} }}

  curl -N -H 'Authorization: Bearer <token>' http://{addr}/runs/<id>/events   (the same as Server-Sent Events)

Runs need the trader's token (or the admin's secret); triggers the admin's.

Triggers — webhooks as rows enter and leave a condition. This sandbox lets them (and run
workers) reach receivers on this machine, such as http://localhost:9000/hook; `viewcast serve`
refuses private addresses unless --webhook-allow-private / --worker-allow-private.

  mutation {{ create_trades_trigger(input: {{name: "big", webhook: "http://localhost:9000/hook",
      fire: {{quantity: {{_gte: 900}}}}}}) {{ name }} }}"#
    );
    match credentials {
        Some(c) => println!(
            r#"
Auth is on, as it would be in production (the tokens are valid {TOKEN_HOURS} h; new ones at each start):

  no token (role guest)   instruments only
  trader tess             trades and positions of AAPL and MSFT; starts and follows her own runs
      {{"Authorization": "Bearer {trader}"}}
  analyst ana             trades of 500 shares or more, every symbol, without prices (50 rows a query)
      {{"Authorization": "Bearer {analyst}"}}
  admin                   everything, triggers included
      {{"x-hasura-admin-secret": "{admin}"}}

Paste one of these lines into GraphiQL's Headers tab (below the editor): queries and
subscriptions send it. In the console, paste the token (or the admin secret) into the
Credential box. `viewcast demo --no-auth` serves everything to everyone."#,
            trader = c.trader,
            analyst = c.analyst,
            admin = c.admin_secret,
        ),
        None => println!("\nAuth is off (--no-auth): everyone may do everything."),
    }
    println!("\nCtrl-C stops everything.\n");
}

/// Random-walk price ticks and random trades; each trade commits together with its position.
async fn generate(
    client: tokio_postgres::Client,
    ticks_per_second: u32,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / ticks_per_second);
    let mut trades = tokio::time::interval(Duration::from_millis(700));
    let mut pruning = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = ticks.tick() => {
                let (instrument, bps) = {
                    let mut rng = rand::rng();
                    (rng.random_range(1..=6), rng.random_range(-25..=25))
                };
                client.execute(
                    "WITH p AS (UPDATE instruments SET price = greatest(1, round(price * (1 + $2::int / 10000.0), 2)), updated_at = now() \
                     WHERE id = $1 RETURNING id, price) \
                     UPDATE positions SET market_value = net_quantity * p.price, unrealized_pnl = net_quantity * p.price - cost, updated_at = now() \
                     FROM p WHERE positions.instrument_id = p.id",
                    &[&instrument, &bps],
                ).await.context("price tick failed")?;
            }
            _ = trades.tick() => {
                let (instrument, buy, quantity) = {
                    let mut rng = rand::rng();
                    (rng.random_range(1..=6), rng.random_bool(0.5), rng.random_range(1..=10) * 100)
                };
                let side = if buy { "buy" } else { "sell" };
                let signed: i32 = if buy { quantity } else { -quantity };
                client.batch_execute("BEGIN").await?;
                client.execute(
                    "INSERT INTO trades (instrument_id, symbol, side, quantity, price) \
                     SELECT id, symbol, $2, $3, price FROM instruments WHERE id = $1",
                    &[&instrument, &side, &quantity],
                ).await?;
                client.execute(
                    "UPDATE positions p SET net_quantity = p.net_quantity + $2, cost = p.cost + $2 * i.price::float8, \
                     market_value = (p.net_quantity + $2) * i.price::float8, \
                     unrealized_pnl = (p.net_quantity + $2) * i.price::float8 - (p.cost + $2 * i.price::float8), updated_at = now() \
                     FROM instruments i WHERE i.id = p.instrument_id AND p.instrument_id = $1",
                    &[&instrument, &signed],
                ).await?;
                client.batch_execute("COMMIT").await.context("trade failed")?;
            }
            _ = pruning.tick() => {
                // Keep the trades table small: its oldest rows leave as DELETEs.
                client.execute("DELETE FROM trades WHERE id <= (SELECT max(id) - 200 FROM trades)", &[]).await?;
            }
        }
    }
}
