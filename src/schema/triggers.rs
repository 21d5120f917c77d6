//! The trigger API (tycostream's names, extended): `create_S_trigger(input:)`,
//! `delete_S_trigger(name:)`, `S_triggers`, `S_trigger(name:)`, and the `Trigger` type with
//! `fire`/`clear` readable (as the condition's canonical JSON), `source`, `status`, the
//! creation time, the retry policy and the payload format.

use std::sync::Arc;
use std::time::Duration;

use async_graphql::Value as GqlValue;
use async_graphql::dynamic::{
    Enum, Field, FieldFuture, FieldValue, InputObject, InputValue, Object, ResolverContext, Type,
    TypeRef, ValueAccessor,
};

use super::user_error;
use crate::config::{SourceDef, names};
use crate::filter;
use crate::trigger::{PayloadFormat, RetryPolicy, Trigger, TriggerError, TriggerSpec, Triggers};

/// Types shared by every source's triggers.
// One field list per type, in SDL order: split, the types would no longer read as the SDL.
#[allow(clippy::too_many_lines)]
pub fn global_types() -> Vec<Type> {
    let trigger = Object::new("Trigger")
        .description("A webhook that fires when a row enters `fire` and clears when it leaves.")
        .field(string_field("name", true, |t| Some(t.spec.name.clone())))
        .field(string_field("source", true, |t| {
            Some(t.source.name.clone())
        }))
        .field(string_field("webhook", true, |t| {
            Some(t.spec.webhook.clone())
        }))
        .field(
            string_field("fire", true, |t| Some(t.spec.fire.canonical().to_owned()))
                .description("The condition a row enters on, as JSON."),
        )
        .field(
            string_field("clear", false, |t| {
                t.spec.clear.as_ref().map(|c| c.canonical().to_owned())
            })
            .description(
                "The condition a row leaves on, as JSON (null: when `fire` no longer holds).",
            ),
        )
        .field(Field::new(
            "status",
            TypeRef::named_nn("TriggerStatus"),
            |ctx| {
                resolve(&ctx, |t| {
                    GqlValue::Enum(async_graphql::Name::new(t.status().as_str().to_uppercase()))
                })
            },
        ))
        .field(Field::new(
            "format",
            TypeRef::named_nn("WebhookFormat"),
            |ctx| {
                resolve(&ctx, |t| {
                    GqlValue::Enum(async_graphql::Name::new(
                        t.spec.format.as_str().to_uppercase(),
                    ))
                })
            },
        ))
        .field(Field::new(
            "fire_existing",
            TypeRef::named_nn(TypeRef::BOOLEAN),
            |ctx| resolve(&ctx, |t| GqlValue::Boolean(t.spec.fire_existing)),
        ))
        .field(Field::new(
            "cooldown_ms",
            TypeRef::named(TypeRef::INT),
            |ctx| {
                let value = trigger_of(&ctx).map(|t| {
                    t.spec
                        .cooldown
                        .map(|c| GqlValue::from(c.as_millis().min(i32::MAX as u128) as i32))
                });
                FieldFuture::new(async move { value })
            },
        ))
        .field(Field::new(
            "retry",
            TypeRef::named_nn("RetryPolicy"),
            |ctx| {
                let retry = trigger_of(&ctx).map(|t| t.spec.retry);
                FieldFuture::new(async move { Ok(Some(FieldValue::owned_any(retry?))) })
            },
        ))
        .field(string_field("created_at", true, |t| {
            Some(t.created_at.clone())
        }));
    let ms = |d: Duration| GqlValue::from(d.as_millis().min(i32::MAX as u128) as i32);
    let retry = Object::new("RetryPolicy")
        .field(Field::new(
            "attempts",
            TypeRef::named_nn(TypeRef::INT),
            |ctx| policy(&ctx, |p| GqlValue::from(p.attempts)),
        ))
        .field(Field::new(
            "initial_interval_ms",
            TypeRef::named_nn(TypeRef::INT),
            move |ctx| policy(&ctx, |p| ms(p.initial_interval)),
        ))
        .field(Field::new(
            "max_interval_ms",
            TypeRef::named_nn(TypeRef::INT),
            move |ctx| policy(&ctx, |p| ms(p.max_interval)),
        ))
        .field(Field::new(
            "timeout_ms",
            TypeRef::named_nn(TypeRef::INT),
            move |ctx| policy(&ctx, |p| ms(p.timeout)),
        ));
    let retry_input = InputObject::new("RetryPolicyInput")
        .description("How deliveries are retried; every field has a default.")
        .field(InputValue::new("attempts", TypeRef::named(TypeRef::INT)))
        .field(InputValue::new(
            "initial_interval_ms",
            TypeRef::named(TypeRef::INT),
        ))
        .field(InputValue::new(
            "max_interval_ms",
            TypeRef::named(TypeRef::INT),
        ))
        .field(InputValue::new("timeout_ms", TypeRef::named(TypeRef::INT)));
    let header = InputObject::new("WebhookHeaderInput")
        .field(InputValue::new("name", TypeRef::named_nn(TypeRef::STRING)))
        .field(InputValue::new("value", TypeRef::named_nn(TypeRef::STRING)));
    vec![
        trigger.into(),
        retry.into(),
        retry_input.into(),
        header.into(),
        Enum::new("TriggerStatus").items(["ACTIVE", "DISABLED"]).into(),
        Enum::new("WebhookFormat")
            .description("TYCOSTREAM: event_id, event_type, trigger_name, timestamp, data. HASURA: Hasura's event trigger body.")
            .items(["TYCOSTREAM", "HASURA"])
            .into(),
    ]
}

fn trigger_of(ctx: &ResolverContext<'_>) -> async_graphql::Result<Arc<Trigger>> {
    ctx.parent_value.try_downcast_ref::<Arc<Trigger>>().cloned()
}

fn resolve<'a>(
    ctx: &ResolverContext<'a>,
    get: impl FnOnce(&Trigger) -> GqlValue,
) -> FieldFuture<'a> {
    let value = trigger_of(ctx).map(|t| get(&t));
    FieldFuture::new(async move { Ok(Some(value?)) })
}

fn policy<'a>(
    ctx: &ResolverContext<'a>,
    get: impl FnOnce(&RetryPolicy) -> GqlValue,
) -> FieldFuture<'a> {
    let value = ctx.parent_value.try_downcast_ref::<RetryPolicy>().map(get);
    FieldFuture::new(async move { Ok(Some(value?)) })
}

fn string_field(
    name: &str,
    non_null: bool,
    get: impl Fn(&Trigger) -> Option<String> + Send + Sync + 'static,
) -> Field {
    let ty = if non_null {
        TypeRef::named_nn(TypeRef::STRING)
    } else {
        TypeRef::named(TypeRef::STRING)
    };
    Field::new(name, ty, move |ctx| {
        let value = trigger_of(&ctx).map(|t| get(&t).map(GqlValue::String));
        FieldFuture::new(async move { value })
    })
}

/// `STriggerInput`.
pub fn input_type(source: &SourceDef) -> InputObject {
    let expression = names::source_expression_type(&source.name);
    InputObject::new(names::source_trigger_input_type(&source.name))
        .field(InputValue::new("name", TypeRef::named_nn(TypeRef::STRING)))
        .field(InputValue::new("webhook", TypeRef::named_nn(TypeRef::STRING)))
        .field(InputValue::new("fire", TypeRef::named_nn(&expression)))
        .field(InputValue::new("clear", TypeRef::named(&expression)))
        .field(InputValue::new("headers", TypeRef::named_nn_list("WebhookHeaderInput")))
        .field(InputValue::new("retry", TypeRef::named("RetryPolicyInput")))
        .field(InputValue::new("format", TypeRef::named("WebhookFormat")))
        .field(
            InputValue::new("fields", TypeRef::named_nn_list(TypeRef::STRING))
                .description("The columns `data` carries (default: all)."),
        )
        .field(
            InputValue::new("cooldown_ms", TypeRef::named(TypeRef::INT))
                .description("After a FIRE, the same key fires again only after this long."),
        )
        .field(
            InputValue::new("fire_existing", TypeRef::named(TypeRef::BOOLEAN)).description(
                "Whether rows that already match `fire` when the trigger is created FIRE (default false, whether or not the source is live).",
            ),
        )
}

fn triggers<'a>(ctx: &ResolverContext<'a>) -> async_graphql::Result<&'a Arc<Triggers>> {
    ctx.data::<Arc<Triggers>>().map_err(|_| {
        user_error(
            "this server has no triggers (schema built for checking only)",
            "INTERNAL_SERVER_ERROR",
        )
    })
}

fn api_error(err: &TriggerError) -> async_graphql::Error {
    user_error(err.to_string(), err.code())
}

/// `S_triggers` and `S_trigger(name:)`.
pub fn query_fields(source: &Arc<SourceDef>) -> [Field; 2] {
    let name = source.name.clone();
    let list = Field::new(
        names::source_triggers_query_field(&source.name),
        TypeRef::named_nn_list_nn("Trigger"),
        move |ctx| {
            let name = name.clone();
            FieldFuture::new(async move {
                let all = triggers(&ctx)?.list(&name);
                Ok(Some(FieldValue::list(
                    all.into_iter().map(FieldValue::owned_any),
                )))
            })
        },
    );
    let name = source.name.clone();
    let one = Field::new(
        names::source_trigger_query_field(&source.name),
        TypeRef::named("Trigger"),
        move |ctx| {
            let source_name = name.clone();
            FieldFuture::new(async move {
                let wanted = ctx.args.try_get("name")?.string()?.to_owned();
                Ok(triggers(&ctx)?
                    .get(&source_name, &wanted)
                    .map(FieldValue::owned_any))
            })
        },
    )
    .argument(InputValue::new("name", TypeRef::named_nn(TypeRef::STRING)));
    [list, one]
}

/// `create_S_trigger(input:)` and `delete_S_trigger(name:)`.
pub fn mutation_fields(source: &Arc<SourceDef>) -> [Field; 2] {
    let def = source.clone();
    let create = Field::new(
        names::create_trigger_mutation_field(&source.name),
        TypeRef::named_nn("Trigger"),
        move |ctx| {
            let source = def.clone();
            FieldFuture::new(async move {
                let input = ctx.args.try_get("input")?;
                let spec = spec_of(&source, &input.object()?)?;
                let trigger = triggers(&ctx)?
                    .create(&source.name, spec)
                    .await
                    .map_err(|e| api_error(&e))?;
                Ok(Some(FieldValue::owned_any(trigger)))
            })
        },
    )
    .argument(InputValue::new(
        "input",
        TypeRef::named_nn(names::source_trigger_input_type(&source.name)),
    ));
    let name = source.name.clone();
    let delete = Field::new(
        names::delete_trigger_mutation_field(&source.name),
        TypeRef::named_nn("Trigger"),
        move |ctx| {
            let source_name = name.clone();
            FieldFuture::new(async move {
                let wanted = ctx.args.try_get("name")?.string()?.to_owned();
                let trigger = triggers(&ctx)?
                    .delete(&source_name, &wanted)
                    .await
                    .map_err(|e| api_error(&e))?;
                Ok(Some(FieldValue::owned_any(trigger)))
            })
        },
    )
    .argument(InputValue::new("name", TypeRef::named_nn(TypeRef::STRING)));
    [create, delete]
}

/// A validated spec from `STriggerInput`.
fn spec_of(
    source: &SourceDef,
    input: &async_graphql::dynamic::ObjectAccessor<'_>,
) -> async_graphql::Result<TriggerSpec> {
    let bad = |message: String| user_error(message, "BAD_USER_INPUT");
    let condition = |key: &str| -> async_graphql::Result<Option<filter::Filter>> {
        match input.get(key) {
            Some(value) if !value.is_null() => filter::compile(source, value.as_value())
                .map(Some)
                .map_err(|e| bad(format!("{key}: {e}"))),
            _ => Ok(None),
        }
    };
    let int =
        |value: Option<ValueAccessor<'_>>, what: &str| -> async_graphql::Result<Option<u64>> {
            match value {
                Some(v) if !v.is_null() => {
                    let n = v.i64()?;
                    u64::try_from(n)
                        .map(Some)
                        .map_err(|_| bad(format!("{what} must not be negative")))
                }
                _ => Ok(None),
            }
        };
    let mut retry = RetryPolicy::default();
    if let Some(r) = input.get("retry").filter(|v| !v.is_null()) {
        let r = r.object()?;
        if let Some(n) = int(r.get("attempts"), "retry.attempts")? {
            retry.attempts = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if let Some(n) = int(r.get("initial_interval_ms"), "retry.initial_interval_ms")? {
            retry.initial_interval = Duration::from_millis(n);
        }
        if let Some(n) = int(r.get("max_interval_ms"), "retry.max_interval_ms")? {
            retry.max_interval = Duration::from_millis(n);
        }
        if let Some(n) = int(r.get("timeout_ms"), "retry.timeout_ms")? {
            retry.timeout = Duration::from_millis(n);
        }
    }
    retry.validate().map_err(|e| bad(e.to_string()))?;
    let mut headers = Vec::new();
    if let Some(list) = input.get("headers").filter(|v| !v.is_null()) {
        for item in list.list()?.iter() {
            let item = item.object()?;
            let name = item.try_get("name")?.string()?.to_owned();
            let value = item.try_get("value")?.string()?.to_owned();
            let valid_name = axum::http::HeaderName::from_bytes(name.as_bytes()).is_ok();
            let reserved = name.to_ascii_lowercase().starts_with("webhook-")
                || ["content-type", "content-length", "host"]
                    .contains(&name.to_ascii_lowercase().as_str());
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
    }
    let format = match input.get("format").filter(|v| !v.is_null()) {
        Some(v) => PayloadFormat::parse(&v.enum_name()?.to_ascii_lowercase()).unwrap_or_default(),
        None => PayloadFormat::default(),
    };
    let fields = match input.get("fields").filter(|v| !v.is_null()) {
        None => None,
        Some(list) => {
            let mut indices = Vec::new();
            for item in list.list()?.iter() {
                let name = item.string()?;
                let index = source
                    .column_index(name)
                    .ok_or_else(|| bad(format!("fields: {} has no column {name}", source.name)))?;
                indices.push(index);
            }
            Some(indices)
        }
    };
    Ok(TriggerSpec {
        name: input.try_get("name")?.string()?.to_owned(),
        webhook: input.try_get("webhook")?.string()?.to_owned(),
        fire: condition("fire")?.ok_or_else(|| bad("fire is required".into()))?,
        clear: condition("clear")?,
        headers,
        retry,
        format,
        fields,
        cooldown: int(input.get("cooldown_ms"), "cooldown_ms")?.map(Duration::from_millis),
        fire_existing: match input.get("fire_existing") {
            Some(v) if !v.is_null() => v.boolean()?,
            _ => false,
        },
    })
}
