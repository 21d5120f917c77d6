//! The GraphQL schema, generated from the resolved configuration alone.
//!
//! Names follow tycostream (`S`, `SUpdate`, `SExpression`, `subscription S(where:)`) so its
//! clients keep working; everything viewcast adds is additive: the one-shot query
//! `S(where, order_by, limit, offset)`, the `cursor`/`timestamp` fields of `SUpdate`, the
//! `after`/`snapshot_end` subscription arguments and the `SNAPSHOT_END`/`RESET` operations that
//! only clients who ask for them ever see. Resolvers find the hubs in the schema data
//! ([`Hubs`]); building the schema touches no database.

mod encode;
mod output;
mod runs;
mod triggers;

use std::sync::Arc;

use async_graphql::dataloader::DataLoader;
use async_graphql::dynamic::{
    Enum, Field, FieldFuture, FieldValue, InputObject, InputValue, Object, ResolverContext, Scalar,
    Schema, SchemaError, Subscription, SubscriptionField, SubscriptionFieldFuture, TypeRef,
};
use async_graphql::{ErrorExtensions, Value as GqlValue};
use futures::StreamExt;

use crate::auth::{Grants, Select};
use crate::config::{ColumnType, Config, Kinds, Scope, SourceDef, TriggerAction, names};
use crate::filter::{self, Filter};
use crate::hub::{Cursor, Event, Events, Hub, Hubs, Reader, Window};
use crate::limits::{CostModel, FilterBudget, GraphqlLimits, Limit, Rejections};
pub use encode::{BatchEncoder, Encoding, JsonEncoder, PlanSlot, SubscriptionPlan};
pub use output::{RowView, to_graphql};

/// The schema each caller sees: the whole of it for the admin (and everyone when auth is
/// off), a role's own for a role in `permissions:`, and for any other role one that holds
/// nothing but `viewer` (deny by default).
#[derive(Clone)]
pub struct Schemas {
    full: Schema,
    roles: std::collections::HashMap<String, (Schema, Grants)>,
    denied: Schema,
}

impl Schemas {
    /// The admin's schema and one per role of `config.permissions`.
    pub fn build(
        config: &Config,
        services: Services,
        limits: &GraphqlLimits,
    ) -> Result<Schemas, SchemaError> {
        let mut roles = std::collections::HashMap::new();
        for role in &config.permissions {
            let grants = Grants::role(&role.role, Some(role));
            let schema = build_for(config, &grants, services.clone(), limits)?;
            roles.insert(role.role.clone(), (schema, grants));
        }
        Ok(Schemas {
            denied: build_for(config, &Grants::role("", None), services.clone(), limits)?,
            full: build_for(config, &Grants::Admin, services, limits)?,
            roles,
        })
    }

    /// The schema `session` sees.
    pub fn for_session(&self, session: &crate::auth::Session) -> &Schema {
        if session.is_admin() {
            return &self.full;
        }
        self.roles
            .get(&session.role)
            .map_or(&self.denied, |(s, _)| s)
    }

    /// What `session` may do.
    pub fn grants(&self, session: &crate::auth::Session) -> Grants {
        if session.is_admin() {
            return Grants::Admin;
        }
        self.roles
            .get(&session.role)
            .map_or_else(|| Grants::role(&session.role, None), |(_, g)| g.clone())
    }

    /// The admin's schema (the whole API).
    pub fn full(&self) -> &Schema {
        &self.full
    }
}

/// `Viewer`: the caller's role and user id, and the sources it may read.
fn viewer_type(sources: Vec<(Arc<SourceDef>, Arc<Select>)>) -> Object {
    let sources = Arc::new(sources);
    Object::new("Viewer")
        .description("Who is asking: the session's role and user id, and the sources it may read.")
        .field(
            Field::new(
                "sources",
                TypeRef::named_nn_list_nn("SourceInfo"),
                move |ctx| {
                    let sources = sources.clone();
                    FieldFuture::new(async move { Ok(Some(source_infos(&ctx, &sources))) })
                },
            )
            .description("The sources this session may read, with their state, in the configuration's order."),
        )
        .field(of::<crate::auth::Session>(
            "role",
            TypeRef::named_nn(TypeRef::STRING),
            |s| GqlValue::String(s.role.clone()),
        ))
        .field(of::<crate::auth::Session>(
            "userId",
            TypeRef::named(TypeRef::STRING),
            |s| {
                s.variable("x-hasura-user-id")
                    .map_or(GqlValue::Null, |id| GqlValue::String(id.to_owned()))
            },
        ))
}

/// `SourceInfo` and `SourceStatus`: a source as `viewer { sources }` shows it.
fn source_info_types() -> [async_graphql::dynamic::Type; 2] {
    let status = async_graphql::dynamic::Enum::new("SourceStatus")
        .description("Where a source's feed is.")
        .item(
            async_graphql::dynamic::EnumItem::new("IDLE").description(
                "Not started: a lazy source starts with its first subscriber or query.",
            ),
        )
        .item(
            async_graphql::dynamic::EnumItem::new("STARTING")
                .description("Connecting, or waiting for its first snapshot."),
        )
        .item(async_graphql::dynamic::EnumItem::new("LIVE").description("Serving live changes."))
        .item(
            async_graphql::dynamic::EnumItem::new("DOWN")
                .description("Its upstream is lost (see reason); what it had is still served."),
        );
    let info = Object::new("SourceInfo")
        .description("A source this session may read.")
        .field(of::<SourceInfo>(
            "name",
            TypeRef::named_nn(TypeRef::STRING),
            |i| GqlValue::String(i.name.clone()),
        ))
        .field(
            of::<SourceInfo>(
                "primaryKey",
                TypeRef::named_nn_list_nn(TypeRef::STRING),
                |i| {
                    GqlValue::List(
                        i.primary_key
                            .iter()
                            .cloned()
                            .map(GqlValue::String)
                            .collect(),
                    )
                },
            )
            .description("The columns that identify a row (its updates carry them)."),
        )
        .field(of::<SourceInfo>(
            "status",
            TypeRef::named_nn("SourceStatus"),
            |i| GqlValue::Enum(async_graphql::Name::new(i.status)),
        ))
        .field(
            of::<SourceInfo>("reason", TypeRef::named(TypeRef::STRING), |i| {
                i.reason.clone().map_or(GqlValue::Null, GqlValue::String)
            })
            .description("Why it is down."),
        )
        .field(
            of::<SourceInfo>("rows", TypeRef::named(TypeRef::INT), |i| {
                i.rows
                    .map_or(GqlValue::Null, |n| GqlValue::Number(n.into()))
            })
            .description("The rows this session may see now (null before the first snapshot)."),
        )
        .field(
            of::<SourceInfo>("changesPerSecond", TypeRef::named_nn(TypeRef::FLOAT), |i| {
                GqlValue::from(i.changes_per_second)
            })
            .description("Row changes applied per second, over the last 5 seconds (all rows)."),
        );
    [status.into(), info.into()]
}

struct SourceInfo {
    name: String,
    primary_key: Vec<String>,
    status: &'static str,
    reason: Option<String>,
    rows: Option<usize>,
    changes_per_second: f64,
}

/// The state of each source the session may read (without starting a lazy one).
fn source_infos(
    ctx: &ResolverContext<'_>,
    sources: &[(Arc<SourceDef>, Arc<Select>)],
) -> FieldValue<'static> {
    let Some(hubs) = ctx.data_opt::<Arc<Hubs>>() else {
        return FieldValue::list(std::iter::empty::<FieldValue>());
    };
    let started: std::collections::HashMap<String, bool> = hubs
        .statuses()
        .into_iter()
        .map(|(name, status)| (name, status.is_some()))
        .collect();
    let session = ctx.data_opt::<crate::auth::Session>();
    let lookup = |name: &str| session.and_then(|s| s.variable(name)).map(str::to_owned);
    let mut infos = Vec::with_capacity(sources.len());
    for (source, select) in sources {
        let Some(hub) = hubs.peek(&source.name) else {
            continue;
        };
        let (status, reason) = match (started.get(&source.name), hub.status()) {
            (Some(false) | None, _) => ("IDLE", None),
            (_, crate::hub::HubStatus::Starting) => ("STARTING", None),
            (_, crate::hub::HubStatus::Live) => ("LIVE", None),
            (_, crate::hub::HubStatus::Down { reason, .. }) => ("DOWN", Some(reason)),
        };
        // A row filter this session cannot fill (a missing variable) sees no count.
        let filter = match &select.row_filter {
            None => Some(Filter::always()),
            Some(permission) => permission
                .row_filter(source, &lookup)
                .ok()
                .flatten()
                .and_then(|value| filter::compile(source, &value).ok()),
        };
        infos.push(SourceInfo {
            name: source.name.clone(),
            primary_key: source
                .primary_key
                .iter()
                .map(|&i| source.columns[i].name.clone())
                .collect(),
            status,
            reason,
            rows: filter.and_then(|f| hub.count_matching(&f)),
            changes_per_second: hub.changes_per_second(),
        });
    }
    FieldValue::list(infos.into_iter().map(FieldValue::owned_any))
}

/// `Query.viewer`.
fn viewer_field() -> Field {
    Field::new("viewer", TypeRef::named_nn("Viewer"), |ctx| {
        FieldFuture::new(async move {
            let session = ctx
                .data_opt::<crate::auth::Session>()
                .cloned()
                .unwrap_or_else(crate::auth::Session::admin);
            Ok(Some(FieldValue::owned_any(session)))
        })
    })
    .description("The caller: its role and user id.")
}

/// What the resolvers reach at run time (absent when the schema is built only to check it).
#[derive(Default, Clone)]
pub struct Services {
    pub hubs: Option<Arc<Hubs>>,
    pub triggers: Option<Arc<crate::trigger::Triggers>>,
    pub runs: Option<crate::run::Runs>,
    /// Where resolvers count the requests a limit refused.
    pub rejections: Option<Arc<Rejections>>,
}

/// Builds the admin's schema for `config` (the whole API); `services` are attached as
/// schema data.
pub fn build(
    config: &Config,
    services: Services,
    limits: &GraphqlLimits,
) -> Result<Schema, SchemaError> {
    build_for(config, &Grants::Admin, services, limits)
}

/// The schema of callers with `grants`: only the sources, columns and operations they may
/// use exist in it (and in its introspection), so anything else fails validation.
pub fn build_for(
    config: &Config,
    grants: &Grants,
    services: Services,
    limits: &GraphqlLimits,
) -> Result<Schema, SchemaError> {
    let readable: Vec<(Arc<SourceDef>, Arc<Select>)> = config
        .sources
        .iter()
        .filter_map(|source| Some((source.clone(), Arc::new(grants.select(source)?))))
        .collect();
    let mut roots = Roots {
        query: Object::new("Query").field(viewer_field()),
        mutation: Object::new("Mutation"),
        mutations: 0,
        subscription: Subscription::new("Subscription"),
        subscriptions: 0,
        types: vec![viewer_type(readable).into()],
    };
    roots.types.extend(source_info_types());
    if grants.any_runs() {
        roots.add_runs(&grants.runs());
    }
    let mut enums: Vec<&str> = Vec::new();
    let mut any_triggers = false;
    for source in &config.sources {
        if let Some(select) = grants.select(source) {
            for (index, column) in source.columns.iter().enumerate() {
                if let ColumnType::Enum(def) = &column.ty
                    && select.sees(index)
                    && !enums.contains(&def.name.as_str())
                {
                    enums.push(&def.name);
                }
            }
            roots.add_source(source, &Arc::new(select), limits);
        }
        any_triggers |= roots.add_triggers(source, |action| grants.trigger(&source.name, action));
    }
    if any_triggers {
        roots.types.extend(triggers::global_types());
    }
    roots.types.extend(global_types(config, |name| {
        grants.is_admin() || enums.contains(&name)
    }));
    let Roots {
        query,
        mutation,
        mutations,
        subscription,
        subscriptions,
        types: builder_types,
    } = roots;

    let mut builder = Schema::build(
        "Query",
        (mutations > 0).then_some("Mutation"),
        (subscriptions > 0).then_some("Subscription"),
    )
    .register(query)
    // The cost of an operation is estimated before it gets here (`limits::check_operations`,
    // which counts list sizes); async-graphql's own complexity counts every field as 1.
    .limit_depth(limits.max_depth)
    .limit_recursive_depth(limits.max_nesting)
    .data(*limits)
    .data(grants.clone())
    .data(services.rejections.unwrap_or_default());
    if mutations > 0 {
        builder = builder.register(mutation);
    }
    if subscriptions > 0 {
        builder = builder.register(subscription);
    }
    for ty in builder_types {
        builder = builder.register(ty);
    }
    if let Some(hubs) = services.hubs {
        builder = builder.data(hubs);
    }
    if let Some(triggers) = services.triggers {
        builder = builder.data(triggers);
    }
    if let Some(runs) = services.runs {
        builder = builder.data(DataLoader::new(
            runs::EventsLoader(runs.clone()),
            tokio::spawn,
        ));
        builder = builder.data(runs);
    }
    builder.finish()
}

/// The root types of a schema being built, and the types they use.
struct Roots {
    query: Object,
    mutation: Object,
    mutations: usize,
    subscription: Subscription,
    subscriptions: usize,
    types: Vec<async_graphql::dynamic::Type>,
}

impl Roots {
    fn mutation(&mut self, field: Field) {
        self.mutation = std::mem::replace(&mut self.mutation, Object::new("Mutation")).field(field);
        self.mutations += 1;
    }

    fn subscription(&mut self, field: SubscriptionField) {
        self.subscription =
            std::mem::replace(&mut self.subscription, Subscription::new("Subscription"))
                .field(field);
        self.subscriptions += 1;
    }

    fn query(&mut self, field: Field) {
        self.query = std::mem::replace(&mut self.query, Object::new("Query")).field(field);
    }

    /// The runs API, as far as `allowed` goes.
    fn add_runs(&mut self, allowed: &crate::config::RunPermissions) {
        self.types.extend(runs::global_types());
        if allowed.read != Scope::None {
            for field in runs::query_fields() {
                self.query(field);
            }
            for field in runs::subscription_fields() {
                self.subscription(field);
            }
        }
        let [start, append, cancel] = runs::mutation_fields();
        for (field, granted) in [
            (start, allowed.start != Kinds::None),
            (append, allowed.append != Scope::None),
            (cancel, allowed.cancel != Scope::None),
        ] {
            if granted {
                self.mutation(field);
            }
        }
    }

    /// A source's rows, read as `select` allows.
    fn add_source(
        &mut self,
        source: &Arc<SourceDef>,
        select: &Arc<Select>,
        limits: &GraphqlLimits,
    ) {
        self.types.extend(source_types(source, select));
        self.query(query_field(source, select, limits));
        self.subscription(subscription_field(source, select));
        self.subscription(batches_field(source, select));
    }

    /// The trigger fields of a source that `may` allows; whether there was any.
    fn add_triggers(
        &mut self,
        source: &Arc<SourceDef>,
        may: impl Fn(TriggerAction) -> bool,
    ) -> bool {
        let mut any = false;
        if may(TriggerAction::Read) {
            any = true;
            for field in triggers::query_fields(source) {
                self.query(field);
            }
        }
        if may(TriggerAction::Create) {
            self.types.push(triggers::input_type(source).into());
        }
        let [create, delete, enable, disable, redeliver] = triggers::mutation_fields(source);
        for (field, action) in [
            (create, TriggerAction::Create),
            (delete, TriggerAction::Delete),
            (enable, TriggerAction::Enable),
            (disable, TriggerAction::Disable),
            (redeliver, TriggerAction::Redeliver),
        ] {
            if may(action) {
                any = true;
                self.mutation(field);
            }
        }
        any
    }
}

/// The list sizes of the schema `build` makes for `config`, for the cost of an operation: the
/// default of each list field that takes a `limit` or `first` (given ones count as given).
pub fn cost_model(config: &Config, limits: &GraphqlLimits) -> CostModel {
    let mut sizes: std::collections::HashMap<String, u64> = [
        ("runs", 20),
        ("events", 100),
        ("runEvents", 100),
        ("deliveries", 20),
        ("recent_attempts", 10),
    ]
    .into_iter()
    .map(|(name, size)| (name.to_owned(), size))
    .collect();
    for source in &config.sources {
        sizes.insert(source.name.clone(), limits.query_default_limit as u64);
        sizes.insert(names::source_dead_letters_query_field(&source.name), 100);
    }
    let windows = config
        .sources
        .iter()
        .map(|source| {
            let window = (
                DEFAULT_BATCH_ROWS.unsigned_abs(),
                MAX_BATCH_ROWS.unsigned_abs(),
            );
            (
                names::source_batches_subscription_field(&source.name),
                window,
            )
        })
        .collect();
    CostModel {
        default_sizes: sizes,
        windows,
    }
}

/// Types shared by every source: operations, ordering, scalars and comparison inputs; the
/// enums that `wanted` names.
fn global_types(
    config: &Config,
    wanted: impl Fn(&str) -> bool,
) -> Vec<async_graphql::dynamic::Type> {
    let mut types: Vec<async_graphql::dynamic::Type> = vec![
        Enum::new("RowOperation")
            .description("What happened to a row, as seen through the subscriber's filter.")
            .item("INSERT")
            .item("UPDATE")
            .item("DELETE")
            .item(async_graphql::dynamic::EnumItem::new("SNAPSHOT_END").description(
                "The snapshot is complete (only sent when the subscription asks with snapshot_end: true).",
            ))
            .item(async_graphql::dynamic::EnumItem::new("RESET").description(
                "The `after` cursor was too old: drop all rows, a fresh snapshot follows (only sent to subscriptions with `after`).",
            ))
            .into(),
        Enum::new("order_by")
            .items(["asc", "asc_nulls_first", "asc_nulls_last", "desc", "desc_nulls_first", "desc_nulls_last"])
            .into(),
        Scalar::new("Numeric")
            .description("An exact decimal number, serialized as a string with every digit kept.")
            .into(),
        Scalar::new("JSONValue").description("Any JSON value.").into(),
    ];
    for (name, operand, ordered, text) in [
        ("StringComparison", TypeRef::STRING, true, true),
        ("IntComparison", TypeRef::INT, true, false),
        ("FloatComparison", TypeRef::FLOAT, true, false),
        ("BooleanComparison", TypeRef::BOOLEAN, false, false),
        ("NumericComparison", "Numeric", true, false),
    ] {
        types.push(comparison(name, operand, ordered, text).into());
    }
    for def in config.enums.iter().filter(|d| wanted(&d.name)) {
        types.push(
            Enum::new(&def.name)
                .items(def.values.iter().map(String::as_str))
                .into(),
        );
        types.push(
            comparison(
                &names::enum_comparison_type(&def.name),
                &def.name,
                true,
                false,
            )
            .into(),
        );
    }
    types
}

fn comparison(name: &str, operand: &str, ordered: bool, text: bool) -> InputObject {
    let mut input = InputObject::new(name)
        .field(InputValue::new("_eq", TypeRef::named(operand)))
        .field(InputValue::new("_neq", TypeRef::named(operand)))
        .field(InputValue::new("_in", TypeRef::named_nn_list(operand)))
        .field(InputValue::new("_nin", TypeRef::named_nn_list(operand)))
        .field(InputValue::new(
            "_is_null",
            TypeRef::named(TypeRef::BOOLEAN),
        ));
    if ordered {
        for op in ["_gt", "_gte", "_lt", "_lte"] {
            input = input.field(InputValue::new(op, TypeRef::named(operand)));
        }
    }
    if text {
        for op in [
            "_like", "_nlike", "_ilike", "_nilike", "_regex", "_nregex", "_iregex", "_niregex",
        ] {
            input = input.field(InputValue::new(op, TypeRef::named(TypeRef::STRING)));
        }
    }
    input
}

/// The GraphQL output type of a column.
pub fn output_type(ty: &ColumnType) -> &str {
    match ty {
        ColumnType::Integer => TypeRef::INT,
        ColumnType::Float => TypeRef::FLOAT,
        ColumnType::Boolean => TypeRef::BOOLEAN,
        ColumnType::Uuid => TypeRef::ID,
        ColumnType::Numeric => "Numeric",
        ColumnType::JsonValue => "JSONValue",
        ColumnType::Enum(def) => &def.name,
        ColumnType::BigInt
        | ColumnType::String
        | ColumnType::Timestamp
        | ColumnType::Date
        | ColumnType::Time
        | ColumnType::Json
        | ColumnType::Array => TypeRef::STRING,
    }
}

/// The `where` input type of a column.
fn comparison_type(ty: &ColumnType) -> String {
    match ty {
        ColumnType::Integer => "IntComparison".into(),
        ColumnType::Float => "FloatComparison".into(),
        ColumnType::Boolean => "BooleanComparison".into(),
        ColumnType::Numeric => "NumericComparison".into(),
        ColumnType::Enum(def) => names::enum_comparison_type(&def.name),
        _ => "StringComparison".into(),
    }
}

/// A source's object, `where`, `order_by` and update types, with the columns `select` sees.
fn source_types(
    source: &Arc<SourceDef>,
    select: &Arc<Select>,
) -> Vec<async_graphql::dynamic::Type> {
    let name = &source.name;
    let mut object = Object::new(name);
    let mut expression = InputObject::new(names::source_expression_type(name));
    let mut order_by = InputObject::new(names::source_order_by_type(name));
    for (index, column) in source.columns.iter().enumerate() {
        if !select.sees(index) {
            continue;
        }
        let ty = output_type(&column.ty);
        let type_ref = if source.is_key_column(index) {
            TypeRef::named_nn(ty)
        } else {
            TypeRef::named(ty)
        };
        let column_type = column.ty.clone();
        object = object.field(Field::new(&column.name, type_ref, move |ctx| {
            let view = match ctx.parent_value.try_downcast_ref::<RowView>() {
                Ok(view) => view,
                Err(err) => {
                    return FieldFuture::new(async move { Err::<Option<FieldValue<'_>>, _>(err) });
                }
            };
            match view.value(index, &column_type) {
                Ok(value) => FieldFuture::from_value(value),
                Err(err) => FieldFuture::new(async move { Err::<Option<FieldValue<'_>>, _>(err) }),
            }
        }));
        expression = expression.field(InputValue::new(
            &column.name,
            TypeRef::named(comparison_type(&column.ty)),
        ));
        order_by = order_by.field(InputValue::new(&column.name, TypeRef::named("order_by")));
    }
    let expr_name = names::source_expression_type(name);
    expression = expression
        .field(InputValue::new("_and", TypeRef::named_nn_list(&expr_name)))
        .field(InputValue::new("_or", TypeRef::named_nn_list(&expr_name)))
        .field(InputValue::new("_not", TypeRef::named(&expr_name)));

    let update = Object::new(names::source_update_type(name))
        .field(Field::new("operation", TypeRef::named_nn("RowOperation"), |ctx| {
            let event = ctx.parent_value.try_downcast_ref::<Event>();
            FieldFuture::new(async move {
                let event = event?;
                Ok(Some(FieldValue::value(GqlValue::Enum(async_graphql::Name::new(encode::operation_name(event.kind))))))
            })
        }))
        .field({
            let key: Arc<[usize]> = source.primary_key.clone().into();
            Field::new("data", TypeRef::named(name), move |ctx| {
                let event = ctx.parent_value.try_downcast_ref::<Event>();
                let key = key.clone();
                FieldFuture::new(async move {
                    let event = event?;
                    // An UPDATE carries the key and the changed columns; the rest read as null.
                    let visible = event.columns.as_ref().map(|changed| -> Arc<[usize]> {
                        key.iter().chain(changed.iter()).copied().collect()
                    });
                    Ok(event.row.as_ref().map(|row| FieldValue::owned_any(RowView::new(row.clone(), visible))))
                })
            })
        })
        .field({
            let source = source.clone();
            let visible = select.visible.clone();
            Field::new("fields", TypeRef::named_nn_list_nn(TypeRef::STRING), move |ctx| {
                let names = ctx.parent_value.try_downcast_ref::<Event>().map(|event| {
                        encode::event_field_names(&source, event, visible.as_deref())
                            .map(|name| GqlValue::String(name.to_owned()))
                            .collect::<Vec<_>>()
                    });
                FieldFuture::new(async move { Ok(Some(GqlValue::List(names?))) })
            })
        })
        .field(
            Field::new("cursor", TypeRef::named(TypeRef::STRING), |ctx| {
                let event = ctx.parent_value.try_downcast_ref::<Event>();
                FieldFuture::new(async move { Ok(event?.cursor.map(|c| GqlValue::String(c.to_string()))) })
            })
            .description("Set on the last update of each upstream transaction: pass it as `after` to resume there."),
        )
        .field(
            Field::new("timestamp", TypeRef::named(TypeRef::STRING), |ctx| {
                let event = ctx.parent_value.try_downcast_ref::<Event>();
                FieldFuture::new(async move { Ok(Some(GqlValue::String(event?.position.0.to_string()))) })
            })
            .description("The upstream position (PostgreSQL commit LSN, Materialize mz_timestamp) of this update, as a decimal string."),
        );
    vec![
        object.into(),
        expression.into(),
        order_by.into(),
        update.into(),
        batch_type(name).into(),
    ]
}

/// `SBatch`: a window of a batched subscription (the events it holds as `Vec<Event>`).
fn batch_type(name: &str) -> Object {
    Object::new(names::source_batch_type(name))
        .field(Field::new(
            "updates",
            TypeRef::named_nn_list_nn(names::source_update_type(name)),
            |ctx| {
                let events = ctx.parent_value.try_downcast_ref::<Vec<Event>>();
                FieldFuture::new(async move {
                    Ok(Some(FieldValue::list(
                        events?.iter().map(|e| FieldValue::owned_any(e.clone())),
                    )))
                })
            },
        ))
        .field(
            Field::new("cursor", TypeRef::named(TypeRef::STRING), |ctx| {
                let events = ctx.parent_value.try_downcast_ref::<Vec<Event>>();
                FieldFuture::new(async move {
                    Ok(events?
                        .iter()
                        .rev()
                        .find_map(|e| e.cursor)
                        .map(|c| GqlValue::String(c.to_string())))
                })
            })
            .description(
                "The last cursor the window's updates carry: pass it as `after` to resume there.",
            ),
        )
}

/// A GraphQL error with a machine-readable `extensions.code`.
pub fn user_error(message: impl Into<String>, code: &'static str) -> async_graphql::Error {
    async_graphql::Error::new(message).extend_with(|_, e| e.set("code", code))
}

/// A field of an object whose parent value is a `T`.
pub(crate) fn of<T: Send + Sync + 'static>(
    name: &str,
    ty: TypeRef,
    get: impl Fn(&T) -> GqlValue + Send + Sync + 'static,
) -> Field {
    Field::new(name, ty, move |ctx| {
        let value = ctx.parent_value.try_downcast_ref::<T>().map(&get);
        FieldFuture::new(async move { Ok(Some(value?)) })
    })
}

/// `limit` (default `default`, 1 to 1000).
pub(crate) fn limit_of(ctx: &ResolverContext<'_>, default: i64) -> async_graphql::Result<i64> {
    match ctx.args.get("limit") {
        Some(v) if !v.is_null() => {
            let n = v.i64()?;
            if (1..=1000).contains(&n) {
                Ok(n)
            } else {
                Err(user_error(
                    "limit must be between 1 and 1000",
                    "BAD_USER_INPUT",
                ))
            }
        }
        _ => Ok(default),
    }
}

fn hubs<'a>(ctx: &async_graphql::Context<'a>) -> async_graphql::Result<&'a Arc<Hubs>> {
    ctx.data::<Arc<Hubs>>().map_err(|_| {
        user_error(
            "this server has no live sources (schema built for checking only)",
            "INTERNAL_SERVER_ERROR",
        )
    })
}

/// The `where` argument, compiled once it is within the filter limits, `AND`ed with the
/// role's row filter (its session variables substituted): a client's `where` can only narrow
/// what its role sees.
fn compile_where(
    ctx: &async_graphql::Context<'_>,
    source: &SourceDef,
    select: &Select,
    arg: Option<async_graphql::dynamic::ValueAccessor<'_>>,
) -> async_graphql::Result<Filter> {
    let refused = |e: filter::FilterError| {
        if e.is_limit() {
            ctx.data_unchecked::<Arc<Rejections>>().count(Limit::Filter);
        }
        user_error(e.to_string(), "BAD_USER_INPUT")
    };
    let given = arg.filter(|v| !v.is_null()).map(|v| v.as_value().clone());
    if let Some(value) = &given {
        let limits = &ctx.data_unchecked::<GraphqlLimits>().filter;
        filter::check_size(value, limits).map_err(refused)?;
        // Mistakes are reported in terms of the client's own `where`.
        let compiled = filter::compile(source, value).map_err(refused)?;
        if select.row_filter.is_none() {
            return Ok(compiled);
        }
    }
    let row_filter = match &select.row_filter {
        None => None,
        Some(permission) => {
            let session = ctx.data_opt::<crate::auth::Session>();
            let lookup = |name: &str| session.and_then(|s| s.variable(name)).map(str::to_owned);
            permission
                .row_filter(source, &lookup)
                .map_err(|e| user_error(e.to_string(), "FORBIDDEN"))?
        }
    };
    let combined = match (row_filter, given) {
        (None, None) => return Ok(Filter::always()),
        (Some(only), None) | (None, Some(only)) => only,
        (Some(row_filter), Some(given)) => {
            let mut and = async_graphql::indexmap::IndexMap::new();
            and.insert(
                async_graphql::Name::new("_and"),
                GqlValue::List(vec![row_filter, given]),
            );
            GqlValue::Object(and)
        }
    };
    filter::compile(source, &combined).map_err(refused)
}

fn query_field(source: &Arc<SourceDef>, select: &Arc<Select>, limits: &GraphqlLimits) -> Field {
    let name = source.name.clone();
    let field_source = source.clone();
    let field_select = select.clone();
    Field::new(&name, TypeRef::named_nn_list_nn(&name), move |ctx| {
        let source = field_source.clone();
        let select = field_select.clone();
        FieldFuture::new(async move {
            let filter = compile_where(ctx.ctx, &source, &select, ctx.args.get("where"))?;
            let order = output::parse_order_by(&source, ctx.args.get("order_by"))?;
            let (limit, offset) = query_window(ctx.ctx, &ctx)?;
            // The role's cap, as Hasura applies it: never more rows, whatever was asked.
            let limit = select.limit.map_or(limit, |cap| limit.min(cap));
            let hub = hubs(ctx.ctx)?
                .get(&source.name)
                .ok_or_else(|| user_error("unknown source", "INTERNAL_SERVER_ERROR"))?;
            let first = offset.saturating_add(limit);
            let order_of = output::comparator(&source, &order);
            let pick = if output::is_key_order(&source, &order) {
                crate::hub::Pick::KeyOrder
            } else {
                crate::hub::Pick::By(&order_of)
            };
            let Some(rows) = hub.rows_matching(&filter, first, pick) else {
                let reason = match hub.status() {
                    crate::hub::HubStatus::Down { reason, .. } => reason,
                    _ => "its feed is still starting".into(),
                };
                return Err(user_error(
                    format!("source {} is not ready: {reason}", source.name),
                    "SOURCE_UNAVAILABLE",
                ));
            };
            let rows = output::window(&source, &order, rows, offset, limit);
            Ok(Some(FieldValue::list(rows.into_iter().map(|row| {
                FieldValue::owned_any(RowView::new(row, None))
            }))))
        })
    })
    .description(format!("Current rows of {name}."))
    .argument(InputValue::new(
        "where",
        TypeRef::named(names::source_expression_type(&name)),
    ))
    .argument(InputValue::new(
        "order_by",
        TypeRef::named_nn_list(names::source_order_by_type(&name)),
    ))
    .argument(
        InputValue::new("limit", TypeRef::named(TypeRef::INT)).description(format!(
            "At most this many rows (default {}, at most {}).",
            limits.query_default_limit, limits.query_max_limit
        )),
    )
    .argument(
        InputValue::new("offset", TypeRef::named(TypeRef::INT)).description(format!(
            "Skip this many rows first (at most {}).",
            limits.query_max_offset
        )),
    )
}

/// A one-shot query's `limit` (default `--query-default-limit`) and `offset` (default 0),
/// within their limits.
fn query_window(
    ctx: &async_graphql::Context<'_>,
    resolver: &ResolverContext<'_>,
) -> async_graphql::Result<(usize, usize)> {
    let limits = ctx.data_unchecked::<GraphqlLimits>();
    let get = |name: &str, max: usize, flag: &str| -> async_graphql::Result<Option<usize>> {
        let Some(value) = resolver.args.get(name).filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let n = value.i64()?;
        let n = usize::try_from(n)
            .map_err(|_| user_error(format!("{name} must not be negative"), "BAD_USER_INPUT"))?;
        if n > max {
            ctx.data_unchecked::<Arc<Rejections>>()
                .count(Limit::QueryRows);
            return Err(user_error(
                format!("{name} must be at most {max} ({flag})"),
                "BAD_USER_INPUT",
            ));
        }
        Ok(Some(n))
    };
    let limit = get("limit", limits.query_max_limit, "--query-max-limit")?
        .unwrap_or(limits.query_default_limit);
    let offset = get("offset", limits.query_max_offset, "--query-max-offset")?.unwrap_or(0);
    Ok((limit, offset))
}

/// What a source's subscription fields share once their arguments are checked.
struct Opening {
    hub: Arc<Hub>,
    filter: Filter,
    after: Option<Cursor>,
    snapshot_end: bool,
    /// The connection's use of the filter, held while the subscription runs.
    ticket: Option<crate::limits::FilterTicket>,
}

impl Opening {
    fn new(
        ctx: &ResolverContext<'_>,
        source: &Arc<SourceDef>,
        select: &Arc<Select>,
    ) -> async_graphql::Result<Opening> {
        let filter = compile_where(ctx.ctx, source, select, ctx.args.get("where"))?;
        let after = match ctx.args.get("after") {
            Some(v) if !v.is_null() => Some(
                v.string()?
                    .parse::<Cursor>()
                    .map_err(|e| user_error(e.to_string(), "BAD_USER_INPUT"))?,
            ),
            _ => None,
        };
        let snapshot_end = match ctx.args.get("snapshot_end") {
            Some(v) if !v.is_null() => v.boolean()?,
            _ => false,
        };
        let hub = hubs(ctx.ctx)?
            .get(&source.name)
            .ok_or_else(|| user_error("unknown source", "INTERNAL_SERVER_ERROR"))?;
        // A WebSocket connection's budget of distinct filters (session data).
        let ticket = match ctx.ctx.data_opt::<Arc<FilterBudget>>() {
            Some(budget) => Some(budget.acquire(&source.name, filter.canonical()).ok_or_else(|| {
                ctx.ctx.data_unchecked::<Arc<Rejections>>().count(Limit::ConnectionFilters);
                user_error(
                    format!("this connection's subscriptions use {} different filters already (--ws-max-filters); reuse one or open another connection", budget.max()),
                    "TOO_MANY_FILTERS",
                )
            })?),
            None => None,
        };
        Ok(Opening {
            hub,
            filter,
            after,
            snapshot_end,
            ticket,
        })
    }

    /// Leaves a plan for the caller to run on the fast path, when it asked for one and the
    /// selection compiles to an encoding; gives the opening back otherwise.
    fn plan(
        self,
        ctx: &ResolverContext<'_>,
        encoding: impl FnOnce() -> Option<Encoding>,
    ) -> Result<(), Opening> {
        let Some(slot) = ctx.ctx.data_opt::<PlanSlot>() else {
            return Err(self);
        };
        let Some(encoding) = encoding() else {
            return Err(self);
        };
        slot.put(SubscriptionPlan {
            hub: self.hub,
            filter: self.filter,
            after: self.after,
            snapshot_end: self.snapshot_end,
            encoding,
            ticket: self.ticket,
        });
        Ok(())
    }

    /// A reader of events for the executor.
    async fn reader(
        self,
        ctx: &ResolverContext<'_>,
        select: &Select,
    ) -> async_graphql::Result<(Reader, Option<crate::limits::FilterTicket>)> {
        let events = match &select.visible {
            Some(visible) => Events::of_columns(visible.clone()),
            None => Events::all(),
        };
        let reader = Reader::open_encoded(
            self.hub,
            self.filter,
            Arc::new(events),
            self.after,
            self.snapshot_end,
        )
        .await
        .map_err(|e| {
            if e.is_view_limit() {
                ctx.ctx
                    .data_unchecked::<Arc<Rejections>>()
                    .count(Limit::Views);
            }
            user_error(e.to_string(), e.code())
        })?;
        Ok((reader, self.ticket))
    }
}

fn subscription_field(source: &Arc<SourceDef>, select: &Arc<Select>) -> SubscriptionField {
    let name = source.name.clone();
    let field_source = source.clone();
    let field_select = select.clone();
    let field = SubscriptionField::new(
        &name,
        TypeRef::named_nn(names::source_update_type(&name)),
        move |ctx| {
            let source = field_source.clone();
            let select = field_select.clone();
            SubscriptionFieldFuture::new(async move {
                let opening = Opening::new(&ctx, &source, &select)?;
                let Err(opening) = opening.plan(&ctx, || {
                    JsonEncoder::compile(&source, &ctx.ctx.field(), select.visible.clone())
                        .map(|e| Encoding::Updates(Arc::new(e)))
                }) else {
                    // Validated and coerced: the caller runs the plan on the fast path.
                    return Ok(futures::stream::empty().boxed());
                };
                let reader = opening.reader(&ctx, &select).await?;
                Ok(futures::stream::unfold(Some(reader), |state| async move {
                    let (mut reader, ticket) = state?;
                    match reader.next().await {
                        Ok(event) => {
                            Some((Ok(FieldValue::owned_any(event)), Some((reader, ticket))))
                        }
                        Err(err) => {
                            Some((Err(user_error(err.to_string(), "SUBSCRIPTION_ENDED")), None))
                        }
                    }
                })
                .boxed())
            })
        },
    )
    .description(format!(
        "Rows of {name}: a snapshot as INSERTs, then live changes."
    ));
    with_opening_arguments(field, &name)
}

/// Updates a batched subscriber waits for at most after the first of a window, by default.
const DEFAULT_BATCH_MS: i64 = 100;
/// Updates in one window at most, by default, and the largest `max_rows` accepted.
const DEFAULT_BATCH_ROWS: i64 = 1_000;
const MAX_BATCH_ROWS: i64 = 100_000;
const MAX_BATCH_MS: i64 = 60_000;

fn batches_field(source: &Arc<SourceDef>, select: &Arc<Select>) -> SubscriptionField {
    let name = source.name.clone();
    let field_source = source.clone();
    let field_select = select.clone();
    let field = SubscriptionField::new(
        names::source_batches_subscription_field(&name),
        TypeRef::named_nn(names::source_batch_type(&name)),
        move |ctx| {
            let source = field_source.clone();
            let select = field_select.clone();
            SubscriptionFieldFuture::new(async move {
                let window = batch_window(&ctx)?;
                let opening = Opening::new(&ctx, &source, &select)?;
                let Err(opening) = opening.plan(&ctx, || {
                    BatchEncoder::compile(&source, &ctx.ctx.field(), select.visible.clone())
                        .map(|e| Encoding::Batches(Arc::new(e), window))
                }) else {
                    return Ok(futures::stream::empty().boxed());
                };
                let reader = opening.reader(&ctx, &select).await?;
                Ok(futures::stream::unfold(Some(reader), move |state| async move {
                    let (mut reader, ticket) = state?;
                    match reader.next_window(window).await {
                        Ok(items) => {
                            let events: Vec<Event> = items.into_iter().map(|(event, _)| event).collect();
                            Some((Ok(FieldValue::owned_any(events)), Some((reader, ticket))))
                        }
                        Err(err) => Some((Err(user_error(err.to_string(), "SUBSCRIPTION_ENDED")), None)),
                    }
                })
                .boxed())
            })
        },
    )
    .description(format!(
        "Rows of {name} like `{name}`, in batches: one result per window of updates (the snapshot's rows, then live changes), for clients that want throughput over a frame per change."
    ));
    with_opening_arguments(field, &name)
        .argument(
            InputValue::new("max_ms", TypeRef::named(TypeRef::INT))
                .default_value(DEFAULT_BATCH_MS)
                .description(format!("How long a window stays open after its first update, in milliseconds (0 to {MAX_BATCH_MS}): updates already waiting are never held back.")),
        )
        .argument(
            InputValue::new("max_rows", TypeRef::named(TypeRef::INT))
                .default_value(DEFAULT_BATCH_ROWS)
                .description(format!("The most updates in one window (1 to {MAX_BATCH_ROWS}).")),
        )
}

/// The window `max_ms` and `max_rows` ask for.
fn batch_window(ctx: &ResolverContext<'_>) -> async_graphql::Result<Window> {
    let int = |name: &str,
               default: i64,
               range: std::ops::RangeInclusive<i64>|
     -> async_graphql::Result<i64> {
        let value = match ctx.args.get(name) {
            Some(v) if !v.is_null() => v.i64()?,
            _ => default,
        };
        if range.contains(&value) {
            Ok(value)
        } else {
            Err(user_error(
                format!(
                    "{name} must be between {} and {}, got {value}",
                    range.start(),
                    range.end()
                ),
                "BAD_USER_INPUT",
            ))
        }
    };
    let max_ms = int("max_ms", DEFAULT_BATCH_MS, 0..=MAX_BATCH_MS)?;
    let max_rows = int("max_rows", DEFAULT_BATCH_ROWS, 1..=MAX_BATCH_ROWS)?;
    Ok(Window {
        max_wait: std::time::Duration::from_millis(max_ms.unsigned_abs()),
        max_items: usize::try_from(max_rows).unwrap_or(1),
    })
}

/// The arguments both subscription fields of a source take.
fn with_opening_arguments(field: SubscriptionField, name: &str) -> SubscriptionField {
    field
        .argument(InputValue::new("where", TypeRef::named(names::source_expression_type(name))))
        .argument(
            InputValue::new("after", TypeRef::named(TypeRef::STRING))
                .description("Resume after this cursor (from a previous update's `cursor`) instead of taking a snapshot."),
        )
        .argument(
            InputValue::new("snapshot_end", TypeRef::named(TypeRef::BOOLEAN))
                .description("Send one SNAPSHOT_END update once the snapshot is complete."),
        )
}
