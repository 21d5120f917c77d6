//! Why a `where` argument was refused. Every variant is the user's mistake: the message names
//! the place in the argument (`where._and[1].price._gt`) and says what to write instead.

/// A `where` argument that cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("`{at}` must be an object of column filters (or `_and`, `_or`, `_not`), not {found}")]
    NotAFilter { at: String, found: String },

    #[error("`{at}` must be a list of filter objects, not {found}")]
    NotAList { at: String, found: String },

    #[error("`{at}` is null; a list of filters must hold filter objects only")]
    NullInList { at: String },

    #[error("unknown column `{column}` at `{at}`; `{source_name}` has the columns {columns}")]
    UnknownColumn {
        at: String,
        column: String,
        source_name: String,
        columns: String,
    },

    #[error("`{at}` must be an object of operators such as `{{_eq: ...}}`, not {found}")]
    NotOperators { at: String, found: String },

    #[error("unknown operator `{operator}` at `{at}`; a {ty} column supports {allowed}")]
    UnknownOperator {
        at: String,
        operator: String,
        ty: String,
        allowed: String,
    },

    #[error(
        "operator `{operator}` at `{at}` does not apply to a {ty} column; use one of {allowed}"
    )]
    UnsupportedOperator {
        at: String,
        operator: String,
        ty: String,
        allowed: String,
    },

    #[error("`{at}` expects {expected}, not {found}")]
    BadOperand {
        at: String,
        expected: String,
        found: String,
    },

    #[error("`{label}` at `{at}` is not a value of enum {enum_name}; use one of {labels}")]
    UnknownLabel {
        at: String,
        label: String,
        enum_name: String,
        labels: String,
    },

    #[error(
        "the pattern at `{at}` ends with an escape character `\\`; write `\\\\` to match a backslash"
    )]
    TrailingEscape { at: String },

    /// `reason` is the regex parser's own explanation (it points at the offending character),
    /// kept as text because it is the user-facing detail, not an internal cause.
    #[error("the regular expression at `{at}` is invalid: {reason}")]
    BadRegex { at: String, reason: String },

    #[error(
        "`{at}` is nested more than {max} levels deep; flatten the `_and`/`_or`/`_not` nesting"
    )]
    TooDeep { at: String, max: usize },

    #[error(
        "`where` has more than {max} conditions (columns, operators and `_and`/`_or`/`_not` keys); the limit is set by --filter-max-nodes"
    )]
    TooManyNodes { max: usize },

    #[error(
        "`{at}` lists {count} values; at most {max} (--filter-max-in): match a range or split the subscription"
    )]
    InListTooLong {
        at: String,
        count: usize,
        max: usize,
    },

    #[error(
        "the pattern at `{at}` is {bytes} bytes long; at most {max} (--filter-max-pattern-bytes)"
    )]
    PatternTooLong {
        at: String,
        bytes: usize,
        max: usize,
    },
}

impl FilterError {
    /// Whether a size limit refused the filter (not a mistake in it).
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            FilterError::TooManyNodes { .. }
                | FilterError::InListTooLong { .. }
                | FilterError::PatternTooLong { .. }
        )
    }
}
