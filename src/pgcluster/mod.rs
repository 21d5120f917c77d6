//! A private Postgres cluster started from the machine's Postgres server binaries, for
//! `viewcast demo` and the integration tests.
//!
//! It owns one `postgres` child process (never daemonized), a scratch directory for the unix
//! socket (and the data, unless the caller names a data directory), and the server log, which
//! lives in the data directory and is quoted in start errors. It must never leave a server
//! running: `stop`, `kill` and `Drop` all wait for the postmaster to exit, and the postmaster
//! waits for its backends. It must never touch a cluster it did not start, nor delete a data
//! directory the caller named.
//!
//! Running as root: Postgres refuses to, so the server runs as the `postgres` OS user (see
//! `owner.rs`). Durability: `fsync` defaults to off for a throwaway temp directory (tests) and
//! on when the caller names a data directory (the demo, whose data may be kept);
//! [`ClusterOptions::fsync`] overrides either.

mod binaries;
mod error;
mod orphans;
mod owner;

use std::fs::{DirBuilder, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};
use tokio::process::{Child, Command};
use tokio_postgres::NoTls;
use tracing::{debug, info, warn};

pub use self::error::ClusterError;
use self::owner::RunAs;

/// Name of the server log inside the data directory (appended to across restarts).
const LOG_FILE: &str = "viewcast-postgres.log";
/// How many log lines a start error quotes.
const LOG_TAIL_LINES: usize = 30;
/// Start attempts when the chosen port turns out to be taken.
const PORT_ATTEMPTS: u32 = 5;
/// Bound on one readiness probe, so a server that accepts but never answers cannot stall.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const INITDB_TIMEOUT: Duration = Duration::from_secs(120);

/// How to start a cluster. `Default` gives a fresh temp directory on a free port.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Data directory to use. Created and initialised if missing or empty; reused as is if it
    /// already holds a cluster; never deleted. `None`: a fresh temp directory, deleted on stop.
    pub data_dir: Option<PathBuf>,
    /// Port on 127.0.0.1. `None`: a free one, re-chosen if it is taken before the server binds.
    pub port: Option<u16>,
    /// Extra server settings (`-c name=value`), overriding the defaults of the same name:
    /// `wal_level=logical`, `max_replication_slots=32`, `max_wal_senders=32`,
    /// `listen_addresses=127.0.0.1`, and the unix socket in a private directory. Set the port
    /// with [`ClusterOptions::port`], not here: [`PgCluster::url`] relies on it.
    pub settings: Vec<(String, String)>,
    /// `fsync` on or off. `None`: off for a temp directory (nothing to keep, much faster
    /// tests), on when `data_dir` is given (its data may be meant to survive a power cut).
    /// Either way a server crash (see [`PgCluster::kill`]) loses no committed data; only an OS
    /// crash can with `fsync` off.
    pub fsync: Option<bool>,
    /// Superuser created by `initdb`, authenticated by `trust` from 127.0.0.1 only.
    pub superuser: String,
    /// How long the server may take to accept connections.
    pub start_timeout: Duration,
    /// Serve TLS (`ssl = on`) with this certificate.
    pub tls: Option<ClusterTls>,
}

/// A server certificate for a cluster, and how strict the server is about TLS.
#[derive(Debug, Clone)]
pub struct ClusterTls {
    /// The server's certificate chain, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
    /// Only connections over TLS are accepted (`hostssl` in `pg_hba.conf`).
    pub required: bool,
    /// A CA (PEM) whose client certificates are required (`clientcert=verify-ca`).
    pub client_ca_pem: Option<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            data_dir: None,
            port: None,
            settings: Vec::new(),
            fsync: None,
            superuser: "postgres".to_owned(),
            start_timeout: Duration::from_secs(30),
            tls: None,
        }
    }
}

/// A running (or, after [`PgCluster::kill`], crashed) private Postgres server.
#[derive(Debug)]
pub struct PgCluster {
    bin_dir: PathBuf,
    /// Created by us; holds the socket directory and, unless the caller named one, the data.
    scratch_dir: PathBuf,
    scratch_removed: bool,
    data_dir: PathBuf,
    log_path: PathBuf,
    port: u16,
    superuser: String,
    /// Resolved `-c` settings, defaults first.
    settings: Vec<(String, String)>,
    /// The unix socket's directory (private to us and the server).
    socket_dir: PathBuf,
    run_as: Option<RunAs>,
    start_timeout: Duration,
    server: Option<Server>,
}

/// The postmaster we spawned. Signalling it by pid is race-free: we are its parent and have not
/// reaped it, so the pid cannot have been reused.
#[derive(Debug)]
struct Server {
    child: Child,
    pid: u32,
}

/// Postgres's shutdown modes, by the signal the postmaster understands for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shutdown {
    /// SIGINT: disconnect clients, checkpoint, exit.
    Fast,
    /// SIGQUIT: children quit at once, no checkpoint; the next start runs crash recovery.
    Immediate,
    /// SIGKILL: the last resort when the postmaster ignores the others.
    Kill,
}

impl Shutdown {
    fn signal(self) -> Signal {
        match self {
            Self::Fast => Signal::INT,
            Self::Immediate => Signal::QUIT,
            Self::Kill => Signal::KILL,
        }
    }

    fn timeout(self) -> Duration {
        match self {
            Self::Fast => Duration::from_secs(60),
            Self::Immediate => Duration::from_secs(10),
            Self::Kill => Duration::from_secs(5),
        }
    }

    fn next(self) -> Option<Self> {
        match self {
            Self::Fast => Some(Self::Immediate),
            Self::Immediate => Some(Self::Kill),
            Self::Kill => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Fast => "fast",
            Self::Immediate => "immediate",
            Self::Kill => "kill",
        }
    }
}

/// Why one start attempt failed: a taken port is retried, anything else is final.
enum Launch {
    AddressInUse,
    Failed(ClusterError),
}

impl From<ClusterError> for Launch {
    fn from(err: ClusterError) -> Self {
        Self::Failed(err)
    }
}

impl PgCluster {
    /// Finds the binaries, prepares the directories, runs `initdb` if needed, starts the server
    /// and waits until it answers a query.
    pub async fn start(options: ClusterOptions) -> Result<PgCluster, ClusterError> {
        // A cluster must not outlive its owner: stop those whose owner died without stopping
        // them.
        orphans::reap().await;
        let bin_dir = binaries::find().await?;
        let run_as = owner::decide()?;
        let port = options.port.map_or_else(free_port, Ok)?;
        let scratch_dir = create_scratch_dir(run_as)?;
        let fsync = options.fsync.unwrap_or(options.data_dir.is_some());
        let socket_dir = scratch_dir.join("sock");
        let mut cluster = PgCluster {
            bin_dir,
            data_dir: options
                .data_dir
                .clone()
                .unwrap_or_else(|| scratch_dir.join("data")),
            log_path: PathBuf::new(),
            scratch_dir,
            scratch_removed: false,
            port,
            superuser: options.superuser,
            settings: resolve_settings(&options.settings, &socket_dir, fsync),
            socket_dir: socket_dir.clone(),
            run_as,
            start_timeout: options.start_timeout,
            server: None,
        };
        // From here on an early return drops `cluster`, which removes the scratch directory.
        create_private_dir(&socket_dir, run_as)?;
        cluster.prepare_data_dir(fsync).await?;
        if let Some(tls) = &options.tls {
            cluster.serve_tls(tls)?;
        }
        cluster.launch(options.port.is_some()).await?;
        info!(
            port = cluster.port,
            data_dir = %cluster.data_dir.display(),
            pid = cluster.pid(),
            "postgresql cluster started"
        );
        Ok(cluster)
    }

    /// `postgres://<superuser>@127.0.0.1:<port>/<database>`; `database` is used as written.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{database}",
            self.superuser, self.port
        )
    }

    /// Our own connections (the readiness probe, `create_database`) go through the unix
    /// socket in our private directory: they work however strict the server is about TCP
    /// clients (TLS only, client certificates).
    fn socket_url(&self, database: &str) -> String {
        format!(
            "host={} port={} user={} dbname={database}",
            self.socket_dir.display(),
            self.port,
            self.superuser
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (absolute).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log, appended to by every start.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The postmaster's pid, or `None` after [`PgCluster::kill`].
    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().map(|server| server.pid)
    }

    /// Creates a database owned by the superuser.
    pub async fn create_database(&self, name: &str) -> Result<(), ClusterError> {
        let action = || format!("create database {name}");
        let (client, connection) = tokio_postgres::connect(&self.socket_url("postgres"), NoTls)
            .await
            .map_err(|source| ClusterError::Query {
                action: action(),
                source,
            })?;
        // Ends by itself when `client` is dropped below.
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {}", quote_ident(name)))
            .await
            .map_err(|source| ClusterError::Query {
                action: action(),
                source,
            })
    }

    /// Fast shutdown, wait for the exit, then delete the scratch directory (and with it the
    /// data, unless the caller named the data directory).
    pub async fn stop(mut self) -> Result<(), ClusterError> {
        let stopped = self.shutdown(Shutdown::Fast).await;
        let removed = self.remove_scratch().await;
        stopped.and(removed)
    }

    /// Stops the server (fast) if it runs, and starts it again on the same port and data
    /// directory. After [`PgCluster::kill`] this is a restart with crash recovery.
    pub async fn restart(&mut self) -> Result<(), ClusterError> {
        self.shutdown(Shutdown::Fast).await?;
        self.launch(true).await?;
        info!(
            port = self.port,
            pid = self.pid(),
            "postgresql cluster restarted"
        );
        Ok(())
    }

    /// Immediate shutdown, as after a crash: no checkpoint, the next start recovers from WAL.
    /// The directories stay; [`PgCluster::restart`] starts the server again.
    pub async fn kill(&mut self) -> Result<(), ClusterError> {
        self.shutdown(Shutdown::Immediate).await
    }

    async fn prepare_data_dir(&mut self, fsync: bool) -> Result<(), ClusterError> {
        if !self.data_dir.exists() {
            if let Some(run_as) = self.run_as {
                // Parents we are about to create stay root's, mode 0755: enterable.
                if let Some(parent) = self.data_dir.parent() {
                    std::fs::create_dir_all(parent).map_err(|source| ClusterError::Io {
                        action: "create",
                        path: parent.to_path_buf(),
                        source,
                    })?;
                }
                create_private_dir(&self.data_dir, Some(run_as))?;
            } else {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&self.data_dir)
                    .map_err(|source| ClusterError::Io {
                        action: "create",
                        path: self.data_dir.clone(),
                        source,
                    })?;
            }
        }
        self.data_dir =
            std::fs::canonicalize(&self.data_dir).map_err(|source| ClusterError::Io {
                action: "resolve",
                path: self.data_dir.clone(),
                source,
            })?;
        self.log_path = self.data_dir.join(LOG_FILE);
        if let Some(run_as) = self.run_as {
            run_as.check_reachable(&self.data_dir)?;
        }
        if self.data_dir.join("PG_VERSION").exists() {
            debug!(data_dir = %self.data_dir.display(), "reusing initialised data directory");
            return Ok(());
        }
        if let Some(run_as) = self.run_as {
            // An empty directory the caller made as root: initdb must be able to write it.
            run_as.chown(&self.data_dir)?;
        }
        self.initdb(fsync).await
    }

    /// Writes the certificate and key where only the server's user reads them, turns `ssl`
    /// on, and rewrites `pg_hba.conf` as `tls` asks.
    fn serve_tls(&mut self, tls: &ClusterTls) -> Result<(), ClusterError> {
        let dir = self.scratch_dir.join("tls");
        create_private_dir(&dir, self.run_as)?;
        let write = |name: &str, text: &str| -> Result<PathBuf, ClusterError> {
            let path = dir.join(name);
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .and_then(|mut file| std::io::Write::write_all(&mut file, text.as_bytes()))
                .map_err(|source| ClusterError::Io {
                    action: "write",
                    path: path.clone(),
                    source,
                })?;
            if let Some(run_as) = self.run_as {
                run_as.chown(&path)?;
            }
            Ok(path)
        };
        let mut settings = vec![
            ("ssl".to_owned(), "on".to_owned()),
            (
                "ssl_cert_file".to_owned(),
                write("server.crt", &tls.cert_pem)?.display().to_string(),
            ),
            (
                "ssl_key_file".to_owned(),
                write("server.key", &tls.key_pem)?.display().to_string(),
            ),
        ];
        let mut method = "trust".to_owned();
        if let Some(ca) = &tls.client_ca_pem {
            settings.push((
                "ssl_ca_file".to_owned(),
                write("client-ca.crt", ca)?.display().to_string(),
            ));
            method.push_str(" clientcert=verify-ca");
        }
        self.settings.extend(settings);
        if tls.required {
            let hba = self.data_dir.join("pg_hba.conf");
            let text = format!(
                "local all all trust\nlocal replication all trust\n\
                 hostssl all all 127.0.0.1/32 {method}\nhostssl replication all 127.0.0.1/32 {method}\n"
            );
            std::fs::write(&hba, text).map_err(|source| ClusterError::Io {
                action: "write",
                path: hba,
                source,
            })?;
        }
        Ok(())
    }

    async fn initdb(&self, fsync: bool) -> Result<(), ClusterError> {
        let program = self.bin_dir.join("initdb");
        let mut command = Command::new(&program);
        command
            .arg("-D")
            .arg(&self.data_dir)
            .arg("--auth=trust")
            .arg(format!("--username={}", self.superuser))
            .arg("--encoding=UTF8")
            .arg("--locale=C");
        if !fsync {
            command.arg("--no-sync");
        }
        self.prepare(&mut command, &self.scratch_dir);
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        command.kill_on_drop(true);
        let child = command.spawn().map_err(|source| ClusterError::Spawn {
            program: program.clone(),
            source,
        })?;
        let output = tokio::time::timeout(INITDB_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| ClusterError::InitdbTimeout {
                timeout: INITDB_TIMEOUT,
            })?
            .map_err(|source| ClusterError::Spawn { program, source })?;
        if output.status.success() {
            debug!(data_dir = %self.data_dir.display(), "initdb done");
            return Ok(());
        }
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Err(ClusterError::Initdb {
            status: output.status,
            output: last_lines(&text, LOG_TAIL_LINES),
        })
    }

    /// Working directory, environment and user shared by `initdb` and `postgres`.
    fn prepare(&self, command: &mut Command, working_dir: &Path) {
        // A working directory the server's user can enter (root's may not be), and C
        // messages so that "Address already in use" can be recognised in the log.
        command
            .current_dir(working_dir)
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        if let Some(run_as) = self.run_as {
            run_as.apply(command);
        }
    }

    /// Starts the server; with `fixed_port` a taken port is retried as is, else a new one is
    /// chosen.
    async fn launch(&mut self, fixed_port: bool) -> Result<(), ClusterError> {
        let mut backoff = Duration::from_millis(100);
        for attempt in 1..=PORT_ATTEMPTS {
            match self.spawn_once().await {
                Ok(server) => {
                    self.server = Some(server);
                    return Ok(());
                }
                Err(Launch::Failed(err)) => return Err(err),
                Err(Launch::AddressInUse) if attempt < PORT_ATTEMPTS => {
                    debug!(port = self.port, attempt, "port taken, retrying");
                    if fixed_port {
                        tokio::time::sleep(backoff).await;
                        backoff *= 2;
                    } else {
                        self.port = free_port()?;
                    }
                }
                Err(Launch::AddressInUse) => {}
            }
        }
        Err(ClusterError::AddressInUse { port: self.port })
    }

    async fn spawn_once(&self) -> Result<Server, Launch> {
        let log_io = |source| ClusterError::Io {
            action: "open the server log",
            path: self.log_path.clone(),
            source,
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(log_io)?;
        if let Some(run_as) = self.run_as {
            run_as.chown(&self.log_path)?;
        }
        let log_offset = log.metadata().map_err(log_io)?.len();
        let log_err = log.try_clone().map_err(log_io)?;

        let program = self.bin_dir.join("postgres");
        let mut command = Command::new(&program);
        command
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(self.port.to_string());
        for (name, value) in &self.settings {
            command.arg("-c").arg(format!("{name}={value}"));
        }
        self.prepare(&mut command, &self.data_dir);
        command.stdout(log).stderr(log_err);
        let child = command
            .spawn()
            .map_err(|source| ClusterError::Spawn { program, source })?;
        let pid = child.id().expect("a child that was not awaited has a pid");
        let mut server = Server { child, pid };
        match self.wait_ready(&mut server, log_offset).await {
            Ok(()) => Ok(server),
            Err(err) => {
                if let Err(stop_err) = server.terminate(Shutdown::Immediate).await {
                    warn!(pid, error = %stop_err, "could not stop a server that failed to start");
                }
                Err(err)
            }
        }
    }

    /// Waits until the server answers a query, it exits, or the start deadline passes.
    async fn wait_ready(&self, server: &mut Server, log_offset: u64) -> Result<(), Launch> {
        let deadline = Instant::now() + self.start_timeout;
        let url = format!("{} connect_timeout=2", self.socket_url("postgres"));
        let mut backoff = Duration::from_millis(20);
        let mut last_error = None;
        loop {
            if let Some(status) = server
                .child
                .try_wait()
                .map_err(|source| ClusterError::Wait {
                    pid: server.pid,
                    source,
                })?
            {
                let log_tail = self.log_since(log_offset);
                if log_tail.contains("Address already in use") {
                    return Err(Launch::AddressInUse);
                }
                return Err(Launch::Failed(ClusterError::Exited {
                    status,
                    log: self.log_path.clone(),
                    log_tail,
                }));
            }
            match tokio::time::timeout(PROBE_TIMEOUT, probe(&url)).await {
                Ok(Ok(data_dir)) if self.is_our_data_dir(&data_dir) => return Ok(()),
                // Another server answers on this port; ours will fail to bind.
                Ok(Ok(_)) => return Err(Launch::AddressInUse),
                Ok(Err(err)) => last_error = Some(err),
                Err(_elapsed) => {}
            }
            if Instant::now() >= deadline {
                return Err(Launch::Failed(ClusterError::NotReady {
                    timeout: self.start_timeout,
                    log: self.log_path.clone(),
                    log_tail: self.log_since(log_offset),
                    last_error,
                }));
            }
            // The back-off of this retry loop, not a synchronisation.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(250));
        }
    }

    fn is_our_data_dir(&self, reported: &str) -> bool {
        std::fs::canonicalize(reported).is_ok_and(|dir| dir == self.data_dir)
    }

    /// The last lines the server logged since `offset`; a note instead if the log is unreadable.
    fn log_since(&self, offset: u64) -> String {
        let read = || -> std::io::Result<String> {
            let mut file = std::fs::File::open(&self.log_path)?;
            file.seek(SeekFrom::Start(offset))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        };
        match read() {
            Ok(text) => last_lines(&text, LOG_TAIL_LINES),
            Err(err) => format!("(could not read the log: {err})"),
        }
    }

    async fn shutdown(&mut self, mode: Shutdown) -> Result<(), ClusterError> {
        let Some(mut server) = self.server.take() else {
            return Ok(());
        };
        server.terminate(mode).await?;
        info!(
            pid = server.pid,
            mode = mode.name(),
            "postgresql cluster stopped"
        );
        Ok(())
    }

    async fn remove_scratch(&mut self) -> Result<(), ClusterError> {
        if self.scratch_removed {
            return Ok(());
        }
        self.scratch_removed = true;
        tokio::fs::remove_dir_all(&self.scratch_dir)
            .await
            .map_err(|source| ClusterError::Io {
                action: "remove",
                path: self.scratch_dir.clone(),
                source,
            })
    }
}

impl Drop for PgCluster {
    /// Best effort, without a runtime: immediate shutdown (escalating to SIGKILL), then the
    /// scratch directory goes. Covers panics and forgotten `stop` calls.
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            debug!(
                pid = server.pid,
                "cluster dropped while running, immediate shutdown"
            );
            server.terminate_blocking();
        }
        if !self.scratch_removed {
            self.scratch_removed = true;
            if let Err(err) = std::fs::remove_dir_all(&self.scratch_dir) {
                warn!(path = %self.scratch_dir.display(), error = %err, "could not remove the cluster's scratch directory");
            }
        }
    }
}

impl Server {
    fn signal(&self, signal: Signal) -> Result<(), ClusterError> {
        let pid = i32::try_from(self.pid)
            .ok()
            .and_then(Pid::from_raw)
            .expect("child pids are positive i32");
        match rustix::process::kill_process(pid, signal) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(errno) => Err(ClusterError::Signal {
                pid: self.pid,
                source: errno.into(),
            }),
        }
    }

    /// Asks the postmaster to stop in `mode` and waits for it, escalating when it takes too
    /// long. Escalating still ends with the process gone, but reports `StopTimeout`.
    async fn terminate(&mut self, mode: Shutdown) -> Result<(), ClusterError> {
        let mut current = mode;
        loop {
            self.signal(current.signal())?;
            match tokio::time::timeout(current.timeout(), self.child.wait()).await {
                Ok(Ok(_status)) if current == mode => return Ok(()),
                Ok(Ok(_status)) => {
                    return Err(ClusterError::StopTimeout {
                        pid: self.pid,
                        mode: mode.name(),
                        timeout: mode.timeout(),
                    });
                }
                Ok(Err(source)) => {
                    return Err(ClusterError::Wait {
                        pid: self.pid,
                        source,
                    });
                }
                Err(_elapsed) => {
                    let Some(next) = current.next() else {
                        return Err(ClusterError::StopTimeout {
                            pid: self.pid,
                            mode: mode.name(),
                            timeout: mode.timeout(),
                        });
                    };
                    warn!(
                        pid = self.pid,
                        mode = current.name(),
                        "postgresql did not exit in time, escalating"
                    );
                    current = next;
                }
            }
        }
    }

    /// [`Server::terminate`] from `Immediate`, for `Drop`: polls for the exit with a deadline.
    fn terminate_blocking(&mut self) {
        let mut mode = Shutdown::Immediate;
        loop {
            if let Err(err) = self.signal(mode.signal()) {
                warn!(pid = self.pid, error = %err, "could not signal postgresql");
            }
            let deadline = Instant::now() + mode.timeout();
            let mut backoff = Duration::from_millis(5);
            loop {
                match self.child.try_wait() {
                    Ok(Some(_status)) => return,
                    Ok(None) => {}
                    Err(err) => {
                        warn!(pid = self.pid, error = %err, "could not wait for postgresql");
                        return;
                    }
                }
                if Instant::now() >= deadline {
                    break;
                }
                // Polling back-off: Drop cannot await the exit.
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(100));
            }
            let Some(next) = mode.next() else {
                warn!(pid = self.pid, "postgresql survived SIGKILL");
                return;
            };
            mode = next;
        }
    }
}

/// Connects and returns the server's `data_directory`, which tells our server from a stranger
/// that happens to listen on the port.
async fn probe(url: &str) -> Result<String, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    // Ends by itself when `client` is dropped at the end of this function.
    tokio::spawn(connection);
    let row = client
        .query_one("SELECT current_setting('data_directory')", &[])
        .await?;
    row.try_get(0)
}

/// Picks a port by binding 127.0.0.1:0; the listener closes before the server binds, so the
/// caller retries if someone else takes it in between.
fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(ClusterError::FreePort)?;
    Ok(listener
        .local_addr()
        .map_err(ClusterError::FreePort)?
        .port())
}

/// A new, uniquely named directory below the temp directory, mode 0700, owned by the server's
/// user. Short, because the unix socket path inside it must fit in 107 bytes.
fn create_scratch_dir(run_as: Option<RunAs>) -> Result<PathBuf, ClusterError> {
    let tmp = std::env::temp_dir();
    loop {
        let path = tmp.join(format!(
            "viewcast-pg-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        match DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {
                if let Some(run_as) = run_as
                    && let Err(err) = run_as
                        .chown(&path)
                        .and_then(|()| run_as.check_reachable(&path))
                {
                    let _ = std::fs::remove_dir(&path);
                    return Err(err);
                }
                return Ok(path);
            }
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(ClusterError::Io {
                    action: "create",
                    path,
                    source,
                });
            }
        }
    }
}

/// Creates `path` with mode 0700 and hands it to the server's user.
fn create_private_dir(path: &Path, run_as: Option<RunAs>) -> Result<(), ClusterError> {
    DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(|source| ClusterError::Io {
            action: "create",
            path: path.to_path_buf(),
            source,
        })?;
    match run_as {
        Some(run_as) => run_as.chown(path),
        None => Ok(()),
    }
}

/// The server's `-c` settings: our defaults, each overridden by a caller setting of the same
/// (case-insensitive) name, then the caller's other settings in their order.
fn resolve_settings(
    overrides: &[(String, String)],
    socket_dir: &Path,
    fsync: bool,
) -> Vec<(String, String)> {
    let defaults = [
        ("listen_addresses", "127.0.0.1".to_owned()),
        ("unix_socket_directories", socket_dir.display().to_string()),
        ("wal_level", "logical".to_owned()),
        ("max_replication_slots", "32".to_owned()),
        ("max_wal_senders", "32".to_owned()),
        ("fsync", if fsync { "on" } else { "off" }.to_owned()),
    ];
    let mut settings: Vec<(String, String)> = defaults
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
    for (name, value) in overrides {
        match settings
            .iter_mut()
            .find(|(known, _)| known.eq_ignore_ascii_case(name))
        {
            Some(slot) => slot.1.clone_from(value),
            None => settings.push((name.clone(), value.clone())),
        }
    }
    settings
}

/// The last `n` lines of `text`, trimmed.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `name` as a quoted SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting<'a>(settings: &'a [(String, String)], name: &str) -> Option<&'a str> {
        settings
            .iter()
            .find(|(known, _)| known == name)
            .map(|(_, value)| value.as_str())
    }

    #[test]
    fn defaults_are_logical_with_enough_slots() {
        let settings = resolve_settings(&[], Path::new("/tmp/x/sock"), false);
        assert_eq!(setting(&settings, "wal_level"), Some("logical"));
        assert_eq!(setting(&settings, "fsync"), Some("off"));
        assert_eq!(
            setting(&settings, "unix_socket_directories"),
            Some("/tmp/x/sock")
        );
        for name in ["max_replication_slots", "max_wal_senders"] {
            let value: u32 = setting(&settings, name).unwrap().parse().unwrap();
            assert!(value >= 20, "{name} = {value}");
        }
    }

    #[test]
    fn caller_settings_override_by_name_and_append_the_rest() {
        let overrides = [
            ("WAL_LEVEL".to_owned(), "replica".to_owned()),
            ("max_connections".to_owned(), "42".to_owned()),
        ];
        let settings = resolve_settings(&overrides, Path::new("/s"), true);
        assert_eq!(setting(&settings, "wal_level"), Some("replica"));
        assert_eq!(setting(&settings, "fsync"), Some("on"));
        assert_eq!(settings.last().unwrap(), &overrides[1]);
        assert_eq!(
            settings
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("wal_level"))
                .count(),
            1
        );
    }

    #[test]
    fn last_lines_keeps_the_end() {
        assert_eq!(last_lines("a\nb\nc\n\n", 2), "b\nc");
        assert_eq!(last_lines("a\n", 5), "a");
        assert_eq!(last_lines("", 5), "");
    }

    #[test]
    fn quote_ident_doubles_quotes() {
        assert_eq!(quote_ident("plain"), "\"plain\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }

    #[test]
    fn url_names_user_host_port_and_database() {
        let cluster = PgCluster {
            bin_dir: PathBuf::new(),
            scratch_dir: PathBuf::new(),
            // Nothing to remove: this value never started anything.
            scratch_removed: true,
            data_dir: PathBuf::new(),
            log_path: PathBuf::new(),
            port: 54321,
            superuser: "postgres".to_owned(),
            settings: Vec::new(),
            socket_dir: PathBuf::from("/tmp/x/sock"),
            run_as: None,
            start_timeout: Duration::from_secs(1),
            server: None,
        };
        assert_eq!(
            cluster.url("app"),
            "postgres://postgres@127.0.0.1:54321/app"
        );
        assert_eq!(
            cluster.socket_url("app"),
            "host=/tmp/x/sock port=54321 user=postgres dbname=app"
        );
        assert_eq!(cluster.pid(), None);
    }
}
