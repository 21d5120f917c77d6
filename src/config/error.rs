//! Configuration errors: where the mistake is, what is wrong, what to change.
//!
//! Every [`ConfigError`] is the user's: it is shown as is (file, line, column, message and a
//! hint), never logged as an internal failure. This module also holds the small helpers that
//! make hints (closest-name suggestions, quoted lists).

use std::fmt;
use std::path::PathBuf;

/// A position in `schema.yaml`, both numbers starting at 1 (columns count characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A configuration mistake.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read the file", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration.
    #[error("{}", render(path, *location, message, hint.as_deref()))]
    Invalid {
        path: PathBuf,
        /// Where the mistake is; `None` only when no position could be found for it.
        location: Option<Location>,
        /// What is wrong, lowercase, naming the items concerned.
        message: String,
        /// What to change, when there is something specific to say.
        hint: Option<String>,
    },
}

impl ConfigError {
    /// Where the mistake is, if the file could be read.
    pub fn location(&self) -> Option<Location> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Invalid { location, .. } => *location,
        }
    }

    /// What to change, if there is a specific suggestion.
    pub fn hint(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Invalid { hint, .. } => hint.as_deref(),
        }
    }
}

fn render(
    path: &std::path::Path,
    location: Option<Location>,
    message: &str,
    hint: Option<&str>,
) -> String {
    let mut out = match location {
        Some(at) => format!("{}:{at}: {message}", path.display()),
        None => format!("{}: {message}", path.display()),
    };
    if let Some(hint) = hint {
        out.push_str("\nhint: ");
        out.push_str(hint);
    }
    out
}

/// A mistake found before the file path is attached (see `load_str`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub at: Option<Location>,
    pub message: String,
    pub hint: Option<String>,
}

impl Problem {
    pub(crate) fn new(at: Location, message: impl Into<String>) -> Problem {
        Problem {
            at: Some(at),
            message: message.into(),
            hint: None,
        }
    }

    #[must_use]
    pub(crate) fn hint(mut self, hint: impl Into<String>) -> Problem {
        self.hint = Some(hint.into());
        self
    }

    pub(crate) fn into_error(self, path: PathBuf) -> ConfigError {
        ConfigError::Invalid {
            path,
            location: self.at,
            message: self.message,
            hint: self.hint,
        }
    }
}

/// The hint for an unknown key: the nearest valid one, if any is near, and all of them.
pub(crate) fn unknown_key_hint(key: &str, valid: &[&str]) -> String {
    let all = format!("valid keys here are {}", list(valid, "and"));
    match closest(key, valid.iter().copied()) {
        Some(near) => format!("did you mean {near:?}? {all}"),
        None => all,
    }
}

/// The candidate closest to `word` when it is close enough to be a likely typo.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = match word.chars().count() {
        0..=3 => 1,
        4..=7 => 2,
        _ => 3,
    };
    candidates
        .into_iter()
        .map(|c| (edit_distance(&word.to_lowercase(), &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance, counted in characters.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitute.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// `a, b or c`, each item as given.
pub(crate) fn list<S: AsRef<str>>(items: &[S], last_joiner: &str) -> String {
    match items {
        [] => String::new(),
        [one] => one.as_ref().to_owned(),
        [init @ .., last] => {
            let init: Vec<&str> = init.iter().map(AsRef::as_ref).collect();
            format!("{} {last_joiner} {}", init.join(", "), last.as_ref())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("Intger", "Integer"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn closest_suggests_only_near_names() {
        let names = ["Integer", "Float", "String"];
        assert_eq!(closest("Intger", names), Some("Integer"));
        assert_eq!(closest("string", names), Some("String"));
        assert_eq!(closest("Geometry", names), None);
    }

    #[test]
    fn error_display_has_position_and_hint() {
        let err = Problem::new(Location { line: 3, column: 7 }, "bad thing")
            .hint("do this")
            .into_error(PathBuf::from("a/schema.yaml"));
        assert_eq!(
            err.to_string(),
            "a/schema.yaml:3:7: bad thing\nhint: do this"
        );
        assert_eq!(err.location(), Some(Location { line: 3, column: 7 }));
        assert_eq!(err.hint(), Some("do this"));
    }

    #[test]
    fn list_joins_with_the_last_word() {
        assert_eq!(list(&["a", "b", "c"], "or"), "a, b or c");
        assert_eq!(list(&["a"], "or"), "a");
    }
}
