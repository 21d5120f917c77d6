//! What a PostgreSQL source needs in the database (a publication, a usable replica identity),
//! checked at every session start, printed by `viewcast check --setup-sql`, and applied when
//! the server runs with `--apply-setup`.

use std::fmt::Write as _;

use super::{FeedError, PgFeedSettings};
use crate::config::{Backend, Config, SourceDef, quote_ident};

/// The resolved table of a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Table {
    pub schema: String,
    pub name: String,
}

impl Table {
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

/// A setup step failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(String);

/// The SQL that prepares a database for the PostgreSQL sources of `config`.
pub fn setup_sql(config: &Config, settings: &PgFeedSettings) -> String {
    let mut sql = String::from(
        "-- viewcast: setup for PostgreSQL sources (run as the tables' owner).\n\
         -- The role viewcast connects as needs the REPLICATION attribute and SELECT on each table:\n\
         --   ALTER ROLE <role> REPLICATION;  GRANT SELECT ON <table> TO <role>;\n\
         -- The server needs wal_level = logical and, per viewcast server, one replication slot\n\
         -- and one WAL sender (max_replication_slots, max_wal_senders), however many sources.\n",
    );
    let sources: Vec<&std::sync::Arc<SourceDef>> = config
        .sources
        .iter()
        .filter(|s| s.backend == Backend::Postgres)
        .collect();
    let mut tables: Vec<String> = sources.iter().map(|s| s.relation.sql()).collect();
    tables.sort();
    tables.dedup();
    let publication = quote_ident(&settings.publication());
    if tables.is_empty() {
        let _ = writeln!(
            sql,
            "\n-- no postgres sources\nCREATE PUBLICATION {publication} WITH (publish_via_partition_root = true);"
        );
        return sql;
    }
    let _ = writeln!(
        sql,
        "\n-- one publication for every source (other viewcast servers on this database add their tables to it)\n\
         CREATE PUBLICATION {publication} FOR TABLE {} WITH (publish_via_partition_root = true);\n\
         -- or, if it exists: ALTER PUBLICATION {publication} ADD TABLE <table>;",
        tables.join(", ")
    );
    for source in sources {
        let _ = write!(
            sql,
            "\n-- source {name}: only if the primary key of {table} is not ({key}):\n-- ALTER TABLE {table} REPLICA IDENTITY FULL;\n",
            name = source.name,
            table = source.relation.sql(),
            key = key_names(source).join(", "),
        );
    }
    sql
}

/// Makes sure the shared publication exists (creating it empty with `apply_setup`): the
/// replication stream names it from the start, and tables join it one by one.
pub(super) async fn ensure_publication(
    client: &tokio_postgres::Client,
    settings: &PgFeedSettings,
) -> Result<(), FeedError> {
    let publication = settings.publication();
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|e| FeedError::from_db("cannot read publications", &e))?
        .is_some();
    if exists {
        return Ok(());
    }
    if !settings.apply_setup {
        return Err(FeedError::Setup(format!(
            "publication {publication} does not exist; run the SQL from `viewcast check --setup-sql` or start the server with --apply-setup"
        )));
    }
    let sql = format!(
        "CREATE PUBLICATION {} WITH (publish_via_partition_root = true)",
        quote_ident(&publication)
    );
    match client.batch_execute(&sql).await {
        Ok(()) => {
            tracing::info!(publication = %publication, "publication created");
            Ok(())
        }
        // Another server created it in the meantime.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => Ok(()),
        Err(e) => Err(FeedError::from_db("cannot create the publication", &e)),
    }
}

fn key_names(source: &SourceDef) -> Vec<String> {
    source
        .primary_key
        .iter()
        .map(|&i| source.columns[i].sql_name.clone())
        .collect()
}

/// Creates the publication and fixes the replica identity of one source, if needed.
pub async fn apply_setup(
    client: &tokio_postgres::Client,
    source: &SourceDef,
    settings: &PgFeedSettings,
) -> Result<(), SetupError> {
    let mut settings = settings.clone();
    settings.apply_setup = true;
    check(client, source, &settings)
        .await
        .map(|_| ())
        .map_err(|e| SetupError(e.to_string()))
}

/// Verifies (or, with `apply_setup`, creates) what the feed of `source` needs.
pub(super) async fn check(
    client: &tokio_postgres::Client,
    source: &SourceDef,
    settings: &PgFeedSettings,
) -> Result<Table, FeedError> {
    let relation = source.relation.sql();
    let row = client
        .query_opt(
            "SELECT n.nspname::text, c.relname::text, c.relkind::text, c.relreplident::text \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)",
            &[&relation],
        )
        .await
        .map_err(|e| FeedError::from_db("cannot look up the table", &e))?
        .ok_or_else(|| {
            FeedError::Setup(format!(
                "table {relation} of source {} does not exist; create it or fix `table:` in schema.yaml",
                source.name
            ))
        })?;
    let table = Table {
        schema: row.get(0),
        name: row.get(1),
    };
    let kind: String = row.get(2);
    let identity: String = row.get(3);
    if kind != "r" && kind != "p" {
        return Err(FeedError::Setup(format!(
            "{relation} of source {} is not a table (relkind {kind}); PostgreSQL replicates only tables — use Materialize or RisingWave for views",
            source.name
        )));
    }

    let publication = settings.publication();
    let published = client
        .query_opt(
            "SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
            &[&publication, &table.schema, &table.name],
        )
        .await
        .map_err(|e| FeedError::from_db("cannot read publications", &e))?
        .is_some();
    if !published {
        if !settings.apply_setup {
            return Err(FeedError::Setup(format!(
                "table {} is not in publication {publication}; run the SQL from `viewcast check --setup-sql` or start the server with --apply-setup",
                table.qualified()
            )));
        }
        ensure_publication(client, settings).await?;
        let sql = format!(
            "ALTER PUBLICATION {} ADD TABLE {}",
            quote_ident(&publication),
            table.qualified()
        );
        match client.batch_execute(&sql).await {
            Ok(()) => {
                tracing::info!(source = %source.name, publication = %publication, "table added to the publication");
            }
            // Another server (or another source on the same table) added it meanwhile.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {}
            Err(e) => {
                return Err(FeedError::from_db(
                    "cannot add the table to the publication",
                    &e,
                ));
            }
        }
    }

    ensure_replica_identity(client, source, settings, &table, &identity).await?;
    Ok(table)
}

/// Makes sure deletes and key changes carry the configured primary key.
async fn ensure_replica_identity(
    client: &tokio_postgres::Client,
    source: &SourceDef,
    settings: &PgFeedSettings,
    table: &Table,
    identity: &str,
) -> Result<(), FeedError> {
    if identity != "f" {
        let index_filter = if identity == "i" {
            "i.indisreplident"
        } else {
            "i.indisprimary"
        };
        let rows = client
            .query(
                &format!(
                    "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a \
                     ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                     WHERE i.indrelid = to_regclass($1) AND {index_filter}"
                ),
                &[&table.qualified()],
            )
            .await
            .map_err(|e| FeedError::from_db("cannot read the table's key", &e))?;
        let mut identity_columns: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        identity_columns.sort();
        let mut wanted = key_names(source);
        wanted.sort();
        if identity == "n" || identity_columns != wanted {
            let sql = format!("ALTER TABLE {} REPLICA IDENTITY FULL", table.qualified());
            if !settings.apply_setup {
                return Err(FeedError::Setup(format!(
                    "the replica identity of {} does not include the configured primary key ({}); run `{sql}` or start the server with --apply-setup",
                    table.qualified(),
                    wanted.join(", ")
                )));
            }
            client
                .batch_execute(&sql)
                .await
                .map_err(|e| FeedError::from_db("cannot set the replica identity", &e))?;
            tracing::info!(source = %source.name, "replica identity set to full");
        }
    }
    Ok(())
}
