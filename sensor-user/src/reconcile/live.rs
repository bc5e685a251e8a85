//! The engine inside the daemon: records about agents in, reports from the
//! ingest stage in, findings and summaries out as evidence records.

use std::{io::Read as _, path::{Path, PathBuf}};

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
    procfs: PathBuf,
    read_trace_context: bool,
    /// Buffer for each spawn's environment, `environ_max_bytes` long and reused.
    environ: Vec<u8>,
}

impl Live {
    pub fn new(config: ReconcileConfig, procfs: PathBuf) -> Live {
        Live {
            read_trace_context: config.read_trace_context,
            environ: vec![0; config.environ_max_bytes],
            engine: Reconciler::new(config),
            procfs,
        }
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

    /// Builds the `trace_context` section of a tool spawn, when the
    /// process's environment carries a W3C `traceparent`.
    pub fn trace_context(&mut self, pid: u32) -> Option<Value> {
        if !self.read_trace_context {
            return None;
        }
        read_trace_context(&self.procfs, pid, &mut self.environ).map(|traceparent| json!({ "traceparent": traceparent }))
    }
}

/// Reads `TRACEPARENT` (or `traceparent`) from `/proc/PID/environ`,
/// reading at most `bytes.len()` into `bytes`.
///
/// NOTE: the environment is read when the daemon handles the exec record,
/// a few milliseconds after the exec. A process that has already exited
/// has none to read, and one that changed its environment in place shows
/// the change.
pub fn read_trace_context(procfs: &Path, pid: u32, bytes: &mut [u8]) -> Option<String> {
    let mut file = std::fs::File::open(procfs.join(pid.to_string()).join("environ")).ok()?;
    // procfs fills the buffer with the whole environment, or its first
    // `bytes.len()` bytes, in one read, so one read per spawn is enough.
    let filled = file.read(bytes).ok()?;
    bytes[..filled].split(|b| *b == 0).find_map(|entry| {
        let value = entry.strip_prefix(b"TRACEPARENT=").or_else(|| entry.strip_prefix(b"traceparent="))?;
        let text = std::str::from_utf8(value).ok()?;
        super::engine::parse_traceparent(text).map(|_| text.to_owned())
    })
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
    // report. Of the others, which are most of an agent tree's records,
    // the engine reads just the ids; converting them whole was a tenth of
    // the daemon's time under an agent's load.
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
    use super::read_trace_context;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// Writes `environ` as the environment of pid 42 under a fake procfs.
    fn fake_procfs(tag: &str, environ: &[u8]) -> std::path::PathBuf {
        let root = std::env::temp_dir().join(format!("agent-sensor-environ-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(root.join("42")).unwrap();
        std::fs::write(root.join("42/environ"), environ).unwrap();
        root
    }

    #[test]
    fn traceparent_found_in_environ() {
        let environ = format!("PATH=/bin\0TRACEPARENT={TRACEPARENT}\0HOME=/root\0");
        let root = fake_procfs("found", environ.as_bytes());
        let mut buffer = vec![0; 4096];
        assert_eq!(read_trace_context(&root, 42, &mut buffer).as_deref(), Some(TRACEPARENT));
        // The reused buffer must not carry the first environment into the next.
        std::fs::write(root.join("42/environ"), b"PATH=/bin\0").unwrap();
        assert_eq!(read_trace_context(&root, 42, &mut buffer), None);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn traceparent_past_bound_ignored() {
        let environ = format!("FILLER={}\0TRACEPARENT={TRACEPARENT}\0", "x".repeat(200));
        let root = fake_procfs("bound", environ.as_bytes());
        let mut buffer = vec![0; 128];
        assert_eq!(read_trace_context(&root, 42, &mut buffer), None);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn missing_process_has_none() {
        let root = fake_procfs("missing", b"");
        let mut buffer = vec![0; 128];
        assert_eq!(read_trace_context(&root, 7, &mut buffer), None);
        std::fs::remove_dir_all(root).unwrap();
    }
}
