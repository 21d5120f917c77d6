//! The trigger API (tycostream's names, extended): `create_S_trigger(input:)`,
//! `delete_S_trigger(name:)`, `S_triggers`, `S_trigger(name:)`, and the `Trigger` type with
//! `fire`/`clear` readable (as the condition's canonical JSON), `source`, `status`, the
//! creation time, the retry policy and the payload format; plus each trigger's `counters` and
//! `deliveries` (with their attempts), the source's dead-letter queue `S_dead_letters`, and
//! `enable_S_trigger`, `disable_S_trigger` and `redeliver_S_trigger`.

use std::sync::Arc;
use std::time::Duration;

use async_graphql::Value as GqlValue;
use async_graphql::dynamic::{
    Enum, Field, FieldFuture, FieldValue, InputObject, InputValue, Object, ResolverContext, Type,
    TypeRef,
};

use super::{limit_of, of, user_error};
use crate::config::{SourceDef, names};
use crate::trigger::{
    AttemptRecord, Counters, Delivery, DeliveryStatus, Page, RetryPolicy, Trigger, TriggerError,
    TriggerSpec, Triggers,
};

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
        .field(
            string_field("webhook", true, |t| {
                Some(crate::egress::redact_url(&t.spec.webhook))
            })
            .description("Where it sends: scheme, host and port. Its path, query and user info (often a credential) are never shown."),
        )
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
        .field(of::<Arc<Trigger>>(
            "status",
            TypeRef::named_nn("TriggerStatus"),
            |t| GqlValue::Enum(async_graphql::Name::new(t.status().as_str().to_uppercase())),
        ))
        .field(of::<Arc<Trigger>>(
            "format",
            TypeRef::named_nn("WebhookFormat"),
            |t| GqlValue::Enum(async_graphql::Name::new(t.spec.format.as_str().to_uppercase())),
        ))
        .field(of::<Arc<Trigger>>(
            "fire_existing",
            TypeRef::named_nn(TypeRef::BOOLEAN),
            |t| GqlValue::Boolean(t.spec.fire_existing),
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
        }))
        .field(
            of::<Arc<Trigger>>("declared", TypeRef::named_nn(TypeRef::BOOLEAN), |t| {
                GqlValue::Boolean(t.declared)
            })
            .description("Declared in schema.yaml (change it there) rather than created through the API."),
        )
        .field(
            Field::new("counters", TypeRef::named_nn("TriggerCounters"), |ctx| {
                FieldFuture::new(async move {
                    let trigger = trigger_of(&ctx)?;
                    let counters = triggers(&ctx)?
                        .counters(&trigger)
                        .await
                        .map_err(|e| api_error(&e))?;
                    Ok(Some(FieldValue::owned_any(counters)))
                })
            })
            .description("Its events and deliveries so far."),
        )
        .field(
            page_arguments(Field::new(
                "deliveries",
                TypeRef::named_nn_list_nn("Delivery"),
                |ctx| {
                    FieldFuture::new(async move {
                        let trigger = trigger_of(&ctx)?;
                        let page = page_of(&ctx, 20)?;
                        let list = triggers(&ctx)?
                            .deliveries(&trigger, page)
                            .await
                            .map_err(|e| api_error(&e))?;
                        Ok(Some(FieldValue::list(
                            list.into_iter().map(FieldValue::owned_any),
                        )))
                    })
                },
            ))
            .argument(InputValue::new("status", TypeRef::named("DeliveryStatus")))
            .description("Its deliveries, newest first (`limit` default 20, at most 1000; `before`: ids below this one)."),
        );
    let ms = |d: Duration| GqlValue::from(d.as_millis().min(i32::MAX as u128) as i32);
    let retry = Object::new("RetryPolicy")
        .field(of::<RetryPolicy>(
            "attempts",
            TypeRef::named_nn(TypeRef::INT),
            move |p| GqlValue::from(p.attempts),
        ))
        .field(of::<RetryPolicy>(
            "initial_interval_ms",
            TypeRef::named_nn(TypeRef::INT),
            move |p| ms(p.initial_interval),
        ))
        .field(of::<RetryPolicy>(
            "max_interval_ms",
            TypeRef::named_nn(TypeRef::INT),
            move |p| ms(p.max_interval),
        ))
        .field(of::<RetryPolicy>(
            "timeout_ms",
            TypeRef::named_nn(TypeRef::INT),
            move |p| ms(p.timeout),
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
    let delivery = Object::new("Delivery")
        .description("A FIRE or CLEAR event and how its delivery went.")
        .field(of::<Delivery>("id", TypeRef::named_nn(TypeRef::ID), |d| {
            GqlValue::String(d.id.to_string())
        }))
        .field(
            of::<Delivery>("event_id", TypeRef::named_nn(TypeRef::STRING), |d| {
                GqlValue::String(d.event_id.clone())
            })
            .description("The `webhook-id` header: the same for every attempt and redelivery."),
        )
        .field(of::<Delivery>(
            "source",
            TypeRef::named_nn(TypeRef::STRING),
            |d| GqlValue::String(d.source.clone()),
        ))
        .field(of::<Delivery>(
            "trigger_name",
            TypeRef::named_nn(TypeRef::STRING),
            |d| GqlValue::String(d.trigger_name.clone()),
        ))
        .field(of::<Delivery>(
            "event_type",
            TypeRef::named_nn("TriggerEventType"),
            |d| GqlValue::Enum(async_graphql::Name::new(&d.event_type)),
        ))
        .field(of::<Delivery>(
            "status",
            TypeRef::named_nn("DeliveryStatus"),
            |d| GqlValue::Enum(async_graphql::Name::new(d.status.as_str().to_uppercase())),
        ))
        .field(of::<Delivery>(
            "attempts",
            TypeRef::named_nn(TypeRef::INT),
            |d| GqlValue::from(d.attempts),
        ))
        .field(
            of::<Delivery>("last_status", TypeRef::named(TypeRef::INT), |d| {
                d.last_status.map_or(GqlValue::Null, GqlValue::from)
            })
            .description("The HTTP status of the last answer (null: none, or no answer)."),
        )
        .field(of::<Delivery>(
            "last_error",
            TypeRef::named(TypeRef::STRING),
            |d| {
                d.last_error
                    .clone()
                    .map_or(GqlValue::Null, GqlValue::String)
            },
        ))
        .field(
            of::<Delivery>("next_attempt_at", TypeRef::named(TypeRef::STRING), |d| {
                d.next_attempt_at
                    .clone()
                    .map_or(GqlValue::Null, GqlValue::String)
            })
            .description("When a pending delivery is tried next (RFC 3339); null otherwise."),
        )
        .field(of::<Delivery>(
            "created_at",
            TypeRef::named_nn(TypeRef::STRING),
            |d| GqlValue::String(d.created_at.clone()),
        ))
        .field(of::<Delivery>(
            "delivered_at",
            TypeRef::named(TypeRef::STRING),
            |d| {
                d.delivered_at
                    .clone()
                    .map_or(GqlValue::Null, GqlValue::String)
            },
        ))
        .field(
            of::<Delivery>("payload", TypeRef::named_nn("JSONValue"), |d| {
                GqlValue::from_json(d.payload.clone()).unwrap_or(GqlValue::Null)
            })
            .description("The webhook's body (as first sent)."),
        )
        .field(
            Field::new(
                "recent_attempts",
                TypeRef::named_nn_list_nn("DeliveryAttempt"),
                |ctx| {
                    FieldFuture::new(async move {
                        let delivery = ctx.parent_value.try_downcast_ref::<Delivery>()?;
                        let limit = limit_of(&ctx, 10)?;
                        let list = triggers(&ctx)?
                            .attempts(delivery.id, limit)
                            .await
                            .map_err(|e| api_error(&e))?;
                        Ok(Some(FieldValue::list(
                            list.into_iter().map(FieldValue::owned_any),
                        )))
                    })
                },
            )
            .argument(InputValue::new("limit", TypeRef::named(TypeRef::INT)))
            .description("Its attempts, newest first (`limit` default 10)."),
        );
    let attempt = Object::new("DeliveryAttempt")
        .field(of::<AttemptRecord>(
            "attempt",
            TypeRef::named_nn(TypeRef::INT),
            |a| GqlValue::from(a.attempt),
        ))
        .field(of::<AttemptRecord>(
            "started_at",
            TypeRef::named_nn(TypeRef::STRING),
            |a| GqlValue::String(a.started_at.clone()),
        ))
        .field(of::<AttemptRecord>(
            "duration_ms",
            TypeRef::named_nn(TypeRef::INT),
            |a| GqlValue::from(a.duration_ms),
        ))
        .field(
            of::<AttemptRecord>("status", TypeRef::named(TypeRef::INT), |a| {
                a.status.map_or(GqlValue::Null, GqlValue::from)
            })
            .description("The HTTP status (null: no answer)."),
        )
        .field(of::<AttemptRecord>(
            "error",
            TypeRef::named(TypeRef::STRING),
            |a| a.error.clone().map_or(GqlValue::Null, GqlValue::String),
        ));
    let count = |name: &str, get: fn(&Counters) -> i64| {
        of::<Counters>(name, TypeRef::named_nn(TypeRef::INT), move |c| {
            GqlValue::from(i32::try_from(get(c)).unwrap_or(i32::MAX))
        })
    };
    let counters = Object::new("TriggerCounters")
        .field(count("fired", |c| c.fired).description("FIRE events."))
        .field(count("cleared", |c| c.cleared).description("CLEAR events."))
        .field(count("pending", |c| c.pending))
        .field(count("delivered", |c| c.delivered))
        .field(count("dead", |c| c.dead).description("In the dead-letter queue."));
    vec![
        trigger.into(),
        delivery.into(),
        attempt.into(),
        counters.into(),
        Enum::new("DeliveryStatus")
            .items(DeliveryStatus::ALL.map(|s| s.as_str().to_uppercase()))
            .into(),
        Enum::new("TriggerEventType").items(["FIRE", "CLEAR"]).into(),
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

/// A delivery id argument.
fn id_arg(ctx: &ResolverContext<'_>, name: &str) -> async_graphql::Result<Option<i64>> {
    match ctx.args.get(name) {
        Some(v) if !v.is_null() => {
            let text = match v.as_value() {
                GqlValue::Number(n) => n.to_string(),
                _ => v.string()?.to_owned(),
            };
            text.parse::<i64>().map(Some).map_err(|_| {
                user_error(
                    format!("{name}: {text:?} is not a delivery id"),
                    "BAD_USER_INPUT",
                )
            })
        }
        _ => Ok(None),
    }
}

/// `limit`, `before` and `status`.
fn page_of(ctx: &ResolverContext<'_>, default: i64) -> async_graphql::Result<Page> {
    let status = match ctx.args.get("status") {
        Some(v) if !v.is_null() => DeliveryStatus::parse(v.enum_name()?),
        _ => None,
    };
    Ok(Page {
        status,
        limit: limit_of(ctx, default)?,
        before: id_arg(ctx, "before")?,
    })
}

fn page_arguments(field: Field) -> Field {
    field
        .argument(InputValue::new("limit", TypeRef::named(TypeRef::INT)))
        .argument(InputValue::new("before", TypeRef::named(TypeRef::ID)))
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
    of::<Arc<Trigger>>(name, ty, move |t| {
        get(t).map_or(GqlValue::Null, GqlValue::String)
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
pub fn query_fields(source: &Arc<SourceDef>) -> [Field; 3] {
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
    let name = source.name.clone();
    let dead = page_arguments(Field::new(
        names::source_dead_letters_query_field(&source.name),
        TypeRef::named_nn_list_nn("Delivery"),
        move |ctx| {
            let source_name = name.clone();
            FieldFuture::new(async move {
                let trigger = match ctx.args.get("trigger") {
                    Some(v) if !v.is_null() => Some(v.string()?.to_owned()),
                    _ => None,
                };
                let page = page_of(&ctx, 100)?;
                let list = triggers(&ctx)?
                    .dead_letters(&source_name, trigger.as_deref(), page)
                    .await
                    .map_err(|e| api_error(&e))?;
                Ok(Some(FieldValue::list(
                    list.into_iter().map(FieldValue::owned_any),
                )))
            })
        },
    ))
    .argument(InputValue::new("trigger", TypeRef::named(TypeRef::STRING)))
    .description("The dead-letter queue: deliveries of the source's triggers (or of one) whose attempts are exhausted, newest first (`limit` default 100).");
    [list, one, dead]
}

/// `create_S_trigger(input:)` and `delete_S_trigger(name:)`.
pub fn mutation_fields(source: &Arc<SourceDef>) -> [Field; 5] {
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
    let toggle = |field: String, disabled: bool, what: &str| {
        let name = source.name.clone();
        Field::new(field, TypeRef::named_nn("Trigger"), move |ctx| {
            let source_name = name.clone();
            FieldFuture::new(async move {
                let wanted = ctx.args.try_get("name")?.string()?.to_owned();
                let trigger = triggers(&ctx)?
                    .set_disabled(&source_name, &wanted, disabled)
                    .await
                    .map_err(|e| api_error(&e))?;
                Ok(Some(FieldValue::owned_any(trigger)))
            })
        })
        .argument(InputValue::new("name", TypeRef::named_nn(TypeRef::STRING)))
        .description(what)
    };
    let enable = toggle(
        names::enable_trigger_mutation_field(&source.name),
        false,
        "Sends the trigger's pending deliveries again (after a disable or a 410 from its receiver).",
    );
    let disable = toggle(
        names::disable_trigger_mutation_field(&source.name),
        true,
        "Stops sending: events are still recorded and go out when the trigger is enabled.",
    );
    let name = source.name.clone();
    let redeliver = Field::new(
        names::redeliver_trigger_mutation_field(&source.name),
        TypeRef::named_nn_list_nn("Delivery"),
        move |ctx| {
            let source_name = name.clone();
            FieldFuture::new(async move {
                let wanted = ctx.args.try_get("name")?.string()?.to_owned();
                let from = id_arg(&ctx, "from")?.unwrap_or_default();
                let to = id_arg(&ctx, "to")?.unwrap_or(from);
                let queued = triggers(&ctx)?
                    .redeliver(&source_name, &wanted, from, to)
                    .await
                    .map_err(|e| api_error(&e))?;
                Ok(Some(FieldValue::list(
                    queued.into_iter().map(FieldValue::owned_any),
                )))
            })
        },
    )
    .argument(InputValue::new("name", TypeRef::named_nn(TypeRef::STRING)))
    .argument(InputValue::new("from", TypeRef::named_nn(TypeRef::ID)))
    .argument(InputValue::new("to", TypeRef::named(TypeRef::ID)))
    .description("Queues the trigger's deliveries with ids from `from` to `to` (default: just `from`) again, dead or delivered, with their attempts reset and their event ids kept.");
    [create, delete, enable, disable, redeliver]
}

/// A validated spec from `STriggerInput`.
fn spec_of(
    source: &SourceDef,
    input: &async_graphql::dynamic::ObjectAccessor<'_>,
) -> async_graphql::Result<TriggerSpec> {
    let json = input.as_index_map().clone();
    let json = GqlValue::Object(json).into_json()?;
    TriggerSpec::from_input(source, &json).map_err(|e| api_error(&e))
}
