//! Reconciliation of agents' own telemetry with what the kernel saw.
//!
//! The test agent (`fixtures/reconcile/agent.py`) is a Python program on
//! the OpenTelemetry SDK that runs tools as `sh -c` subprocesses and
//! reports them as `execute_tool` spans over OTLP/HTTP to the sensor's
//! receiver. It is made an agent by `agents.known_programs`: it runs
//! through a symlink to the Python interpreter whose name is unique to the
//! test, and that name is its argv[0].

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use integration_tests::{require_sensor, sensor_binary, unique_marker, Sensor, TempDir};
use serde_json::{json, Value};

/// Milliseconds the sensor waits for the other side before a finding.
const GRACE_MS: u64 = 2000;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/reconcile").join(name)
}

/// Returns the Python interpreter behind `python3` (pyenv shims are scripts).
fn real_python() -> PathBuf {
    let output = Command::new("python3")
        .args(["-c", "import os, sys; print(os.path.realpath(sys.executable))"])
        .output()
        .expect("run python3");
    assert!(output.status.success(), "python3 failed: {}", String::from_utf8_lossy(&output.stderr));
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// A sensor set up for one test, with its own agent program name.
struct Setup {
    sensor: Sensor,
    agent_program: PathBuf,
    endpoint: String,
    dir: TempDir,
    config_path: PathBuf,
    evidence_path: PathBuf,
}

impl Setup {
    fn start(tag: &str, extra: &str) -> Setup {
        let dir = TempDir::new(tag);
        let name = unique_marker(&format!("rc-agent-{tag}"));
        let agent_program = dir.path().join(&name);
        std::os::unix::fs::symlink(real_python(), &agent_program).expect("symlink the agent program");
        let evidence_path = dir.path().join("evidence.jsonl");
        let config = format!(
            "[agents]\nknown_programs = [\"{name}\"]\n\n\
             [ingest]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = 65536\nrequest_timeout_ms = 2000\n{extra}\n\n\
             [reconcile]\ngrace_ms = {GRACE_MS}\ntick_ms = 100\n\n\
             [output]\nevidence_path = \"{}\"\n",
            evidence_path.display()
        );
        let config_path = dir.path().join("reconcile.toml");
        std::fs::write(&config_path, &config).expect("write the configuration copy");
        let sensor = Sensor::start(&config);
        let start = sensor.expect("sensor.start", |r| r["kind"] == "sensor.start");
        let listen = start["sensor"]["ingest"]["listen"].as_str().unwrap_or_else(|| panic!("no ingest.listen in {start}")).to_owned();
        Setup { sensor, agent_program, endpoint: format!("http://{listen}"), dir, config_path, evidence_path }
    }

    fn listen(&self) -> SocketAddr {
        self.endpoint.trim_start_matches("http://").parse().expect("listen address")
    }

    /// Starts the agent with `steps`; returns its child process.
    fn spawn_agent(&self, instance: &str, pid_attribute: bool, steps: Value) -> std::process::Child {
        let plan = json!({ "endpoint": self.endpoint, "instance": instance, "pid_attribute": pid_attribute, "steps": steps });
        Command::new(&self.agent_program)
            .arg(fixture("agent.py"))
            .arg(plan.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the test agent")
    }

    /// Returns the agent id the sensor gave process `pid`.
    fn agent_id(&self, pid: u32) -> String {
        let detected = self.sensor.expect("agent.detected of the test agent", |r| r["kind"] == "agent.detected" && r["process"]["pid"] == pid);
        detected["agent"]["agent_id"].as_str().expect("agent_id").to_owned()
    }
}

fn finish(child: std::process::Child) {
    let output = child.wait_with_output().expect("wait for the test agent");
    assert!(
        output.status.success(),
        "the test agent failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

fn of_agent<'a>(records: &'a [Value], kind: &str, agent_id: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["kind"] == kind && r["agent"]["agent_id"] == agent_id).collect()
}

fn summary(sensor: &Sensor, agent_id: &str) -> Value {
    match sensor.wait_for_within(Duration::from_secs(30), |r| r["kind"] == "reconcile.summary" && r["agent"]["agent_id"] == agent_id) {
        Some(summary) => summary,
        None => panic!("no reconcile.summary for agent {agent_id}; stderr:\n{}", sensor.stderr()),
    }
}

/// Runs the four-tool scenario: three tools reported, `cat /etc/hostname`
/// not. The second passes its span's trace context in its environment,
/// after an entry longer than the kernel's read buffer, and exits at once:
/// the kernel must read the context at exec.
fn run_three_of_four(setup: &Setup) -> (u32, String) {
    let steps = json!([
        { "run": "echo first", "report": true },
        { "run": "ls /", "report": true, "traceparent": true },
        { "run": "cat /etc/hostname" },
        { "run": "id -u", "report": true },
    ]);
    let child = setup.spawn_agent("three-of-four", true, steps);
    let pid = child.id();
    finish(child);
    (pid, setup.agent_id(pid))
}

#[test]
fn reconcile_unreported_fourth_tool() {
    require_sensor!();
    let setup = Setup::start("four", "");
    let (pid, agent_id) = run_three_of_four(&setup);

    let summary = summary(&setup.sensor, &agent_id);
    assert_eq!(summary["reconcile"]["text"], "3 of 4 observed actions reported", "{summary}");
    assert_eq!(summary["reconcile"]["matched_by"]["command"], 2, "{summary}");
    assert_eq!(summary["reconcile"]["matched_by"]["trace_context"], 1, "{summary}");
    let records = setup.sensor.records();
    let unreported = of_agent(&records, "finding.unreported_action", &agent_id);
    assert_eq!(unreported.len(), 1, "{unreported:#?}");
    let finding = unreported[0];
    assert_eq!(finding["process"]["argv"], json!(["sh", "-c", "cat /etc/hostname"]), "{finding}");
    assert_eq!(finding["process"]["parent"]["pid"], pid, "{finding}");
    assert_eq!(finding["process"]["ancestry"][0], json!(agent_id), "lineage starts at the agent: {finding}");
    let observed = &finding["finding"]["evidence"]["observed"];
    assert_eq!(observed["argv"], json!(["sh", "-c", "cat /etc/hostname"]));
    assert_eq!(finding["finding"]["evidence"]["reported"]["telemetry_received"], true);
    assert!(of_agent(&records, "finding.unobserved_claim", &agent_id).is_empty());
    let traced = records
        .iter()
        .find(|r| r["kind"] == "tool.spawn" && r["process"]["parent"]["pid"] == pid && r["trace_context"].is_object())
        .unwrap_or_else(|| panic!("no tool.spawn of the agent carries trace_context"));
    assert_eq!(traced["process"]["argv"], json!(["sh", "-c", "ls /"]));
    assert!(traced["trace_context"]["traceparent"].as_str().is_some_and(|t| t.starts_with("00-")), "{traced}");
}

#[test]
fn reconcile_unobserved_shell_claim() {
    require_sensor!();
    let setup = Setup::start("claim", "");
    // The claim is sent as hand-written OTLP JSON without `process.pid`,
    // so only the socket ties it to the agent.
    let steps = json!([
        { "run": "echo real", "report": true },
        { "at": 0.3, "claim": "rm -rf /tmp/never-ran", "json": true },
    ]);
    let child = setup.spawn_agent("claimer", false, steps);
    let pid = child.id();
    finish(child);
    let agent_id = setup.agent_id(pid);

    let summary = summary(&setup.sensor, &agent_id);
    assert_eq!(summary["reconcile"]["text"], "1 of 1 observed actions reported", "{summary}");
    assert_eq!(summary["reconcile"]["unobserved_claims"], 1, "{summary}");
    let records = setup.sensor.records();
    let claims = of_agent(&records, "finding.unobserved_claim", &agent_id);
    assert_eq!(claims.len(), 1, "{claims:#?}");
    let reported = &claims[0]["finding"]["evidence"]["reported"];
    assert_eq!(reported["command"], "rm -rf /tmp/never-ran", "{}", claims[0]);
    assert_eq!(reported["sender_pid"], pid, "{}", claims[0]);
    assert_eq!(claims[0]["finding"]["evidence"]["attributed_by"], "socket_peer");
    assert_eq!(claims[0]["process"]["pid"], pid);
    assert!(of_agent(&records, "finding.unreported_action", &agent_id).is_empty());
}

#[test]
fn reconcile_parallel_agents_never_cross() {
    require_sensor!();
    let setup = Setup::start("pair", "");
    // Both run the same commands, interleaved 150 ms apart. A reports all
    // three; B reports only its last, so a report of A matched to a
    // process of B would leave one of A's unreported and one of B's
    // reported.
    let commands = ["echo step-one", "echo step-two", "echo step-three"];
    let steps = |offset: f64, reported: &dyn Fn(usize) -> bool| -> Value {
        Value::Array(
            commands
                .iter()
                .enumerate()
                .map(|(i, command)| json!({ "at": 1.5 + offset + i as f64 * 0.3, "run": command, "report": reported(i) }))
                .collect(),
        )
    };
    let a = setup.spawn_agent("agent-a", true, steps(0.0, &|_| true));
    let b = setup.spawn_agent("agent-b", true, steps(0.15, &|i| i == 2));
    let (a_pid, b_pid) = (a.id(), b.id());
    finish(a);
    finish(b);
    let a_id = setup.agent_id(a_pid);
    let b_id = setup.agent_id(b_pid);
    assert_ne!(a_id, b_id);

    let a_summary = summary(&setup.sensor, &a_id);
    let b_summary = summary(&setup.sensor, &b_id);
    assert_eq!(a_summary["reconcile"]["text"], "3 of 3 observed actions reported", "{a_summary}");
    assert_eq!(b_summary["reconcile"]["text"], "1 of 3 observed actions reported", "{b_summary}");
    let records = setup.sensor.records();
    // Every process a report of A matched is a child of A, and likewise B.
    let spawns: Vec<&Value> = records.iter().filter(|r| r["kind"] == "tool.spawn").collect();
    for (summary, parent) in [(&a_summary, a_pid), (&b_summary, b_pid)] {
        for matched in summary["reconcile"]["matches"].as_array().expect("matches") {
            let spawn = spawns
                .iter()
                .find(|s| s["process"]["exec_id"] == matched["exec_id"])
                .unwrap_or_else(|| panic!("no tool.spawn for {matched}"));
            assert_eq!(spawn["process"]["parent"]["pid"], parent, "{matched} matched a process of the other agent");
        }
    }
    assert!(of_agent(&records, "finding.unreported_action", &a_id).is_empty());
    let b_unreported = of_agent(&records, "finding.unreported_action", &b_id);
    assert_eq!(b_unreported.len(), 2, "{b_unreported:#?}");
    for finding in b_unreported {
        assert_eq!(finding["process"]["parent"]["pid"], b_pid);
    }
    assert!(of_agent(&records, "finding.unobserved_claim", &a_id).is_empty());
    assert!(of_agent(&records, "finding.unobserved_claim", &b_id).is_empty());
}

/// Sends one HTTP/1.1 request and returns the status, or `None` when the
/// connection closed without one. With `half_close` the client shuts down
/// its write side after the body, as some clients do.
fn http_request_with(addr: SocketAddr, head: &str, body: &[u8], half_close: bool) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    if half_close {
        stream.shutdown(std::net::Shutdown::Write).ok()?;
    }
    let mut response = String::new();
    BufReader::new(stream).read_line(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

fn http_request(addr: SocketAddr, head: &str, body: &[u8]) -> Option<u16> {
    http_request_with(addr, head, body, false)
}

fn post(addr: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> Option<u16> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    http_request(addr, &head, body)
}

/// xorshift64*, so a failing fuzz run can be repeated from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A valid trace export request in protobuf: one span named `x` in one
/// scope in one resource (fields 1, 2, 2 and the span's name, field 5).
const VALID_PROTOBUF: &[u8] = &[0x0a, 0x07, 0x12, 0x05, 0x12, 0x03, 0x2a, 0x01, b'x'];

fn valid_json() -> String {
    json!({ "resourceSpans": [{
        "resource": { "attributes": [{ "key": "process.pid", "value": { "intValue": "1" } }] },
        "scopeSpans": [{ "spans": [{
            "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
            "name": "execute_tool bash", "kind": 1,
            "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000001000000000",
            "attributes": [{ "key": "gen_ai.tool.name", "value": { "stringValue": "bash" } }],
        }] }],
    }] })
    .to_string()
}

fn mutate(rng: &mut Rng, valid: &[u8]) -> Vec<u8> {
    let mut body = valid.to_vec();
    match rng.below(6) {
        0 => body.truncate(rng.below(body.len())),
        1 => {
            for _ in 0..=rng.below(4) {
                let at = rng.below(body.len());
                body[at] = rng.next() as u8;
            }
        }
        2 => {
            let at = rng.below(body.len());
            let insert: Vec<u8> = (0..rng.below(32)).map(|_| rng.next() as u8).collect();
            body.splice(at..at, insert);
        }
        3 => body = (0..rng.below(512)).map(|_| rng.next() as u8).collect(),
        4 => {
            // Varints and lengths that claim far more than is there.
            body.extend_from_slice(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        }
        _ => body.reverse(),
    }
    body
}

fn json_oddities() -> Vec<String> {
    let mut deep = String::from(r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"k","value":"#);
    deep.push_str(&r#"{"kvlistValue":{"values":[{"key":"k","value":"#.repeat(60));
    deep.push_str("{}");
    deep.push_str(&"}]}}".repeat(60));
    deep.push_str("}]}}]}");
    vec![
        String::new(),
        "null".into(),
        "[]".into(),
        r#"{"resourceSpans": "no"}"#.into(),
        r#"{"resourceSpans": [1, 2]}"#.into(),
        r#"{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}"#.into(),
        r#"{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": 1e400}]}]}]}"#.into(),
        r#"{"resourceSpans": [{"scopeSpans": [{"spans": [{"kind": "SPAN_KIND_NOPE"}]}]}]}"#.into(),
        r#"{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"intValue": "ten"}}]}]}]}"#.into(),
        "[".repeat(10_000),
        deep,
    ]
}

#[test]
fn reconcile_fuzzed_endpoint_keeps_serving() {
    require_sensor!();
    let setup = Setup::start("fuzz", "");
    let addr = setup.listen();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut bad_requests = 0;
    let mut sent = 0;
    let json = valid_json();
    let oddities = json_oddities();
    for round in 0..400 {
        if Instant::now() > deadline {
            break;
        }
        let (path, content_type, body) = match round % 4 {
            0 => ("/v1/traces", "application/x-protobuf", mutate(&mut rng, VALID_PROTOBUF)),
            1 => ("/v1/logs", "application/x-protobuf", mutate(&mut rng, VALID_PROTOBUF)),
            2 => ("/v1/traces", "application/json", mutate(&mut rng, json.as_bytes())),
            _ => {
                let odd = &oddities[rng.below(oddities.len())];
                ("/v1/logs", "application/json", odd.clone().into_bytes())
            }
        };
        let status = post(addr, path, content_type, &body);
        sent += 1;
        // A mutation can stay valid (unknown protobuf fields are skipped),
        // so 200 is allowed; nothing else is.
        match status {
            Some(200) => {}
            Some(400) => bad_requests += 1,
            other => panic!("request {round} ({content_type}, {} bytes) got status {other:?}; stderr:\n{}", body.len(), setup.sensor.stderr()),
        }
    }
    assert!(sent >= 100, "only {sent} fuzz requests fit in the time bound");
    assert!(bad_requests > sent / 4, "{bad_requests} of {sent} malformed bodies rejected");

    // Each other kind of bad request gets its own status.
    let big = vec![b'{'; 70_000];
    assert_eq!(post(addr, "/v1/traces", "application/json", &big), Some(413));
    assert_eq!(post(addr, "/v1/metrics", "application/json", b"{}"), Some(404));
    assert_eq!(post(addr, "/v1/traces", "text/plain", b"{}"), Some(415));
    assert_eq!(http_request(addr, &format!("GET /v1/traces HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"), b""), Some(405));
    let gzip = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(http_request(addr, &gzip, b"{}"), Some(415));
    // A body shorter than its declared length, then the client stops.
    let short = format!("POST /v1/traces HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n");
    assert_eq!(http_request_with(addr, &short, b"{}", true), Some(400));
    bad_requests += 1;
    // A valid body from a client that half-closes after sending it.
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        json.len()
    );
    assert_eq!(http_request_with(addr, &head, json.as_bytes(), true), Some(200));
    assert_eq!(http_request(addr, "GARBAGE\r\n\r\n", b""), Some(400));

    // Still serving: a valid request in each encoding is accepted.
    assert_eq!(post(addr, "/v1/traces", "application/json", json.as_bytes()), Some(200));
    assert_eq!(post(addr, "/v1/traces", "application/x-protobuf", VALID_PROTOBUF), Some(200));
    let records = setup.sensor.stop();
    let stop = records.iter().find(|r| r["kind"] == "sensor.stop").expect("sensor.stop: the daemon exited by itself");
    let ingest = &stop["sensor"]["ingest"];
    assert_eq!(ingest["rejected_bad_request"], bad_requests, "{ingest}");
    assert_eq!(ingest["rejected_too_large"], 1, "{ingest}");
    assert_eq!(ingest["rejected_not_found"], 1, "{ingest}");
    assert_eq!(ingest["rejected_method_not_allowed"], 1, "{ingest}");
    assert_eq!(ingest["rejected_unsupported_media_type"], 2, "{ingest}");
    drop(setup.dir);
}

/// Requests an upstream receiver got: path, content type and body.
type Received = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// Starts a minimal HTTP/1.1 upstream on loopback that records every
/// request and responds 200, keeping connections alive as the forwarder
/// expects.
fn start_upstream() -> (SocketAddr, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the test upstream");
    let addr = listener.local_addr().expect("upstream address");
    let received: Received = Arc::default();
    let sink = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            let sink = sink.clone();
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().expect("clone the upstream stream");
                let mut reader = BufReader::new(stream);
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = request_line.split_whitespace().nth(1).unwrap_or("").to_owned();
                    let (mut length, mut content_type) = (0usize, String::new());
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        if let Some((name, value)) = line.split_once(':') {
                            match name.trim().to_ascii_lowercase().as_str() {
                                "content-length" => length = value.trim().parse().unwrap_or(0),
                                "content-type" => content_type = value.trim().to_owned(),
                                _ => {}
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    sink.lock().unwrap().push((path, content_type, body));
                    if writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, received)
}

/// Returns the findings and summaries of one agent as comparable keys.
fn finding_keys<'a>(records: impl Iterator<Item = &'a Value>, agent_id: &str) -> BTreeSet<String> {
    records
        .filter(|r| r["agent"]["agent_id"] == agent_id)
        .filter_map(|r| match r["kind"].as_str()? {
            "finding.unreported_action" => Some(format!("unreported {} {}", r["process"]["exec_id"], r["process"]["argv"])),
            "finding.unobserved_claim" => Some(format!("claim {}", r["finding"]["evidence"]["reported"]["call_id"])),
            "reconcile.summary" => Some(format!("summary {} {}", r["reconcile"]["session_id"], r["reconcile"]["text"])),
            _ => None,
        })
        .collect()
}

#[test]
fn reconcile_offline_matches_live() {
    require_sensor!();
    let (upstream, received) = start_upstream();
    let setup = Setup::start("offline", &format!("upstream = \"http://{upstream}\""));
    let (_pid, agent_id) = run_three_of_four(&setup);
    summary(&setup.sensor, &agent_id);

    // Forwarded unchanged: a JSON body with odd spacing arrives byte for byte.
    let odd_json = format!("  {}\n", valid_json());
    assert_eq!(post(setup.listen(), "/v1/traces", "application/json; charset=utf-8", odd_json.as_bytes()), Some(200));
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.lock().unwrap().len() < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let config_path = setup.config_path.clone();
    let evidence_path = setup.evidence_path.clone();
    let dir = setup.dir;
    let live = setup.sensor.stop();

    let forwarded = received.lock().unwrap().clone();
    assert_eq!(forwarded.len(), 4, "three spans and the JSON body: {:?}", forwarded.iter().map(|f| (&f.0, &f.1)).collect::<Vec<_>>());
    for (path, content_type, _) in &forwarded[..3] {
        assert_eq!((path.as_str(), content_type.as_str()), ("/v1/traces", "application/x-protobuf"));
    }
    assert_eq!(forwarded[3], ("/v1/traces".to_owned(), "application/json; charset=utf-8".to_owned(), odd_json.into_bytes()));

    // The forwarded protobuf bodies, as OTLP JSON lines.
    let mut bodies = Vec::new();
    for (index, (_, _, body)) in forwarded[..3].iter().enumerate() {
        let path = dir.path().join(format!("body-{index}.pb"));
        std::fs::write(&path, body).expect("write a forwarded body");
        bodies.push(path);
    }
    let converted = Command::new("python3").arg(fixture("otlp_to_json.py")).args(&bodies).output().expect("run otlp_to_json.py");
    assert!(converted.status.success(), "otlp_to_json.py failed: {}", String::from_utf8_lossy(&converted.stderr));
    let telemetry = dir.path().join("telemetry.jsonl");
    std::fs::write(&telemetry, &converted.stdout).expect("write the telemetry file");

    let binary = sensor_binary().expect("agent-sensor binary");
    let offline = Command::new(binary)
        .args(["reconcile", "--config"])
        .arg(&config_path)
        .arg("--evidence")
        .arg(&evidence_path)
        .arg("--telemetry")
        .arg(&telemetry)
        .output()
        .expect("run agent-sensor reconcile");
    assert_eq!(offline.status.code(), Some(1), "findings exit with 1; stderr: {}", String::from_utf8_lossy(&offline.stderr));
    let offline_records: Vec<Value> = String::from_utf8_lossy(&offline.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("offline output is not JSON ({e}): {line}")))
        .collect();

    let live_keys = finding_keys(live.iter(), &agent_id);
    let offline_keys = finding_keys(offline_records.iter(), &agent_id);
    assert_eq!(live_keys.len(), 2, "one unreported action and one summary: {live_keys:#?}");
    assert_eq!(live_keys, offline_keys);
}
