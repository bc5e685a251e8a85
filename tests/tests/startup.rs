//! Start-up: processes that were running before the sensor, and hooks or
//! capabilities the sensor cannot run, which must show in the evidence.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{
    argv, pid_namespace, records_for, require_sensor, sha256_file, unique_marker, workload_binary, Sensor, TempDir,
    Workload,
};
use serde_json::Value;

fn workload_exe() -> String {
    std::fs::canonicalize(workload_binary()).expect("canonicalize the workload").to_string_lossy().into_owned()
}

fn snapshot_of(sensor: &Sensor, pid: u64) -> Value {
    sensor.expect(&format!("snapshot of pid {pid}"), |r| r["kind"] == "process.snapshot" && r["process"]["pid"] == pid)
}

#[test]
fn snapshot_has_lineage() {
    require_sensor!();
    let marker = unique_marker("snapshot");
    let mut workload = Workload::spawn(&["wait-fork-exec", &marker]);
    let pid = workload.number("pid");
    let sensor = Sensor::start("");

    let snapshot = snapshot_of(&sensor, pid);
    let test_process = snapshot_of(&sensor, std::process::id() as u64);
    let process = &snapshot["process"];
    assert_eq!(process["origin"], "procfs_scan", "{snapshot}");
    let expected_argv = [workload_binary().to_string_lossy().into_owned(), "wait-fork-exec".into(), marker.clone()];
    assert_eq!(argv(&snapshot), expected_argv, "{snapshot}");
    assert_eq!(process["exe"], workload_exe().as_str(), "{snapshot}");
    assert_eq!(process["exe_sha256"], sha256_file(Path::new(&workload_exe())).as_str(), "{snapshot}");
    assert_eq!(process["ppid"], std::process::id(), "{snapshot}");
    assert_eq!(process["parent_exec_id"], test_process["process"]["exec_id"], "{snapshot}");
    assert_eq!(process["ancestry"][0], test_process["process"]["exec_id"], "{snapshot}");
    assert_eq!(process["ns_pid"], pid, "{snapshot}");

    workload.resume();
    let child = workload.number("child");
    let exec = sensor.expect("the child's exec", |r| r["kind"] == "process.exec" && argv(r) == ["/bin/true", &marker]);
    let process = &exec["process"];
    assert_eq!(process["pid"], child, "{exec}");
    assert_eq!(process["ppid"], pid, "{exec}");
    assert_eq!(process["parent_exec_id"], snapshot["process"]["exec_id"], "the parent is the snapshot: {exec}");
    assert_eq!(process["ancestry"][0], snapshot["process"]["exec_id"], "{exec}");
    assert_eq!(process["ancestry"][1], test_process["process"]["exec_id"], "{exec}");
    let fork = sensor.expect("the child's fork", |r| r["kind"] == "process.fork" && r["process"]["pid"] == child);
    assert_eq!(fork["process"]["parent_exec_id"], snapshot["process"]["exec_id"], "{fork}");
    assert!(workload.finish().success());
}

#[test]
fn snapshot_process_connect() {
    require_sensor!();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen on loopback");
    let port = listener.local_addr().expect("listener address").port();
    let mut workload = Workload::spawn(&["wait-connect", "127.0.0.1", &port.to_string()]);
    let pid = workload.number("pid");
    let sensor = Sensor::start("");
    let snapshot = snapshot_of(&sensor, pid);

    workload.resume();
    assert_eq!(workload.number("errno"), 0, "the connect succeeded");
    let record = sensor.expect("connect from the running process", |r| {
        r["kind"] == "net.connect" && r["process"]["pid"] == pid && r["network"]["destination"]["port"] == port
    });
    let process = &record["process"];
    assert_eq!(process["exec_id"], snapshot["process"]["exec_id"], "the identity is the snapshot's: {record}");
    assert_eq!(process["origin"], "procfs_scan", "{record}");
    assert_eq!(process["argv"], snapshot["process"]["argv"], "{record}");
    assert_eq!(process["parent_exec_id"], snapshot["process"]["parent_exec_id"], "{record}");
    assert!(process.get("unknown").is_none(), "nothing is unknown about a scanned process: {record}");
    assert!(workload.finish().success());
}

#[test]
fn snapshot_has_pid_namespace() {
    require_sensor!();
    let unshare = KillOnDrop(
        Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "/bin/sleep", "30"])
            .stdin(Stdio::null())
            .spawn()
            .expect("start unshare"),
    );
    let unshare_pid = unshare.0.id();
    let sleep_pid = first_child(unshare_pid);
    let namespace = pid_namespace(sleep_pid);
    let sensor = Sensor::start("");

    let snapshot = snapshot_of(&sensor, sleep_pid as u64);
    let process = &snapshot["process"];
    assert_eq!(process["ppid"], unshare_pid, "{snapshot}");
    assert_eq!(process["ns_pid"], 1, "{snapshot}");
    assert_eq!(process["pid_ns"], namespace, "{snapshot}");
    assert_eq!(argv(&snapshot), ["/bin/sleep", "30"], "{snapshot}");
}

/// Kills a child on drop. `unshare --kill-child` then kills its own child.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits up to five seconds for `pid` to have a child, and returns it.
fn first_child(pid: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if let Some(child) = children.split_whitespace().next() {
            let child: u32 = child.parse().expect("child pid");
            // The child has exec'd once its command line is the new image's.
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            if cmdline.starts_with(b"/bin/sleep\0") {
                return child;
            }
        }
        assert!(Instant::now() < deadline, "pid {pid} started no child");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Collects the sensor.degraded records and the sensor.start record.
fn degraded(sensor: &Sensor) -> (Vec<Value>, Value) {
    let start = sensor.expect("sensor.start", |r| r["kind"] == "sensor.start");
    // Degraded records follow the start record before any event.
    sensor.wait_for_within(Duration::from_millis(500), |_| false);
    let records: Vec<Value> = sensor.records().into_iter().filter(|r| r["kind"] == "sensor.degraded").collect();
    (records, start)
}

/// A tracefs path under /dev/null cannot be created, so it cannot be mounted.
const NO_TRACEFS: &str = "[probes]\ntracefs_path = \"/dev/null/tracefs\"\n";

#[test]
fn tracefs_unmountable_degraded() {
    require_sensor!();
    let sensor = Sensor::start(NO_TRACEFS);
    let (records, start) = degraded(&sensor);
    let tracefs = records.iter().find(|r| r["sensor"]["hook"] == "tracefs");
    let tracefs = tracefs.unwrap_or_else(|| panic!("no sensor.degraded record for tracefs: {records:?}"));
    let reason = tracefs["sensor"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("/dev/null/tracefs"), "the reason names the path: {tracefs}");
    let listed = start["sensor"]["hooks"]["degraded"].as_array().cloned().unwrap_or_default();
    assert!(listed.iter().any(|d| d["hook"] == "tracefs"), "sensor.start lists it too: {start}");

    let marker = unique_marker("no-tracefs");
    assert!(Command::new("/bin/true").arg(&marker).status().expect("run /bin/true").success());
    sensor.expect("an exec while degraded", |r| r["kind"] == "process.exec" && argv(r) == ["/bin/true", &marker]);
}

#[test]
fn tracefs_degraded_reason_matches_hooks() {
    require_sensor!();
    let sensor = Sensor::start(NO_TRACEFS);
    let (records, start) = degraded(&sensor);
    let tracefs = records.iter().find(|r| r["sensor"]["hook"] == "tracefs").expect("a tracefs degraded record");
    let reason = tracefs["sensor"]["reason"].as_str().unwrap_or_default();
    let attached = start["sensor"]["hooks"]["attached"].as_array().cloned().unwrap_or_default();
    let exec_attached = attached.iter().any(|h| h.as_str().is_some_and(|h| h.starts_with("sched_process_exec")));
    // The record is evidence, so it must not claim hooks are down that run.
    assert!(
        !(exec_attached && reason.contains("cannot attach")),
        "the degraded reason says tracepoints cannot attach, yet sensor.start lists them attached: {tracefs}\nattached: {attached:?}"
    );
}

#[test]
fn exit_group_dead_unknown_degraded() {
    require_sensor!();
    // Without tracefs the daemon cannot read sched_process_exit's format, so
    // it cannot find `group_dead` and falls back to leader-only exits.
    let sensor = Sensor::start(NO_TRACEFS);
    let (records, _) = degraded(&sensor);
    let exit = records.iter().find(|r| r["sensor"]["hook"].as_str().is_some_and(|h| h.contains("exit")));
    assert!(exit.is_some(), "no sensor.degraded record says how exits are now reported: {records:?}");
}

/// Copies the kernel's BTF with one member name renamed, so the offsets
/// that depend on it cannot be resolved.
fn btf_without(dir: &TempDir, member: &str) -> String {
    let mut bytes = std::fs::read("/sys/kernel/btf/vmlinux").expect("read the kernel's BTF");
    let needle: Vec<u8> = [b"\0", member.as_bytes(), b"\0"].concat();
    let positions: Vec<usize> = bytes.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle).map(|(i, _)| i).collect();
    assert_eq!(positions.len(), 1, "{member} is one string in the BTF string section");
    // Same length, so every other string offset stays valid.
    bytes[positions[0] + member.len()] = b'X';
    let path = dir.path().join("vmlinux");
    std::fs::write(&path, &bytes).expect("write the patched BTF");
    path.to_string_lossy().into_owned()
}

#[test]
fn btf_without_argv_fields() {
    require_sensor!();
    let dir = TempDir::new("btf-argv");
    let btf = btf_without(&dir, "arg_start");
    let sensor = Sensor::start(&format!("[probes]\nbtf_path = \"{btf}\"\n"));
    let (records, _) = degraded(&sensor);
    let record = records.iter().find(|r| r["sensor"]["hook"] == "exec.argv_and_exe");
    let record = record.unwrap_or_else(|| panic!("no sensor.degraded record for argv capture: {records:?}"));
    assert!(record["sensor"]["reason"].as_str().unwrap_or_default().contains("arg_start"), "{record}");

    let child = Command::new("/bin/sleep").arg("0.3").spawn().expect("run sleep");
    let pid = child.id();
    assert!(child.wait_with_output().expect("wait for sleep").status.success());
    let exec = sensor.expect("exec without argv capture", |r| r["kind"] == "process.exec" && r["process"]["pid"] == pid);
    let process = &exec["process"];
    assert!(process.get("argv").is_none(), "argv is not claimed: {exec}");
    assert!(process["unknown"]["argv"].is_string(), "argv is marked unknown with a reason: {exec}");
    assert!(process.get("argv_bytes").is_none(), "an unread command line has no size: {exec}");
    assert!(process.get("argv_truncated").is_none(), "{exec}");
}

#[test]
fn btf_without_pid_namespace_fields() {
    require_sensor!();
    let dir = TempDir::new("btf-pidns");
    let btf = btf_without(&dir, "thread_pid");
    let sensor = Sensor::start(&format!("[probes]\nbtf_path = \"{btf}\"\n"));
    let (records, _) = degraded(&sensor);
    let record = records.iter().find(|r| r["sensor"]["hook"] == "process.pid_namespace");
    assert!(record.is_some(), "no sensor.degraded record for pid namespaces: {records:?}");

    let marker = unique_marker("no-pidns");
    assert!(Command::new("/bin/true").arg(&marker).status().expect("run /bin/true").success());
    let exec = sensor.expect("exec without pid namespace", |r| r["kind"] == "process.exec" && argv(r) == ["/bin/true", &marker]);
    let process = &exec["process"];
    assert!(process.get("ns_pid").is_none(), "{exec}");
    assert!(process.get("pid_ns").is_none(), "{exec}");
    assert!(process["unknown"]["ns_pid"].is_string(), "ns_pid is marked unknown with a reason: {exec}");
}

#[test]
fn snapshot_records_only_at_start() {
    require_sensor!();
    let sensor = Sensor::start("");
    let start = sensor.expect("sensor.start", |r| r["kind"] == "sensor.start");
    let scanned = start["sensor"]["processes_scanned"].as_u64().expect("processes_scanned");
    let marker = unique_marker("after-start");
    assert!(Command::new("/bin/true").arg(&marker).status().expect("run /bin/true").success());
    sensor.expect("an exec after start", |r| r["kind"] == "process.exec" && argv(r) == ["/bin/true", &marker]);
    let records = sensor.records();
    let snapshots = records.iter().filter(|r| r["kind"] == "process.snapshot").count() as u64;
    assert_eq!(snapshots, scanned, "one snapshot per scanned process: {start}");
    let own = records_for(&records, "process.snapshot", std::process::id());
    assert_eq!(own.len(), 1, "the test process has one snapshot: {own:?}");
}

/// Start-up reads the kernel's BTF and the symbol tables of libssl and
/// Node.js, the largest allocations the sensor makes. Its resident peak
/// must stay within the 40 MB budget of one node's sensor.
#[test]
fn startup_peak_within_budget() {
    require_sensor!();
    let sensor = Sensor::start("");
    sensor.expect("sensor.start", |r| r["kind"] == "sensor.start");
    if Path::new("/usr/bin/node").exists() {
        sensor.expect("Node.js hooked", |r| r["kind"] == "sensor.tls_hooked" && r["sensor"]["path"] == "/usr/bin/node");
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", sensor.pid())).expect("read the sensor's status");
    let peak_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .expect("VmHWM in the status");
    assert!(peak_kib * 1024 <= 40_000_000, "start-up peak {peak_kib} KiB is over 40 MB");
}
