use std::{io::Write as _, path::PathBuf, process::Command};

use serde_json::{json, Value};

use super::*;
use crate::evidence::chain::{self, SealedLine, GENESIS};

fn host() -> Value {
    json!({ "name": "node-1", "boot_id": "0123456789abcdef0123456789abcdef" })
}

fn head(kind: &str, seq: u64) -> Value {
    json!({
        "schema": "agent-sensor/0.1",
        "id": format!("18a3b0c4d5e6f708-{seq:08x}"),
        "seq": seq,
        "time": "2026-12-04T10:00:00.123456789Z",
        "time_unix_nano": 1_796_378_400_123_456_789u64,
        "kind": kind,
        "host": host(),
    })
}

fn with(mut record: Value, sections: Value) -> Value {
    for (key, value) in sections.as_object().unwrap() {
        record[key] = value.clone();
    }
    record
}

fn process_section() -> Value {
    json!({
        "pid": 4242, "ns_pid": 4242, "pid_ns": 4026531836u64, "ppid": 4200,
        "exec_id": "01234567:4242:100:200", "parent_exec_id": "01234567:4200:90:95",
        "origin": "exec", "start_time": "2026-12-04T10:00:00.12Z",
        "exe": "/usr/bin/curl", "exe_sha256": "ab".repeat(32), "exec_path": "/usr/bin/curl",
        "argv": ["curl", "http://127.0.0.2:8080/"], "argv_bytes": 28, "uid": 1000, "gid": 1000,
        "comm": "curl", "cgroup_id": 77,
        "parent": { "pid": 4200, "exec_id": "01234567:4200:90:95", "exe": "/usr/bin/python3.13", "argv": ["python3", "agent.py"] },
        "ancestry": ["01234567:4200:90:95", "01234567:1:1:1"],
    })
}

fn agent_section() -> Value {
    json!({ "agent_id": "agent-1", "session_id": "session-1", "registered": false, "detected_by": [] })
}

fn failing_tools_policy() -> Value {
    json!({
        "entry": "support-bot",
        "verdict": "alert",
        "checks": [{
            "rule": "support-bot/tools", "result": "fail", "action": "alert",
            "observed": { "exe": "/usr/bin/curl", "name": "curl", "argv": ["curl", "http://127.0.0.2:8080/"] },
            "allowed": [{ "exe": "/usr/bin/git" }],
            "reason": "no allowed tool matches /usr/bin/curl",
        }],
        "finding_id": "18a3b0c4d5e6f708-00000009",
    })
}

/// Builds one record of each kind the mapping distinguishes, with the
/// policy fields where the policy stage adds them.
fn sample_records() -> Vec<Value> {
    let process = process_section();
    vec![
        with(head("sensor.start", 0), json!({ "sensor": { "version": "0.1.0", "hooks": ["exec"] } })),
        with(head("process.exec", 1), json!({ "process": process, "workload": { "kind": "host", "user": "alice" } })),
        with(head("tool.spawn", 2), json!({ "process": process, "agent": agent_section(), "policy": failing_tools_policy(), "policy_sha256": "cd".repeat(32) })),
        with(
            head("net.connect", 3),
            json!({
                "process": process, "agent": agent_section(), "dns_name": "example.test",
                "network": { "protocol": "tcp", "destination": { "address": "127.0.0.2", "port": 8080, "family": "ipv4" }, "result": "ECONNREFUSED", "errno": 111, "fd": 3 },
                "policy": { "entry": null, "verdict": "allow", "checks": [{ "rule": "defaults/egress", "result": "not_applicable", "action": "record", "observed": { "address": "127.0.0.2", "port": 8080, "host": null, "protocol": "tcp" }, "allowed": null, "reason": "no egress rule" }] },
            }),
        ),
        with(
            head("net.connect", 4),
            json!({ "process": process, "network": { "protocol": "unknown", "destination": null, "result": "ok" } }),
        ),
        with(
            head("file.open", 5),
            json!({
                "process": process, "agent": agent_section(),
                "file": { "path": "/home/alice/.aws/credentials", "result": "ok", "access": "read", "flags": ["O_RDONLY"] },
                "policy": { "entry": "support-bot", "verdict": "alert", "checks": [{ "rule": "support-bot/sensitive_paths", "result": "fail", "action": "alert", "observed": { "path": "/home/alice/.aws/credentials", "home": ["/home/alice"] }, "allowed": ["~/.aws/**"], "matched": { "index": 0, "entry": "~/.aws/**" } }] },
            }),
        ),
        with(
            head("file.rename", 6),
            json!({ "process": process, "file": { "path": "/tmp/a", "new_path": "/tmp/b", "result": "ENOENT", "errno": 2 } }),
        ),
        with(
            head("llm.request", 7),
            json!({
                "process": process, "agent": agent_section(),
                "llm": { "api": "openai.chat_completions", "provider": "openai", "method": "POST", "path": "/v1/chat/completions", "host": "api.openai.com", "model": "gpt-4o-mini" },
                "connection": { "destination": { "address": "127.0.0.9", "port": 443, "family": "ipv4" }, "protocol": "tcp", "sni": "api.openai.com" },
            }),
        ),
        with(
            head("llm.response", 8),
            json!({ "process": process, "llm": { "status": 200, "model": "gpt-4o-mini", "tool_calls": [{ "name": "run_shell" }] } }),
        ),
        with(
            head("finding.policy_violation", 9),
            json!({
                "process": process, "agent": agent_section(),
                "finding": {
                    "severity": "high", "title": "tool not allowed", "description": "The agent ran a tool its policy does not list.",
                    "references": [{ "framework": "owasp_agentic_top10_2026", "id": "ASI02", "name": "Tool Misuse and Exploitation" }, { "framework": "csa_maestro", "id": "L3" }],
                    "cause": { "record_id": "18a3b0c4d5e6f708-00000002", "seq": 2, "kind": "tool.spawn" },
                    "evidence": { "argv": ["curl"] },
                },
                "policy": failing_tools_policy(),
            }),
        ),
        with(head("finding.shadow_agent", 10), json!({ "process": process, "finding": { "severity": "high", "title": "unregistered AI agent", "evidence": { "endpoints": [] } } })),
        with(head("agent.detected", 11), json!({ "process": process, "agent": agent_section(), "detection": { "signal": "sni" } })),
        with(head("tls.hello", 12), json!({ "process": process, "network": { "protocol": "tcp", "destination": { "address": "127.0.0.9", "port": 443, "family": "ipv4" }, "result": "ok" }, "tls": { "sni": "api.openai.com" } })),
        with(head("process.exit", 13), json!({ "process": process, "exit": { "code": 3, "signal": null } })),
        with(head("evidence.checkpoint", 14), json!({ "checkpoint": { "reason": "rotation", "from_seq": 0, "to_seq": 13, "hash": "00".repeat(32), "algorithm": "ed25519", "public_key_sha256": null, "signature": null } })),
        with(head("net.dns", 16), json!({ "process": process, "dns": { "query": "api.openai.com", "answers": ["127.0.0.9", "::1"], "rcode": 0, "cnames": ["edge.example.test"] }, "provider": { "provider": "openai" } })),
        with(head("some.future_kind", 15), json!({ "anything": [1, 2] })),
    ]
}

fn rendered(record: &Value) -> Value {
    let mut out = Vec::new();
    render(&serde_json::to_vec(record).unwrap(), &mut out).unwrap();
    serde_json::from_slice(&out).unwrap()
}

fn event_of(kind: &str) -> Value {
    let record = sample_records().into_iter().find(|r| r["kind"] == kind).unwrap();
    rendered(&record)
}

#[test]
fn classes_per_kind() {
    let expected = [
        ("sensor.start", 1008, 6),
        ("process.exec", 1007, 1),
        ("tool.spawn", 1007, 1),
        ("process.exit", 1007, 2),
        ("net.connect", 4001, 5),
        ("tls.hello", 4001, 6),
        ("file.open", 1001, 14),
        ("file.rename", 1001, 5),
        ("llm.request", 4002, 6),
        ("finding.policy_violation", 2004, 1),
        ("finding.shadow_agent", 2004, 1),
        ("agent.detected", 0, 99),
        ("evidence.checkpoint", 1008, 5),
        ("net.dns", 4003, 2),
        ("some.future_kind", 0, 99),
    ];
    for (kind, class_uid, activity_id) in expected {
        let event = event_of(kind);
        assert_eq!(event["class_uid"], class_uid, "{kind}: {event}");
        assert_eq!(event["activity_id"], activity_id, "{kind}: {event}");
        assert_eq!(event["type_uid"], class_uid * 100 + activity_id, "{kind}: {event}");
        assert_eq!(event["metadata"]["event_code"], kind, "{kind}: {event}");
    }
}

#[test]
fn head_goes_to_metadata_and_device() {
    let event = event_of("process.exec");
    assert_eq!(event["metadata"]["sequence"], 1);
    assert_eq!(event["metadata"]["uid"], "18a3b0c4d5e6f708-00000001");
    assert_eq!(event["metadata"]["version"], "1.8.0");
    assert_eq!(event["metadata"]["original_time"], "2026-12-04T10:00:00.123456789Z");
    assert_eq!(event["time"], 1_796_378_400_123u64);
    assert_eq!(event["device"]["hostname"], "node-1");
    assert_eq!(event["device"]["boot_uid"], "0123456789abcdef0123456789abcdef");
    for member in ["id", "seq", "kind", "host", "time_unix_nano"] {
        assert!(event.get(member).is_none(), "{member} left at the top: {event}");
    }
}

#[test]
fn exec_maps_process_and_parent() {
    let event = event_of("process.exec");
    let process = &event["process"];
    assert_eq!(process["pid"], 4242);
    assert_eq!(process["uid"], "01234567:4242:100:200");
    assert_eq!(process["name"], "curl");
    assert_eq!(process["cmd_line"], "curl http://127.0.0.2:8080/");
    assert_eq!(process["file"]["hashes"][0]["value"], "ab".repeat(32));
    assert_eq!(process["user"]["uid"], "1000");
    assert_eq!(process["user"]["name"], "alice");
    assert_eq!(process["parent_process"]["pid"], 4200);
    assert_eq!(process["ancestry"][1]["uid"], "01234567:1:1:1");
    assert_eq!(event["actor"]["process"]["uid"], "01234567:4200:90:95", "the parent launched it");
    // The argv array is kept exactly, because cmd_line loses word boundaries.
    assert_eq!(event["unmapped"]["process"]["argv"][1], "http://127.0.0.2:8080/");
    assert!(event["unmapped"]["process"].get("pid").is_none());
    assert_eq!(event["unmapped"]["workload"]["user"], "alice");
}

#[test]
fn connect_maps_endpoint_and_status() {
    let event = event_of("net.connect");
    assert_eq!(event["dst_endpoint"]["ip"], "127.0.0.2");
    assert_eq!(event["dst_endpoint"]["port"], 8080);
    assert_eq!(event["dst_endpoint"]["hostname"], "example.test");
    assert_eq!(event["connection_info"]["protocol_num"], 6);
    assert_eq!(event["status_id"], 2);
    assert_eq!(event["status_code"], "ECONNREFUSED");
    assert_eq!(event["actor"]["process"]["pid"], 4242);
    assert_eq!(event["unmapped"]["network"]["errno"], 111);
}

#[test]
fn base_event_keeps_sections_unmapped() {
    let event = event_of("agent.detected");
    assert_eq!(event["actor"]["process"]["pid"], 4242, "{event}");
    assert_eq!(event["unmapped"]["agent"]["session_id"], "session-1", "{event}");
    assert_eq!(event["unmapped"]["detection"]["signal"], "sni", "{event}");
    assert_eq!(event["unmapped"]["process"]["argv"][0], "curl", "{event}");
    let future = event_of("some.future_kind");
    assert_eq!(future["unmapped"]["anything"][1], 2, "{future}");
}

#[test]
fn dns_answer_maps_query_and_answers() {
    let event = event_of("net.dns");
    assert_eq!(event["query"]["hostname"], "api.openai.com");
    assert_eq!(event["answers"][0]["rdata"], "127.0.0.9");
    assert_eq!(event["answers"][0]["type"], "A");
    assert_eq!(event["answers"][1]["type"], "AAAA");
    assert_eq!(event["answers"][2]["rdata"], "edge.example.test");
    assert_eq!(event["rcode_id"], 0);
    assert_eq!(event["rcode"], "NoError");
    assert_eq!(event["actor"]["process"]["pid"], 4242);
    assert!(event["unmapped"].get("dns").is_none(), "{event}");
    assert_eq!(event["unmapped"]["provider"]["provider"], "openai");
}

#[test]
fn nonblocking_connect_status_from_outcome() {
    let cases = [("established", Some(1), "Open"), ("ECONNREFUSED", Some(2), "Refuse"), ("pending", None, "Open")];
    for (outcome, status_id, activity) in cases {
        let record = with(
            head("net.connect", 20),
            json!({ "process": process_section(), "network": { "protocol": "tcp", "destination": { "address": "127.0.0.2", "port": 80, "family": "ipv4" }, "result": "EINPROGRESS", "outcome": outcome } }),
        );
        let event = rendered(&record);
        assert_eq!(event["status_id"].as_u64(), status_id, "{outcome}: {event}");
        assert_eq!(event["activity_name"], activity, "{outcome}: {event}");
        assert_eq!(event["status_detail"], outcome, "{outcome}: {event}");
    }
}

#[test]
fn policy_checks_become_enrichments() {
    let event = event_of("file.open");
    let enrichments = event["enrichments"].as_array().unwrap();
    assert_eq!(enrichments.len(), 2, "{event}");
    assert_eq!(enrichments[0]["name"], "support-bot/sensitive_paths");
    assert_eq!(enrichments[0]["value"], "fail");
    assert_eq!(enrichments[0]["data"]["observed"]["path"], "/home/alice/.aws/credentials");
    assert_eq!(enrichments[0]["data"]["matched"]["entry"], "~/.aws/**");
    assert_eq!(enrichments[1]["name"], "policy.verdict");
    assert_eq!(enrichments[1]["value"], "alert");
    assert!(event["unmapped"].get("policy").is_none(), "{event}");
    assert_eq!(event["file"]["path"], "/home/alice/.aws/credentials");
    assert_eq!(event["file"]["name"], "credentials");
    let observables = event["observables"].as_array().unwrap();
    assert!(observables.iter().any(|o| o["name"] == "file.path" && o["type_id"] == 45), "{event}");
}

#[test]
fn finding_maps_info_evidences_and_references() {
    let event = event_of("finding.policy_violation");
    assert_eq!(event["severity_id"], 4);
    assert_eq!(event["is_alert"], true);
    let info = &event["finding_info"];
    assert_eq!(info["uid"], "18a3b0c4d5e6f708-00000009");
    assert_eq!(info["title"], "tool not allowed");
    assert_eq!(info["types"][0], "finding.policy_violation");
    assert_eq!(info["related_events"][0]["uid"], "18a3b0c4d5e6f708-00000002");
    assert_eq!(info["tags"][0]["name"], "owasp_agentic_top10_2026");
    assert_eq!(info["tags"][0]["value"], "ASI02 Tool Misuse and Exploitation");
    assert_eq!(info["tags"][1]["value"], "L3");
    let evidences = event["evidences"].as_array().unwrap();
    assert_eq!(evidences[0]["data"]["argv"][0], "curl");
    assert_eq!(evidences[0]["process"]["pid"], 4242);
    assert_eq!(evidences[1]["name"], "support-bot/tools");
    assert_eq!(evidences[1]["verdict"], "fail");
    assert_eq!(evidences[1]["data"]["allowed"][0]["exe"], "/usr/bin/git");
}

#[test]
fn unmapped_is_last_and_never_empty() {
    for record in sample_records() {
        let mut out = Vec::new();
        render(&serde_json::to_vec(&record).unwrap(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let start = text.rfind(",\"unmapped\":{").unwrap_or_else(|| panic!("{text}"));
        let tail: Value = serde_json::from_str(&text[start + 12..text.len() - 1])
            .unwrap_or_else(|error| panic!("unmapped is not the last member ({error}): {text}"));
        assert_eq!(tail["schema"], "agent-sensor/0.1", "{text}");
    }
}

#[test]
fn sealed_event_verifies_and_parses() {
    let record = sample_records().remove(2);
    let mut line = Vec::new();
    render(&serde_json::to_vec(&record).unwrap(), &mut line).unwrap();
    let unsealed = line.clone();
    let hash = chain::seal_nested(&GENESIS, &mut line).unwrap();
    let sealed = SealedLine::parse(&line).unwrap();
    assert!(sealed.is_self_consistent());
    assert_eq!(sealed.hash, hash);
    assert_eq!(sealed.record(), unsealed, "the record is the line without its integrity member");
    let meta = sealed.meta().unwrap();
    assert_eq!((meta.seq, meta.kind.as_str()), (2, "tool.spawn"));
    let value: Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(value["unmapped"]["integrity"]["hash"], chain::hex_string(&hash));
    assert!(value.get("integrity").is_none());
}

fn validator() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/ocsf/validate.py")
}

/// Validates the sealed events of every sample record against the OCSF
/// 1.8 schemas, as written: integrity member included.
#[test]
fn sample_events_match_ocsf_schema() {
    let mut lines = Vec::new();
    let mut prev = GENESIS;
    for record in sample_records() {
        let mut line = Vec::new();
        render(&serde_json::to_vec(&record).unwrap(), &mut line).unwrap();
        prev = chain::seal_nested(&prev, &mut line).unwrap();
        lines.extend_from_slice(&line);
        lines.push(b'\n');
    }
    let mut child = Command::new("python3")
        .arg(validator())
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs validate.py (cargo xtask setup installs jsonschema)");
    child.stdin.take().unwrap().write_all(&lines).unwrap();
    let output = child.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "OCSF schema validation failed:\n{report}");
    assert!(report.contains(&format!("{} events checked, 0 invalid", sample_records().len())), "{report}");
}

#[test]
fn validator_rejects_bad_event() {
    let mut event = event_of("process.exec");
    event["process"]["pid"] = json!("not a number");
    event["not_an_ocsf_member"] = json!(1);
    let dir = std::env::temp_dir().join(format!("agent-sensor-ocsf-bad-{}", std::process::id()));
    std::fs::write(&dir, format!("{event}\n")).unwrap();
    let output = Command::new("python3").arg(validator()).arg(&dir).output().unwrap();
    let _ = std::fs::remove_file(&dir);
    let report = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(report.contains("not_an_ocsf_member"), "{report}");
    assert!(report.contains("/process/pid"), "{report}");
}

/// Prints the cost of rendering a process record as OCSF next to the cost
/// of serialising it natively; run with `--ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn render_cost() {
    let record = sample_records().remove(2);
    let native = serde_json::to_vec(&record).unwrap();
    let rounds = 50_000;
    let start = std::time::Instant::now();
    let mut out = Vec::new();
    for _ in 0..rounds {
        out.clear();
        serde_json::to_writer(&mut out, &record).unwrap();
    }
    let serialise = start.elapsed();
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        out.clear();
        render(&native, &mut out).unwrap();
    }
    let ocsf = start.elapsed();
    println!(
        "native serialisation {:.2} us, OCSF render {:.2} us per record ({} -> {} bytes)",
        serialise.as_secs_f64() * 1e6 / f64::from(rounds),
        ocsf.as_secs_f64() * 1e6 / f64::from(rounds),
        native.len(),
        out.len()
    );
}
