//! Agents against the real kernel: real LLM clients (the `openai` Python
//! package, Node.js fetch, rustls, plain HTTP) talk to a local server that
//! speaks the OpenAI, Anthropic and Ollama APIs under the providers' host
//! names. Those names map to a loopback address of the test's own, inside
//! a private mount namespace, so nothing reaches a real provider.
//!
//! Every test runs its own daemon, which observes the whole host, so records
//! are picked by the client's pid. Each test starts its server, a Python
//! process that maps the host's libssl, before its daemon. The daemon then
//! hooks libssl at startup, as on a host where it runs from boot, so the
//! host clients' first requests do not race the hooking. The container
//! test covers a libssl that the daemon first sees at a connect.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use integration_tests::{
    Sensor, TempDir, argv, free_port, http_get, is_kind_for_pid, metric_sample,
    llm_server::{
        ClientRun, LlmServer, OLLAMA_PORT, RunningClient, fixtures_dir, python_binary, run_client,
        tls_client_binary,
    },
    require_sensor, sha256_file, unique_marker, workload_binary,
};
use serde_json::{Value, json};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
const OPENAI_MODEL: &str = "gpt-4o-mini";
const ANTHROPIC_MODEL: &str = "claude-3-5-haiku-latest";
const OLLAMA_MODEL: &str = "llama3.2";
/// `json.dumps({"command": "ls"})`, the tool arguments the server sends.
const TOOL_ARGUMENTS: &str = r#"{"command": "ls"}"#;

fn for_pid(kind: &'static str, pid: u32) -> impl Fn(&Value) -> bool {
    move |r| is_kind_for_pid(r, kind, pid)
}

/// Waits for a record like [`Sensor::expect`], but on failure prints the
/// records of process `pid`, its children and the sensor itself, without
/// the process, host and integrity sections that fill the screen.
fn expect_of(sensor: &Sensor, pid: u32, what: &str, predicate: impl Fn(&Value) -> bool) -> Value {
    if let Some(record) = sensor.wait_for(&predicate) {
        return record;
    }
    let records: Vec<String> = sensor
        .records()
        .into_iter()
        .filter(|r| {
            let process = &r["process"];
            process["pid"] == pid
                || process["ppid"] == pid
                || r["kind"].as_str().is_some_and(|k| k.starts_with("sensor."))
        })
        .map(|mut r| {
            let pid = r["process"]["pid"].clone();
            if let Some(fields) = r.as_object_mut() {
                for noisy in [
                    "process",
                    "host",
                    "integrity",
                    "workload",
                    "id",
                    "time",
                    "time_unix_nano",
                    "schema",
                ] {
                    fields.remove(noisy);
                }
                fields.insert("pid".to_owned(), pid);
            }
            r.to_string()
        })
        .collect();
    panic!(
        "no record for {what}; the records of pid {pid}, its children and the sensor:\n{}",
        records.join("\n")
    );
}

/// Runs `fixtures/openai_client.py` with the real interpreter. The key
/// and prompt go through the environment, because the sensor records
/// command lines.
fn run_openai_python(server: &LlmServer, api_key: &str, prompt: &str, args: &[&str]) -> ClientRun {
    let mut command = server.client(python_binary());
    command
        .env("OPENAI_API_KEY", api_key)
        .env("LLM_PROMPT", prompt)
        .arg(fixtures_dir().join("openai_client.py"))
        .arg("--ca")
        .arg(server.ca())
        .args(args);
    run_client(&mut command, CLIENT_TIMEOUT)
}

/// Returns the pid the client printed after `label` (`worker_pid 123`).
fn printed_pid(run: &ClientRun, label: &str) -> u32 {
    run.stdout
        .lines()
        .find_map(|line| line.strip_prefix(label)?.strip_prefix(' '))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("the client printed no {label}: {run:?}"))
}

/// Runs `fixtures/fetch_client.mjs` with Node.js, trusting the test CA.
fn run_node_fetch(
    server: &LlmServer,
    provider: &str,
    api_key: &str,
    prompt: &str,
    model: &str,
) -> ClientRun {
    let mut command = server.client("node");
    command
        .env("NODE_EXTRA_CA_CERTS", server.ca())
        .env("LLM_API_KEY", api_key)
        .env("LLM_PROMPT", prompt)
        .arg(fixtures_dir().join("fetch_client.mjs"))
        .args([provider, model]);
    run_client(&mut command, CLIENT_TIMEOUT)
}

/// Runs `fixtures/ollama_client.py` against the server's Ollama port.
fn run_ollama(server: &LlmServer, prompt: &str) -> ClientRun {
    let url = format!("http://{}:{OLLAMA_PORT}/api/chat", server.address);
    let mut command = server.client(python_binary());
    command
        .env("LLM_PROMPT", prompt)
        .arg(fixtures_dir().join("ollama_client.py"))
        .args([url.as_str(), OLLAMA_MODEL]);
    run_client(&mut command, CLIENT_TIMEOUT)
}

/// Builds a chat completion request body that offers the `run_shell` tool.
fn openai_body(prompt: &str) -> String {
    json!({
        "model": OPENAI_MODEL,
        "messages": [{ "role": "user", "content": prompt }],
        "tools": [{ "type": "function", "function": { "name": "run_shell", "parameters": { "type": "object" } } }],
    })
    .to_string()
}

/// Adds the arguments that point the rustls client at OpenAI chat completions.
fn rustls_openai(command: &mut Command, server: &LlmServer, prompt: &str) {
    command
        .arg("--ca")
        .arg(server.ca())
        .args(["--host", "api.openai.com", "--path", "/v1/chat/completions"])
        .args(["--header", "Authorization: Bearer sk-test-rustls"])
        .arg("--body")
        .arg(openai_body(prompt));
}

fn sha256_hex(text: &str) -> String {
    let dir = TempDir::new("sha256");
    let path = dir.path().join("input");
    std::fs::write(&path, text).expect("write the hash input");
    sha256_file(&path)
}

#[test]
fn openai_python_tool_spawn() {
    require_sensor!();
    let server = LlmServer::start(&[]);
    let sensor = Sensor::start("");
    let run = run_openai_python(&server, "sk-test-python", "list the files", &[]);
    assert!(
        run.stdout.contains("tool_exit 0"),
        "the client ran no tool: {run:?}"
    );
    let pid = run.pid;

    let hello = expect_of(
        &sensor,
        pid,
        "tls.hello of the Python client",
        for_pid("tls.hello", pid),
    );
    assert_eq!(hello["tls"]["sni"], "api.openai.com", "{hello}");
    assert_eq!(
        hello["tls"]["plaintext"]["available"], true,
        "libssl is hooked: {hello}"
    );
    assert_eq!(
        hello["network"]["destination"]["address"],
        server.address.to_string(),
        "{hello}"
    );
    assert_eq!(hello["network"]["destination"]["port"], 443, "{hello}");

    let detected = expect_of(
        &sensor,
        pid,
        "agent.detected of the Python client",
        for_pid("agent.detected", pid),
    );
    assert_eq!(detected["detection"]["signal"], "sni", "{detected}");
    assert_eq!(
        detected["detection"]["value"], "api.openai.com",
        "{detected}"
    );
    assert_eq!(detected["detection"]["provider"], "openai", "{detected}");

    let request = expect_of(
        &sensor,
        pid,
        "llm.request of the Python client",
        for_pid("llm.request", pid),
    );
    let llm = &request["llm"];
    assert_eq!(llm["model"], OPENAI_MODEL, "{request}");
    assert_eq!(llm["provider"], "openai", "{request}");
    assert_eq!(llm["method"], "POST", "{request}");
    assert_eq!(llm["path"], "/v1/chat/completions", "{request}");
    assert_eq!(llm["host"], "api.openai.com", "{request}");
    assert_eq!(llm["stream"], false, "{request}");
    assert_eq!(
        llm["prompt_sha256"].as_str().map(str::len),
        Some(64),
        "{request}"
    );
    assert_eq!(
        llm["credential"]["kind"], "authorization_bearer",
        "{request}"
    );

    let response = expect_of(
        &sensor,
        pid,
        "llm.response of the Python client",
        for_pid("llm.response", pid),
    );
    let llm = &response["llm"];
    assert_eq!(llm["status"], 200, "{response}");
    assert_eq!(llm["model"], OPENAI_MODEL, "{response}");
    assert_eq!(llm["tool_calls"][0]["name"], "run_shell", "{response}");
    assert_eq!(
        llm["tool_calls"][0]["call_id"], "call_test_0001",
        "{response}"
    );
    assert_eq!(
        llm["tool_calls"][0]["arguments_sha256"],
        sha256_hex(TOOL_ARGUMENTS),
        "{response}"
    );
    assert_eq!(llm["input_tokens"], 27, "{response}");
    assert_eq!(llm["output_tokens"], 13, "{response}");
    assert_eq!(llm["truncated"], false, "{response}");

    let spawn = expect_of(&sensor, pid, "tool.spawn of ls", |r| {
        r["kind"] == "tool.spawn" && r["process"]["ppid"] == pid && argv(r) == ["ls"]
    });
    assert_eq!(spawn["process"]["exe"], "/usr/bin/ls", "{spawn}");
    assert!(
        spawn["seq"].as_u64() > response["seq"].as_u64(),
        "ls ran after the response: {spawn}"
    );
    assert_eq!(
        spawn["agent"]["session_id"], response["agent"]["session_id"],
        "{spawn}"
    );
    assert_eq!(
        spawn["agent"]["agent_id"], detected["agent"]["agent_id"],
        "{spawn}"
    );
    assert!(spawn["agent"]["session_id"].is_string(), "{spawn}");
    // One record per exec: the tool spawn replaces `process.exec`.
    let of_exec: Vec<_> = sensor
        .records()
        .into_iter()
        .filter(|r| r["process"]["exec_id"] == spawn["process"]["exec_id"])
        .filter(|r| r["kind"] == "process.exec" || r["kind"] == "tool.spawn")
        .collect();
    assert_eq!(of_exec.len(), 1, "{of_exec:#?}");
    // The fork that started the tool is stated by the spawn. A fork record
    // that was written would come before the spawn, so none is missed here.
    let forks: Vec<_> = sensor
        .records()
        .into_iter()
        .filter(|r| r["kind"] == "process.fork" && r["process"]["pid"] == spawn["process"]["pid"])
        .collect();
    assert!(forks.is_empty(), "{forks:#?}");
}

/// curl calls `SSL_write` and `SSL_read`, not their `_ex` forms. On
/// Debian's libssl the probes of all four sit on the internal functions
/// they share, so this checks that the non-`_ex` calls are caught there
/// whole: the request once, and the response with its tool call.
#[test]
fn curl_plain_ssl_calls() {
    require_sensor!();
    let server = LlmServer::start(&[]);
    let sensor = Sensor::start("");
    let hooked = sensor
        .wait_for(|r| {
            r["kind"] == "sensor.tls_hooked"
                && r["sensor"]["path"].as_str().is_some_and(|p| p.contains("/libssl.so"))
        })
        .unwrap_or_else(|| panic!("the system libssl was not hooked; stderr:\n{}", sensor.stderr()));
    if cfg!(target_arch = "x86_64") {
        // Debian's OpenSSL 3.0 has the forwarding `_ex` functions.
        let moved: Vec<Value> = hooked["sensor"]["probed_at_callee"]
            .as_array()
            .map(|callees| callees.iter().map(|c| c["symbols"].clone()).collect())
            .unwrap_or_default();
        assert_eq!(
            moved,
            [json!(["SSL_read_ex", "SSL_read"]), json!(["SSL_write_ex", "SSL_write"])],
            "{hooked}"
        );
    }
    let body = openai_body("list the files");
    let mut command = server.client("curl");
    command
        .args(["--http1.1", "--silent", "--show-error", "--fail", "--cacert"])
        .arg(server.ca())
        .args(["--header", "Authorization: Bearer sk-test-curl"])
        .args(["--header", "Content-Type: application/json"])
        .args(["--data", &body])
        .arg("https://api.openai.com/v1/chat/completions");
    let run = run_client(&mut command, CLIENT_TIMEOUT);
    assert!(run.stdout.contains("run_shell"), "curl got no tool call: {run:?}");
    let pid = run.pid;

    let request = expect_of(&sensor, pid, "llm.request of curl", for_pid("llm.request", pid));
    assert_eq!(request["llm"]["model"], OPENAI_MODEL, "{request}");
    assert_eq!(request["llm"]["body_bytes"], body.len(), "{request}");
    assert_eq!(request["llm"]["prompt_sha256"], sha256_hex(&body), "{request}");
    assert_eq!(request["llm"]["truncated"], false, "{request}");
    let response = expect_of(&sensor, pid, "llm.response of curl", for_pid("llm.response", pid));
    assert_eq!(response["llm"]["tool_calls"][0]["name"], "run_shell", "{response}");
    assert_eq!(response["llm"]["truncated"], false, "{response}");
    let calls = sensor.records().into_iter().filter(|r| r["process"]["pid"] == pid && r["kind"] == "llm.request").count();
    assert_eq!(calls, 1, "one request, caught once");
}

/// A child of an agent that runs no program keeps its `process.fork`,
/// written while it still runs: only a fork its exec follows is held.
#[test]
fn agent_fork_without_exec() {
    require_sensor!();
    let server = LlmServer::start(&[]);
    let sensor = Sensor::start("");
    let run = run_openai_python(&server, "sk-test-python", "list the files", &["--fork-worker", "4"]);
    let worker = printed_pid(&run, "worker_pid");

    // The worker sleeps 4 s: its fork record must not wait for its exit.
    let fork = sensor
        .wait_for_within(Duration::from_secs(2), for_pid("process.fork", worker))
        .unwrap_or_else(|| panic!("no process.fork of worker {worker} within 2 s; stderr:\n{}", sensor.stderr()));
    assert_eq!(fork["process"]["origin"], "fork", "{fork}");
    assert_eq!(fork["process"]["ppid"], run.pid, "{fork}");
    assert!(fork["agent"]["agent_id"].is_string(), "{fork}");
    let exited = sensor.records().into_iter().any(|r| is_kind_for_pid(&r, "process.exit", worker));
    assert!(!exited, "the fork record waited for the worker's exit");

    let exit = expect_of(&sensor, run.pid, "process.exit of the worker", for_pid("process.exit", worker));
    assert_eq!(exit["exit"]["code"], 3, "{exit}");
    assert!(fork["seq"].as_u64() < exit["seq"].as_u64(), "{fork}\n{exit}");
}

/// A child of an agent that forks before its exec keeps its fork record:
/// the grandchild's `parent_exec_id` names the child as it was then.
#[test]
fn agent_fork_before_exec() {
    require_sensor!();
    let server = LlmServer::start(&[]);
    let sensor = Sensor::start("");
    let run = run_openai_python(&server, "sk-test-python", "list the files", &["--fork-then-exec"]);
    let child = printed_pid(&run, "child_pid");

    let spawn = expect_of(&sensor, run.pid, "tool.spawn of the child's sleep", for_pid("tool.spawn", child));
    assert_eq!(argv(&spawn), ["sleep", "0.1"], "{spawn}");
    let grandchild = expect_of(&sensor, run.pid, "process.fork of the grandchild", |r| {
        r["kind"] == "process.fork" && r["process"]["ppid"] == child
    });
    let fork = sensor
        .records()
        .into_iter()
        .find(|r| is_kind_for_pid(r, "process.fork", child))
        .unwrap_or_else(|| panic!("no process.fork of the child {child}; the grandchild's: {grandchild}"));
    assert_eq!(grandchild["process"]["parent_exec_id"], fork["process"]["exec_id"], "{grandchild}\n{fork}");
    assert!(fork["seq"].as_u64() < grandchild["seq"].as_u64(), "{fork}\n{grandchild}");
}

/// A fork held back while its parent execs is written before that exec,
/// so its `parent` section shows the parent it forked from.
#[test]
fn agent_fork_then_parent_exec() {
    require_sensor!();
    let server = LlmServer::start(&[]);
    let sensor = Sensor::start("");
    let run = run_openai_python(&server, "sk-test-python", "list the files", &["--fork-then-reexec"]);
    let child = printed_pid(&run, "child_pid");

    let spawn = expect_of(&sensor, run.pid, "tool.spawn of the child's sleep", for_pid("tool.spawn", child));
    let grandchild = expect_of(&sensor, run.pid, "process.fork of the grandchild", |r| {
        r["kind"] == "process.fork" && r["process"]["ppid"] == child
    });
    let process = &grandchild["process"];
    assert_eq!(process["parent"]["exec_id"], process["parent_exec_id"], "{grandchild}");
    assert_ne!(process["parent_exec_id"], spawn["process"]["exec_id"], "{grandchild}\n{spawn}");
    assert!(grandchild["seq"].as_u64() < spawn["seq"].as_u64(), "{grandchild}\n{spawn}");
}

#[test]
fn node_fetch_sni_and_metadata() {
    require_sensor!();
    let server = LlmServer::start(&[]);
    let sensor = Sensor::start("");
    let run = run_node_fetch(
        &server,
        "anthropic",
        "sk-ant-test-node",
        "list the files",
        ANTHROPIC_MODEL,
    );
    let pid = run.pid;

    let hello = expect_of(
        &sensor,
        pid,
        "tls.hello of the Node client",
        for_pid("tls.hello", pid),
    );
    assert_eq!(hello["tls"]["sni"], "api.anthropic.com", "{hello}");
    assert_eq!(
        hello["tls"]["plaintext"]["available"], true,
        "node's OpenSSL is hooked: {hello}"
    );

    let detected = expect_of(
        &sensor,
        pid,
        "agent.detected of the Node client",
        for_pid("agent.detected", pid),
    );
    assert_eq!(detected["detection"]["signal"], "sni", "{detected}");
    assert_eq!(
        detected["detection"]["value"], "api.anthropic.com",
        "{detected}"
    );
    assert_eq!(detected["detection"]["provider"], "anthropic", "{detected}");

    let request = expect_of(
        &sensor,
        pid,
        "llm.request of the Node client",
        for_pid("llm.request", pid),
    );
    let llm = &request["llm"];
    assert_eq!(llm["model"], ANTHROPIC_MODEL, "{request}");
    assert_eq!(llm["provider"], "anthropic", "{request}");
    assert_eq!(llm["method"], "POST", "{request}");
    assert_eq!(llm["path"], "/v1/messages", "{request}");
    assert_eq!(llm["host"], "api.anthropic.com", "{request}");
    assert_eq!(llm["stream"], true, "{request}");
    assert!(
        llm["credential"]["fingerprint"].is_string(),
        "the x-api-key is fingerprinted: {request}"
    );

    let response = expect_of(
        &sensor,
        pid,
        "llm.response of the Node client",
        for_pid("llm.response", pid),
    );
    assert_eq!(response["llm"]["streaming"], true, "{response}");
    assert_eq!(
        response["llm"]["tool_calls"][0]["name"], "run_shell",
        "{response}"
    );
    assert_eq!(
        response["llm"]["tool_calls"][0]["call_id"], "toolu_test_0001",
        "{response}"
    );
    assert_eq!(response["llm"]["output_tokens"], 13, "{response}");
}

#[test]
fn rustls_sni_without_plaintext() {
    require_sensor!();
    let server = LlmServer::start(&[]);
    let sensor = Sensor::start("");
    let mut command = server.client(tls_client_binary());
    rustls_openai(&mut command, &server, "list the files");
    // Alive while the daemon inspects it, so the reason is about its TLS
    // stack and not about a process already gone.
    command.args(["--linger-ms", "1000"]);
    let pid = run_client(&mut command, CLIENT_TIMEOUT).pid;

    let hello = expect_of(
        &sensor,
        pid,
        "tls.hello of the rustls client",
        for_pid("tls.hello", pid),
    );
    assert_eq!(hello["tls"]["sni"], "api.openai.com", "{hello}");
    assert_eq!(hello["tls"]["alpn"], json!(["http/1.1"]), "{hello}");
    assert_eq!(hello["tls"]["plaintext"]["available"], false, "{hello}");
    let reason = hello["tls"]["plaintext"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.contains("no OpenSSL-compatible library"),
        "the reason names the unhookable TLS stack: {hello}"
    );

    let detected = expect_of(
        &sensor,
        pid,
        "agent.detected of the rustls client",
        for_pid("agent.detected", pid),
    );
    assert_eq!(detected["detection"]["signal"], "sni", "{detected}");
    assert_eq!(
        detected["detection"]["value"], "api.openai.com",
        "{detected}"
    );

    let records = sensor.stop();
    let llm: Vec<&Value> = records
        .iter()
        .filter(|r| {
            r["process"]["pid"] == pid && r["kind"].as_str().is_some_and(|k| k.starts_with("llm."))
        })
        .collect();
    assert!(
        llm.is_empty(),
        "rustls plaintext cannot be read, yet: {llm:?}"
    );
}

#[test]
fn ollama_plain_http_api_shape() {
    require_sensor!();
    let server = LlmServer::start(&[]);
    let sensor = Sensor::start("");
    let run = run_ollama(&server, "list the files");
    assert!(run.stdout.contains("tool_call run_shell"), "{run:?}");
    let pid = run.pid;

    let connect = expect_of(&sensor, pid, "net.connect to the Ollama port", |r| {
        is_kind_for_pid(r, "net.connect", pid) && r["network"]["destination"]["port"] == OLLAMA_PORT
    });
    assert_eq!(
        connect["network"]["destination"]["address"],
        server.address.to_string(),
        "{connect}"
    );
    assert_eq!(
        connect["provider_candidate"]["provider"], "ollama",
        "a port alone is a candidate: {connect}"
    );

    let detected = expect_of(
        &sensor,
        pid,
        "agent.detected of the Ollama client",
        for_pid("agent.detected", pid),
    );
    assert_eq!(detected["detection"]["signal"], "api_shape", "{detected}");
    assert_eq!(
        detected["detection"]["value"], "POST /api/chat",
        "{detected}"
    );

    let request = expect_of(
        &sensor,
        pid,
        "llm.request of the Ollama client",
        for_pid("llm.request", pid),
    );
    assert_eq!(request["llm"]["model"], OLLAMA_MODEL, "{request}");
    assert_eq!(request["llm"]["provider"], "ollama", "{request}");
    assert_eq!(request["llm"]["path"], "/api/chat", "{request}");
    assert_eq!(request["llm"]["stream"], false, "{request}");
}

#[test]
fn download_skipped_then_llm_call_read() {
    require_sensor!();
    let server = LlmServer::start(&[]);
    let port = free_port();
    let sensor = Sensor::start(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    // 8 MiB is about 512 TLS records. The client pauses after the first
    // 64 KiB, so the rest is read after the daemon has parsed the response
    // head and asked the kernel to pass over it.
    let size = 8 << 20;
    let mut command = server.client(python_binary());
    command
        .env("OPENAI_API_KEY", "sk-test-download")
        .arg(fixtures_dir().join("download_then_chat.py"))
        .arg(server.ca())
        .arg(size.to_string());
    let run = run_client(&mut command, CLIENT_TIMEOUT);
    assert!(run.stdout.contains(&format!("downloaded {size}")), "{run:?}");
    assert!(run.stdout.contains("tool_call run_shell"), "{run:?}");
    let pid = run.pid;

    // The chat call follows the download on the same connection, so it is
    // read only if the skipped reads kept the stream's place.
    let request = expect_of(&sensor, pid, "llm.request after the download", for_pid("llm.request", pid));
    assert_eq!(request["llm"]["path"], "/v1/chat/completions", "{request}");
    assert_eq!(request["llm"]["model"], "gpt-4o-mini", "{request}");
    let response = expect_of(&sensor, pid, "llm.response after the download", for_pid("llm.response", pid));
    assert_eq!(response["llm"]["tool_calls"][0]["name"], "run_shell", "{response}");
    assert_eq!(response["llm"]["truncated"], false, "{response}");

    let (status, text) = http_get(port, "/metrics");
    assert_eq!(status, 200, "{text}");
    let skipped = metric_sample(&text, r#"agent_sensor_tls_uncopied_bytes_total{reason="ignored_response"}"#);
    assert!(
        skipped >= (size - (1 << 20)) as f64,
        "the kernel copied most of the download: {skipped} of {size} bytes skipped"
    );
    assert!(skipped < size as f64, "{skipped} of {size} bytes skipped");
}

#[test]
fn tls_flood_yields_to_records() {
    require_sensor!();
    let port = free_port();
    // A 1 MiB ring buffer and a stopped daemon: 16 MiB of TLS plaintext
    // would overflow it many times over if every call were copied.
    let sensor = Sensor::start(&format!(
        "[probes]\nring_buffer_bytes = 1048576\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"
    ));
    let dir = TempDir::new("tls-flood");
    let size = 16 << 20;
    let mut command = Command::new(python_binary());
    command
        .arg(fixtures_dir().join("tls_bulk.py"))
        .arg(dir.path())
        .arg(size.to_string());
    let mut client = RunningClient::spawn(&mut command);
    let pid = client.pid;
    expect_of(&sensor, pid, "tls.hello of the bulk client", for_pid("tls.hello", pid));

    // SAFETY: kill has no memory preconditions; the pid is the sensor's.
    assert_eq!(unsafe { libc::kill(sensor.pid() as i32, libc::SIGSTOP) }, 0);
    client.send(b"go\n");
    let run = client.wait(CLIENT_TIMEOUT);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(sensor.pid() as i32, libc::SIGCONT) }, 0);
    assert!(run.stdout.contains(&format!("received {size}")), "{run:?}");

    expect_of(&sensor, pid, "process.exit of the bulk client", for_pid("process.exit", pid));
    // Losses are reported on the daemon's next chores, within a second.
    let lost = sensor.wait_for_within(Duration::from_secs(3), |r| r["kind"] == "sensor.loss");
    assert!(lost.is_none(), "records were lost: {lost:?}");
    let (status, text) = http_get(port, "/metrics");
    assert_eq!(status, 200, "{text}");
    let yielded = metric_sample(&text, r#"agent_sensor_tls_uncopied_bytes_total{reason="ring_buffer_half_full"}"#);
    assert!(yielded >= (size / 2) as f64, "only {yielded} bytes were sent without plaintext");
}

/// Runs the rustls client twice, on two connections, under a daemon with
/// `config`. Returns the client's pid and every record, after both
/// handshakes are recorded and the daemon has stopped.
fn rustls_agent_records(config: &str) -> (u32, Vec<Value>) {
    let server = LlmServer::start(&[]);
    let sensor = Sensor::start(config);
    let mut command = server.client(tls_client_binary());
    rustls_openai(&mut command, &server, "list the files");
    command.args(["--repeat", "2"]);
    let pid = run_client(&mut command, CLIENT_TIMEOUT).pid;

    expect_of(
        &sensor,
        pid,
        "agent.detected of the rustls client",
        for_pid("agent.detected", pid),
    );
    let first = expect_of(&sensor, pid, "first tls.hello", for_pid("tls.hello", pid));
    expect_of(&sensor, pid, "second tls.hello", |r| {
        is_kind_for_pid(r, "tls.hello", pid) && r["seq"] != first["seq"]
    });
    (pid, sensor.stop())
}

#[test]
fn shadow_agent_reported_once() {
    require_sensor!();
    let (pid, records) = rustls_agent_records("");
    let findings: Vec<&Value> = records
        .iter()
        .filter(|r| is_kind_for_pid(r, "finding.shadow_agent", pid))
        .collect();
    assert_eq!(
        findings.len(),
        1,
        "one finding per agent and session: {findings:?}"
    );
    let finding = findings[0];
    assert_eq!(finding["agent"]["registered"], false, "{finding}");
    assert_eq!(
        finding["finding"]["evidence"]["detected_by"][0]["signal"], "sni",
        "{finding}"
    );
    assert_eq!(
        finding["finding"]["evidence"]["detected_by"][0]["value"], "api.openai.com",
        "{finding}"
    );
    let exe = std::fs::canonicalize(tls_client_binary()).expect("canonicalize tls_client");
    assert_eq!(
        finding["finding"]["evidence"]["identity"]["exe"],
        exe.to_string_lossy().as_ref(),
        "{finding}"
    );
}

#[test]
fn registered_agent_no_finding() {
    require_sensor!();
    let exe = std::fs::canonicalize(tls_client_binary()).expect("canonicalize tls_client");
    let config = format!(
        "[[agents.registered]]\nname = \"rustls-test-client\"\nexe = \"{}\"\n",
        exe.display()
    );
    let (pid, records) = rustls_agent_records(&config);
    let detected = records
        .iter()
        .find(|r| is_kind_for_pid(r, "agent.detected", pid))
        .expect("agent.detected");
    assert_eq!(detected["agent"]["registered"], true, "{detected}");
    assert_eq!(
        detected["agent"]["name"], "rustls-test-client",
        "{detected}"
    );
    let findings: Vec<&Value> = records
        .iter()
        .filter(|r| is_kind_for_pid(r, "finding.shadow_agent", pid))
        .collect();
    assert!(
        findings.is_empty(),
        "a registered agent is no shadow agent: {findings:?}"
    );
}

/// Reads every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)
        .expect("list the sensor's output directory")
        .map_while(Result::ok)
    {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            let bytes =
                std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            files.push((path, bytes));
        }
    }
    files
}

/// Returns the line of `haystack` that contains `needle`, if any.
fn line_containing(haystack: &[u8], needle: &str) -> Option<String> {
    let at = haystack
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())?;
    let start = haystack[..at]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |n| n + 1);
    let end = haystack[at..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(haystack.len(), |n| at + n);
    Some(String::from_utf8_lossy(&haystack[start..end]).into_owned())
}

#[test]
fn secrets_never_written() {
    require_sensor!();
    let server = LlmServer::start(&[]);
    let output = TempDir::new("agents-output");
    let evidence = output.path().join("evidence.jsonl");
    let sensor = Sensor::start(&format!(
        "[output]\nevidence_path = \"{}\"\nflush_interval_ms = 50\n",
        evidence.display()
    ));
    let api_key = format!("sk-test-{}", unique_marker("secret"));
    let prompt = unique_marker("prompt-text-marker");

    // The asyncio client reads the stream to its end, so the response is
    // complete whatever becomes of the sync client's stop at [DONE].
    let python = run_openai_python(&server, &api_key, &prompt, &["--stream", "--async"]).pid;
    // Hooking the node binary can take longer than a short Node.js run
    // (see node_fetch_sni_and_metadata). An idle node process that lives
    // until the hooks are attached lets the run with secrets be captured.
    let idle_node =
        RunningClient::spawn(Command::new("node").args(["-e", "setTimeout(() => {}, 30000)"]));
    let hooked = expect_of(&sensor, idle_node.pid, "sensor.tls_hooked for node", |r| {
        r["kind"] == "sensor.tls_hooked" && r["sensor"]["path"] == "/usr/bin/node"
    });
    drop(idle_node);
    assert!(
        hooked["sensor"]["failures"].is_null(),
        "every node probe attached: {hooked}"
    );
    let node = run_node_fetch(&server, "anthropic", &api_key, &prompt, ANTHROPIC_MODEL).pid;
    let ollama = run_ollama(&server, &prompt).pid;

    // The daemon saw the plaintext that carried the secrets.
    let request = expect_of(
        &sensor,
        python,
        "llm.request of the Python client",
        for_pid("llm.request", python),
    );
    assert!(
        request["llm"]["credential"]["fingerprint"].is_string(),
        "{request}"
    );
    expect_of(
        &sensor,
        python,
        "llm.response of the Python client",
        for_pid("llm.response", python),
    );
    let request = expect_of(
        &sensor,
        node,
        "llm.request of the Node client",
        for_pid("llm.request", node),
    );
    assert!(
        request["llm"]["credential"]["fingerprint"].is_string(),
        "{request}"
    );
    expect_of(
        &sensor,
        node,
        "llm.response of the Node client",
        for_pid("llm.response", node),
    );
    expect_of(
        &sensor,
        ollama,
        "llm.request of the Ollama client",
        for_pid("llm.request", ollama),
    );

    // Taken before stop, because the guard owns the stderr log.
    let stderr = sensor.stderr();
    let records = sensor.stop();
    assert!(
        records.iter().any(|r| r["kind"] == "sensor.stop"),
        "the daemon stopped cleanly"
    );
    let stdout: String = records.iter().map(|r| format!("{r}\n")).collect();
    let mut outputs = vec![
        (PathBuf::from("stdout"), stdout.into_bytes()),
        (PathBuf::from("stderr"), stderr.into_bytes()),
    ];
    outputs.extend(files_under(output.path()));
    assert!(
        outputs.iter().any(|(path, _)| path == &evidence),
        "no evidence file at {}",
        evidence.display()
    );

    for (name, bytes) in &outputs {
        let secrets = [
            ("the API key", api_key.as_str()),
            ("the prompt text", prompt.as_str()),
            ("the response text", server.response_marker.as_str()),
        ];
        for (what, secret) in secrets {
            let line = line_containing(bytes, secret);
            assert!(
                line.is_none(),
                "{} contains {what}: {}",
                name.display(),
                line.unwrap_or_default()
            );
        }
    }
}

/// The sync `openai` client (3.60) stops reading a stream at `data: [DONE]`
/// and closes the connection, so the chunked body's last chunk is never
/// read: the response must be recorded all the same.
#[test]
fn sync_stream_ends_at_done() {
    require_sensor!();
    let server = LlmServer::start(&[]);
    let sensor = Sensor::start("");
    let run = run_openai_python(&server, "sk-test-sync", "list the files", &["--stream"]);
    let pid = run.pid;

    let request = expect_of(
        &sensor,
        pid,
        "llm.request of the stream",
        for_pid("llm.request", pid),
    );
    assert_eq!(request["llm"]["stream"], true, "{request}");
    let response = expect_of(
        &sensor,
        pid,
        "llm.response of the stream",
        for_pid("llm.response", pid),
    );
    assert_eq!(response["llm"]["streaming"], true, "{response}");
    assert_eq!(
        response["llm"]["tool_calls"][0]["name"], "run_shell",
        "{response}"
    );
    assert_eq!(response["llm"]["output_tokens"], 13, "{response}");
}

#[test]
fn large_response_truncated_then_parsed() {
    require_sensor!();
    let server = LlmServer::start(&[]);
    let sensor = Sensor::start("");
    // 64 KiB of text in one event: the server writes it in full 16 KiB TLS
    // records, and each SSL_read of one returns more than the sensor's
    // per-call capture bound of 16383 bytes.
    let run = run_openai_python(
        &server,
        "sk-test-large",
        "pad",
        &["--stream", "--padding", "65536", "--async"],
    );
    let pid = run.pid;

    let response = expect_of(
        &sensor,
        pid,
        "llm.response of the padded stream",
        for_pid("llm.response", pid),
    );
    let llm = &response["llm"];
    assert_eq!(llm["truncated"], true, "{response}");
    assert_eq!(llm["streaming"], true, "{response}");
    assert_eq!(
        llm["tool_calls"][0]["name"], "run_shell",
        "events after the gap are parsed: {response}"
    );
    assert_eq!(
        llm["tool_calls"][0]["call_id"], "call_test_0001",
        "{response}"
    );
    assert_eq!(
        llm["output_tokens"], 13,
        "the last usage event is parsed: {response}"
    );
}

#[test]
fn dns_name_on_connect() {
    require_sensor!();
    let server = LlmServer::start(&["api.anthropic.com"]);
    let sensor = Sensor::start("");
    let mut command = server.client_resolving_by_dns(tls_client_binary());
    command
        .arg("--ca")
        .arg(server.ca())
        .args([
            "--host",
            "api.anthropic.com",
            "--path",
            "/v1/messages",
            "--header",
            "x-api-key: sk-ant-test-dns",
        ])
        .arg("--body")
        .arg(json!({ "model": ANTHROPIC_MODEL, "max_tokens": 64, "messages": [] }).to_string());
    let pid = run_client(&mut command, CLIENT_TIMEOUT).pid;
    let address = server.address.to_string();

    let dns = expect_of(&sensor, pid, "net.dns answer for api.anthropic.com", |r| {
        is_kind_for_pid(r, "net.dns", pid)
            && r["dns"]["query"] == "api.anthropic.com"
            && r["dns"]["answers"] != json!([])
    });
    assert_eq!(dns["dns"]["answers"], json!([address]), "{dns}");

    let connect = expect_of(&sensor, pid, "net.connect to port 443", |r| {
        is_kind_for_pid(r, "net.connect", pid) && r["network"]["destination"]["port"] == 443
    });
    assert_eq!(
        connect["network"]["destination"]["address"], address,
        "{connect}"
    );
    assert_eq!(connect["dns_name"], "api.anthropic.com", "{connect}");
    assert_eq!(connect["provider"]["provider"], "anthropic", "{connect}");
    assert!(
        connect["seq"].as_u64() > dns["seq"].as_u64(),
        "the answer came first: {connect}"
    );

    let detected = expect_of(
        &sensor,
        pid,
        "agent.detected of the DNS client",
        for_pid("agent.detected", pid),
    );
    assert_eq!(
        detected["detection"]["signal"], "dns",
        "the name is known at connect: {detected}"
    );
    assert_eq!(
        detected["detection"]["value"], "api.anthropic.com",
        "{detected}"
    );

    // The DNS answer names the address in the client's network namespace
    // only. A later connect to it from the same namespace gets the name, and
    // one from a namespace of its own does not.
    let same_namespace = run_client(
        Command::new(workload_binary()).args(["connect", "tcp", "block", address.as_str(), "443"]),
        CLIENT_TIMEOUT,
    )
    .pid;
    let connect = expect_of(&sensor, same_namespace, "net.connect from the same namespace", |r| {
        is_kind_for_pid(r, "net.connect", same_namespace)
    });
    assert_eq!(connect["dns_name"], "api.anthropic.com", "{connect}");

    // The namespace's loopback is brought up so the connect sends a SYN
    // (and is refused): the socket tracepoints do not see a connect that
    // fails before that, such as one to a network that is down.
    let other_namespace = run_client(
        Command::new("unshare")
            .args(["--net", "--", "/bin/sh", "-c", r#"ip link set lo up && exec "$0" "$@""#])
            .arg(workload_binary())
            .args(["connect", "tcp", "block", address.as_str(), "443"]),
        CLIENT_TIMEOUT,
    )
    .pid;
    let connect = expect_of(&sensor, other_namespace, "net.connect from another namespace", |r| {
        is_kind_for_pid(r, "net.connect", other_namespace)
    });
    assert!(connect["dns_name"].is_null(), "no name across namespaces: {connect}");
    assert_eq!(connect["network"]["destination"]["address"], address, "{connect}");
}

#[test]
fn split_client_hello() {
    require_sensor!();
    let server = LlmServer::start(&[]);
    let sensor = Sensor::start("");
    let mut command = server.client(tls_client_binary());
    rustls_openai(&mut command, &server, "list the files");
    // 60 bytes end inside the ClientHello, well before its extensions.
    command.args(["--split-hello", "60"]);
    let pid = run_client(&mut command, CLIENT_TIMEOUT).pid;

    let hello = expect_of(
        &sensor,
        pid,
        "tls.hello of the split ClientHello",
        for_pid("tls.hello", pid),
    );
    let tls = &hello["tls"];
    let reassembled = tls["reassembled"] == true;
    let partial = tls["partial"] == true;
    assert!(
        reassembled || partial,
        "the hello is reassembled or marked partial: {hello}"
    );
    if reassembled {
        assert_eq!(tls["sni"], "api.openai.com", "{hello}");
    } else {
        assert!(tls["partial_reason"].is_string(), "{hello}");
    }
}

/// Copies `binary` and every library `ldd` lists for it into `root`, at
/// the same paths; returns the in-root paths of the libraries.
fn copy_with_libraries(root: &Path, binary: &Path) -> Vec<String> {
    let output = Command::new("ldd").arg(binary).output().expect("run ldd");
    assert!(output.status.success(), "ldd {} failed", binary.display());
    let text = String::from_utf8_lossy(&output.stdout);
    let libraries: Vec<String> = text
        .lines()
        .filter_map(|line| line.split_whitespace().find(|word| word.starts_with('/')))
        .map(str::to_owned)
        .collect();
    for path in libraries
        .iter()
        .map(String::as_str)
        .chain([binary.to_str().expect("UTF-8 path")])
    {
        let target = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().expect("a parent directory"))
            .expect("create a directory in the root");
        std::fs::copy(path, &target).unwrap_or_else(|e| panic!("copy {path} into the root: {e}"));
    }
    libraries
}

#[test]
fn plaintext_capture_switched_off() {
    require_sensor!();
    let server = LlmServer::start(&[]);
    let sensor = Sensor::start("[probes]\ntls_plaintext = false\n");
    let pid = run_openai_python(&server, "sk-test-plaintext-off", "list the files", &[]).pid;

    let hello = expect_of(&sensor, pid, "tls.hello of the Python client", for_pid("tls.hello", pid));
    assert_eq!(hello["tls"]["sni"], "api.openai.com", "{hello}");
    assert_eq!(hello["tls"]["plaintext"]["available"], false, "{hello}");
    let reason = hello["tls"]["plaintext"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("probes.tls_plaintext"), "{hello}");
    expect_of(&sensor, pid, "agent.detected by SNI", |r| {
        is_kind_for_pid(r, "agent.detected", pid) && r["detection"]["signal"] == "sni"
    });
    // The client has exited, so all its records are in.
    let records = sensor.records();
    assert!(!records.iter().any(|r| r["kind"] == "sensor.tls_hooked"), "nothing is hooked");
    assert!(
        !records.iter().any(|r| is_kind_for_pid(r, "llm.request", pid)),
        "no plaintext, so no request record"
    );
}

#[test]
fn library_dir_hooked_before_start() {
    require_sensor!();
    // A fresh copy is a file no process maps, so only the start-up hook of
    // its directory can attach to it.
    let dir = TempDir::new("tls-libraries");
    let library = dir.path().join("libssl.so.3");
    std::fs::copy("/usr/lib/x86_64-linux-gnu/libssl.so.3", &library).expect("copy the system libssl");
    std::fs::write(dir.path().join("libssl-notes.txt"), "not a library").expect("write a decoy");
    let sensor = Sensor::start(&format!(
        "[probes]\ntls_executables = []\ntls_library_dirs = [\"{}\", \"/nonexistent-dir\"]\n",
        dir.path().display()
    ));
    let path = library.display().to_string();
    let hooked = sensor
        .wait_for(|r| r["kind"] == "sensor.tls_hooked" && r["sensor"]["path"] == path.as_str())
        .unwrap_or_else(|| panic!("no sensor.tls_hooked for {path}; stderr:\n{}", sensor.stderr()));
    let symbols = hooked["sensor"]["symbols"].as_array().expect("symbols list");
    assert!(symbols.contains(&json!("SSL_write")), "{hooked}");
    assert!(symbols.contains(&json!("SSL_read")), "{hooked}");
    assert!(hooked["sensor"]["failures"].is_null(), "{hooked}");
    // It comes with the start-up records, before any process record.
    let records = sensor.records();
    let first_process = records.iter().position(|r| r["kind"] == "process.exec").unwrap_or(usize::MAX);
    let position = records.iter().position(|r| r["sensor"]["path"] == path.as_str()).expect("hooked record");
    assert!(position < first_process, "hooked at start, not at a process's exec");
}

#[test]
fn container_libssl_hooked_by_inode() {
    require_sensor!();
    let server = LlmServer::start(&[]);
    let sensor = Sensor::start("");
    // A root of its own, as a container image would have, with its own
    // copies of openssl, libssl and libc.
    let root = server.dir().join("root");
    let libraries = copy_with_libraries(&root, Path::new("/usr/bin/openssl"));
    let libssl = libraries
        .iter()
        .find(|path| {
            path.rsplit('/')
                .next()
                .is_some_and(|name| name.starts_with("libssl"))
        })
        .expect("openssl links libssl")
        .clone();
    let copy_inode = std::fs::metadata(root.join(libssl.trim_start_matches('/')))
        .expect("the copied libssl")
        .ino();
    let host_inode = std::fs::metadata(&libssl).expect("the host's libssl").ino();
    assert_ne!(copy_inode, host_inode);
    std::fs::copy(server.ca(), root.join("ca.pem")).expect("copy the CA into the root");

    let body = openai_body("list the files");
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nAuthorization: Bearer sk-test-container\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let connect = format!("{}:443", server.address);
    // pivot_root in a new mount namespace, as container runtimes do, so
    // the process's memory map names its libraries by their paths inside
    // the root. The old root stays mounted at /old, which nothing uses.
    std::fs::create_dir_all(root.join("old")).expect("create the old-root mount point");
    const PIVOT: &str =
        r#"mount --bind "$1" "$1" && cd "$1" && pivot_root . old && shift && exec "$@""#;
    let mut command = Command::new("unshare");
    command
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            PIVOT,
            "sh",
        ])
        .arg(&root)
        .args([
            "/usr/bin/openssl",
            "s_client",
            "-quiet",
            "-verify_return_error",
        ])
        .args([
            "-CAfile",
            "/ca.pem",
            "-servername",
            "api.openai.com",
            "-connect",
            &connect,
        ]);
    let mut client = RunningClient::spawn(&mut command);
    let pid = client.pid;

    // The request waits for the hooks: this test is about where they are
    // attached, not about how soon after a connect.
    let hooked = expect_of(
        &sensor,
        pid,
        "sensor.tls_hooked for the copied libssl",
        |r| r["kind"] == "sensor.tls_hooked" && r["sensor"]["inode"] == copy_inode,
    );
    client.send(request.as_bytes());
    // s_client exits with 1 because the server closes without close_notify,
    // so success is the response, not the exit status.
    let run = client.wait(CLIENT_TIMEOUT);
    assert!(run.stdout.contains("HTTP/1.1 200 OK"), "{run:?}");

    assert_eq!(
        hooked["sensor"]["path"],
        libssl.as_str(),
        "the path inside the root: {hooked}"
    );
    let symbols = hooked["sensor"]["symbols"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(symbols.contains(&json!("SSL_write")), "{hooked}");
    assert!(symbols.contains(&json!("SSL_read")), "{hooked}");

    let hello = expect_of(
        &sensor,
        pid,
        "tls.hello of openssl s_client",
        for_pid("tls.hello", pid),
    );
    assert_eq!(hello["tls"]["sni"], "api.openai.com", "{hello}");
    assert_eq!(hello["tls"]["plaintext"]["available"], true, "{hello}");
    let request = expect_of(
        &sensor,
        pid,
        "llm.request through the copied libssl",
        for_pid("llm.request", pid),
    );
    assert_eq!(request["llm"]["model"], OPENAI_MODEL, "{request}");
}
