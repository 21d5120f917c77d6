//! The GraphQL names generated from a configuration, in one place.
//!
//! The schema generator builds its types and root fields with these functions, and the
//! configuration loader uses the same functions to refuse a `schema.yaml` whose names would
//! collide, so the two can never disagree. The names are tycostream's (see
//! reference/tycostream-notes.md §3.1) plus viewcast's additions (`S_order_by`, the `S` query
//! field, the `Numeric`/`JSONValue` scalars and `order_by`). Pure functions, no I/O.

/// Type names that exist whatever the configuration: viewcast's own types and GraphQL's
/// built-in scalars.
pub const GLOBAL_TYPE_NAMES: &[&str] = &[
    "Query",
    "Mutation",
    "Subscription",
    "RowOperation",
    "Trigger",
    "TriggerStatus",
    "TriggerCounters",
    "TriggerEventType",
    "Delivery",
    "DeliveryStatus",
    "DeliveryAttempt",
    "RetryPolicy",
    "RetryPolicyInput",
    "WebhookHeaderInput",
    "WebhookFormat",
    "Run",
    "RunStatus",
    "RunEvent",
    "RunEventInput",
    "RunFilter",
    "RunEdge",
    "RunConnection",
    "PageInfo",
    "Viewer",
    "SourceInfo",
    "SourceStatus",
    "StringComparison",
    "IntComparison",
    "FloatComparison",
    "BooleanComparison",
    "NumericComparison",
    "Numeric",
    "JSONValue",
    "order_by",
    "String",
    "Int",
    "Float",
    "Boolean",
    "ID",
];

/// Root fields that exist whatever the configuration (the runs API); a source cannot
/// generate them.
pub fn global_root_fields(root: RootType) -> &'static [&'static str] {
    match root {
        RootType::Query => &["viewer", "run", "runs", "runEvents"],
        RootType::Mutation => &["startRun", "appendRunEvents", "cancelRun"],
        RootType::Subscription => &["runEvents", "runs"],
    }
}

/// Fields of every `SExpression` input type besides the columns; a column cannot use them.
pub const EXPRESSION_OPERATOR_FIELDS: &[&str] = &["_and", "_or", "_not"];

/// Names GraphQL refuses as enum values.
pub const RESERVED_ENUM_VALUES: &[&str] = &["true", "false", "null"];

/// The three root operation types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RootType {
    Query,
    Mutation,
    Subscription,
}

impl RootType {
    pub const ALL: [RootType; 3] = [RootType::Query, RootType::Mutation, RootType::Subscription];

    pub fn type_name(self) -> &'static str {
        match self {
            RootType::Query => "Query",
            RootType::Mutation => "Mutation",
            RootType::Subscription => "Subscription",
        }
    }
}

/// The object type of a source's rows: `S`.
pub fn source_object_type(source: &str) -> String {
    source.to_owned()
}

/// The subscription payload type: `SUpdate`.
pub fn source_update_type(source: &str) -> String {
    format!("{source}Update")
}

/// The batched subscription payload type: `SBatch`.
pub fn source_batch_type(source: &str) -> String {
    format!("{source}Batch")
}

/// The `where` input type: `SExpression`.
pub fn source_expression_type(source: &str) -> String {
    format!("{source}Expression")
}

/// The ordering input type of the one-shot query: `S_order_by`.
pub fn source_order_by_type(source: &str) -> String {
    format!("{source}_order_by")
}

/// The input of `create_S_trigger`: `STriggerInput`.
pub fn source_trigger_input_type(source: &str) -> String {
    format!("{source}TriggerInput")
}

/// Every type generated for a source.
pub fn source_type_names(source: &str) -> Vec<String> {
    vec![
        source_object_type(source),
        source_update_type(source),
        source_batch_type(source),
        source_expression_type(source),
        source_order_by_type(source),
        source_trigger_input_type(source),
    ]
}

/// The one-shot query of current rows: `Query.S`.
pub fn source_query_field(source: &str) -> String {
    source.to_owned()
}

/// `Query.S_triggers`: the source's triggers.
pub fn source_triggers_query_field(source: &str) -> String {
    format!("{source}_triggers")
}

/// `Query.S_trigger(name)`: one trigger.
pub fn source_trigger_query_field(source: &str) -> String {
    format!("{source}_trigger")
}

/// `Mutation.create_S_trigger`.
pub fn create_trigger_mutation_field(source: &str) -> String {
    format!("create_{source}_trigger")
}

/// `Mutation.delete_S_trigger`.
pub fn delete_trigger_mutation_field(source: &str) -> String {
    format!("delete_{source}_trigger")
}

/// `Query.S_dead_letters`: the dead-letter queue of the source's triggers.
pub fn source_dead_letters_query_field(source: &str) -> String {
    format!("{source}_dead_letters")
}

/// `Mutation.enable_S_trigger`.
pub fn enable_trigger_mutation_field(source: &str) -> String {
    format!("enable_{source}_trigger")
}

/// `Mutation.disable_S_trigger`.
pub fn disable_trigger_mutation_field(source: &str) -> String {
    format!("disable_{source}_trigger")
}

/// `Mutation.redeliver_S_trigger`.
pub fn redeliver_trigger_mutation_field(source: &str) -> String {
    format!("redeliver_{source}_trigger")
}

/// `Subscription.S`: the live view.
pub fn source_subscription_field(source: &str) -> String {
    source.to_owned()
}

/// `Subscription.S_batches`: the live view, one result per window of updates.
pub fn source_batches_subscription_field(source: &str) -> String {
    format!("{source}_batches")
}

/// The `Query` fields generated for a source.
pub fn source_query_fields(source: &str) -> Vec<String> {
    vec![
        source_query_field(source),
        source_triggers_query_field(source),
        source_trigger_query_field(source),
        source_dead_letters_query_field(source),
    ]
}

/// The `Mutation` fields generated for a source.
pub fn source_mutation_fields(source: &str) -> Vec<String> {
    vec![
        create_trigger_mutation_field(source),
        delete_trigger_mutation_field(source),
        enable_trigger_mutation_field(source),
        disable_trigger_mutation_field(source),
        redeliver_trigger_mutation_field(source),
    ]
}

/// The `Subscription` fields generated for a source.
pub fn source_subscription_fields(source: &str) -> Vec<String> {
    vec![
        source_subscription_field(source),
        source_batches_subscription_field(source),
    ]
}

/// The fields a source adds to `root`.
pub fn source_root_fields(root: RootType, source: &str) -> Vec<String> {
    match root {
        RootType::Query => source_query_fields(source),
        RootType::Mutation => source_mutation_fields(source),
        RootType::Subscription => source_subscription_fields(source),
    }
}

/// The GraphQL enum type of a user enum: `E`.
pub fn enum_type(name: &str) -> String {
    name.to_owned()
}

/// The comparison input of a user enum: `EComparison`.
pub fn enum_comparison_type(name: &str) -> String {
    format!("{name}Comparison")
}

/// Every type generated for a user enum.
pub fn enum_type_names(name: &str) -> Vec<String> {
    vec![enum_type(name), enum_comparison_type(name)]
}

/// Whether `name` is a GraphQL name (`[_A-Za-z][_0-9A-Za-z]*`) that a schema may define
/// (not starting with `__`, which introspection reserves).
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
        && !name.starts_with("__")
}

/// A valid GraphQL name close to `name`, to suggest in a hint (`live-pnl` → `live_pnl`).
pub(crate) fn sanitized(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c == '_' || c.is_ascii_alphanumeric() {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    while out.starts_with("__") {
        out.remove(0);
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tycostream_names_for_a_source() {
        assert_eq!(
            source_type_names("user_scores"),
            [
                "user_scores",
                "user_scoresUpdate",
                "user_scoresBatch",
                "user_scoresExpression",
                "user_scores_order_by",
                "user_scoresTriggerInput"
            ]
        );
        assert_eq!(
            source_query_fields("t"),
            ["t", "t_triggers", "t_trigger", "t_dead_letters"]
        );
        assert_eq!(
            source_mutation_fields("user_scores"),
            [
                "create_user_scores_trigger",
                "delete_user_scores_trigger",
                "enable_user_scores_trigger",
                "disable_user_scores_trigger",
                "redeliver_user_scores_trigger"
            ]
        );
        assert_eq!(
            source_root_fields(RootType::Subscription, "t"),
            ["t", "t_batches"]
        );
        assert_eq!(enum_type_names("side"), ["side", "sideComparison"]);
    }

    #[test]
    fn valid_names() {
        for good in ["a", "_", "_a1", "Trades", "live_pnl", "_x__y"] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in ["", "1a", "a-b", "a b", "__a", "__", "é", "a.b"] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn sanitized_names_are_valid() {
        for name in ["live-pnl", "1abc", "", "__x", "a b.c", "é"] {
            let fixed = sanitized(name);
            assert!(is_valid_name(&fixed), "{name:?} -> {fixed:?}");
        }
        assert_eq!(sanitized("live-pnl"), "live_pnl");
    }
}
