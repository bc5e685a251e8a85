//! The policy against the real kernel. The test agent is a copy of bash
//! named as a known agent program. It runs an allowed and a disallowed
//! tool and connects to an allowed and a disallowed loopback destination
//! (127.0.0.1 and 127.0.0.2, both on `lo`). It also reads a file under
//! `$HOME/.aws`, with `HOME` set to a scratch directory. Each record must
//! carry its checks with the compared values, and each violation a finding
//! that points back at it.
//!
//! A malformed policy is rejected with every problem, its key and line, by
//! `check-policy` and by `run`; a running daemon given a malformed policy
//! keeps the last good one.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use integration_tests::{
    llm_server::{fixtures_dir, python_binary, run_client, LlmServer, OLLAMA_PORT},
    require_binary, require_sensor, sensor_binary, Sensor, TempDir,
};
use serde_json::Value;

/// Exit code of a Rust program that panicked.
const PANIC_EXIT_CODE: i32 = 101;
const AGENT_PROGRAM: &str = "policy-agent";
/// The model `fixtures/ollama_client.py` is asked to request.
const OLLAMA_MODEL: &str = "llama3.2";
const SHADOW_PROGRAM: &str = "shadow-agent";

/// A policy with each problem on a known line.
const MALFORMED_POLICY: &str = "\
version: 2
defaults:
  acton: alert
agents:
  - name: broken
    match:
      exe: /usr/bin/x
      colour: red
    egress:
      - cidr: 10.0.0.1/8
        port: 70000
  - name: broken
    match: {}
    sensitive_paths:
      - path: relative/dir
        action: shout
";

/// (line, key) of every problem in [`MALFORMED_POLICY`].
const MALFORMED_PROBLEMS: &[(usize, &str)] = &[
    (1, "version"),
    (3, "defaults.acton"),
    (8, "agents[0].match.colour"),
    (10, "agents[0].egress[0].cidr"),
    (11, "agents[0].egress[0].port"),
    (12, "agents[1].name"),
    (13, "agents[1].match"),
    (15, "agents[1].sensitive_paths[0].path"),
    (16, "agents[1].sensitive_paths[0].action"),
];

/// Copies bash to `dir/name`, so the kernel reports `name` as the
/// executable and the daemon's `agents.known_programs` makes it an agent.
fn agent_program(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::copy("/bin/bash", &path).expect("copy /bin/bash");
    path
}

struct Fixture {
    // Removed on drop, with the agent copies, HOME and policy in it.
    _dir: TempDir,
    agent: PathBuf,
    shadow: PathBuf,
    home: PathBuf,
    policy: PathBuf,
    allowed: TcpListener,
    denied: TcpListener,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = TempDir::new("policy");
        let agent = agent_program(dir.path(), AGENT_PROGRAM);
        let shadow = agent_program(dir.path(), SHADOW_PROGRAM);
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join(".aws")).expect("create $HOME/.aws");
        std::fs::write(home.join(".aws/credentials"), "[default]\nregion = none\n").expect("write credentials");
        std::fs::write(home.join(".aws/old"), "").expect("write a file for the agent to remove");
        let allowed = TcpListener::bind("127.0.0.1:0").expect("listen on 127.0.0.1");
        let denied = TcpListener::bind("127.0.0.2:0").expect("listen on 127.0.0.2 (all of 127.0.0.0/8 is on lo)");
        let policy = dir.path().join("policy.yaml");
        let fixture = Fixture { _dir: dir, agent, shadow, home, policy, allowed, denied };
        std::fs::write(&fixture.policy, fixture.good_policy()).expect("write the policy");
        fixture
    }

    fn allowed_port(&self) -> u16 {
        self.allowed.local_addr().unwrap().port()
    }

    fn denied_port(&self) -> u16 {
        self.denied.local_addr().unwrap().port()
    }

    fn good_policy(&self) -> String {
        format!(
            "version: 1
sensitive_paths:
  - path: \"~/.aws\"
    action: alert
agents:
  - name: test-agent
    match:
      exe: {agent}
    tools:
      - sleep
      - exe: cat
        args: \"/etc/*\"
      - exe: cat
        args: \"*/.aws/*\"
      - exe: rm
        args: \"-f *\"
    egress:
      - cidr: 127.0.0.1/32
        port: {port}
",
            agent = self.agent.display(),
            port = self.allowed_port(),
        )
    }

    fn config(&self) -> String {
        format!(
            "[agents]\nknown_programs = [\"{AGENT_PROGRAM}\", \"{SHADOW_PROGRAM}\"]\n[policy]\npath = \"{}\"\n",
            self.policy.display()
        )
    }

    /// Runs the test agent: an allowed tool, a disallowed one, an allowed
    /// and a disallowed connect, a read of `$HOME/.aws/credentials` and the
    /// removal of a file beside it.
    /// The first sleep lets the daemon mark the agent in the kernel before
    /// it forks, so its children's file operations are recorded.
    fn run_agent(&self) -> u32 {
        let script = format!(
            "sleep 1
cat /etc/hostname > /dev/null
uname -a > /dev/null
exec 3<>/dev/tcp/127.0.0.1/{allowed}
exec 4<>/dev/tcp/127.0.0.2/{denied}
cat \"$HOME/.aws/credentials\" > /dev/null
rm -f \"$HOME/.aws/old\"
exec 3>&- 4>&-
",
            allowed = self.allowed_port(),
            denied = self.denied_port(),
        );
        run(Command::new(&self.agent).args(["-c", &script]).env("HOME", &self.home))
    }

    /// Runs a known agent program that matches no policy entry.
    fn run_shadow(&self) -> u32 {
        run(Command::new(&self.shadow).args(["-c", "sleep 0.2; true"]).env("HOME", &self.home))
    }
}

fn run(command: &mut Command) -> u32 {
    let child = command.spawn().expect("start the test agent");
    let pid = child.id();
    let output = child.wait_with_output().expect("wait for the test agent");
    assert!(output.status.success(), "the test agent failed: {:?}", output.status);
    pid
}

fn agent_sensor(args: &[&str]) -> Output {
    Command::new(sensor_binary().expect("agent-sensor binary")).args(args).output().expect("run agent-sensor")
}

/// Returns the record's check for `rule`, failing the test when it is
/// missing.
fn check<'a>(record: &'a Value, rule: &str) -> &'a Value {
    record["policy"]["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["rule"] == rule))
        .unwrap_or_else(|| panic!("no check {rule} in {record}"))
}

fn is_child_of(record: &Value, kind: &str, pid: u32) -> bool {
    record["kind"] == kind && record["process"]["ppid"] == pid
}

fn argv_has(record: &Value, word: &str) -> bool {
    record["process"]["argv"].as_array().is_some_and(|argv| argv.iter().any(|a| a.as_str().is_some_and(|a| a.contains(word))))
}

/// Finds the finding whose cause is `cause`.
fn finding_for<'a>(records: &'a [Value], cause: &Value) -> Option<&'a Value> {
    records.iter().find(|r| {
        r["kind"].as_str().is_some_and(|k| k.starts_with("finding.")) && r["finding"]["cause"]["record_id"] == cause["id"]
    })
}

fn references(finding: &Value) -> Vec<(String, String)> {
    finding["finding"]["references"]
        .as_array()
        .map(|refs| {
            refs.iter()
                .map(|r| (r["framework"].as_str().unwrap_or("").to_owned(), r["id"].as_str().unwrap_or("").to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts the violations of one run of the test agent, and returns the
/// sha256 their findings were written under.
fn assert_violations(sensor: &Sensor, pid: u32) -> String {
    let uname = sensor.expect("tool.spawn of uname", |r| is_child_of(r, "tool.spawn", pid) && argv_has(r, "uname"));
    let tools = check(&uname, "test-agent/tools");
    assert_eq!(tools["result"], "fail", "{uname}");
    assert_eq!(tools["observed"]["name"], "uname", "{uname}");
    assert!(tools["allowed"].as_array().is_some_and(|a| a.len() == 4), "the rule's four entries: {uname}");
    assert!(tools["reason"].as_str().is_some_and(|r| r.contains("uname")), "{uname}");
    assert_eq!(uname["policy"]["verdict"], "alert", "{uname}");
    assert_eq!(uname["policy"]["entry"], "test-agent", "{uname}");

    let denied = sensor.expect("net.connect to 127.0.0.2", |r| {
        r["kind"] == "net.connect" && r["process"]["pid"] == pid && r["network"]["destination"]["address"] == "127.0.0.2"
    });
    let egress = check(&denied, "test-agent/egress");
    assert_eq!(egress["result"], "fail", "{denied}");
    assert_eq!(egress["observed"]["address"], "127.0.0.2", "{denied}");
    assert_eq!(egress["allowed"][0]["cidr"], "127.0.0.1/32", "{denied}");
    assert_eq!(denied["policy"]["verdict"], "alert", "{denied}");

    let read = sensor.expect("file.open of .aws/credentials", |r| {
        r["kind"] == "file.open"
            && r["process"]["ppid"] == pid
            && r["file"]["path"].as_str().is_some_and(|p| p.ends_with("/.aws/credentials"))
    });
    let sensitive = check(&read, "test-agent/sensitive_paths");
    assert_eq!(sensitive["result"], "fail", "{read}");
    assert_eq!(sensitive["matched"]["entry"]["path"], "~/.aws", "{read}");
    assert!(sensitive["observed"]["home"].as_array().is_some_and(|homes| homes.iter().any(|h| h.as_str().is_some_and(|h| h.ends_with("/home")))), "the test HOME stands for ~: {read}");
    assert_eq!(read["policy"]["verdict"], "alert", "{read}");

    let unlink = sensor.expect("file.unlink under .aws", |r| {
        r["kind"] == "file.unlink" && r["process"]["ppid"] == pid && r["file"]["path"].as_str().is_some_and(|p| p.ends_with("/.aws/old"))
    });
    let removed = check(&unlink, "test-agent/sensitive_paths");
    assert_eq!(removed["result"], "fail", "{unlink}");
    assert_eq!(removed["observed"]["access"], "unlink", "{unlink}");

    let records = sensor.records();
    for (cause, kind, framework_id) in [
        (&uname, "finding.policy_violation", "ASI02"),
        (&denied, "finding.policy_violation", "ASI02"),
        (&read, "finding.sensitive_access", "ASI03"),
        (&unlink, "finding.sensitive_access", "ASI03"),
    ] {
        let finding = match finding_for(&records, cause) {
            Some(finding) => finding.clone(),
            None => sensor.expect("the finding of a violation", |r| r["finding"]["cause"]["record_id"] == cause["id"]),
        };
        assert_eq!(finding["kind"], kind, "{finding}");
        assert_eq!(finding["finding"]["cause"]["seq"], cause["seq"], "{finding}");
        assert!(finding["finding"]["severity"].is_string(), "{finding}");
        let refs = references(&finding);
        assert!(refs.contains(&("owasp_agentic_top10_2026".into(), framework_id.into())), "{finding}");
        assert!(refs.iter().any(|(f, _)| f == "csa_maestro"), "{finding}");
        assert!(refs.iter().any(|(f, id)| f == "nist_ai_rmf" && (id.starts_with("MANAGE-") || id.starts_with("MEASURE-"))), "{finding}");
        let failed = finding["policy"]["checks"].as_array().expect("the finding's checks");
        assert!(failed.iter().all(|c| c["result"] == "fail"), "{finding}");
        assert_eq!(failed[0]["observed"], check(cause, failed[0]["rule"].as_str().unwrap())["observed"], "{finding}");
        assert_eq!(finding["policy_sha256"], cause["policy_sha256"], "{finding}");
        let severity = if cause["kind"] == "file.unlink" { "critical" } else { "high" };
        assert_eq!(finding["finding"]["severity"], severity, "{finding}");
    }
    uname["policy_sha256"].as_str().expect("policy_sha256").to_owned()
}

#[test]
fn violations_carry_checks_and_findings() {
    require_sensor!();
    let fixture = Fixture::new();
    let sha256 = integration_tests::sha256_file(&fixture.policy);
    let sensor = Sensor::start(&fixture.config());
    let pid = fixture.run_agent();

    let detected = sensor.expect("agent.detected of the test agent", |r| r["kind"] == "agent.detected" && r["process"]["pid"] == pid);
    assert_eq!(detected["agent"]["registered"], true, "{detected}");
    assert_eq!(detected["agent"]["name"], "test-agent", "{detected}");
    assert_eq!(assert_violations(&sensor, pid), sha256);

    // Allowed actions carry passing checks and no finding.
    let cat = sensor.expect("tool.spawn of cat /etc/hostname", |r| is_child_of(r, "tool.spawn", pid) && argv_has(r, "/etc/hostname"));
    let tools = check(&cat, "test-agent/tools");
    assert_eq!(tools["result"], "pass", "{cat}");
    assert_eq!(tools["matched"]["index"], 1, "{cat}");
    assert_eq!(cat["policy"]["verdict"], "allow", "{cat}");
    let allowed = sensor.expect("net.connect to 127.0.0.1", |r| {
        r["kind"] == "net.connect"
            && r["process"]["pid"] == pid
            && r["network"]["destination"]["address"] == "127.0.0.1"
            && r["network"]["destination"]["port"] == fixture.allowed_port()
    });
    assert_eq!(check(&allowed, "test-agent/egress")["result"], "pass", "{allowed}");
    assert_eq!(allowed["policy"]["verdict"], "allow", "{allowed}");
    let hostname = sensor.expect("file.open of /etc/hostname", |r| r["kind"] == "file.open" && r["file"]["path"] == "/etc/hostname" && r["process"]["ppid"] == pid);
    assert_eq!(check(&hostname, "test-agent/sensitive_paths")["result"], "pass", "{hostname}");

    // An agent outside the inventory is a shadow agent, checked against it.
    let shadow_pid = fixture.run_shadow();
    let shadow = sensor.expect("finding.shadow_agent", |r| r["kind"] == "finding.shadow_agent" && r["process"]["pid"] == shadow_pid);
    let inventory = check(&shadow, "policy/inventory");
    assert_eq!(inventory["result"], "fail", "{shadow}");
    assert_eq!(inventory["observed"]["exe"], fixture.shadow.to_string_lossy().as_ref(), "{shadow}");
    assert_eq!(inventory["allowed"][0]["name"], "test-agent", "{shadow}");
    assert!(references(&shadow).contains(&("owasp_agentic_top10_2026".into(), "ASI10".into())), "{shadow}");
    let detected = sensor.expect("agent.detected of the shadow agent", |r| r["kind"] == "agent.detected" && r["process"]["pid"] == shadow_pid);
    assert_eq!(shadow["finding"]["cause"]["record_id"], detected["id"], "{shadow}");

    let records = sensor.stop();
    let reload = records.iter().find(|r| r["kind"] == "policy.reload").expect("policy.reload at start");
    assert_eq!(reload["policy_reload"]["trigger"], "start", "{reload}");
    assert_eq!(reload["policy_reload"]["sha256"], sha256.as_str(), "{reload}");
    let unstamped: Vec<&Value> = records.iter().filter(|r| r["policy_sha256"] != sha256.as_str()).collect();
    assert!(unstamped.is_empty(), "every record carries the policy's sha256: {:?}", unstamped.first());
}

#[test]
fn bad_reload_keeps_last_good_policy() {
    require_sensor!();
    let fixture = Fixture::new();
    let good = integration_tests::sha256_file(&fixture.policy);
    let sensor = Sensor::start(&fixture.config());
    let start = sensor.expect("sensor.start", |r| r["kind"] == "sensor.start");
    let daemon_pid = start["sensor"]["pid"].as_u64().expect("the daemon's pid") as i32;

    // The poll notices the changed content.
    std::fs::write(&fixture.policy, MALFORMED_POLICY).expect("write the malformed policy");
    let bad = integration_tests::sha256_file(&fixture.policy);
    let rejected = sensor.expect("policy.reload of the malformed file", |r| {
        r["kind"] == "policy.reload" && r["policy_reload"]["result"] == "rejected"
    });
    assert_eq!(rejected["policy_reload"]["trigger"], "file_changed", "{rejected}");
    assert_eq!(rejected["policy_reload"]["sha256"], bad.as_str(), "{rejected}");
    assert_eq!(rejected["policy_reload"]["previous_sha256"], good.as_str(), "{rejected}");
    assert_eq!(rejected["policy_sha256"], good.as_str(), "the old policy stays in force: {rejected}");
    let errors = rejected["policy_reload"]["errors"].as_array().expect("errors");
    let found: Vec<(u64, &str)> = errors.iter().map(|e| (e["line"].as_u64().unwrap_or(0), e["key"].as_str().unwrap_or(""))).collect();
    for (line, key) in MALFORMED_PROBLEMS {
        assert!(found.contains(&(*line as u64, key)), "problem at line {line}, key {key} in {rejected}");
    }

    // SIGHUP rereads the same bad file and rejects it again.
    // SAFETY: kill with the daemon's pid, which this test started, and a valid signal.
    assert_eq!(unsafe { libc::kill(daemon_pid, libc::SIGHUP) }, 0, "send SIGHUP");
    sensor.expect("policy.reload after SIGHUP", |r| {
        r["kind"] == "policy.reload" && r["policy_reload"]["trigger"] == "sighup" && r["policy_reload"]["result"] == "rejected"
    });

    // Violations are still found, under the last good policy.
    let pid = fixture.run_agent();
    assert_eq!(assert_violations(&sensor, pid), good);

    // A good file is loaded again, and its sha256 stamps the records after it.
    let mut relaxed = fixture.good_policy();
    relaxed.push_str("    # reloaded\n");
    std::fs::write(&fixture.policy, &relaxed).expect("write the good policy");
    let new = integration_tests::sha256_file(&fixture.policy);
    let loaded = sensor.expect("policy.reload of the good file", |r| {
        r["kind"] == "policy.reload" && r["policy_reload"]["result"] == "loaded" && r["policy_reload"]["sha256"] == new.as_str()
    });
    assert_eq!(loaded["policy_reload"]["previous_sha256"], good.as_str(), "{loaded}");
    let records = sensor.stop();
    let stop = records.iter().find(|r| r["kind"] == "sensor.stop").expect("sensor.stop");
    assert_eq!(stop["policy_sha256"], new.as_str(), "{stop}");
}

#[test]
fn malformed_policy_lists_every_problem() {
    require_binary!();
    let dir = TempDir::new("policy-check");
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, MALFORMED_POLICY).expect("write the policy");
    let path = path.to_string_lossy().into_owned();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "").expect("write the configuration");
    let config = config.to_string_lossy().into_owned();

    for args in [vec!["check-policy", path.as_str()], vec!["run", "--config", config.as_str(), "--no-stdout", "--policy", path.as_str()]] {
        let output = agent_sensor(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?} exits 2; stderr:\n{stderr}");
        assert_ne!(output.status.code(), Some(PANIC_EXIT_CODE), "no panic");
        assert!(!stderr.contains("panicked"), "no panic; stderr:\n{stderr}");
        for (line, key) in MALFORMED_PROBLEMS {
            let expected = format!("line {line}: {key}: ");
            assert!(stderr.lines().any(|l| l.trim_start().starts_with(&expected)), "{args:?} reports `{expected}`; stderr:\n{stderr}");
        }
        let listed = stderr.lines().filter(|l| l.trim_start().starts_with("line ")).count();
        assert_eq!(listed, MALFORMED_PROBLEMS.len(), "{args:?}: one line per problem; stderr:\n{stderr}");
    }

    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/policy.yaml");
    let output = agent_sensor(&["check-policy", &example.to_string_lossy()]);
    assert!(output.status.success(), "the shipped example is valid: {}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn llm_model_outside_policy() {
    require_sensor!();
    let dir = TempDir::new("policy-llm");
    let policy = dir.path().join("policy.yaml");
    let text = format!(
        "agents:
  - name: ollama-client
    match:
      exe: {python}
    llm:
      providers: [ollama]
      models: [\"qwen*\"]
",
        python = python_binary().display()
    );
    std::fs::write(&policy, text).expect("write the policy");
    let server = LlmServer::start(&[]);
    let sensor = Sensor::start(&format!("[policy]\npath = \"{}\"\n", policy.display()));

    let url = format!("http://{}:{OLLAMA_PORT}/api/chat", server.address);
    let mut command = server.client(python_binary());
    command
        .env("LLM_PROMPT", "list the files")
        .arg(fixtures_dir().join("ollama_client.py"))
        .args([url.as_str(), OLLAMA_MODEL]);
    let pid = run_client(&mut command, Duration::from_secs(60)).pid;

    let request = sensor.expect("llm.request of the Ollama client", |r| r["kind"] == "llm.request" && r["process"]["pid"] == pid);
    assert_eq!(request["policy"]["entry"], "ollama-client", "{request}");
    let providers = check(&request, "ollama-client/llm.providers");
    assert_eq!(providers["result"], "pass", "{request}");
    assert_eq!(providers["observed"]["provider"], "ollama", "{request}");
    let models = check(&request, "ollama-client/llm.models");
    assert_eq!(models["result"], "fail", "{request}");
    assert_eq!(models["observed"]["model"], OLLAMA_MODEL, "{request}");
    assert_eq!(models["allowed"][0], "qwen*", "{request}");
    assert_eq!(request["policy"]["verdict"], "alert", "{request}");

    let finding = sensor.expect("the finding of the model check", |r| r["finding"]["cause"]["record_id"] == request["id"]);
    assert_eq!(finding["kind"], "finding.policy_violation", "{finding}");
    assert_eq!(finding["finding"]["severity"], "medium", "{finding}");
    assert!(references(&finding).contains(&("owasp_agentic_top10_2026".into(), "ASI04".into())), "{finding}");
    let failed = finding["policy"]["checks"].as_array().expect("the finding's checks");
    assert_eq!(failed.len(), 1, "only the failed check: {finding}");
    assert_eq!(failed[0]["rule"], "ollama-client/llm.models", "{finding}");
}
