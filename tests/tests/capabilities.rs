//! Least privilege, measured: the daemon runs under `capsh` with only the
//! capabilities the deployment manifests grant, and each one removed makes
//! it fail or degrade with a message that names the capability.
//!
//! The root runs shrink the bounding set, so uid 0 keeps only the listed
//! capabilities across the exec, as in a container whose manifest drops
//! ALL and adds the list. The non-root run uses ambient capabilities, as
//! the systemd unit's alternative with `User=` would.

use std::{
    os::unix::fs::{chown, PermissionsExt},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use integration_tests::{argv, require_sensor, sensor_binary, unique_marker, Sensor, TempDir};
use serde_json::Value;

/// What the DaemonSet and the systemd unit grant (see deploy/README.md).
const DOCUMENTED: &[&str] = &["cap_bpf", "cap_perfmon", "cap_sys_ptrace"];

/// What a non-root uid needs on top: tracefs is mode 0700, owned by root.
const NON_ROOT_EXTRA: &str = "cap_dac_read_search";

const NOBODY: u32 = 65534;

/// Returns why capsh cannot run here, or `None` when it can.
fn capsh_skip_reason() -> Option<String> {
    match Command::new("capsh").arg("--print").output() {
        Ok(output) if output.status.success() => None,
        _ => Some("capsh not found: install Debian's libcap2-bin (`cargo xtask setup` does)".to_owned()),
    }
}

macro_rules! require_capsh {
    () => {
        require_sensor!();
        if let Some(reason) = capsh_skip_reason() {
            eprintln!("skipped: {reason}");
            return;
        }
    };
}

/// Returns the capabilities in this process's bounding set, as capsh names them.
fn bounding_set() -> Vec<String> {
    let output = Command::new("capsh").arg("--print").output().expect("run capsh --print");
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix("Bounding set ="))
        .unwrap_or_else(|| panic!("capsh --print shows no bounding set:\n{text}"));
    line.split(',').map(str::trim).filter(|name| !name.is_empty()).map(str::to_owned).collect()
}

/// Returns the bounding-set capabilities not in `keep`, comma-separated.
fn drop_list(keep: &[&str]) -> String {
    bounding_set().into_iter().filter(|name| !keep.contains(&name.as_str())).collect::<Vec<_>>().join(",")
}

/// bash's `-c` script that replaces the shell with the appended command.
const EXEC_ARGUMENTS: &str = "exec \"$0\" \"$@\"";

/// Builds a launcher that runs the daemon as root with only `keep` in its
/// bounding set, so only `keep` survives into its effective set.
fn root_launcher(keep: &[&str]) -> Vec<String> {
    vec!["capsh".into(), format!("--drop={}", drop_list(keep)), "--".into(), "-c".into(), EXEC_ARGUMENTS.into()]
}

/// Builds a launcher that runs the daemon as `nobody` with `keep` as ambient
/// capabilities, and everything else dropped from the bounding set except
/// what capsh itself needs to change user.
fn non_root_launcher(keep: &[&str]) -> Vec<String> {
    let keep_list = keep.join(",");
    let mut kept_by_capsh = keep.to_vec();
    kept_by_capsh.extend(["cap_setpcap", "cap_setuid", "cap_setgid"]);
    vec![
        "capsh".into(),
        format!("--drop={}", drop_list(&kept_by_capsh)),
        format!("--caps={keep_list}+eip cap_setpcap,cap_setuid,cap_setgid+ep"),
        "--keep=1".into(),
        "--user=nobody".into(),
        format!("--addamb={keep_list}"),
        "--".into(),
        "-c".into(),
        EXEC_ARGUMENTS.into(),
    ]
}

/// Returns the CapEff mask of capabilities named as capsh names them.
fn mask_of(names: &[&str]) -> u64 {
    names
        .iter()
        .map(|name| match *name {
            "cap_dac_read_search" => 1u64 << 2,
            "cap_sys_ptrace" => 1 << 19,
            "cap_perfmon" => 1 << 38,
            "cap_bpf" => 1 << 39,
            other => panic!("no bit known for {other}"),
        })
        .fold(0, |mask, bit| mask | bit)
}

/// Reads a `/proc/PID/status` field such as `CapEff` or `Uid`.
fn status_field(pid: u64, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read the daemon's status");
    let prefix = format!("{field}:");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {field} line in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

fn start_record(sensor: &Sensor) -> Value {
    sensor.expect("sensor.start", |r| r["kind"] == "sensor.start")
}

/// A `sleep` owned by nobody, started before the sensor so that the
/// sensor finds it in its /proc scan. Killed on drop.
struct OtherUsersProcess(Child);

impl OtherUsersProcess {
    fn start() -> OtherUsersProcess {
        let child = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", "sleep", "120"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start sleep as nobody with setpriv");
        // The scan must find sleep, not setpriv, at this pid.
        let comm = format!("/proc/{}/comm", child.id());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&comm).map(|name| name.trim() != "sleep").unwrap_or(true) {
            assert!(std::time::Instant::now() < deadline, "setpriv did not exec sleep within 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        OtherUsersProcess(child)
    }

    fn pid(&self) -> u64 {
        u64::from(self.0.id())
    }
}

impl Drop for OtherUsersProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `/bin/true MARKER` and returns the exec record the sensor made.
fn expect_exec(sensor: &Sensor) -> Value {
    let marker = unique_marker("caps");
    let status = Command::new("/bin/true").arg(&marker).status().expect("run /bin/true");
    assert!(status.success());
    sensor.expect("the exec of /bin/true", |r| r["kind"] == "process.exec" && argv(r) == ["/bin/true", &marker])
}

fn capability_degradations(start: &Value) -> Vec<Value> {
    let degraded = start["sensor"]["hooks"]["degraded"].as_array().cloned().unwrap_or_default();
    degraded.into_iter().filter(|d| d["hook"].as_str().is_some_and(|h| h.starts_with("capability."))).collect()
}

#[test]
fn documented_set_records_exec() {
    require_capsh!();
    let other = OtherUsersProcess::start();
    let sensor = Sensor::try_start_via(&root_launcher(DOCUMENTED), "").unwrap_or_else(|error| panic!("{error}"));
    let start = start_record(&sensor);
    let daemon = start["sensor"]["pid"].as_u64().expect("sensor.start has the daemon's pid");

    let effective = u64::from_str_radix(&status_field(daemon, "CapEff"), 16).expect("CapEff is hex");
    assert_eq!(effective, mask_of(DOCUMENTED), "the daemon runs with exactly the documented set: {effective:x}");
    assert_eq!(status_field(daemon, "Uid").split_whitespace().next(), Some("0"));
    assert_eq!(capability_degradations(&start), Vec::<Value>::new(), "nothing is missing: {start}");
    let hooks = &start["sensor"]["hooks"];
    assert!(
        hooks["attached"].as_array().is_some_and(|a| a.iter().any(|h| h == "sched_process_exec:sched/sched_process_exec")),
        "the exec hook is attached: {hooks}"
    );

    let exec = expect_exec(&sensor);
    assert_eq!(exec["process"]["exe"], "/usr/bin/true", "{exec}");
    assert!(exec["process"]["exe_sha256"].is_string(), "{exec}");

    // CAP_SYS_PTRACE is what lets uid 0 read another user's /proc/PID/exe.
    let pid = other.pid();
    let snapshot = sensor.expect("the snapshot of nobody's sleep", |r| {
        r["kind"] == "process.snapshot" && r["process"]["pid"] == pid
    });
    assert_eq!(snapshot["process"]["uid"], NOBODY, "{snapshot}");
    assert_eq!(snapshot["process"]["exe"], "/usr/bin/sleep", "{snapshot}");
    assert!(snapshot["process"]["exe_sha256"].is_string(), "{snapshot}");
}

/// Runs the daemon without `missing` and returns its stderr, failing the
/// test if it is still running after 30 seconds.
fn start_error_without(missing: &str) -> String {
    let keep: Vec<&str> = DOCUMENTED.iter().copied().filter(|name| *name != missing).collect();
    let dir = TempDir::new("caps-missing");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, format!("[output]\nstdout = false\nevidence_path = \"{}\"\n", dir.path().join("evidence.jsonl").display()))
        .expect("write the configuration");
    let launcher = root_launcher(&keep);
    let mut child = Command::new(&launcher[0])
        .args(&launcher[1..])
        .arg(sensor_binary().expect("agent-sensor binary"))
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run agent-sensor under capsh");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait for agent-sensor").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("collect stderr");
            panic!("the daemon kept running without {missing}; stderr:\n{}", String::from_utf8_lossy(&output.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("collect stderr");
    assert!(!output.status.success(), "exit status is a failure");
    assert_ne!(output.status.code(), Some(101), "exit code 101 means a panic");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn error_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|line| line.starts_with("error:")).collect()
}

#[test]
fn without_bpf_fails_naming_it() {
    require_capsh!();
    let stderr = start_error_without("cap_bpf");
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    assert!(errors[0].contains("missing capability CAP_BPF"), "{}", errors[0]);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn without_perfmon_fails_naming_it() {
    require_capsh!();
    let stderr = start_error_without("cap_perfmon");
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    assert!(errors[0].contains("missing capability CAP_PERFMON"), "{}", errors[0]);
    assert!(!errors[0].contains("CAP_BPF and"), "CAP_BPF is present, so it is not blamed: {}", errors[0]);
}

#[test]
fn without_ptrace_degrades_naming_it() {
    require_capsh!();
    let other = OtherUsersProcess::start();
    let keep = ["cap_bpf", "cap_perfmon"];
    let sensor = Sensor::try_start_via(&root_launcher(&keep), "").unwrap_or_else(|error| panic!("{error}"));
    let start = start_record(&sensor);

    let missing = capability_degradations(&start);
    assert_eq!(missing.len(), 1, "{start}");
    assert_eq!(missing[0]["hook"], "capability.CAP_SYS_PTRACE", "{start}");
    sensor.expect("sensor.degraded for CAP_SYS_PTRACE", |r| {
        r["kind"] == "sensor.degraded" && r["sensor"]["hook"] == "capability.CAP_SYS_PTRACE"
    });

    let pid = other.pid();
    let snapshot = sensor.expect("the snapshot of nobody's sleep", |r| {
        r["kind"] == "process.snapshot" && r["process"]["pid"] == pid
    });
    assert!(snapshot["process"]["exe"].is_null(), "{snapshot}");
    let reason = snapshot["process"]["unknown"]["exe_sha256"].as_str().unwrap_or_default();
    assert!(reason.contains("CAP_SYS_PTRACE"), "the unknown hash names the capability: {snapshot}");

    // Processes of the daemon's own uid still resolve without it.
    let exec = expect_exec(&sensor);
    assert!(exec["process"]["exe_sha256"].is_string(), "{exec}");
}

#[test]
fn non_root_with_ambient_caps() {
    require_capsh!();
    // Files the nobody user must reach: a copy of the binary, the config
    // the harness writes (read through CAP_DAC_READ_SEARCH) and a
    // directory it owns for the evidence and the fingerprint key.
    let scratch = TempDir::new("caps-nonroot");
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod scratch");
    let binary = scratch.path().join("agent-sensor");
    std::fs::copy(sensor_binary().expect("agent-sensor binary"), &binary).expect("copy agent-sensor");
    let state = scratch.path().join("state");
    std::fs::create_dir(&state).expect("create the state directory");
    chown(&state, Some(NOBODY), Some(NOBODY)).expect("chown the state directory to nobody");
    let config = config_in(&state);

    let mut keep = DOCUMENTED.to_vec();
    keep.push(NON_ROOT_EXTRA);
    let mut launcher = non_root_launcher(&keep);
    // The harness appends the sensor binary from AGENT_SENSOR_BIN, which
    // nobody may not be able to execute, so the copy replaces it.
    let script = format!("exec {} \"$@\"", binary.display());
    *launcher.last_mut().expect("launcher ends with the script") = script;
    let sensor = Sensor::try_start_via(&launcher, &config).unwrap_or_else(|error| panic!("{error}"));
    let start = start_record(&sensor);
    let daemon = start["sensor"]["pid"].as_u64().expect("sensor.start has the daemon's pid");

    assert_eq!(status_field(daemon, "Uid").split_whitespace().next(), Some("65534"));
    let effective = u64::from_str_radix(&status_field(daemon, "CapEff"), 16).expect("CapEff is hex");
    assert_eq!(effective, mask_of(&keep), "{effective:x}");
    let degraded = start["sensor"]["hooks"]["degraded"].as_array().cloned().unwrap_or_default();
    assert!(degraded.is_empty(), "every hook attached as nobody: {start}");
    let exec = expect_exec(&sensor);
    assert!(exec["process"]["exe_sha256"].is_string(), "{exec}");
}

fn config_in(state: &Path) -> String {
    format!(
        "[output]\nevidence_path = \"{}\"\n[llm]\nfingerprint_key_path = \"{}\"\n",
        state.join("evidence.jsonl").display(),
        state.join("fingerprint.key").display()
    )
}

#[test]
fn non_root_without_dac_read_search() {
    require_capsh!();
    let scratch = TempDir::new("caps-nonroot-nodac");
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod scratch");
    let binary = scratch.path().join("agent-sensor");
    std::fs::copy(sensor_binary().expect("agent-sensor binary"), &binary).expect("copy agent-sensor");
    let state = scratch.path().join("state");
    std::fs::create_dir(&state).expect("create the state directory");
    chown(&state, Some(NOBODY), Some(NOBODY)).expect("chown the state directory to nobody");
    // Without CAP_DAC_READ_SEARCH nobody cannot read the harness's config
    // either, so it is placed where nobody can read it.
    let config = state.join("config.toml");
    std::fs::write(&config, config_in(&state)).expect("write the configuration");
    chown(&config, Some(NOBODY), Some(NOBODY)).expect("chown the configuration");

    let mut launcher = non_root_launcher(DOCUMENTED);
    let script = format!("exec {} run --config {}", binary.display(), config.display());
    *launcher.last_mut().expect("launcher ends with the script") = script;
    // The harness appends `BINARY run --config ITS_FILE`; the script ignores
    // those arguments and runs the copy on the readable configuration.
    let sensor = Sensor::try_start_via(&launcher, "").unwrap_or_else(|error| panic!("{error}"));
    let start = start_record(&sensor);
    let degraded = start["sensor"]["hooks"]["degraded"].as_array().cloned().unwrap_or_default();
    let exec_hook = degraded
        .iter()
        .find(|d| d["hook"] == "sched_process_exec:sched/sched_process_exec")
        .unwrap_or_else(|| panic!("the exec tracepoint cannot attach without reading tracefs: {start}"));
    let reason = exec_hook["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("CAP_DAC_READ_SEARCH"), "the reason names the capability: {reason}");
}
