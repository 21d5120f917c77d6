//! `permissions:` and `api_keys:` in `schema.yaml`: what each role may do, and the API keys
//! services and workers present.
//!
//! Once auth is on, a role may do only what its entry here grants (deny by default; the admin
//! may do everything). The shapes follow Hasura's permission rules where they exist: a row
//! filter is a `where` whose string operands may name session variables (`X-Hasura-User-Id`,
//! any case), substituted per session and coerced to the column's type.

use std::collections::BTreeMap;

use super::error::{Location, Problem, closest, list, unknown_key_hint};
use super::spans::Spans;
use super::{ColumnType, RunKind, SourceDef};

/// What one role may do.
#[derive(Debug, Clone, PartialEq)]
pub struct RolePermissions {
    pub role: String,
    /// Per source, in file order; a source absent here is invisible to the role.
    pub sources: Vec<SourcePermissions>,
    pub runs: RunPermissions,
}

impl RolePermissions {
    pub fn source(&self, name: &str) -> Option<&SourcePermissions> {
        self.sources.iter().find(|s| s.source == name)
    }
}

/// What a role may do with one source.
#[derive(Debug, Clone, PartialEq)]
pub struct SourcePermissions {
    pub source: String,
    /// Reading rows (queries and subscriptions); `None`: the role cannot read them.
    pub select: Option<SelectPermission>,
    /// What the role may do with the source's triggers.
    pub triggers: Vec<TriggerAction>,
}

impl SourcePermissions {
    pub fn may(&self, action: TriggerAction) -> bool {
        self.triggers.contains(&action)
    }
}

/// Which rows and columns of a source a role reads.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectPermission {
    /// The row filter as written (JSON); string operands naming `x-hasura-*` variables are
    /// substituted per session by [`SelectPermission::row_filter`]. `None`: every row.
    pub filter: Option<serde_json::Value>,
    /// Indices of the visible columns, in the source's order (the key columns may be hidden).
    pub columns: Vec<usize>,
    /// The most rows one query returns, whatever its `limit` asks for.
    pub limit: Option<usize>,
}

/// An operation on a source's triggers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TriggerAction {
    Read,
    Create,
    Delete,
    Enable,
    Disable,
    Redeliver,
}

impl TriggerAction {
    pub const ALL: [TriggerAction; 6] = [
        TriggerAction::Read,
        TriggerAction::Create,
        TriggerAction::Delete,
        TriggerAction::Enable,
        TriggerAction::Disable,
        TriggerAction::Redeliver,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TriggerAction::Read => "read",
            TriggerAction::Create => "create",
            TriggerAction::Delete => "delete",
            TriggerAction::Enable => "enable",
            TriggerAction::Disable => "disable",
            TriggerAction::Redeliver => "redeliver",
        }
    }
}

/// What a role may do with runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunPermissions {
    /// The kinds it may start.
    pub start: Kinds,
    /// Which runs it may read (fetch, list, stream events of).
    pub read: Scope,
    /// Which runs it may cancel.
    pub cancel: Scope,
    /// Which runs it may append events to (workers with a run-scoped token need no grant).
    pub append: Scope,
}

/// A set of run kinds.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Kinds {
    #[default]
    None,
    All,
    Only(Vec<String>),
}

impl Kinds {
    pub fn contains(&self, kind: &str) -> bool {
        match self {
            Kinds::None => false,
            Kinds::All => true,
            Kinds::Only(kinds) => kinds.iter().any(|k| k == kind),
        }
    }
}

/// Which runs a grant covers: none, those the session's subject created, or all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Scope {
    #[default]
    None,
    Own,
    All,
}

impl Scope {
    /// Whether a run created by `created_by` is covered for a session whose subject is
    /// `subject`.
    pub fn covers(self, created_by: Option<&str>, subject: &str) -> bool {
        match self {
            Scope::None => false,
            Scope::Own => created_by == Some(subject),
            Scope::All => true,
        }
    }
}

/// An API key from `api_keys:`: its SHA-256, and the role and session variables it acts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub name: String,
    pub sha256: [u8; 32],
    pub role: String,
    /// `x-hasura-*` variables, keys lowercased.
    pub variables: BTreeMap<String, String>,
}

/// A session variable a row filter needs and the session lacks, or holds in a form the
/// column cannot compare with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VariableError {
    #[error("the session has no {0}, which this role's row filter on {1} needs")]
    Missing(String, String),
    #[error("session variable {name} is {value:?}, not a value of column {column} ({ty})")]
    Invalid {
        name: String,
        value: String,
        column: String,
        ty: String,
    },
}

impl SelectPermission {
    /// The row filter for a session whose variables `lookup` reads (names lowercased), as a
    /// `where` value with every variable substituted and coerced to its column's type.
    pub fn row_filter(
        &self,
        source: &SourceDef,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<async_graphql::Value>, VariableError> {
        let Some(filter) = &self.filter else {
            return Ok(None);
        };
        let substituted = substitute_object(source, filter, lookup)?;
        Ok(Some(
            async_graphql::Value::from_json(substituted).unwrap_or_default(),
        ))
    }
}

/// Whether a string operand names a session variable (Hasura's rule: an `x-hasura-` prefix,
/// any case).
pub fn is_variable(text: &str) -> bool {
    text.len() > "x-hasura-".len()
        && text.is_char_boundary(9)
        && text[..9].eq_ignore_ascii_case("x-hasura-")
}

fn substitute_object(
    source: &SourceDef,
    value: &serde_json::Value,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<serde_json::Value, VariableError> {
    let serde_json::Value::Object(object) = value else {
        return Ok(value.clone());
    };
    let mut out = serde_json::Map::with_capacity(object.len());
    for (key, value) in object {
        let substituted = match key.as_str() {
            "_and" | "_or" => match value {
                serde_json::Value::Array(items) => serde_json::Value::Array(
                    items
                        .iter()
                        .map(|item| substitute_object(source, item, lookup))
                        .collect::<Result<_, _>>()?,
                ),
                other => substitute_object(source, other, lookup)?,
            },
            "_not" => substitute_object(source, value, lookup)?,
            column => match (source.column_index(column), value) {
                (Some(index), serde_json::Value::Object(operators)) => {
                    let column = &source.columns[index];
                    let mut out = serde_json::Map::with_capacity(operators.len());
                    for (op, operand) in operators {
                        let operand = match operand {
                            serde_json::Value::String(s) if is_variable(s) => {
                                let text = variable(source, s, lookup)?;
                                if matches!(op.as_str(), "_in" | "_nin") {
                                    serde_json::Value::Array(
                                        array_items(&text)
                                            .into_iter()
                                            .map(|item| coerce(column, s, &item, op))
                                            .collect::<Result<_, _>>()?,
                                    )
                                } else {
                                    coerce(column, s, &text, op)?
                                }
                            }
                            serde_json::Value::Array(items) => serde_json::Value::Array(
                                items
                                    .iter()
                                    .map(|item| match item {
                                        serde_json::Value::String(s) if is_variable(s) => {
                                            coerce(column, s, &variable(source, s, lookup)?, op)
                                        }
                                        other => Ok(other.clone()),
                                    })
                                    .collect::<Result<_, _>>()?,
                            ),
                            other => other.clone(),
                        };
                        out.insert(op.clone(), operand);
                    }
                    serde_json::Value::Object(out)
                }
                _ => value.clone(),
            },
        };
        out.insert(key.clone(), substituted);
    }
    Ok(serde_json::Value::Object(out))
}

fn variable(
    source: &SourceDef,
    name: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, VariableError> {
    lookup(&name.to_ascii_lowercase())
        .ok_or_else(|| VariableError::Missing(name.to_ascii_lowercase(), source.name.clone()))
}

/// The items of a list-valued session variable: a JSON array or a PostgreSQL array literal
/// (`{a,b,"c d"}`, as Hasura takes them).
fn array_items(text: &str) -> Vec<String> {
    if let Ok(serde_json::Value::Array(items)) = serde_json::from_str(text) {
        return items
            .into_iter()
            .map(|item| match item {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            })
            .collect();
    }
    let inner = text.trim();
    let inner = inner
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .unwrap_or(inner);
    if inner.trim().is_empty() {
        return Vec::new();
    }
    inner
        .split(',')
        .map(|item| item.trim().trim_matches('"').to_owned())
        .collect()
}

/// A variable's text as an operand of `column` (`_is_null` takes a boolean).
fn coerce(
    column: &super::ColumnDef,
    name: &str,
    text: &str,
    op: &str,
) -> Result<serde_json::Value, VariableError> {
    let invalid = |ty: &str| VariableError::Invalid {
        name: name.to_ascii_lowercase(),
        value: text.to_owned(),
        column: column.name.clone(),
        ty: ty.to_owned(),
    };
    if op == "_is_null" {
        return text
            .parse::<bool>()
            .map(serde_json::Value::Bool)
            .map_err(|_| invalid("Boolean"));
    }
    Ok(match &column.ty {
        ColumnType::Integer => text
            .trim()
            .parse::<i64>()
            .map(serde_json::Value::from)
            .map_err(|_| invalid("Integer"))?,
        ColumnType::Float => text
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(serde_json::Value::Number)
            .ok_or_else(|| invalid("Float"))?,
        ColumnType::Boolean => text
            .parse::<bool>()
            .map(serde_json::Value::Bool)
            .map_err(|_| invalid("Boolean"))?,
        _ => serde_json::Value::String(text.to_owned()),
    })
}

/// A value of each column type that the filter compiler accepts, standing in for session
/// variables while the configuration is checked.
fn sample(ty: &ColumnType) -> String {
    match ty {
        ColumnType::Integer | ColumnType::Float | ColumnType::BigInt | ColumnType::Numeric => {
            "0".into()
        }
        ColumnType::Boolean => "true".into(),
        ColumnType::Uuid => "00000000-0000-0000-0000-000000000000".into(),
        ColumnType::Enum(def) => def.values[0].clone(),
        _ => "x".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Resolution.

const ROLE_KEYS: &[&str] = &["sources", "runs"];
const SOURCE_KEYS: &[&str] = &["select", "triggers"];
const SELECT_KEYS: &[&str] = &["filter", "columns", "limit"];
const RUN_KEYS: &[&str] = &["start", "read", "cancel", "append"];
const API_KEY_KEYS: &[&str] = &["sha256", "role", "session"];
const SCOPES: &[(&str, Scope)] = &[("own", Scope::Own), ("all", Scope::All)];
const EXAMPLE: &str = "e.g.\n  permissions:\n    user:\n      sources:\n        trades:\n          \
     select:\n            filter: { account_id: { _eq: X-Hasura-User-Id } }\n            \
     columns: [id, symbol, price]";

pub(super) struct PermissionResolver<'a> {
    pub spans: &'a Spans,
    pub sources: &'a [std::sync::Arc<SourceDef>],
    pub run_kinds: Option<&'a [RunKind]>,
}

impl PermissionResolver<'_> {
    pub fn roles(
        &self,
        entries: Vec<(String, serde_yaml::Value)>,
    ) -> Result<Vec<RolePermissions>, Problem> {
        entries
            .into_iter()
            .map(|(role, value)| self.role(role, &value))
            .collect()
    }

    fn role(&self, role: String, value: &serde_yaml::Value) -> Result<RolePermissions, Problem> {
        let path = ["permissions", role.as_str()];
        let at = self.spans.key(&path);
        check_role_name(&role, at, "a role under \"permissions\"")?;
        let mapping = self.mapping(&path, value, &format!("role {role:?}"), EXAMPLE)?;
        self.check_keys(&path, mapping, ROLE_KEYS, &format!("role {role:?}"))?;
        let mut sources = Vec::new();
        if let Some(value) = mapping.get("sources") {
            let spath = ["permissions", role.as_str(), "sources"];
            let what = format!("the sources of role {role:?}");
            for (name, value) in self.mapping(&spath, value, &what, EXAMPLE)? {
                let name = name.as_str().unwrap_or_default();
                sources.push(self.source(&role, name, value)?);
            }
        }
        let runs = match mapping.get("runs") {
            Some(value) => self.runs(&role, value)?,
            None => RunPermissions::default(),
        };
        Ok(RolePermissions {
            role,
            sources,
            runs,
        })
    }

    fn source(
        &self,
        role: &str,
        name: &str,
        value: &serde_yaml::Value,
    ) -> Result<SourcePermissions, Problem> {
        let path = ["permissions", role, "sources", name];
        let Some(source) = self.sources.iter().find(|s| s.name == name) else {
            let names: Vec<&str> = self.sources.iter().map(|s| s.name.as_str()).collect();
            let mut hint = format!("the sources are {}", list(&names, "and"));
            if let Some(near) = closest(name, names.iter().copied()) {
                hint = format!("did you mean {near:?}? {hint}");
            }
            return Err(Problem::new(
                self.spans.key(&path),
                format!("role {role:?} names source {name:?}, which is not declared"),
            )
            .hint(hint));
        };
        let what = format!("source {name:?} of role {role:?}");
        let mapping = self.mapping(&path, value, &what, EXAMPLE)?;
        self.check_keys(&path, mapping, SOURCE_KEYS, &what)?;
        let select = match mapping.get("select") {
            Some(value) => Some(self.select(role, source, value)?),
            None => None,
        };
        let triggers = match mapping.get("triggers") {
            Some(value) => {
                let names: Vec<&str> = TriggerAction::ALL.iter().map(|a| a.as_str()).collect();
                self.choices(
                    &["permissions", role, "sources", name, "triggers"],
                    value,
                    &format!("the trigger actions of {what}"),
                    &names,
                )?
                .into_iter()
                .map(|i| TriggerAction::ALL[i])
                .collect()
            }
            None => Vec::new(),
        };
        // A trigger's conditions and payloads see whole rows: administering them is for a
        // role that reads the whole source anyway.
        let whole = select
            .as_ref()
            .is_some_and(|s| s.filter.is_none() && s.columns.len() == source.columns.len());
        if !triggers.is_empty() && !whole {
            return Err(Problem::new(
                self.spans.key(&["permissions", role, "sources", name, "triggers"]),
                format!(
                    "role {role:?} has trigger actions on source {name:?} but does not read all of its rows and columns"
                ),
            )
            .hint("a trigger's conditions and payloads see whole rows: give the role `select: { columns: '*' }` without a filter, or leave the triggers to a role that has it"));
        }
        Ok(SourcePermissions {
            source: name.to_owned(),
            select,
            triggers,
        })
    }

    fn select(
        &self,
        role: &str,
        source: &SourceDef,
        value: &serde_yaml::Value,
    ) -> Result<SelectPermission, Problem> {
        let s = source.name.as_str();
        let path = ["permissions", role, "sources", s, "select"];
        let what = format!("select of source {s:?} for role {role:?}");
        let mapping = self.mapping(&path, value, &what, EXAMPLE)?;
        self.check_keys(&path, mapping, SELECT_KEYS, &what)?;
        let column_names: Vec<&str> = source.columns.iter().map(|c| c.name.as_str()).collect();
        let columns = match mapping.get("columns") {
            None => {
                return Err(Problem::new(
                    self.spans.key(&path),
                    format!("{what} does not say which columns the role sees"),
                )
                .hint(format!(
                    "add `columns: [{}]` with the columns it may see, or `columns: '*'` for all",
                    column_names.join(", ")
                )));
            }
            Some(value) => {
                let mut indices = self.choices(
                    &[&path[..], &["columns"]].concat(),
                    value,
                    &format!("the columns of {what}"),
                    &column_names,
                )?;
                indices.sort_unstable();
                indices
            }
        };
        let limit = match mapping.get("limit") {
            None => None,
            Some(v) => Some(
                v.as_u64()
                    .filter(|n| (1..=1_000_000).contains(n))
                    .ok_or_else(|| {
                        Problem::new(
                            self.spans.value_at(&[&path[..], &["limit"]].concat()),
                            format!("the limit of {what} must be a whole number from 1 to 1000000"),
                        )
                    })? as usize,
            ),
        };
        let filter = match mapping.get("filter") {
            None | Some(serde_yaml::Value::Null) => None,
            Some(value) => {
                let at = self.spans.value_at(&[&path[..], &["filter"]].concat());
                let json = serde_json::to_value(value)
                    .ok()
                    .filter(serde_json::Value::is_object)
                    .ok_or_else(|| {
                        Problem::new(at, format!("the filter of {what} must be a mapping"))
                            .hint("a `where` as queries take it, e.g. { account_id: { _eq: X-Hasura-User-Id } }")
                    })?;
                let permission = SelectPermission {
                    filter: Some(json.clone()),
                    columns: Vec::new(),
                    limit: None,
                };
                // Compiled with a sample value for every variable, as a session would be.
                let sampled = permission
                    .row_filter(source, &|name| {
                        Some(
                            variable_column(source, &json, name)
                                .map_or_else(|| "x".to_owned(), |c| sample(&c.ty)),
                        )
                    })
                    .expect("every variable has a sample");
                if let Some(sampled) = sampled {
                    crate::filter::compile(source, &sampled).map_err(|e| {
                        Problem::new(at, format!("the filter of {what}: {e}")).hint(
                            "a filter is a `where` as queries take it; string values starting \
                             with X-Hasura- name session variables",
                        )
                    })?;
                }
                Some(json)
            }
        };
        Ok(SelectPermission {
            filter,
            columns,
            limit,
        })
    }

    fn runs(&self, role: &str, value: &serde_yaml::Value) -> Result<RunPermissions, Problem> {
        let path = ["permissions", role, "runs"];
        let what = format!("the runs of role {role:?}");
        let example = "e.g. { start: [import], read: own, cancel: own }";
        let mapping = self.mapping(&path, value, &what, example)?;
        self.check_keys(&path, mapping, RUN_KEYS, &what)?;
        let start = match mapping.get("start") {
            None => Kinds::None,
            Some(serde_yaml::Value::String(s)) if s == "*" => Kinds::All,
            Some(value) => {
                let start_path = ["permissions", role, "runs", "start"];
                let kinds: Vec<String> = match value {
                    serde_yaml::Value::Sequence(items) => items
                        .iter()
                        .map(|i| i.as_str().unwrap_or_default().to_owned())
                        .collect(),
                    _ => {
                        return Err(Problem::new(
                            self.spans.value_at(&start_path),
                            format!("`start` of {what} must be a list of run kinds or '*'"),
                        ));
                    }
                };
                if let Some(declared) = self.run_kinds {
                    let names: Vec<&str> = declared.iter().map(|k| k.name.as_str()).collect();
                    for (i, kind) in kinds.iter().enumerate() {
                        if !names.contains(&kind.as_str()) {
                            return Err(Problem::new(
                                self.spans.value_at(&[&start_path[..], &[i.to_string().as_str()]].concat()),
                                format!("role {role:?} may start runs of kind {kind:?}, which `runs:` does not declare"),
                            )
                            .hint(format!("the declared kinds are {}", list(&names, "and"))));
                        }
                    }
                }
                Kinds::Only(kinds)
            }
        };
        let scope = |key: &str| -> Result<Scope, Problem> {
            let Some(value) = mapping.get(key) else {
                return Ok(Scope::None);
            };
            let text = value.as_str().unwrap_or_default();
            SCOPES
                .iter()
                .find(|(name, _)| *name == text)
                .map(|(_, scope)| *scope)
                .ok_or_else(|| {
                    Problem::new(
                        self.spans.value_at(&["permissions", role, "runs", key]),
                        format!("`{key}` of {what} must be own or all"),
                    )
                    .hint("own: the runs this role's user started (a run records its creator); all: every run")
                })
        };
        Ok(RunPermissions {
            start,
            read: scope("read")?,
            cancel: scope("cancel")?,
            append: scope("append")?,
        })
    }

    pub fn api_keys(
        &self,
        entries: Vec<(String, serde_yaml::Value)>,
    ) -> Result<Vec<ApiKey>, Problem> {
        let mut keys: Vec<ApiKey> = Vec::with_capacity(entries.len());
        for (name, value) in entries {
            let path = ["api_keys", name.as_str()];
            let what = format!("API key {name:?}");
            let example = "e.g. { sha256: <hex of the key's SHA-256>, role: worker, session: { x-hasura-user-id: ingest } }";
            let mapping = self.mapping(&path, &value, &what, example)?;
            self.check_keys(&path, mapping, API_KEY_KEYS, &what)?;
            let field = |key: &str| -> Result<String, Problem> {
                match mapping.get(key) {
                    Some(serde_yaml::Value::String(s)) => Ok(s.clone()),
                    Some(_) => Err(Problem::new(
                        self.spans.value_at(&["api_keys", &name, key]),
                        format!("`{key}` of {what} must be a string"),
                    )),
                    None => Err(Problem::new(
                        self.spans.key(&path),
                        format!("{what} has no `{key}`"),
                    )
                    .hint(example)),
                }
            };
            let hex = field("sha256")?;
            let sha256 = parse_sha256(&hex).ok_or_else(|| {
                Problem::new(
                    self.spans.value_at(&["api_keys", &name, "sha256"]),
                    format!("`sha256` of {what} must be 64 hexadecimal digits"),
                )
                .hint("the key itself never goes in the file: `printf %s \"$KEY\" | sha256sum`")
            })?;
            if let Some(other) = keys.iter().find(|k| k.sha256 == sha256) {
                return Err(Problem::new(
                    self.spans.value_at(&["api_keys", &name, "sha256"]),
                    format!(
                        "API keys {:?} and {name:?} have the same sha256",
                        other.name
                    ),
                )
                .hint("give each service its own key"));
            }
            let role = field("role")?;
            check_role_name(
                &role,
                self.spans.value_at(&["api_keys", &name, "role"]),
                &format!("the role of {what}"),
            )?;
            let mut variables = BTreeMap::new();
            if let Some(session) = mapping.get("session") {
                let spath = ["api_keys", name.as_str(), "session"];
                let swhat = format!("the session of {what}");
                for (key, value) in self.mapping(&spath, session, &swhat, example)? {
                    let key = key.as_str().unwrap_or_default();
                    let at = self.spans.key(&["api_keys", &name, "session", key]);
                    if !is_variable(key) {
                        return Err(Problem::new(
                            at,
                            format!("{swhat} names {key:?}, which is not a session variable"),
                        )
                        .hint("session variables start with x-hasura-, e.g. x-hasura-user-id"));
                    }
                    let value = match value {
                        serde_yaml::Value::String(s) => s.clone(),
                        serde_yaml::Value::Number(n) => n.to_string(),
                        serde_yaml::Value::Bool(b) => b.to_string(),
                        _ => {
                            return Err(Problem::new(
                                self.spans.value_at(&["api_keys", &name, "session", key]),
                                format!("{key:?} in {swhat} must be a string"),
                            ));
                        }
                    };
                    variables.insert(key.to_ascii_lowercase(), value);
                }
            }
            keys.push(ApiKey {
                name,
                sha256,
                role,
                variables,
            });
        }
        Ok(keys)
    }

    fn mapping<'v>(
        &self,
        path: &[&str],
        value: &'v serde_yaml::Value,
        what: &str,
        example: &str,
    ) -> Result<&'v serde_yaml::Mapping, Problem> {
        match value {
            serde_yaml::Value::Mapping(mapping) => Ok(mapping),
            _ => Err(
                Problem::new(self.spans.key(path), format!("{what} must be a mapping"))
                    .hint(example.to_owned()),
            ),
        }
    }

    fn check_keys(
        &self,
        path: &[&str],
        mapping: &serde_yaml::Mapping,
        valid: &[&str],
        what: &str,
    ) -> Result<(), Problem> {
        for key in mapping.keys() {
            let key = key.as_str().unwrap_or_default();
            if !valid.contains(&key) {
                return Err(Problem::new(
                    self.spans.key(&[path, &[key]].concat()),
                    format!("unknown key {key:?} in {what}"),
                )
                .hint(unknown_key_hint(key, valid)));
            }
        }
        Ok(())
    }

    /// A list of names out of `valid` (or `'*'` for all of them): their indices, each once.
    fn choices(
        &self,
        path: &[&str],
        value: &serde_yaml::Value,
        what: &str,
        valid: &[&str],
    ) -> Result<Vec<usize>, Problem> {
        let items = match value {
            serde_yaml::Value::String(s) if s == "*" => return Ok((0..valid.len()).collect()),
            serde_yaml::Value::Sequence(items) => items,
            _ => {
                return Err(Problem::new(
                    self.spans.value_at(path),
                    format!("{what} must be a list or '*'"),
                )
                .hint(format!("choose among {}", list(valid, "and"))));
            }
        };
        let mut indices = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let name = item.as_str().unwrap_or_default();
            let at = self
                .spans
                .value_at(&[path, &[i.to_string().as_str()]].concat());
            let Some(index) = valid.iter().position(|v| *v == name) else {
                let mut hint = format!("choose among {}", list(valid, "and"));
                if let Some(near) = closest(name, valid.iter().copied()) {
                    hint = format!("did you mean {near:?}? {hint}");
                }
                return Err(
                    Problem::new(at, format!("{what} include {name:?}, which is unknown"))
                        .hint(hint),
                );
            };
            if indices.contains(&index) {
                return Err(Problem::new(at, format!("{what} include {name:?} twice")));
            }
            indices.push(index);
        }
        Ok(indices)
    }
}

/// The column whose operand is the variable `name` in `filter` (for its sample value).
fn variable_column<'s>(
    source: &'s SourceDef,
    filter: &serde_json::Value,
    name: &str,
) -> Option<&'s super::ColumnDef> {
    let serde_json::Value::Object(object) = filter else {
        return filter
            .as_array()?
            .iter()
            .find_map(|item| variable_column(source, item, name));
    };
    object.iter().find_map(|(key, value)| match key.as_str() {
        "_and" | "_or" | "_not" => variable_column(source, value, name),
        column => {
            let index = source.column_index(column)?;
            let names_it =
                |v: &serde_json::Value| v.as_str().is_some_and(|s| s.eq_ignore_ascii_case(name));
            value
                .as_object()?
                .values()
                .any(|operand| {
                    names_it(operand) || operand.as_array().is_some_and(|a| a.iter().any(names_it))
                })
                .then(|| &source.columns[index])
        }
    })
}

/// Role names: what tokens carry in `x-hasura-allowed-roles`; `admin` belongs to the admin
/// secret.
fn check_role_name(role: &str, at: Location, what: &str) -> Result<(), Problem> {
    if role == crate::auth::ADMIN_ROLE {
        return Err(Problem::new(
            at,
            format!("{what} cannot be \"admin\": the admin secret's role may do everything"),
        )
        .hint("name the role for what it does, e.g. operator"));
    }
    let valid = !role.is_empty()
        && role.len() <= 64
        && role
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid {
        return Err(
            Problem::new(at, format!("invalid role name {role:?} for {what}"))
                .hint("use letters, digits, _, - and . (at most 64)"),
        );
    }
    Ok(())
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_follow_hasura_naming() {
        assert!(is_variable("X-Hasura-User-Id"));
        assert!(is_variable("x-hasura-org"));
        assert!(!is_variable("x-hasura-"));
        assert!(!is_variable("hasura-user-id"));
        assert!(!is_variable("x-hasurä"));
    }

    #[test]
    fn list_variables_take_json_and_postgres_arrays() {
        assert_eq!(array_items("[1, \"b\"]"), ["1", "b"]);
        assert_eq!(array_items("{a, \"b c\",d}"), ["a", "b c", "d"]);
        assert!(array_items("{}").is_empty());
    }
}
