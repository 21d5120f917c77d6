//! `viewcast introspect`: reads the catalog of a database (`information_schema`, which
//! PostgreSQL, Materialize and RisingWave all serve) and writes a schema.yaml for the named
//! relations — column types mapped, primary keys from the catalog or from flags, enums from
//! flags. It replaces tycostream's `generate-schema.sh`.
//!
//! The mapping and the YAML are pure functions (unit-tested); only [`introspect`] does I/O.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::config::{Backend, names};

/// What to introspect and how to write it.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub backend: Option<Backend>,
    /// Relations, `[schema.]name`, as SQL would read them unquoted (or `"Quoted"`).
    pub relations: Vec<String>,
    /// Primary keys by relation (as given in `relations`), overriding the catalog.
    pub primary_keys: BTreeMap<String, Vec<String>>,
    /// Enums to declare: name → values in order.
    pub enums: Vec<(String, Vec<String>)>,
    /// Columns (`relation.column`) that hold an enum's labels → the enum's name.
    pub enum_columns: BTreeMap<String, String>,
    /// Map `numeric` to `Float` (as tycostream does) instead of the exact `Numeric`.
    pub numeric_as_float: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum IntrospectError {
    #[error("invalid database URL: {0}")]
    Url(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("reading the catalog of {relation} failed: {message}")]
    Query { relation: String, message: String },
    #[error("relation {0} was not found (check the name, the schema and the role's privileges)")]
    NotFound(String),
    #[error(
        "no primary key for {0} in the catalog; pass --primary-key {0}=<column>[,<column>…] (views have none)"
    )]
    NoPrimaryKey(String),
    #[error("{0}")]
    Invalid(String),
}

/// One column as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogColumn {
    pub name: String,
    pub data_type: String,
}

/// One relation as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogRelation {
    pub schema: String,
    pub name: String,
    pub columns: Vec<CatalogColumn>,
    pub primary_key: Vec<String>,
}

/// Reads the catalog and returns the schema.yaml text.
pub async fn introspect(url: &str, request: &Request) -> Result<String, IntrospectError> {
    let database =
        crate::pgconn::Database::parse(url).map_err(|e| IntrospectError::Url(e.to_string()))?;
    let (client, connection) = database
        .connect()
        .await
        .map_err(|e| IntrospectError::Connect(crate::pgconn::error_text(&e)))?;
    let connection = tokio::spawn(connection);
    let mut relations = Vec::new();
    for relation in &request.relations {
        let (schema, name) = split_relation(relation);
        let query_error = |e: tokio_postgres::Error| IntrospectError::Query {
            relation: relation.clone(),
            message: e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_owned()),
        };
        let schema_sql = match &schema {
            Some(schema) => literal(schema),
            None => "current_schema()".to_owned(),
        };
        let columns = client
            .simple_query(&format!(
                "SELECT table_schema, column_name, data_type FROM information_schema.columns \
                 WHERE table_schema = {schema_sql} AND table_name = {} ORDER BY ordinal_position",
                literal(&name)
            ))
            .await
            .map_err(query_error)?;
        let mut found_schema = schema.clone().unwrap_or_default();
        let mut catalog_columns = Vec::new();
        for message in columns {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
                row.get(0).unwrap_or_default().clone_into(&mut found_schema);
                catalog_columns.push(CatalogColumn {
                    name: row.get(1).unwrap_or_default().to_owned(),
                    data_type: row.get(2).unwrap_or_default().to_owned(),
                });
            }
        }
        if catalog_columns.is_empty() {
            return Err(IntrospectError::NotFound(relation.clone()));
        }
        // Tables have their keys in the catalog; views (and Materialize) have none. A catalog
        // without these views is the same as no key.
        let primary_key = client
            .simple_query(&format!(
                "SELECT kcu.column_name FROM information_schema.table_constraints tc \
                 JOIN information_schema.key_column_usage kcu \
                   ON kcu.constraint_name = tc.constraint_name \
                  AND kcu.table_schema = tc.table_schema AND kcu.table_name = tc.table_name \
                 WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_schema = {} \
                   AND tc.table_name = {} ORDER BY kcu.ordinal_position",
                literal(&found_schema),
                literal(&name)
            ))
            .await
            .map(|messages| {
                messages
                    .into_iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(row) => {
                            row.get(0).map(str::to_owned)
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        relations.push((
            relation.clone(),
            CatalogRelation {
                schema: found_schema,
                name,
                columns: catalog_columns,
                primary_key,
            },
        ));
    }
    drop(client);
    connection.abort();
    render(request, &relations)
}

/// `schema.name` → (Some(schema), name); quotes keep case, unquoted parts fold to lowercase.
fn split_relation(relation: &str) -> (Option<String>, String) {
    let part = |p: &str| {
        if p.len() >= 2 && p.starts_with('"') && p.ends_with('"') {
            p[1..p.len() - 1].replace("\"\"", "\"")
        } else {
            p.to_lowercase()
        }
    };
    match relation.split_once('.') {
        Some((schema, name)) => (Some(part(schema)), part(name)),
        None => (None, part(relation)),
    }
}

fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The schema.yaml type for a catalog data type.
pub fn map_type(data_type: &str, numeric_as_float: bool) -> &'static str {
    let t = data_type.to_ascii_lowercase();
    let t = t.trim();
    if t.ends_with("[]") || t == "array" || t.starts_with('_') {
        return "Array";
    }
    let base = t.split('(').next().unwrap_or(t).trim();
    match base {
        "smallint" | "int2" | "integer" | "int" | "int4" => "Integer",
        "bigint" | "int8" => "BigInt",
        "real" | "float4" | "double precision" | "float8" | "float" => "Float",
        "numeric" | "decimal" if numeric_as_float => "Float",
        "numeric" | "decimal" => "Numeric",
        "boolean" | "bool" => "Boolean",
        "uuid" => "UUID",
        "date" => "Date",
        "json" | "jsonb" => "JSON",
        "text" | "character varying" | "varchar" | "character" | "char" | "bpchar" | "string"
        | "name" => "String",
        _ if base.starts_with("timestamp") || base == "mz_timestamp" => "Timestamp",
        _ if base.starts_with("time") => "Time",
        _ => "String",
    }
}

/// A valid GraphQL name for a database name (invalid characters become `_`).
fn graphql_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    if out.starts_with("__") {
        out.replace_range(..2, "x_");
    }
    out
}

/// Whether an unquoted SQL identifier reads back as `name` (lowercase letters, digits, `_`).
fn plain_sql(name: &str) -> bool {
    name.chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && !name.is_empty()
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A YAML scalar, quoted when YAML would read it otherwise.
fn yaml(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && !matches!(
            text.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "~"
        )
        && text.parse::<f64>().is_err();
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "''"))
    }
}

/// Renders schema.yaml for the relations read from the catalog.
pub fn render(
    request: &Request,
    relations: &[(String, CatalogRelation)],
) -> Result<String, IntrospectError> {
    let mut out = String::new();
    let backend = request.backend.unwrap_or(Backend::Materialize);
    let _ = writeln!(
        out,
        "# Written by `viewcast introspect` from the {} catalog: review the primary keys and\n# enums, then check it with `viewcast check --config <file>`.",
        backend.as_str()
    );
    let _ = writeln!(out, "backend: {}", backend.as_str());
    for (name, _) in &request.enums {
        if !names::is_valid_name(name) {
            return Err(IntrospectError::Invalid(format!(
                "enum name {name:?} is not a GraphQL name (letters, digits, _; not starting with a digit)"
            )));
        }
    }
    if !request.enums.is_empty() {
        out.push_str("enums:\n");
        for (name, values) in &request.enums {
            let values: Vec<String> = values.iter().map(|v| yaml(v)).collect();
            let _ = writeln!(out, "  {name}: [{}]", values.join(", "));
        }
    }
    out.push_str("sources:\n");
    let mut used_enum_columns = Vec::new();
    for (given, relation) in relations {
        render_source(
            &mut out,
            request,
            backend,
            given,
            relation,
            &mut used_enum_columns,
        )?;
    }
    for enum_key in request.enum_columns.keys() {
        if !used_enum_columns.contains(enum_key) {
            return Err(IntrospectError::Invalid(format!(
                "--enum-column {enum_key}: no such column among the relations introspected"
            )));
        }
    }
    Ok(out)
}

/// One source: name, relation, key, columns.
fn render_source(
    out: &mut String,
    request: &Request,
    backend: Backend,
    given: &str,
    relation: &CatalogRelation,
    used_enum_columns: &mut Vec<String>,
) -> Result<(), IntrospectError> {
    {
        let source = graphql_name(&relation.name);
        let _ = writeln!(out, "  {source}:");
        let relation_key = if backend == Backend::Postgres {
            "table"
        } else {
            "view"
        };
        let sql_name = |part: &str| {
            if plain_sql(part) {
                part.to_owned()
            } else {
                quoted(part)
            }
        };
        let qualified = format!(
            "{}.{}",
            sql_name(&relation.schema),
            sql_name(&relation.name)
        );
        let _ = writeln!(out, "    {relation_key}: {}", yaml(&qualified));
        let key = request
            .primary_keys
            .get(given)
            .cloned()
            .unwrap_or_else(|| relation.primary_key.clone());
        if key.is_empty() {
            return Err(IntrospectError::NoPrimaryKey(given.to_owned()));
        }
        let mut field_of: BTreeMap<&str, String> = BTreeMap::new();
        for column in &relation.columns {
            field_of.insert(column.name.as_str(), graphql_name(&column.name));
        }
        let mut key_fields = Vec::new();
        for column in &key {
            let field = field_of.get(column.as_str()).ok_or_else(|| {
                IntrospectError::Invalid(format!(
                    "primary key column {column:?} is not a column of {given} (it has {})",
                    relation
                        .columns
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            key_fields.push(field.clone());
        }
        if key_fields.len() == 1 {
            let _ = writeln!(out, "    primary_key: {}", key_fields[0]);
        } else {
            let _ = writeln!(out, "    primary_key: [{}]", key_fields.join(", "));
        }
        out.push_str("    columns:\n");
        for column in &relation.columns {
            let field = &field_of[column.name.as_str()];
            let enum_key = format!("{given}.{}", column.name);
            let ty = match request.enum_columns.get(&enum_key) {
                Some(name) => {
                    if !request.enums.iter().any(|(e, _)| e == name) {
                        return Err(IntrospectError::Invalid(format!(
                            "--enum-column {enum_key}={name}: no --enum {name}=… declares it"
                        )));
                    }
                    used_enum_columns.push(enum_key.clone());
                    name.clone()
                }
                None => map_type(&column.data_type, request.numeric_as_float).to_owned(),
            };
            let unmapped = ty == "String"
                && !matches!(
                    column.data_type.to_ascii_lowercase().as_str(),
                    "text"
                        | "character varying"
                        | "varchar"
                        | "character"
                        | "char"
                        | "bpchar"
                        | "string"
                        | "name"
                )
                && !request.enum_columns.contains_key(&enum_key);
            let comment = if unmapped {
                format!("  # {} read as text", column.data_type)
            } else {
                String::new()
            };
            if plain_sql(&column.name) && *field == column.name {
                let _ = writeln!(out, "      {field}: {ty}{comment}");
            } else {
                let _ = writeln!(
                    out,
                    "      {field}: {{ type: {ty}, column: {} }}{comment}",
                    yaml(&quoted(&column.name))
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_map_like_tycostream_with_exact_numerics() {
        for (sql, yaml) in [
            ("integer", "Integer"),
            ("smallint", "Integer"),
            ("bigint", "BigInt"),
            ("double precision", "Float"),
            ("real", "Float"),
            ("numeric", "Numeric"),
            ("numeric(10,2)", "Numeric"),
            ("character varying", "String"),
            ("uuid", "UUID"),
            ("timestamp with time zone", "Timestamp"),
            ("timestamp without time zone", "Timestamp"),
            ("time without time zone", "Time"),
            ("date", "Date"),
            ("boolean", "Boolean"),
            ("jsonb", "JSON"),
            ("ARRAY", "Array"),
            ("integer[]", "Array"),
            ("interval", "String"),
        ] {
            assert_eq!(map_type(sql, false), yaml, "{sql}");
        }
        assert_eq!(map_type("numeric", true), "Float");
    }

    fn relation(columns: &[(&str, &str)], key: &[&str]) -> CatalogRelation {
        CatalogRelation {
            schema: "public".into(),
            name: "trades".into(),
            columns: columns
                .iter()
                .map(|(n, t)| CatalogColumn {
                    name: (*n).into(),
                    data_type: (*t).into(),
                })
                .collect(),
            primary_key: key.iter().map(|k| (*k).into()).collect(),
        }
    }

    #[test]
    fn renders_keys_enums_and_names_that_need_quoting() {
        let request = Request {
            backend: Some(Backend::Materialize),
            relations: vec!["trades".into()],
            enums: vec![("side".into(), vec!["buy".into(), "sell".into()])],
            enum_columns: BTreeMap::from([("trades.side".into(), "side".into())]),
            primary_keys: BTreeMap::from([("trades".into(), vec!["id".into(), "Venue".into()])]),
            numeric_as_float: false,
        };
        let yaml = render(
            &request,
            &[(
                "trades".into(),
                relation(
                    &[
                        ("id", "bigint"),
                        ("Venue", "text"),
                        ("side", "text"),
                        ("price", "numeric"),
                        ("traded at", "timestamp"),
                        ("span", "interval"),
                    ],
                    &[],
                ),
            )],
        )
        .unwrap();
        assert_eq!(
            yaml,
            "# Written by `viewcast introspect` from the materialize catalog: review the primary keys and
# enums, then check it with `viewcast check --config <file>`.
backend: materialize
enums:
  side: [buy, sell]
sources:
  trades:
    view: public.trades
    primary_key: [id, Venue]
    columns:
      id: BigInt
      Venue: { type: String, column: '\"Venue\"' }
      side: side
      price: Numeric
      traded_at: { type: Timestamp, column: '\"traded at\"' }
      span: String  # interval read as text
"
        );
    }

    #[test]
    fn a_relation_without_a_key_asks_for_the_flag() {
        let request = Request {
            relations: vec!["trades".into()],
            ..Request::default()
        };
        let err = render(
            &request,
            &[("trades".into(), relation(&[("id", "int")], &[]))],
        )
        .unwrap_err();
        assert!(err.to_string().contains("--primary-key trades="), "{err}");
    }

    #[test]
    fn an_enum_column_needs_its_enum_declared() {
        let request = Request {
            relations: vec!["trades".into()],
            enum_columns: BTreeMap::from([("trades.side".into(), "side".into())]),
            ..Request::default()
        };
        let err = render(
            &request,
            &[(
                "trades".into(),
                relation(&[("id", "int"), ("side", "text")], &["id"]),
            )],
        )
        .unwrap_err();
        assert!(err.to_string().contains("no --enum side="), "{err}");
    }
}
