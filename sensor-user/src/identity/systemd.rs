//! User names for host processes, read from a passwd file.
//!
//! The daemon never calls NSS (`getpwuid`): NSS modules may load shared
//! libraries or ask a directory server, which is slow, blocks the event loop
//! and can differ between the host and the sensor's container. The file is
//! read from a configurable path so a DaemonSet reads the host's copy, and
//! it is read again when its modification time changes. Users that exist
//! only in a directory service (LDAP, SSSD) are therefore reported unknown.
//!
//! systemd units, slices and login sessions come from the cgroup path; see
//! [`super::cgroup`].

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use crate::idmap::IdMap;

/// Minimum time between two checks of the file's modification time, in
/// nanoseconds, so a burst of unknown uids costs one `stat`.
const RECHECK_INTERVAL_NS: u64 = 5_000_000_000;

/// Files larger than this are not read: a real passwd file of a host with
/// tens of thousands of local users is a few MiB.
const MAX_PASSWD_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    #[error("cannot read the passwd file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the passwd file {path} is {size} bytes, more than the {MAX_PASSWD_BYTES} read")]
    TooLarge { path: PathBuf, size: u64 },
}

/// Parses passwd lines (`name:password:uid:gid:gecos:home:shell`) into a
/// uid-to-name map. Malformed lines and NIS `+`/`-` entries are skipped, and
/// the first name wins when two share a uid, as `getpwuid` does with files.
pub fn parse_passwd(text: &str) -> IdMap<u32, Arc<str>> {
    let mut users = IdMap::default();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with('#') || line.starts_with('+') || line.starts_with('-') {
            continue;
        }
        let mut fields = line.split(':');
        let (Some(name), Some(_password), Some(uid)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let Ok(uid) = uid.parse::<u32>() else { continue };
        if !name.is_empty() {
            users.entry(uid).or_insert_with(|| Arc::from(name));
        }
    }
    users
}

/// Uid-to-name lookups from one passwd file, reloaded when it changes.
pub struct Users {
    path: PathBuf,
    names: IdMap<u32, Arc<str>>,
    modified: Option<SystemTime>,
    checked_ns: Option<u64>,
    /// The last load's error, for the `user` unknown reason.
    pub load_error: Option<String>,
}

impl Users {
    /// Loads `path`; a missing or unreadable file leaves every user unknown
    /// and is logged once.
    pub fn new(path: &Path) -> Users {
        let mut users = Users { path: path.to_owned(), names: IdMap::default(), modified: None, checked_ns: None, load_error: None };
        users.reload();
        users
    }

    fn reload(&mut self) {
        match read_bounded(&self.path) {
            Ok((text, modified)) => {
                self.names = parse_passwd(&text);
                self.modified = modified;
                self.load_error = None;
            }
            Err(error) => {
                log::warn!("user names will be unknown: {error}");
                self.load_error = Some(error.to_string());
            }
        }
    }

    /// Returns the name of `uid`, reloading the file first when the uid is
    /// unknown and the file changed since it was read.
    pub fn name(&mut self, uid: u32, now_ns: u64) -> Option<Arc<str>> {
        if let Some(name) = self.names.get(&uid) {
            return Some(name.clone());
        }
        let due = self.checked_ns.is_none_or(|at| now_ns.saturating_sub(at) >= RECHECK_INTERVAL_NS);
        if due {
            self.checked_ns = Some(now_ns);
            let modified = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
            if modified != self.modified || self.load_error.is_some() {
                self.reload();
            }
        }
        self.names.get(&uid).cloned()
    }
}

fn read_bounded(path: &Path) -> Result<(String, Option<SystemTime>), PasswdError> {
    let error = |source| PasswdError::Read { path: path.to_owned(), source };
    let metadata = std::fs::metadata(path).map_err(error)?;
    if metadata.len() > MAX_PASSWD_BYTES {
        return Err(PasswdError::TooLarge { path: path.to_owned(), size: metadata.len() });
    }
    let bytes = std::fs::read(path).map_err(error)?;
    Ok((String::from_utf8_lossy(&bytes).into_owned(), metadata.modified().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        # a comment\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        broken line\n\
        +nisuser::::::\n\
        alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash\n\
        alias:x:1000:1000::/home/alice:/bin/sh\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\r\n";

    #[test]
    fn passwd_parse() {
        let users = parse_passwd(PASSWD);
        assert_eq!(users.get(&0).map(|n| &**n), Some("root"));
        assert_eq!(users.get(&1000).map(|n| &**n), Some("alice"), "the first name for a uid wins");
        assert_eq!(users.get(&65534).map(|n| &**n), Some("nobody"));
        assert_eq!(users.len(), 4);
    }

    #[test]
    fn users_reload_on_change() {
        let dir = std::env::temp_dir().join(format!("agent-sensor-passwd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("passwd");
        std::fs::write(&path, "root:x:0:0::/root:/bin/sh\n").unwrap();
        let mut users = Users::new(&path);
        assert_eq!(users.name(0, 0).as_deref(), Some("root"));
        assert_eq!(users.name(4242, 1).as_deref(), None);

        std::fs::write(&path, "root:x:0:0::/root:/bin/sh\nbob:x:4242:4242::/home/bob:/bin/sh\n").unwrap();
        // Make the change visible even on file systems with coarse mtimes.
        let later = SystemTime::now() + std::time::Duration::from_secs(10);
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(later).unwrap();
        assert_eq!(users.name(4242, 2).as_deref(), None, "rechecked at most every few seconds");
        assert_eq!(users.name(4242, 2 + RECHECK_INTERVAL_NS).as_deref(), Some("bob"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn users_missing_file() {
        let mut users = Users::new(Path::new("/nonexistent/agent-sensor/passwd"));
        assert!(users.load_error.as_deref().is_some_and(|e| e.contains("/nonexistent/agent-sensor/passwd")));
        assert_eq!(users.name(0, 0), None);
    }
}
