//! The engine's input: the parts of one evidence record that matching reads.
//!
//! `agent-sensor reconcile` builds an observation from a record's JSON; the
//! daemon builds it from the record it has just written, without turning
//! the record into a JSON tree first. Converting every agent record to JSON
//! and back cost a fifth of the daemon's time under an agent's load. A test
//! checks that both ways give the same observation.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::engine::parse_traceparent;

/// A JSON value kept as its text. A busy agent has thousands of pending
/// actions, because each waits out the grace window. As trees of maps their
/// process, workload and agent sections took several times the memory.
/// All actions of an agent share one copy of its section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed(Arc<str>);

impl Packed {
    pub fn new(value: &Value) -> Packed {
        Packed(Arc::from(value.to_string()))
    }

    /// Serialises a section straight to text, as it is in the evidence line.
    pub fn of<T: Serialize + ?Sized>(section: &T) -> serde_json::Result<Packed> {
        Ok(Packed(Arc::from(serde_json::to_string(section)?)))
    }

    /// Keeps JSON text that is already serialised.
    pub fn from_text(text: &str) -> Packed {
        Packed(Arc::from(text))
    }

    pub fn unpack(&self) -> Value {
        serde_json::from_str(&self.0).unwrap_or(Value::Null)
    }
}

/// One evidence record about an agent, reduced to what matching needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub kind: Observed,
    pub record_id: String,
    pub time_ns: u64,
    pub agent_id: String,
    pub session_id: String,
    /// The record's agent section. The daemon leaves it out of records
    /// whose agent the engine needs only by its ids.
    pub agent: Option<Packed>,
    /// The section is whole (it has `detected_by`), not just the ids the
    /// daemon passes for most records.
    pub whole_agent: bool,
    pub pid: Option<u32>,
    pub exec_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// `agent.detected`: the agent's own process and workload, for the
    /// evidence of claims no process matches.
    Detected { process: Option<Value>, workload: Option<Value> },
    Spawn(Box<Spawn>),
    Exit,
    /// `agent.session_end` with the id of the session that ended.
    SessionEnd { ended: Option<String> },
    /// A file the agent's tree wrote or renamed: a JSON-lines telemetry
    /// file is tied to the agent that writes it.
    Wrote { path: String },
    Other,
}

/// A `tool.spawn`.
#[derive(Debug, Clone, PartialEq)]
pub struct Spawn {
    pub argv: Vec<String>,
    /// Exec ids of the ancestors, nearest first, then the parent's.
    pub ancestors: Vec<String>,
    pub process: Packed,
    pub workload: Option<Packed>,
    /// (trace id, parent span id) from the process's `TRACEPARENT`.
    pub trace_context: Option<(String, String)>,
}

fn text(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// Reads the trace context of a record's `trace_context` section.
pub fn trace_context_of(section: Option<&Value>) -> Option<(String, String)> {
    section.and_then(|t| t.get("traceparent")).and_then(Value::as_str).and_then(parse_traceparent)
}

/// Tells whether a `file` section shows a write: only writes tie a
/// JSON-lines file to its writer.
pub fn is_write(kind: &str, file: Option<&Value>) -> bool {
    kind == "file.rename" || file.and_then(|f| f.get("access")).and_then(Value::as_str).is_some_and(|a| a != "read")
}

/// Returns the path a file record names: the new path of a rename.
pub fn file_path(file: Option<&Value>) -> Option<String> {
    file.and_then(|f| text(f, "new_path").or_else(|| text(f, "path")))
}

impl Observation {
    /// Reads an evidence record as it is stored in an evidence file. Returns
    /// `None` for records without an agent section and for the engine's
    /// own findings and summaries. `now_ns` is used when the record has no time.
    pub fn from_json(record: Value, now_ns: u64) -> Option<Observation> {
        let Value::Object(mut record) = record else { return None };
        let kind = record.get("kind").and_then(Value::as_str)?.to_owned();
        if kind.starts_with("finding.") || kind.starts_with("reconcile.") {
            return None;
        }
        let agent = record.remove("agent").filter(Value::is_object)?;
        let agent_id = text(&agent, "agent_id")?;
        let time_ns = record.get("time_unix_nano").and_then(Value::as_u64).unwrap_or(now_ns);
        let process = record.remove("process");
        let pid = process.as_ref().and_then(|p| p.get("pid")).and_then(Value::as_u64).and_then(|p| u32::try_from(p).ok());
        let exec_id = process.as_ref().and_then(|p| text(p, "exec_id"));
        let observed = match kind.as_str() {
            "agent.detected" => Observed::Detected { process, workload: record.remove("workload") },
            "tool.spawn" => match process {
                Some(process) => {
                    let mut ancestors = strings(process.get("ancestry"));
                    ancestors.extend(text(&process, "parent_exec_id"));
                    Observed::Spawn(Box::new(Spawn {
                        argv: strings(process.get("argv")),
                        ancestors,
                        process: Packed::new(&process),
                        workload: record.get("workload").map(Packed::new),
                        trace_context: trace_context_of(record.get("trace_context")),
                    }))
                }
                None => Observed::Other,
            },
            "process.exit" => Observed::Exit,
            "agent.session_end" => Observed::SessionEnd { ended: record.get("session").and_then(|s| text(s, "id")) },
            "file.open" | "file.rename" => match file_path(record.get("file")) {
                Some(path) if is_write(&kind, record.get("file")) => Observed::Wrote { path },
                _ => Observed::Other,
            },
            _ => Observed::Other,
        };
        Some(Observation {
            kind: observed,
            record_id: record.get("id").and_then(Value::as_str).unwrap_or_default().to_owned(),
            time_ns,
            agent_id,
            session_id: text(&agent, "session_id").unwrap_or_default(),
            whole_agent: agent.get("detected_by").is_some(),
            agent: Some(Packed::new(&agent)),
            pid,
            exec_id,
        })
    }
}
