//! Executable identity: which file a process runs and its sha256.
//!
//! A short-lived process is often gone before its record is built, so the
//! file is found in order of trust: the process's own `/proc/PID/exe` link
//! while it lives, then the exec path if it still names the same inode the
//! kernel reported. Hashes are cached by device, inode, mtime and size, so a
//! binary run a thousand times is read once.

use std::{
    fs::File,
    io::Read,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

use crate::idmap::IdMap;

/// Identity of a file's content as far as the hash cache is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileVersion {
    dev: u64,
    inode: u64,
    mtime_ns: i64,
    size: u64,
}

/// The kernel's facts about the executable at exec.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelExe {
    pub inode: u64,
    /// Kernel-internal device number (`MAJOR << 20 | MINOR`).
    pub dev: u32,
    /// Size and modification time (seconds, nanoseconds) of the inode.
    pub meta: Option<(u64, i64, u32)>,
}

impl KernelExe {
    /// Converts the kernel's device encoding to the one `stat` returns.
    fn user_dev(self) -> u64 {
        libc::makedev(self.dev >> 20, self.dev & 0xfffff)
    }

    /// The file version the kernel saw at exec, when it reported one.
    fn version(self) -> Option<FileVersion> {
        let (size, sec, nsec) = self.meta?;
        (self.inode != 0).then(|| FileVersion {
            dev: self.user_dev(),
            inode: self.inode,
            mtime_ns: sec.saturating_mul(1_000_000_000).saturating_add(i64::from(nsec)),
            size,
        })
    }

    fn matches(self, meta: &std::fs::Metadata) -> bool {
        self.inode == 0 || (meta.ino() == self.inode && meta.dev() == self.user_dev())
    }
}

/// The resolved executable: path and hash, each with the reason when unknown.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExeInfo {
    pub path: Option<String>,
    pub path_unknown: Option<String>,
    pub sha256: Option<String>,
    pub sha256_unknown: Option<String>,
}

pub struct ExeResolver {
    procfs: PathBuf,
    max_hash_bytes: u64,
    cache: IdMap<FileVersion, String>,
    /// Resolved executables by the file version the kernel reported and the
    /// path from its dentry walk. A hit makes no system call. That matters in
    /// exec storms: most processes exit before `/proc/PID/exe` can be read,
    /// and the fallback then walks the path again.
    resolved: IdMap<FileVersion, Resolved>,
    max_cache_entries: usize,
}

struct Resolved {
    kernel_path: String,
    info: ExeInfo,
}

fn version_of(meta: &std::fs::Metadata) -> FileVersion {
    FileVersion { dev: meta.dev(), inode: meta.ino(), mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(), size: meta.size() }
}

impl ExeResolver {
    pub fn new(procfs: PathBuf, max_hash_bytes: u64) -> Self {
        Self { procfs, max_hash_bytes, cache: IdMap::default(), resolved: IdMap::default(), max_cache_entries: 8192 }
    }

    /// Resolves a process's executable, in order of trust: its live
    /// `/proc/PID/exe`, then the path the kernel built from the dentry chain
    /// (`kernel_path`), then the exec path, each only when it still names
    /// the inode the kernel reported.
    pub fn resolve(&mut self, pid: u32, kernel: KernelExe, kernel_path: Option<&str>, exec_path: Option<&str>) -> ExeInfo {
        let reported = kernel.version().zip(kernel_path);
        if let Some((version, path)) = reported {
            if let Some(hit) = self.resolved.get(&version).filter(|hit| hit.kernel_path == path) {
                return hit.info.clone();
            }
        }
        let (info, hashed) = self.resolve_uncached(pid, kernel, kernel_path, exec_path);
        // Only a result for the version the kernel executed is cached. A file
        // changed since the exec was hashed in its new form.
        if let Some((version, path)) = reported {
            if info.sha256.is_some() && hashed == Some(version) {
                if self.resolved.len() >= self.max_cache_entries {
                    self.resolved.clear();
                }
                self.resolved.insert(version, Resolved { kernel_path: path.to_owned(), info: info.clone() });
            }
        }
        info
    }

    fn resolve_uncached(
        &mut self,
        pid: u32,
        kernel: KernelExe,
        kernel_path: Option<&str>,
        exec_path: Option<&str>,
    ) -> (ExeInfo, Option<FileVersion>) {
        let link = self.procfs.join(pid.to_string()).join("exe");
        // The link is read before the open: a process that exits in between
        // still leaves the path, and the open then fails cleanly.
        let link_path = std::fs::read_link(&link).ok().map(|p| {
            let text = p.to_string_lossy().into_owned();
            text.strip_suffix(" (deleted)").map(str::to_owned).unwrap_or(text)
        });
        if let Ok(file) = File::open(&link) {
            if let Ok(meta) = file.metadata() {
                if kernel.matches(&meta) {
                    let path = link_path.clone().or_else(|| kernel_path.map(str::to_owned));
                    return (self.finish(file, &meta, path), Some(version_of(&meta)));
                }
            }
        }
        let reason_gone = "the process exited or exec'd again before /proc/PID/exe was read";
        let candidates = [link_path.as_deref(), kernel_path, exec_path.filter(|p| p.starts_with('/'))];
        for candidate in candidates.into_iter().flatten() {
            let canonical = std::fs::canonicalize(candidate).ok();
            let Some(canonical) = canonical else { continue };
            let Ok(file) = File::open(&canonical) else { continue };
            let Ok(meta) = file.metadata() else { continue };
            if kernel.matches(&meta) {
                return (self.finish(file, &meta, Some(canonical.to_string_lossy().into_owned())), Some(version_of(&meta)));
            }
        }
        // The kernel's path is right even when the file is gone or lives in
        // another mount namespace; only its content cannot be hashed.
        if let Some(path) = kernel_path {
            let info = ExeInfo {
                path: Some(path.to_owned()),
                path_unknown: None,
                sha256: None,
                sha256_unknown: Some(format!(
                    "{reason_gone}, and {path} does not name the executed file from the sensor's mount namespace (deleted, replaced, or inside a container)"
                )),
            };
            return (info, None);
        }
        let why = match exec_path {
            Some(path) if path.starts_with('/') => {
                format!("{reason_gone}, and {path} is not the executed inode (a script's interpreter, or a replaced file)")
            }
            _ => format!("{reason_gone}, and the exec path is not absolute"),
        };
        let info = ExeInfo { path: None, path_unknown: Some(why), sha256: None, sha256_unknown: Some("executable file not found".to_owned()) };
        (info, None)
    }

    /// Resolves the executable of a process found by the start-up scan.
    pub fn resolve_path(&mut self, pid: u32, path: Option<&Path>) -> ExeInfo {
        let link = self.procfs.join(pid.to_string()).join("exe");
        match File::open(&link).and_then(|f| f.metadata().map(|m| (f, m))) {
            Ok((file, meta)) => {
                let path = path.map(|p| p.to_string_lossy().into_owned());
                self.finish(file, &meta, path)
            }
            Err(error) => {
                let hint = crate::probes::caps::proc_denied_hint(&error);
                ExeInfo {
                    path: path.map(|p| p.to_string_lossy().into_owned()),
                    path_unknown: path.is_none().then(|| format!("cannot read {}: {error}{hint}", link.display())),
                    sha256: None,
                    sha256_unknown: Some(format!("cannot open {}: {error}{hint}", link.display())),
                }
            }
        }
    }

    fn finish(&mut self, file: File, meta: &std::fs::Metadata, path: Option<String>) -> ExeInfo {
        let (sha256, sha256_unknown) = match self.hash(file, meta) {
            Ok(hash) => (Some(hash), None),
            Err(reason) => (None, Some(reason)),
        };
        let path_unknown = path.is_none().then(|| "exe link unreadable".to_owned());
        ExeInfo { path, path_unknown, sha256, sha256_unknown }
    }

    fn hash(&mut self, mut file: File, meta: &std::fs::Metadata) -> Result<String, String> {
        let version = version_of(meta);
        if let Some(hash) = self.cache.get(&version) {
            return Ok(hash.clone());
        }
        if meta.size() > self.max_hash_bytes {
            return Err(format!(
                "executable is {} bytes, above process.max_hash_bytes ({})",
                meta.size(),
                self.max_hash_bytes
            ));
        }
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match file.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => hasher.update(&buffer[..n]),
                Err(error) => return Err(format!("reading the executable failed: {error}")),
            }
        }
        let hash = hex(&hasher.finalize());
        if self.cache.len() >= self.max_cache_entries {
            // Rare: more distinct binaries than entries. Starting over costs
            // one re-read per binary and keeps memory bounded.
            self.cache.clear();
        }
        self.cache.insert(version, hash.clone());
        Ok(hash)
    }

    /// Number of cached hashes, for metrics and tests.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

/// Formats bytes as lowercase hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_path_fallback_hashes_and_caches() {
        let dir = std::env::temp_dir().join(format!("agent-sensor-exe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tool");
        std::fs::write(&file, b"abc").unwrap();
        let meta = std::fs::metadata(&file).unwrap();
        let kdev = ((libc::major(meta.dev())) << 20) | libc::minor(meta.dev());
        let kernel = KernelExe { inode: meta.ino(), dev: kdev, meta: None };
        // An empty procfs root: the process is "gone". A symlinked exec path
        // resolves to its target, as /proc/PID/exe would.
        let link = dir.join("tool-link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let mut resolver = ExeResolver::new(dir.join("no-proc"), 1 << 20);
        let info = resolver.resolve(1, kernel, None, link.to_str());
        assert_eq!(info.path.as_deref(), file.to_str());
        assert_eq!(
            info.sha256.as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(resolver.cached(), 1);

        let other = KernelExe { inode: meta.ino() + 1, dev: kdev, meta: None };
        let info = resolver.resolve(1, other, None, file.to_str());
        assert_eq!(info.path, None);
        assert!(info.path_unknown.unwrap().contains("not the executed inode"));

        let info = resolver.resolve(1, other, Some("/in/container/tool"), file.to_str());
        assert_eq!(info.path.as_deref(), Some("/in/container/tool"), "the kernel's path stands when the file is unreachable");
        assert_eq!(info.sha256, None);
        assert!(info.sha256_unknown.unwrap().contains("mount namespace"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn kernel_view(path: &Path) -> KernelExe {
        let meta = std::fs::metadata(path).unwrap();
        KernelExe {
            inode: meta.ino(),
            dev: ((libc::major(meta.dev())) << 20) | libc::minor(meta.dev()),
            meta: Some((meta.size(), meta.mtime(), meta.mtime_nsec() as u32)),
        }
    }

    #[test]
    fn cached_result_keeps_executed_version() {
        let dir = std::env::temp_dir().join(format!("agent-sensor-exe-memo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tool");
        std::fs::write(&file, b"abc").unwrap();
        let path = file.to_str().unwrap();
        let first = kernel_view(&file);
        let mut resolver = ExeResolver::new(dir.join("no-proc"), 1 << 20);
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(resolver.resolve(1, first, Some(path), None).sha256.as_deref(), Some(abc));

        // Rewritten in place: same inode, new size and time. A process that
        // executed the first version keeps that version's hash, although the
        // file no longer has it. One that executed the new version gets the
        // new hash.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&file, b"abcd").unwrap();
        let second = kernel_view(&file);
        assert_eq!(second.inode, first.inode);
        assert_eq!(resolver.resolve(2, first, Some(path), None).sha256.as_deref(), Some(abc));
        let info = resolver.resolve(3, second, Some(path), None);
        assert_eq!(info.sha256.as_deref(), Some("88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589"));

        // The same version reached under another path is resolved afresh.
        let info = resolver.resolve(4, second, Some("/elsewhere/tool"), None);
        assert_eq!(info.path.as_deref(), Some("/elsewhere/tool"));
        assert_eq!(info.sha256, None, "the path does not name the file from here");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn oversized_executable_not_hashed() {
        let mut resolver = ExeResolver::new(PathBuf::from("/nonexistent"), 1);
        let exe = std::env::current_exe().unwrap();
        let info = resolver.resolve(1, KernelExe::default(), None, exe.to_str());
        assert_eq!(info.sha256, None);
        assert!(info.sha256_unknown.unwrap().contains("max_hash_bytes"));
    }
}
