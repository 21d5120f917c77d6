//! Where each key and value of a YAML document is, by path.
//!
//! serde gives positions only for its own errors; the checks that run after deserialization
//! (unknown types, keys, collisions...) look their positions up here. The index is built from
//! `yaml-rust2`'s event parser, iteratively (no recursion on nesting depth). Paths are the keys
//! from the root, sequence items by their index: `["sources", "trades", "primary_key", "1"]`.
//! Only the first document is indexed. A duplicated key is indexed at its first occurrence
//! and the first duplicate is remembered, for the message when serde refuses it.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::Marker;

use super::error::{Location, Problem};

/// The positions of one mapping entry or sequence item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    /// The key, for a mapping entry.
    key: Option<Location>,
    /// The value (for a block collection, its first entry).
    value: Location,
}

/// Positions by path.
#[derive(Debug, Default)]
pub(crate) struct Spans {
    map: HashMap<Vec<String>, Span>,
    duplicate: Option<Duplicate>,
    /// Where a second document starts, if there is one.
    second_document: Option<Location>,
}

/// A key that appears twice in one mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Duplicate {
    /// The path of the key (the mapping's path and the key).
    pub path: Vec<String>,
    pub first: Location,
    pub second: Location,
}

enum Frame {
    Mapping {
        path: Vec<String>,
        /// The key read and waiting for its value.
        key: Option<(String, Location)>,
    },
    Sequence {
        path: Vec<String>,
        next: usize,
    },
}

const START: Location = Location { line: 1, column: 1 };

/// yaml-rust2 counts lines from 1 and columns (in characters) from 0.
fn location(mark: Marker) -> Location {
    Location {
        line: mark.line(),
        column: mark.col() + 1,
    }
}

impl Spans {
    /// Indexes `text`; a YAML syntax error becomes a [`Problem`] at its position.
    pub(crate) fn build(text: &str) -> Result<Spans, Problem> {
        let mut spans = Spans::default();
        let mut stack: Vec<Frame> = Vec::new();
        let mut parser = Parser::new_from_str(text);
        let mut documents = 0;
        loop {
            let (event, mark) = parser.next_token().map_err(|e| {
                Problem::new(location(*e.marker()), format!("invalid YAML: {}", e.info()))
                    .hint("check the brackets, quotes, colons and indentation up to this point")
            })?;
            let at = location(mark);
            match event {
                Event::StreamEnd => break,
                Event::DocumentStart => {
                    documents += 1;
                    if documents > 1 {
                        spans.second_document = Some(at);
                        break;
                    }
                }
                Event::Scalar(text, ..) => {
                    if let Some(Frame::Mapping {
                        key: key @ None, ..
                    }) = stack.last_mut()
                    {
                        *key = Some((text, at));
                    } else {
                        spans.value(&mut stack, at);
                    }
                }
                Event::Alias(_) => {
                    if let Some(Frame::Mapping {
                        key: key @ None, ..
                    }) = stack.last_mut()
                    {
                        *key = Some(("*".to_owned(), at));
                    } else {
                        spans.value(&mut stack, at);
                    }
                }
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    let path = match stack.last_mut() {
                        // A collection used as a key: index nothing below it.
                        Some(Frame::Mapping {
                            key: key @ None, ..
                        }) => {
                            *key = Some(("?".to_owned(), at));
                            vec!["?".to_owned()]
                        }
                        _ => spans.value(&mut stack, at),
                    };
                    stack.push(if matches!(event, Event::MappingStart(..)) {
                        Frame::Mapping { path, key: None }
                    } else {
                        Frame::Sequence { path, next: 0 }
                    });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                Event::Nothing | Event::StreamStart | Event::DocumentEnd => {}
            }
        }
        Ok(spans)
    }

    /// Records a value at `at` in the innermost collection and returns its path.
    fn value(&mut self, stack: &mut [Frame], at: Location) -> Vec<String> {
        let (path, key) = match stack.last_mut() {
            None => (Vec::new(), None),
            Some(Frame::Mapping { path, key }) => {
                let (name, key_at) = key.take().unwrap_or_else(|| (String::new(), at));
                let mut path = path.clone();
                path.push(name);
                (path, Some(key_at))
            }
            Some(Frame::Sequence { path, next }) => {
                let mut path = path.clone();
                path.push(next.to_string());
                *next += 1;
                (path, None)
            }
        };
        match self.map.entry(path.clone()) {
            Entry::Vacant(entry) => {
                entry.insert(Span { key, value: at });
            }
            Entry::Occupied(entry) => {
                if let (Some(first), Some(second)) = (entry.get().key, key) {
                    self.duplicate.get_or_insert(Duplicate {
                        path: path.clone(),
                        first,
                        second,
                    });
                }
            }
        }
        path
    }

    /// Where a second YAML document starts, if the text has more than one.
    pub(crate) fn second_document(&self) -> Option<Location> {
        self.second_document
    }

    /// The first key that appears twice in a mapping, if any.
    pub(crate) fn duplicate(&self) -> Option<&Duplicate> {
        self.duplicate.as_ref()
    }

    /// The position of the key at `path` (of the value for a sequence item); the nearest
    /// indexed ancestor's when `path` is not in the document; the start of the file at worst.
    pub(crate) fn key(&self, path: &[&str]) -> Location {
        self.find(path).map_or(START, |s| s.key.unwrap_or(s.value))
    }

    /// The position of the value at `path`, with the same fallbacks as [`Spans::key`].
    pub(crate) fn value_at(&self, path: &[&str]) -> Location {
        self.find(path).map_or(START, |s| s.value)
    }

    /// Whether `path` is in the document.
    pub(crate) fn contains(&self, path: &[&str]) -> bool {
        self.map.contains_key(&owned(path))
    }

    fn find(&self, path: &[&str]) -> Option<Span> {
        (0..=path.len())
            .rev()
            .find_map(|len| self.map.get(&owned(&path[..len])).copied())
    }
}

fn owned(path: &[&str]) -> Vec<String> {
    path.iter().map(|s| (*s).to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: usize, column: usize) -> Location {
        Location { line, column }
    }

    #[test]
    fn indexes_keys_and_values_by_path() {
        let text = "\
sources:
  trades:
    primary_key: [id, 'b']
    columns:
      id: Integer
      price: { type: Float, column: x }
";
        let spans = Spans::build(text).unwrap();
        assert_eq!(spans.key(&["sources"]), at(1, 1));
        assert_eq!(spans.key(&["sources", "trades"]), at(2, 3));
        assert_eq!(
            spans.value_at(&["sources", "trades", "primary_key"]),
            at(3, 18)
        );
        assert_eq!(
            spans.key(&["sources", "trades", "primary_key", "1"]),
            at(3, 23)
        );
        assert_eq!(spans.key(&["sources", "trades", "columns", "id"]), at(5, 7));
        assert_eq!(
            spans.value_at(&["sources", "trades", "columns", "id"]),
            at(5, 11)
        );
        assert_eq!(
            spans.value_at(&["sources", "trades", "columns", "price", "column"]),
            at(6, 37)
        );
        // Missing paths fall back to their nearest ancestor.
        assert_eq!(spans.key(&["sources", "trades", "nope", "x"]), at(2, 3));
        assert!(!spans.contains(&["sources", "trades", "table"]));
    }

    #[test]
    fn remembers_the_first_duplicate_key() {
        let spans = Spans::build("a:\n  b: 1\n  c: 2\n  b: 3\n  c: 4\n").unwrap();
        assert_eq!(
            spans.duplicate(),
            Some(&Duplicate {
                path: owned(&["a", "b"]),
                first: at(2, 3),
                second: at(4, 3)
            })
        );
        assert_eq!(Spans::build("a: [1, 1]").unwrap().duplicate(), None);
        let two = Spans::build("a: 1\n---\nb: 2\n").unwrap();
        assert_eq!(two.second_document(), Some(at(2, 1)));
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let err = Spans::build("a: [1, 2\nb: c").unwrap_err();
        assert!(err.at.is_some());
        assert!(err.message.starts_with("invalid YAML"));
    }

    #[test]
    fn deep_nesting_does_not_recurse() {
        let text = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        let _ = Spans::build(&text);
    }
}
