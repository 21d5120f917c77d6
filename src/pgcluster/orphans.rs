//! Clusters whose owner died without stopping them (`kill -9`, a crash, a power cut of the
//! owner alone): a cluster must not outlive its owner. Each cluster's scratch directory is
//! named for its owner's pid (`viewcast-pg-<pid>-<random>` in the temp directory), so the next
//! start of any cluster on the machine finds the ones whose owner is gone, stops their server
//! and removes their directory. A cluster whose owner lives, whose server cannot be confirmed
//! as the one of that directory, or whose directory cannot be read is left alone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};
use tracing::{info, warn};

/// Stops and removes the clusters of dead owners; returns how many.
pub(crate) async fn reap() -> usize {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return 0;
    };
    let mut reaped = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(owner) = owner_pid(&name.to_string_lossy()) else {
            continue;
        };
        if owner == std::process::id() || alive(owner) {
            continue;
        }
        let dir = entry.path();
        if stop_server(&dir.join("data")).await {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {
                    info!(path = %dir.display(), owner, "removed the cluster of a process that died without stopping it");
                    reaped += 1;
                }
                Err(err) => {
                    warn!(path = %dir.display(), error = %err, "cannot remove an orphaned cluster's directory");
                }
            }
        }
    }
    reaped
}

/// The owner's pid in a scratch directory's name (`viewcast-pg-<pid>-<8 hex digits>`).
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("viewcast-pg-")?;
    let (pid, random) = rest.split_once('-')?;
    (random.len() == 8 && random.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| pid.parse().ok())
        .flatten()
}

fn pid_of(pid: u32) -> Option<Pid> {
    i32::try_from(pid).ok().and_then(Pid::from_raw)
}

/// Whether a process with this pid runs (another user's counts; a zombie, dead but not yet
/// reaped by its parent, does not).
fn alive(pid: u32) -> bool {
    let exists = pid_of(pid).is_some_and(|pid| {
        !matches!(
            rustix::process::test_kill_process(pid),
            Err(rustix::io::Errno::SRCH)
        )
    });
    // /proc/<pid>/stat: "pid (comm) state …"; the command may hold spaces and parentheses.
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false);
    exists && !zombie
}

/// Stops the server of `data_dir` if one runs there; true once none does. The server is
/// confirmed by its `postmaster.pid` and by running in that very directory (its working
/// directory), so a pid reused by another process is never signalled.
async fn stop_server(data_dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(data_dir.join("postmaster.pid")) else {
        // No server ever started, or it stopped cleanly.
        return true;
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<u32>().ok())
    else {
        return true;
    };
    if !alive(pid) {
        return true;
    }
    let runs_here = std::fs::read_link(format!("/proc/{pid}/cwd"))
        .ok()
        .zip(std::fs::canonicalize(data_dir).ok())
        .is_some_and(|(cwd, dir): (PathBuf, PathBuf)| cwd == dir);
    if !runs_here {
        warn!(pid, data_dir = %data_dir.display(), "a process with the orphaned cluster's pid is not its server: left alone");
        return false;
    }
    let Some(target) = pid_of(pid) else {
        return false;
    };
    // Fast shutdown, then SIGKILL if it will not go.
    for (signal, wait) in [
        (Signal::INT, Duration::from_secs(20)),
        (Signal::KILL, Duration::from_secs(5)),
    ] {
        let _ = rustix::process::kill_process(target, signal);
        let deadline = Instant::now() + wait;
        while alive(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !alive(pid) {
            info!(pid, data_dir = %data_dir.display(), "stopped the server of an orphaned cluster");
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_scratch_directories_name_an_owner() {
        assert_eq!(owner_pid("viewcast-pg-1234-0a1b2c3d"), Some(1234));
        assert_eq!(owner_pid("viewcast-pg-1234-xyz"), None);
        assert_eq!(owner_pid("viewcast-pg-abc-0a1b2c3d"), None);
        assert_eq!(owner_pid("viewcast-certs-1"), None);
    }
}
