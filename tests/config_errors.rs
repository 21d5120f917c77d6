//! Golden tests for configuration errors: every `tests/fixtures/invalid/<case>/schema.yaml`
//! must fail to load, and its message (`file:line:column`, what is wrong, the hint) must match
//! the accepted snapshot `tests/snapshots/config_errors__<case>.snap`. Also checks that the
//! loader never panics, whatever the text.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

fn cases(kind: &str) -> Vec<(String, PathBuf)> {
    let dir = Path::new("tests/fixtures").join(kind);
    let mut cases: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            (name, entry.path().join("schema.yaml"))
        })
        .collect();
    cases.sort();
    cases
}

#[test]
fn invalid_configurations_fail_with_the_accepted_message() {
    assert!(
        std::env::var_os("VIEWCAST_TEST_UNSET_VARIABLE").is_none(),
        "the unset_env_var case needs VIEWCAST_TEST_UNSET_VARIABLE to be unset"
    );
    let cases = cases("invalid");
    assert!(cases.len() >= 20, "only {} invalid cases", cases.len());
    for (case, path) in cases {
        let Err(error) = viewcast::config::load(&path) else {
            panic!("{} loaded, but it is invalid", path.display());
        };
        let message = error.to_string();
        assert!(
            message.starts_with(&format!("{}:", path.display())),
            "{case}: the message must start with the path: {message}"
        );
        assert!(error.location().is_some(), "{case}: no location: {message}");
        insta::with_settings!({ description => path.display().to_string(), omit_expression => true }, {
            insta::assert_snapshot!(case, message);
        });
    }
}

#[test]
fn a_missing_file_is_a_read_error() {
    let path = Path::new("tests/fixtures/invalid/no_such_case/schema.yaml");
    let error = viewcast::config::load(path).unwrap_err();
    assert!(matches!(error, viewcast::config::ConfigError::Read { .. }));
    assert_eq!(
        error.to_string(),
        "tests/fixtures/invalid/no_such_case/schema.yaml: cannot read the file"
    );
    assert!(std::error::Error::source(&error).is_some());
}

/// One edit of a valid file: delete, insert or replace a range, or duplicate a line.
#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize, usize),
    Insert(usize, String),
    Replace(usize, usize, String),
    DuplicateLine(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let snippet = prop_oneof![
        "[ a-zA-Z0-9_:\\-\\[\\]{},'\"#&*!|>.\n\t]{0,12}",
        Just("${env.".to_owned()),
        Just("${env.X:-".to_owned()),
        Just("\n  ".to_owned()),
        Just(": ".to_owned()),
        Just("- ".to_owned()),
    ];
    prop_oneof![
        (any::<usize>(), 0usize..40).prop_map(|(at, len)| Mutation::Delete(at, len)),
        (any::<usize>(), snippet.clone()).prop_map(|(at, s)| Mutation::Insert(at, s)),
        (any::<usize>(), 0usize..10, snippet)
            .prop_map(|(at, len, s)| Mutation::Replace(at, len, s)),
        any::<usize>().prop_map(Mutation::DuplicateLine),
    ]
}

fn apply(text: &str, mutation: &Mutation) -> String {
    let chars: Vec<char> = text.chars().collect();
    let n = chars.len();
    let s = |a: usize, b: usize| chars[a..b].iter().collect::<String>();
    match mutation {
        Mutation::Delete(at, len) => {
            let at = at % (n + 1);
            let end = (at + len).min(n);
            s(0, at) + &s(end, n)
        }
        Mutation::Insert(at, snippet) => {
            let at = at % (n + 1);
            s(0, at) + snippet + &s(at, n)
        }
        Mutation::Replace(at, len, snippet) => {
            let at = at % (n + 1);
            let end = (at + len).min(n);
            s(0, at) + snippet + &s(end, n)
        }
        Mutation::DuplicateLine(line) => {
            let lines: Vec<&str> = text.lines().collect();
            let i = line % lines.len();
            let mut out: Vec<&str> = lines[..=i].to_vec();
            out.extend_from_slice(&lines[i..]);
            out.join("\n")
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        let _ = viewcast::config::load_str(Path::new("schema.yaml"), &text);
    }

    #[test]
    fn yaml_like_text_never_panics(text in "[ a-z_:\\-\\[\\]{},'\"#&*!|>.\n$]{0,200}") {
        let _ = viewcast::config::load_str(Path::new("schema.yaml"), &text);
    }

    #[test]
    fn mutated_valid_files_never_panic(
        case in any::<proptest::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let valid = cases("valid");
        let (_, path) = &valid[case.index(valid.len())];
        let mut text = std::fs::read_to_string(path).unwrap();
        for m in &mutations {
            text = apply(&text, m);
        }
        if let Err(error) = viewcast::config::load_str(Path::new("schema.yaml"), &text) {
            // Every error found in a file names a position in it.
            let location = error.location().expect("an error without a location");
            prop_assert!(location.line >= 1 && location.line <= text.lines().count().max(1) + 1,
                "{error}\n---\n{text}");
        }
    }
}
