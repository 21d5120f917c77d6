//! A trigger's definition: what `create_S_trigger` takes, what the store keeps.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::TriggerError;
use crate::config::SourceDef;
use crate::feed::Position;
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
