//! The policy in force in the daemon: loading at start, reloading on
//! SIGHUP and when the file's content changes, and the facts checks need
//! from the host (home directories).
//!
//! A reload that fails keeps the policy in force and is reported once per
//! distinct file content, so a bad file left in place does not write a
//! record every poll.

use std::{
    path::{Path, PathBuf},
};


use serde_json::{json, Value};

use super::{Loaded, Policy, PolicyConfig, PolicyError};
use crate::idmap::IdMap;
use crate::process::ProcKey;

/// Processes whose home directories are remembered; the cache is emptied
/// when it is full, which only costs rereading `/proc`.
const MAX_CACHED_HOMES: usize = 4096;

pub struct PolicyEngine {
    path: Option<PathBuf>,
    current: Option<Loaded>,
    /// sha256 of the file content last read, good or bad, or the error
    /// text when it could not be read: what a poll compares against.
    last_seen: Option<String>,
    procfs: PathBuf,
    passwd: PathBuf,
    homes: IdMap<ProcKey, Option<String>>,
    /// Home directories from the passwd file by uid, read once per uid
    /// and reread after a reload.
    user_homes: IdMap<u32, Option<String>>,
    empty: Policy,
}

impl PolicyEngine {
    /// Loads the configured policy. A missing or invalid file is an error:
    /// the daemon does not start with a policy other than the one asked for.
    pub fn start(config: &PolicyConfig, procfs: PathBuf, passwd: PathBuf) -> Result<Self, PolicyError> {
        let mut engine = PolicyEngine { path: config.path.clone(), current: None, last_seen: None, procfs, passwd, homes: IdMap::default(), user_homes: IdMap::default(), empty: Policy::default() };
        if let Some(path) = &config.path {
            let bytes = super::read(path)?;
            let loaded = super::from_bytes(path, &bytes)?;
            engine.last_seen = Some(loaded.sha256.clone());
            engine.current = Some(loaded);
        }
        Ok(engine)
    }

    /// sha256 of the policy in force, or `none`.
    pub fn sha256(&self) -> &str {
        self.current.as_ref().map_or("none", |c| c.sha256.as_str())
    }

    pub fn policy(&self) -> Option<&Policy> {
        self.current.as_ref().map(|c| &c.policy)
    }

    /// Returns the policy in force, or an empty one, for checks that run
    /// even without a policy (the shadow-agent inventory).
    pub fn policy_or_empty(&self) -> &Policy {
        self.policy().unwrap_or(&self.empty)
    }

    /// Builds the `policy_reload` section for the policy loaded at start.
    pub fn start_report(&self) -> Option<Value> {
        let (path, loaded) = (self.path.as_ref()?, self.current.as_ref()?);
        Some(json!({
            "trigger": "start",
            "path": path,
            "result": "loaded",
            "sha256": loaded.sha256,
            "previous_sha256": "none",
            "agents": loaded.policy.agents.len(),
            "rules": loaded.policy.rule_count(),
        }))
    }

    /// Rereads the file when its content differs from what was last read,
    /// and returns the `policy_reload` section to record, if any. With
    /// `force` (SIGHUP) the file is reloaded even when unchanged.
    pub fn reload(&mut self, trigger: &'static str, force: bool) -> Option<Value> {
        let path = self.path.clone()?;
        let previous = self.sha256().to_owned();
        let read = super::read(&path);
        let seen = match &read {
            Ok(bytes) => super::sha256_hex(bytes),
            Err(error) => error.to_string(),
        };
        if !force && self.last_seen.as_deref() == Some(seen.as_str()) {
            return None;
        }
        self.last_seen = Some(seen);
        self.user_homes.clear();
        let result = read.and_then(|bytes| super::from_bytes(&path, &bytes));
        match result {
            Ok(loaded) => {
                let section = json!({
                    "trigger": trigger,
                    "path": path,
                    "result": "loaded",
                    "sha256": loaded.sha256,
                    "previous_sha256": previous,
                    "agents": loaded.policy.agents.len(),
                    "rules": loaded.policy.rule_count(),
                });
                log::info!("policy {} loaded ({trigger}): sha256 {}", path.display(), loaded.sha256);
                self.current = Some(loaded);
                Some(section)
            }
            Err(error) => {
                let problems = error.problems();
                log::error!(
                    "policy {} rejected ({trigger}), keeping sha256 {previous}: {}",
                    path.display(),
                    problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
                );
                Some(json!({
                    "trigger": trigger,
                    "path": path,
                    "result": "rejected",
                    "sha256": error.sha256(),
                    "previous_sha256": previous,
                    "errors": problems,
                }))
            }
        }
    }

    /// Returns the directories `~` stands for in a process's checks: the
    /// `HOME` of the first of `keys` (the process, then its ancestors) whose
    /// environment can be read, and the home of `uid` in the passwd file.
    /// A short-lived tool is often gone when its file operations are
    /// checked, so its parent's environment is used in place of its own.
    pub fn homes(&mut self, keys: &[ProcKey], uid: Option<u32>) -> Vec<String> {
        let mut homes = Vec::new();
        for key in keys {
            if let Some(home) = self.home_of(*key) {
                homes.push(home);
                break;
            }
        }
        if let Some(uid) = uid {
            let passwd = &self.passwd;
            if let Some(home) = self.user_homes.entry(uid).or_insert_with(|| passwd_home(passwd, uid)) {
                homes.push(home.clone());
            }
        }
        homes
    }

    /// Reads and remembers a process's `HOME`, while it is alive.
    pub fn home_of(&mut self, key: ProcKey) -> Option<String> {
        if let Some(home) = self.homes.get(&key) {
            return home.clone();
        }
        let home = read_environ_home(&self.procfs, key.pid);
        if self.homes.len() >= MAX_CACHED_HOMES {
            self.homes.clear();
        }
        self.homes.insert(key, home.clone());
        home
    }

    /// Forgets a process that left the process table.
    pub fn forget(&mut self, key: &ProcKey) {
        self.homes.remove(key);
    }
}

/// Reads `HOME` from a process's environment.
///
/// NOTE: this is the environment the process was started with; a process
/// that changed `HOME` later is checked against its original one.
fn read_environ_home(procfs: &Path, pid: u32) -> Option<String> {
    let environ = std::fs::read(procfs.join(pid.to_string()).join("environ")).ok()?;
    environ
        .split(|&b| b == 0)
        .find_map(|entry| entry.strip_prefix(b"HOME="))
        .map(|home| String::from_utf8_lossy(home).into_owned())
        .filter(|home| home.starts_with('/'))
}

fn passwd_home(passwd: &Path, uid: u32) -> Option<String> {
    let text = std::fs::read_to_string(passwd).ok()?;
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 6 && fields[2].parse::<u32>().ok() == Some(uid)).then(|| fields[5].to_owned())
    })
}
