//! `${env.NAME}` and `${env.NAME:-default}` expansion on the raw text of `schema.yaml`.
//!
//! This is the only place environment variables enter the configuration: the text is expanded
//! once, before any YAML parsing, and values are inserted verbatim (quote the reference in YAML
//! if a value may contain YAML syntax). Expansion also applies inside YAML comments. The
//! expansion remembers where it changed each line, so that positions found in the expanded text
//! can be reported in terms of the file the user wrote. This module never reads the process
//! environment itself: the caller passes the lookup.

use super::error::{Location, Problem};

const OPEN: &str = "${env.";

/// The expanded text and the map back to the original positions.
#[derive(Debug)]
pub(crate) struct Expanded {
    pub text: String,
    /// Substitutions in text order.
    edits: Vec<Edit>,
}

/// One `${env...}` reference, replaced on line `line` (columns in characters, 1-based, end
/// exclusive).
#[derive(Debug, Clone, Copy)]
struct Edit {
    line: usize,
    original_start: usize,
    original_end: usize,
    expanded_start: usize,
    expanded_end: usize,
}

impl Expanded {
    /// The position in the original text of a position in the expanded text. A position
    /// inside a substituted value maps to the start of its `${env...}` reference.
    pub(crate) fn original(&self, at: Location) -> Location {
        let last = self
            .edits
            .iter()
            .rfind(|e| e.line == at.line && e.expanded_start <= at.column);
        let column = match last {
            None => at.column,
            Some(e) if at.column < e.expanded_end => e.original_start,
            Some(e) => e.original_end + (at.column - e.expanded_end),
        };
        Location {
            line: at.line,
            column,
        }
    }
}

/// Expands every `${env.NAME}` / `${env.NAME:-default}` in `text`.
pub(crate) fn expand(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Expanded, Problem> {
    let mut out = String::with_capacity(text.len());
    let mut edits = Vec::new();
    for (line_index, line) in text.split_inclusive('\n').enumerate() {
        let line_number = line_index + 1;
        let mut rest = line;
        // Columns (in characters) of the next unread character, in both texts.
        let mut original_column = 1;
        let mut expanded_column = 1;
        while let Some(found) = rest.find(OPEN) {
            let before = &rest[..found];
            out.push_str(before);
            let before_chars = before.chars().count();
            original_column += before_chars;
            expanded_column += before_chars;
            let at = Location {
                line: line_number,
                column: original_column,
            };
            let body_and_rest = &rest[found + OPEN.len()..];
            let Some(close) = body_and_rest.find('}') else {
                return Err(Problem::new(at, "unterminated `${env.` reference")
                    .hint("write ${env.NAME} or ${env.NAME:-default} on one line"));
            };
            let body = &body_and_rest[..close];
            let (name, default) = match body.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (body, None),
            };
            if !is_env_name(name) {
                return Err(Problem::new(
                    at,
                    format!("invalid environment variable name {name:?} in `${{env.{body}}}`"),
                )
                .hint(
                    "names use letters, digits and \"_\" and do not start with a digit; \
                     a default is written ${env.NAME:-default}",
                ));
            }
            let value = match (lookup(name), default) {
                (Some(value), _) => value,
                (None, Some(default)) => default.to_owned(),
                (None, None) => {
                    return Err(Problem::new(
                        at,
                        format!("environment variable {name} is not set"),
                    )
                    .hint(format!(
                        "set {name}, or give a default: ${{env.{name}:-default}}"
                    )));
                }
            };
            if value.contains(['\n', '\r']) {
                return Err(Problem::new(
                    at,
                    format!("environment variable {name} contains a line break"),
                )
                .hint("values substituted into schema.yaml must fit on one line"));
            }
            let reference_chars = OPEN.len() + body.chars().count() + 1;
            let value_chars = value.chars().count();
            out.push_str(&value);
            edits.push(Edit {
                line: line_number,
                original_start: original_column,
                original_end: original_column + reference_chars,
                expanded_start: expanded_column,
                expanded_end: expanded_column + value_chars,
            });
            original_column += reference_chars;
            expanded_column += value_chars;
            rest = &body_and_rest[close + 1..];
        }
        out.push_str(rest);
    }
    Ok(Expanded { text: out, edits })
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db.local".to_owned()),
            "EMPTY" => Some(String::new()),
            "MULTI" => Some("a\nb".to_owned()),
            _ => None,
        }
    }

    fn at(line: usize, column: usize) -> Location {
        Location { line, column }
    }

    #[test]
    fn expands_set_variables_and_defaults() {
        let e = expand(
            "a: ${env.HOST}\nb: ${env.NOPE:-x y}, ${env.EMPTY:-z}${env.HOST}\n",
            &env,
        )
        .unwrap();
        assert_eq!(e.text, "a: db.local\nb: x y, db.local\n");
    }

    #[test]
    fn text_without_references_is_unchanged() {
        let text = "a: $HOME {env.X} $ {\n€: ${ env.X }\n";
        assert_eq!(expand(text, &env).unwrap().text, text);
    }

    #[test]
    fn maps_positions_back_to_the_original() {
        // "b: ${env.NOPE:-x y}, €${env.HOST} tail"
        let e = expand("a: 1\nb: ${env.NOPE:-x y}, €${env.HOST} tail\n", &env).unwrap();
        assert_eq!(e.text, "a: 1\nb: x y, €db.local tail\n");
        // Before any substitution, other lines: unchanged.
        assert_eq!(e.original(at(1, 4)), at(1, 4));
        assert_eq!(e.original(at(2, 1)), at(2, 1));
        // Inside a substituted value: the start of the reference.
        assert_eq!(e.original(at(2, 5)), at(2, 4));
        assert_eq!(e.original(at(2, 12)), at(2, 23));
        // After the substitutions: shifted by their length difference.
        assert_eq!(e.original(at(2, 7)), at(2, 20));
        assert_eq!(e.original(at(2, 8)), at(2, 21));
        assert_eq!(e.original(at(2, 21)), at(2, 37));
    }

    #[test]
    fn unset_variable_without_default_names_the_position() {
        let err = expand("a: 1\nb: x ${env.MISSING}\n", &env).unwrap_err();
        assert_eq!(err.at, Some(at(2, 6)));
        assert_eq!(err.message, "environment variable MISSING is not set");
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(expand("a: ${env.HOST\n}", &env).is_err());
        assert!(expand("a: ${env.1X}", &env).is_err());
        assert!(expand("a: ${env.}", &env).is_err());
        assert!(expand("a: ${env.MULTI}", &env).is_err());
    }
}
