//! Maps cgroup v2 ids to cgroup paths.
//!
//! The kernel programs report `bpf_get_current_cgroup_id()`, which is the
//! inode number of the cgroup's directory in the cgroup2 file system. The
//! path is found in one of two ways:
//!
//! 1. `open_by_handle_at` with the id as a kernfs file handle, which opens
//!    the directory directly (Linux 4.13 and later, needs
//!    `CAP_DAC_READ_SEARCH`), then reading the fd's link in `/proc/self/fd`.
//! 2. A walk of the whole mount, when the handle cannot be used.
//!
//! Both need the directory to exist when the id is first looked up. Before
//! them, a miss consults the cgroups that [`super::discover`] saw being
//! created, which covers containers that are already gone. Every id seen
//! is kept for `removed_retention` after its directory disappears: records about a process that exited, in a container that is
//! gone, still find it. Entries are bounded; the least recently used go
//! first, removed ones before live ones.

use std::{
    ffi::CString,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::discover::Discovered;

use crate::idmap::IdMap;

/// `FILEID_KERNFS` from `include/linux/exportfs.h`: a kernfs file handle is
/// the node's 64-bit id, which for cgroup2 is the cgroup id.
const FILEID_KERNFS: i32 = 0xfe;

/// A walk after a miss runs at most this often, in nanoseconds, so a burst
/// of events from a cgroup that is already gone costs one walk.
const WALK_INTERVAL_NS: u64 = 1_000_000_000;

/// Directories deeper than this under the mount are not walked; real
/// hierarchies are under 15 levels deep.
const MAX_WALK_DEPTH: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum CgroupIndexError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no cgroup2 file system is mounted according to {path}")]
    NoCgroup2 { path: PathBuf },
}

/// Finds the cgroup2 mount point in a `/proc/PID/mountinfo` file, preferring
/// a mount of the hierarchy's root over a bind mount of a subtree.
pub fn find_cgroup2_mount(mountinfo: &Path) -> Result<PathBuf, CgroupIndexError> {
    let text = std::fs::read_to_string(mountinfo)
        .map_err(|source| CgroupIndexError::Read { path: mountinfo.to_owned(), source })?;
    parse_cgroup2_mount(&text).ok_or_else(|| CgroupIndexError::NoCgroup2 { path: mountinfo.to_owned() })
}

/// Parses mountinfo lines: `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS
/// [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`.
pub fn parse_cgroup2_mount(text: &str) -> Option<PathBuf> {
    let mut best: Option<(bool, PathBuf)> = None;
    for line in text.lines() {
        let Some((before, after)) = line.split_once(" - ") else { continue };
        if after.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let fields: Vec<&str> = before.split_whitespace().collect();
        let (Some(root), Some(mount_point)) = (fields.get(3), fields.get(4)) else { continue };
        let whole = *root == "/";
        let path = PathBuf::from(unescape_mountinfo(mount_point));
        if best.as_ref().is_none_or(|(best_whole, _)| whole && !best_whole) {
            best = Some((whole, path));
        }
    }
    best.map(|(_, path)| path)
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|digits| digits.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let (b'\\', Some(digits)) = (bytes[i], octal) {
            let value = digits.iter().fold(0u16, |acc, d| acc * 8 + u16::from(d - b'0'));
            out.push(value as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Debug)]
struct Entry {
    /// Path relative to the mount, starting with `/`.
    path: Arc<str>,
    last_used_ns: u64,
    /// When the directory was found gone.
    removed_ns: Option<u64>,
}

/// The result of a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(Arc<str>),
    /// Not under the mount: removed before it was first looked up, or a
    /// cgroup of another hierarchy.
    NotFound,
    /// No cgroup2 mount is known.
    NoMount,
}

pub struct CgroupIndex {
    root: Option<PathBuf>,
    mount_fd: Option<std::fs::File>,
    /// False once the kernel rejected a file handle for a reason other than
    /// a removed cgroup, so later misses go straight to the walk.
    handles_work: bool,
    entries: IdMap<u64, Entry>,
    last_walk_ns: Option<u64>,
    /// Cgroups seen being created, for ids whose directory is already gone.
    discovered: Option<Arc<Discovered>>,
    capacity: usize,
    removed_retention_ns: u64,
    pub walks: u64,
}

impl CgroupIndex {
    /// Indexes the cgroup2 file system mounted at `root`; `None` when no
    /// mount is known, which makes every lookup return [`Lookup::NoMount`].
    pub fn new(root: Option<PathBuf>, capacity: usize, removed_retention_ns: u64) -> CgroupIndex {
        let mount_fd = root.as_ref().and_then(|root| match std::fs::File::open(root) {
            Ok(file) => Some(file),
            Err(error) => {
                log::warn!("cannot open the cgroup2 mount {}: {error}; cgroup ids will be resolved by walking it", root.display());
                None
            }
        });
        CgroupIndex {
            root,
            mount_fd,
            handles_work: true,
            entries: IdMap::default(),
            last_walk_ns: None,
            discovered: None,
            capacity: capacity.max(1),
            removed_retention_ns,
            walks: 0,
        }
    }

    /// Consults `discovered` on a miss before looking under the mount.
    pub fn set_discovered(&mut self, discovered: Arc<Discovered>) {
        self.discovered = Some(discovered);
    }

    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    pub fn contains(&self, id: u64) -> bool {
        self.entries.contains_key(&id)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Returns the path of cgroup `id`.
    pub fn lookup(&mut self, id: u64, now_ns: u64) -> Lookup {
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.last_used_ns = now_ns;
            return Lookup::Found(entry.path.clone());
        }
        let Some(root) = self.root.clone() else { return Lookup::NoMount };
        if let Some(path) = self.discovered.as_ref().and_then(|d| d.get(id)) {
            return Lookup::Found(self.insert(id, path.to_string(), now_ns));
        }
        if let Some(path) = self.open_by_id(&root, id) {
            return Lookup::Found(self.insert(id, path, now_ns));
        }
        if self.last_walk_ns.is_some_and(|at| now_ns.saturating_sub(at) < WALK_INTERVAL_NS) {
            return Lookup::NotFound;
        }
        self.walk(&root, now_ns);
        match self.entries.get_mut(&id) {
            Some(entry) => {
                entry.last_used_ns = now_ns;
                Lookup::Found(entry.path.clone())
            }
            None => Lookup::NotFound,
        }
    }

    /// Returns the id of the cgroup at `path` (relative to the mount), as
    /// read from `/proc/PID/cgroup`, and indexes it.
    pub fn id_of_path(&mut self, path: &str, now_ns: u64) -> Option<u64> {
        let root = self.root.as_ref()?;
        let id = std::fs::metadata(join(root, path)).ok()?.ino();
        if !self.entries.contains_key(&id) {
            self.insert(id, path.to_owned(), now_ns);
        }
        Some(id)
    }

    fn insert(&mut self, id: u64, path: String, now_ns: u64) -> Arc<str> {
        if self.entries.len() >= self.capacity {
            self.evict_one();
        }
        let path: Arc<str> = path.into();
        self.entries.insert(id, Entry { path: path.clone(), last_used_ns: now_ns, removed_ns: None });
        path
    }

    /// Evicts the least recently used entry, removed cgroups first.
    fn evict_one(&mut self) {
        let victim = self
            .entries
            .iter()
            .min_by_key(|(_, e)| (e.removed_ns.is_none(), e.last_used_ns))
            .map(|(&id, _)| id);
        if let Some(id) = victim {
            self.entries.remove(&id);
        }
    }

    /// Opens the cgroup directory from its id and reads its path.
    fn open_by_id(&mut self, root: &Path, id: u64) -> Option<String> {
        if !self.handles_work {
            return None;
        }
        let mount_fd = self.mount_fd.as_ref()?;
        match open_cgroup_by_id(mount_fd, id) {
            Ok(absolute) => strip_root(root, &absolute),
            Err(error) => {
                // ESTALE: the cgroup is gone, which a walk cannot change
                // either. Anything else means handles do not work here.
                if error.raw_os_error() != Some(libc::ESTALE) {
                    log::info!("cgroup file handles unusable ({error}); resolving cgroup ids by walking {}", root.display());
                    self.handles_work = false;
                }
                None
            }
        }
    }

    /// Walks the mount and indexes every directory, keeping entries that are
    /// already known; new ones are added while there is room.
    fn walk(&mut self, root: &Path, now_ns: u64) {
        self.last_walk_ns = Some(now_ns);
        self.walks += 1;
        let mut stack: Vec<(PathBuf, String, usize)> = vec![(root.to_owned(), String::from("/"), 0)];
        while let Some((dir, relative, depth)) = stack.pop() {
            let Ok(metadata) = std::fs::metadata(&dir) else { continue };
            let id = metadata.ino();
            if let Some(entry) = self.entries.get_mut(&id) {
                entry.removed_ns = None;
            } else if self.entries.len() < self.capacity {
                self.entries.insert(id, Entry { path: relative.as_str().into(), last_used_ns: 0, removed_ns: None });
            }
            if depth >= MAX_WALK_DEPTH {
                continue;
            }
            let Ok(children) = std::fs::read_dir(&dir) else { continue };
            for child in children.flatten() {
                if !child.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let name = child.file_name();
                let Some(name) = name.to_str() else { continue };
                let child_relative =
                    if relative == "/" { format!("/{name}") } else { format!("{relative}/{name}") };
                stack.push((child.path(), child_relative, depth + 1));
            }
        }
    }

    /// Marks entries whose directory is gone or was replaced by another
    /// cgroup, and drops those removed longer than the retention.
    pub fn collect_garbage(&mut self, now_ns: u64) -> usize {
        let Some(root) = self.root.clone() else { return 0 };
        for (&id, entry) in self.entries.iter_mut() {
            if entry.removed_ns.is_some() {
                continue;
            }
            let present = std::fs::metadata(join(&root, &entry.path)).is_ok_and(|m| m.ino() == id);
            if !present {
                entry.removed_ns = Some(now_ns);
            }
        }
        let before = self.entries.len();
        let retention = self.removed_retention_ns;
        self.entries.retain(|_, e| e.removed_ns.is_none_or(|at| now_ns.saturating_sub(at) < retention));
        before - self.entries.len()
    }
}

fn join(root: &Path, relative: &str) -> PathBuf {
    root.join(relative.trim_start_matches('/'))
}

fn strip_root(root: &Path, absolute: &Path) -> Option<String> {
    let relative = absolute.strip_prefix(root).ok()?;
    Some(format!("/{}", relative.to_str()?))
}

/// Opens a cgroup2 directory from its id through a kernfs file handle and
/// returns its absolute path in this mount namespace.
fn open_cgroup_by_id(mount_fd: &std::fs::File, id: u64) -> std::io::Result<PathBuf> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

    /// `struct file_handle` with room for the 8-byte kernfs id.
    #[repr(C)]
    struct KernfsHandle {
        handle_bytes: u32,
        handle_type: i32,
        id: [u8; 8],
    }
    let mut handle = KernfsHandle { handle_bytes: 8, handle_type: FILEID_KERNFS, id: id.to_ne_bytes() };
    // SAFETY: `handle` has the layout of `struct file_handle` followed by
    // `handle_bytes` bytes of payload, and lives across the call; the mount
    // fd is open.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount_fd.as_raw_fd(),
            (&mut handle as *mut KernfsHandle).cast::<libc::file_handle>(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody
    // else, so OwnedFd closes it exactly once.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Checks that `path` holds a cgroup2 file system.
pub fn is_cgroup2(path: &Path) -> bool {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    let Ok(target) = CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: statfs fills the zeroed struct passed by pointer.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `target` is a valid C string and `stat` a valid out pointer.
    let ret = unsafe { libc::statfs(target.as_ptr(), &mut stat) };
    ret == 0 && stat.f_type as i64 == CGROUP2_SUPER_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_hybrid_and_unified() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
            35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_cgroup2_mount(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let unified = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(parse_cgroup2_mount(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(parse_cgroup2_mount("35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"), None);
    }

    #[test]
    fn mountinfo_prefers_whole_hierarchy_and_unescapes() {
        let text = "50 23 0:26 /kubepods.slice /host/sub rw - cgroup2 cgroup2 rw\n\
            51 23 0:26 / /host/cgroup\\040v2 rw - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_cgroup2_mount(text), Some(PathBuf::from("/host/cgroup v2")));
    }

    /// A fixture tree stands in for the cgroup2 mount: the index only reads
    /// directories and inode numbers, which any file system has.
    fn fixture(tag: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("agent-sensor-cgidx-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("kubepods.slice/pod-a.slice/cri-containerd-x.scope")).unwrap();
        std::fs::create_dir_all(root.join("system.slice/ssh.service")).unwrap();
        root
    }

    fn ino(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().ino()
    }

    #[test]
    fn lookup_walks_on_miss_and_keeps_removed() {
        let root = fixture("walk");
        let container = root.join("kubepods.slice/pod-a.slice/cri-containerd-x.scope");
        let id = ino(&container);
        let mut index = CgroupIndex::new(Some(root.clone()), 100, 10_000);
        // Plain directories have no kernfs handles, so this takes the walk.
        assert_eq!(index.lookup(id, 1), Lookup::Found("/kubepods.slice/pod-a.slice/cri-containerd-x.scope".into()));
        assert_eq!(index.walks, 1);
        assert_eq!(index.lookup(id, 2), Lookup::Found("/kubepods.slice/pod-a.slice/cri-containerd-x.scope".into()));
        assert_eq!(index.walks, 1, "a hit does not walk");

        std::fs::remove_dir(&container).unwrap();
        index.collect_garbage(100);
        assert!(matches!(index.lookup(id, 101), Lookup::Found(_)), "kept for the retention after removal");
        index.collect_garbage(100 + 10_000);
        assert_eq!(index.lookup(id, 100 + 10_001 + WALK_INTERVAL_NS), Lookup::NotFound);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn missing_id_walks_once_per_interval() {
        let root = fixture("missing");
        let mut index = CgroupIndex::new(Some(root.clone()), 100, 10_000);
        assert_eq!(index.lookup(u64::MAX, 1), Lookup::NotFound);
        assert_eq!(index.lookup(u64::MAX, 2), Lookup::NotFound);
        assert_eq!(index.walks, 1);
        // A cgroup created after the walk is found after the interval.
        std::fs::create_dir_all(root.join("system.slice/new.service")).unwrap();
        let id = ino(&root.join("system.slice/new.service"));
        assert_eq!(index.lookup(id, 3), Lookup::NotFound, "still within the walk interval");
        assert_eq!(index.lookup(id, 3 + WALK_INTERVAL_NS), Lookup::Found("/system.slice/new.service".into()));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn capacity_bound_evicts_least_recent() {
        let root = fixture("bound");
        let mut index = CgroupIndex::new(Some(root.clone()), 2, 10_000);
        let a = index.id_of_path("/system.slice", 1).unwrap();
        let b = index.id_of_path("/system.slice/ssh.service", 2).unwrap();
        index.lookup(a, 3);
        let c = index.id_of_path("/kubepods.slice", 4).unwrap();
        assert_eq!(index.len(), 2);
        assert!(index.entries.contains_key(&a) && index.entries.contains_key(&c));
        assert!(!index.entries.contains_key(&b), "the least recently used entry goes");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn no_mount_is_explicit() {
        let mut index = CgroupIndex::new(None, 10, 10);
        assert_eq!(index.lookup(1, 0), Lookup::NoMount);
    }
}
