//! Two views of a real daemon's evidence: the OCSF 1.8 evidence file,
//! validated against the class schemas in `fixtures/ocsf` and verified by
//! `agent-sensor verify`, and `agent-sensor explain` of a tool spawn.
//!
//! Both run the same agent: the `openai` Python client asks the local LLM
//! server, which replies with a `run_shell` call of `ls`. A directory put
//! first on the client's PATH contains the test's own `ls`, a bash script
//! that writes a file and connects to a loopback listener, so one tool
//! spawn leads to a file open and a connect by the agent's tree. The
//! client is an unregistered agent, so a shadow-agent finding follows.

use std::{
    net::TcpListener,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use integration_tests::{
    Sensor, TempDir,
    llm_server::{LlmServer, fixtures_dir, python_binary, run_client},
    require_sensor, sensor_binary,
};
use serde_json::Value;

/// Runs the binary; returns its exit code, standard output and standard error.
fn agent_sensor(args: &[&str]) -> (i32, String, String) {
    let binary = sensor_binary().expect("agent-sensor binary");
    let output = Command::new(binary).args(args).output().expect("run agent-sensor");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// What the agent run left: the native records printed on standard
/// output, and the records the test looks for.
struct AgentRun {
    records: Vec<Value>,
    spawn: Value,
    file_open: Value,
    connect: Value,
    tool_file: PathBuf,
    port: u16,
}

/// Starts the daemon with `config`, runs the agent and its tool, waits for
/// the tool's records and stops the daemon.
fn run_agent_with_tool(config: &str, work: &Path) -> AgentRun {
    let server = LlmServer::start(&[]);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback listener");
    let port = listener.local_addr().unwrap().port();
    let tool_dir = work.join("tools");
    std::fs::create_dir_all(&tool_dir).unwrap();
    let tool_file = work.join("tool-output.txt");
    let script = tool_dir.join("ls");
    std::fs::write(
        &script,
        "#!/bin/bash\necho written by the tool > \"$TOOL_FILE\"\nexec 3<>\"/dev/tcp/127.0.0.1/$TOOL_PORT\"\nexec 3>&-\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

    let sensor = Sensor::start(config);
    let mut command = server.client(python_binary());
    let path = format!("{}:{}", tool_dir.display(), std::env::var("PATH").unwrap_or_default());
    command
        .env("OPENAI_API_KEY", "sk-test-explain")
        .env("LLM_PROMPT", "list the files")
        .env("PATH", path)
        .env("TOOL_FILE", &tool_file)
        .env("TOOL_PORT", port.to_string())
        .arg(fixtures_dir().join("openai_client.py"))
        .arg("--ca")
        .arg(server.ca());
    let run = run_client(&mut command, Duration::from_secs(60));
    assert!(run.stdout.contains("tool_exit 0"), "the tool failed: {run:?}");
    let pid = run.pid;

    let spawn = sensor.expect("tool.spawn of the test's ls", |r| {
        r["kind"] == "tool.spawn" && r["process"]["ppid"] == pid
    });
    let tool_pid = spawn["process"]["pid"].clone();
    let tool_path = tool_file.to_str().unwrap().to_owned();
    let file_open = sensor.expect("file.open of the tool's output", |r| {
        r["kind"] == "file.open" && r["file"]["path"] == tool_path.as_str()
    });
    let connect = sensor.expect("net.connect of the tool", |r| {
        r["kind"] == "net.connect" && r["network"]["destination"]["port"] == port && r["process"]["pid"] == tool_pid
    });
    sensor.expect("finding.shadow_agent of the client", |r| {
        r["kind"] == "finding.shadow_agent" && r["process"]["pid"] == pid
    });
    let records = sensor.stop();
    drop(listener);
    AgentRun { records, spawn, file_open, connect, tool_file, port }
}

fn keygen(dir: &Path) -> (PathBuf, PathBuf) {
    let private = dir.join("signing.key");
    let public = dir.join("signing.pub");
    let (code, stdout, stderr) =
        agent_sensor(&["keygen", "--private", private.to_str().unwrap(), "--public", public.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    (private, public)
}

#[test]
fn ocsf_evidence_validates_and_verifies() {
    require_sensor!();
    let dir = TempDir::new("ocsf");
    let (private, public) = keygen(dir.path());
    let evidence = dir.path().join("evidence.jsonl");
    let config = format!(
        "[output]\nevidence_path = \"{}\"\nevidence_format = \"ocsf\"\n[evidence]\nsigning_key_path = \"{}\"\n\
         checkpoint_every_records = 200\n",
        evidence.display(),
        private.display()
    );
    let run = run_agent_with_tool(&config, dir.path());
    assert!(run.records.iter().all(|r| r["kind"].is_string()), "standard output stays native");

    let text = std::fs::read_to_string(&evidence).expect("read the OCSF evidence file");
    let events: Vec<Value> =
        text.lines().map(|line| serde_json::from_str(line).expect("an OCSF line is JSON")).collect();
    assert!(events.len() > 10, "{} events", events.len());

    // Standard output and the file carry the same records in two formats,
    // under the same seq numbers.
    let event_at = |seq: &Value| {
        events
            .iter()
            .find(|e| e["metadata"]["sequence"] == *seq)
            .unwrap_or_else(|| panic!("no OCSF event with sequence {seq}"))
    };
    let spawn = event_at(&run.spawn["seq"]);
    assert_eq!(spawn["class_uid"], 1007, "{spawn}");
    assert_eq!(spawn["metadata"]["event_code"], "tool.spawn", "{spawn}");
    assert_eq!(spawn["process"]["pid"], run.spawn["process"]["pid"], "{spawn}");
    assert_eq!(spawn["process"]["uid"], run.spawn["process"]["exec_id"], "{spawn}");
    let file_open = event_at(&run.file_open["seq"]);
    assert_eq!(file_open["class_uid"], 1001, "{file_open}");
    assert_eq!(file_open["activity_id"], 14, "{file_open}");
    assert_eq!(file_open["file"]["path"], run.tool_file.to_str().unwrap(), "{file_open}");
    let connect = event_at(&run.connect["seq"]);
    assert_eq!(connect["class_uid"], 4001, "{connect}");
    assert_eq!(connect["dst_endpoint"]["ip"], "127.0.0.1", "{connect}");
    assert_eq!(connect["dst_endpoint"]["port"], run.port, "{connect}");
    let finding = events
        .iter()
        .find(|e| e["metadata"]["event_code"] == "finding.shadow_agent")
        .expect("a shadow-agent Detection Finding");
    assert_eq!(finding["class_uid"], 2004, "{finding}");
    assert_eq!(finding["severity_id"], 4, "{finding}");
    for event in &events {
        assert!(event.get("integrity").is_none(), "the seal sits in unmapped: {event}");
        assert!(event["unmapped"]["integrity"]["hash"].is_string(), "{event}");
    }

    let validator = fixtures_dir().join("ocsf/validate.py");
    let output = Command::new("python3").arg(&validator).arg(&evidence).output().expect("run validate.py");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "OCSF 1.8 schema validation failed:\n{report}{}", String::from_utf8_lossy(&output.stderr));
    assert!(report.contains(&format!("{} events checked, 0 invalid", events.len())), "{report}");

    let (code, stdout, stderr) =
        agent_sensor(&["verify", "--public-key", public.to_str().unwrap(), evidence.to_str().unwrap()]);
    assert_eq!(code, 0, "verify of the OCSF file:\n{stdout}{stderr}");

    // One changed byte in an event's OCSF members breaks the chain.
    let target = format!("\"pid\":{}", run.spawn["process"]["pid"]);
    let at = text.find(&target).expect("the spawn's pid in the file") + target.len() - 1;
    let mut changed = text.into_bytes();
    changed[at] = if changed[at] == b'1' { b'2' } else { b'1' };
    std::fs::write(&evidence, changed).unwrap();
    let (code, stdout, stderr) =
        agent_sensor(&["verify", "--public-key", public.to_str().unwrap(), evidence.to_str().unwrap()]);
    assert_eq!(code, 1, "an edited OCSF file is tampered:\n{stdout}{stderr}");
}

#[test]
fn explain_tool_spawn_tree_and_json() {
    require_sensor!();
    let dir = TempDir::new("explain");
    let evidence = dir.path().join("evidence.jsonl");
    let config = format!("[output]\nevidence_path = \"{}\"\n", evidence.display());
    let run = run_agent_with_tool(&config, dir.path());
    let spawn_id = run.spawn["id"].as_str().expect("the spawn's id");
    let evidence_arg = evidence.to_str().unwrap();

    let (code, stdout, stderr) = agent_sensor(&["explain", "--json", spawn_id, evidence_arg]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let explanation: Value = serde_json::from_str(&stdout).expect("explain --json prints JSON");
    assert_eq!(explanation["target"]["id"], spawn_id, "{explanation}");
    assert_eq!(explanation["tool_spawn"]["seq"], run.spawn["seq"], "{explanation}");
    let session = &run.spawn["agent"]["session_id"];
    assert!(session.is_string(), "{}", run.spawn);
    assert_eq!(explanation["session"]["session_id"], *session, "{explanation}");
    assert_eq!(explanation["session"]["detected"]["kind"], "agent.detected", "{explanation}");
    let request = &explanation["llm_before"]["request"];
    let response = &explanation["llm_before"]["response"];
    assert_eq!(request["kind"], "llm.request", "{explanation}");
    assert_eq!(response["kind"], "llm.response", "{explanation}");
    assert!(request["seq"].as_u64() < response["seq"].as_u64(), "{explanation}");
    assert!(response["seq"].as_u64() < run.spawn["seq"].as_u64(), "the reply came before the spawn");
    assert_eq!(response["llm"]["tool_calls"][0]["name"], "run_shell", "{response}");
    let after = explanation["after"].as_array().expect("after is an array");
    let seqs: Vec<&Value> = after.iter().map(|r| &r["seq"]).collect();
    assert!(seqs.contains(&&run.file_open["seq"]), "the file open follows the spawn: {seqs:?}");
    assert!(seqs.contains(&&run.connect["seq"]), "the connect follows the spawn: {seqs:?}");
    assert!(after.iter().all(|r| r["seq"].as_u64() > run.spawn["seq"].as_u64()), "{seqs:?}");
    let findings = explanation["findings"].as_array().expect("findings is an array");
    assert!(findings.iter().all(|f| f["kind"].as_str().is_some_and(|k| k.starts_with("finding."))), "{findings:?}");

    // The exec id names the same spawn, and the tree shows the same chain.
    let exec_id = run.spawn["process"]["exec_id"].as_str().unwrap();
    let (code, tree, stderr) = agent_sensor(&["explain", exec_id, evidence_arg]);
    assert_eq!(code, 0, "{tree}{stderr}");
    let tool_path = run.tool_file.to_str().unwrap();
    let connect_text = format!("127.0.0.1:{}", run.port);
    let order = [
        format!("session {}", session.as_str().unwrap()),
        "llm call  seq ".to_owned(),
        "reply     seq ".to_owned(),
        format!("tool    * seq {}", run.spawn["seq"]),
    ];
    let mut from = 0;
    for part in &order {
        let at = tree[from..].find(part.as_str()).unwrap_or_else(|| panic!("{part:?} missing or out of order in:\n{tree}"));
        from += at + part.len();
    }
    assert!(tree[from..].contains(tool_path), "the file open under the tool:\n{tree}");
    assert!(tree[from..].contains(&connect_text), "the connect under the tool:\n{tree}");

    let (code, stdout, stderr) = agent_sensor(&["explain", "no-such-record", evidence_arg]);
    assert_eq!(code, 3, "{stdout}{stderr}");
    assert!(stderr.contains("no-such-record"), "{stderr}");
}
