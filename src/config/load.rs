//! Reading `schema.yaml` into a [`Config`].
//!
//! The pipeline: read the file → expand `${env.X}` on the raw text (`env.rs`, the only place)
//! → deserialize with serde into the `Raw*` types below, unknown keys refused → index the
//! positions of keys and values (`spans.rs`) → `resolve()` names, types, relations and keys,
//! checking everything the rest of viewcast relies on. The first mistake found is returned as
//! a [`ConfigError`] with its file, line and column (in the file as written, before expansion)
//! and a hint. Nothing here touches a database or the network.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::{Arc, LazyLock};

use regex::Regex;
use serde::de::{self, DeserializeOwned, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::env;
use super::error::{Location, Problem, closest, list, unknown_key_hint};
use super::ident::{self, IdentError};
use super::names::{self, RootType};
use super::permissions::{ApiKey, PermissionResolver, RolePermissions};
use super::spans::Spans;
use super::{
    Backend, ColumnDef, ColumnType, Config, ConfigError, DeclaredTrigger, EnumDef, Envelope,
    Executor, FeedOptions, QualifiedName, RunKind, SourceDef, StartMode,
};

/// Reads and resolves the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    load_str(path, &text)
}

/// Resolves configuration `text`; `path` is only used in messages and [`Config::path`].
/// `${env.X}` references are expanded from the process environment.
pub fn load_str(path: &Path, text: &str) -> Result<Config, ConfigError> {
    load_with_env(path, text, &|name| std::env::var(name).ok())
}

/// [`load_str`] with the environment given as a lookup function.
pub(crate) fn load_with_env(
    path: &Path,
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let expanded = env::expand(text, lookup).map_err(|p| p.into_error(path.to_owned()))?;
    match parse(&expanded.text) {
        Ok(resolved) => Ok(Config {
            path: path.to_owned(),
            enums: resolved.enums,
            sources: resolved.sources,
            triggers: resolved.triggers,
            run_kinds: resolved.run_kinds,
            permissions: resolved.permissions,
            api_keys: resolved.api_keys,
        }),
        Err(mut problem) => {
            problem.at = problem.at.map(|at| expanded.original(at));
            Err(problem.into_error(path.to_owned()))
        }
    }
}

/// Everything of a [`Config`] but its path.
struct Resolved {
    enums: Vec<Arc<EnumDef>>,
    sources: Vec<Arc<SourceDef>>,
    triggers: Vec<DeclaredTrigger>,
    run_kinds: Option<Vec<RunKind>>,
    permissions: Vec<RolePermissions>,
    api_keys: Vec<ApiKey>,
}

fn parse(text: &str) -> Result<Resolved, Problem> {
    match serde_yaml::from_str::<RawConfig>(text) {
        Ok(raw) => {
            // serde's parser (libyaml) accepted the text; should yaml-rust2 disagree, the file
            // still loads and its semantic errors are reported at the start of the file.
            let spans = Spans::build(text).unwrap_or_default();
            Resolver { spans: &spans }.resolve(raw)
        }
        Err(error) => {
            // serde reads as it parses, so a type error can come before a syntax error
            // further on that explains it: a syntax error takes precedence.
            let spans = Spans::build(text)?;
            Err(serde_problem(&error, &spans))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The file as serde sees it.

/// Top-level keys, for hints (serde's own list is in its error message).
const TOP_LEVEL_KEYS: &[&str] = &[
    "backend",
    "start",
    "cluster",
    "database",
    "enums",
    "sources",
    "runs",
    "permissions",
    "api_keys",
];
/// The keys of a run kind, per executor.
const RUN_KIND_KEYS: &[(&str, &[&str])] = &[
    ("external", &["executor"]),
    ("demo", &["executor", "items", "item_ms"]),
    ("http", &["executor", "url", "deadline_s"]),
];
const SOURCE_KEYS: &[&str] = &[
    "primary_key",
    "table",
    "view",
    "backend",
    "start",
    "cluster",
    "database",
    "envelope",
    "retention",
    "columns",
    "triggers",
];
/// The keys of a trigger declared under a source (the fields of `create_S_trigger`'s input).
const TRIGGER_KEYS: &[&str] = &[
    "webhook",
    "fire",
    "clear",
    "headers",
    "retry",
    "format",
    "fields",
    "cooldown_ms",
    "fire_existing",
];
const ENVELOPES: &[(&str, Envelope)] = &[("upsert", Envelope::Upsert), ("diff", Envelope::Diff)];
const COLUMN_KEYS: &[&str] = &["type", "column"];
const BACKENDS: &[(&str, Backend)] = &[
    ("postgres", Backend::Postgres),
    ("materialize", Backend::Materialize),
    ("risingwave", Backend::RisingWave),
];
const START_MODES: &[(&str, StartMode)] = &[("eager", StartMode::Eager), ("lazy", StartMode::Lazy)];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    backend: Option<String>,
    start: Option<String>,
    cluster: Option<String>,
    database: Option<String>,
    enums: Option<Entries<Vec<String>>>,
    sources: Option<Entries<RawSource>>,
    runs: Option<Entries<serde_yaml::Value>>,
    permissions: Option<Entries<serde_yaml::Value>>,
    api_keys: Option<Entries<serde_yaml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    primary_key: Option<RawKey>,
    table: Option<String>,
    view: Option<String>,
    backend: Option<String>,
    start: Option<String>,
    cluster: Option<String>,
    database: Option<String>,
    envelope: Option<String>,
    retention: Option<String>,
    columns: Option<Entries<RawColumn>>,
    triggers: Option<Entries<serde_yaml::Value>>,
}

/// `primary_key: id` or `primary_key: [a, b]`.
enum RawKey {
    One(String),
    Many(Vec<String>),
}

/// `price: Float` or `price: { type: Float, column: '"Price"' }`.
enum RawColumn {
    Short(String),
    Long(RawColumnLong),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColumnLong {
    #[serde(rename = "type")]
    ty: Option<String>,
    column: Option<String>,
}

/// A mapping with its file order kept and duplicate keys refused.
struct Entries<V>(Vec<(String, V)>);

impl<'de> Deserialize<'de> for RawKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = RawKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a column name or a list of column names")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawKey, E> {
                Ok(RawKey::One(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RawKey, A::Error> {
                Vec::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(RawKey::Many)
            }
        }
        deserializer.deserialize_any(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for RawColumn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ColumnVisitor;
        impl<'de> Visitor<'de> for ColumnVisitor {
            type Value = RawColumn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a type name or a mapping with `type` and `column`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawColumn, E> {
                Ok(RawColumn::Short(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawColumn, A::Error> {
                RawColumnLong::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawColumn::Long)
            }
        }
        deserializer.deserialize_any(ColumnVisitor)
    }
}

impl<'de, V: DeserializeOwned> Deserialize<'de> for Entries<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor<V>(PhantomData<V>);
        impl<'de, V: DeserializeOwned> Visitor<'de> for EntriesVisitor<V> {
            type Value = Entries<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Entries<V>, E> {
                Ok(Entries(Vec::new()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<V>, A::Error> {
                let mut entries: Vec<(String, V)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if entries.iter().any(|(k, _)| *k == key) {
                        return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
                    }
                    let value = map.next_value()?;
                    entries.push((key, value));
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_any(EntriesVisitor(PhantomData))
    }
}

// ---------------------------------------------------------------------------------------------
// serde's errors, reworded.

static UNKNOWN_FIELD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:(?P<path>[^ ]+): )?unknown field `(?P<field>[^`]*)`, expected").unwrap()
});
static INVALID_TYPE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:(?P<path>[^ ]+): )?invalid type: (?P<found>.*), expected (?P<expected>.*)$")
        .unwrap()
});
static DUPLICATE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"^(?:[^ ]+: )?(?:duplicate field `|duplicate key ")"#).unwrap());

/// Rewords a serde error; `spans` indexes the same text (which parsed as YAML).
fn serde_problem(error: &serde_yaml::Error, spans: &Spans) -> Problem {
    let at = error.location().map(|l| Location {
        line: l.line(),
        column: l.column(),
    });
    let mut message = error.to_string();
    if let Some(at) = at {
        let suffix = format!(" at line {} column {}", at.line, at.column);
        if let Some(i) = message.find(&suffix) {
            message.replace_range(i..i + suffix.len(), "");
        }
    }
    let at_or_start = at.unwrap_or(Location { line: 1, column: 1 });
    if DUPLICATE.is_match(&message)
        && let Some(duplicate) = spans.duplicate()
    {
        let (key, parent) = duplicate
            .path
            .split_last()
            .expect("a key path is not empty");
        let parent: Vec<&str> = parent.iter().map(String::as_str).collect();
        return Problem::new(
            duplicate.second,
            format!(
                "duplicate key {key:?} in {} (first at {})",
                describe_path(&parent),
                duplicate.first
            ),
        )
        .hint("a key may appear once in a mapping: remove or rename one of them");
    }
    if let Some(caps) = UNKNOWN_FIELD.captures(&message) {
        let field = &caps["field"];
        let path: Vec<&str> = caps
            .name("path")
            .map_or(Vec::new(), |p| split_path(p.as_str()));
        let valid = match path.as_slice() {
            ["sources", _] => SOURCE_KEYS,
            ["sources", _, "columns", _] => COLUMN_KEYS,
            _ => TOP_LEVEL_KEYS,
        };
        return Problem::new(
            at_or_start,
            format!("unknown key {field:?} in {}", describe_path(&path)),
        )
        .hint(unknown_key_hint(field, valid));
    }
    if let Some(caps) = INVALID_TYPE.captures(&message) {
        let path: Vec<&str> = caps
            .name("path")
            .map_or(Vec::new(), |p| split_path(p.as_str()));
        return Problem::new(
            at_or_start,
            format!(
                "{} must be {}, not {}",
                describe_path(&path),
                in_words(&caps["expected"]),
                in_words(&caps["found"]),
            ),
        )
        .hint(
            "check the indentation and the form of the value: \
             sources: { <name>: { primary_key: <column or list>, columns: { <column>: <type> } } }, \
             enums: { <name>: [<value>, ...] }, \
             runs: { <kind>: { executor: external | demo | http } }",
        );
    }
    if let (None, Some(second)) = (at, spans.second_document()) {
        return Problem::new(second, "a second YAML document starts here").hint(
            "schema.yaml holds one document: merge the documents or remove this `---` and \
             what follows",
        );
    }
    Problem {
        at: Some(at_or_start),
        message,
        hint: None,
    }
}

/// serde's names of YAML values, in the words of the documentation.
fn in_words(what: &str) -> String {
    match what {
        "sequence" | "a sequence" => "a list".to_owned(),
        "map" => "a mapping".to_owned(),
        "unit value" => "empty".to_owned(),
        _ => what.to_owned(),
    }
}

/// A YAML path in words, for messages: `column "price" of source "trades"`.
fn describe_path(path: &[&str]) -> String {
    match path {
        [] => "the top-level mapping".to_owned(),
        ["sources"] => "\"sources\"".to_owned(),
        ["enums"] => "\"enums\"".to_owned(),
        ["enums", name] => format!("enum {name:?}"),
        ["sources", source] => format!("source {source:?}"),
        ["sources", source, "columns"] => format!("the columns of source {source:?}"),
        ["sources", source, "columns", column] => {
            format!("column {column:?} of source {source:?}")
        }
        ["sources", source, key, ..] => format!("{key:?} of source {source:?}"),
        _ => format!("\"{}\"", path.join(".")),
    }
}

fn split_path(path: &str) -> Vec<&str> {
    path.split('.').collect()
}

const SOURCES_EXAMPLE_HINT: &str = "declare at least one source, e.g.\n  sources:\n    trades:\n      \
     primary_key: id\n      columns:\n        id: Integer";

// ---------------------------------------------------------------------------------------------
// Resolution.

struct Resolver<'a> {
    spans: &'a Spans,
}

/// Who generated a GraphQL name, for collision messages.
#[derive(Clone)]
struct Owner {
    what: String,
    at: Option<Location>,
}

impl Owner {
    fn describe(&self) -> String {
        match self.at {
            Some(at) => format!("{} (defined at {at})", self.what),
            None => self.what.clone(),
        }
    }
}

impl Resolver<'_> {
    fn resolve(&self, raw: RawConfig) -> Result<Resolved, Problem> {
        let backend = match &raw.backend {
            Some(value) => parse_backend(value, self.spans.value_at(&["backend"]))?,
            None => Backend::Materialize,
        };
        let start = match &raw.start {
            Some(value) => parse_start(value, self.spans.value_at(&["start"]))?,
            None => StartMode::Eager,
        };
        let enums = match raw.enums {
            Some(entries) => entries
                .0
                .into_iter()
                .map(|(name, labels)| self.resolve_enum(name, labels).map(Arc::new))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let raw_cluster = raw.cluster;
        if let Some(cluster) = &raw_cluster {
            check_cluster(cluster, self.spans.value_at(&["cluster"]))?;
        }
        let raw_database = raw.database;
        if let Some(database) = &raw_database {
            check_database(database, self.spans.value_at(&["database"]))?;
        }
        let sources = raw.sources.map(|s| s.0).unwrap_or_default();
        if sources.is_empty() {
            let (at, message) = if self.spans.contains(&["sources"]) {
                (self.spans.key(&["sources"]), "\"sources\" is empty")
            } else {
                (
                    Location { line: 1, column: 1 },
                    "no \"sources\" in the file",
                )
            };
            return Err(Problem::new(at, message).hint(SOURCES_EXAMPLE_HINT));
        }
        let defaults = Defaults {
            backend,
            start,
            cluster: raw_cluster.as_deref(),
            database: raw_database.as_deref(),
        };
        let mut resolved = Vec::with_capacity(sources.len());
        let mut triggers = Vec::new();
        for (name, mut raw) in sources {
            let raw_triggers = raw.triggers.take().map(|t| t.0).unwrap_or_default();
            let source = self.resolve_source(name, raw, &enums, &defaults)?;
            for (name, value) in raw_triggers {
                triggers.push(self.resolve_trigger(&source, name, &value)?);
            }
            resolved.push(Arc::new(source));
        }
        self.check_collisions(&enums, &resolved)?;
        let run_kinds = match raw.runs {
            Some(entries) => Some(
                entries
                    .0
                    .into_iter()
                    .map(|(name, value)| self.resolve_run_kind(name, &value))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };
        let permissions = PermissionResolver {
            spans: self.spans,
            sources: &resolved,
            run_kinds: run_kinds.as_deref(),
        };
        let roles = match raw.permissions {
            Some(entries) => permissions.roles(entries.0)?,
            None => Vec::new(),
        };
        let api_keys = match raw.api_keys {
            Some(entries) => permissions.api_keys(entries.0)?,
            None => Vec::new(),
        };
        Ok(Resolved {
            enums,
            sources: resolved,
            triggers,
            run_kinds,
            permissions: roles,
            api_keys,
        })
    }

    /// A run kind: `name: { executor: external | demo | http, … }`.
    fn resolve_run_kind(
        &self,
        name: String,
        value: &serde_yaml::Value,
    ) -> Result<RunKind, Problem> {
        let at = self.spans.key(&["runs", &name]);
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !valid_name {
            return Err(Problem::new(at, format!("invalid run kind name {name:?}"))
                .hint("use letters, digits, _, - and . (at most 64)"));
        }
        let example = "e.g. { executor: demo }, { executor: external } or { executor: http, url: http://worker:8080/runs }";
        let serde_yaml::Value::Mapping(mapping) = value else {
            return Err(
                Problem::new(at, format!("run kind {name:?} must be a mapping")).hint(example),
            );
        };
        let executors: Vec<&str> = RUN_KIND_KEYS.iter().map(|(e, _)| *e).collect();
        let executor = match mapping.get("executor") {
            None => {
                return Err(
                    Problem::new(at, format!("run kind {name:?} has no executor")).hint(format!(
                        "add `executor:` ({}); {example}",
                        list(&executors, "or")
                    )),
                );
            }
            Some(v) => v.as_str().unwrap_or_default().to_owned(),
        };
        let value_at = |key: &str| self.spans.value_at(&["runs", &name, key]);
        let Some((_, keys)) = RUN_KIND_KEYS.iter().find(|(e, _)| *e == executor) else {
            let suggestion = closest(&executor, executors.iter().copied())
                .map(|near| format!("did you mean {near:?}? "))
                .unwrap_or_default();
            return Err(Problem::new(
                value_at("executor"),
                format!("unknown executor {executor:?} for run kind {name:?}"),
            )
            .hint(format!("{suggestion}use {}", list(&executors, "or"))));
        };
        for key in mapping.keys() {
            let key = key.as_str().unwrap_or_default();
            if !keys.contains(&key) {
                return Err(Problem::new(
                    self.spans.key(&["runs", &name, key]),
                    format!("unknown key {key:?} for run kind {name:?} (executor {executor})"),
                )
                .hint(format!("valid keys here are {}", list(keys, "and"))));
            }
        }
        let number = |key: &str,
                      default: u64,
                      range: std::ops::RangeInclusive<u64>|
         -> Result<u64, Problem> {
            match mapping.get(key) {
                None => Ok(default),
                Some(v) => v.as_u64().filter(|n| range.contains(n)).ok_or_else(|| {
                    Problem::new(
                        value_at(key),
                        format!(
                            "{key} of run kind {name:?} must be a whole number from {} to {}",
                            range.start(),
                            range.end()
                        ),
                    )
                }),
            }
        };
        let executor = match executor.as_str() {
            "demo" => Executor::Demo {
                items: u32::try_from(number("items", 5, 1..=10_000)?).unwrap_or(5),
                item: std::time::Duration::from_millis(number("item_ms", 500, 0..=600_000)?),
            },
            "http" => {
                let Some(url) = mapping.get("url") else {
                    return Err(Problem::new(at, format!("run kind {name:?} (executor http) has no url"))
                        .hint("add `url:`, the worker's endpoint that receives each run, e.g. http://worker:8080/runs"));
                };
                let url = url.as_str().unwrap_or_default().to_owned();
                if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
                    return Err(Problem::new(
                        value_at("url"),
                        format!(
                            "url {url:?} of run kind {name:?} must be an http:// or https:// URL"
                        ),
                    ));
                }
                Executor::Http {
                    url,
                    deadline: std::time::Duration::from_secs(number("deadline_s", 60, 1..=86_400)?),
                }
            }
            _ => Executor::External,
        };
        Ok(RunKind { name, executor })
    }

    /// A trigger declared under a source: the same fields as `create_S_trigger`'s input,
    /// validated the same way (the webhook's addresses are checked when the server starts).
    fn resolve_trigger(
        &self,
        source: &SourceDef,
        name: String,
        value: &serde_yaml::Value,
    ) -> Result<DeclaredTrigger, Problem> {
        let s = source.name.as_str();
        let path = ["sources", s, "triggers", name.as_str()];
        let at = self.spans.key(&path);
        let serde_yaml::Value::Mapping(mapping) = value else {
            return Err(Problem::new(
                at,
                format!("trigger {name:?} of source {s:?} must be a mapping"),
            )
            .hint("e.g. { webhook: https://…, fire: { <column>: { _gt: 10 } } }"));
        };
        for key in mapping.keys() {
            let key = key.as_str().unwrap_or_default();
            if !TRIGGER_KEYS.contains(&key) {
                return Err(Problem::new(
                    self.spans.key(&["sources", s, "triggers", &name, key]),
                    format!("unknown key {key:?} in trigger {name:?} of source {s:?}"),
                )
                .hint(unknown_key_hint(key, TRIGGER_KEYS)));
            }
        }
        let mut input = serde_json::to_value(value)
            .map_err(|e| Problem::new(at, format!("trigger {name:?} of source {s:?}: {e}")))?;
        input["name"] = serde_json::Value::String(name.clone());
        let invalid = |message: String| {
            // Point at the field the message is about, when it names one.
            let field = TRIGGER_KEYS.iter().find(|k| {
                let rest = message.strip_prefix(**k).unwrap_or("-");
                rest.starts_with([':', ' ', '.']) && mapping.contains_key(**k)
            });
            let at = field.map_or(at, |k| {
                self.spans.value_at(&["sources", s, "triggers", &name, k])
            });
            Problem::new(at, format!("trigger {name:?} of source {s:?}: {message}")).hint(
                format!(
                    "a declared trigger takes the fields of create_{s}_trigger's input: webhook and fire \
                     (required), clear, headers, retry, format, fields, cooldown_ms, fire_existing"
                ),
            )
        };
        let spec = crate::trigger::TriggerSpec::from_input(source, &input)
            .map_err(|e| invalid(e.to_string()))?;
        crate::trigger::parse_target(&spec.webhook).map_err(|e| invalid(e.to_string()))?;
        Ok(DeclaredTrigger {
            source: source.name.clone(),
            name,
            input,
        })
    }

    fn resolve_enum(&self, name: String, labels: Vec<String>) -> Result<EnumDef, Problem> {
        let at = self.spans.key(&["enums", &name]);
        check_name(&name, at, "an enum", None)?;
        if labels.is_empty() {
            return Err(
                Problem::new(at, format!("enum {name:?} has no values")).hint(format!(
                    "list its values in order, e.g. {name}: [buy, sell]"
                )),
            );
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, label) in labels.iter().enumerate() {
            let label_at = self.spans.value_at(&["enums", &name, &i.to_string()]);
            if names::RESERVED_ENUM_VALUES.contains(&label.as_str()) {
                return Err(Problem::new(
                    label_at,
                    format!("{label:?} cannot be a value of enum {name:?}: GraphQL reserves it"),
                )
                .hint(format!(
                    "use another label, e.g. {:?} (true, false and null are not enum values)",
                    label.to_uppercase()
                )));
            }
            if !names::is_valid_name(label) {
                return Err(
                    invalid_name(label, label_at, &format!("a value of enum {name:?}"))
                        .hint(name_rules(label)),
                );
            }
            if let Some(first) = seen.insert(label.as_str(), i) {
                let first_at = self.spans.value_at(&["enums", &name, &first.to_string()]);
                return Err(Problem::new(
                    label_at,
                    format!("enum {name:?} lists {label:?} twice (first at {first_at})"),
                )
                .hint("remove one: each value has one position in the enum's order"));
            }
        }
        Ok(EnumDef {
            name,
            values: labels,
        })
    }

    fn resolve_source(
        &self,
        name: String,
        raw: RawSource,
        enums: &[Arc<EnumDef>],
        defaults: &Defaults<'_>,
    ) -> Result<SourceDef, Problem> {
        let s = name.as_str();
        let at = self.spans.key(&["sources", s]);
        check_name(
            s,
            at,
            "a source",
            Some("and keep reading the same relation with `view:` or `table:`"),
        )?;
        let relation = match (&raw.table, &raw.view) {
            (Some(_), Some(_)) => {
                return Err(Problem::new(
                    self.spans.key(&["sources", s, "view"]),
                    format!("source {s:?} has both \"table\" and \"view\""),
                )
                .hint("keep one of them: both name the relation to read"));
            }
            (Some(text), None) => self.relation(s, "table", text)?,
            (None, Some(text)) => self.relation(s, "view", text)?,
            (None, None) => QualifiedName {
                schema: None,
                name: ident::fold(s),
            },
        };
        let backend = match &raw.backend {
            Some(v) => parse_backend(v, self.spans.value_at(&["sources", s, "backend"]))?,
            None => defaults.backend,
        };
        let start = match &raw.start {
            Some(v) => parse_start(v, self.spans.value_at(&["sources", s, "start"]))?,
            None => defaults.start,
        };
        let feed = self.resolve_feed_options(s, &raw, backend, defaults)?;
        let raw_columns = raw.columns.map(|c| c.0).unwrap_or_default();
        if raw_columns.is_empty() {
            let at = if self.spans.contains(&["sources", s, "columns"]) {
                self.spans.key(&["sources", s, "columns"])
            } else {
                at
            };
            return Err(
                Problem::new(at, format!("source {s:?} has no columns")).hint(
                    "list its columns in GraphQL field order under `columns:`, e.g. `id: Integer`",
                ),
            );
        }
        let mut columns: Vec<ColumnDef> = Vec::with_capacity(raw_columns.len());
        for (column, raw_column) in raw_columns {
            let resolved = self.resolve_column(s, column, raw_column, enums)?;
            if let Some(other) = columns.iter().find(|c| c.sql_name == resolved.sql_name) {
                let other_at = self.spans.key(&["sources", s, "columns", &other.name]);
                return Err(Problem::new(
                    self.spans.key(&["sources", s, "columns", &resolved.name]),
                    format!(
                        "columns {:?} and {:?} of source {s:?} both read SQL column {:?} \
                         (the other is at {other_at})",
                        resolved.name, other.name, resolved.sql_name
                    ),
                )
                .hint(
                    "unquoted names fold to lowercase; give each a distinct SQL column, \
                     e.g. { type: Float, column: '\"Price\"' } for a mixed-case one",
                ));
            }
            columns.push(resolved);
        }
        let primary_key = self.resolve_key(s, raw.primary_key, &columns)?;
        Ok(SourceDef {
            name,
            relation,
            backend,
            start,
            columns,
            primary_key,
            feed,
        })
    }

    /// `cluster`, `envelope` and `retention`: each for the backend that uses it.
    fn resolve_feed_options(
        &self,
        s: &str,
        raw: &RawSource,
        backend: Backend,
        defaults: &Defaults<'_>,
    ) -> Result<FeedOptions, Problem> {
        let only_for = |key: &str, wanted: Backend| {
            Problem::new(
                self.spans.key(&["sources", s, key]),
                format!(
                    "{key:?} of source {s:?} applies to {} sources, and this one's backend is {}",
                    wanted.as_str(),
                    backend.as_str()
                ),
            )
            .hint(format!(
                "remove {key:?}, or set `backend: {}` on the source",
                wanted.as_str()
            ))
        };
        let mut options = FeedOptions::default();
        if let Some(cluster) = &raw.cluster {
            if backend != Backend::Materialize {
                return Err(only_for("cluster", Backend::Materialize));
            }
            check_cluster(cluster, self.spans.value_at(&["sources", s, "cluster"]))?;
            options.cluster = Some(cluster.clone());
        } else if backend == Backend::Materialize {
            options.cluster = defaults.cluster.map(str::to_owned);
        }
        if let Some(database) = &raw.database {
            if backend != Backend::Materialize {
                return Err(only_for("database", Backend::Materialize));
            }
            check_database(database, self.spans.value_at(&["sources", s, "database"]))?;
            options.database = Some(database.clone());
        } else if backend == Backend::Materialize {
            options.database = defaults.database.map(str::to_owned);
        }
        if let Some(envelope) = &raw.envelope {
            if backend != Backend::Materialize {
                return Err(only_for("envelope", Backend::Materialize));
            }
            options.envelope = parse_choice(
                envelope,
                self.spans.value_at(&["sources", s, "envelope"]),
                "envelope",
                ENVELOPES,
            )?;
        }
        if let Some(retention) = &raw.retention {
            if backend != Backend::RisingWave {
                return Err(only_for("retention", Backend::RisingWave));
            }
            if !RETENTION.is_match(retention) {
                return Err(Problem::new(
                    self.spans.value_at(&["sources", s, "retention"]),
                    format!("invalid retention {retention:?} for source {s:?}"),
                )
                .hint("write a number and a unit, e.g. 30m, 1h or 1D (s, m, h, D)"));
            }
            options.retention = Some(retention.clone());
        }
        Ok(options)
    }

    fn relation(&self, source: &str, key: &str, text: &str) -> Result<QualifiedName, Problem> {
        ident::parse_relation(text).map_err(|IdentError { message, hint }| {
            Problem::new(
                self.spans.value_at(&["sources", source, key]),
                format!("invalid {key} name {text:?} for source {source:?}: {message}"),
            )
            .hint(hint)
        })
    }

    fn resolve_column(
        &self,
        source: &str,
        name: String,
        raw: RawColumn,
        enums: &[Arc<EnumDef>],
    ) -> Result<ColumnDef, Problem> {
        let path = ["sources", source, "columns", name.as_str()];
        let at = self.spans.key(&path);
        check_name(
            &name,
            at,
            &format!("a column of source {source:?}"),
            Some("and keep reading the same SQL column with { type: ..., column: ... }"),
        )?;
        if names::EXPRESSION_OPERATOR_FIELDS.contains(&name.as_str()) {
            return Err(Problem::new(
                at,
                format!(
                    "column name {name:?} of source {source:?} is reserved: filters use it \
                     as an operator"
                ),
            )
            .hint(format!(
                "rename it and keep the SQL column: {}: {{ type: ..., column: {} }}",
                name.trim_start_matches('_'),
                name
            )));
        }
        let (ty_name, ty_at, sql) = match raw {
            RawColumn::Short(ty) => (ty, self.spans.value_at(&path), None),
            RawColumn::Long(RawColumnLong { ty, column }) => {
                let Some(ty) = ty else {
                    return Err(Problem::new(
                        at,
                        format!("column {name:?} of source {source:?} has no \"type\""),
                    )
                    .hint("write { type: <type>, column: <SQL name> }"));
                };
                let ty_at = self.spans.value_at(&[&path[..], &["type"]].concat());
                (ty, ty_at, column)
            }
        };
        let ty = resolve_type(&ty_name, enums).ok_or_else(|| {
            let mut candidates: Vec<&str> = ColumnType::BUILTIN_NAMES.to_vec();
            candidates.extend(enums.iter().map(|e| e.name.as_str()));
            let suggestion = closest(&ty_name, candidates)
                .map(|near| format!("did you mean {near:?}? "))
                .unwrap_or_default();
            Problem::new(
                ty_at,
                format!("unknown type {ty_name:?} for column {name:?} of source {source:?}"),
            )
            .hint(format!(
                "{suggestion}use one of {}, or an enum declared under \"enums\" (names are \
                 case-sensitive)",
                ColumnType::BUILTIN_NAMES.join(", ")
            ))
        })?;
        let sql_name = match sql {
            Some(text) => ident::parse_column(&text).map_err(|IdentError { message, hint }| {
                Problem::new(
                    self.spans.value_at(&[&path[..], &["column"]].concat()),
                    format!(
                        "invalid SQL column name {text:?} for column {name:?} of source \
                         {source:?}: {message}"
                    ),
                )
                .hint(hint)
            })?,
            None => ident::fold(&name),
        };
        Ok(ColumnDef { name, sql_name, ty })
    }

    fn resolve_key(
        &self,
        source: &str,
        raw: Option<RawKey>,
        columns: &[ColumnDef],
    ) -> Result<Vec<usize>, Problem> {
        let key_path = ["sources", source, "primary_key"];
        let (names, positions): (Vec<String>, Vec<Location>) = match raw {
            None => {
                return Err(Problem::new(
                    self.spans.key(&["sources", source]),
                    format!("source {source:?} has no primary_key"),
                )
                .hint(format!(
                    "add `primary_key: {}` (a column, or a list of columns for a composite key)",
                    columns[0].name
                )));
            }
            Some(RawKey::One(name)) => (vec![name], vec![self.spans.value_at(&key_path)]),
            Some(RawKey::Many(names)) => {
                let positions = (0..names.len())
                    .map(|i| {
                        self.spans
                            .value_at(&[&key_path[..], &[&i.to_string()]].concat())
                    })
                    .collect();
                (names, positions)
            }
        };
        if names.is_empty() {
            return Err(Problem::new(
                self.spans.value_at(&key_path),
                format!("the primary_key of source {source:?} is an empty list"),
            )
            .hint("name at least one column"));
        }
        let mut indices = Vec::with_capacity(names.len());
        for (name, at) in names.iter().zip(positions) {
            let Some(index) = columns.iter().position(|c| c.name == *name) else {
                let suggestion = closest(name, columns.iter().map(|c| c.name.as_str()))
                    .map(|near| format!("did you mean {near:?}? "))
                    .unwrap_or_default();
                let all: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
                return Err(Problem::new(
                    at,
                    format!("primary key column {name:?} is not a column of source {source:?}"),
                )
                .hint(format!(
                    "{suggestion}the columns of {source:?} are {}",
                    list(&all, "and")
                )));
            };
            if indices.contains(&index) {
                return Err(Problem::new(
                    at,
                    format!("the primary_key of source {source:?} lists {name:?} twice"),
                )
                .hint("list each key column once"));
            }
            indices.push(index);
        }
        Ok(indices)
    }

    fn check_collisions(
        &self,
        enums: &[Arc<EnumDef>],
        sources: &[Arc<SourceDef>],
    ) -> Result<(), Problem> {
        let mut types: HashMap<String, Owner> = names::GLOBAL_TYPE_NAMES
            .iter()
            .map(|n| {
                let owner = Owner {
                    what: "viewcast's built-in types".to_owned(),
                    at: None,
                };
                ((*n).to_owned(), owner)
            })
            .collect();
        let mut claim = |name: String, owner: &Owner| -> Result<(), Problem> {
            if let Some(first) = types.get(&name) {
                let at = owner.at.unwrap_or(Location { line: 1, column: 1 });
                let problem = if first.at.is_none() {
                    Problem::new(
                        at,
                        format!(
                            "{} generates the GraphQL type {name:?}, which is one of \
                             viewcast's own types",
                            owner.what
                        ),
                    )
                    .hint(format!(
                        "rename {}; the names viewcast uses are {}",
                        owner.what,
                        list(names::GLOBAL_TYPE_NAMES, "and")
                    ))
                } else {
                    Problem::new(
                        at,
                        format!(
                            "{} generates the GraphQL type {name:?}, which {} also generates",
                            owner.what,
                            first.describe()
                        ),
                    )
                    .hint(
                        "rename one of them (a source can keep its relation with `view:` or \
                         `table:`)",
                    )
                };
                return Err(problem);
            }
            types.insert(name, owner.clone());
            Ok(())
        };
        for e in enums {
            let owner = Owner {
                what: format!("enum {:?}", e.name),
                at: Some(self.spans.key(&["enums", &e.name])),
            };
            for name in names::enum_type_names(&e.name) {
                claim(name, &owner)?;
            }
        }
        for s in sources {
            let owner = source_owner(self.spans, &s.name);
            for name in names::source_type_names(&s.name) {
                claim(name, &owner)?;
            }
        }
        for root in RootType::ALL {
            let mut fields: HashMap<String, Owner> = names::global_root_fields(root)
                .iter()
                .map(|name| {
                    let owner = Owner {
                        what: "viewcast's runs API".into(),
                        at: None,
                    };
                    ((*name).to_owned(), owner)
                })
                .collect();
            for s in sources {
                let owner = source_owner(self.spans, &s.name);
                for name in names::source_root_fields(root, &s.name) {
                    if let Some(first) = fields.get(&name) {
                        return Err(Problem::new(
                            owner.at.unwrap_or(Location { line: 1, column: 1 }),
                            format!(
                                "{} generates the {} field {name:?}, which {} also generates",
                                owner.what,
                                root.type_name(),
                                first.describe()
                            ),
                        )
                        .hint(if first.at.is_some() {
                            "rename one of the sources (it can keep its relation with \
                             `view:` or `table:`)"
                        } else {
                            "rename the source (it can keep its relation with `view:` or \
                             `table:`)"
                        }));
                    }
                    fields.insert(name, owner.clone());
                }
            }
        }
        Ok(())
    }
}

fn source_owner(spans: &Spans, name: &str) -> Owner {
    Owner {
        what: format!("source {name:?}"),
        at: Some(spans.key(&["sources", name])),
    }
}

fn resolve_type(name: &str, enums: &[Arc<EnumDef>]) -> Option<ColumnType> {
    // Enums take precedence over built-in names, as in tycostream.
    enums
        .iter()
        .find(|e| e.name == name)
        .map(|e| ColumnType::Enum(Arc::clone(e)))
        .or_else(|| ColumnType::builtin(name))
}

/// What a source takes from the top level unless it says otherwise.
struct Defaults<'a> {
    backend: Backend,
    start: StartMode,
    cluster: Option<&'a str>,
    database: Option<&'a str>,
}

static RETENTION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^[1-9][0-9]{0,8} ?(s|sec|secs|seconds?|m|min|mins|minutes?|h|hr|hrs|hours?|d|D|days?)$",
    )
    .unwrap()
});

/// A cluster name goes into `SET cluster = '…'`: keep it to what Materialize accepts.
fn check_cluster(name: &str, at: Location) -> Result<(), Problem> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Problem::new(at, format!("invalid cluster name {name:?}"))
            .hint("cluster names are letters, digits, `_` and `-`, e.g. `quickstart`"))
    }
}

/// A database name goes into `SET database = '…'`: a plain identifier.
fn check_database(name: &str, at: Location) -> Result<(), Problem> {
    let ok = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Problem::new(at, format!("invalid database name {name:?}"))
            .hint("database names are letters, digits and `_`, e.g. `materialize`"))
    }
}

fn parse_backend(value: &str, at: Location) -> Result<Backend, Problem> {
    parse_choice(value, at, "backend", BACKENDS)
}

fn parse_start(value: &str, at: Location) -> Result<StartMode, Problem> {
    parse_choice(value, at, "start mode", START_MODES)
}

fn parse_choice<T: Copy>(
    value: &str,
    at: Location,
    what: &str,
    choices: &[(&str, T)],
) -> Result<T, Problem> {
    if let Some((_, choice)) = choices.iter().find(|(name, _)| *name == value) {
        return Ok(*choice);
    }
    let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
    let suggestion = closest(value, names.iter().copied())
        .map(|near| format!("did you mean {near:?}? "))
        .unwrap_or_default();
    Err(Problem::new(at, format!("unknown {what} {value:?}"))
        .hint(format!("{suggestion}use {}", list(&names, "or"))))
}

fn check_name(name: &str, at: Location, what: &str, keep: Option<&str>) -> Result<(), Problem> {
    if names::is_valid_name(name) {
        return Ok(());
    }
    let mut hint = name_rules(name);
    if let Some(keep) = keep {
        hint = format!(
            "{hint}; rename it, e.g. {:?}, {keep}",
            names::sanitized(name)
        );
    }
    Err(invalid_name(name, at, what).hint(hint))
}

fn invalid_name(name: &str, at: Location, what: &str) -> Problem {
    Problem::new(
        at,
        format!("{name:?} is not a valid GraphQL name for {what}"),
    )
}

fn name_rules(name: &str) -> String {
    if name.starts_with("__") {
        "names starting with \"__\" are reserved for GraphQL introspection".to_owned()
    } else {
        "GraphQL names use ASCII letters, digits and \"_\", and do not start with a digit"
            .to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        load_with_env(Path::new("schema.yaml"), text, &|name| {
            (name == "VIEW").then(|| "Analytics.\"Live PnL\"".to_owned())
        })
    }

    #[test]
    fn env_references_expand_before_parsing() {
        let config = load(
            "sources:\n  pnl:\n    primary_key: id\n    view: '${env.VIEW}'\n    \
             backend: ${env.BACKEND:-risingwave}\n    columns: { id: Integer }\n",
        )
        .unwrap();
        let pnl = config.source("pnl").unwrap();
        assert_eq!(pnl.relation.schema.as_deref(), Some("analytics"));
        assert_eq!(pnl.relation.name, "Live PnL");
        assert_eq!(pnl.backend, Backend::RisingWave);
    }

    #[test]
    fn positions_after_an_expansion_refer_to_the_file_as_written() {
        let err = load(
            "sources:\n  pnl:\n    primary_key: id\n    view: '${env.VIEW}'\n    \
             columns: { id: Intger }\n",
        )
        .unwrap_err();
        assert_eq!(
            err.location(),
            Some(Location {
                line: 5,
                column: 20
            })
        );
        // Same line as the reference: the column is mapped back.
        let err = load(
            "sources:\n  pnl:\n    primary_key: id\n    columns: { x: ${env.B:-Float}, id: Intger }\n",
        )
        .unwrap_err();
        assert_eq!(
            err.location(),
            Some(Location {
                line: 4,
                column: 40
            })
        );
    }

    #[test]
    fn enums_take_precedence_over_builtin_names() {
        let config = load(
            "enums:\n  Float: [low, high]\nsources:\n  t:\n    primary_key: id\n    \
             columns: { id: Integer, f: Float }\n",
        );
        // An enum named like a GraphQL built-in type collides, whatever the precedence.
        assert!(
            config
                .unwrap_err()
                .to_string()
                .contains("GraphQL type \"Float\"")
        );
        let config = load(
            "enums:\n  JSON: [a]\nsources:\n  t:\n    primary_key: id\n    \
             columns: { id: Integer, f: JSON }\n",
        )
        .unwrap();
        assert!(
            matches!(config.sources[0].columns[1].ty, ColumnType::Enum(ref e) if e.name == "JSON")
        );
    }
}
