use serde_json::{json, Value};

use super::*;

fn record(seq: u64, kind: &str, process: Value, extra: Value) -> Value {
    let mut record = json!({
        "schema": "agent-sensor/0.1",
        "id": format!("18a3b0c4d5e6f708-{seq:08x}"),
        "seq": seq,
        "time": format!("2026-12-04T10:00:{seq:02}Z"),
        "kind": kind,
        "host": { "name": "node-1", "boot_id": "00" },
    });
    if !process.is_null() {
        record["process"] = process;
    }
    for (key, value) in extra.as_object().unwrap() {
        record[key] = value.clone();
    }
    record["integrity"] = json!({ "prev_hash": "0".repeat(64), "hash": "1".repeat(64) });
    record
}

fn agent() -> Value {
    json!({ "agent": { "agent_id": "agent-1", "session_id": "session-1", "registered": false } })
}

fn with_agent(extra: Value) -> Value {
    let mut value = agent();
    for (key, v) in extra.as_object().unwrap() {
        value[key] = v.clone();
    }
    value
}

fn process(pid: u32, exec_id: &str, ancestry: &[&str], argv: &[&str]) -> Value {
    json!({ "pid": pid, "exec_id": exec_id, "ancestry": ancestry, "exe": format!("/usr/bin/{}", argv[0]), "argv": argv })
}

/// An agent (pid 100) calls an LLM, runs a tool (pid 200) that connects,
/// whose child (pid 201) opens a file; the policy fails the tool, and a
/// finding names the spawn as its cause. Unrelated records sit between.
fn story() -> Vec<Value> {
    let agent_process = process(100, "E100", &[], &["python3", "agent.py"]);
    let tool = process(200, "E200", &["E100"], &["curl", "http://127.0.0.2/"]);
    let child = process(201, "E201", &["E200", "E100"], &["cat", "/etc/hosts"]);
    let other = process(300, "E300", &[], &["sleep", "1"]);
    let failing = json!({
        "entry": "support-bot", "verdict": "alert",
        "checks": [{ "rule": "support-bot/tools", "result": "fail", "action": "alert", "reason": "no allowed tool matches /usr/bin/curl" }],
        "finding_id": "18a3b0c4d5e6f708-00000009",
    });
    vec![
        record(0, "sensor.start", Value::Null, json!({})),
        record(1, "agent.detected", agent_process.clone(), with_agent(json!({ "detection": { "signal": "sni" } }))),
        record(2, "llm.request", agent_process.clone(), with_agent(json!({ "llm": { "method": "POST", "host": "api.openai.com", "path": "/v1/chat/completions", "model": "gpt-4o-mini" } }))),
        record(3, "process.exec", other.clone(), json!({})),
        record(4, "llm.response", agent_process.clone(), with_agent(json!({ "llm": { "status": 200, "model": "gpt-4o-mini" } }))),
        record(5, "tool.spawn", tool.clone(), with_agent(json!({ "policy": failing }))),
        record(6, "net.connect", tool.clone(), with_agent(json!({
            "network": { "destination": { "address": "127.0.0.2", "port": 80 }, "result": "ECONNREFUSED" },
            "policy": { "entry": "support-bot", "verdict": "allow", "checks": [{ "rule": "support-bot/egress", "result": "pass", "action": "alert" }] },
        }))),
        record(7, "process.exec", child.clone(), with_agent(json!({}))),
        record(8, "file.open", child.clone(), with_agent(json!({ "file": { "path": "/etc/hosts", "access": "read", "result": "ok" } }))),
        record(14, "file.open", child.clone(), with_agent(json!({ "file": { "path": "/lib/x86_64/libc.so.6", "access": "read", "result": "ENOENT" } }))),
        record(9, "finding.policy_violation", tool.clone(), with_agent(json!({
            "finding": { "severity": "high", "title": "tool not allowed", "cause": { "record_id": "18a3b0c4d5e6f708-00000005", "seq": 5, "kind": "tool.spawn" } },
            "policy": { "entry": "support-bot", "verdict": "alert", "checks": [] },
        }))),
        record(13, "finding.shadow_agent", agent_process.clone(), with_agent(json!({ "finding": { "severity": "high", "title": "unregistered AI agent" } }))),
        record(10, "net.connect", other, json!({ "network": { "destination": { "address": "127.0.0.3", "port": 22 }, "result": "ok" } })),
        record(11, "llm.request", agent_process.clone(), with_agent(json!({ "llm": { "method": "POST", "model": "gpt-4o-mini" } }))),
        record(12, "agent.session_end", agent_process, with_agent(json!({ "session": { "tool_spawns": 1 } }))),
    ]
}

fn seqs(values: &Value) -> Vec<u64> {
    values.as_array().unwrap().iter().map(|r| r["seq"].as_u64().unwrap()).collect()
}

#[test]
fn spawn_explained_by_seq() {
    let evidence = Evidence::from_records(story());
    let explanation = explain(&evidence, "5").unwrap();
    assert_eq!(explanation["target"]["kind"], "tool.spawn");
    assert_eq!(explanation["tool_spawn"]["seq"], 5);
    assert_eq!(explanation["session"]["session_id"], "session-1");
    assert_eq!(explanation["session"]["detected"]["seq"], 1);
    assert_eq!(explanation["session"]["ended"]["seq"], 12);
    assert_eq!(explanation["llm_before"]["request"]["seq"], 2, "the request before the reply, not the later one");
    assert_eq!(explanation["llm_before"]["response"]["seq"], 4);
    assert_eq!(seqs(&explanation["after"]), [6, 7, 8, 14], "the tool's connect, its child's exec and file opens");
    assert_eq!(seqs(&explanation["findings"]), [9, 13], "the finding the spawn caused, and the one about the agent");
    assert_eq!(explanation["tool_spawn"]["policy"]["checks"][0]["result"], "fail");
}

#[test]
fn same_story_by_id_and_exec_id() {
    let evidence = Evidence::from_records(story());
    for id in ["18a3b0c4d5e6f708-00000005", "E200"] {
        let explanation = explain(&evidence, id).unwrap();
        assert_eq!(explanation["target"]["seq"], 5, "{id}");
        assert_eq!(seqs(&explanation["after"]), [6, 7, 8, 14], "{id}");
    }
}

#[test]
fn later_record_finds_its_spawn() {
    let evidence = Evidence::from_records(story());
    let explanation = explain(&evidence, "8").unwrap();
    assert_eq!(explanation["target"]["kind"], "file.open");
    assert_eq!(explanation["tool_spawn"]["seq"], 5, "the file open's grandparent spawn");
    assert_eq!(explanation["llm_before"]["response"]["seq"], 4);
}

#[test]
fn record_outside_agents_has_no_session() {
    let evidence = Evidence::from_records(story());
    let explanation = explain(&evidence, "10").unwrap();
    assert!(explanation["session"]["session_id"].is_null());
    assert!(explanation["tool_spawn"].is_null());
    assert!(explanation["llm_before"]["request"].is_null());
    let text = human(&explanation);
    assert!(text.contains("no agent session"), "{text}");
    assert!(text.contains("no tool spawn"), "{text}");
}

#[test]
fn unknown_id_is_an_error() {
    let evidence = Evidence::from_records(story());
    let error = explain(&evidence, "no-such-id").unwrap_err();
    assert!(matches!(error, ExplainError::NotFound { .. }), "{error}");
    assert!(error.to_string().contains("no-such-id"), "{error}");
    assert!(explain(&evidence, "999").is_err());
}

#[test]
fn tree_shows_chain_and_checks() {
    let evidence = Evidence::from_records(story());
    let text = human(&explain(&evidence, "5").unwrap());
    let order = ["agent agent-1 session session-1", "seq 1 ", "llm call  seq 2", "reply     seq 4", "tool    * seq 5", "check support-bot/tools fail: no allowed tool matches /usr/bin/curl", "- seq 6", "check support-bot/egress pass", "- seq 8", "/etc/hosts read", "1 failed read-only opens not shown", "finding   seq 9", "finding   seq 13", "ended     seq 12"];
    let mut from = 0;
    for part in order {
        let at = text[from..].find(part).unwrap_or_else(|| panic!("{part:?} missing or out of order in:\n{text}"));
        from += at + part.len();
    }
}

#[test]
fn files_read_in_any_order() {
    let dir = std::env::temp_dir().join(format!("agent-sensor-explain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lines: Vec<String> = story().iter().map(Value::to_string).collect();
    let first = dir.join("evidence-20261204T100000Z-00000000000000000000.jsonl");
    let active = dir.join("evidence.jsonl");
    std::fs::write(&first, lines[..6].join("\n") + "\n").unwrap();
    // The parts are split by position, not seq, so records also come out of order.
    // A torn last line, as a crash leaves it.
    std::fs::write(&active, lines[6..].join("\n") + "\n{\"schema\":\"agent-sen").unwrap();
    let evidence = Evidence::read(&[active.clone(), first.clone()]).unwrap();
    assert_eq!(evidence.len(), 15);
    assert_eq!(evidence.skipped_lines, 1);
    assert_eq!(seqs(&explain(&evidence, "5").unwrap()["after"]), [6, 7, 8, 14]);
    let found = files_of(&active).unwrap();
    assert_eq!(found, [first.clone(), active.clone()]);

    let ocsf = dir.join("ocsf.jsonl");
    std::fs::write(&ocsf, "{\"class_uid\":1007,\"metadata\":{\"event_code\":\"process.exec\",\"sequence\":0}}\n").unwrap();
    let error = Evidence::read(&[ocsf]).err().unwrap();
    assert!(error.to_string().contains("OCSF"), "{error}");
    assert!(matches!(Evidence::read(&[dir.join("missing.jsonl")]), Err(ExplainError::Read { .. })));
    let _ = std::fs::remove_dir_all(&dir);
}
