//! The engine inside the daemon: records about agents in, reports from the
//! ingest stage in, findings and summaries out as evidence records.

use serde_json::{json, Value};

use super::{Output, ReconcileConfig, Reconciler};
use crate::{
    evidence::{Clock, Record},
    pipeline::Pipeline,
    reconcile::report::Report,
};

/// Record kinds the engine reads; other records about agents are skipped
/// before they are converted to JSON.
const OBSERVED_KINDS: &[&str] = &["agent.detected", "tool.spawn", "process.exit", "agent.session_end", "file.open", "file.rename"];

/// The engine with what the daemon needs around it.
pub struct Live {
    pub engine: Reconciler,
}

impl Live {
    pub fn new(config: ReconcileConfig) -> Live {
        Live { engine: Reconciler::new(config) }
    }

    /// Feeds a record the daemon just wrote, when it is about an agent.
    pub fn observe(&mut self, record: &Record<'_>) {
        if record.agent.is_none() || !OBSERVED_KINDS.contains(&record.head.kind) {
            return;
        }
        // Only writes tie a JSON-lines file to its writer, and reads are
        // the bulk of an agent tree's file records.
        let read_only = record.head.kind == "file.open"
            && record.sections.get("file").and_then(|f| f.get("access")).and_then(|a| a.as_str()) == Some("read");
        if read_only {
            return;
        }
        match engine_view(record) {
            Ok(value) => self.engine.observe(value, record.head.time_unix_nano),
            Err(error) => log::warn!("reconcile: cannot read back record {}: {error}", record.head.id),
        }
    }
}

/// Builds the `trace_context` section of a tool spawn from the
/// `TRACEPARENT=...` (or `traceparent=...`) environment entry the kernel
/// copied at exec. Returns `None` when the entry is missing or malformed.
pub fn trace_context(entry: &[u8]) -> Option<Value> {
    let value = entry.strip_prefix(b"TRACEPARENT=").or_else(|| entry.strip_prefix(b"traceparent="))?;
    let text = std::str::from_utf8(value).ok()?;
    super::engine::parse_traceparent(text)?;
    Some(json!({ "traceparent": text }))
}

impl Pipeline {
    /// Returns the engine's clock: wall-clock Unix nanoseconds now.
    fn reconcile_now(&self) -> u64 {
        self.stamper.clock.wall_ns(Clock::boot_now_ns())
    }

    /// Hands reports from the ingest stage to the engine.
    pub fn on_reports(&mut self, reports: Vec<Report>) {
        let now = self.reconcile_now();
        if let Some(live) = &mut self.reconcile {
            for report in reports {
                live.engine.report(report, now);
            }
        }
    }

    /// Decides due matches and writes the findings and summaries.
    pub fn reconcile_tick(&mut self) -> anyhow::Result<()> {
        let now = self.reconcile_now();
        let outputs = match &mut self.reconcile {
            Some(live) => live.engine.tick(now),
            None => return Ok(()),
        };
        self.write_outputs(outputs)
    }

    /// Decides everything still pending, at shutdown.
    pub fn reconcile_finish(&mut self) -> anyhow::Result<()> {
        let now = self.reconcile_now();
        let outputs = match &mut self.reconcile {
            Some(live) => live.engine.finish(now),
            None => return Ok(()),
        };
        self.write_outputs(outputs)
    }

    fn write_outputs(&mut self, outputs: Vec<Output>) -> anyhow::Result<()> {
        for mut output in outputs {
            crate::pipeline::complete_reconcile_finding(output.kind, &mut output.sections);
            let head = self.stamper.head(output.kind, Clock::boot_now_ns());
            self.sinks.write(&Record { sections: output.sections, ..Record::new(head) })?;
        }
        Ok(())
    }
}

/// Returns the parts of a record the engine reads, as the JSON an evidence
/// file holds. A tool spawn's policy checks are most of its size and the
/// engine never reads them, so they are not converted.
fn engine_view(record: &Record<'_>) -> serde_json::Result<serde_json::Value> {
    let mut view = serde_json::Map::with_capacity(8);
    view.insert("kind".into(), record.head.kind.into());
    view.insert("id".into(), serde_json::to_value(&record.head.id)?);
    view.insert("time_unix_nano".into(), record.head.time_unix_nano.into());
    // Only these two kinds keep their process, workload and agent for a
    // report. Of the others the engine reads just the ids, and converting
    // them whole took a tenth of the daemon's time under an agent's load.
    let whole = matches!(record.head.kind, "agent.detected" | "tool.spawn");
    if let Some(process) = &record.process {
        let value = if whole {
            serde_json::to_value(process)?
        } else {
            serde_json::json!({ "pid": process.pid, "exec_id": process.exec_id })
        };
        view.insert("process".into(), value);
    }
    if let (true, Some(workload)) = (whole, &record.workload) {
        view.insert("workload".into(), serde_json::to_value(workload)?);
    }
    if let Some(agent) = &record.agent {
        let value = if whole {
            serde_json::to_value(agent)?
        } else {
            serde_json::json!({ "agent_id": agent.agent_id, "session_id": agent.session_id })
        };
        view.insert("agent".into(), value);
    }
    for key in ENGINE_SECTIONS {
        if let Some(section) = record.sections.get(*key) {
            view.insert((*key).into(), section.clone());
        }
    }
    Ok(serde_json::Value::Object(view))
}

/// The sections `Reconciler::observe` reads besides the ones above.
const ENGINE_SECTIONS: &[&str] = &["trace_context", "file", "session"];

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::trace_context;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_entry_in_either_case() {
        let upper = format!("TRACEPARENT={TRACEPARENT}");
        assert_eq!(trace_context(upper.as_bytes()), Some(json!({ "traceparent": TRACEPARENT })));
        let lower = format!("traceparent={TRACEPARENT}");
        assert_eq!(trace_context(lower.as_bytes()), Some(json!({ "traceparent": TRACEPARENT })));
    }

    #[test]
    fn missing_or_malformed_entry_has_none() {
        assert_eq!(trace_context(b""), None);
        assert_eq!(trace_context(b"TRACEPARENT="), None);
        assert_eq!(trace_context(b"TRACEPARENT=00-not-a-trace-id-01"), None);
        assert_eq!(trace_context(format!("TraceParent={TRACEPARENT}").as_bytes()), None);
        // Cut by the kernel's bound: a prefix of a valid value.
        assert_eq!(trace_context(format!("TRACEPARENT={}", &TRACEPARENT[..40]).as_bytes()), None);
        let mut invalid_utf8 = b"TRACEPARENT=".to_vec();
        invalid_utf8.extend_from_slice(&[0xff; 55]);
        assert_eq!(trace_context(&invalid_utf8), None);
    }
}
