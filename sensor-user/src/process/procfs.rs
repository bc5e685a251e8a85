//! Reads process facts from a proc file system whose root is given, so tests
//! run on fixture trees without root.

use std::{
    fs,
    path::{Path, PathBuf},
};

/// `PF_KTHREAD` in `/proc/PID/stat` flags: kernel threads have no executable
/// or command line and are left out of the table.
const PF_KTHREAD: u64 = 0x0020_0000;

/// One process as seen in `/proc` at start-up.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProcEntry {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    /// Start time in clock ticks since boot, field 22 of `/proc/PID/stat`.
    pub start_ticks: u64,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Pids from the host's namespace inward, from `NSpid` in status.
    pub ns_pids: Vec<u32>,
    /// Inode number of the pid namespace, from the `/proc/PID/ns/pid` link.
    pub pid_ns: Option<u32>,
    pub argv: Vec<String>,
    pub exe: Option<PathBuf>,
    pub cgroup: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcfsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed {path}: {reason}")]
    Malformed { path: PathBuf, reason: &'static str },
}

/// Fields of `/proc/PID/stat` the table needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Stat {
    pub pid: u32,
    pub comm: String,
    /// The state letter: `R`, `S`, `Z` for a zombie, `X` for dead, ...
    pub state: char,
    pub ppid: u32,
    pub flags: u64,
    pub start_ticks: u64,
}

/// Parses `/proc/PID/stat`. `comm` may hold spaces and parentheses, so the
/// fields after it are found from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    if close < open {
        return None;
    }
    let pid = text[..open].trim().parse().ok()?;
    let comm = text[open + 1..close].to_owned();
    // Fields from 3 (state) onwards; field N is at index N - 3.
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let state = rest.first()?.chars().next()?;
    let ppid = rest.get(1)?.parse().ok()?;
    let flags = rest.get(6)?.parse().ok()?;
    let start_ticks = rest.get(19)?.parse().ok()?;
    Some(Stat { pid, comm, state, ppid, flags, start_ticks })
}

/// Returns whether `pid` names a process that has not exited: its stat is
/// readable and its state is neither zombie nor dead, the states the
/// kernel's exit hook has already run for.
pub fn is_running(root: &Path, pid: u32) -> bool {
    let path = root.join(pid.to_string()).join("stat");
    let stat = std::fs::read_to_string(path).ok();
    stat.as_deref().and_then(parse_stat).is_some_and(|stat| !matches!(stat.state, 'Z' | 'X'))
}

/// Fields of `/proc/PID/status` the table needs: real uid and gid, and the
/// pid in each nested namespace.
pub fn parse_status(text: &str) -> (Option<u32>, Option<u32>, Vec<u32>) {
    let mut uid = None;
    let mut gid = None;
    let mut ns_pids = Vec::new();
    for line in text.lines() {
        let Some((name, value)) = line.split_once(':') else { continue };
        let first = || value.split_whitespace().next().and_then(|v| v.parse().ok());
        match name {
            "Uid" => uid = first(),
            "Gid" => gid = first(),
            "NSpid" => ns_pids = value.split_whitespace().filter_map(|v| v.parse().ok()).collect(),
            _ => {}
        }
    }
    (uid, gid, ns_pids)
}

/// Splits a NUL-separated command line. A trailing NUL ends the last
/// argument rather than starting an empty one.
pub fn split_argv(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes.split(|&b| b == 0).map(|arg| String::from_utf8_lossy(arg).into_owned()).collect()
}

/// Parses a namespace link such as `pid:[4026531836]` into its inode number.
pub fn parse_ns_link(link: &str) -> Option<u32> {
    link.split_once(":[")?.1.strip_suffix(']')?.parse().ok()
}

/// Returns the cgroup v2 path from `/proc/PID/cgroup` (the `0::` line).
pub fn parse_cgroup(text: &str) -> Option<String> {
    text.lines().find_map(|line| line.strip_prefix("0::")).map(str::to_owned)
}

fn read(path: PathBuf) -> Result<String, ProcfsError> {
    fs::read_to_string(&path).map_err(|source| ProcfsError::Read { path, source })
}

/// Reads one process. Files other than `stat` may vanish or be unreadable
/// while we read; those fields are then left empty.
pub fn read_process(root: &Path, pid: u32) -> Result<Option<ProcEntry>, ProcfsError> {
    let dir = root.join(pid.to_string());
    let stat_path = dir.join("stat");
    let text = read(stat_path.clone())?;
    let stat = parse_stat(&text).ok_or(ProcfsError::Malformed {
        path: stat_path,
        reason: "fields after comm are missing",
    })?;
    if stat.flags & PF_KTHREAD != 0 {
        return Ok(None);
    }
    let (uid, gid, ns_pids) = read(dir.join("status")).map(|t| parse_status(&t)).unwrap_or_default();
    let argv = fs::read(dir.join("cmdline")).map(|b| split_argv(&b)).unwrap_or_default();
    let exe = fs::read_link(dir.join("exe")).ok();
    let pid_ns = fs::read_link(dir.join("ns/pid")).ok().and_then(|link| parse_ns_link(&link.to_string_lossy()));
    let cgroup = read(dir.join("cgroup")).ok().and_then(|t| parse_cgroup(&t));
    Ok(Some(ProcEntry {
        pid: stat.pid,
        ppid: stat.ppid,
        comm: stat.comm,
        start_ticks: stat.start_ticks,
        uid,
        gid,
        ns_pids,
        pid_ns,
        argv,
        exe,
        cgroup,
    }))
}

/// Lists the processes under `root`, skipping kernel threads and processes
/// that exit during the scan.
pub fn scan(root: &Path) -> Result<Vec<ProcEntry>, ProcfsError> {
    let entries = fs::read_dir(root).map_err(|source| ProcfsError::Read { path: root.to_owned(), source })?;
    let mut processes = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        match read_process(root, pid) {
            Ok(Some(process)) => processes.push(process),
            Ok(None) => {}
            // The process exited between the listing and the read.
            Err(ProcfsError::Read { .. }) => {}
            Err(error) => log::debug!("skipping pid {pid}: {error}"),
        }
    }
    processes.sort_by_key(|p| p.start_ticks);
    Ok(processes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parens_in_comm() {
        let text = "4242 (my (odd) name) S 17 4242 4242 0 -1 4194560 1 0 0 0 3 1 0 0 20 0 1 0 98765 1000 100";
        let stat = parse_stat(text).unwrap();
        assert_eq!(stat.pid, 4242);
        assert_eq!(stat.comm, "my (odd) name");
        assert_eq!(stat.ppid, 17);
        assert_eq!(stat.flags, 4194560);
        assert_eq!(stat.start_ticks, 98765);
        assert_eq!(stat.state, 'S');
    }

    #[test]
    fn stat_truncated_is_none() {
        assert_eq!(parse_stat("12 (x) S 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat(") 1 ("), None);
    }

    #[test]
    fn status_fields() {
        let text = "Name:\tsh\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\nNSpid:\t5123\t1\n";
        assert_eq!(parse_status(text), (Some(1000), Some(100), vec![5123, 1]));
    }

    #[test]
    fn argv_split() {
        assert_eq!(split_argv(b"ls\0-l\0/\0"), vec!["ls", "-l", "/"]);
        assert_eq!(split_argv(b"a\0\0b\0"), vec!["a", "", "b"]);
        assert_eq!(split_argv(b""), Vec::<String>::new());
        assert_eq!(split_argv(b"no-terminator"), vec!["no-terminator"]);
    }

    #[test]
    fn namespace_link() {
        assert_eq!(parse_ns_link("pid:[4026531836]"), Some(4026531836));
        assert_eq!(parse_ns_link("pid:4026531836"), None);
    }

    #[test]
    fn cgroup_v2_line() {
        let text = "12:cpu:/x\n0::/system.slice/ssh.service\n";
        assert_eq!(parse_cgroup(text).as_deref(), Some("/system.slice/ssh.service"));
    }

    #[test]
    fn scan_fixture_tree() {
        let root = std::env::temp_dir().join(format!("agent-sensor-procfs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let write = |pid: &str, name: &str, body: &[u8]| {
            fs::create_dir_all(root.join(pid)).unwrap();
            fs::write(root.join(pid).join(name), body).unwrap();
        };
        write("1", "stat", b"1 (init) S 0 1 1 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0");
        write("1", "cmdline", b"/sbin/init\0");
        write("1", "status", b"Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nNSpid:\t1\n");
        write("2", "stat", b"2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0");
        write("77", "stat", b"77 (python3) S 1 77 77 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 900 0 0");
        write("77", "cmdline", b"python3\0-c\0pass\0");
        write("77", "cgroup", b"0::/user.slice\n");
        fs::create_dir_all(root.join("self-not-a-pid")).unwrap();

        let processes = scan(&root).unwrap();
        let _ = fs::remove_dir_all(&root);
        assert_eq!(processes.len(), 2, "kernel thread and non-pid entries are skipped");
        assert_eq!(processes[0].pid, 1);
        assert_eq!(processes[0].argv, vec!["/sbin/init"]);
        assert_eq!(processes[0].uid, Some(0));
        assert_eq!(processes[1].pid, 77);
        assert_eq!(processes[1].ppid, 1);
        assert_eq!(processes[1].start_ticks, 900);
        assert_eq!(processes[1].argv, vec!["python3", "-c", "pass"]);
        assert_eq!(processes[1].cgroup.as_deref(), Some("/user.slice"));
        assert_eq!(processes[1].uid, None, "missing status leaves uid unknown");
    }
}
