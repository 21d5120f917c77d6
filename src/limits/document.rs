//! Checks on a GraphQL document that bound the work it can cause.
//!
//! [`check_text`] runs before parsing: the parser recurses once per nesting level, so a few
//! kilobytes of `[[[[…` would overflow a thread's stack. It reads the text as GraphQL's lexer
//! does (strings, block strings and comments hide brackets) and stops at the first level past
//! the limit. [`check_operation`] runs on the parsed document, before validation: it counts
//! aliases and root fields and estimates the operation's cost. Both are linear in the document
//! and allocate nothing per token.

use std::collections::{HashMap, HashSet};

use async_graphql::parser::types::{
    ExecutableDocument, Field, OperationType, Selection, SelectionSet,
};
use async_graphql::{Name, Value, Variables};

use super::{GraphqlLimits, Limit};

/// Why a document is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error(
        "the document is {bytes} bytes long; the limit is {max} (--graphql-max-document-bytes)"
    )]
    TooLarge { bytes: usize, max: usize },
    #[error(
        "the document nests brackets deeper than {max} levels; the limit is set by --graphql-max-nesting"
    )]
    TooDeep { max: usize },
    #[error(
        "the variables nest lists or objects deeper than {max} levels; the limit is set by --graphql-max-nesting"
    )]
    VariablesTooDeep { max: usize },
    #[error("the operation has {count} aliased fields; the limit is {max} (--graphql-max-aliases)")]
    Aliases { count: usize, max: usize },
    #[error(
        "the operation has {count} root fields; the limit is {max} (--graphql-max-root-fields): split it into several operations"
    )]
    RootFields { count: usize, max: usize },
    #[error("fragment {name} spreads itself (directly or through other fragments)")]
    FragmentCycle { name: String },
    #[error(
        "the operation could return more than {max} values (each list counted at its `limit` or `first`, a batched subscription at its `max_rows`, or their default); the limit is set by --graphql-max-cost: ask for fewer rows or fields"
    )]
    Cost { max: u64 },
}

impl DocumentError {
    /// The GraphQL error code (`extensions.code`).
    pub fn code(&self) -> &'static str {
        match self {
            DocumentError::TooLarge { .. } => "DOCUMENT_TOO_LARGE",
            DocumentError::TooDeep { .. } | DocumentError::VariablesTooDeep { .. } => {
                "GRAPHQL_PARSE_FAILED"
            }
            DocumentError::Aliases { .. } => "MAX_ALIASES_LIMIT",
            DocumentError::RootFields { .. } => "MAX_ROOT_FIELDS_LIMIT",
            DocumentError::Cost { .. } => "COST_ESTIMATED_TOO_EXPENSIVE",
            DocumentError::FragmentCycle { .. } => "GRAPHQL_VALIDATION_FAILED",
        }
    }

    /// The limit that refused the document (none for an invalid one).
    pub fn limit(&self) -> Option<Limit> {
        Some(match self {
            DocumentError::TooLarge { .. } => Limit::DocumentBytes,
            DocumentError::TooDeep { .. } | DocumentError::VariablesTooDeep { .. } => {
                Limit::Nesting
            }
            DocumentError::Aliases { .. } => Limit::Aliases,
            DocumentError::RootFields { .. } => Limit::RootFields,
            DocumentError::Cost { .. } => Limit::Cost,
            DocumentError::FragmentCycle { .. } => return None,
        })
    }
}

/// Refuses a document that is too long or nests too deep, before it is parsed.
/// Nesting is checked first (the scan stops at the first level too deep), so a deep document
/// is reported as such whatever its size.
pub fn check_text(query: &str, limits: &GraphqlLimits) -> Result<(), DocumentError> {
    if nesting_exceeds(query.as_bytes(), limits.max_nesting) {
        return Err(DocumentError::TooDeep {
            max: limits.max_nesting,
        });
    }
    if query.len() > limits.max_document_bytes {
        return Err(DocumentError::TooLarge {
            bytes: query.len(),
            max: limits.max_document_bytes,
        });
    }
    Ok(())
}

/// Whether brackets (`{`, `[`, `(`) outside strings and comments nest deeper than `max`.
fn nesting_exceeds(text: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'#' => {
                // A comment runs to the end of the line.
                while i < text.len() && text[i] != b'\n' && text[i] != b'\r' {
                    i += 1;
                }
            }
            b'"' if text[i..].starts_with(b"\"\"\"") => {
                // A block string ends at the next `"""` that is not escaped as `\"""`.
                i += 3;
                while i < text.len() && !text[i..].starts_with(b"\"\"\"") {
                    i += if text[i..].starts_with(b"\\\"\"\"") {
                        4
                    } else {
                        1
                    };
                }
                i += 2;
            }
            b'"' => {
                // A string ends at an unescaped quote, or (unterminated) at the end of the
                // line: what follows is read as brackets again, as the parser would try to.
                i += 1;
                while i < text.len() && !matches!(text[i], b'"' | b'\n' | b'\r') {
                    i += if text[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' | b'(' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    false
}

/// Refuses variables whose lists and objects nest deeper than `max`.
pub fn check_variables(variables: &Variables, limits: &GraphqlLimits) -> Result<(), DocumentError> {
    let max = limits.max_nesting;
    // Depth-first with an explicit stack: the check itself must not recurse.
    let mut stack: Vec<(&Value, usize)> = variables.values().map(|v| (v, 1)).collect();
    while let Some((value, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::List(items) => Box::new(items.iter()),
            Value::Object(fields) => Box::new(fields.values()),
            _ => continue,
        };
        if depth > max {
            return Err(DocumentError::VariablesTooDeep { max });
        }
        stack.extend(children.map(|child| (child, depth + 1)));
    }
    Ok(())
}

/// How big the lists of a schema are, for the cost estimate: a field's `limit`, `first` or
/// `last` argument when it has one, else the field's default list size, else 1. A batched
/// subscription (`S_batches`) counts each result at its window, `max_rows`.
#[derive(Debug, Clone, Default)]
pub struct CostModel {
    /// List fields and the number of items they return when no size is given.
    pub default_sizes: HashMap<String, u64>,
    /// Subscription fields whose every result is a window of up to `max_rows` updates: the
    /// window when none is given and the largest the field accepts (a larger one is the
    /// field's to refuse, with its own message).
    pub windows: HashMap<String, (u64, u64)>,
}

impl CostModel {
    fn list_size(&self, field: &Field, variables: &Variables, defaults: bool) -> u64 {
        let window = self.windows.get(field.name.node.as_str());
        let size_argument = if window.is_some() {
            "max_rows"
        } else {
            "limit"
        };
        let given = field
            .arguments
            .iter()
            .find(|(name, _)| {
                let name = name.node.as_str();
                name == size_argument || matches!(name, "first" | "last")
            })
            .and_then(|(_, value)| {
                // The size is a literal or a variable; anything else is validation's to refuse.
                let value = value
                    .node
                    .clone()
                    .into_const_with(|name| variables.get(&name).cloned().ok_or(()));
                match value {
                    Ok(Value::Number(n)) => n.as_u64(),
                    _ => None,
                }
            });
        if let Some(&(default, max)) = window {
            return given.filter(|&rows| rows <= max).unwrap_or(default).max(1);
        }
        given
            .or_else(|| {
                defaults
                    .then(|| self.default_sizes.get(field.name.node.as_str()).copied())
                    .flatten()
            })
            .unwrap_or(1)
            .max(1)
    }
}

/// Refuses a document with an operation that has too many aliases or root fields, or an
/// estimated cost above the limit: each field counts 1 plus its list size times what its
/// selection costs (the number of values the response can hold). Every operation is checked,
/// not only the one the request selects: async-graphql expands all of them before validation,
/// as it does fragment spreads, so a cycle of fragments is refused here too.
pub fn check_operations(
    document: &ExecutableDocument,
    variables: &Variables,
    model: &CostModel,
    limits: &GraphqlLimits,
) -> Result<(), DocumentError> {
    for (_, operation) in document.operations.iter() {
        let mut walk = Walk {
            document,
            variables,
            model,
            limits,
            fragments: Vec::new(),
            aliases: 0,
            visits: 0,
            // A subscription's root field is a stream of single results, not a list.
            root_lists: operation.node.ty != OperationType::Subscription,
        };
        let set = &operation.node.selection_set.node;
        let root_fields = walk.root_fields(set);
        if root_fields > limits.max_root_fields {
            return Err(DocumentError::RootFields {
                count: root_fields,
                max: limits.max_root_fields,
            });
        }
        let cost = walk.cost(set, 0)?;
        if walk.aliases > limits.max_aliases {
            return Err(DocumentError::Aliases {
                count: walk.aliases,
                max: limits.max_aliases,
            });
        }
        if cost > limits.max_cost {
            return Err(DocumentError::Cost {
                max: limits.max_cost,
            });
        }
    }
    Ok(())
}

/// Selections deeper than this are not followed (validation's depth limit refuses them).
const MAX_WALK_DEPTH: usize = 64;

struct Walk<'a> {
    document: &'a ExecutableDocument,
    variables: &'a Variables,
    model: &'a CostModel,
    limits: &'a GraphqlLimits,
    /// Fragments being expanded, to refuse one that spreads itself.
    fragments: Vec<&'a Name>,
    aliases: usize,
    /// Whether root fields return lists (queries) or one result at a time (subscriptions).
    root_lists: bool,
    /// Selections visited, fragments expanded: every field costs at least 1, and a document
    /// that takes more than `max_cost` steps to expand is refused as too costly too.
    visits: u64,
}

impl<'a> Walk<'a> {
    /// The distinct response keys of the root selection, fragments expanded (each once: a
    /// second spread of a fragment adds no key).
    fn root_fields(&self, set: &'a SelectionSet) -> usize {
        let mut keys = HashSet::new();
        let mut expanded = HashSet::new();
        let mut pending = vec![set];
        while let Some(set) = pending.pop() {
            for item in &set.items {
                match &item.node {
                    Selection::Field(field) => {
                        let key = field.node.alias.as_ref().unwrap_or(&field.node.name);
                        keys.insert(key.node.as_str());
                    }
                    Selection::InlineFragment(inline) => {
                        pending.push(&inline.node.selection_set.node);
                    }
                    Selection::FragmentSpread(spread) => {
                        let name = &spread.node.fragment_name.node;
                        if let Some(fragment) = self.document.fragments.get(name)
                            && expanded.insert(name)
                        {
                            pending.push(&fragment.node.selection_set.node);
                        }
                    }
                }
            }
        }
        keys.len()
    }

    fn cost(&mut self, set: &'a SelectionSet, depth: usize) -> Result<u64, DocumentError> {
        if depth > MAX_WALK_DEPTH {
            return Ok(0);
        }
        let mut total = 0u64;
        for item in &set.items {
            self.visits += 1;
            if self.visits > self.limits.max_cost {
                return Err(DocumentError::Cost {
                    max: self.limits.max_cost,
                });
            }
            let cost = match &item.node {
                Selection::Field(field) => {
                    let field = &field.node;
                    if field.alias.is_some() {
                        self.aliases += 1;
                    }
                    let selection = &field.selection_set.node;
                    if selection.items.is_empty() {
                        1
                    } else {
                        let children = self.cost(selection, depth + 1)?;
                        self.model
                            .list_size(field, self.variables, depth > 0 || self.root_lists)
                            .saturating_mul(children)
                            .saturating_add(1)
                    }
                }
                Selection::InlineFragment(inline) => {
                    self.cost(&inline.node.selection_set.node, depth)?
                }
                Selection::FragmentSpread(spread) => {
                    let name = &spread.node.fragment_name.node;
                    if self.fragments.contains(&name) {
                        return Err(DocumentError::FragmentCycle {
                            name: name.to_string(),
                        });
                    }
                    match self.document.fragments.get(name) {
                        Some(fragment) => {
                            self.fragments.push(name);
                            let cost = self.cost(&fragment.node.selection_set.node, depth);
                            self.fragments.pop();
                            cost?
                        }
                        // Unknown: validation says so.
                        None => 0,
                    }
                }
            };
            total = total.saturating_add(cost);
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;

    fn limits() -> GraphqlLimits {
        GraphqlLimits::default()
    }

    fn check(query: &str) -> Result<(), DocumentError> {
        check_with(query, &Variables::default(), &limits())
    }

    fn check_with(
        query: &str,
        variables: &Variables,
        limits: &GraphqlLimits,
    ) -> Result<(), DocumentError> {
        check_text(query, limits)?;
        let document = async_graphql::parser::parse_query(query).expect("parses");
        let model = CostModel {
            default_sizes: [("trades".to_owned(), 100)].into_iter().collect(),
            windows: [("trades_batches".to_owned(), (1_000, 100_000))]
                .into_iter()
                .collect(),
        };
        check_operations(&document, variables, &model, limits)
    }

    fn nested(open: &str, close: &str, levels: usize) -> String {
        format!(
            "{{ __typename @skip(if: {}true{}) }}",
            open.repeat(levels),
            close.repeat(levels)
        )
    }

    #[test]
    fn nesting_is_refused_before_parsing_at_any_depth() {
        assert_eq!(check(&nested("[", "]", 60)), Ok(()));
        for levels in [65, 2_000, 100_000] {
            let query = nested("[", "]", levels);
            assert_eq!(
                check_text(&query, &limits()),
                Err(DocumentError::TooDeep { max: 64 }),
                "{levels} levels"
            );
        }
        // Unclosed brackets count too: the parser would recurse into them before failing.
        assert!(check_text(&"{".repeat(100), &limits()).is_err());
        assert!(check_text(&"(".repeat(100), &limits()).is_err());
    }

    #[test]
    fn the_parser_holds_the_deepest_nesting_allowed_on_half_a_worker_stack() {
        let limits = GraphqlLimits {
            max_nesting: crate::limits::MAX_NESTING,
            ..limits()
        };
        for (open, close) in [("[", "]"), ("{a: ", "}")] {
            let levels = crate::limits::MAX_NESTING - 2;
            let query = format!(
                "{{ a(x: {}1{}) }}",
                open.repeat(levels),
                close.repeat(levels)
            );
            assert_eq!(check_text(&query, &limits), Ok(()));
            // tokio's worker threads have 2 MiB.
            let parsed = std::thread::Builder::new()
                .stack_size(1 << 20)
                .spawn(move || async_graphql::parser::parse_query(&query).is_ok())
                .expect("thread")
                .join()
                .expect("no stack overflow");
            assert!(parsed);
        }
    }

    #[test]
    fn brackets_in_strings_and_comments_do_not_count() {
        let deep = "[".repeat(200);
        for query in [
            format!("{{ a(x: \"{deep}\") }}"),
            format!("{{ a(x: \"\"\"{deep}\\\"\"\"{deep}\"\"\") }}"),
            format!("{{ a(x: \"\\\"{deep}\") }}"),
            format!("# {deep}\n{{ a }}"),
        ] {
            assert_eq!(check_text(&query, &limits()), Ok(()), "{query}");
        }
        // A string ends at the end of its line: the brackets after it count.
        let query = format!("{{ a(x: \"open\n{deep}) }}");
        assert!(check_text(&query, &limits()).is_err());
        // An escaped quote does not end the string; an escaped backslash does not escape it.
        let query = format!("{{ a(x: \"\\\\\" y: {deep}) }}");
        assert!(check_text(&query, &limits()).is_err());
    }

    #[test]
    fn a_long_document_is_refused_by_its_size() {
        let query = format!("{{ {} }}", "a ".repeat(40_000));
        assert_eq!(
            check_text(&query, &limits()),
            Err(DocumentError::TooLarge {
                bytes: query.len(),
                max: 65_536
            })
        );
    }

    #[test]
    fn variables_nest_up_to_the_limit() {
        let mut value = serde_json::json!(1);
        for _ in 0..64 {
            value = serde_json::json!([value]);
        }
        let ok = Variables::from_json(serde_json::json!({ "v": value.clone() }));
        assert_eq!(check_variables(&ok, &limits()), Ok(()));
        let deep = Variables::from_json(serde_json::json!({ "v": { "x": value } }));
        assert_eq!(
            check_variables(&deep, &limits()),
            Err(DocumentError::VariablesTooDeep { max: 64 })
        );
    }

    #[test]
    fn aliases_and_root_fields_are_counted_through_fragments() {
        let small = GraphqlLimits {
            max_aliases: 3,
            max_root_fields: 2,
            ..limits()
        };
        let ok = "{ a: x b: y { c: z } }";
        assert_eq!(check_with(ok, &Variables::default(), &small), Ok(()));
        let aliases = "query { a: x ...F } fragment F on Query { b: y { c: z d: w } }";
        assert_eq!(
            check_with(aliases, &Variables::default(), &small),
            Err(DocumentError::Aliases { count: 4, max: 3 })
        );
        let roots = "{ x ... on Query { y } ...F } fragment F on Query { z }";
        assert_eq!(
            check_with(roots, &Variables::default(), &small),
            Err(DocumentError::RootFields { count: 3, max: 2 })
        );
        // The same key twice is one root field (the executor merges them).
        assert_eq!(
            check_with("{ x x x }", &Variables::default(), &small),
            Ok(())
        );
    }

    #[test]
    fn cost_multiplies_by_list_sizes_given_or_default() {
        let small = GraphqlLimits {
            max_cost: 2_500,
            ..limits()
        };
        let no = Variables::default();
        // Default size 100: 1 + 100 × 2.
        assert_eq!(check_with("{ trades { id price } }", &no, &small), Ok(()));
        // A subscription's root field streams single updates: its default size is not a list's.
        let small = GraphqlLimits {
            max_cost: 50,
            ..small
        };
        let subscription = "subscription { trades { operation data { id price } } }";
        assert_eq!(check_with(subscription, &no, &small), Ok(()));
        assert_eq!(
            check_with("{ trades { id price } }", &no, &small),
            Err(DocumentError::Cost { max: 50 })
        );
        let small = GraphqlLimits {
            max_cost: 2_500,
            ..small
        };
        // 1 + 1000 × 2 = 2001 fits; twice (aliases) does not.
        assert_eq!(
            check_with("{ trades(limit: 1000) { id price } }", &no, &small),
            Ok(())
        );
        assert_eq!(
            check_with(
                "{ a: trades(limit: 1000) { id price } b: trades(limit: 1000) { id price } }",
                &no,
                &small
            ),
            Err(DocumentError::Cost { max: 2_500 })
        );
        // From a variable, and nested lists multiply.
        let vars = Variables::from_json(serde_json::json!({ "n": 50 }));
        assert_eq!(
            check_with(
                "query($n: Int) { runs(first: $n) { nodes { events(limit: $n) { seq type } } } }",
                &vars,
                &small
            ),
            Err(DocumentError::Cost { max: 2_500 })
        );
    }

    #[test]
    fn a_batched_subscription_counts_a_window_of_updates() {
        let no = Variables::default();
        let limits = GraphqlLimits {
            max_cost: 5_001,
            ..limits()
        };
        let window = |args: &str| {
            let query = format!(
                "subscription {{ trades_batches{args} {{ updates {{ data {{ id price }} }} cursor }} }}"
            );
            check_with(&query, &no, &limits)
        };
        // `updates` (1 + 1 + 2) and `cursor` (1): 5 a row, 1 + 5 × 1,000 by default.
        assert_eq!(window(""), Ok(()));
        assert_eq!(window("(max_rows: 999)"), Ok(()));
        assert_eq!(
            window("(max_rows: 2000)"),
            Err(DocumentError::Cost { max: 5_001 })
        );
        // Out of the field's range: the field refuses it, saying why.
        assert_eq!(window("(max_rows: 100001)"), Ok(()));
        // A `limit` argument is not a window's size.
        assert_eq!(window("(limit: 1)"), Ok(()));
    }

    #[test]
    fn fragment_cycles_and_exponential_spreads_end() {
        let cycle = "{ ...F } fragment F on Query { a ...G } fragment G on Query { b ...F }";
        assert_eq!(
            check(cycle),
            Err(DocumentError::FragmentCycle { name: "F".into() })
        );
        // In an operation the request does not select, too: async-graphql expands them all.
        let other = "query A { a } query B { ...F ...F } fragment F on Query { ...F ...F }";
        assert!(matches!(
            check(other),
            Err(DocumentError::FragmentCycle { .. })
        ));
        // Each fragment spreads the next twice: 2^30 fields, stopped at the cost limit.
        let mut query = String::from("{ ...F0 }");
        for i in 0..30 {
            let next = i + 1;
            let _ = write!(
                query,
                " fragment F{i} on Query {{ a {{ ...F{next} }} b {{ ...F{next} }} }}"
            );
        }
        query.push_str(" fragment F30 on Query { c }");
        assert_eq!(check(&query), Err(DocumentError::Cost { max: 50_000 }));
        // Spreads at one level, with no field between them: the expansion is bounded too.
        let mut query = String::from("{ ...F0 }");
        for i in 0..40 {
            let next = i + 1;
            let _ = write!(query, " fragment F{i} on Query {{ ...F{next} ...F{next} }}");
        }
        query.push_str(" fragment F40 on Query { c }");
        assert_eq!(check(&query), Err(DocumentError::Cost { max: 50_000 }));
    }
}
