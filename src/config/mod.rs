//! The validated configuration that the rest of viewcast runs on.
//!
//! `load()` reads a `schema.yaml` (tycostream's format plus viewcast's extensions), expands
//! `${env.X}` references in exactly one place, deserializes with unknown keys refused and
//! resolves names, types and keys into [`Config`]. Every mistake becomes a [`ConfigError`]
//! naming the file, line and column and saying what to change. This module never touches a
//! database or the network.

mod env;
mod error;
mod ident;
mod load;
pub mod names;
mod permissions;
mod spans;

use std::path::PathBuf;
use std::sync::Arc;

pub use error::{ConfigError, Location};
pub use load::{load, load_str};
pub use permissions::{
    ApiKey, Kinds, RolePermissions, RunPermissions, Scope, SelectPermission, SourcePermissions,
    TriggerAction, VariableError, is_variable,
};

/// A resolved `schema.yaml`.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file the configuration came from (for messages).
    pub path: PathBuf,
    /// User-defined enums, in file order.
    pub enums: Vec<Arc<EnumDef>>,
    /// Sources, in file order.
    pub sources: Vec<Arc<SourceDef>>,
    /// Triggers declared under the sources, in file order.
    pub triggers: Vec<DeclaredTrigger>,
    /// Run kinds declared under `runs:`, in file order; `None` (no `runs:` section): any
    /// kind is accepted, driven by external workers.
    pub run_kinds: Option<Vec<RunKind>>,
    /// What each role may do once auth is on (`permissions:`), in file order.
    pub permissions: Vec<RolePermissions>,
    /// API keys for services and workers (`api_keys:`).
    pub api_keys: Vec<ApiKey>,
}

/// A kind of run declared in `schema.yaml`, and what drives its runs.
#[derive(Debug, Clone, PartialEq)]
pub struct RunKind {
    pub name: String,
    pub executor: Executor,
}

/// What drives the runs of a kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Executor {
    /// A worker of its own appends through the API; the server only stores and streams.
    External,
    /// Built in, for trying things: Start → Process (`items` steps of `item` each, with
    /// progress) → Finish.
    Demo {
        items: u32,
        item: std::time::Duration,
    },
    /// The server POSTs each run to a worker at `url` with a run-scoped token; the worker
    /// reports events through the API; a run without an event for `deadline` fails.
    Http {
        url: String,
        deadline: std::time::Duration,
    },
}

impl Executor {
    pub fn name(&self) -> &'static str {
        match self {
            Executor::External => "external",
            Executor::Demo { .. } => "demo",
            Executor::Http { .. } => "http",
        }
    }
}

/// A trigger declared in `schema.yaml` (created at start-up, reconciled with the store).
#[derive(Debug, Clone, PartialEq)]
pub struct DeclaredTrigger {
    pub source: String,
    pub name: String,
    /// Its fields as `create_S_trigger`'s input takes them, `name` included (validated).
    pub input: serde_json::Value,
}

impl Config {
    pub fn source(&self, name: &str) -> Option<&Arc<SourceDef>> {
        self.sources.iter().find(|s| s.name == name)
    }

    /// The permissions of `role`, if it has any.
    pub fn role(&self, role: &str) -> Option<&RolePermissions> {
        self.permissions.iter().find(|r| r.role == role)
    }

    /// The declared kind `name` (`None` if kinds are declared and this is not one of them);
    /// without a `runs:` section every kind is external.
    pub fn run_kind(&self, name: &str) -> Option<RunKind> {
        match &self.run_kinds {
            None => Some(RunKind {
                name: name.to_owned(),
                executor: Executor::External,
            }),
            Some(kinds) => kinds.iter().find(|k| k.name == name).cloned(),
        }
    }
}

/// A user-defined enum; the order of `values` is the order `_gt`/`_lt` compare by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnumDef {
    pub name: String,
    pub values: Vec<String>,
}

impl EnumDef {
    /// The ordinal of `label`, if it is one of this enum's values.
    pub fn ordinal(&self, label: &str) -> Option<u32> {
        self.values
            .iter()
            .position(|v| v == label)
            .map(|i| i as u32)
    }
}

/// Which database a source's change feed comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Materialize,
    RisingWave,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Materialize => "materialize",
            Backend::RisingWave => "risingwave",
        }
    }
}

/// When a source's upstream feed starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartMode {
    /// At server start-up (the default): `/ready` reflects the database from the start.
    Eager,
    /// When the first consumer (subscription, query or trigger) arrives.
    Lazy,
}

/// A schema-qualified SQL relation name, already case-folded as SQL would fold it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QualifiedName {
    pub schema: Option<String>,
    pub name: String,
}

impl QualifiedName {
    /// The name as SQL text, every part double-quoted.
    pub fn sql(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", quote_ident(schema), quote_ident(&self.name)),
            None => quote_ident(&self.name),
        }
    }
}

impl std::fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.sql())
    }
}

/// Double-quotes an SQL identifier, doubling embedded quotes.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// How Materialize reports a subscribe's changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Envelope {
    /// `ENVELOPE UPSERT (KEY (…))`: one row per key per timestamp (the default).
    #[default]
    Upsert,
    /// Plain `SUBSCRIBE`: `mz_diff` per row, consolidated per key by viewcast.
    Diff,
}

/// Settings of a source's feed that only some backends use.
#[derive(Debug, Clone, Default)]
pub struct FeedOptions {
    /// Materialize: the cluster the subscribe runs on (`SET cluster`); the connection's
    /// default when unset.
    pub cluster: Option<String>,
    /// Materialize: the database unqualified names resolve in (`SET database`); the
    /// connection's (the URL's) when unset.
    pub database: Option<String>,
    /// Materialize: the subscribe's envelope.
    pub envelope: Envelope,
    /// RisingWave: how long the subscription keeps changes, as RisingWave reads it (`'1h'`,
    /// `'1D'`): the longest a lost connection can resume without a fresh snapshot.
    pub retention: Option<String>,
}

/// One source: a table or view exposed as GraphQL types and fields.
#[derive(Debug, Clone)]
pub struct SourceDef {
    /// GraphQL name: the object type and the field/prefix of every generated name.
    pub name: String,
    /// The relation the feed reads.
    pub relation: QualifiedName,
    pub backend: Backend,
    pub start: StartMode,
    /// Columns in file order; this is also the GraphQL field order.
    pub columns: Vec<ColumnDef>,
    /// Indices into `columns` of the primary key, in key order.
    pub primary_key: Vec<usize>,
    pub feed: FeedOptions,
}

impl SourceDef {
    pub fn column_index(&self, graphql_name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == graphql_name)
    }

    pub fn is_key_column(&self, index: usize) -> bool {
        self.primary_key.contains(&index)
    }
}

/// One column of a source.
#[derive(Debug, Clone)]
pub struct ColumnDef {
    /// GraphQL field name.
    pub name: String,
    /// Column name in the database (case-folded as SQL would fold it).
    pub sql_name: String,
    pub ty: ColumnType,
}

/// The type of a column, as named in `schema.yaml`.
///
/// tycostream's names map exactly as tycostream maps them (see ARCHITECTURE.md); `Numeric`
/// and `JSONValue` are viewcast additions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    /// int2/int4 → GraphQL `Int` (values beyond 32 bits are a field error, as in GraphQL).
    Integer,
    /// float4/float8 (and numeric, with rounding) → GraphQL `Float`.
    Float,
    /// int8 → GraphQL `String`, exact.
    BigInt,
    /// Any text → GraphQL `String`.
    String,
    /// uuid → GraphQL `ID`.
    Uuid,
    /// timestamp/timestamptz → `String` in Postgres' ISO text form.
    Timestamp,
    /// date → `String`.
    Date,
    /// time → `String`.
    Time,
    /// boolean → `Boolean`.
    Boolean,
    /// json/jsonb → `String` holding the JSON text (tycostream compatible).
    Json,
    /// any array → `String` holding Postgres' array text.
    Array,
    /// numeric → scalar `Numeric`, serialized as a string with every digit kept.
    Numeric,
    /// json/jsonb → scalar `JSONValue`: the parsed JSON value itself.
    JsonValue,
    /// A user-defined enum (text labels in the database).
    Enum(Arc<EnumDef>),
}

impl ColumnType {
    /// The names accepted in `schema.yaml`, for error messages.
    pub const BUILTIN_NAMES: &'static [&'static str] = &[
        "Integer",
        "Float",
        "BigInt",
        "String",
        "UUID",
        "Timestamp",
        "Date",
        "Time",
        "Boolean",
        "JSON",
        "Array",
        "Numeric",
        "JSONValue",
    ];

    /// Parses a built-in type name (case-sensitive, like tycostream).
    pub fn builtin(name: &str) -> Option<ColumnType> {
        Some(match name {
            "Integer" => ColumnType::Integer,
            "Float" => ColumnType::Float,
            "BigInt" => ColumnType::BigInt,
            "String" => ColumnType::String,
            "UUID" => ColumnType::Uuid,
            "Timestamp" => ColumnType::Timestamp,
            "Date" => ColumnType::Date,
            "Time" => ColumnType::Time,
            "Boolean" => ColumnType::Boolean,
            "JSON" => ColumnType::Json,
            "Array" => ColumnType::Array,
            "Numeric" => ColumnType::Numeric,
            "JSONValue" => ColumnType::JsonValue,
            _ => return None,
        })
    }

    /// The name as written in `schema.yaml`.
    pub fn yaml_name(&self) -> &str {
        match self {
            ColumnType::Integer => "Integer",
            ColumnType::Float => "Float",
            ColumnType::BigInt => "BigInt",
            ColumnType::String => "String",
            ColumnType::Uuid => "UUID",
            ColumnType::Timestamp => "Timestamp",
            ColumnType::Date => "Date",
            ColumnType::Time => "Time",
            ColumnType::Boolean => "Boolean",
            ColumnType::Json => "JSON",
            ColumnType::Array => "Array",
            ColumnType::Numeric => "Numeric",
            ColumnType::JsonValue => "JSONValue",
            ColumnType::Enum(e) => &e.name,
        }
    }
}
