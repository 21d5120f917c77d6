//! Errors of the private Postgres cluster.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Why a private cluster could not be found, started, queried or stopped.
///
/// Every variant is the user's to act on (missing binaries, missing OS user, a port or
/// directory problem) except `Wait`/`Signal`, which mean the OS refused something it should
/// not have. Server output, where there is some, is part of the message because it is the only
/// place the real cause is written.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "postgresql server binaries not found; install them (Debian/Ubuntu: `apt-get install postgresql`) or set VIEWCAST_PG_BIN to the directory holding initdb and postgres"
    )]
    BinariesNotFound,

    #[error(
        "VIEWCAST_PG_BIN={} does not hold both initdb and postgres; point it at the directory of the postgresql server binaries (e.g. /usr/lib/postgresql/16/bin) or unset it",
        dir.display()
    )]
    BadBinDir { dir: PathBuf },

    #[error(
        "running as root but there is no `postgres` os user; postgresql refuses to run as root, so create that user (Debian/Ubuntu: `apt-get install postgresql` does) or run as a normal user"
    )]
    NoPostgresUser,

    #[error(
        "the `postgres` os user cannot enter {}; pick a data directory (or TMPDIR) below directories that user can reach, e.g. /tmp",
        path.display()
    )]
    Unreachable { path: PathBuf },

    #[error("could not {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("could not find a free port on 127.0.0.1")]
    FreePort(#[source] io::Error),

    #[error("could not run {}", program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("initdb did not finish within {}s", timeout.as_secs())]
    InitdbTimeout { timeout: Duration },

    #[error("initdb failed ({status}):\n{output}")]
    Initdb { status: ExitStatus, output: String },

    #[error("port {port} on 127.0.0.1 is already in use")]
    AddressInUse { port: u16 },

    #[error("postgresql exited during startup ({status}); last lines of {}:\n{log_tail}", log.display())]
    Exited {
        status: ExitStatus,
        log: PathBuf,
        log_tail: String,
    },

    #[error(
        "postgresql did not accept connections within {}s; last lines of {}:\n{log_tail}",
        timeout.as_secs(),
        log.display()
    )]
    NotReady {
        timeout: Duration,
        log: PathBuf,
        log_tail: String,
        #[source]
        last_error: Option<tokio_postgres::Error>,
    },

    #[error("postgresql (pid {pid}) did not exit within {}s of a {mode} shutdown and had to be forced", timeout.as_secs())]
    StopTimeout {
        pid: u32,
        mode: &'static str,
        timeout: Duration,
    },

    #[error("could not signal postgresql (pid {pid})")]
    Signal {
        pid: u32,
        #[source]
        source: io::Error,
    },

    #[error("could not wait for postgresql (pid {pid}) to exit")]
    Wait {
        pid: u32,
        #[source]
        source: io::Error,
    },

    #[error("could not {action}")]
    Query {
        action: String,
        #[source]
        source: tokio_postgres::Error,
    },
}
