//! What a webhook receives: deterministic event ids (the receiver's idempotency key), the
//! bodies of both formats, and Standard Webhooks signatures (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>` per secret).

use std::fmt::Write as _;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::model::{PayloadFormat, Trigger};
use crate::change::Position;
use crate::config::SourceDef;
use crate::value::Row;

/// FIRE (a row entered the condition) or CLEAR (it left).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Fire,
    Clear,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Fire => "FIRE",
            EventType::Clear => "CLEAR",
        }
    }
}

/// The same transition always gets the same id, so a receiver drops duplicates (a
/// redelivery, or the same transition found again after a restart): it is derived from the
/// trigger (and its generation), the key, the event type and the upstream position.
pub fn event_id(trigger: &Trigger, key: &Value, event: EventType, position: Position) -> String {
    let mut hash = Sha256::new();
    for part in [
        trigger.source.name.as_str(),
        trigger.spec.name.as_str(),
        &trigger.generation.to_string(),
        event.as_str(),
        &key.to_string(),
        &position.0.to_string(),
    ] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let digest = hash.finalize();
    let mut id = String::from("evt_");
    for byte in &digest[..16] {
        let _ = write!(id, "{byte:02x}");
    }
    id
}

/// A row as JSON: key columns first, then the others in configuration order (tycostream's
/// order); with `fields`, only those (and the key). Values as GraphQL gives them.
pub fn row_json(source: &SourceDef, row: &Row, fields: Option<&[usize]>) -> Value {
    let mut out = Map::new();
    let wanted = |i: usize| source.is_key_column(i) || fields.is_none_or(|f| f.contains(&i));
    let order = source
        .primary_key
        .iter()
        .copied()
        .chain((0..source.columns.len()).filter(|i| !source.is_key_column(*i)));
    for i in order.filter(|i| wanted(*i)) {
        let column = &source.columns[i];
        let value = crate::schema::to_graphql(&column.ty, row.get(i))
            .ok()
            .flatten()
            .map_or(Value::Null, |v| v.into_json().unwrap_or(Value::Null));
        out.insert(column.name.clone(), value);
    }
    Value::Object(out)
}

/// A row's primary key as JSON (what the store keys trigger state by).
pub fn key_json(source: &SourceDef, row: &Row) -> Value {
    Value::Array(
        source
            .primary_key
            .iter()
            .map(|&i| {
                crate::schema::to_graphql(&source.columns[i].ty, row.get(i))
                    .ok()
                    .flatten()
                    .map_or(Value::Null, |v| v.into_json().unwrap_or(Value::Null))
            })
            .collect(),
    )
}

/// The body stored with a delivery (the Hasura format's `delivery_info` is filled in per
/// attempt).
/// `old` and `new` are rows as [`row_json`] renders them (`new` is `None` for a deleted row).
pub fn body(
    trigger: &Trigger,
    event: EventType,
    id: &str,
    at: &str,
    old: Option<&Value>,
    new: Option<&Value>,
) -> Value {
    let source = &trigger.source;
    let json = |row: Option<&Value>| row.cloned().unwrap_or(Value::Null);
    match trigger.spec.format {
        PayloadFormat::Tycostream => {
            // FIRE carries the row that entered; CLEAR the row as it left (its last known
            // values when it was deleted).
            let data = match event {
                EventType::Fire => json(new),
                EventType::Clear => json(new.or(old)),
            };
            json!({
                "event_id": id,
                "event_type": event.as_str(),
                "trigger_name": trigger.spec.name,
                "timestamp": at,
                "data": data,
            })
        }
        PayloadFormat::Hasura => json!({
            "event": {
                "session_variables": null,
                "op": event.as_str(),
                "data": { "old": json(old), "new": json(new) },
            },
            "created_at": at,
            "id": id,
            "trigger": { "name": trigger.spec.name },
            "table": {
                "schema": source.relation.schema.clone().unwrap_or_else(|| "public".into()),
                "name": source.relation.name,
            },
            "delivery_info": { "max_retries": trigger.spec.retry.attempts.saturating_sub(1), "current_retry": 0 },
        }),
    }
}

/// The body sent on attempt `attempt` (0-based).
pub fn for_attempt(stored: &Value, attempt: u32) -> Value {
    let mut body = stored.clone();
    if let Some(info) = body.get_mut("delivery_info") {
        info["current_retry"] = attempt.into();
    }
    body
}

/// A signing secret: `whsec_<base64>` (Standard Webhooks) or any other text, used as bytes.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub fn parse(text: &str) -> Result<Secret, String> {
        match text.strip_prefix("whsec_") {
            Some(encoded) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map(Secret)
                .map_err(|e| format!("a whsec_ secret must be base64 after the prefix: {e}")),
            None if text.is_empty() => Err("an empty webhook secret".into()),
            None => Ok(Secret(text.as_bytes().to_vec())),
        }
    }
}

/// `webhook-signature`: one `v1,<base64>` per secret (several while a secret rotates).
pub fn signature(secrets: &[Secret], id: &str, timestamp: u64, body: &[u8]) -> Option<String> {
    if secrets.is_empty() {
        return None;
    }
    let signatures: Vec<String> = secrets
        .iter()
        .map(|secret| {
            let mut mac = Hmac::<Sha256>::new_from_slice(&secret.0).expect("HMAC takes any key");
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            let digest = mac.finalize().into_bytes();
            format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(digest)
            )
        })
        .collect();
    Some(signatures.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_signature_of_the_spec_example() {
        // The example of the Standard Webhooks specification.
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let signature = signature(
            &[secret],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            body,
        );
        assert_eq!(
            signature.as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
    }

    #[test]
    fn rotation_signs_with_every_secret() {
        let a = Secret::parse("old").unwrap();
        let b = Secret::parse("new").unwrap();
        let both = signature(&[a.clone(), b], "id", 1, b"{}").unwrap();
        let one = signature(&[a], "id", 1, b"{}").unwrap();
        assert_eq!(both.split(' ').count(), 2);
        assert!(both.starts_with(&one));
        assert!(Secret::parse("whsec_not base64!").is_err());
        assert!(signature(&[], "id", 1, b"{}").is_none());
    }
}
