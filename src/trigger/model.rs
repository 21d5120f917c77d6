//! A trigger's definition: what `create_S_trigger` takes, what the store keeps.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::TriggerError;
use crate::change::Position;
use crate::config::SourceDef;
use crate::filter::{self, Filter};

/// How a delivery is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (the first one included) before the event is dead-lettered.
    pub attempts: u32,
    pub initial_interval: Duration,
    pub max_interval: Duration,
    /// Per attempt.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 8,
            initial_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(300),
            timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// Checks the bounds a delivery loop relies on.
    pub fn validate(&self) -> Result<(), TriggerError> {
        let invalid = |what: &str| Err(TriggerError::Invalid(format!("retry: {what}")));
        if !(1..=100).contains(&self.attempts) {
            return invalid("attempts must be between 1 and 100");
        }
        if self.initial_interval.is_zero() || self.initial_interval > self.max_interval {
            return invalid("initial_interval_ms must be positive and at most max_interval_ms");
        }
        if self.max_interval > Duration::from_secs(86_400) {
            return invalid("max_interval_ms must be at most a day (86400000)");
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(300) {
            return invalid("timeout_ms must be between 1 and 300000");
        }
        Ok(())
    }

    fn to_json(self) -> Value {
        json!({
            "attempts": self.attempts,
            "initial_interval_ms": self.initial_interval.as_millis() as u64,
            "max_interval_ms": self.max_interval.as_millis() as u64,
            "timeout_ms": self.timeout.as_millis() as u64,
        })
    }

    fn from_json(value: &Value) -> RetryPolicy {
        let d = RetryPolicy::default();
        let ms = |key: &str, default: Duration| {
            value[key].as_u64().map_or(default, Duration::from_millis)
        };
        RetryPolicy {
            attempts: value["attempts"].as_u64().map_or(d.attempts, |a| a as u32),
            initial_interval: ms("initial_interval_ms", d.initial_interval),
            max_interval: ms("max_interval_ms", d.max_interval),
            timeout: ms("timeout_ms", d.timeout),
        }
    }
}

/// The body a webhook receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PayloadFormat {
    /// tycostream's: `event_id`, `event_type`, `trigger_name`, `timestamp`, `data`.
    #[default]
    Tycostream,
    /// Hasura event triggers': `event.op`, `event.data.old/new`, `trigger.name`, `table`, …
    Hasura,
}

impl PayloadFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadFormat::Tycostream => "tycostream",
            PayloadFormat::Hasura => "hasura",
        }
    }

    pub fn parse(text: &str) -> Option<PayloadFormat> {
        match text {
            "tycostream" => Some(PayloadFormat::Tycostream),
            "hasura" => Some(PayloadFormat::Hasura),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerStatus {
    Active,
    /// Evaluated but not delivered (disabled by a user, or by a 410 from its receiver).
    Disabled,
}

impl TriggerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerStatus::Active => "active",
            TriggerStatus::Disabled => "disabled",
        }
    }
}

/// What a trigger is, as its creator gave it (validated).
#[derive(Debug, Clone)]
pub struct TriggerSpec {
    pub name: String,
    pub webhook: String,
    pub fire: Filter,
    /// `None`: a row leaves when `fire` no longer holds.
    pub clear: Option<Filter>,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    pub retry: RetryPolicy,
    pub format: PayloadFormat,
    /// Columns `data` carries (by index); `None`: all.
    pub fields: Option<Vec<usize>>,
    /// After a FIRE, another FIRE for the same key waits at least this long.
    pub cooldown: Option<Duration>,
    /// Whether rows that already match when the trigger is created FIRE.
    pub fire_existing: bool,
}

impl TriggerSpec {
    /// The JSON the store keeps.
    pub fn definition(&self, source: &SourceDef) -> Value {
        let parse = |text: &str| serde_json::from_str::<Value>(text).unwrap_or(Value::Null);
        json!({
            "webhook": self.webhook,
            "fire": parse(self.fire.canonical()),
            "clear": self.clear.as_ref().map(|c| parse(c.canonical())),
            "headers": self.headers.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            "retry": self.retry.to_json(),
            "format": self.format.as_str(),
            "fields": self.fields.as_ref().map(|f| f.iter().map(|&i| source.columns[i].name.clone()).collect::<Vec<_>>()),
            "cooldown_ms": self.cooldown.map(|c| c.as_millis() as u64),
            "fire_existing": self.fire_existing,
        })
    }

    /// A validated spec from the input of `create_S_trigger` as JSON (also the shape of a
    /// trigger declared in schema.yaml, where `headers` may also be a map).
    pub fn from_input(source: &SourceDef, input: &Value) -> Result<TriggerSpec, TriggerError> {
        let bad = |message: String| TriggerError::Invalid(message);
        let text = |key: &str| -> Result<String, TriggerError> {
            input[key]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| bad(format!("{key} is required (a string)")))
        };
        let condition = |key: &str| -> Result<Option<Filter>, TriggerError> {
            let value = &input[key];
            if value.is_null() {
                return Ok(None);
            }
            let gql = async_graphql::Value::from_json(value.clone())
                .map_err(|e| bad(format!("{key}: {e}")))?;
            filter::compile(source, &gql)
                .map(Some)
                .map_err(|e| bad(format!("{key}: {e}")))
        };
        let retry = retry_input(&input["retry"])?;
        let headers = headers_input(&input["headers"])?;
        let format = match &input["format"] {
            Value::Null => PayloadFormat::default(),
            v => v
                .as_str()
                .and_then(|f| PayloadFormat::parse(&f.to_ascii_lowercase()))
                .ok_or_else(|| bad(format!("format must be tycostream or hasura, not {v}")))?,
        };
        let fields = match &input["fields"] {
            Value::Null => None,
            Value::Array(names) => Some(
                names
                    .iter()
                    .map(|n| {
                        let n = n.as_str().unwrap_or_default();
                        source.column_index(n).ok_or_else(|| {
                            bad(format!("fields: {} has no column {n}", source.name))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            _ => return Err(bad("fields must be a list of column names".into())),
        };
        let fire_existing = match &input["fire_existing"] {
            Value::Null => false,
            Value::Bool(b) => *b,
            _ => return Err(bad("fire_existing must be true or false".into())),
        };
        let name = text("name")?;
        if name.trim().is_empty() {
            return Err(bad("a trigger needs a name".into()));
        }
        Ok(TriggerSpec {
            name,
            webhook: text("webhook")?,
            fire: condition("fire")?.ok_or_else(|| bad("fire is required".into()))?,
            clear: condition("clear")?,
            headers,
            retry,
            format,
            fields,
            cooldown: millis(&input["cooldown_ms"], "cooldown_ms")?.map(Duration::from_millis),
            fire_existing,
        })
    }

    /// A spec from the store's JSON (conditions compiled again against the current config).
    pub fn from_definition(
        source: &SourceDef,
        name: String,
        definition: &Value,
    ) -> Result<TriggerSpec, TriggerError> {
        let condition = |key: &str| -> Result<Option<Filter>, TriggerError> {
            let value = &definition[key];
            if value.is_null() {
                return Ok(None);
            }
            let gql = async_graphql::Value::from_json(value.clone())
                .map_err(|e| TriggerError::Invalid(format!("{key}: {e}")))?;
            filter::compile(source, &gql)
                .map(Some)
                .map_err(|e| TriggerError::Invalid(format!("{key}: {e}")))
        };
        let fields = match definition["fields"].as_array() {
            None => None,
            Some(names) => Some(
                names
                    .iter()
                    .map(|n| {
                        let n = n.as_str().unwrap_or_default();
                        source
                            .column_index(n)
                            .ok_or_else(|| TriggerError::Invalid(format!("fields: no column {n}")))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(TriggerSpec {
            name,
            webhook: definition["webhook"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            fire: condition("fire")?
                .ok_or_else(|| TriggerError::Invalid("fire: missing".into()))?,
            clear: condition("clear")?,
            headers: definition["headers"]
                .as_array()
                .map(|pairs| {
                    pairs
                        .iter()
                        .filter_map(|p| {
                            Some((p[0].as_str()?.to_owned(), p[1].as_str()?.to_owned()))
                        })
                        .collect()
                })
                .unwrap_or_default(),
            retry: RetryPolicy::from_json(&definition["retry"]),
            format: definition["format"]
                .as_str()
                .and_then(PayloadFormat::parse)
                .unwrap_or_default(),
            fields,
            cooldown: definition["cooldown_ms"]
                .as_u64()
                .map(Duration::from_millis),
            fire_existing: definition["fire_existing"].as_bool().unwrap_or(false),
        })
    }
}

/// A whole, non-negative number (`None`: absent).
fn millis(value: &Value, what: &str) -> Result<Option<u64>, TriggerError> {
    match value {
        Value::Null => Ok(None),
        v => v.as_u64().map(Some).ok_or_else(|| {
            TriggerError::Invalid(format!("{what} must be a whole number, not negative"))
        }),
    }
}

/// The `retry` input (defaults for what it leaves out), validated.
fn retry_input(r: &Value) -> Result<RetryPolicy, TriggerError> {
    let bad = |message: String| TriggerError::Invalid(message);
    let mut retry = RetryPolicy::default();
    if !r.is_null() && !r.is_object() {
        return Err(bad("retry must be an object".into()));
    }
    if let Some(n) = millis(&r["attempts"], "retry.attempts")? {
        retry.attempts = u32::try_from(n).unwrap_or(u32::MAX);
    }
    if let Some(n) = millis(&r["initial_interval_ms"], "retry.initial_interval_ms")? {
        retry.initial_interval = Duration::from_millis(n);
    }
    if let Some(n) = millis(&r["max_interval_ms"], "retry.max_interval_ms")? {
        retry.max_interval = Duration::from_millis(n);
    }
    if let Some(n) = millis(&r["timeout_ms"], "retry.timeout_ms")? {
        retry.timeout = Duration::from_millis(n);
    }
    retry.validate()?;
    Ok(retry)
}

/// The `headers` input: a list of `{name, value}` or a map; the server's own refused.
fn headers_input(value: &Value) -> Result<Vec<(String, String)>, TriggerError> {
    let bad = |message: String| TriggerError::Invalid(message);
    let pairs: Vec<(String, String)> = match value {
        Value::Null => Vec::new(),
        Value::Array(items) => items
            .iter()
            .map(
                |item| match (item["name"].as_str(), item["value"].as_str()) {
                    (Some(n), Some(v)) => Ok((n.to_owned(), v.to_owned())),
                    _ => Err(bad("headers: each header needs a name and a value".into())),
                },
            )
            .collect::<Result<_, _>>()?,
        Value::Object(map) => map
            .iter()
            .map(|(n, v)| match v.as_str() {
                Some(v) => Ok((n.clone(), v.to_owned())),
                None => Err(bad(format!("headers: the value of {n:?} must be a string"))),
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(bad(
                "headers must be a list of {name, value} or a map".into()
            ));
        }
    };
    let mut headers = Vec::new();
    for (name, value) in pairs {
        let lower = name.to_ascii_lowercase();
        let valid_name = axum::http::HeaderName::from_bytes(name.as_bytes()).is_ok();
        let reserved = lower.starts_with("webhook-")
            || ["content-type", "content-length", "host"].contains(&lower.as_str());
        if !valid_name || reserved {
            return Err(bad(format!(
                "headers: {name:?} is not a header a trigger may set (the webhook-* signature headers, content-type, content-length and host are the server's)"
            )));
        }
        if axum::http::HeaderValue::from_str(&value).is_err() {
            return Err(bad(format!(
                "headers: the value of {name:?} is not a valid header value"
            )));
        }
        headers.push((name, value));
    }
    Ok(headers)
}

/// What the store knows of a trigger besides its definition.
#[derive(Debug, Clone)]
pub struct TriggerRecord {
    pub status: TriggerStatus,
    /// Declared in schema.yaml rather than created through the API.
    pub declared: bool,
    /// Distinguishes the events of a trigger deleted and created again under its name.
    pub generation: i64,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// The source's position when the trigger was created (`None`: the source was not
    /// synced): rows that matched then are the ones that "already match at creation".
    pub created_position: Option<Position>,
    /// On the replica that created it (not stored): the source hub's batch boundary at
    /// creation, which settles the matching rows exactly even when the source was not synced.
    pub created_boundary: Option<u64>,
}

/// A trigger as the server runs it.
#[derive(Debug)]
pub struct Trigger {
    pub source: Arc<SourceDef>,
    pub spec: TriggerSpec,
    /// Disabled triggers are evaluated but not delivered.
    disabled: std::sync::atomic::AtomicBool,
    pub declared: bool,
    pub generation: i64,
    pub created_at: String,
    pub created_position: Option<Position>,
    pub created_boundary: Option<u64>,
}

impl Trigger {
    pub fn new(source: Arc<SourceDef>, spec: TriggerSpec, record: TriggerRecord) -> Trigger {
        Trigger {
            source,
            spec,
            disabled: std::sync::atomic::AtomicBool::new(record.status == TriggerStatus::Disabled),
            declared: record.declared,
            generation: record.generation,
            created_at: record.created_at,
            created_position: record.created_position,
            created_boundary: record.created_boundary,
        }
    }

    pub fn status(&self) -> TriggerStatus {
        if self.is_disabled() {
            TriggerStatus::Disabled
        } else {
            TriggerStatus::Active
        }
    }

    pub fn is_disabled(&self) -> bool {
        self.disabled.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_disabled(&self, disabled: bool) {
        self.disabled
            .store(disabled, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn from_stored(
        source: Arc<SourceDef>,
        name: String,
        definition: &Value,
        record: TriggerRecord,
    ) -> Result<Trigger, TriggerError> {
        let spec = TriggerSpec::from_definition(&source, name, definition)?;
        Ok(Trigger::new(source, spec, record))
    }
}
