//! The policy stage in the pipeline: which records are checked, the
//! findings their failed checks become, and reloading.

use serde_json::{json, Map, Value};

use super::Pipeline;
use crate::{
    agents::Agent,
    evidence::{Clock, Record},
    llm::LlmEvent,
    policy::{
        engine::PolicyEngine,
        references::{self, Subject},
        CheckResult, Identity, Outcome,
    },
    process::{ProcKey, Process},
};

/// The record a finding is about.
pub struct Cause {
    pub record_id: String,
    pub seq: u64,
    pub kind: &'static str,
}

/// Checks a record about to be written, when it is one the policy covers:
/// tool spawns, LLM requests, and connects and file operations of agent
/// trees. Returns `None` without a policy or for other records.
pub fn evaluate(engine: &mut PolicyEngine, kind: &str, process: &Process, agent: Option<&Agent>, record: &Record<'_>) -> Option<Outcome> {
    engine.policy()?;
    let entry = agent.and_then(|a| a.policy_entry.as_deref());
    match kind {
        "tool.spawn" => {
            // Read now, while the tool most likely still runs.
            engine.home_of(process.key);
            if let Some(parent) = process.parent {
                engine.home_of(parent);
            }
            let argv = process.argv.as_deref().unwrap_or_default();
            let policy = engine.policy()?;
            Some(policy.check_tool(entry, process.exe.path.as_deref(), process.exec_path.as_deref(), argv))
        }
        "net.connect" if agent.is_some() => {
            let network = record.network.as_ref()?;
            let destination = network.destination.as_ref();
            let host = record.sections.get("dns_name").and_then(Value::as_str);
            let policy = engine.policy()?;
            Some(policy.check_egress(entry, destination.map(|d| d.address), destination.map(|d| d.port), host, network.protocol))
        }
        "llm.request" => {
            let request = match &record.llm {
                Some(LlmEvent::Request(request)) => Some(request),
                _ => None,
            };
            let provider = record
                .sections
                .get("provider")
                .and_then(|p| p.get("provider"))
                .and_then(Value::as_str)
                .or_else(|| request.and_then(|r| r.provider));
            let model = request.and_then(|r| r.model.as_deref());
            let policy = engine.policy()?;
            Some(policy.check_llm(entry, provider, model))
        }
        "file.open" | "file.unlink" | "file.rename" if agent.is_some() => {
            let file = record.sections.get("file")?;
            let path = file.get("path").and_then(Value::as_str)?;
            let new_path = file.get("new_path").and_then(Value::as_str);
            let keys: Vec<ProcKey> = [Some(process.key), process.parent, agent.map(|a| a.key)].into_iter().flatten().collect();
            let homes = engine.homes(&keys, process.uid);
            let policy = engine.policy()?;
            let mut outcome = policy.check_path(entry, path, new_path, &homes);
            let access = if kind == "file.open" { file.get("access").cloned().unwrap_or(Value::Null) } else { json!(&kind[5..]) };
            for check in &mut outcome.checks {
                check.observed["access"] = access.clone();
            }
            Some(outcome)
        }
        _ => None,
    }
}

/// Builds the finding for a record's failed `alert` checks: its kind and
/// its `finding` and `policy` sections.
pub fn finding(outcome: &Outcome, cause: &Cause) -> (&'static str, Map<String, Value>) {
    let alerts = outcome.alerts();
    let subject = alerts.first().map_or(Subject::Tool, |c| c.subject);
    let write = matches!(cause.kind, "file.unlink" | "file.rename")
        || alerts.iter().any(|c| c.observed.get("access").and_then(Value::as_str).is_some_and(|a| a != "read"));
    let (kind, severity, title) = match subject {
        Subject::SensitiveAccess => ("finding.sensitive_access", if write { "critical" } else { "high" }, "agent accessed a sensitive path"),
        Subject::Tool => ("finding.policy_violation", "high", "agent ran a tool its policy does not allow"),
        Subject::Egress => ("finding.policy_violation", "high", "agent connected to a destination its policy does not allow"),
        Subject::Llm => ("finding.policy_violation", "medium", "agent used an LLM provider or model its policy does not allow"),
        _ => ("finding.policy_violation", "high", "agent violated its policy"),
    };
    let description = alerts.iter().filter_map(|c| c.reason.as_deref()).collect::<Vec<_>>().join("; ");
    let failed: Vec<_> = alerts.iter().map(|c| json!(c)).collect();
    let mut sections = Map::new();
    sections.insert(
        "finding".into(),
        json!({
            "severity": severity,
            "title": title,
            "description": description,
            "references": references::to_json(subject),
            "cause": { "record_id": cause.record_id, "seq": cause.seq, "kind": cause.kind },
            "evidence": {
                "rule": alerts.iter().map(|c| c.rule.as_str()).collect::<Vec<_>>(),
                "observed": alerts.first().map(|c| c.observed.clone()),
                "allowed": alerts.first().map(|c| c.allowed.clone()),
            },
        }),
    );
    sections.insert("policy".into(), json!({ "entry": outcome.entry, "verdict": "alert", "checks": failed }));
    (kind, sections)
}

impl Pipeline {
    /// Collects the identity the inventory's selectors are matched against.
    pub(super) fn identity_of(&mut self, key: ProcKey, time_ns: u64) -> Option<Identity> {
        let process = self.table.get(&key)?;
        let mut identity = Identity {
            exe: process.exe.path.clone(),
            exe_sha256: process.exe.sha256.as_deref().map(str::to_owned),
            uid: process.uid,
            cgroup: process.cgroup_path.as_deref().map(str::to_owned),
            ..Default::default()
        };
        if let Some(resolver) = &mut self.identity {
            let workload = resolver.resolve(process.cgroup_id, process.cgroup_path.as_deref(), process.uid, time_ns);
            identity.add_workload(&serde_json::to_value(&workload).unwrap_or_default());
        }
        Some(identity)
    }

    /// Returns the policy entry that a process about to become an agent
    /// matches.
    ///
    // LIMITATION: the match is made once, at detection. After a reload a
    // running agent keeps its entry's name (or `defaults`) and is not
    // matched against the new inventory.
    pub(super) fn policy_entry_of(&mut self, key: ProcKey, time_ns: u64) -> Option<String> {
        if self.agents.is_member(&key) {
            return None;
        }
        self.policy.policy()?;
        // Read while the new agent runs: its tools' checks fall back to it.
        self.policy.home_of(key);
        let identity = self.identity_of(key, time_ns)?;
        self.policy.policy()?.match_agent(&identity).map(|entry| entry.name.clone())
    }

    /// Builds the `finding` and `policy` sections of a shadow-agent finding.
    pub(super) fn shadow_sections(&mut self, root: ProcKey, time_ns: u64, cause: Option<&Cause>, mut finding: Value) -> Map<String, Value> {
        let identity = self.identity_of(root, time_ns).unwrap_or_default();
        let outcome = self.policy.policy_or_empty().check_inventory(&identity, &self.agents.registered_names());
        finding["references"] = references::to_json(Subject::ShadowAgent);
        if let Some(cause) = cause {
            finding["cause"] = json!({ "record_id": cause.record_id, "seq": cause.seq, "kind": cause.kind });
        }
        let mut sections = Map::new();
        sections.insert("finding".into(), finding);
        sections.insert("policy".into(), outcome.to_json());
        sections
    }

    /// Reloads the policy (SIGHUP with `force`, or a poll) and records the
    /// result when there is one.
    pub fn reload_policy(&mut self, trigger: &'static str, force: bool) -> anyhow::Result<()> {
        let Some(section) = self.policy.reload(trigger, force) else { return Ok(()) };
        crate::metrics::policy_reloaded(section["result"] == "loaded");
        self.stamper.set_policy_sha256(self.policy.sha256());
        self.emit_policy_reload(section)
    }

    pub fn emit_policy_reload(&mut self, section: Value) -> anyhow::Result<()> {
        let head = self.stamper.head("policy.reload", Clock::boot_now_ns());
        let mut record = Record::new(head);
        record.sections.insert("policy_reload".into(), section);
        self.sinks.write_record(&record)?;
        Ok(())
    }
}

/// Adds references and a check to a reconciliation finding, which the
/// reconciliation engine builds without them.
pub fn complete_reconcile_finding(kind: &str, sections: &mut Map<String, Value>) {
    let subject = match kind {
        "finding.unreported_action" => Subject::UnreportedAction,
        "finding.unobserved_claim" => Subject::UnobservedClaim,
        _ => return,
    };
    let Some(finding) = sections.get_mut("finding").and_then(Value::as_object_mut) else { return };
    finding.insert("references".into(), references::to_json(subject));
    let (observed, reason) = match subject {
        Subject::UnreportedAction => (
            finding.get("evidence").and_then(|e| e.get("observed")).map(|o| json!({ "record_id": o.get("record_id"), "argv": o.get("argv") })),
            "the agent's telemetry reports no tool call matching this tool spawn",
        ),
        _ => (
            finding.get("evidence").and_then(|e| e.get("reported")).map(|r| json!({ "tool_name": r.get("tool_name"), "command": r.get("command"), "call_id": r.get("call_id") })),
            "no tool spawn of the agent matches this reported tool call",
        ),
    };
    if let Some(record_id) = finding.get("evidence").and_then(|e| e.get("observed")).and_then(|o| o.get("record_id")).cloned() {
        finding.entry("cause").or_insert(json!({ "record_id": record_id, "kind": "tool.spawn" }));
    }
    let check = json!({
        "rule": "reconcile/reported",
        "result": CheckResult::Fail,
        "action": "alert",
        "observed": observed,
        "allowed": Value::Null,
        "reason": reason,
    });
    sections.insert("policy".into(), json!({ "entry": Value::Null, "verdict": "alert", "checks": [check] }));
}
