//! Which OS user the server runs as.
//!
//! Postgres refuses to run as root. As a normal user we run `initdb` and `postgres` as
//! ourselves; as root we run them as the `postgres` OS user by setting the child's uid and gid
//! before `exec` (`CommandExt::uid`/`gid`, which also drops supplementary groups), and hand
//! that user the directories it writes. No `su`/`runuser` wrapper: the child we spawn *is*
//! the postmaster, so its pid is the one to signal and to wait for, and no PAM session or
//! intermediate shell can outlive or swallow a signal.

use std::os::unix::fs::{MetadataExt, chown};
use std::path::{Path, PathBuf};

use super::ClusterError;

/// The OS user the server must run as when we are root.
const OS_USER: &str = "postgres";

/// Ids to switch to before `exec`ing `initdb` and `postgres`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunAs {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// `None` when we are not root (run as ourselves), else the `postgres` user's ids.
pub(crate) fn decide() -> Result<Option<RunAs>, ClusterError> {
    if !rustix::process::geteuid().is_root() {
        return Ok(None);
    }
    let path = Path::new("/etc/passwd");
    let passwd = std::fs::read_to_string(path).map_err(|source| ClusterError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })?;
    lookup(&passwd, OS_USER)
        .map(Some)
        .ok_or(ClusterError::NoPostgresUser)
}

/// Finds `name` in `/etc/passwd` text. Users known only through NSS (LDAP, sssd) are not
/// seen; the `postgres` system user that the server packages create is always a local one.
pub(crate) fn lookup(passwd: &str, name: &str) -> Option<RunAs> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        Some(RunAs {
            uid: fields.next()?.parse().ok()?,
            gid: fields.next()?.parse().ok()?,
        })
    })
}

impl RunAs {
    pub(crate) fn apply(self, command: &mut tokio::process::Command) {
        command.uid(self.uid).gid(self.gid);
    }

    pub(crate) fn chown(self, path: &Path) -> Result<(), ClusterError> {
        chown(path, Some(self.uid), Some(self.gid)).map_err(|source| ClusterError::Io {
            action: "hand to the postgres os user",
            path: path.to_path_buf(),
            source,
        })
    }

    /// Fails early, with a hint, when a parent of `path` (absolute) cannot be entered by this
    /// user; otherwise `initdb` would fail later with a less helpful message.
    pub(crate) fn check_reachable(self, path: &Path) -> Result<(), ClusterError> {
        for dir in path.ancestors().skip(1) {
            let meta = std::fs::metadata(dir).map_err(|source| ClusterError::Io {
                action: "inspect",
                path: dir.to_path_buf(),
                source,
            })?;
            if !self.can_enter(meta.uid(), meta.gid(), meta.mode()) {
                return Err(ClusterError::Unreachable {
                    path: PathBuf::from(dir),
                });
            }
        }
        Ok(())
    }

    /// Only the primary group counts: supplementary groups are dropped at the switch.
    fn can_enter(self, owner: u32, group: u32, mode: u32) -> bool {
        (owner == self.uid && mode & 0o100 != 0)
            || (group == self.gid && mode & 0o010 != 0)
            || mode & 0o001 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        postgresql:x:7:7::/:/bin/false\n\
        postgres:x:101:104:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash\n";

    #[test]
    fn lookup_matches_the_whole_name() {
        assert_eq!(
            lookup(PASSWD, "postgres"),
            Some(RunAs { uid: 101, gid: 104 })
        );
        assert_eq!(lookup(PASSWD, "postgre"), None);
        assert_eq!(lookup("postgres:x:abc:1::/:/bin/sh", "postgres"), None);
    }

    #[test]
    fn can_enter_follows_owner_group_other_bits() {
        let pg = RunAs { uid: 101, gid: 104 };
        assert!(pg.can_enter(0, 0, 0o40755));
        assert!(!pg.can_enter(0, 0, 0o40700));
        assert!(pg.can_enter(101, 0, 0o40700));
        assert!(pg.can_enter(0, 104, 0o40750));
        assert!(!pg.can_enter(0, 104, 0o40700));
    }
}
