//! The engine inside the daemon: records about agents in, reports from the
//! ingest stage in, findings and summaries out as evidence records.

use std::sync::Arc;

use serde_json::{json, Value};

use super::{
    observation::{file_path, is_write, trace_context_of, Observation, Observed, Packed, Spawn},
    Output, ReconcileConfig, Reconciler,
};
use crate::{
    agents::AgentView,
    evidence::{Clock, Record},
    identity::WorkloadView,
    pipeline::Pipeline,
    reconcile::report::Report,
};

/// Record kinds the engine reads; other records about agents are skipped
/// before anything is copied out of them.
const OBSERVED_KINDS: &[&str] = &["agent.detected", "tool.spawn", "process.exit", "agent.session_end", "file.open", "file.rename"];

/// The engine with what the daemon needs around it.
pub struct Live {
    pub engine: Reconciler,
    /// The sections of the last spawn, reused for the next spawns while
    /// they describe the same agent and workload.
    last: LastSections,
}

#[derive(Default)]
struct LastSections {
    agent: Option<(AgentFacts, Packed)>,
    workload: Option<(WorkloadView, Packed)>,
}

/// The facts an agent section is serialised from. Detections are only
/// ever added to an agent, so a changed count shows a change.
#[derive(PartialEq)]
struct AgentFacts {
    agent_id: String,
    session_id: String,
    registered: bool,
    name: Option<String>,
    detections: usize,
}

impl AgentFacts {
    fn of(agent: &AgentView<'_>) -> AgentFacts {
        AgentFacts {
            agent_id: agent.agent_id.to_owned(),
            session_id: agent.session_id.to_owned(),
            registered: agent.registered,
            name: agent.name.map(str::to_owned),
            detections: agent.detected_by.len(),
        }
    }

    fn describes(&self, agent: &AgentView<'_>) -> bool {
        self.agent_id == agent.agent_id
            && self.session_id == agent.session_id
            && self.registered == agent.registered
            && self.name.as_deref() == agent.name
            && self.detections == agent.detected_by.len()
    }
}

impl LastSections {
    fn agent(&mut self, agent: &AgentView<'_>) -> serde_json::Result<Packed> {
        if let Some((facts, packed)) = &self.agent
            && facts.describes(agent)
        {
            return Ok(packed.clone());
        }
        let packed = Packed::of(agent)?;
        self.agent = Some((AgentFacts::of(agent), packed.clone()));
        Ok(packed)
    }

    /// Workloads are shared per cgroup, so the same one is the same
    /// pointer. The user is the process's own.
    fn workload(&mut self, workload: &WorkloadView) -> serde_json::Result<Packed> {
        if let Some((last, packed)) = &self.workload
            && Arc::ptr_eq(&last.workload, &workload.workload)
            && last.user == workload.user
        {
            return Ok(packed.clone());
        }
        let packed = Packed::of(workload)?;
        self.workload = Some((workload.clone(), packed.clone()));
        Ok(packed)
    }
}

impl Live {
    pub fn new(config: ReconcileConfig) -> Live {
        Live { engine: Reconciler::new(config), last: LastSections::default() }
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
        match observation(record, &mut self.last) {
            Ok(observation) => self.engine.observe_parsed(observation, record.head.time_unix_nano),
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
            self.sinks.write_record(&Record { sections: output.sections, ..Record::new(head) })?;
        }
        Ok(())
    }
}

/// Reads a record the daemon wrote as `Observation::from_json` would read
/// its line. Only agent detections and tool spawns carry their whole
/// process, workload and agent; the engine needs just the ids of the rest.
fn observation(record: &Record<'_>, last: &mut LastSections) -> serde_json::Result<Observation> {
    let kind = record.head.kind;
    let whole = matches!(kind, "agent.detected" | "tool.spawn");
    let (agent_id, session_id, agent) = match &record.agent {
        Some(agent) if whole => (agent.agent_id, agent.session_id, Some(last.agent(agent)?)),
        Some(agent) => (agent.agent_id, agent.session_id, None),
        None => return Err(serde::ser::Error::custom("the record has no agent section")),
    };
    let process = record.process.as_ref();
    let file = record.sections.get("file");
    let observed = match kind {
        "agent.detected" => Observed::Detected {
            process: process.map(serde_json::to_value).transpose()?,
            workload: record.workload.as_ref().map(serde_json::to_value).transpose()?,
        },
        "tool.spawn" => match process {
            Some(process) => Observed::Spawn(Box::new(Spawn {
                argv: process.argv.map(<[String]>::to_vec).unwrap_or_default(),
                ancestors: process.ancestry.iter().map(|id| id.to_string()).chain(process.parent_exec_id.map(str::to_owned)).collect(),
                process: match &process.json {
                    Some(json) => Packed::from_text(json.get()),
                    None => Packed::of(process)?,
                },
                workload: record.workload.as_ref().map(|w| last.workload(w)).transpose()?,
                trace_context: trace_context_of(record.sections.get("trace_context")),
            })),
            None => Observed::Other,
        },
        "process.exit" => Observed::Exit,
        "agent.session_end" => Observed::SessionEnd {
            ended: record.sections.get("session").and_then(|s| s.get("id")).and_then(Value::as_str).map(str::to_owned),
        },
        "file.open" | "file.rename" => match file_path(file) {
            Some(path) if is_write(kind, file) => Observed::Wrote { path },
            _ => Observed::Other,
        },
        _ => Observed::Other,
    };
    Ok(Observation {
        kind: observed,
        record_id: record.head.id.clone(),
        time_ns: record.head.time_unix_nano,
        agent_id: agent_id.to_owned(),
        session_id: session_id.to_owned(),
        agent,
        whole_agent: whole,
        pid: process.map(|p| p.pid),
        exec_id: process.map(|p| p.exec_id.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{observation, trace_context, LastSections};
    use crate::{
        agents::{AgentView, Detection},
        config::ProcessConfig,
        evidence::{Clock, Host, ProcessView, Record, Stamper},
        process::{procfs::ProcEntry, ProcessTable},
        reconcile::observation::{Observation, Observed, Packed},
        redact::Redactor,
    };

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

    /// Rewrites every packed section with sorted keys: a section packed
    /// from a typed view keeps its field order, one from a line does not.
    fn sorted(mut observation: Observation) -> Observation {
        observation.agent = observation.agent.map(|agent| Packed::new(&agent.unpack()));
        if let Observed::Spawn(spawn) = &mut observation.kind {
            spawn.process = Packed::new(&spawn.process.unpack());
            spawn.workload = spawn.workload.as_ref().map(|w| Packed::new(&w.unpack()));
        }
        observation
    }

    /// The daemon reads a record as the offline command reads its line,
    /// except that only detections and spawns pass their whole agent.
    #[test]
    fn record_reads_as_its_line() {
        let config = ProcessConfig { procfs_path: "/nonexistent-procfs".into(), ..Default::default() };
        let mut table = ProcessTable::new(config, "boot".to_owned(), Redactor::new(&[7; 32]));
        let entry = |pid, ppid, argv: &[&str]| ProcEntry {
            pid,
            ppid,
            start_ticks: 5,
            argv: argv.iter().map(|a| a.to_string()).collect(),
            comm: "x".into(),
            ..Default::default()
        };
        let keys = table.seed(vec![entry(10, 1, &["python3", "agent.py"]), entry(11, 10, &["ls", "-la", "/srv"])]);
        let clock = Clock::from_system();
        let mut stamper = Stamper::new(Host::new("h", "b"), clock);
        let detections = [Detection { signal: "sni", value: "api.openai.com".into(), provider: Some("openai".into()) }];
        let agent = AgentView { agent_id: "boot:10:5:1", session_id: "b-1", registered: false, name: None, detected_by: &detections, json: None };
        let more = [detections[0].clone(), Detection { signal: "api_shape", value: "POST /v1/chat/completions".into(), provider: None }];
        // The same agent with one more detection: its next spawn must not
        // reuse the section packed before.
        let grown = AgentView { detected_by: &more, ..agent.clone() };
        let mut last = LastSections::default();

        let cases = [
            ("agent.detected", keys[0], json!({})),
            ("tool.spawn", keys[1], json!({ "trace_context": { "traceparent": TRACEPARENT } })),
            ("process.exit", keys[1], json!({})),
            ("file.open", keys[1], json!({ "file": { "path": "/tmp/calls.jsonl", "access": "write" } })),
            ("file.open", keys[1], json!({ "file": { "path": "/etc/hosts", "access": "read" } })),
            ("file.rename", keys[1], json!({ "file": { "path": "/tmp/a", "new_path": "/tmp/b" } })),
            ("agent.session_end", keys[0], json!({ "session": { "id": "b-1" } })),
            ("tool.spawn", keys[1], json!({})),
        ];

        let count = cases.len();
        for (index, (kind, key, sections)) in cases.into_iter().enumerate() {
            let agent = if index + 1 == count { grown.clone() } else { agent.clone() };
            let mut record = Record::new(stamper.head(kind, 1_000));
            record.process = Some(ProcessView::new(&table, table.get(&key).unwrap(), None, &clock, key.start_ns));
            record.agent = Some(agent.clone());
            record.sections = sections.as_object().unwrap().clone();
            let mut expected = Observation::from_json(serde_json::to_value(&record).unwrap(), 0).expect("an observation");
            if !matches!(kind, "agent.detected" | "tool.spawn") {
                expected.agent = None;
                expected.whole_agent = false;
            }
            let read = observation(&record, &mut last).unwrap();
            assert_eq!(sorted(read), sorted(expected), "{kind} {sections}");
        }
    }
}
