//! The runs API: `startRun`, `appendRunEvents`, `cancelRun`; `run(id)`, `runs(filter, first,
//! after)` with cursor pagination, `runEvents(runId, fromSeq, limit)`; and the subscriptions
//! `runEvents(runId, fromSeq, coalesce)` (persisted events from `fromSeq`, then live ones,
//! ending after the terminal event) and `runs(filter)` (status changes). Names are camelCase,
//! as the issue that asked for them spells them (the trigger API keeps tycostream's).

use async_graphql::Value as GqlValue;
use async_graphql::dynamic::{
    Enum, Field, FieldFuture, FieldValue, InputObject, InputValue, Object, ResolverContext,
    SubscriptionField, SubscriptionFieldFuture, Type, TypeRef,
};
use futures::StreamExt;

use async_graphql::dataloader::DataLoader;

use super::{limit_of, of, user_error};
use crate::auth::{Grants, RunAccess, Session};
use crate::run::stream::{Follow, Item};
use crate::run::{Event, NewEvent, Run, RunError, RunFilter, RunPage, Runs, STATUSES};

/// The event type of a heartbeat sent to a subscription (never persisted).
pub const HEARTBEAT: &str = "HEARTBEAT";

fn api_error(err: &RunError) -> async_graphql::Error {
    user_error(err.to_string(), err.code())
}

fn runs<'a>(ctx: &ResolverContext<'a>) -> async_graphql::Result<&'a Runs> {
    ctx.data::<Runs>().map_err(|_| {
        user_error(
            "this server has no runs (schema built for checking only)",
            "INTERNAL_SERVER_ERROR",
        )
    })
}

/// What the caller may do with runs: its schema's grants, for its session.
fn access(ctx: &ResolverContext<'_>) -> RunAccess {
    let session = ctx
        .data_opt::<Session>()
        .cloned()
        .unwrap_or_else(Session::admin);
    // Every schema carries its grants; one without is a role's with none.
    ctx.data_opt::<Grants>()
        .cloned()
        .unwrap_or_else(|| Grants::role(&session.role, None))
        .run_access(&session)
}

/// The run `id`, if the caller may read it (one it may not read does not exist for it).
async fn readable(ctx: &ResolverContext<'_>, id: &str) -> Result<Run, RunError> {
    access(ctx).read(runs(ctx).map_err(|_| RunError::NoStore)?.get(id).await?)
}

fn json(value: Option<&serde_json::Value>) -> GqlValue {
    value.map_or(GqlValue::Null, |v| {
        GqlValue::from_json(v.clone()).unwrap_or(GqlValue::Null)
    })
}

fn opt_string(value: Option<&String>) -> GqlValue {
    value.map_or(GqlValue::Null, |s| GqlValue::String(s.clone()))
}

fn status_enum(status: &str) -> GqlValue {
    GqlValue::Enum(async_graphql::Name::new(status.to_uppercase()))
}

fn seq_value(seq: i64) -> GqlValue {
    GqlValue::from(seq)
}

/// Types of the runs API.
pub fn global_types() -> Vec<Type> {
    let status = Enum::new("RunStatus").items(STATUSES.map(str::to_uppercase));
    let mut types = vec![run_type().into(), event_type().into(), status.into()];
    types.extend(input_types());
    types.extend(page_types());
    types
}

fn run_type() -> Object {
    Object::new("Run")
        .description("A long job and its ordered, replayable events.")
        .field(of::<Run>("id", TypeRef::named_nn(TypeRef::ID), |r| {
            GqlValue::String(r.id.clone())
        }))
        .field(of::<Run>("kind", TypeRef::named_nn(TypeRef::STRING), |r| {
            GqlValue::String(r.kind.clone())
        }))
        .field(of::<Run>("status", TypeRef::named_nn("RunStatus"), |r| {
            status_enum(&r.status)
        }))
        .field(of::<Run>("input", TypeRef::named_nn("JSONValue"), |r| {
            json(Some(&r.input))
        }))
        .field(of::<Run>(
            "idempotencyKey",
            TypeRef::named(TypeRef::STRING),
            |r| opt_string(r.idempotency_key.as_ref()),
        ))
        .field(of::<Run>(
            "createdAt",
            TypeRef::named_nn(TypeRef::STRING),
            |r| GqlValue::String(r.created_at.clone()),
        ))
        .field(of::<Run>(
            "startedAt",
            TypeRef::named(TypeRef::STRING),
            |r| opt_string(r.started_at.as_ref()),
        ))
        .field(of::<Run>(
            "finishedAt",
            TypeRef::named(TypeRef::STRING),
            |r| opt_string(r.finished_at.as_ref()),
        ))
        .field(
            of::<Run>("lastSeq", TypeRef::named_nn(TypeRef::INT), |r| {
                seq_value(r.next_seq - 1)
            })
            .description("The seq of its last event (0: none yet)."),
        )
        .field(
            of::<Run>("terminalType", TypeRef::named(TypeRef::STRING), |r| {
                opt_string(r.terminal_type.as_ref())
            })
            .description("COMPLETED, FAILED or CANCELLED once it has ended."),
        )
        .field(of::<Run>(
            "terminalMessage",
            TypeRef::named(TypeRef::STRING),
            |r| opt_string(r.terminal_message.as_ref()),
        ))
        .field(
            of::<Run>("createdBy", TypeRef::named(TypeRef::STRING), |r| {
                opt_string(r.created_by.as_ref())
            })
            .description(
                "Who started it: the session's x-hasura-user-id (or role); null for the admin.",
            ),
        )
        .field(
            Field::new("events", TypeRef::named_nn_list_nn("RunEvent"), |ctx| {
                FieldFuture::new(async move {
                    let run = ctx.parent_value.try_downcast_ref::<Run>()?;
                    let from = from_seq_of(&ctx)?;
                    let limit = limit_of(&ctx, 100)?;
                    // Batched: a page of runs with their events is one store query, not one
                    // per run.
                    let loader = ctx.data::<DataLoader<EventsLoader>>()?;
                    let events = loader
                        .load_one((run.id.clone(), from, limit))
                        .await
                        .map_err(|e| api_error(&e))?
                        .unwrap_or_default();
                    Ok(Some(events_value(events)))
                })
            })
            .argument(from_seq_argument())
            .argument(InputValue::new("limit", TypeRef::named(TypeRef::INT)))
            .description(
                "Its persisted events from `fromSeq`, at most `limit` (default 100, at most 1000).",
            ),
        )
}

fn event_type() -> Object {
    Object::new("RunEvent")
        .description("One event of a run. `seq` numbers a run's events from 1 without gap.")
        .field(of::<Event>("runId", TypeRef::named_nn(TypeRef::ID), |e| {
            GqlValue::String(e.run_id.clone())
        }))
        .field(
            of::<Event>("seq", TypeRef::named_nn(TypeRef::INT), |e| seq_value(e.seq))
                .description("Its place in the run; a HEARTBEAT repeats the last seq sent."),
        )
        .field(
            of::<Event>("type", TypeRef::named_nn(TypeRef::STRING), |e| {
                GqlValue::String(e.event_type.clone())
            })
            .description("STARTED, PROGRESS, LOG, … COMPLETED, FAILED or CANCELLED (the last event); HEARTBEAT on a subscription when the run has been quiet (not persisted)."),
        )
        .field(of::<Event>("stage", TypeRef::named(TypeRef::STRING), |e| {
            opt_string(e.stage.as_ref())
        }))
        .field(of::<Event>("message", TypeRef::named(TypeRef::STRING), |e| {
            opt_string(e.message.as_ref())
        }))
        .field(of::<Event>("percentage", TypeRef::named(TypeRef::FLOAT), |e| {
            e.percentage.map_or(GqlValue::Null, GqlValue::from)
        }))
        .field(
            of::<Event>("counters", TypeRef::named("JSONValue"), |e| {
                json(e.counters.as_ref())
            })
            .description("X of Y counters, e.g. {\"files_done\": 3, \"files_total\": 10}."),
        )
        .field(of::<Event>("data", TypeRef::named("JSONValue"), |e| {
            json(e.data.as_ref())
        }))
        .field(of::<Event>("createdAt", TypeRef::named_nn(TypeRef::STRING), |e| {
            GqlValue::String(e.created_at.clone())
        }))
}

fn input_types() -> [Type; 2] {
    let input = InputObject::new("RunEventInput")
        .field(
            InputValue::new("type", TypeRef::named_nn(TypeRef::STRING))
                .description("Capitals, digits and _, e.g. PROGRESS; COMPLETED, FAILED or CANCELLED end the run."),
        )
        .field(InputValue::new("stage", TypeRef::named(TypeRef::STRING)))
        .field(InputValue::new("message", TypeRef::named(TypeRef::STRING)))
        .field(
            InputValue::new("percentage", TypeRef::named(TypeRef::FLOAT))
                .description("0 to 100."),
        )
        .field(
            InputValue::new("counters", TypeRef::named("JSONValue"))
                .description("An object of X of Y counters."),
        )
        .field(InputValue::new("data", TypeRef::named("JSONValue")));
    let filter = InputObject::new("RunFilter")
        .field(InputValue::new("kind", TypeRef::named(TypeRef::STRING)))
        .field(
            InputValue::new("status", TypeRef::named_nn_list("RunStatus"))
                .description("Any of these statuses."),
        );
    [input.into(), filter.into()]
}

fn page_types() -> [Type; 3] {
    let edge = Object::new("RunEdge")
        .field(of::<(Run, String)>(
            "cursor",
            TypeRef::named_nn(TypeRef::STRING),
            |(_, c)| GqlValue::String(c.clone()),
        ))
        .field(Field::new("node", TypeRef::named_nn("Run"), |ctx| {
            FieldFuture::new(async move {
                let (run, _) = ctx.parent_value.try_downcast_ref::<(Run, String)>()?;
                Ok(Some(FieldValue::owned_any(run.clone())))
            })
        }));
    let page_info = Object::new("PageInfo")
        .field(of::<RunPage>(
            "hasNextPage",
            TypeRef::named_nn(TypeRef::BOOLEAN),
            |p| GqlValue::Boolean(p.has_next_page),
        ))
        .field(
            of::<RunPage>("endCursor", TypeRef::named(TypeRef::STRING), |p| {
                p.runs
                    .last()
                    .map_or(GqlValue::Null, |(_, c)| GqlValue::String(c.clone()))
            })
            .description("Pass as `after` for the next page."),
        );
    let connection = Object::new("RunConnection")
        .description("A page of runs, newest first.")
        .field(page_list("nodes", "Run", |(run, _)| run.clone()))
        .field(page_list("edges", "RunEdge", Clone::clone))
        .field(Field::new(
            "pageInfo",
            TypeRef::named_nn("PageInfo"),
            |ctx| {
                FieldFuture::new(async move {
                    let page = ctx.parent_value.try_downcast_ref::<RunPage>()?;
                    Ok(Some(FieldValue::owned_any(page.clone())))
                })
            },
        ));
    [edge.into(), page_info.into(), connection.into()]
}

/// A list field of `RunConnection`: one item per run of the page.
fn page_list<T: Send + Sync + 'static>(
    name: &str,
    item_type: &str,
    item: fn(&(Run, String)) -> T,
) -> Field {
    Field::new(name, TypeRef::named_nn_list_nn(item_type), move |ctx| {
        FieldFuture::new(async move {
            let page = ctx.parent_value.try_downcast_ref::<RunPage>()?;
            Ok(Some(FieldValue::list(
                page.runs
                    .iter()
                    .map(|edge| FieldValue::owned_any(item(edge))),
            )))
        })
    })
}

fn events_value(events: Vec<Event>) -> FieldValue<'static> {
    FieldValue::list(events.into_iter().map(FieldValue::owned_any))
}

fn from_seq_argument() -> InputValue {
    InputValue::new("fromSeq", TypeRef::named(TypeRef::INT))
        .description("The first seq wanted (default 1).")
}

fn from_seq_of(ctx: &ResolverContext<'_>) -> async_graphql::Result<i64> {
    match ctx.args.get("fromSeq") {
        Some(v) if !v.is_null() => {
            let n = v.i64()?;
            if n >= 1 {
                Ok(n)
            } else {
                Err(user_error("fromSeq must be 1 or more", "BAD_USER_INPUT"))
            }
        }
        _ => Ok(1),
    }
}

fn string_arg(ctx: &ResolverContext<'_>, name: &str) -> async_graphql::Result<Option<String>> {
    match ctx.args.get(name) {
        Some(v) if !v.is_null() => Ok(Some(v.string()?.to_owned())),
        _ => Ok(None),
    }
}

fn json_arg(value: Option<async_graphql::dynamic::ValueAccessor<'_>>) -> Option<serde_json::Value> {
    value
        .filter(|v| !v.is_null())
        .and_then(|v| v.as_value().clone().into_json().ok())
}

fn filter_of(ctx: &ResolverContext<'_>) -> async_graphql::Result<RunFilter> {
    let mut filter = RunFilter::default();
    if let Some(v) = ctx.args.get("filter").filter(|v| !v.is_null()) {
        let object = v.object()?;
        if let Some(kind) = object.get("kind").filter(|v| !v.is_null()) {
            filter.kind = Some(kind.string()?.to_owned());
        }
        if let Some(list) = object.get("status").filter(|v| !v.is_null()) {
            for status in list.list()?.iter() {
                filter.status.push(status.enum_name()?.to_lowercase());
            }
        }
    }
    Ok(filter)
}

fn new_events(ctx: &ResolverContext<'_>) -> async_graphql::Result<Vec<NewEvent>> {
    let list = ctx.args.try_get("events")?.list()?;
    let mut events = Vec::with_capacity(list.len());
    for item in list.iter() {
        let object = item.object()?;
        let text = |name: &str| -> async_graphql::Result<Option<String>> {
            match object.get(name).filter(|v| !v.is_null()) {
                Some(v) => Ok(Some(v.string()?.to_owned())),
                None => Ok(None),
            }
        };
        events.push(NewEvent {
            event_type: object.try_get("type")?.string()?.to_owned(),
            stage: text("stage")?,
            message: text("message")?,
            percentage: match object.get("percentage").filter(|v| !v.is_null()) {
                Some(v) => Some(v.f64()?),
                None => None,
            },
            counters: json_arg(object.get("counters")),
            data: json_arg(object.get("data")),
        });
    }
    Ok(events)
}

/// Loads the events of the runs a response holds together (`Run.events` of a page of runs).
pub(crate) struct EventsLoader(pub crate::run::Runs);

impl async_graphql::dataloader::Loader<(String, i64, i64)> for EventsLoader {
    type Value = Vec<crate::run::Event>;
    type Error = std::sync::Arc<RunError>;

    async fn load(
        &self,
        keys: &[(String, i64, i64)],
    ) -> Result<std::collections::HashMap<(String, i64, i64), Self::Value>, Self::Error> {
        self.0
            .events_of_many(keys)
            .await
            .map_err(std::sync::Arc::new)
    }
}

/// `run`, `runs`, `runEvents`.
pub fn query_fields() -> [Field; 3] {
    let run = Field::new("run", TypeRef::named("Run"), |ctx| {
        FieldFuture::new(async move {
            let id = ctx.args.try_get("id")?.string()?.to_owned();
            runs(&ctx)?;
            match readable(&ctx, &id).await {
                Ok(run) => Ok(Some(FieldValue::owned_any(run))),
                Err(RunError::NotFound(_)) => Ok(None),
                Err(err) => Err(api_error(&err)),
            }
        })
    })
    .argument(InputValue::new("id", TypeRef::named_nn(TypeRef::ID)))
    .description("A run (null if there is none with this id).");
    let list = Field::new("runs", TypeRef::named_nn("RunConnection"), |ctx| {
        FieldFuture::new(async move {
            let mut filter = filter_of(&ctx)?;
            access(&ctx)
                .restrict(&mut filter)
                .map_err(|e| api_error(&e))?;
            let first = match ctx.args.get("first").filter(|v| !v.is_null()) {
                Some(v) => v.i64()?,
                None => 20,
            };
            let after = string_arg(&ctx, "after")?;
            let page = runs(&ctx)?
                .list(&filter, first, after.as_deref())
                .await
                .map_err(|e| api_error(&e))?;
            Ok(Some(FieldValue::owned_any(page)))
        })
    })
    .argument(InputValue::new("filter", TypeRef::named("RunFilter")))
    .argument(
        InputValue::new("first", TypeRef::named(TypeRef::INT))
            .description("At most this many (default 20, at most 1000)."),
    )
    .argument(
        InputValue::new("after", TypeRef::named(TypeRef::STRING))
            .description("The `endCursor` of the previous page."),
    )
    .description("Runs, newest first.");
    let events = Field::new("runEvents", TypeRef::named_nn_list_nn("RunEvent"), |ctx| {
        FieldFuture::new(async move {
            let id = ctx.args.try_get("runId")?.string()?.to_owned();
            let from = from_seq_of(&ctx)?;
            let limit = limit_of(&ctx, 100)?;
            readable(&ctx, &id).await.map_err(|e| api_error(&e))?;
            let events = runs(&ctx)?
                .events(&id, from, limit)
                .await
                .map_err(|e| api_error(&e))?;
            Ok(Some(events_value(events)))
        })
    })
    .argument(InputValue::new("runId", TypeRef::named_nn(TypeRef::ID)))
    .argument(from_seq_argument())
    .argument(InputValue::new("limit", TypeRef::named(TypeRef::INT)))
    .description(
        "A run's persisted events from `fromSeq`, at most `limit` (default 100, at most 1000).",
    );
    [run, list, events]
}

/// `startRun`, `appendRunEvents`, `cancelRun`.
pub fn mutation_fields() -> [Field; 3] {
    let start = Field::new("startRun", TypeRef::named_nn("Run"), |ctx| {
        FieldFuture::new(async move {
            let kind = ctx.args.try_get("kind")?.string()?.to_owned();
            let input = json_arg(ctx.args.get("input")).unwrap_or_else(|| serde_json::json!({}));
            let key = string_arg(&ctx, "idempotencyKey")?;
            let access = access(&ctx);
            access.start(&kind).map_err(|e| api_error(&e))?;
            let run = runs(&ctx)?
                .start_or_get(&kind, &input, key.as_deref(), access.created_by())
                .await
                .and_then(|(run, created)| access.earlier_start(run, created))
                .map_err(|e| api_error(&e))?;
            Ok(Some(FieldValue::owned_any(run)))
        })
    })
    .argument(InputValue::new("kind", TypeRef::named_nn(TypeRef::STRING)))
    .argument(InputValue::new("input", TypeRef::named("JSONValue")))
    .argument(
        InputValue::new("idempotencyKey", TypeRef::named(TypeRef::STRING))
            .description("Starting again with the same kind and key returns the first run."),
    )
    .description("Starts a run.");
    let append = Field::new(
        "appendRunEvents",
        TypeRef::named_nn_list_nn("RunEvent"),
        |ctx| {
            FieldFuture::new(async move {
                let id = ctx.args.try_get("runId")?.string()?.to_owned();
                let events = new_events(&ctx)?;
                let expected = match ctx.args.get("expectedSeq").filter(|v| !v.is_null()) {
                    Some(v) => Some(v.i64()?),
                    None => None,
                };
                let token = string_arg(&ctx, "token")?;
                // A worker's run-scoped token is its grant; anyone else needs the role's.
                let worker = match &token {
                    Some(token) => runs(&ctx)?
                        .worker_token(&id)
                        .await
                        .is_ok_and(|expected| crate::auth::same_secret(token, &expected)),
                    None => false,
                };
                if !worker {
                    let run = runs(&ctx)?.get(&id).await.map_err(|e| api_error(&e))?;
                    access(&ctx).append(&run).map_err(|e| api_error(&e))?;
                }
                let stored = runs(&ctx)?
                    .append_as_worker(&id, &events, expected, token.as_deref())
                    .await
                    .map_err(|e| api_error(&e))?;
                Ok(Some(events_value(stored)))
            })
        },
    )
    .argument(InputValue::new("runId", TypeRef::named_nn(TypeRef::ID)))
    .argument(InputValue::new(
        "events",
        TypeRef::named_nn_list_nn("RunEventInput"),
    ))
    .argument(
        InputValue::new("expectedSeq", TypeRef::named(TypeRef::INT))
            .description("The seq the first event must get (refused with SEQ_MISMATCH otherwise)."),
    )
    .argument(
        InputValue::new("token", TypeRef::named(TypeRef::STRING)).description(
            "The run-scoped token a worker was sent (needed for runs of an http kind).",
        ),
    )
    .description("Appends events to a run, in order, all or none (for workers).");
    let cancel = Field::new("cancelRun", TypeRef::named_nn("Run"), |ctx| {
        FieldFuture::new(async move {
            let id = ctx.args.try_get("runId")?.string()?.to_owned();
            let reason = string_arg(&ctx, "reason")?;
            let run = runs(&ctx)?.get(&id).await.map_err(|e| api_error(&e))?;
            access(&ctx).cancel(&run).map_err(|e| api_error(&e))?;
            let run = runs(&ctx)?
                .cancel(&id, reason.as_deref())
                .await
                .map_err(|e| api_error(&e))?;
            Ok(Some(FieldValue::owned_any(run)))
        })
    })
    .argument(InputValue::new("runId", TypeRef::named_nn(TypeRef::ID)))
    .argument(InputValue::new("reason", TypeRef::named(TypeRef::STRING)))
    .description("Cancels a run: it ends with one CANCELLED event (again: the same run).");
    [start, append, cancel]
}

/// `runEvents` and `runs`.
pub fn subscription_fields() -> [SubscriptionField; 2] {
    let events = SubscriptionField::new("runEvents", TypeRef::named_nn("RunEvent"), |ctx| {
        SubscriptionFieldFuture::new(async move {
            let id = ctx.args.try_get("runId")?.string()?.to_owned();
            let from_seq = from_seq_of(&ctx)?;
            let coalesce = match ctx.args.get("coalesce").filter(|v| !v.is_null()) {
                Some(v) => v.boolean()?,
                None => false,
            };
            readable(&ctx, &id).await.map_err(|e| api_error(&e))?;
            let runs = runs(&ctx)?;
            let follow = Follow {
                from_seq,
                coalesce,
                heartbeat: runs.settings().heartbeat,
            };
            let stream = runs.follow(&id, follow).await.map_err(|e| api_error(&e))?;
            let run_id = id.clone();
            Ok(stream
                .map(move |item| match item {
                    Ok(Item::Event(e)) => Ok(FieldValue::owned_any(Event::clone(&e))),
                    Ok(Item::Heartbeat { seq }) => Ok(FieldValue::owned_any(Event {
                        run_id: run_id.clone(),
                        seq,
                        event_type: HEARTBEAT.into(),
                        stage: None,
                        message: None,
                        percentage: None,
                        counters: None,
                        data: None,
                        created_at: crate::store::now_rfc3339(),
                    })),
                    Err(err) => Err(api_error(&err)),
                })
                .boxed())
        })
    })
    .argument(InputValue::new("runId", TypeRef::named_nn(TypeRef::ID)))
    .argument(from_seq_argument())
    .argument(
        InputValue::new("coalesce", TypeRef::named(TypeRef::BOOLEAN))
            .description("Live PROGRESS events at most once a second, the latest always."),
    )
    .description("A run's events from `fromSeq`: the persisted ones, then live ones, each once and in order; ends after the terminal event.");
    let statuses = SubscriptionField::new("runs", TypeRef::named_nn("Run"), |ctx| {
        SubscriptionFieldFuture::new(async move {
            let mut filter = filter_of(&ctx)?;
            access(&ctx)
                .restrict(&mut filter)
                .map_err(|e| api_error(&e))?;
            let runs = runs(&ctx)?.clone();
            let metrics = runs.metrics().clone();
            Ok(crate::run::bus::status_changes(runs.bus().statuses())
                .then(move |change| {
                    let runs = runs.clone();
                    let metrics = metrics.clone();
                    async move {
                        match change {
                            Ok(id) => runs.get(&id).await,
                            Err(missed) => {
                                metrics.status_lag.inc();
                                Err(RunError::Lagged(missed))
                            }
                        }
                    }
                })
                .filter_map(move |run| {
                    let item = match run {
                        Ok(run) if filter.matches(&run) => Some(Ok(FieldValue::owned_any(run))),
                        Ok(_) | Err(RunError::NotFound(_)) => None,
                        Err(err) => Some(Err(api_error(&err))),
                    };
                    futures::future::ready(item)
                })
                .boxed())
        })
    })
    .argument(InputValue::new("filter", TypeRef::named("RunFilter")))
    .description("Runs as their status changes (created, running, ended), from now on.");
    [events, statuses]
}
