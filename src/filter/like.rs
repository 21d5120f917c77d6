//! SQL `LIKE` / `ILIKE` patterns, compiled once and matched without allocating.
//!
//! `%` matches any run of characters, `_` exactly one character, and a backslash makes the
//! next character literal (Postgres's default escape). Matching is on characters, not bytes.
//! Case-insensitive matching folds both sides with [`fold`], a per-character lowercase.

use std::fmt;

/// Why a pattern could not be compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LikeError {
    TrailingEscape,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Literal(char),
    AnyOne,
    AnyRun,
}

#[derive(Clone, PartialEq, Eq)]
pub(crate) struct LikePattern {
    tokens: Box<[Token]>,
    case_insensitive: bool,
}

impl fmt::Debug for LikePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LikePattern(")?;
        for token in &self.tokens {
            match token {
                Token::Literal(c @ ('%' | '_' | '\\')) => write!(f, "\\{c}")?,
                Token::Literal(c) => write!(f, "{c}")?,
                Token::AnyOne => f.write_str("_")?,
                Token::AnyRun => f.write_str("%")?,
            }
        }
        f.write_str(if self.case_insensitive {
            ", ilike)"
        } else {
            ")"
        })
    }
}

/// Lowercases one character when its lowercase is one character (all but a handful, such as
/// `İ`, whose lowercase is two characters; those are compared as they are).
pub(crate) fn fold(c: char) -> char {
    let mut lower = c.to_lowercase();
    match (lower.next(), lower.next()) {
        (Some(l), None) => l,
        _ => c,
    }
}

impl LikePattern {
    pub(crate) fn compile(pattern: &str, case_insensitive: bool) -> Result<Self, LikeError> {
        let mut tokens = Vec::with_capacity(pattern.len());
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            let token = match c {
                '%' => {
                    // Consecutive `%` are one.
                    if tokens.last() == Some(&Token::AnyRun) {
                        continue;
                    }
                    Token::AnyRun
                }
                '_' => Token::AnyOne,
                '\\' => Token::Literal(chars.next().ok_or(LikeError::TrailingEscape)?),
                c => Token::Literal(c),
            };
            tokens.push(match token {
                Token::Literal(c) if case_insensitive => Token::Literal(fold(c)),
                token => token,
            });
        }
        Ok(LikePattern {
            tokens: tokens.into_boxed_slice(),
            case_insensitive,
        })
    }

    /// Whether the whole of `text` matches. Greedy with backtracking to the last `%` only,
    /// which is exact for LIKE patterns and runs in O(text × pattern) at worst.
    pub(crate) fn matches(&self, text: &str) -> bool {
        let tokens = &*self.tokens;
        let char_at = |at: usize| text[at..].chars().next();
        let (mut t, mut p) = (0, 0);
        // After a `%`: the token just past it, and where in the text it currently resumes.
        let mut resume: Option<(usize, usize)> = None;
        loop {
            if let Some(token) = tokens.get(p) {
                match *token {
                    Token::AnyRun => {
                        resume = Some((p + 1, t));
                        p += 1;
                        continue;
                    }
                    Token::AnyOne => {
                        if let Some(c) = char_at(t) {
                            t += c.len_utf8();
                            p += 1;
                            continue;
                        }
                    }
                    Token::Literal(want) => {
                        if let Some(c) = char_at(t) {
                            let folded = if self.case_insensitive { fold(c) } else { c };
                            if folded == want {
                                t += c.len_utf8();
                                p += 1;
                                continue;
                            }
                        }
                    }
                }
            } else if t == text.len() {
                return true;
            }
            // Mismatch: let the last `%` swallow one more character, if there is one.
            match resume {
                Some((after, from)) => match char_at(from) {
                    Some(c) => {
                        let from = from + c.len_utf8();
                        resume = Some((after, from));
                        p = after;
                        t = from;
                    }
                    None => return false,
                },
                None => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn like(pattern: &str, text: &str) -> bool {
        LikePattern::compile(pattern, false)
            .expect("pattern compiles")
            .matches(text)
    }

    fn ilike(pattern: &str, text: &str) -> bool {
        LikePattern::compile(pattern, true)
            .expect("pattern compiles")
            .matches(text)
    }

    #[test]
    fn wildcards() {
        let cases = [
            ("abc", "abc", true),
            ("abc", "abcd", false),
            ("abc", "ab", false),
            ("a%", "a", true),
            ("a%", "abc", true),
            ("a%", "bac", false),
            ("%c", "abc", true),
            ("%b%", "abc", true),
            ("%b%", "ac", false),
            ("a_c", "abc", true),
            ("a_c", "ac", false),
            ("a_c", "abbc", false),
            ("%", "", true),
            ("", "", true),
            ("", "a", false),
            ("_", "", false),
            ("%%%", "x", true),
            ("%a%b%c%", "xxaxxbxxcxx", true),
            ("%a%b%c", "xxaxxbxxcxx", false),
            ("%aab", "aaaab", true),
            ("a%b%b", "abbb", true),
            ("_é_", "aéb", true),
            ("%€", "cost 5€", true),
            ("__", "€€", true),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(like(pattern, text), want, "{text:?} LIKE {pattern:?}");
        }
    }

    #[test]
    fn backslash_escapes_the_next_character() {
        assert!(like(r"100\%", "100%"));
        assert!(!like(r"100\%", "1000"));
        assert!(like(r"a\_b", "a_b"));
        assert!(!like(r"a\_b", "axb"));
        assert!(like(r"a\\b", r"a\b"));
        assert!(like(r"\a", "a"));
        assert!(like(r"%\%%", "50% off"));
        assert_eq!(
            LikePattern::compile(r"abc\", false),
            Err(LikeError::TrailingEscape)
        );
    }

    #[test]
    fn ilike_ignores_case_on_both_sides() {
        assert!(ilike("ABC%", "abcdef"));
        assert!(ilike("abc%", "ABCDEF"));
        assert!(ilike("%ÉTÉ%", "un été"));
        assert!(!like("ABC%", "abcdef"));
        assert!(!ilike("abd%", "ABCDEF"));
        assert!(ilike(r"\A_", "ab"));
    }

    #[test]
    fn pathological_patterns_finish() {
        let text = "a".repeat(2000);
        let pattern = format!("{}b", "%a".repeat(50));
        assert!(!like(&pattern, &text));
    }
}
