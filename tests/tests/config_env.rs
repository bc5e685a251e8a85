//! `AGENT_SENSOR__SECTION__KEY` environment overrides, through the real
//! binary: `check-config` applies them and names the variable in every
//! problem one causes, and `run` rejects a bad one before loading anything.

use std::process::{Command, Output};

use integration_tests::{require_binary, sensor_binary, TempDir};

fn write_config(dir: &TempDir, text: &str) -> String {
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).expect("write the configuration");
    path.to_string_lossy().into_owned()
}

fn agent_sensor(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(sensor_binary().expect("agent-sensor binary"));
    command.args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("run agent-sensor")
}

fn stderr_errors(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr).lines().filter(|l| l.starts_with("error:")).map(str::to_owned).collect()
}

#[test]
fn check_config_applies_override() {
    require_binary!();
    let dir = TempDir::new("env-valid");
    let path = write_config(&dir, "[probes]\nargv_max_bytes = 9000\n");

    let without = agent_sensor(&["check-config", &path], &[]);
    assert_eq!(without.status.code(), Some(2), "the file alone is invalid");

    let with = agent_sensor(&["check-config", &path], &[("AGENT_SENSOR__PROBES__ARGV_MAX_BYTES", "2048")]);
    let stdout = String::from_utf8_lossy(&with.stdout);
    assert_eq!(with.status.code(), Some(0), "the override fixes it; stderr: {}", String::from_utf8_lossy(&with.stderr));
    assert!(stdout.contains("valid with environment overrides AGENT_SENSOR__PROBES__ARGV_MAX_BYTES"), "{stdout}");
}

#[test]
fn check_config_names_bad_variable() {
    require_binary!();
    let dir = TempDir::new("env-invalid");
    let path = write_config(&dir, "[output]\nstdout = true\n");
    let env = [("AGENT_SENSOR__OUTPUT__FLUSH_INTERVAL_MS", "soon"), ("AGENT_SENSOR__PROBES__RING_BUFER_BYTES", "4096")];
    let output = agent_sensor(&["check-config", &path], &env);
    assert_eq!(output.status.code(), Some(2));
    let errors = stderr_errors(&output);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("output.flush_interval_ms (from AGENT_SENSOR__OUTPUT__FLUSH_INTERVAL_MS)"),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains("\"soon\" is not an integer"), "{}", errors[0]);
}

#[test]
fn check_config_rejects_unknown_key() {
    require_binary!();
    let dir = TempDir::new("env-unknown");
    let path = write_config(&dir, "");
    let output = agent_sensor(&["check-config", &path], &[("AGENT_SENSOR__PROBES__RING_BUFER_BYTES", "4096")]);
    assert_eq!(output.status.code(), Some(2));
    let errors = stderr_errors(&output);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("(from AGENT_SENSOR__PROBES__RING_BUFER_BYTES)"), "{}", errors[0]);
    assert!(errors[0].contains("unknown field"), "{}", errors[0]);
}

#[test]
fn check_config_rejects_malformed_name() {
    require_binary!();
    let dir = TempDir::new("env-name");
    let path = write_config(&dir, "");
    let output = agent_sensor(&["check-config", &path], &[("AGENT_SENSOR__STDOUT", "false")]);
    assert_eq!(output.status.code(), Some(2));
    let errors = stderr_errors(&output);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("AGENT_SENSOR__STDOUT"), "{}", errors[0]);
    assert!(errors[0].contains("SECTION__KEY"), "{}", errors[0]);
}

#[test]
fn run_rejects_bad_override() {
    require_binary!();
    // Fails in configuration, before any eBPF load, so it needs no root.
    let output = agent_sensor(&["run"], &[("AGENT_SENSOR__EVIDENCE__CHECKPOINT_EVERY_RECORDS", "0")]);
    assert_eq!(output.status.code(), Some(2));
    let errors = stderr_errors(&output);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("(built-in defaults)"), "{}", errors[0]);
    assert!(
        errors[0].contains("evidence.checkpoint_every_records (from AGENT_SENSOR__EVIDENCE__CHECKPOINT_EVERY_RECORDS)"),
        "{}",
        errors[0]
    );
    assert!(output.stdout.is_empty(), "no records");
}
