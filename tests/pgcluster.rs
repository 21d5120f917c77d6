//! The private Postgres cluster against the machine's real Postgres server binaries:
//! start, settings, restart, crash and recovery, and that nothing is left running or on disk.
//! Runs as root (CI does) or as a normal user alike.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use tokio_postgres::{Client, NoTls};
use viewcast::pgcluster::{ClusterError, ClusterOptions, PgCluster};

async fn connect(url: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connect to {url}"))?;
    tokio::spawn(connection);
    Ok(client)
}

async fn show(client: &Client, setting: &str) -> Result<String> {
    let row = client.query_one(&format!("SHOW {setting}"), &[]).await?;
    Ok(row.get(0))
}

/// The postmaster's pid as the server itself records it.
fn postmaster_pid(data_dir: &Path) -> Result<u32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid"))?;
    let first = text.lines().next().context("empty postmaster.pid")?;
    Ok(first.trim().parse()?)
}

fn alive(pid: u32) -> bool {
    // A zombie (dead, not yet reaped by its parent: for an orphan, whoever adopted it) is
    // not alive.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// Pids whose parent is `parent` (the postmaster's backends and auxiliary processes).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'.
            let after = &stat[stat.rfind(')')? + 1..];
            let parent_pid: u32 = after.split_whitespace().nth(1)?.parse().ok()?;
            (parent_pid == parent).then_some(pid)
        })
        .collect()
}

/// The server and the processes it started, to check that all of them are gone later.
fn process_tree(cluster: &PgCluster) -> Result<Vec<u32>> {
    let pid = postmaster_pid(cluster.data_dir())?;
    ensure!(
        cluster.pid() == Some(pid),
        "pid {:?} vs postmaster.pid {pid}",
        cluster.pid()
    );
    ensure!(alive(pid), "postmaster {pid} is not running");
    let mut tree = children_of(pid);
    // The checkpointer, walwriter and friends are up once the server accepts queries.
    ensure!(!tree.is_empty(), "postmaster {pid} has no children");
    tree.push(pid);
    Ok(tree)
}

fn assert_all_gone(pids: &[u32]) {
    let left: Vec<u32> = pids.iter().copied().filter(|pid| alive(*pid)).collect();
    assert!(left.is_empty(), "still running: {left:?} of {pids:?}");
}

/// A unique directory name below the temp directory, removed (with its contents) on drop.
struct TempPath(PathBuf);

impl TempPath {
    fn new(tag: &str) -> Self {
        Self(std::env::temp_dir().join(format!(
            "viewcast-test-{tag}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        )))
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn start_restart_stop_keeps_data_and_port_and_leaves_nothing() -> Result<()> {
    let mut cluster = PgCluster::start(ClusterOptions::default()).await?;
    let port = cluster.port();
    let data_dir = cluster.data_dir().to_path_buf();
    assert!(data_dir.join("PG_VERSION").is_file());

    cluster.create_database("app").await?;
    let url = cluster.url("app");
    assert_eq!(url, format!("postgres://postgres@127.0.0.1:{port}/app"));
    let client = connect(&url).await?;
    assert_eq!(show(&client, "wal_level").await?, "logical");
    assert_eq!(show(&client, "fsync").await?, "off");
    let slots: u32 = show(&client, "max_replication_slots").await?.parse()?;
    let senders: u32 = show(&client, "max_wal_senders").await?.parse()?;
    assert!(
        slots >= 20 && senders >= 20,
        "slots {slots}, senders {senders}"
    );
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, name text); INSERT INTO t VALUES (1, 'one')",
        )
        .await?;
    drop(client);

    let before = process_tree(&cluster)?;
    cluster.restart().await?;
    assert_all_gone(&before);
    assert_eq!(cluster.port(), port);
    assert_eq!(cluster.url("app"), url);
    let client = connect(&url).await?;
    let name: String = client
        .query_one("SELECT name FROM t WHERE id = 1", &[])
        .await?
        .get(0);
    assert_eq!(name, "one");
    drop(client);

    let tree = process_tree(&cluster)?;
    cluster.stop().await?;
    assert_all_gone(&tree);
    assert!(!data_dir.exists(), "{} was not removed", data_dir.display());
    Ok(())
}

#[tokio::test]
async fn drop_stops_the_server_and_removes_the_temp_dir() -> Result<()> {
    let (tree, data_dir) = {
        let cluster = PgCluster::start(ClusterOptions::default()).await?;
        let client = connect(&cluster.url("postgres")).await?;
        client.batch_execute("SELECT 1").await?;
        (process_tree(&cluster)?, cluster.data_dir().to_path_buf())
    };
    assert_all_gone(&tree);
    assert!(!data_dir.exists(), "{} was not removed", data_dir.display());
    Ok(())
}

#[tokio::test]
async fn kill_then_restart_recovers_committed_rows() -> Result<()> {
    let mut cluster = PgCluster::start(ClusterOptions::default()).await?;
    let client = connect(&cluster.url("postgres")).await?;
    client
        .batch_execute(
            "CREATE TABLE kept (n int); INSERT INTO kept SELECT generate_series(1, 1000)",
        )
        .await?;

    let tree = process_tree(&cluster)?;
    cluster.kill().await?;
    assert_all_gone(&tree);
    assert_eq!(cluster.pid(), None);
    // The open connection saw the server go away.
    assert!(client.batch_execute("SELECT 1").await.is_err());

    cluster.restart().await?;
    let client = connect(&cluster.url("postgres")).await?;
    let count: i64 = client
        .query_one("SELECT count(*) FROM kept", &[])
        .await?
        .get(0);
    assert_eq!(count, 1000);
    let log = std::fs::read_to_string(cluster.log_path())?;
    assert!(
        log.contains("was not properly shut down"),
        "no crash recovery in the log:\n{log}"
    );
    cluster.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_named_data_dir_is_initialised_once_reused_and_kept() -> Result<()> {
    let root = TempPath::new("named");
    let data_dir = root.0.join("data");
    let options = ClusterOptions {
        data_dir: Some(data_dir.clone()),
        settings: vec![("max_connections".to_owned(), "42".to_owned())],
        ..ClusterOptions::default()
    };

    let cluster = PgCluster::start(options.clone()).await?;
    assert_eq!(cluster.data_dir(), std::fs::canonicalize(&data_dir)?);
    let client = connect(&cluster.url("postgres")).await?;
    assert_eq!(show(&client, "max_connections").await?, "42");
    // A named directory may hold data worth keeping: fsync stays on unless asked otherwise.
    assert_eq!(show(&client, "fsync").await?, "on");
    client
        .batch_execute("CREATE TABLE survivor (n int)")
        .await?;
    drop(client);
    cluster.stop().await?;
    assert!(
        data_dir.join("PG_VERSION").is_file(),
        "named data dir was removed"
    );

    let cluster = PgCluster::start(options).await?;
    let client = connect(&cluster.url("postgres")).await?;
    let count: i64 = client
        .query_one("SELECT count(*) FROM survivor", &[])
        .await?
        .get(0);
    assert_eq!(count, 0);
    drop(client);
    cluster.stop().await?;
    assert!(
        data_dir.join("PG_VERSION").is_file(),
        "named data dir was removed"
    );
    Ok(())
}

#[tokio::test]
async fn a_bad_setting_fails_the_start_and_quotes_the_log() -> Result<()> {
    let options = ClusterOptions {
        settings: vec![("shared_buffers".to_owned(), "plenty".to_owned())],
        ..ClusterOptions::default()
    };
    let err = PgCluster::start(options)
        .await
        .expect_err("the server cannot start with shared_buffers=plenty");
    let message = err.to_string();
    assert!(message.contains("shared_buffers"), "{message}");
    assert!(message.contains("viewcast-postgres.log"), "{message}");
    let ClusterError::Exited { log, .. } = err else {
        panic!("expected an exit during startup: {message}");
    };
    // The failed start cleaned up after itself, log included.
    assert!(!log.exists(), "{} was left behind", log.display());
    Ok(())
}

/// `viewcast demo` killed with SIGKILL leaves its cluster running; the next cluster started on
/// the machine stops it and removes its directory (a cluster does not outlive its owner).
#[tokio::test]
async fn the_cluster_of_a_killed_demo_is_stopped_by_the_next_start() -> Result<()> {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_viewcast"))
        .args(["demo", "--port", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let owner = demo.id();
    // The banner says it runs.
    let stdout = demo.stdout.take().context("stdout")?;
    let running = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(std::result::Result::ok)
            .any(|line| line.contains("viewcast demo is running"))
    });
    ensure!(
        tokio::time::timeout(std::time::Duration::from_secs(60), running).await??,
        "the demo did not start"
    );
    let scratch: PathBuf = std::fs::read_dir(std::env::temp_dir())?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name().is_some_and(|n| {
                n.to_string_lossy()
                    .starts_with(&format!("viewcast-pg-{owner}-"))
            })
        })
        .context("the demo's cluster directory")?;
    let postmaster = postmaster_pid(&scratch.join("data"))?;
    demo.kill()?;
    demo.wait()?;
    ensure!(alive(postmaster), "the orphan runs until someone stops it");

    let next = PgCluster::start(ClusterOptions::default()).await?;
    ensure!(!alive(postmaster), "the orphaned server was stopped");
    ensure!(!scratch.exists(), "its directory was removed");
    next.stop().await?;
    Ok(())
}
