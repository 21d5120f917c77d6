//! The binary's command line: help, check, setup SQL, errors and exit codes.

use std::process::Command;

fn viewcast(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_viewcast"))
        .args(args)
        .env_remove("VIEWCAST_CONFIG")
        .env_remove("PGSSLMODE")
        .env_remove("PGSSLROOTCERT")
        .output()
        .expect("run viewcast");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn help_lists_commands_and_environment_variables() {
    let (code, out, _) = viewcast(&["--help"]);
    assert_eq!(code, 0);
    for command in ["serve", "check", "demo", "introspect"] {
        assert!(out.contains(command), "{out}");
    }
    let (code, out, _) = viewcast(&["serve", "--help"]);
    assert_eq!(code, 0);
    for env in [
        "DATABASE_URL",
        "VIEWCAST_PORT",
        "VIEWCAST_HOST",
        "VIEWCAST_CONFIG",
        "VIEWCAST_INSTANCE",
        "MATERIALIZE_URL",
        "RISINGWAVE_URL",
    ] {
        assert!(out.contains(env), "serve --help names {env}:\n{out}");
    }
}

#[test]
fn check_prints_the_sdl() {
    let (code, out, err) = viewcast(&["check", "--config", "examples/demo/schema.yaml"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("type tradesUpdate {"), "{out}");
    assert!(out.contains("): tradesUpdate!"), "{out}");
}

#[test]
fn check_prints_the_schema_a_role_sees() {
    let check = |role: &str| {
        viewcast(&[
            "check",
            "--config",
            "examples/demo/schema.yaml",
            "--role",
            role,
        ])
    };
    // The demo's analyst: trades without their price, no positions, no mutations.
    let (code, out, err) = check("analyst");
    assert_eq!(code, 0, "{err}");
    let trades = out
        .split("\ntype trades {")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .unwrap_or_else(|| panic!("a trades type: {out}"));
    assert!(
        trades.contains("symbol: String") && !trades.contains("price"),
        "{trades}"
    );
    assert!(
        !out.contains("type positions {") && !out.contains("type Mutation"),
        "{out}"
    );
    assert!(err.is_empty(), "{err}");
    // The admin sees everything; a role without permissions only `viewer`, and is told so.
    let (code, out, _) = check("admin");
    assert_eq!(code, 0);
    assert!(
        out.contains("type positions {") && out.contains("create_trades_trigger"),
        "{out}"
    );
    let (code, out, err) = check("nobody");
    assert_eq!(code, 0);
    assert!(
        err.contains("\"nobody\" has no entry in permissions"),
        "{err}"
    );
    assert!(out.contains("viewer") && !out.contains("trades"), "{out}");
}

#[test]
fn check_prints_setup_sql() {
    let (code, out, err) = viewcast(&[
        "check",
        "--config",
        "examples/demo/schema.yaml",
        "--setup-sql",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(r#"CREATE PUBLICATION "viewcast" FOR TABLE "instruments", "positions", "trades" WITH (publish_via_partition_root = true);"#),
        "{out}"
    );
}

#[test]
fn check_reports_config_errors_with_their_position() {
    let (code, out, err) = viewcast(&[
        "check",
        "--config",
        "tests/fixtures/invalid/unknown_type/schema.yaml",
    ]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(
        err.starts_with("error: tests/fixtures/invalid/unknown_type/schema.yaml:"),
        "{err}"
    );
    assert!(err.contains("unknown type"), "{err}");

    let (code, _, err) = viewcast(&["check", "--config", "does/not/exist.yaml"]);
    assert_eq!(code, 1);
    assert!(err.contains("does/not/exist.yaml"), "{err}");
}

#[test]
fn serve_refuses_a_database_url_it_cannot_use() {
    let serve = |url: &str| {
        viewcast(&[
            "serve",
            "--config",
            "examples/demo/schema.yaml",
            "--database-url",
            url,
        ])
    };
    let (code, _, err) = serve("postgres://u:hunter2@h:notaport/db");
    assert_eq!(code, 1);
    assert!(err.contains("invalid connection string"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    // TLS settings are checked before anything starts: the mode, and the files they name.
    let (code, _, err) = serve("postgres://u:hunter2@h/db?sslmode=verify-full");
    assert_eq!(code, 1);
    assert!(err.contains("sslrootcert"), "{err}");
    let (code, _, err) =
        serve("postgres://u@h/db?sslmode=verify-ca&sslrootcert=/does/not/exist.pem");
    assert_eq!(code, 1);
    assert!(err.contains("/does/not/exist.pem"), "{err}");
    let (code, _, err) = serve("postgres://u@h/db?sslmode=sometimes");
    assert_eq!(code, 1);
    assert!(err.contains("sslmode=sometimes"), "{err}");
}
