//! Real containers and cgroups for identity tests.
//!
//! [`Container`] runs a busybox container with Debian's `runc`, laid out as
//! a CRI runtime would lay it out: the bundle under a runtime root the test
//! owns and the cgroup at the path the kubelet would choose. [`CgroupDir`]
//! is a cgroup v2 directory for host processes. Both guards undo everything
//! on drop, failed tests included: the container is killed and deleted and
//! the cgroup directories the test created are removed from every
//! hierarchy (runc creates the path in each v1 hierarchy of a hybrid host).

use std::{
    io::Write as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::TempDir;

/// Why container tests cannot run here, or `None` when they can.
pub fn container_skip_reason() -> Option<String> {
    if let Some(reason) = crate::skip_reason() {
        return Some(reason);
    }
    if which("runc").is_none() {
        return Some("runc is not installed: `cargo xtask test` installs it (Debian package runc)".to_owned());
    }
    if busybox().is_none() {
        return Some("busybox is not installed: `cargo xtask test` installs it (Debian package busybox-static)".to_owned());
    }
    if cgroup2_root().is_none() {
        return Some("no cgroup2 file system is mounted".to_owned());
    }
    None
}

/// Skips the calling test, with the reason, when containers cannot run here.
#[macro_export]
macro_rules! require_containers {
    () => {
        if let Some(reason) = $crate::container::container_skip_reason() {
            eprintln!("skipped: {reason}");
            return;
        }
    };
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.exists())
}

/// Returns the statically linked busybox that the rootfs is made of.
fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"].into_iter().map(PathBuf::from).find(|p| p.exists())
}

/// Mount points of every cgroup hierarchy, v1 and v2.
fn cgroup_mounts() -> Vec<(PathBuf, bool)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fs_type = after.split_whitespace().next()?;
            let mount_point = before.split_whitespace().nth(4)?;
            matches!(fs_type, "cgroup" | "cgroup2").then(|| (PathBuf::from(mount_point), fs_type == "cgroup2"))
        })
        .collect()
}

/// Returns the cgroup2 mount: `/sys/fs/cgroup/unified` on hybrid hosts.
pub fn cgroup2_root() -> Option<PathBuf> {
    cgroup_mounts().into_iter().find(|(_, v2)| *v2).map(|(path, _)| path)
}

/// Returns a 64-digit hex id, unique per call, shaped like a container id.
pub fn random_container_id() -> String {
    let seed = crate::unique_marker("id");
    // Four rounds of splitmix64 over the marker's bytes.
    let mut state = seed.bytes().fold(0x9e37_79b9_7f4a_7c15u64, |acc, b| (acc ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let mut id = String::with_capacity(64);
    for _ in 0..4 {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        id.push_str(&format!("{:016x}", z ^ (z >> 31)));
    }
    id
}

/// Returns a random RFC 4122 version 4 pod UID.
pub fn random_pod_uid() -> String {
    let hex = random_container_id();
    format!("{}-{}-4{}-8{}-{}", &hex[0..8], &hex[8..12], &hex[13..16], &hex[17..20], &hex[20..32])
}

/// Removes `relative` and its parents, deepest first, from every cgroup
/// hierarchy. `rmdir` fails on a cgroup with processes or children, so a
/// parent another test still uses is left alone.
fn remove_cgroup_chain(relative: &str) {
    for (mount, _) in cgroup_mounts() {
        let mut path = relative.trim_matches('/').to_owned();
        while !path.is_empty() {
            let _ = std::fs::remove_dir(mount.join(&path));
            path = path.rsplit_once('/').map_or(String::new(), |(parent, _)| parent.to_owned());
        }
    }
}

/// A cgroup v2 directory created for the test, removed on drop.
pub struct CgroupDir {
    /// Path relative to the cgroup2 mount, starting with `/`.
    pub relative: String,
    pub path: PathBuf,
}

impl CgroupDir {
    pub fn create(relative: &str) -> CgroupDir {
        let root = cgroup2_root().expect("a cgroup2 mount");
        let path = root.join(relative.trim_start_matches('/'));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        CgroupDir { relative: relative.to_owned(), path }
    }

    /// Starts `program` with `args` inside this cgroup as `uid`/`gid`. The
    /// child joins the cgroup and drops privileges between fork and exec,
    /// so its exec is the first event in the cgroup.
    pub fn spawn_as(&self, uid: u32, gid: u32, program: &str, args: &[&str]) -> Child {
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.procs"))
            .unwrap_or_else(|e| panic!("opening {}/cgroup.procs: {e}", self.path.display()));
        use std::os::fd::AsRawFd as _;
        let fd = procs.as_raw_fd();
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        // SAFETY: the closure runs in the forked child before exec and only
        // makes async-signal-safe system calls on memory it owns.
        unsafe {
            command.pre_exec(move || {
                // Writing "0" moves the writing process.
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1
                    || libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap_or_else(|e| panic!("starting {program} in {}: {e}", self.relative));
        drop(procs);
        child
    }
}

impl Drop for CgroupDir {
    fn drop(&mut self) {
        // Children exit before the directory can go; wait briefly for them.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.path).is_err() && self.path.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        remove_cgroup_chain(&self.relative);
    }
}

/// Where a container's bundle goes, and the cgroup path its runtime uses.
pub struct ContainerLayout {
    /// The bundle directory: `config.json` goes here.
    pub bundle: PathBuf,
    /// The rootfs directory.
    pub rootfs: PathBuf,
    /// `linux.cgroupsPath`, relative to each hierarchy's root.
    pub cgroups_path: String,
}

/// A running runc container, killed, deleted and cleaned up on drop.
pub struct Container {
    pub id: String,
    state_root: PathBuf,
    cgroups_path: String,
    child: Option<Child>,
    /// Holds the bundle's runtime root, removed last.
    _scratch: TempDir,
}

impl Container {
    /// Writes an OCI bundle at `layout` with `annotations`, then runs
    /// `command` in it with runc. The container shares the host's network
    /// namespace, so it reaches the test's loopback listeners, and gets new
    /// pid, mount, ipc and uts namespaces.
    pub fn run(scratch: TempDir, id: &str, layout: &ContainerLayout, annotations: Value, command: &[&str]) -> Container {
        make_rootfs(&layout.rootfs);
        std::fs::create_dir_all(&layout.bundle).expect("create the bundle directory");
        let config = oci_config(&layout.rootfs, &layout.cgroups_path, annotations, command);
        std::fs::write(layout.bundle.join("config.json"), serde_json::to_vec_pretty(&config).unwrap()).expect("write config.json");
        let state_root = scratch.path().join("runc-state");
        let runc = which("runc").expect("runc");
        let child = Command::new(runc)
            .arg("--root")
            .arg(&state_root)
            .args(["run", "--bundle"])
            .arg(&layout.bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start runc");
        Container {
            id: id.to_owned(),
            state_root,
            cgroups_path: layout.cgroups_path.clone(),
            child: Some(child),
            _scratch: scratch,
        }
    }

    /// Waits for the container's command to finish and returns runc's
    /// output, failing the test when it does not succeed in time.
    pub fn wait(&mut self, timeout: Duration) -> String {
        let mut child = self.child.take().expect("the container runs");
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait().expect("wait for runc") {
                Some(_) => break,
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                None => {
                    let _ = child.kill();
                    panic!("container {} did not finish within {timeout:?}", self.id);
                }
            }
        }
        let output = child.wait_with_output().expect("collect runc's output");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "runc run {} failed with {}: {text}", self.id, output.status);
        text
    }

    fn runc(&self, args: &[&str]) {
        if let Some(runc) = which("runc") {
            let _ = Command::new(runc)
                .arg("--root")
                .arg(&self.state_root)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.runc(&["kill", &self.id, "KILL"]);
            let _ = child.kill();
            let _ = child.wait();
        }
        self.runc(&["delete", "--force", &self.id]);
        remove_cgroup_chain(&self.cgroups_path);
    }
}

/// Creates a busybox rootfs: the static binary and a link per applet used.
fn make_rootfs(rootfs: &Path) {
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).expect("create rootfs/bin");
    for dir in ["proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(dir)).expect("create a rootfs directory");
    }
    std::fs::copy(busybox().expect("busybox"), bin.join("busybox")).expect("copy busybox into the rootfs");
    for applet in ["sh", "true", "sleep", "nc", "cat", "echo"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("link a busybox applet");
    }
    let mut passwd = std::fs::File::create(rootfs.join("etc/passwd")).expect("create etc/passwd");
    writeln!(passwd, "root:x:0:0:root:/:/bin/sh").expect("write etc/passwd");
}

/// Builds a minimal OCI runtime spec, as `runc spec` writes it, for a
/// container that runs `command` as root with the host's network.
fn oci_config(rootfs: &Path, cgroups_path: &str, annotations: Value, command: &[&str]) -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": command,
            "env": ["PATH=/bin", "HOME=/"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps, "ambient": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": rootfs, "readonly": false},
        "hostname": "identity-test",
        "annotations": annotations,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}
        ],
        "linux": {
            "cgroupsPath": cgroups_path,
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// Returns the annotations containerd's CRI plugin writes into a bundle.
pub fn containerd_annotations(pod: &str, namespace: &str, pod_uid: &str, container: &str, image: &str) -> Value {
    json!({
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.sandbox-id": random_container_id(),
        "io.kubernetes.cri.sandbox-name": pod,
        "io.kubernetes.cri.sandbox-namespace": namespace,
        "io.kubernetes.cri.sandbox-uid": pod_uid,
        "io.kubernetes.cri.container-name": container,
        "io.kubernetes.cri.image-name": image,
    })
}

/// Returns the annotations CRI-O writes into a container's bundle.
pub fn crio_annotations(pod: &str, namespace: &str, pod_uid: &str, container: &str, image: &str) -> Value {
    json!({
        "io.kubernetes.cri-o.ContainerType": "container",
        "io.kubernetes.cri-o.SandboxID": random_container_id(),
        "io.kubernetes.pod.name": pod,
        "io.kubernetes.pod.namespace": namespace,
        "io.kubernetes.pod.uid": pod_uid,
        "io.kubernetes.container.name": container,
        "io.kubernetes.cri-o.ImageName": image,
    })
}
