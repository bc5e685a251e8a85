//! Failures before the sensor runs: a malformed configuration, a missing
//! BTF file and a refused BPF load each end with one `error:` line that
//! names the cause, and a non-zero exit, never a panic.

use std::{
    os::unix::fs::PermissionsExt,
    process::{Command, Output},
};

use integration_tests::{require_binary, require_sensor, sensor_binary, TempDir};

/// Exit code of a Rust program that panicked.
const PANIC_EXIT_CODE: i32 = 101;

fn write_config(dir: &TempDir, text: &str) -> String {
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).expect("write the configuration");
    path.to_string_lossy().into_owned()
}

fn agent_sensor(args: &[&str]) -> Output {
    let binary = sensor_binary().expect("agent-sensor binary");
    Command::new(binary).args(args).output().expect("run agent-sensor")
}

/// Checks the failure shape every start-up error must have, and returns
/// the single `error:` line.
fn single_error_line(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let code = output.status.code();
    assert!(!output.status.success(), "exit status is a failure; stderr:\n{stderr}");
    assert_ne!(code, Some(PANIC_EXIT_CODE), "exit code 101 means a panic; stderr:\n{stderr}");
    assert!(code.is_some(), "ended by a signal, not an exit; stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "no panic; stderr:\n{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|line| line.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "exactly one `error:` line; stderr:\n{stderr}");
    errors[0].to_owned()
}

/// Runs `check-config` on `text` and returns the output and the file's path.
fn check_config(text: &str) -> (Output, String) {
    let dir = TempDir::new("config");
    let path = write_config(&dir, text);
    (agent_sensor(&["check-config", &path]), path)
}

#[test]
fn check_config_unknown_key() {
    require_binary!();
    let (output, path) = check_config("[probes]\nargv_max_bytes = 100\nring_bufer_bytes = 4096\n");
    let error = single_error_line(&output);
    assert_eq!(output.status.code(), Some(2), "{error}");
    assert!(error.contains(&path), "names the file: {error}");
    assert!(error.contains("line 3"), "names the line: {error}");
    assert!(error.contains("ring_bufer_bytes"), "names the key: {error}");
}

#[test]
fn check_config_wrong_type() {
    require_binary!();
    let (output, _) = check_config("[output]\n\nstdout = \"yes\"\n");
    let error = single_error_line(&output);
    assert_eq!(output.status.code(), Some(2), "{error}");
    assert!(error.contains("line 3"), "names the line: {error}");
    assert!(error.contains("stdout"), "names the key, not only its value: {error}");
}

#[test]
fn check_config_out_of_range() {
    require_binary!();
    let (output, _) = check_config("[probes]\nring_buffer_bytes = 5000\nwakeup_bytes = 1024\n");
    let error = single_error_line(&output);
    assert_eq!(output.status.code(), Some(2), "{error}");
    assert!(error.contains("line 2: probes.ring_buffer_bytes"), "names the line and key: {error}");
    assert!(error.contains("5000"), "shows the value: {error}");
}

#[test]
fn check_config_missing_value() {
    require_binary!();
    let (output, _) = check_config("[probes]\nargv_max_bytes = \n");
    let error = single_error_line(&output);
    assert_eq!(output.status.code(), Some(2), "{error}");
    assert!(error.contains("line 2"), "names the line: {error}");
    assert!(error.contains("argv_max_bytes"), "names the key: {error}");
}

#[test]
fn check_config_valid() {
    require_binary!();
    let (output, path) = check_config("[probes]\nargv_max_bytes = 100\n");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "stderr:\n{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(stdout.trim(), format!("{path}: valid"));
}

#[test]
fn run_rejects_bad_config() {
    require_binary!();
    let dir = TempDir::new("config-run");
    let evidence = dir.path().join("evidence.jsonl");
    let text = format!("[output]\nevidence_path = \"{}\"\n[probes]\nring_bufer_bytes = 4096\n", evidence.display());
    let path = write_config(&dir, &text);
    let output = agent_sensor(&["run", "--config", &path]);
    let error = single_error_line(&output);
    assert_eq!(output.status.code(), Some(2), "{error}");
    assert!(error.contains("line 4"), "names the line: {error}");
    assert!(error.contains("ring_bufer_bytes"), "names the key: {error}");
    assert!(output.stdout.is_empty(), "no records before the configuration is valid");
    assert!(!evidence.exists(), "no evidence file before the configuration is valid");
}

#[test]
fn run_missing_btf() {
    require_sensor!();
    let dir = TempDir::new("no-btf");
    let evidence = dir.path().join("evidence.jsonl");
    let text = format!("[probes]\nbtf_path = \"/nonexistent\"\n[output]\nevidence_path = \"{}\"\n", evidence.display());
    let path = write_config(&dir, &text);
    let output = agent_sensor(&["run", "--config", &path]);
    let error = single_error_line(&output);
    assert!(error.contains("/nonexistent"), "names the missing file: {error}");
    assert!(error.contains("BTF"), "says what the file is for: {error}");
    assert!(output.stdout.is_empty(), "no records from a sensor that never ran");
}

#[test]
fn run_unprivileged_load_refused() {
    require_sensor!();
    // A copy in a scratch directory, so the unprivileged user can run it
    // whatever the permissions on the build tree.
    let dir = TempDir::new("unprivileged");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod the scratch directory");
    let binary = dir.path().join("agent-sensor");
    std::fs::copy(sensor_binary().expect("agent-sensor binary"), &binary).expect("copy agent-sensor");
    let evidence = dir.path().join("evidence.jsonl");
    let path = write_config(&dir, &format!("[output]\nevidence_path = \"{}\"\n", evidence.display()));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod the configuration");

    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&binary)
        .args(["run", "--config", &path])
        .output()
        .expect("run setpriv");
    let error = single_error_line(&output);
    assert!(error.contains("eBPF"), "says the eBPF load failed: {error}");
    assert!(error.contains("root") || error.contains("CAP_BPF"), "says what privilege is needed: {error}");
    assert!(output.stdout.is_empty(), "no records from a sensor that never ran");
}
