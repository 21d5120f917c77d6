//! SQL identifiers as written in `schema.yaml`: `name`, `schema.name`, `"Quoted"` parts.
//!
//! Unquoted parts fold to lowercase as Postgres and Materialize fold them (ASCII letters
//! only) and must be plain identifiers (letters, digits, `_`, `$`, not starting with a digit
//! or `$`); quoted parts keep their text exactly, may contain anything but must not be empty,
//! and write an embedded quote as `""`. Parsing never fails silently: anything else is an
//! [`IdentError`] saying what to write instead.

use super::QualifiedName;

/// Why an identifier could not be parsed, and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdentError {
    pub message: String,
    pub hint: String,
}

fn error(message: impl Into<String>, hint: impl Into<String>) -> IdentError {
    IdentError {
        message: message.into(),
        hint: hint.into(),
    }
}

const QUOTE_HINT: &str = "quote a name that is not a plain lowercase identifier, e.g. \
                          '\"My Table\"' (single quotes around it keep YAML from eating the \
                          double quotes); write an embedded double quote as \"\"";

/// Folds an unquoted identifier as SQL does.
pub(crate) fn fold(ident: &str) -> String {
    ident.to_ascii_lowercase()
}

/// Parses a relation name: `name` or `schema.name`.
pub(crate) fn parse_relation(text: &str) -> Result<QualifiedName, IdentError> {
    let mut parts = parse_parts(text)?;
    match parts.len() {
        1 => Ok(QualifiedName {
            schema: None,
            name: parts.remove(0),
        }),
        2 => {
            let name = parts.remove(1);
            Ok(QualifiedName {
                schema: Some(parts.remove(0)),
                name,
            })
        }
        n => Err(error(
            format!("{n} dot-separated parts, at most 2 are allowed"),
            "write schema.name or name (the database is the one viewcast connects to); \
             quote a part that contains a dot, e.g. '\"a.b\"'",
        )),
    }
}

/// Parses a column name: a single identifier.
pub(crate) fn parse_column(text: &str) -> Result<String, IdentError> {
    let mut parts = parse_parts(text)?;
    if parts.len() == 1 {
        Ok(parts.remove(0))
    } else {
        Err(error(
            "a column name is a single identifier, not a dotted name",
            "quote a column name that contains a dot, e.g. '\"a.b\"'",
        ))
    }
}

fn parse_parts(text: &str) -> Result<Vec<String>, IdentError> {
    if text.is_empty() {
        return Err(error("the name is empty", QUOTE_HINT));
    }
    let mut parts = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let part = if chars.peek() == Some(&'"') {
            chars.next();
            let mut part = String::new();
            loop {
                match chars.next() {
                    None => {
                        return Err(error(
                            "unterminated quoted identifier",
                            "close the quote; write an embedded double quote as \"\"",
                        ));
                    }
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                }
            }
            if part.is_empty() {
                return Err(error(
                    "empty quoted identifier \"\"",
                    "a quoted identifier needs at least one character",
                ));
            }
            match chars.peek() {
                None | Some('.') => {}
                Some(c) => {
                    return Err(error(
                        format!("unexpected {c:?} after a quoted identifier"),
                        "put the whole part inside the quotes, e.g. '\"MyTable_1\"'",
                    ));
                }
            }
            part
        } else {
            let mut part = String::new();
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if c == '"' {
                    return Err(error(
                        "a double quote inside an unquoted identifier",
                        QUOTE_HINT,
                    ));
                }
                let valid = if part.is_empty() {
                    c.is_alphabetic() || c == '_'
                } else {
                    c.is_alphanumeric() || c == '_' || c == '$'
                };
                if !valid {
                    return Err(error(
                        format!("{c:?} is not allowed in an unquoted identifier"),
                        QUOTE_HINT,
                    ));
                }
                part.push(c);
                chars.next();
            }
            if part.is_empty() {
                return Err(error(
                    "empty part in a dotted name",
                    "write schema.name or name, without a leading, trailing or doubled dot",
                ));
            }
            fold(&part)
        };
        parts.push(part);
        match chars.next() {
            None => return Ok(parts),
            Some('.') => {
                if chars.peek().is_none() {
                    return Err(error(
                        "empty part in a dotted name",
                        "write schema.name or name, without a leading, trailing or doubled dot",
                    ));
                }
            }
            Some(_) => unreachable!("parts end at a dot or at the end"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(schema: Option<&str>, name: &str) -> QualifiedName {
        QualifiedName {
            schema: schema.map(str::to_owned),
            name: name.to_owned(),
        }
    }

    #[test]
    fn unquoted_parts_fold_and_quoted_parts_keep_case() {
        assert_eq!(parse_relation("trades").unwrap(), rel(None, "trades"));
        assert_eq!(
            parse_relation("Public.Trades").unwrap(),
            rel(Some("public"), "trades")
        );
        assert_eq!(
            parse_relation(r#""Sales"."Q1.Orders""#).unwrap(),
            rel(Some("Sales"), "Q1.Orders")
        );
        assert_eq!(
            parse_relation(r#"s."a""b""#).unwrap(),
            rel(Some("s"), r#"a"b"#)
        );
        assert_eq!(parse_relation("_x1$").unwrap(), rel(None, "_x1$"));
        assert_eq!(
            parse_relation("Ünïcode").unwrap(),
            rel(None, "Ünïcode".to_ascii_lowercase().as_str())
        );
        assert_eq!(parse_column(r#""Price""#).unwrap(), "Price");
        assert_eq!(parse_column("PRICE").unwrap(), "price");
    }

    #[test]
    fn malformed_names_are_refused() {
        for bad in [
            "", "\"abc", "\"\"", "a..b", ".a", "a.", "a.b.c", "my-table", "1abc", "a b", "\"a\"b",
            "a\"b\"", "$a",
        ] {
            assert!(parse_relation(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(parse_column("a.b").is_err());
        assert!(parse_column("\"a.b\"").is_ok());
    }
}
