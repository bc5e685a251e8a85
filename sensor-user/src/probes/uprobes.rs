//! Attaches the TLS plaintext probes to every OpenSSL-compatible library or
//! executable that processes map, found through `/proc/PID/maps`.
//!
//! Uprobes attach to an inode, so one attachment covers every process that
//! maps the same file, now or later. Paths are opened through
//! `/proc/PID/root`, so a library inside a container's mount namespace is
//! hooked at its own inode. Files are checked once per device and inode.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::{
    programs::{uprobe::UProbeScope, UProbe},
    Ebpf,
};
use object::{Object, ObjectSymbol};

use super::error_chain;

/// (program, symbol) pairs attached for each hooked file.
const ATTACHMENTS: &[(&str, &str)] = &[
    ("ssl_call_enter", "SSL_write"),
    ("ssl_call_enter", "SSL_read"),
    ("ssl_call_ex_enter", "SSL_write_ex"),
    ("ssl_call_ex_enter", "SSL_read_ex"),
    ("ssl_write_exit", "SSL_write"),
    ("ssl_write_exit", "SSL_write_ex"),
    ("ssl_read_exit", "SSL_read"),
    ("ssl_read_exit", "SSL_read_ex"),
];

type FileId = (u64, u64);

/// Outcome of checking one mapped file, for records and logs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Hooked {
    pub path: String,
    pub inode: u64,
    pub symbols: Vec<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
}

#[derive(Default)]
pub struct UprobeManager {
    procfs: PathBuf,
    hooked: HashSet<FileId>,
    /// Files checked and found without OpenSSL symbols, or failed.
    skipped: HashSet<FileId>,
    /// Whether each scanned process maps a hooked file, by pid.
    processes: HashMap<u32, bool>,
    enabled: bool,
    /// The reason plaintext is unavailable when `enabled` is false.
    off_reason: &'static str,
}

impl UprobeManager {
    /// Creates the manager. `loaded` is whether the uprobe programs loaded,
    /// and `capture_plaintext` is the `probes.tls_plaintext` setting.
    pub fn new(procfs: PathBuf, loaded: bool, capture_plaintext: bool) -> Self {
        let off_reason = if !capture_plaintext {
            "TLS plaintext capture is off (probes.tls_plaintext = false)"
        } else {
            "TLS plaintext probes are unavailable on this host (see sensor.degraded)"
        };
        Self { procfs, enabled: loaded && capture_plaintext, off_reason, ..Default::default() }
    }

    /// Checks every file `pid` maps and hooks the OpenSSL-compatible ones;
    /// returns the files newly hooked.
    pub fn scan_process(&mut self, ebpf: &mut Ebpf, pid: u32) -> Vec<Hooked> {
        let mut new = Vec::new();
        if !self.enabled {
            return new;
        }
        let root = self.procfs.join(pid.to_string()).join("root");
        let maps = match std::fs::read_to_string(self.procfs.join(pid.to_string()).join("maps")) {
            Ok(maps) => maps,
            Err(_) => return new,
        };
        let mut maps_hooked = false;
        let mut seen = HashSet::new();
        for path in maps.lines().filter_map(mapped_path) {
            if !seen.insert(path) {
                continue;
            }
            // In the sensor's own mount namespace the mapped path is stable;
            // /proc/PID/root/... vanishes when the process exits, which can
            // happen between two of the attachments.
            let host_path = if same_mount_namespace(&self.procfs, pid) {
                PathBuf::from(path)
            } else {
                root.join(path.trim_start_matches('/'))
            };
            let Ok(meta) = std::fs::metadata(&host_path) else { continue };
            let id = (meta.dev(), meta.ino());
            if self.hooked.contains(&id) {
                maps_hooked = true;
                continue;
            }
            if self.skipped.contains(&id) || !may_hold_openssl(path) {
                continue;
            }
            match attach_file(ebpf, &host_path) {
                Some(hooked) if !hooked.symbols.is_empty() => {
                    log::info!("TLS plaintext probes attached to {path} (inode {})", meta.ino());
                    self.hooked.insert(id);
                    maps_hooked = true;
                    new.push(Hooked { path: path.to_owned(), inode: meta.ino(), ..hooked });
                }
                _ => {
                    self.skipped.insert(id);
                }
            }
        }
        self.processes.insert(pid, maps_hooked);
        new
    }

    /// Hooks an executable by path before any process runs it, so its first
    /// process's first request is captured too (a file first seen at exec
    /// is hooked only after the daemon reads the exec record).
    pub fn hook_path(&mut self, ebpf: &mut Ebpf, path: &Path) -> Option<Hooked> {
        if !self.enabled {
            return None;
        }
        let meta = std::fs::metadata(path).ok()?;
        let id = (meta.dev(), meta.ino());
        if self.hooked.contains(&id) || self.skipped.contains(&id) {
            return None;
        }
        match attach_file(ebpf, path) {
            Some(hooked) if !hooked.symbols.is_empty() => {
                log::info!("TLS plaintext probes attached to {} (inode {})", path.display(), meta.ino());
                self.hooked.insert(id);
                Some(Hooked { path: path.display().to_string(), inode: meta.ino(), ..hooked })
            }
            _ => {
                self.skipped.insert(id);
                None
            }
        }
    }

    /// Notes the executable `pid` runs (kernel device number `dev`, inode
    /// `inode`) and returns whether that file is hooked. A hooked file's
    /// plaintext is captured even when the process exits before the daemon
    /// reads its memory map, as short Node.js runs often do.
    pub fn note_executable(&mut self, pid: u32, dev: u32, inode: u64) -> bool {
        let id = (libc::makedev(dev >> 20, dev & 0xfffff), inode);
        let hooked = self.enabled && inode != 0 && self.hooked.contains(&id);
        if hooked {
            self.processes.insert(pid, true);
        } else {
            self.processes.remove(&pid);
        }
        hooked
    }

    /// Hooks the OpenSSL-compatible libraries directly in `dir`, by name.
    /// Symbolic links to a file already hooked are skipped by inode.
    pub fn hook_library_dir(&mut self, ebpf: &mut Ebpf, dir: &Path) -> Vec<Hooked> {
        let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.to_str().is_some_and(|p| may_hold_openssl(p) && p.contains(".so")))
            .collect();
        // Sorted so the record names the same path on every start.
        paths.sort();
        paths.iter().filter_map(|path| self.hook_path(ebpf, path)).collect()
    }

    /// Returns why plaintext is unavailable for `pid`, `None` when one of its
    /// mapped files is hooked.
    pub fn plaintext_unavailable(&self, pid: u32) -> Option<&'static str> {
        if !self.enabled {
            return Some(self.off_reason);
        }
        match self.processes.get(&pid) {
            Some(true) => None,
            Some(false) => Some(
                "the process maps no OpenSSL-compatible library or executable with SSL_read/SSL_write symbols (a statically linked TLS stack such as rustls, Go crypto/tls or stripped BoringSSL)",
            ),
            None => Some("the process's memory map could not be read"),
        }
    }

    pub fn forget(&mut self, pid: u32) {
        self.processes.remove(&pid);
    }
}

/// Returns whether `pid` shares the sensor's mount namespace.
fn same_mount_namespace(procfs: &Path, pid: u32) -> bool {
    let own = std::fs::read_link(procfs.join("self/ns/mnt"));
    let theirs = std::fs::read_link(procfs.join(pid.to_string()).join("ns/mnt"));
    matches!((own, theirs), (Ok(a), Ok(b)) if a == b)
}

/// The file path of a `/proc/PID/maps` line, for file-backed mappings.
fn mapped_path(line: &str) -> Option<&str> {
    let path = line.splitn(6, ' ').nth(5)?.trim_start();
    (path.starts_with('/') && !path.ends_with(" (deleted)")).then_some(path)
}

/// Cheap filter before parsing ELF symbols: TLS libraries by name, and
/// executables that carry their own TLS stack. Other files are not checked.
fn may_hold_openssl(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with("libssl") || name.contains("boringssl") || carries_own_tls(path)
}

/// Returns whether an executable links OpenSSL statically and exports its
/// symbols (Node.js), so it is hooked at exec rather than at its first
/// connect.
pub fn carries_own_tls(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name == "node" || name.starts_with("node-") || name == "nodejs"
}

fn attach_file(ebpf: &mut Ebpf, path: &Path) -> Option<Hooked> {
    // Only the headers and symbol tables are read, through a cache of the
    // ranges parsed, because Node.js is about 100 MB. Unlike a mapping, reads
    // cannot fault when the file is truncated meanwhile.
    let file = std::fs::File::open(path).ok()?;
    let cache = object::ReadCache::new(file);
    let elf = object::File::parse(&cache).ok()?;
    let exported: HashSet<&str> = elf
        .dynamic_symbols()
        .chain(elf.symbols())
        .filter(|s| s.is_definition())
        .filter_map(|s| s.name().ok())
        .filter(|name| name.starts_with("SSL_"))
        .collect();
    let mut symbols = Vec::new();
    let mut failures = Vec::new();
    for (program, symbol) in ATTACHMENTS {
        if !exported.contains(symbol) {
            continue;
        }
        // The offset comes from the ELF already read, so aya does not
        // re-read a large executable (Node.js is about 100 MB) per probe.
        let Some(offset) = file_offset(&elf, symbol) else {
            failures.push(format!("{program} at {symbol}: no file offset for the symbol"));
            continue;
        };
        let Some(prog) = ebpf.program_mut(program) else { continue };
        let result = <&mut UProbe>::try_from(prog)
            .map_err(|e| error_chain(&e))
            .and_then(|uprobe| uprobe.attach(offset, path, UProbeScope::AllProcesses).map_err(|e| error_chain(&e)));
        match result {
            Ok(_) => {
                if !symbols.contains(symbol) {
                    symbols.push(*symbol);
                }
            }
            Err(error) => failures.push(format!("{program} at {symbol}: {error}")),
        }
    }
    Some(Hooked { path: path.display().to_string(), inode: 0, symbols, failures })
}

/// Returns the file offset of a defined symbol: its address translated
/// through the loadable segment that contains it.
fn file_offset<'data, R: object::ReadRef<'data>>(elf: &object::File<'data, R>, symbol: &str) -> Option<u64> {
    use object::ObjectSegment;
    let address = elf
        .dynamic_symbols()
        .chain(elf.symbols())
        .find(|s| s.is_definition() && s.name().ok() == Some(symbol))?
        .address();
    elf.segments().find_map(|segment| {
        let start = segment.address();
        let (file_start, file_size) = segment.file_range();
        (address >= start && address < start + file_size).then(|| address - start + file_start)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_line_paths() {
        let line = "7f1c2a400000-7f1c2a49a000 r--p 00000000 fe:01 1311790                    /usr/lib/x86_64-linux-gnu/libssl.so.3";
        assert_eq!(mapped_path(line), Some("/usr/lib/x86_64-linux-gnu/libssl.so.3"));
        assert_eq!(mapped_path("7ffd-7ffe rw-p 00000000 00:00 0                          [stack]"), None);
        assert_eq!(mapped_path("7ffd-7ffe rw-p 00000000 00:00 0"), None);
        assert_eq!(mapped_path("1-2 r-xp 0 fe:01 5 /tmp/x (deleted)"), None);
    }

    #[test]
    fn openssl_candidates() {
        assert!(may_hold_openssl("/usr/lib/x86_64-linux-gnu/libssl.so.3"));
        assert!(may_hold_openssl("/usr/bin/node"));
        assert!(!may_hold_openssl("/usr/lib/x86_64-linux-gnu/libc.so.6"));
    }
}
