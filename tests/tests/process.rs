//! Process identity against the real kernel: exec paths that are easy to
//! get wrong, command line bounds, pid namespaces, pid reuse and exits.

use std::{path::Path, process::Command};

use integration_tests::{
    argv, output_number, output_value, pid_namespace, records_for, require_sensor, run_workload, sha256_file,
    unique_marker, workload_binary, Sensor, TempDir,
};
use serde_json::Value;

/// A drain interval long enough, and a wakeup threshold high enough, that a
/// short-lived process has exited when the daemon handles its exec record,
/// as happens under load, so the tests below exercise that path every time.
const SLOW_DRAIN: &str = "[probes]\nring_buffer_bytes = 8388608\ndrain_interval_ms = 500\nwakeup_bytes = 4194304\n";

/// Waits for the exec record whose argv is exactly `expected`.
fn exec_with_argv(sensor: &Sensor, expected: &[&str]) -> Value {
    sensor.expect(&format!("exec of {expected:?}"), |r| r["kind"] == "process.exec" && argv(r) == expected)
}

/// Waits for the workload's own exec record: pid `pid`, running the workload binary.
fn workload_exec(sensor: &Sensor, pid: u64) -> Value {
    sensor.expect(&format!("the workload's exec (pid {pid})"), |r| {
        r["kind"] == "process.exec"
            && r["process"]["pid"] == pid
            && argv(r).first().is_some_and(|a| a.ends_with("/workload"))
    })
}

fn canonical(path: &str) -> String {
    std::fs::canonicalize(path).expect("canonicalize").to_string_lossy().into_owned()
}

/// Returns the size of a command line in the new image: each argument and its NUL.
fn argv_bytes(args: &[String]) -> u64 {
    args.iter().map(|a| a.len() as u64 + 1).sum()
}

/// Returns the argv the sensor should report when it copies the first
/// `bound` bytes of the NUL-separated command line.
fn argv_cut(args: &[String], bound: usize) -> Vec<String> {
    let mut bytes: Vec<u8> = Vec::new();
    for arg in args {
        bytes.extend_from_slice(arg.as_bytes());
        bytes.push(0);
    }
    bytes.truncate(bound);
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(&bytes);
    bytes.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}

#[test]
fn exec_exiting_at_once_has_exe() {
    require_sensor!();
    let sensor = Sensor::start(SLOW_DRAIN);
    let marker = unique_marker("exit-fast");
    let true_path = canonical("/bin/true");
    let true_sha = sha256_file(Path::new(&true_path));
    for i in 0..10 {
        let status = Command::new("/bin/true").arg(format!("{marker}-{i}")).status().expect("run /bin/true");
        assert!(status.success());
    }
    for i in 0..10 {
        let arg = format!("{marker}-{i}");
        let record = exec_with_argv(&sensor, &["/bin/true", &arg]);
        let process = &record["process"];
        assert_eq!(process["exe"], true_path.as_str(), "exe of run {i}: {record}");
        assert_eq!(process["exe_sha256"], true_sha.as_str(), "exe_sha256 of run {i}: {record}");
        assert_eq!(process["exec_path"], "/bin/true", "exec_path of run {i}: {record}");
        assert_eq!(process["argv_bytes"], 10 + arg.len() as u64 + 1, "argv_bytes of run {i}: {record}");
        assert!(process.get("argv_truncated").is_none(), "argv_truncated of run {i}: {record}");
        assert!(process.get("unknown").is_none(), "unknown fields of run {i}: {record}");
    }
}

#[test]
fn exec_relative_path_has_exe() {
    require_sensor!();
    let sensor = Sensor::start(SLOW_DRAIN);
    let marker = unique_marker("exit-relative");
    let true_path = canonical("/bin/true");
    let true_dir = Path::new(&true_path).parent().expect("directory of true");
    for i in 0..10 {
        let status = Command::new("./true")
            .arg(format!("{marker}-{i}"))
            .current_dir(true_dir)
            .status()
            .expect("run ./true");
        assert!(status.success());
    }
    for i in 0..10 {
        let arg = format!("{marker}-{i}");
        let record = exec_with_argv(&sensor, &["./true", &arg]);
        let process = &record["process"];
        assert_eq!(process["exec_path"], "./true", "the exec path is relative: {record}");
        assert_eq!(process["exe"], true_path.as_str(), "exe of run {i}: {record}");
        assert_eq!(process["exe_sha256"], sha256_file(Path::new(&true_path)).as_str(), "exe_sha256 of run {i}: {record}");
    }
}

#[test]
fn exec_script_exiting_at_once() {
    require_sensor!();
    let sensor = Sensor::start(SLOW_DRAIN);
    let dir = TempDir::new("script");
    let script = dir.path().join("quick.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").expect("write the script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod the script");
    let marker = unique_marker("script-fast");
    let status = Command::new(&script).arg(&marker).status().expect("run the script");
    assert!(status.success());

    let script_path = script.to_string_lossy().into_owned();
    // The kernel rewrites argv for a `#!` script: interpreter, script, arguments.
    let record = exec_with_argv(&sensor, &["/bin/sh", &script_path, &marker]);
    let process = &record["process"];
    assert_eq!(process["exec_path"], script_path.as_str(), "{record}");
    assert_eq!(process["exe"], canonical("/bin/sh").as_str(), "exe is the interpreter: {record}");
    assert_eq!(process["exe_sha256"], sha256_file(Path::new("/bin/sh")).as_str(), "{record}");
}

#[test]
fn exec_long_path_not_cut_silently() {
    require_sensor!();
    let sensor = Sensor::start("");
    // Deeper than the 256 bytes the kernel program copies of the exec path.
    let dir = TempDir::new("long-path");
    let mut deep = dir.path().to_path_buf();
    while deep.as_os_str().len() < 320 {
        deep.push("a-directory-name-of-some-length");
    }
    std::fs::create_dir_all(&deep).expect("create the deep directory");
    let program = deep.join("true");
    std::fs::copy("/bin/true", &program).expect("copy true");
    let marker = unique_marker("long-path");
    let status = Command::new(&program).arg(&marker).status().expect("run the copy of true");
    assert!(status.success());

    let program_path = program.to_string_lossy().into_owned();
    let record = exec_with_argv(&sensor, &[&program_path, &marker]);
    let process = &record["process"];
    let cut_marked = process.get("exec_path_truncated") == Some(&Value::Bool(true))
        || process["unknown"]["exec_path"].is_string();
    assert!(
        process["exec_path"] == program_path.as_str() || cut_marked,
        "exec_path is whole or marked cut; the path is {} bytes: {record}",
        program_path.len()
    );
}

#[test]
fn exec_from_non_leader_thread() {
    require_sensor!();
    let sensor = Sensor::start("");
    let marker = unique_marker("thread-exec");
    let output = run_workload(&["thread-exec", &marker]);
    let pid = output_number(&output, "pid");
    let tid = output_number(&output, "tid");
    assert_ne!(pid, tid, "the exec must come from a thread other than the leader");

    let record = exec_with_argv(&sensor, &["/bin/true", &marker]);
    let before = workload_exec(&sensor, pid);
    let process = &record["process"];
    assert_eq!(process["pid"], pid, "pid is the process, not the exec'ing thread: {record}");
    assert_eq!(process["ns_pid"], pid, "{record}");
    assert!(process.get("thread").is_none(), "after exec the thread is the leader: {record}");
    // Exact exe paths are checked by exec_exiting_at_once_has_exe; here it
    // is enough that exe is the new program's file, not the workload's.
    let exe = process["exe"].as_str().map(canonical);
    assert_eq!(exe, Some(canonical("/bin/true")), "{record}");
    assert_eq!(process["exe_sha256"], sha256_file(Path::new("/bin/true")).as_str(), "{record}");
    assert_eq!(process["ppid"], std::process::id(), "{record}");
    assert_eq!(process["start_time"], before["process"]["start_time"], "exec keeps the process's start time: {record}");
    assert_ne!(process["exec_id"], before["process"]["exec_id"], "a new image gets a new exec id: {record}");
    assert_eq!(process["parent_exec_id"], before["process"]["parent_exec_id"], "{record}");

    // The exec ends the other threads, the old leader among them, but the
    // process lives on, so its only exit is the new program's.
    let exit = sensor.expect("exit of /bin/true", |r| r["kind"] == "process.exit" && r["process"]["pid"] == pid);
    assert_eq!(exit["exit"]["code"], 0, "{exit}");
    assert_eq!(exit["process"]["exec_id"], process["exec_id"], "{exit}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let exits = records_for(&sensor.records(), "process.exit", pid as u32);
    assert_eq!(exits.len(), 1, "one exit record for the process: {exits:?}");
}

#[test]
fn execveat_empty_path_on_fd() {
    require_sensor!();
    let sensor = Sensor::start("");
    let marker = unique_marker("execveat");
    // sleep keeps the process alive long enough for /proc/PID/exe.
    let output = run_workload(&["execveat-fd", "/bin/sleep", &marker, "0.5"]);
    let pid = output_number(&output, "pid");
    let fd = output_number(&output, "fd");

    let record = exec_with_argv(&sensor, &[&marker, "0.5"]);
    let process = &record["process"];
    assert_eq!(process["pid"], pid, "{record}");
    assert_eq!(process["exec_path"], format!("/dev/fd/{fd}"), "{record}");
    assert_eq!(process["exe"], canonical("/bin/sleep").as_str(), "{record}");
    assert_eq!(process["exe_sha256"], sha256_file(Path::new("/bin/sleep")).as_str(), "{record}");
    assert!(process.get("fileless").is_none(), "a file on disk is not fileless: {record}");
}

#[test]
fn execveat_fd_exiting_at_once() {
    require_sensor!();
    let sensor = Sensor::start(SLOW_DRAIN);
    let marker = unique_marker("execveat-fast");
    let output = run_workload(&["execveat-fd", "/bin/true", &marker]);
    let fd = output_number(&output, "fd");

    let record = exec_with_argv(&sensor, &[&marker]);
    let process = &record["process"];
    assert_eq!(process["exec_path"], format!("/dev/fd/{fd}"), "{record}");
    assert_eq!(process["exe"], canonical("/bin/true").as_str(), "{record}");
    assert_eq!(process["exe_sha256"], sha256_file(Path::new("/bin/true")).as_str(), "{record}");
}

#[test]
fn memfd_exec_is_fileless() {
    require_sensor!();
    let sensor = Sensor::start("");
    let marker = unique_marker("memfd");
    let output = run_workload(&["memfd-exec", "/bin/sleep", &marker, "0.5"]);
    let pid = output_number(&output, "pid");
    let fd = output_number(&output, "fd");

    let record = exec_with_argv(&sensor, &[&marker, "0.5"]);
    let process = &record["process"];
    assert_eq!(process["pid"], pid, "{record}");
    assert_eq!(process["fileless"], true, "{record}");
    let exe = process["exe"].as_str().unwrap_or_default();
    assert!(exe.contains("memfd:workload-memfd"), "exe names the memfd: {record}");
    assert_eq!(process["exec_path"], format!("/dev/fd/{fd}"), "{record}");
    assert_eq!(process["exe_sha256"], sha256_file(Path::new("/bin/sleep")).as_str(), "the memfd holds sleep's bytes: {record}");
}

#[test]
fn memfd_exec_exiting_at_once() {
    require_sensor!();
    let sensor = Sensor::start(SLOW_DRAIN);
    let marker = unique_marker("memfd-fast");
    run_workload(&["memfd-exec", "/bin/true", &marker]);

    let record = exec_with_argv(&sensor, &[&marker]);
    let process = &record["process"];
    assert_eq!(process["fileless"], true, "{record}");
    let exe = process["exe"].as_str().unwrap_or_default();
    assert!(exe.contains("memfd:workload-memfd"), "exe names the memfd: {record}");
    // The memfd is gone with the process, so the hash may be unknowable.
    // Then the record must mark it unknown rather than leave it empty.
    let hash_known = process["exe_sha256"] == sha256_file(Path::new("/bin/true")).as_str();
    let hash_marked_unknown = process["exe_sha256"].is_null() && process["unknown"]["exe_sha256"].is_string();
    assert!(hash_known || hash_marked_unknown, "exe_sha256 is right or marked unknown: {record}");
}

#[test]
fn bash_script_20k_truncated() {
    require_sensor!();
    let sensor = Sensor::start("");
    let marker = unique_marker("script");
    let mut script = format!(": {marker}\n");
    while script.len() < 20 * 1024 {
        script.push_str("# padding line to make the script long enough to pass the argv bound\n");
    }
    script.push_str("exit 0\n");
    let child = Command::new("bash").arg("-c").arg(&script).spawn().expect("start bash");
    let pid = child.id();
    let status = child.wait_with_output().expect("wait for bash").status;
    assert!(status.success());

    let record = sensor.expect("bash exec", |r| {
        r["kind"] == "process.exec" && r["process"]["pid"] == pid && argv(r).first().is_some_and(|a| a == "bash")
    });
    let full: Vec<String> = vec!["bash".into(), "-c".into(), script.clone()];
    let process = &record["process"];
    assert_eq!(process["argv_truncated"], true, "{record}");
    assert_eq!(process["argv_bytes"], argv_bytes(&full), "argv_bytes is the full size: {record}");
    assert_eq!(argv(&record), argv_cut(&full, 4095), "argv is the first 4095 bytes: {record}");
}

#[test]
fn argv_5000_arguments_truncated() {
    require_sensor!();
    let sensor = Sensor::start("");
    let marker = unique_marker("many-args");
    let mut full: Vec<String> = vec!["/bin/true".into(), marker.clone()];
    full.extend((0..5000).map(|i| format!("arg{i}")));
    let status = Command::new(&full[0]).args(&full[1..]).status().expect("run /bin/true");
    assert!(status.success());

    let record = sensor.expect("exec with 5000 arguments", |r| {
        r["kind"] == "process.exec" && argv(r).get(1) == Some(&marker)
    });
    let process = &record["process"];
    assert_eq!(process["argv_truncated"], true, "{record}");
    assert_eq!(process["argv_bytes"], argv_bytes(&full), "argv_bytes is the full size: {record}");
    assert_eq!(argv(&record), argv_cut(&full, 4095), "argv is the first 4095 bytes: {record}");
}

/// Builds arguments for `/bin/true MARKER PAD` whose command line is `total` bytes.
fn argv_of_size(marker: &str, total: usize) -> Vec<String> {
    let fixed = "/bin/true".len() + 1 + marker.len() + 1 + 1;
    vec!["/bin/true".into(), marker.into(), "x".repeat(total - fixed)]
}

#[test]
fn argv_at_bound_is_whole() {
    require_sensor!();
    let sensor = Sensor::start("");
    let fits = argv_of_size(&unique_marker("argv-fits"), 4095);
    let over = argv_of_size(&unique_marker("argv-over"), 4097);
    for args in [&fits, &over] {
        let status = Command::new(&args[0]).args(&args[1..]).status().expect("run /bin/true");
        assert!(status.success());
    }

    let record = sensor.expect("exec of 4095 bytes", |r| r["kind"] == "process.exec" && argv(r).get(1) == Some(&fits[1]));
    assert_eq!(argv(&record), fits, "{record}");
    assert!(record["process"].get("argv_truncated").is_none(), "4095 bytes fit: {record}");
    assert_eq!(record["process"]["argv_bytes"], 4095, "{record}");

    let record = sensor.expect("exec of 4097 bytes", |r| r["kind"] == "process.exec" && argv(r).get(1) == Some(&over[1]));
    assert_eq!(argv(&record), argv_cut(&over, 4095), "{record}");
    assert_eq!(record["process"]["argv_truncated"], true, "{record}");
    assert_eq!(record["process"]["argv_bytes"], 4097, "{record}");
}

#[test]
fn argv_configured_bound() {
    require_sensor!();
    let sensor = Sensor::start("[probes]\nargv_max_bytes = 100\n");
    let args = argv_of_size(&unique_marker("argv-100"), 300);
    let status = Command::new(&args[0]).args(&args[1..]).status().expect("run /bin/true");
    assert!(status.success());

    let record = sensor.expect("exec of 300 bytes", |r| r["kind"] == "process.exec" && argv(r).get(1) == Some(&args[1]));
    assert_eq!(argv(&record), argv_cut(&args, 100), "{record}");
    assert_eq!(record["process"]["argv_truncated"], true, "{record}");
    assert_eq!(record["process"]["argv_bytes"], 300, "{record}");
}

#[test]
fn pid_namespace_init_and_child() {
    require_sensor!();
    let sensor = Sensor::start("");
    let marker = unique_marker("pidns");
    let output = run_workload(&["pidns", &marker]);
    let workload_pid = output_number(&output, "pid");
    let namespace = output_number(&output, "pidns");
    let child = output_number(&output, "child");
    let host_namespace = pid_namespace(std::process::id());
    assert_ne!(namespace, host_namespace, "the workload made a new pid namespace");

    let workload = workload_exec(&sensor, workload_pid);
    let init = exec_with_argv(&sensor, &["/bin/true", &format!("{marker}-init")]);
    let inner = exec_with_argv(&sensor, &["/bin/true", &format!("{marker}-inner")]);
    let child_fork = sensor.expect("fork of the namespace's init", |r| {
        r["kind"] == "process.fork" && r["process"]["pid"] == child
    });

    assert_eq!(workload["process"]["pid_ns"], host_namespace, "{workload}");
    assert_eq!(workload["process"]["ns_pid"], workload_pid, "{workload}");

    let process = &init["process"];
    assert_eq!(process["pid"], child, "host pid of the namespace's init: {init}");
    assert_eq!(process["ns_pid"], 1, "{init}");
    assert_eq!(process["pid_ns"], namespace, "{init}");
    assert_eq!(process["ppid"], workload_pid, "{init}");
    assert_eq!(process["parent_exec_id"], workload["process"]["exec_id"], "{init}");

    let process = &inner["process"];
    assert_ne!(process["pid"], 2, "pid is the host's: {inner}");
    assert_eq!(process["ns_pid"], 2, "{inner}");
    assert_eq!(process["pid_ns"], namespace, "{inner}");
    assert_eq!(process["ppid"], child, "{inner}");
    assert_eq!(process["parent_exec_id"], child_fork["process"]["exec_id"], "the parent had forked and not yet exec'd: {inner}");
    assert_eq!(process["ancestry"][1], workload["process"]["exec_id"], "{inner}");
}

#[test]
fn pid_namespace_fork_record() {
    require_sensor!();
    let sensor = Sensor::start("");
    let marker = unique_marker("pidns-fork");
    let output = run_workload(&["pidns", &marker]);
    let namespace = output_number(&output, "pidns");
    let child = output_number(&output, "child");

    let record = sensor.expect("fork of the namespace's init", |r| {
        r["kind"] == "process.fork" && r["process"]["pid"] == child
    });
    let process = &record["process"];
    // The child lives in the new namespace from its fork, so the record
    // must not claim its parent's namespace; leaving the fields out is fine.
    if !process["pid_ns"].is_null() {
        assert_eq!(process["pid_ns"], namespace, "{record}");
    }
    if !process["ns_pid"].is_null() {
        assert_eq!(process["ns_pid"], 1, "{record}");
    }
}

#[test]
fn pid_namespace_with_unshare() {
    require_sensor!();
    let sensor = Sensor::start("");
    let marker = unique_marker("unshare");
    let child = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "/bin/true", &marker])
        .spawn()
        .expect("start unshare");
    let unshare_pid = child.id();
    let status = child.wait_with_output().expect("wait for unshare").status;
    assert!(status.success(), "unshare failed: {status}");

    let unshare = sensor.expect("unshare's exec", |r| {
        r["kind"] == "process.exec" && r["process"]["pid"] == unshare_pid
    });
    let record = exec_with_argv(&sensor, &["/bin/true", &marker]);
    let process = &record["process"];
    assert_eq!(process["ns_pid"], 1, "{record}");
    assert_ne!(process["pid"], 1, "pid is the host's: {record}");
    assert_ne!(process["pid_ns"], pid_namespace(std::process::id()), "{record}");
    assert_eq!(process["ppid"], unshare_pid, "{record}");
    assert_eq!(process["parent_exec_id"], unshare["process"]["exec_id"], "{record}");
}

/// Runs the pid-reuse workload and checks that nothing of the first
/// process shows up in the records of the second, which has its pid.
fn check_pid_reuse(mode: &str) {
    let sensor = Sensor::start("");
    let marker = unique_marker(&format!("pid-reuse-{mode}"));
    let output = run_workload(&["pid-reuse", &marker, mode, "9"]);
    let workload_pid = output_number(&output, "pid");
    let old = output_number(&output, "old");
    let new = output_number(&output, "new");
    assert_eq!(old, new, "clone3 gave the second process the first one's pid");
    let same_tick = output_value(&output, "old_start_ticks") == output_value(&output, "new_start_ticks");
    assert_eq!(same_tick, mode == "same-tick", "start ticks in mode {mode}: {output}");

    let workload = workload_exec(&sensor, workload_pid);
    // The workload retries with a new first process when another process
    // takes the pid or the start ticks miss the mode, so only the first
    // process under the reused pid counts.
    let old_argv = [String::from("/bin/true"), format!("{marker}-old")];
    let old_exec = sensor.expect("the first process's exec under the reused pid", |r| {
        r["kind"] == "process.exec" && r["process"]["pid"] == old && argv(r) == old_argv
    });
    let new_exec = exec_with_argv(&sensor, &["/bin/true", &format!("{marker}-new")]);
    let new_connect = sensor.expect("connect under the recycled pid", |r| {
        r["kind"] == "net.connect" && r["process"]["pid"] == new && r["network"]["destination"]["port"] == 9
    });

    let process = &new_connect["process"];
    assert_eq!(process["origin"], "fork", "{new_connect}");
    assert_ne!(process["exec_id"], old_exec["process"]["exec_id"], "{new_connect}");
    assert!(process.get("argv").is_none(), "the old process's argv leaked: {new_connect}");
    assert_eq!(process["exe"], canonical(workload_binary().to_str().unwrap()).as_str(), "{new_connect}");
    assert_ne!(process["start_time"], old_exec["process"]["start_time"], "{new_connect}");
    assert_eq!(process["parent_exec_id"], workload["process"]["exec_id"], "{new_connect}");

    let process = &new_exec["process"];
    assert_eq!(process["pid"], old, "{new_exec}");
    assert_ne!(process["exec_id"], old_exec["process"]["exec_id"], "{new_exec}");
    assert_ne!(process["start_time"], old_exec["process"]["start_time"], "{new_exec}");
    assert_eq!(process["start_time"], new_connect["process"]["start_time"], "{new_exec}");
    assert_eq!(process["parent_exec_id"], workload["process"]["exec_id"], "{new_exec}");
}

#[test]
fn pid_reuse_later_tick() {
    require_sensor!();
    check_pid_reuse("later");
}

#[test]
fn pid_reuse_same_tick() {
    require_sensor!();
    check_pid_reuse("same-tick");
}

#[test]
fn exit_code_and_signal() {
    require_sensor!();
    let sensor = Sensor::start("");
    let code = Command::new(workload_binary()).args(["exit-code", "3"]).spawn().expect("start workload");
    let code_pid = code.id();
    let killed = Command::new(workload_binary()).args(["exit-signal", "9"]).spawn().expect("start workload");
    let killed_pid = killed.id();
    assert_eq!(code.wait_with_output().expect("wait").status.code(), Some(3));
    assert!(!killed.wait_with_output().expect("wait").status.success());

    let record = sensor.expect("exit with code 3", |r| r["kind"] == "process.exit" && r["process"]["pid"] == code_pid);
    assert_eq!(record["exit"]["code"], 3, "{record}");
    assert!(record["exit"]["signal"].is_null(), "{record}");

    let record = sensor.expect("exit on SIGKILL", |r| r["kind"] == "process.exit" && r["process"]["pid"] == killed_pid);
    assert_eq!(record["exit"]["signal"], 9, "{record}");
    assert!(record["exit"]["code"].is_null(), "{record}");
}

#[test]
fn exit_after_leader_thread() {
    require_sensor!();
    let sensor = Sensor::start("");
    let output = Command::new(workload_binary()).args(["leader-exits-first", "7"]).output().expect("run workload");
    assert_eq!(output.status.code(), Some(7), "the worker's exit_group code is the process's");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let pid = output_number(&stdout, "pid");
    let tid = output_number(&stdout, "tid");

    let record = sensor.expect("exit of the process", |r| r["kind"] == "process.exit" && r["process"]["pid"] == pid);
    assert_eq!(record["exit"]["code"], 7, "the code comes from the last thread, not the leader's exit(0): {record}");
    assert_eq!(record["process"]["thread"]["tid"], tid, "{record}");
    // Let any late duplicate arrive before counting.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let exits = records_for(&sensor.records(), "process.exit", pid as u32);
    assert_eq!(exits.len(), 1, "one exit record per process: {exits:?}");
}
