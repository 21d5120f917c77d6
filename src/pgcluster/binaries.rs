//! Finding the Postgres server binaries (`initdb` and `postgres`) on this machine.
//!
//! [`probe`] gathers the places to look (environment, `pg_config`, the Debian layout, `PATH`);
//! [`choose`] is the pure decision over them, so the order is unit-tested without touching
//! the filesystem. Nothing here installs anything or guesses beyond those places.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::ClusterError;

/// Names the directory holding `initdb` and `postgres`; wins over every other place.
pub(crate) const ENV_VAR: &str = "VIEWCAST_PG_BIN";

/// Debian/Ubuntu install one directory per major version below here: `<root>/<version>/bin`.
const VERSIONED_ROOT: &str = "/usr/lib/postgresql";

/// The places to look, each already in its own order of preference.
#[derive(Debug, Default)]
pub(crate) struct Candidates {
    /// `VIEWCAST_PG_BIN`, when set and not empty.
    pub(crate) env: Option<PathBuf>,
    /// `pg_config --bindir`, when `pg_config` runs. It may name a directory without the server
    /// (Debian ships `pg_config` with the client library), so it is checked like the others.
    pub(crate) pg_config: Option<PathBuf>,
    /// `/usr/lib/postgresql/<version>/bin`, newest version first.
    pub(crate) versioned: Vec<PathBuf>,
    /// The entries of `PATH`, in order.
    pub(crate) path: Vec<PathBuf>,
}

/// The absolute directory holding `initdb` and `postgres`.
pub(crate) async fn find() -> Result<PathBuf, ClusterError> {
    let candidates = probe().await;
    let dir = choose(&candidates, holds_server)?;
    // Absolute, because the server is started with another working directory.
    std::fs::canonicalize(&dir).map_err(|source| ClusterError::Io {
        action: "resolve the binary directory",
        path: dir,
        source,
    })
}

/// Picks the first place that holds the server, in the documented order.
///
/// An explicit `VIEWCAST_PG_BIN` that does not hold the server is an error rather than a
/// reason to fall back: the user asked for those binaries, and silently using others would
/// hide the mistake.
pub(crate) fn choose(
    candidates: &Candidates,
    holds_server: impl Fn(&Path) -> bool,
) -> Result<PathBuf, ClusterError> {
    if let Some(dir) = &candidates.env {
        return if holds_server(dir) {
            Ok(dir.clone())
        } else {
            Err(ClusterError::BadBinDir { dir: dir.clone() })
        };
    }
    candidates
        .pg_config
        .iter()
        .chain(&candidates.versioned)
        .chain(&candidates.path)
        .find(|dir| holds_server(dir))
        .cloned()
        .ok_or(ClusterError::BinariesNotFound)
}

/// Orders directory names that are versions (`16`, `9.6`), newest first; drops the others.
pub(crate) fn newest_first(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut versions: Vec<(Vec<u32>, String)> = names
        .into_iter()
        .filter_map(|name| Some((parse_version(&name)?, name)))
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, name)| name).collect()
}

fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

fn holds_server(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("postgres").is_file()
}

async fn probe() -> Candidates {
    let env = std::env::var_os(ENV_VAR)
        .filter(|value| !value.is_empty())
        .map(PathBuf::from);
    let pg_config = if env.is_some() {
        None
    } else {
        pg_config_bindir().await
    };
    let root = Path::new(VERSIONED_ROOT);
    let versioned = std::fs::read_dir(root)
        .map(|entries| {
            let names = entries.filter_map(|entry| entry.ok()?.file_name().into_string().ok());
            newest_first(names)
                .into_iter()
                .map(|name| root.join(name).join("bin"))
                .collect()
        })
        .unwrap_or_default();
    let path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect())
        .unwrap_or_default();
    Candidates {
        env,
        pg_config,
        versioned,
        path,
    }
}

async fn pg_config_bindir() -> Option<PathBuf> {
    let output = tokio::process::Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .await
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let dir = text.trim();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(list: &[&str]) -> Vec<PathBuf> {
        list.iter().map(PathBuf::from).collect()
    }

    /// A fake filesystem: only the listed directories hold the server.
    fn holding(dirs: &'static [&'static str]) -> impl Fn(&Path) -> bool {
        move |dir| dirs.iter().any(|d| Path::new(d) == dir)
    }

    fn everything() -> Candidates {
        Candidates {
            env: Some("/opt/pg/bin".into()),
            pg_config: Some("/usr/lib/postgresql/15/bin".into()),
            versioned: paths(&["/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin"]),
            path: paths(&["/usr/local/bin", "/usr/bin"]),
        }
    }

    #[test]
    fn env_var_wins_over_everything() {
        let all = &[
            "/opt/pg/bin",
            "/usr/lib/postgresql/15/bin",
            "/usr/lib/postgresql/16/bin",
            "/usr/bin",
        ];
        let chosen = choose(&everything(), holding(all)).unwrap();
        assert_eq!(chosen, Path::new("/opt/pg/bin"));
    }

    #[test]
    fn env_var_without_server_is_an_error_not_a_fallback() {
        let err = choose(&everything(), holding(&["/usr/lib/postgresql/16/bin"])).unwrap_err();
        assert!(matches!(&err, ClusterError::BadBinDir { dir } if dir == Path::new("/opt/pg/bin")));
        assert!(err.to_string().contains("VIEWCAST_PG_BIN=/opt/pg/bin"));
    }

    #[test]
    fn pg_config_comes_before_newer_versioned_dirs() {
        let candidates = Candidates {
            env: None,
            ..everything()
        };
        let all = &["/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin"];
        let chosen = choose(&candidates, holding(all)).unwrap();
        assert_eq!(chosen, Path::new("/usr/lib/postgresql/15/bin"));
    }

    #[test]
    fn pg_config_of_a_client_only_install_falls_through_to_versioned() {
        let candidates = Candidates {
            env: None,
            pg_config: Some("/usr/bin".into()),
            ..everything()
        };
        let chosen = choose(&candidates, holding(&["/usr/lib/postgresql/16/bin"])).unwrap();
        assert_eq!(chosen, Path::new("/usr/lib/postgresql/16/bin"));
    }

    #[test]
    fn path_is_the_last_resort_in_its_own_order() {
        let candidates = Candidates {
            env: None,
            pg_config: None,
            versioned: Vec::new(),
            path: paths(&["/home/me/bin", "/usr/local/bin", "/usr/bin"]),
        };
        let chosen = choose(&candidates, holding(&["/usr/bin", "/usr/local/bin"])).unwrap();
        assert_eq!(chosen, Path::new("/usr/local/bin"));
    }

    #[test]
    fn nothing_found_says_how_to_install() {
        let err = choose(&everything_but_env(), holding(&[])).unwrap_err();
        assert!(matches!(err, ClusterError::BinariesNotFound));
        let message = err.to_string();
        assert!(message.contains("apt-get install postgresql"), "{message}");
        assert!(message.contains("VIEWCAST_PG_BIN"), "{message}");
    }

    fn everything_but_env() -> Candidates {
        Candidates {
            env: None,
            ..everything()
        }
    }

    #[test]
    fn versions_sort_numerically_newest_first() {
        let names = ["9.6", "16", "main", "10", "15", "", "17beta1"].map(String::from);
        assert_eq!(newest_first(names), ["16", "15", "10", "9.6"]);
    }
}
