//! The `viewcast` binary as a process of its own, for tests that kill it (SIGKILL) or run
//! several: a scratch directory for its config and logs, and the process on a port it picks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{DEADLINE, TestDb};

/// A directory of the test's own under the system's temporary directory (the schema.yaml
/// and the binary's logs); kept when the test fails.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new() -> Scratch {
        let path =
            std::env::temp_dir().join(format!("viewcast-failover-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&path).expect("create a scratch directory");
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the server's logs are kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The `viewcast` binary serving against `db` on a port it picks; killed (SIGKILL) on drop.
pub struct Binary {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Binary {
    /// Starts `viewcast serve` (its log in `scratch/<name>.log`) and waits until it is ready.
    pub async fn start(db: &TestDb, scratch: &Scratch, config: &Path, name: &str) -> Binary {
        Binary::start_as(db, scratch, config, name, "failover").await
    }

    /// `start` with its own `--instance` name.
    pub async fn start_as(
        db: &TestDb,
        scratch: &Scratch,
        config: &Path,
        name: &str,
        instance: &str,
    ) -> Binary {
        let log_path = scratch.0.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).expect("create the log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_viewcast"));
        for (var, _) in std::env::vars() {
            if var.starts_with("VIEWCAST_") {
                command.env_remove(var);
            }
        }
        let config = config.to_str().expect("a UTF-8 path");
        let child = command
            .args([
                "serve",
                "--config",
                config,
                "--host",
                "127.0.0.1",
                "--port",
                "0",
            ])
            .args(["--instance", instance, "--apply-setup"])
            .args(["--webhook-allow-private", "--worker-allow-private"])
            .args(["--log-json", "--log", "info"])
            .env("DATABASE_URL", &db.url)
            .env_remove("MATERIALIZE_URL")
            .env_remove("RISINGWAVE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn viewcast");
        let mut binary = Binary {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        // The port it picked: its "viewcast listening" log line.
        let deadline = Instant::now() + DEADLINE;
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let listening = text
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .find(|line| line["fields"]["message"] == "viewcast listening")
                .and_then(|line| line["fields"]["addr"].as_str()?.parse().ok());
            if let Some(addr) = listening {
                binary.addr = addr;
                break;
            }
            if let Ok(Some(status)) = binary.child.try_wait() {
                panic!("viewcast exited ({status}) before listening:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "viewcast did not listen in time:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        super::wait_ready(binary.addr).await;
        binary
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        // SIGKILL: no shutdown of any kind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
