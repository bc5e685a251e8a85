//! Pipeline stage 2: exec, fork and exit events in, process identities out.
//!
//! The table is keyed by pid and start time, so a recycled pid is a new key
//! and never inherits the old process's identity. Start times are compared
//! in clock ticks, the resolution `/proc/PID/stat` offers, so kernel events
//! and the start-up scan name the same process the same way.
//!
//! Each exec gets an exec id built from the boot id, pid, start time and exec
//! time; a child that forked and has not exec'd gets its own id too, and its
//! parent's command line appears only as its ancestry.

pub mod exe;
pub mod procfs;

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use serde::Serialize;

use crate::{config::ProcessConfig, probes::decode::Exec};
use exe::{ExeInfo, ExeResolver, KernelExe};

/// Identifies a process across pid reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcKey {
    pub pid: u32,
    pub start_ticks: u64,
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
    pub exec_time_ns: Option<u64>,
    pub ns_pid: Option<u32>,
    pub pid_ns: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub comm: String,
    pub exe: ExeInfo,
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
}

pub struct ProcessTable {
    by_key: HashMap<ProcKey, Process>,
    /// Newest process per pid, for events that carry no start time.
    latest: HashMap<u32, ProcKey>,
    exe: ExeResolver,
    config: ProcessConfig,
    boot_id: String,
    tick_ns: u64,
    procfs: PathBuf,
}

impl ProcessTable {
    pub fn new(config: ProcessConfig, boot_id: String) -> Self {
        // SAFETY: sysconf has no preconditions.
        let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let tick_ns = if ticks_per_second > 0 { 1_000_000_000 / ticks_per_second as u64 } else { 10_000_000 };
        Self {
            by_key: HashMap::new(),
            latest: HashMap::new(),
            exe: ExeResolver::new(config.procfs_path.clone(), config.max_hash_bytes),
            procfs: config.procfs_path.clone(),
            config,
            boot_id,
            tick_ns,
        }
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn key(&self, pid: u32, start_ns: u64) -> ProcKey {
        ProcKey { pid, start_ticks: start_ns / self.tick_ns }
    }

    /// Start time in boot-time nanoseconds, at tick resolution.
    pub fn start_ns(&self, key: ProcKey) -> u64 {
        key.start_ticks * self.tick_ns
    }

    fn make_exec_id(&self, key: ProcKey, exec_ns: u64) -> Arc<str> {
        format!("{}:{}:{}:{}", self.boot_id, key.pid, key.start_ticks, exec_ns).into()
    }

    /// Adds the processes found running at start-up, parents first, and
    /// returns their keys in that order.
    pub fn seed(&mut self, entries: Vec<procfs::ProcEntry>) -> Vec<ProcKey> {
        let start_by_pid: HashMap<u32, u64> = entries.iter().map(|e| (e.pid, e.start_ticks)).collect();
        let mut keys = Vec::with_capacity(entries.len());
        for entry in entries {
            let key = ProcKey { pid: entry.pid, start_ticks: entry.start_ticks };
            let parent = start_by_pid.get(&entry.ppid).map(|&start_ticks| ProcKey { pid: entry.ppid, start_ticks });
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
                exec_id: self.make_exec_id(key, entry.start_ticks * self.tick_ns),
                parent_exec_id,
                origin: Origin::ProcfsScan,
                exec_time_ns: None,
                ns_pid: entry.ns_pids.last().copied(),
                pid_ns: None,
                uid: entry.uid,
                gid: entry.gid,
                comm: entry.comm,
                exe,
                exec_path: None,
                argv: Some(entry.argv.into()),
                argv_truncated: false,
                argv_bytes: None,
                cgroup_id: None,
                cgroup_path: entry.cgroup,
                fileless: false,
                exited_ns: None,
                unknown,
            };
            self.insert(process);
            keys.push(key);
        }
        keys
    }

    fn insert(&mut self, process: Process) {
        let key = process.key;
        match self.latest.get(&key.pid) {
            Some(existing) if existing.start_ticks > key.start_ticks => {}
            _ => {
                self.latest.insert(key.pid, key);
            }
        }
        self.by_key.insert(key, process);
    }

    pub fn get(&self, key: &ProcKey) -> Option<&Process> {
        self.by_key.get(key)
    }

    /// Records a new process created by fork. It runs its parent's image
    /// until it execs, so it inherits the executable but not the exec id.
    pub fn on_fork(&mut self, key: ProcKey, parent: ProcKey, time_ns: u64, cgroup_id: u64) -> ProcKey {
        let exec_id = self.make_exec_id(key, time_ns);
        let parent_process = self.lookup(parent);
        let process = Process {
            key,
            ppid: parent.pid,
            parent: Some(parent),
            exec_id,
            parent_exec_id: Some(parent_process.exec_id.clone()),
            origin: Origin::Fork,
            exec_time_ns: None,
            ns_pid: None,
            pid_ns: parent_process.pid_ns,
            uid: parent_process.uid,
            gid: parent_process.gid,
            comm: parent_process.comm.clone(),
            exe: parent_process.exe.clone(),
            exec_path: None,
            argv: None,
            argv_truncated: false,
            argv_bytes: None,
            cgroup_id: Some(cgroup_id),
            cgroup_path: parent_process.cgroup_path.clone(),
            fileless: parent_process.fileless,
            exited_ns: None,
            unknown: Vec::new(),
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

        let exec_path = (!exec.filename.is_empty()).then(|| String::from_utf8_lossy(exec.filename).into_owned());
        let kernel_exe = KernelExe { inode: exec.exe_inode, dev: exec.exe_dev };
        let mut exe = self.exe.resolve(exec.header.pid, kernel_exe, exec_path.as_deref());
        let fileless = exec.header.flags & sensor_common::EXEC_FLAG_EXE_UNLINKED != 0;
        if exe.path.is_none() && !exec.exe_name.is_empty() {
            // The dentry name still tells a memfd (`memfd:NAME`) or a
            // deleted file's last name.
            exe.path = Some(format!("{} (path unknown)", String::from_utf8_lossy(exec.exe_name)));
        }

        let mut unknown = Vec::new();
        let argv_unreadable = exec.header.flags & sensor_common::EXEC_FLAG_ARGV_UNREADABLE != 0;
        if argv_unreadable {
            unknown.push(("argv", "the kernel could not read the new image's argument area".to_owned()));
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
            exec_time_ns: Some(exec.header.time_ns),
            ns_pid: (!no_pidns).then_some(exec.ns_pid),
            pid_ns: (!no_pidns).then_some(exec.pid_ns_inum),
            uid: Some(exec.uid),
            gid: Some(exec.gid),
            comm: String::from_utf8_lossy(exec.comm).into_owned(),
            exe,
            exec_path,
            argv: (!argv_unreadable).then(|| procfs::split_argv(exec.argv).into()),
            argv_truncated: exec.header.flags & sensor_common::EXEC_FLAG_ARGV_TRUNCATED != 0,
            argv_bytes: Some(exec.argv_total_len),
            cgroup_id: Some(exec.cgroup_id),
            cgroup_path,
            fileless,
            exited_ns: None,
            unknown,
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
            .filter(|entry| entry.start_ticks == key.start_ticks);
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
            exec_id: self.make_exec_id(key, key.start_ticks * self.tick_ns),
            parent_exec_id: parent.and_then(|p| self.by_key.get(&p)).map(|p| p.exec_id.clone()),
            origin: Origin::Inferred,
            exec_time_ns: None,
            ns_pid: None,
            pid_ns: None,
            uid,
            gid,
            comm,
            exe,
            exec_path: None,
            argv,
            argv_truncated: false,
            argv_bytes: None,
            cgroup_id: None,
            cgroup_path,
            fileless: false,
            exited_ns: None,
            unknown,
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

    fn table() -> ProcessTable {
        let config = ProcessConfig { procfs_path: PathBuf::from("/nonexistent-procfs"), ..Default::default() };
        ProcessTable::new(config, "boot".to_owned())
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
        let python = ProcKey { pid: 60, start_ticks: 20 };
        let bash = table.get(&ProcKey { pid: 50, start_ticks: 10 }).unwrap().exec_id.clone();
        assert_eq!(table.get(&python).unwrap().parent_exec_id.as_deref(), Some(&*bash));
        assert_eq!(table.ancestry(python).len(), 2);
    }

    #[test]
    fn fork_child_has_own_id_and_no_argv() {
        let mut table = table();
        table.seed(vec![entry(50, 1, 10, &["bash"])]);
        let parent = ProcKey { pid: 50, start_ticks: 10 };
        let child = table.on_fork(ProcKey { pid: 51, start_ticks: 11 }, parent, 110_000_000, 0);
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
        let old = ProcKey { pid: 70, start_ticks: 10 };
        table.on_exit(old, 1);
        let new = table.lookup(ProcKey { pid: 70, start_ticks: 99 }).clone();
        assert_eq!(new.origin, Origin::Inferred);
        assert_ne!(new.exec_id, table.get(&old).unwrap().exec_id);
        assert!(new.argv.is_none(), "the old process's argv must not leak into the new one");
    }

    #[test]
    fn exited_processes_expire() {
        let mut table = table();
        table.seed(vec![entry(70, 1, 10, &["a"]), entry(71, 1, 10, &["b"])]);
        table.on_exit(ProcKey { pid: 70, start_ticks: 10 }, 1_000);
        assert_eq!(table.collect_garbage(1_000 + 59_000_000_000), vec![]);
        assert_eq!(table.collect_garbage(1_000 + 61_000_000_000), vec![ProcKey { pid: 70, start_ticks: 10 }]);
        assert!(table.get(&ProcKey { pid: 71, start_ticks: 10 }).is_some());
    }
}
