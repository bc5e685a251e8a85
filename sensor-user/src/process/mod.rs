//! Pipeline stage 2: exec, fork and exit events in, process identities out.
//!
//! The table is keyed by pid and the kernel's start time in nanoseconds, so
//! a recycled pid is a new key and never inherits the old process's
//! identity, even within one clock tick. Processes found by the start-up
//! scan only have a start time in clock ticks (`/proc/PID/stat`); a kernel
//! event whose start time falls in the same tick names the scanned process.
//!
//! Each exec gets an exec id built from the boot id, pid, start time and exec
//! time; a child that forked and has not exec'd gets its own id too, and its
//! parent's command line appears only as its ancestry.

pub mod exe;
pub mod procfs;

use std::{borrow::Cow, collections::HashMap, path::PathBuf, sync::Arc};

use serde::Serialize;

use crate::{
    config::ProcessConfig,
    idmap::IdMap,
    probes::decode::Exec,
    redact::{Field, Redaction, Redactor},
};
use exe::{ExeInfo, ExeResolver, KernelExe};

/// Identifies a process across pid reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcKey {
    pub pid: u32,
    /// Boot-time nanoseconds; whole ticks for processes found by the scan.
    pub start_ns: u64,
}

/// How the table learnt of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Seen at exec by the kernel programs.
    Exec,
    /// Seen at fork; runs its parent's image.
    Fork,
    /// Found running by the start-up scan of `/proc`.
    ProcfsScan,
    /// First seen in some other event; its fork and exec were not observed.
    Inferred,
}

#[derive(Debug, Clone)]
pub struct Process {
    pub key: ProcKey,
    pub ppid: u32,
    pub parent: Option<ProcKey>,
    pub exec_id: Arc<str>,
    pub parent_exec_id: Option<Arc<str>>,
    pub origin: Origin,
    pub ns_pid: Option<u32>,
    pub pid_ns: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub comm: String,
    pub exe: ExeInfo,
    /// The executable's file name from the kernel (`memfd:NAME` for a
    /// memfd), kept because it survives when the path cannot be resolved.
    pub exe_name: Option<String>,
    /// The path given to execve, which differs from `exe` for scripts and
    /// for `fexecve`-style calls (`/dev/fd/N`).
    pub exec_path: Option<String>,
    /// `None` for a forked child that has not exec'd, whose command line is
    /// its parent's.
    pub argv: Option<Arc<[String]>>,
    pub argv_truncated: bool,
    /// Bytes of the full command line in the process, when known.
    pub argv_bytes: Option<u32>,
    pub cgroup_id: Option<u64>,
    pub cgroup_path: Option<String>,
    pub fileless: bool,
    pub exited_ns: Option<u64>,
    /// Fields that could not be read, with the reason.
    pub unknown: Vec<(&'static str, String)>,
    /// Credentials replaced in `argv`, `exec_path` and `exe.path` when the
    /// process entered the table; the originals are kept nowhere.
    pub redactions: Vec<Redaction>,
}

pub struct ProcessTable {
    by_key: IdMap<ProcKey, Process>,
    /// Newest process per pid, for events that carry no start time.
    latest: IdMap<u32, ProcKey>,
    /// Whether the kernel copies argv at exec (its BTF offsets resolved).
    pub argv_capability: bool,
    /// Processes found by the start-up scan, by pid, whose start times are
    /// only known to the tick.
    scanned: IdMap<u32, ProcKey>,
    exe: ExeResolver,
    redactor: Redactor,
    config: ProcessConfig,
    boot_id: String,
    tick_ns: u64,
    procfs: PathBuf,
}

impl ProcessTable {
    pub fn new(config: ProcessConfig, boot_id: String, redactor: Redactor) -> Self {
        // SAFETY: sysconf has no preconditions.
        let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let tick_ns = if ticks_per_second > 0 { 1_000_000_000 / ticks_per_second as u64 } else { 10_000_000 };
        Self {
            by_key: IdMap::default(),
            latest: IdMap::default(),
            scanned: IdMap::default(),
            argv_capability: true,
            exe: ExeResolver::new(config.procfs_path.clone(), config.max_hash_bytes),
            redactor,
            procfs: config.procfs_path.clone(),
            config,
            boot_id,
            tick_ns,
        }
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Executable hashes cached, for metrics.
    pub fn exe_cache_len(&self) -> usize {
        self.exe.cached()
    }

    /// Returns the key of the process with `pid` that started at `start_ns`
    /// (from a kernel record): the scanned process of that pid and tick when
    /// the table has no exact entry.
    pub fn key(&self, pid: u32, start_ns: u64) -> ProcKey {
        let exact = ProcKey { pid, start_ns };
        if self.by_key.contains_key(&exact) {
            return exact;
        }
        match self.scanned.get(&pid) {
            Some(scanned) if scanned.start_ns / self.tick_ns == start_ns / self.tick_ns => *scanned,
            _ => exact,
        }
    }

    /// Start time in boot-time nanoseconds, at tick resolution.
    pub fn start_ns(&self, key: ProcKey) -> u64 {
        key.start_ns
    }

    fn make_exec_id(&self, key: ProcKey, exec_ns: u64) -> Arc<str> {
        format!("{}:{}:{}:{}", self.boot_id, key.pid, key.start_ns / self.tick_ns, exec_ns).into()
    }

    /// Adds the processes found running at start-up, parents first, and
    /// returns their keys in that order.
    /// Returns whether `pid` names a live process now, from procfs.
    pub fn is_running(&self, pid: u32) -> bool {
        procfs::is_running(&self.procfs, pid)
    }

    pub fn seed(&mut self, entries: Vec<procfs::ProcEntry>) -> Vec<ProcKey> {
        let tick_ns = self.tick_ns;
        let start_by_pid: HashMap<u32, u64> = entries.iter().map(|e| (e.pid, e.start_ticks * tick_ns)).collect();
        let mut keys = Vec::with_capacity(entries.len());
        for entry in entries {
            let key = ProcKey { pid: entry.pid, start_ns: entry.start_ticks * tick_ns };
            let parent = start_by_pid.get(&entry.ppid).map(|&start_ns| ProcKey { pid: entry.ppid, start_ns });
            let parent_exec_id = parent.and_then(|p| self.by_key.get(&p)).map(|p| p.exec_id.clone());
            let exe = self.exe.resolve_path(entry.pid, entry.exe.as_deref());
            let mut unknown = Vec::new();
            if entry.argv.is_empty() {
                unknown.push(("argv", "empty or unreadable /proc/PID/cmdline".to_owned()));
            }
            let process = Process {
                key,
                ppid: entry.ppid,
                parent,
                exec_id: self.make_exec_id(key, key.start_ns),
                parent_exec_id,
                origin: Origin::ProcfsScan,
                ns_pid: entry.ns_pids.last().copied(),
                pid_ns: entry.pid_ns,
                uid: entry.uid,
                gid: entry.gid,
                comm: entry.comm,
                exe,
                exe_name: None,
                exec_path: None,
                argv: Some(entry.argv.into()),
                argv_truncated: false,
                argv_bytes: None,
                cgroup_id: None,
                cgroup_path: entry.cgroup,
                fileless: false,
                exited_ns: None,
                unknown,
                redactions: Vec::new(),
            };
            self.insert(process);
            self.scanned.insert(key.pid, key);
            keys.push(key);
        }
        keys
    }

    /// Adds `process`, first replacing the credentials in its command line
    /// and paths. Every way into the table passes here, so no unredacted
    /// argv is ever stored.
    fn insert(&mut self, mut process: Process) {
        // A forked child's paths are its parent's, already redacted, and it
        // has no argv of its own.
        if process.origin != Origin::Fork {
            self.redact(&mut process);
        }
        let key = process.key;
        match self.latest.get(&key.pid) {
            Some(existing) if existing.start_ns > key.start_ns => {}
            _ => {
                self.latest.insert(key.pid, key);
            }
        }
        self.by_key.insert(key, process);
    }

    fn redact(&self, process: &mut Process) {
        let mut redactions = match process.argv.as_mut() {
            // The argv was built for this process, so its Arc is unique and
            // is redacted in place; `make_mut` copies only if it is shared.
            Some(argv) => self.redactor.redact_argv(Arc::make_mut(argv)),
            None => Vec::new(),
        };
        if let Some(path) = process.exec_path.as_mut() {
            if let Cow::Owned(redacted) = self.redactor.redact_text(path, Field::ExecPath, &mut redactions) {
                *path = redacted;
            }
        }
        if let Some(path) = process.exe.path.as_mut() {
            if let Cow::Owned(redacted) = self.redactor.redact_text(path, Field::Exe, &mut redactions) {
                *path = redacted;
            }
        }
        process.redactions = redactions;
    }

    pub fn get(&self, key: &ProcKey) -> Option<&Process> {
        self.by_key.get(key)
    }

    /// Records a new process created by fork. It runs its parent's image
    /// until it execs, so it inherits the executable but not the exec id.
    pub fn on_fork(&mut self, key: ProcKey, parent: ProcKey, time_ns: u64, cgroup_id: u64, pid_ns: Option<(u32, u32)>) -> ProcKey {
        let exec_id = self.make_exec_id(key, time_ns);
        let parent_process = self.lookup(parent);
        let mut unknown = Vec::new();
        if pid_ns.is_none() {
            unknown.push(("ns_pid", "pid namespace fields unreadable on this kernel".to_owned()));
        }
        let process = Process {
            key,
            ppid: parent.pid,
            parent: Some(parent),
            exec_id,
            parent_exec_id: Some(parent_process.exec_id.clone()),
            origin: Origin::Fork,
            // The child's own namespace: after clone(CLONE_NEWPID) it is
            // not the parent's.
            ns_pid: pid_ns.map(|(ns_pid, _)| ns_pid),
            pid_ns: pid_ns.map(|(_, inum)| inum),
            uid: parent_process.uid,
            gid: parent_process.gid,
            comm: parent_process.comm.clone(),
            exe: parent_process.exe.clone(),
            exe_name: parent_process.exe_name.clone(),
            exec_path: None,
            argv: None,
            argv_truncated: false,
            argv_bytes: None,
            cgroup_id: Some(cgroup_id),
            cgroup_path: parent_process.cgroup_path.clone(),
            fileless: parent_process.fileless,
            exited_ns: None,
            unknown,
            redactions: Vec::new(),
        };
        self.insert(process);
        key
    }

    /// Records an exec. The parent is the fork-time parent when the fork was
    /// seen, because a reparented process's current parent is only its
    /// reaper.
    pub fn on_exec(&mut self, exec: &Exec<'_>) -> ProcKey {
        let key = self.key(exec.header.pid, exec.header.start_time_ns);
        let (previous_parent, cgroup_path) = match self.by_key.get(&key) {
            Some(previous) => (previous.parent, previous.cgroup_path.clone()),
            None => (None, None),
        };
        let parent = previous_parent.or_else(|| (exec.ppid != 0).then(|| self.key(exec.ppid, exec.parent_start_time_ns)));
        let parent_exec_id = parent.map(|p| self.lookup(p).exec_id.clone());

        let flags = exec.header.flags;
        let mut unknown = Vec::new();
        let filename_cut = flags & sensor_common::EXEC_FLAG_FILENAME_TRUNCATED != 0;
        let exec_path = (!exec.filename.is_empty()).then(|| String::from_utf8_lossy(exec.filename).into_owned());
        if filename_cut {
            unknown.push((
                "exec_path",
                format!("the exec path is longer than {} bytes; only its start is shown", sensor_common::FILENAME_CAPACITY - 1),
            ));
        }
        let kernel_path = (flags & sensor_common::EXEC_FLAG_EXE_PATH != 0)
            .then(|| crate::probes::decode::join_exe_path(exec.exe_path))
            .flatten();
        let kernel_exe = KernelExe { inode: exec.exe_inode, dev: exec.exe_dev, meta: exec.exe_meta };
        // A cut exec path names some other file, so it is not a candidate.
        let candidate = exec_path.as_deref().filter(|_| !filename_cut);
        let exe = self.exe.resolve(exec.header.pid, kernel_exe, kernel_path.as_deref(), candidate);
        let fileless = flags & sensor_common::EXEC_FLAG_EXE_UNLINKED != 0;
        let exe_name = (!exec.exe_name.is_empty()).then(|| String::from_utf8_lossy(exec.exe_name).into_owned());

        let argv_unreadable = flags & sensor_common::EXEC_FLAG_ARGV_UNREADABLE != 0;
        if argv_unreadable {
            let reason = if exec.argv_total_len == 0 && !self.argv_capability {
                "argv capture is off: this kernel's BTF lacks the mm_struct fields (see sensor.degraded)"
            } else {
                "the kernel could not read the new image's argument area"
            };
            unknown.push(("argv", reason.to_owned()));
        }
        let no_pidns = exec.header.flags & sensor_common::EXEC_FLAG_NO_PIDNS != 0;
        if no_pidns {
            unknown.push(("ns_pid", "pid namespace fields unreadable on this kernel".to_owned()));
        }
        let process = Process {
            key,
            ppid: exec.ppid,
            parent,
            exec_id: self.make_exec_id(key, exec.header.time_ns),
            parent_exec_id,
            origin: Origin::Exec,
            ns_pid: (!no_pidns).then_some(exec.ns_pid),
            pid_ns: (!no_pidns).then_some(exec.pid_ns_inum),
            uid: Some(exec.uid),
            gid: Some(exec.gid),
            comm: String::from_utf8_lossy(exec.comm).into_owned(),
            exe,
            exe_name,
            exec_path,
            argv: (!argv_unreadable).then(|| procfs::split_argv(exec.argv).into()),
            argv_truncated: flags & sensor_common::EXEC_FLAG_ARGV_TRUNCATED != 0,
            argv_bytes: (!argv_unreadable).then_some(exec.argv_total_len),
            cgroup_id: Some(exec.cgroup_id),
            cgroup_path,
            fileless,
            exited_ns: None,
            unknown,
            redactions: Vec::new(),
        };
        self.insert(process);
        key
    }

    /// Marks a process exited. The entry stays for
    /// `process.exited_retention_secs` because records about it (a late
    /// connect outcome, a child's exec naming it as parent) can still arrive.
    pub fn on_exit(&mut self, key: ProcKey, time_ns: u64) {
        self.lookup(key);
        if let Some(process) = self.by_key.get_mut(&key) {
            process.exited_ns = Some(time_ns);
        }
    }

    /// Returns the process for `key`, creating an inferred entry when its
    /// fork and exec were not seen (events lost, or a race with the scan).
    pub fn lookup(&mut self, key: ProcKey) -> &Process {
        if !self.by_key.contains_key(&key) {
            let process = self.infer(key);
            self.insert(process);
        }
        &self.by_key[&key]
    }

    fn infer(&mut self, key: ProcKey) -> Process {
        let live = procfs::read_process(&self.procfs, key.pid)
            .ok()
            .flatten()
            .filter(|entry| entry.start_ticks == key.start_ns / self.tick_ns);
        let mut unknown = Vec::new();
        let (ppid, comm, argv, uid, gid, exe, cgroup_path) = match live {
            Some(entry) => {
                unknown.push(("lineage", "fork and exec not observed; read from /proc later".to_owned()));
                let exe = self.exe.resolve_path(key.pid, entry.exe.as_deref());
                (entry.ppid, entry.comm, Some(entry.argv.into()), entry.uid, entry.gid, exe, entry.cgroup)
            }
            None => {
                unknown.push(("lineage", "fork and exec not observed, and the process is gone".to_owned()));
                let exe = ExeInfo { path_unknown: Some("process not observed".to_owned()), ..Default::default() };
                (0, String::new(), None, None, None, exe, None)
            }
        };
        let parent = self.latest.get(&ppid).copied();
        Process {
            key,
            ppid,
            parent,
            exec_id: self.make_exec_id(key, key.start_ns),
            parent_exec_id: parent.and_then(|p| self.by_key.get(&p)).map(|p| p.exec_id.clone()),
            origin: Origin::Inferred,
            ns_pid: None,
            pid_ns: None,
            uid,
            gid,
            comm,
            exe,
            exe_name: None,
            exec_path: None,
            argv,
            argv_truncated: false,
            argv_bytes: None,
            cgroup_id: None,
            cgroup_path,
            fileless: false,
            exited_ns: None,
            unknown,
            redactions: Vec::new(),
        }
    }

    /// Exec ids of the ancestors, nearest first, bounded by `max_ancestry`.
    pub fn ancestry(&self, key: ProcKey) -> Vec<Arc<str>> {
        let mut chain = Vec::new();
        let mut current = self.by_key.get(&key).and_then(|p| p.parent);
        while let Some(parent_key) = current {
            if chain.len() >= self.config.max_ancestry {
                break;
            }
            let Some(parent) = self.by_key.get(&parent_key) else { break };
            chain.push(parent.exec_id.clone());
            current = parent.parent;
        }
        chain
    }

    /// Drops exited processes past their retention, then the oldest exited
    /// ones while the table is over its bound. Live processes are never
    /// dropped, so the bound can be exceeded by a host with more of them.
    pub fn collect_garbage(&mut self, now_ns: u64) -> Vec<ProcKey> {
        let retention_ns = self.config.exited_retention_secs.saturating_mul(1_000_000_000);
        let mut removed: Vec<ProcKey> = self
            .by_key
            .values()
            .filter(|p| p.exited_ns.is_some_and(|t| now_ns.saturating_sub(t) >= retention_ns))
            .map(|p| p.key)
            .collect();
        for key in &removed {
            self.by_key.remove(key);
        }
        if self.by_key.len() > self.config.max_processes {
            let mut exited: Vec<(u64, ProcKey)> =
                self.by_key.values().filter_map(|p| p.exited_ns.map(|t| (t, p.key))).collect();
            exited.sort_unstable();
            let excess = self.by_key.len() - self.config.max_processes;
            for (_, key) in exited.into_iter().take(excess) {
                self.by_key.remove(&key);
                removed.push(key);
            }
        }
        let by_key = &self.by_key;
        self.latest.retain(|_, key| by_key.contains_key(key));
        self.scanned.retain(|_, key| by_key.contains_key(key));
        removed
    }

    /// Returns the newest process with `pid`, if the table has one.
    pub fn latest(&self, pid: u32) -> Option<ProcKey> {
        self.latest.get(&pid).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nanoseconds per clock tick at the usual USER_HZ of 100.
    const TICK: u64 = 10_000_000;

    fn table() -> ProcessTable {
        let config = ProcessConfig { procfs_path: PathBuf::from("/nonexistent-procfs"), ..Default::default() };
        ProcessTable::new(config, "boot".to_owned(), Redactor::new(&[0; 32]))
    }

    fn entry(pid: u32, ppid: u32, start_ticks: u64, argv: &[&str]) -> procfs::ProcEntry {
        procfs::ProcEntry {
            pid,
            ppid,
            start_ticks,
            argv: argv.iter().map(|s| s.to_string()).collect(),
            comm: argv[0].to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn seeded_lineage() {
        let mut table = table();
        table.seed(vec![entry(1, 0, 1, &["init"]), entry(50, 1, 10, &["bash"]), entry(60, 50, 20, &["python3"])]);
        let python = ProcKey { pid: 60, start_ns: 20 * TICK };
        let bash = table.get(&ProcKey { pid: 50, start_ns: 10 * TICK }).unwrap().exec_id.clone();
        assert_eq!(table.get(&python).unwrap().parent_exec_id.as_deref(), Some(&*bash));
        assert_eq!(table.ancestry(python).len(), 2);
    }

    #[test]
    fn fork_child_has_own_id_and_no_argv() {
        let mut table = table();
        table.seed(vec![entry(50, 1, 10, &["bash"])]);
        let parent = ProcKey { pid: 50, start_ns: 10 * TICK };
        let child = table.on_fork(ProcKey { pid: 51, start_ns: 11 * TICK }, parent, 110_000_000, 0, Some((51, 1)));
        let child = table.get(&child).unwrap();
        assert_eq!(child.origin, Origin::Fork);
        assert!(child.argv.is_none());
        assert_ne!(child.exec_id, table.get(&parent).unwrap().exec_id);
        assert_eq!(child.parent_exec_id, Some(table.get(&parent).unwrap().exec_id.clone()));
    }

    #[test]
    fn pid_reuse_gets_new_identity() {
        let mut table = table();
        table.seed(vec![entry(70, 1, 10, &["old"])]);
        let old = ProcKey { pid: 70, start_ns: 10 * TICK };
        table.on_exit(old, 1);
        let new = table.lookup(ProcKey { pid: 70, start_ns: 99 * TICK }).clone();
        assert_eq!(new.origin, Origin::Inferred);
        assert_ne!(new.exec_id, table.get(&old).unwrap().exec_id);
        assert!(new.argv.is_none(), "the old process's argv must not leak into the new one");
    }

    #[test]
    fn exited_processes_expire() {
        let mut table = table();
        table.seed(vec![entry(70, 1, 10, &["a"]), entry(71, 1, 10, &["b"])]);
        table.on_exit(ProcKey { pid: 70, start_ns: 10 * TICK }, 1_000);
        assert_eq!(table.collect_garbage(1_000 + 59_000_000_000), vec![]);
        assert_eq!(table.collect_garbage(1_000 + 61_000_000_000), vec![ProcKey { pid: 70, start_ns: 10 * TICK }]);
        assert!(table.get(&ProcKey { pid: 71, start_ns: 10 * TICK }).is_some());
    }
}
