//! Agents' reports about themselves, normalised into [`Report`]s.
//!
//! Sources: OpenTelemetry GenAI spans (`execute_tool`, `invoke_agent`,
//! chat), OTLP log records of agents that log tool decisions and results,
//! JSON-lines files with a configurable field mapping, and MCP
//! `tools/call` JSON-RPC requests found in those files. Attribute names of
//! the current GenAI semantic conventions are read first, then the older or
//! vendor names still seen in the field (OpenInference, Traceloop, Claude
//! Code's log events).

use opentelemetry_proto::tonic::{
    collector::{logs::v1::ExportLogsServiceRequest, trace::v1::ExportTraceServiceRequest},
    common::v1::{any_value, AnyValue, KeyValue},
};
use serde::Serialize;
use serde_json::{json, Value};

use crate::ingest::otlp::hex_id;

/// Maximum argument text kept per report. Longer text is cut and marked
/// with `arguments_truncated`, and its command is read from the kept part.
pub const MAX_ARGUMENT_BYTES: usize = 8192;

/// Origin of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    OtlpSpan,
    OtlpLog,
    Jsonl,
    Mcp,
}

/// Kind of event a report describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// A tool call (`execute_tool` span, tool log event, MCP `tools/call`).
    ExecuteTool,
    /// An agent invocation (`invoke_agent` span).
    InvokeAgent,
    /// An LLM call (chat, text completion and similar spans).
    Chat,
    /// Anything else that names the agent's process or session.
    Other,
}

/// One tool call or other event as the agent reported it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub source: Source,
    pub operation: Operation,
    /// Span name, log event name or JSON-RPC method.
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    /// The tool's arguments as reported, as JSON text or plain text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub arguments_truncated: bool,
    /// The command line a shell tool was asked to run, from the arguments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The agent's own session or conversation id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The resource's `process.pid`: the pid the agent claims.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The pid that owns the socket the request came in on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_instance_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    /// Unix nanoseconds; equal to `end_ns` for reports with one timestamp.
    pub start_ns: u64,
    pub end_ns: u64,
    /// True when only one point in time was reported, so the match window
    /// is `reconcile.point_window_ms` on both sides.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub point_in_time: bool,
    /// A log event that reports the tool as not run (a rejected decision).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub declined: bool,
    /// The JSON-lines file the report was read from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

impl Report {
    fn new(source: Source, name: String) -> Report {
        Report {
            source,
            operation: Operation::Other,
            name,
            tool_name: None,
            call_id: None,
            arguments: None,
            arguments_truncated: false,
            command: None,
            session_id: None,
            pid: None,
            sender_pid: None,
            service_name: None,
            service_instance_id: None,
            trace_id: None,
            span_id: None,
            start_ns: 0,
            end_ns: 0,
            point_in_time: false,
            declined: false,
            file: None,
        }
    }

    /// Sets the arguments and, when they carry one, the shell command.
    pub fn set_arguments(&mut self, arguments: &Value) {
        if self.command.is_none() {
            self.command = command_of(arguments);
        }
        let mut text = match arguments {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        if text.len() > MAX_ARGUMENT_BYTES {
            let mut cut = MAX_ARGUMENT_BYTES;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            self.arguments_truncated = true;
        }
        self.arguments = Some(text);
    }
}

/// Keys of a tool's arguments that hold the command a shell tool runs:
/// common tool schemas (`command`, `cmd`), Claude Code's log events
/// (`bash_command`, `full_command`) and others seen in the field.
const COMMAND_KEYS: &[&str] = &["command", "cmd", "full_command", "bash_command", "commandLine", "command_line", "script"];

/// Extracts the shell command from a tool's arguments. Arguments that are
/// a JSON object in a string are parsed first; an argv array is joined.
pub fn command_of(arguments: &Value) -> Option<String> {
    match arguments {
        Value::String(text) => {
            let parsed: Value = serde_json::from_str(text).ok()?;
            parsed.is_object().then(|| command_of(&parsed)).flatten()
        }
        Value::Object(map) => COMMAND_KEYS.iter().find_map(|key| match map.get(*key)? {
            Value::String(command) if !command.trim().is_empty() => Some(command.clone()),
            Value::Array(words) => {
                let words: Option<Vec<&str>> = words.iter().map(Value::as_str).collect();
                words.filter(|w| !w.is_empty()).map(|w| w.join(" "))
            }
            _ => None,
        }),
        _ => None,
    }
}

/// Converts an attribute value to JSON. Strings stay strings, so arguments
/// sent as JSON text are parsed later by [`command_of`].
pub fn any_to_json(value: &AnyValue) -> Value {
    use any_value::Value as V;
    match &value.value {
        Some(V::StringValue(text)) => json!(text),
        Some(V::BoolValue(flag)) => json!(flag),
        Some(V::IntValue(number)) => json!(number),
        Some(V::DoubleValue(number)) => json!(number),
        Some(V::ArrayValue(array)) => Value::Array(array.values.iter().map(any_to_json).collect()),
        Some(V::KvlistValue(list)) => Value::Object(
            list.values.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map(any_to_json).unwrap_or(Value::Null))).collect(),
        ),
        Some(V::BytesValue(bytes)) => json!(hex_id(bytes).unwrap_or_default()),
        // An index into a profiles string table, meaningless here.
        Some(V::StringValueStrindex(_)) | None => Value::Null,
    }
}

/// Attribute lookup over one or more attribute lists, first key first.
struct Attributes<'a> {
    lists: [&'a [KeyValue]; 2],
}

impl<'a> Attributes<'a> {
    fn find(&self, keys: &[&str]) -> Option<&'a AnyValue> {
        keys.iter().find_map(|key| {
            self.lists.iter().find_map(|list| list.iter().find(|kv| kv.key == *key).and_then(|kv| kv.value.as_ref()))
        })
    }

    /// Returns a scalar attribute as text, with numbers and booleans printed.
    fn text(&self, keys: &[&str]) -> Option<String> {
        use any_value::Value as V;
        match &self.find(keys)?.value {
            Some(V::StringValue(text)) if !text.is_empty() => Some(text.clone()),
            Some(V::IntValue(number)) => Some(number.to_string()),
            Some(V::DoubleValue(number)) => Some(number.to_string()),
            Some(V::BoolValue(flag)) => Some(flag.to_string()),
            _ => None,
        }
    }

    fn number(&self, keys: &[&str]) -> Option<u64> {
        use any_value::Value as V;
        match &self.find(keys)?.value {
            Some(V::IntValue(number)) => u64::try_from(*number).ok(),
            Some(V::DoubleValue(number)) if *number >= 0.0 => Some(*number as u64),
            Some(V::StringValue(text)) => text.trim().parse::<f64>().ok().filter(|n| *n >= 0.0).map(|n| n as u64),
            _ => None,
        }
    }
}

const OPERATION: &[&str] = &["gen_ai.operation.name"];
const TOOL_NAME: &[&str] = &["gen_ai.tool.name", "tool.name", "gen_ai.tool_name", "tool_name", "tool_call.function.name"];
const CALL_ID: &[&str] = &["gen_ai.tool.call.id", "gen_ai.tool_call.id", "tool_call.id", "tool.call.id", "tool_use_id", "tool_call_id"];
const ARGUMENTS: &[&str] = &[
    "gen_ai.tool.call.arguments",
    "gen_ai.tool.arguments",
    "tool.parameters",
    "tool_call.function.arguments",
    "tool_parameters",
    "tool_input",
    "input.value",
    "traceloop.entity.input",
];
const SESSION_ID: &[&str] = &["gen_ai.conversation.id", "session.id", "gen_ai.session.id", "conversation.id", "session_id"];
const EVENT_NAME: &[&str] = &["event.name"];
const DURATION_MS: &[&str] = &["duration_ms"];
const DECISION: &[&str] = &["decision"];

/// Chat-like operations of the GenAI conventions.
const CHAT_OPERATIONS: &[&str] = &["chat", "text_completion", "generate_content", "embeddings"];

/// Log event names that report a tool call even without GenAI attributes.
const TOOL_EVENTS: &[&str] = &["tool_result", "tool_decision", "tool_call", "tool_use", "execute_tool", "gen_ai.tool.message"];

fn operation_of(attributes: &Attributes<'_>, name: &str) -> Operation {
    let named = attributes.text(OPERATION);
    let operation = named.as_deref().or_else(|| name.split_whitespace().next()).unwrap_or("");
    let span_kind = attributes.text(&["openinference.span.kind", "traceloop.span.kind"]).unwrap_or_default();
    if operation == "execute_tool" || span_kind.eq_ignore_ascii_case("tool") {
        Operation::ExecuteTool
    } else if operation == "invoke_agent" || span_kind.eq_ignore_ascii_case("agent") {
        Operation::InvokeAgent
    } else if CHAT_OPERATIONS.contains(&operation) || span_kind.eq_ignore_ascii_case("llm") {
        Operation::Chat
    } else {
        Operation::Other
    }
}

/// Facts of the resource that every report under it shares.
struct ResourceFacts {
    pid: Option<u32>,
    service_name: Option<String>,
    service_instance_id: Option<String>,
    session_id: Option<String>,
}

fn resource_facts(attributes: &[KeyValue]) -> ResourceFacts {
    let resource = Attributes { lists: [attributes, &[]] };
    ResourceFacts {
        pid: resource.number(&["process.pid"]).and_then(|pid| u32::try_from(pid).ok()),
        service_name: resource.text(&["service.name"]),
        service_instance_id: resource.text(&["service.instance.id"]),
        session_id: resource.text(SESSION_ID),
    }
}

fn fill_common(report: &mut Report, attributes: &Attributes<'_>, resource: &ResourceFacts) {
    report.tool_name = attributes.text(TOOL_NAME);
    report.call_id = attributes.text(CALL_ID);
    report.session_id = attributes.text(SESSION_ID).or_else(|| resource.session_id.clone());
    report.pid = resource.pid;
    report.service_name = resource.service_name.clone();
    report.service_instance_id = resource.service_instance_id.clone();
    if let Some(arguments) = attributes.find(ARGUMENTS) {
        report.set_arguments(&any_to_json(arguments));
    }
}

/// Reports in a trace export request: every span that is a tool call, an
/// agent invocation or a chat, or that names a session.
pub fn from_traces(request: &ExportTraceServiceRequest) -> Vec<Report> {
    let mut reports = Vec::new();
    for resource_spans in &request.resource_spans {
        let resource_attributes = resource_spans.resource.as_ref().map_or(&[][..], |r| &r.attributes[..]);
        let facts = resource_facts(resource_attributes);
        for span in resource_spans.scope_spans.iter().flat_map(|s| &s.spans) {
            let attributes = Attributes { lists: [&span.attributes, &[]] };
            let mut report = Report::new(Source::OtlpSpan, span.name.clone());
            report.operation = operation_of(&attributes, &span.name);
            fill_common(&mut report, &attributes, &facts);
            if report.operation == Operation::ExecuteTool && report.tool_name.is_none() {
                // `execute_tool {gen_ai.tool.name}` is the span name the
                // conventions give.
                report.tool_name = span.name.strip_prefix("execute_tool ").map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
            }
            if report.operation == Operation::Other && report.session_id.is_none() && report.tool_name.is_none() {
                continue;
            }
            if report.operation == Operation::Other && report.tool_name.is_some() {
                report.operation = Operation::ExecuteTool;
            }
            report.trace_id = hex_id(&span.trace_id);
            report.span_id = hex_id(&span.span_id);
            report.start_ns = span.start_time_unix_nano;
            report.end_ns = span.end_time_unix_nano.max(span.start_time_unix_nano);
            reports.push(report);
        }
    }
    reports
}

/// Reports in a log export request: log records that name a tool (tool
/// decisions and results) or a session.
pub fn from_logs(request: &ExportLogsServiceRequest, now_ns: u64) -> Vec<Report> {
    let mut reports = Vec::new();
    for resource_logs in &request.resource_logs {
        let resource_attributes = resource_logs.resource.as_ref().map_or(&[][..], |r| &r.attributes[..]);
        let facts = resource_facts(resource_attributes);
        for record in resource_logs.scope_logs.iter().flat_map(|s| &s.log_records) {
            // A body that is a map carries the event's fields in some SDKs.
            let body_fields = match record.body.as_ref().and_then(|b| b.value.as_ref()) {
                Some(any_value::Value::KvlistValue(list)) => &list.values[..],
                _ => &[][..],
            };
            let attributes = Attributes { lists: [&record.attributes, body_fields] };
            let event = Some(record.event_name.clone())
                .filter(|n| !n.is_empty())
                .or_else(|| attributes.text(EVENT_NAME))
                .unwrap_or_default();
            let event_short = event.rsplit('.').next().unwrap_or("");
            let mut report = Report::new(Source::OtlpLog, event.clone());
            fill_common(&mut report, &attributes, &facts);
            let tool_event = TOOL_EVENTS.contains(&event.as_str()) || TOOL_EVENTS.contains(&event_short);
            report.operation = if report.tool_name.is_some() && (tool_event || report.call_id.is_some()) {
                Operation::ExecuteTool
            } else if report.session_id.is_some() {
                Operation::Other
            } else {
                continue;
            };
            report.declined = attributes.text(DECISION).is_some_and(|d| d.eq_ignore_ascii_case("reject"));
            report.trace_id = hex_id(&record.trace_id);
            report.span_id = hex_id(&record.span_id);
            let time = if record.time_unix_nano != 0 {
                record.time_unix_nano
            } else if record.observed_time_unix_nano != 0 {
                record.observed_time_unix_nano
            } else {
                now_ns
            };
            report.end_ns = time;
            // A result event with a duration spans the run; others are one
            // point in time.
            match attributes.number(DURATION_MS) {
                Some(ms) => report.start_ns = time.saturating_sub(ms.saturating_mul(1_000_000)),
                None => {
                    report.start_ns = time;
                    report.point_in_time = true;
                }
            }
            reports.push(report);
        }
    }
    reports
}

/// Paths of the report fields in a JSON-lines object, dotted into nested
/// objects, such as `payload.tool.name`.
#[derive(Debug, Clone, serde::Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FieldMap {
    /// The agent's session or conversation id.
    pub session_id: String,
    /// The tool's name.
    pub tool_name: String,
    /// The tool call's id (tool-use id).
    pub tool_call_id: String,
    /// The tool's arguments: an object, or JSON text.
    pub arguments: String,
    /// The shell command, when the log has it outside the arguments.
    pub command: String,
    /// The event time: RFC 3339 text, or a number of Unix seconds,
    /// milliseconds, microseconds or nanoseconds (recognised by magnitude).
    pub timestamp: String,
    /// The pid of the agent process that wrote the line.
    pub pid: String,
    /// A field that contains an MCP JSON-RPC message, besides the line itself.
    pub mcp_message: String,
}

impl Default for FieldMap {
    fn default() -> Self {
        Self {
            session_id: "session_id".into(),
            tool_name: "tool_name".into(),
            tool_call_id: "tool_call_id".into(),
            arguments: "arguments".into(),
            command: "command".into(),
            timestamp: "timestamp".into(),
            pid: "pid".into(),
            mcp_message: "message".into(),
        }
    }
}

fn lookup<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return None;
    }
    path.split('.').try_fold(object, |value, key| value.get(key)).filter(|v| !v.is_null())
}

fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// Reads a timestamp: RFC 3339 text, or Unix time in seconds,
/// milliseconds, microseconds or nanoseconds, recognised by magnitude.
pub fn timestamp_ns(value: &Value) -> Option<u64> {
    let number = match value {
        Value::Number(number) => number.as_f64()?,
        Value::String(text) => match text.trim().parse::<f64>() {
            Ok(number) => number,
            Err(_) => {
                let time = humantime::parse_rfc3339_weak(text.trim()).ok()?;
                return u64::try_from(time.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos()).ok();
            }
        },
        _ => return None,
    };
    if !(number.is_finite() && number > 0.0) {
        return None;
    }
    let scale = if number < 1e11 {
        1e9
    } else if number < 1e14 {
        1e6
    } else if number < 1e17 {
        1e3
    } else {
        1.0
    };
    Some((number * scale) as u64)
}

/// Reads one JSON-lines object: an MCP `tools/call` request (the line
/// itself or the message under `mcp_message`), or a tool event found
/// through the field map. Lines that are neither give `None`.
pub fn from_json_line(line: &Value, map: &FieldMap, file: &str, now_ns: u64) -> Option<Report> {
    let time = lookup(line, &map.timestamp).and_then(timestamp_ns);
    let pid = lookup(line, &map.pid).and_then(|v| match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    });
    let session = lookup(line, &map.session_id).and_then(text_of);

    let mcp = [Some(line), lookup(line, &map.mcp_message)]
        .into_iter()
        .flatten()
        .find(|message| message.get("method").and_then(Value::as_str) == Some("tools/call"));
    let mut report = if let Some(message) = mcp {
        let params = message.get("params")?;
        let mut report = Report::new(Source::Mcp, "tools/call".into());
        report.tool_name = params.get("name").and_then(text_of);
        report.call_id = message.get("id").and_then(text_of);
        if let Some(arguments) = params.get("arguments") {
            report.set_arguments(arguments);
        }
        report
    } else {
        let tool = lookup(line, &map.tool_name).and_then(text_of)?;
        let mut report = Report::new(Source::Jsonl, tool.clone());
        report.tool_name = Some(tool);
        report.call_id = lookup(line, &map.tool_call_id).and_then(text_of);
        if let Some(command) = lookup(line, &map.command).and_then(text_of) {
            report.command = Some(command);
        }
        if let Some(arguments) = lookup(line, &map.arguments) {
            report.set_arguments(arguments);
        }
        report
    };

    report.operation = Operation::ExecuteTool;
    report.session_id = session;
    report.pid = pid.and_then(|p| u32::try_from(p).ok());
    report.start_ns = time.unwrap_or(now_ns);
    report.end_ns = report.start_ns;
    report.point_in_time = true;
    report.file = Some(file.to_owned());
    Some(report)
}
