//! Learns cgroup ids as cgroups are created, with inotify.
//!
//! The index resolves an id by looking under the cgroup2 mount, which finds
//! nothing once the cgroup is gone. A container that starts, runs and exits
//! within one drain interval of the ring buffer (20 ms by default) is gone
//! before its first exec is read. A thread therefore watches every cgroup
//! directory for new subdirectories and records each one's id and path the
//! moment it appears. The index consults that record on a miss.
//!
//! Only directories created by `mkdir(2)` raise inotify events, which is how
//! systemd, runc and the kubelet create cgroups. The watches are bounded; a
//! tree larger than the bound is watched in part, and the rest is resolved
//! by the index alone.

use std::{
    collections::HashMap,
    ffi::CString,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Recorded cgroups older than this are dropped when the record is full:
/// by then the index has looked the id up, or no event named it.
const RECORD_TTL: Duration = Duration::from_secs(600);

/// Directories deeper than this under the mount are not watched.
const MAX_DEPTH: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("inotify_init1 failed")]
    Init(#[source] std::io::Error),
    #[error("cannot watch the cgroup2 mount {path}")]
    Watch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the cgroup discovery thread")]
    Thread(#[source] std::io::Error),
}

/// Cgroups seen being created: id to path relative to the mount.
#[derive(Debug, Default)]
pub struct Discovered {
    paths: Mutex<HashMap<u64, (Arc<str>, Instant)>>,
    capacity: usize,
}

impl Discovered {
    /// Returns the path of cgroup `id` if it was seen being created.
    pub fn get(&self, id: u64) -> Option<Arc<str>> {
        self.lock().get(&id).map(|(path, _)| path.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Arc<str>, Instant)>> {
        // The map stays consistent even if a holder panicked.
        self.paths.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn insert(&self, id: u64, path: &str) {
        let mut paths = self.lock();
        if paths.len() >= self.capacity {
            let now = Instant::now();
            paths.retain(|_, (_, at)| now.duration_since(*at) < RECORD_TTL);
            if paths.len() >= self.capacity {
                paths.clear();
            }
        }
        paths.insert(id, (path.into(), Instant::now()));
    }
}

/// The watching side, owned by the discovery thread.
struct Watcher {
    fd: std::os::fd::OwnedFd,
    root: PathBuf,
    /// Watch descriptor to the directory's path relative to the mount.
    watches: HashMap<i32, String>,
    max_watches: usize,
    warned_full: bool,
    discovered: Arc<Discovered>,
}

/// Starts watching the cgroup2 mount at `root` on a thread of its own, and
/// returns the record it fills. At most `capacity` directories are watched
/// and remembered.
pub fn start(root: &Path, capacity: usize) -> Result<Arc<Discovered>, DiscoverError> {
    use std::os::fd::FromRawFd as _;

    // SAFETY: inotify_init1 has no memory arguments.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(DiscoverError::Init(std::io::Error::last_os_error()));
    }
    let discovered = Arc::new(Discovered { paths: Mutex::default(), capacity: capacity.max(1) });
    let mut watcher = Watcher {
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) },
        root: root.to_owned(),
        watches: HashMap::new(),
        max_watches: capacity.max(1),
        warned_full: false,
        discovered: discovered.clone(),
    };
    watcher
        .add_watch("/")
        .map_err(|source| DiscoverError::Watch { path: root.to_owned(), source })?;
    watcher.add_children("/", 0, false);
    std::thread::Builder::new()
        .name("cgroup-discovery".to_owned())
        .spawn(move || watcher.run())
        .map_err(DiscoverError::Thread)?;
    Ok(discovered)
}

fn join(parent: &str, name: &str) -> String {
    if parent == "/" { format!("/{name}") } else { format!("{parent}/{name}") }
}

impl Watcher {
    fn absolute(&self, relative: &str) -> PathBuf {
        self.root.join(relative.trim_start_matches('/'))
    }

    fn add_watch(&mut self, relative: &str) -> std::io::Result<()> {
        use std::os::fd::AsRawFd as _;

        if self.watches.len() >= self.max_watches {
            if !self.warned_full {
                log::warn!("watching {} cgroups, the bound; new cgroups under others are found by lookup only", self.max_watches);
                self.warned_full = true;
            }
            return Ok(());
        }
        let path = CString::new(self.absolute(relative).as_os_str().as_bytes())?;
        let mask = libc::IN_CREATE | libc::IN_ONLYDIR;
        // SAFETY: `path` is a valid C string for the duration of the call.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), path.as_ptr(), mask) };
        if wd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.watches.insert(wd, relative.to_owned());
        Ok(())
    }

    /// Watches the subdirectories of `relative`, recursively. Those created
    /// after the parent's watch and before their own are recorded too, when
    /// `record` is set, because no event will name them.
    fn add_children(&mut self, relative: &str, depth: usize, record: bool) {
        if depth >= MAX_DEPTH {
            return;
        }
        let Ok(entries) = std::fs::read_dir(self.absolute(relative)) else { return };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            let child = join(relative, &name);
            self.on_directory(&child, depth + 1, record);
        }
    }

    fn on_directory(&mut self, relative: &str, depth: usize, record: bool) {
        if record {
            if let Ok(metadata) = std::fs::metadata(self.absolute(relative)) {
                self.discovered.insert(metadata.ino(), relative);
            }
        }
        // A directory removed in between has nothing left to watch.
        if self.add_watch(relative).is_ok() {
            self.add_children(relative, depth, record);
        }
    }

    fn run(mut self) {
        use std::os::fd::AsRawFd as _;

        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: `buffer` is valid for writes of its length.
            let read = unsafe { libc::read(self.fd.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
            if read < 0 {
                let error = std::io::Error::last_os_error();
                if error.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("cgroup discovery stopped: reading inotify events failed: {error}");
                return;
            }
            self.handle_events(&buffer[..read as usize]);
        }
    }

    /// Parses a batch of `struct inotify_event` records.
    fn handle_events(&mut self, mut bytes: &[u8]) {
        const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
        while bytes.len() >= HEADER {
            // SAFETY: at least HEADER bytes remain, and read_unaligned copes
            // with any alignment of the buffer.
            let event: libc::inotify_event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
            let end = (HEADER + event.len as usize).min(bytes.len());
            let name_bytes = &bytes[HEADER..end];
            bytes = &bytes[end..];
            if event.mask & libc::IN_Q_OVERFLOW != 0 {
                log::warn!("cgroup discovery missed events: the inotify queue overflowed");
                continue;
            }
            if event.mask & libc::IN_IGNORED != 0 {
                self.watches.remove(&event.wd);
                continue;
            }
            if event.mask & libc::IN_CREATE == 0 || event.mask & libc::IN_ISDIR == 0 {
                continue;
            }
            let name = name_bytes.split(|&b| b == 0).next().unwrap_or_default();
            let (Some(parent), Ok(name)) = (self.watches.get(&event.wd), std::str::from_utf8(name)) else { continue };
            let child = join(parent, name);
            let depth = child.matches('/').count();
            self.on_directory(&child, depth, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_for(discovered: &Discovered, id: u64) -> Option<Arc<str>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(path) = discovered.get(id) {
                return Some(path);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    #[test]
    fn records_nested_directories_as_created() {
        let root = std::env::temp_dir().join(format!("agent-sensor-discover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("kubepods.slice")).unwrap();
        let discovered = start(&root, 100).unwrap();

        // Created in one go: the inner levels appear before their parents
        // are watched, so the scan after each new watch must find them.
        let leaf = root.join("kubepods.slice/kubepods-besteffort.slice/pod-a.slice/cri-containerd-x.scope");
        std::fs::create_dir_all(&leaf).unwrap();
        let id = std::fs::metadata(&leaf).unwrap().ino();
        let path = wait_for(&discovered, id);
        std::fs::remove_dir_all(&leaf).unwrap();
        assert_eq!(path.as_deref(), Some("/kubepods.slice/kubepods-besteffort.slice/pod-a.slice/cri-containerd-x.scope"));

        let pre_existing = std::fs::metadata(root.join("kubepods.slice")).unwrap().ino();
        assert_eq!(discovered.get(pre_existing), None, "directories present at start are left to the index");
        let _ = std::fs::remove_dir_all(&root);
    }
}
