//! The matching engine, shared by the daemon and `agent-sensor reconcile`.
//!
//! It reads evidence records (as `Observation`s, which the live run and the
//! offline command build alike) and reports. Each report is tied to one
//! agent, and a tool call is matched only against that agent's observed
//! actions, so two agents never see each other's telemetry. Decisions wait
//! for a grace window measured with the caller's clock, which tests inject.
//!
//! An observed action is a tool spawn whose ancestors are not tool spawns
//! of the same agent: a shell tool's `bash -c` with every process it
//! starts is one action. Matching is one to one and deterministic. Every
//! pending (report, action) pair of an agent gets a basis and a score.
//! Pairs are taken best first (trace context, then command, then program
//! or tool name, then time alone), and nearest in time among equals.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::Arc,
};

use serde_json::{json, Map, Value};

use super::{
    command::{self, Agreement},
    observation::{Observation, Observed, Packed, Spawn},
    report::{Operation, Report},
    ReconcileConfig,
};
use crate::evidence::rfc3339;
use crate::idmap::IdMap;

/// Recently decided actions and reports kept per agent, for the evidence
/// of later findings ("this report matched another action").
const RECENT: usize = 64;
/// Entries of the nearby-items lists in a finding's evidence.
const NEARBY: usize = 8;
/// Matches listed in a summary; the counts stay exact beyond it.
const SUMMARY_MATCHES: usize = 100;
/// Exec ids and call ids remembered after their decision, for grouping
/// late descendants and dropping repeated reports.
const DECIDED_MEMORY: usize = 4096;

/// A record for the caller to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub kind: &'static str,
    /// Unix nanoseconds of the decision.
    pub time_ns: u64,
    /// Top-level sections: `agent`, `process`, `workload`, `finding`,
    /// `reconcile`.
    pub sections: Map<String, Value>,
}

/// Counters reported in `sensor.stop` and by the offline command.
#[derive(Debug, Default, Clone, serde::Serialize, PartialEq)]
pub struct Stats {
    pub reports: u64,
    pub tool_calls: u64,
    pub duplicate_reports: u64,
    pub unattributed_reports: u64,
    pub actions: u64,
    pub matched: u64,
    pub unreported_actions: u64,
    pub unobserved_claims: u64,
    pub pending_dropped: u64,
}

#[derive(Debug, Clone)]
struct Action {
    seq: u64,
    session_id: String,
    agent: Packed,
    process: Packed,
    workload: Option<Packed>,
    record_id: String,
    time_ns: u64,
    exec_id: String,
    argv: Vec<String>,
    /// Later execs in the action: descendants and re-execs of its process.
    descendants: Vec<(String, Vec<String>)>,
    /// (trace id, parent span id) from the process's `TRACEPARENT`.
    trace_context: Option<(String, String)>,
    exited_ns: Option<u64>,
    observed_at: u64,
}

#[derive(Debug, Clone)]
struct Pending {
    seq: u64,
    report: Report,
    received_ns: u64,
    binding: &'static str,
}

#[derive(Debug, Default, Clone)]
struct Tally {
    observed: u64,
    reported: u64,
    unreported: u64,
    tool_calls: u64,
    unobserved_claims: u64,
    calls_without_process: u64,
    telemetry: u64,
    matches: Vec<Value>,
    by_basis: BTreeMap<&'static str, u64>,
    ended: Option<(u64, &'static str)>,
    summarized: bool,
    agent: Value,
}

#[derive(Debug, Default)]
struct AgentState {
    agent: Value,
    root_pid: Option<u32>,
    root_process: Option<Value>,
    root_workload: Option<Value>,
    /// The last whole agent section, which spawns share.
    agent_text: Option<Packed>,
    /// Sensor sessions by first activity, for placing reports in time.
    sessions: Vec<(u64, String)>,
    /// Pending actions in seq order, so a seq is found by binary search.
    actions: Vec<Action>,
    /// The pid of each pending action whose process has not exited, to its
    /// seq: a spawn and an exit look their process up here instead of
    /// scanning every pending action (thousands under a busy agent).
    live_pids: IdMap<u32, u64>,
    reports: Vec<Pending>,
    /// Exec id to the seq of the action it belongs to, pending or decided.
    members: HashMap<String, u64>,
    member_order: VecDeque<String>,
    decided_calls: HashSet<String>,
    decided_call_order: VecDeque<String>,
    recent_actions: VecDeque<Value>,
    recent_reports: VecDeque<Value>,
    tallies: BTreeMap<String, Tally>,
    /// When the agent's own process exited; its state is dropped once
    /// everything about it is decided.
    root_exited_ns: Option<u64>,
}

impl AgentState {
    fn action_mut(&mut self, seq: u64) -> Option<&mut Action> {
        let index = self.actions.binary_search_by_key(&seq, |a| a.seq).ok()?;
        self.actions.get_mut(index)
    }

    fn session_at(&self, time_ns: u64) -> Option<&str> {
        self.sessions.iter().rev().find(|(start, _)| *start <= time_ns).or(self.sessions.first()).map(|(_, s)| s.as_str())
    }

    fn remember_member(&mut self, exec_id: String, seq: u64) {
        if self.members.insert(exec_id.clone(), seq).is_none() {
            self.member_order.push_back(exec_id);
        }
        while self.member_order.len() > DECIDED_MEMORY {
            if let Some(old) = self.member_order.pop_front() {
                self.members.remove(&old);
            }
        }
    }

    fn remember_call(&mut self, call_id: &str) {
        if self.decided_calls.insert(call_id.to_owned()) {
            self.decided_call_order.push_back(call_id.to_owned());
        }
        while self.decided_call_order.len() > DECIDED_MEMORY {
            if let Some(old) = self.decided_call_order.pop_front() {
                self.decided_calls.remove(&old);
            }
        }
    }

    fn tally(&mut self, session: &str) -> &mut Tally {
        let agent = &self.agent;
        self.tallies.entry(session.to_owned()).or_insert_with(|| Tally { agent: agent.clone(), ..Default::default() })
    }
}

#[derive(Debug, Clone)]
struct PidEntry {
    agent: Arc<str>,
    exited_ns: Option<u64>,
}

/// Basis on which a report and an action agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Basis {
    TraceContext,
    Command,
    Program,
    ToolName,
    TimeWindow,
}

impl Basis {
    fn name(self) -> &'static str {
        match self {
            Basis::TraceContext => "trace_context",
            Basis::Command => "command",
            Basis::Program => "program",
            Basis::ToolName => "tool_name",
            Basis::TimeWindow => "time_window",
        }
    }

    fn score(self) -> u8 {
        match self {
            Basis::TraceContext => 5,
            Basis::Command => 4,
            Basis::Program => 3,
            Basis::ToolName => 2,
            Basis::TimeWindow => 1,
        }
    }
}

pub struct Reconciler {
    config: ReconcileConfig,
    agents: HashMap<Arc<str>, AgentState>,
    by_pid: IdMap<u32, PidEntry>,
    by_instance: HashMap<String, Arc<str>>,
    by_session: HashMap<String, Arc<str>>,
    by_file: HashMap<String, Arc<str>>,
    unbound: Vec<Pending>,
    next_seq: u64,
    pub stats: Stats,
}

/// Parses `VERSION-TRACEID-SPANID-FLAGS` (W3C trace context).
pub fn parse_traceparent(value: &str) -> Option<(String, String)> {
    let mut parts = value.trim().split('-');
    let _version = parts.next().filter(|v| v.len() == 2)?;
    let trace = parts.next().filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))?;
    let span = parts.next().filter(|s| s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))?;
    Some((trace.to_ascii_lowercase(), span.to_ascii_lowercase()))
}

impl Reconciler {
    pub fn new(config: ReconcileConfig) -> Self {
        Reconciler {
            config,
            agents: HashMap::new(),
            by_pid: IdMap::default(),
            by_instance: HashMap::new(),
            by_session: HashMap::new(),
            by_file: HashMap::new(),
            unbound: Vec::new(),
            next_seq: 0,
            stats: Stats::default(),
        }
    }

    /// Returns how many agents the engine keeps state for.
    #[cfg(test)]
    pub fn agent_count(&self) -> usize {
        self.agents.len()
    }

    /// Returns true when a tick may have something to decide.
    pub fn is_idle(&self) -> bool {
        self.agents.is_empty() && self.unbound.is_empty()
    }

    fn grace_ns(&self) -> u64 {
        self.config.grace_ms.saturating_mul(1_000_000)
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Reads one evidence record as JSON. Records without an `agent`
    /// section, and records the engine itself produced, are ignored.
    pub fn observe(&mut self, record: Value, now_ns: u64) {
        if let Some(observation) = Observation::from_json(record, now_ns) {
            self.observe_parsed(observation, now_ns);
        }
    }

    /// Reads one evidence record, taken by value so that a spawn's parts
    /// move into its action uncopied.
    pub fn observe_parsed(&mut self, observation: Observation, now_ns: u64) {
        let Observation { kind, record_id, time_ns, agent_id, session_id: session, agent, whole_agent, pid, exec_id } = observation;
        let agent_id: Arc<str> = Arc::from(agent_id);
        let state = self.agents.entry(agent_id.clone()).or_default();
        // The live daemon gives only the ids of most records' agents; those
        // must not replace the whole section a report copies.
        if let (true, Some(agent)) = (whole_agent, &agent) {
            if state.agent_text.as_ref() != Some(agent) {
                let value = agent.unpack();
                // A session first seen through ids only (the daemon
                // restarted mid-session) gets the whole section now.
                for tally in state.tallies.values_mut().filter(|t| t.agent.get("detected_by").is_none()) {
                    tally.agent = value.clone();
                }
                state.agent = value;
                state.agent_text = Some(agent.clone());
            }
        } else if state.agent.is_null() {
            state.agent = match &agent {
                Some(agent) => agent.unpack(),
                None => json!({ "agent_id": &*agent_id, "session_id": session }),
            };
        }
        if !session.is_empty() && state.sessions.last().is_none_or(|(_, s)| *s != session) {
            state.sessions.push((time_ns, session.clone()));
        }

        if let Some(pid) = pid {
            let exited = matches!(kind, Observed::Exit).then_some(time_ns);
            self.by_pid.insert(pid, PidEntry { agent: agent_id.clone(), exited_ns: exited });
        }
        match kind {
            Observed::Detected { process, workload } => {
                state.root_pid = pid;
                state.root_process = process;
                state.root_workload = workload;
            }
            Observed::Spawn(spawn) => {
                // Actions of one agent share its section's text.
                let agent = match (&state.agent_text, agent) {
                    (Some(shared), Some(agent)) if *shared == agent => shared.clone(),
                    (_, Some(agent)) => agent,
                    (_, None) => Packed::new(&state.agent),
                };
                self.on_spawn(&agent_id, *spawn, record_id, agent, pid.unwrap_or(0), exec_id.unwrap_or_default(), &session, time_ns, now_ns);
            }
            Observed::Exit => self.on_exit(&agent_id, exec_id.is_some(), pid, time_ns),
            Observed::SessionEnd { ended: Some(ended) } => {
                let tally = state.tally(&ended);
                tally.ended.get_or_insert((time_ns, "session_end"));
            }
            Observed::Wrote { path } => {
                self.by_file.insert(path, agent_id.clone());
            }
            Observed::SessionEnd { ended: None } | Observed::Other => {}
        }
    }

    #[allow(clippy::too_many_arguments, reason = "the parts of one record, moved out of it")]
    fn on_spawn(
        &mut self,
        agent_id: &Arc<str>,
        spawn: Spawn,
        record_id: String,
        agent: Packed,
        pid: u32,
        exec_id: String,
        session: &str,
        time_ns: u64,
        now_ns: u64,
    ) {
        let seq = self.seq();
        let Some(state) = self.agents.get_mut(agent_id) else { return };
        let Spawn { argv, ancestors, process, workload, trace_context } = spawn;

        // A descendant of an action, or a re-exec of its process, belongs
        // to that action.
        let same_process = state.live_pids.get(&pid).copied();
        let owner = same_process.or_else(|| ancestors.iter().find_map(|id| state.members.get(id).copied()));
        if let Some(owner) = owner {
            state.remember_member(exec_id.clone(), owner);
            if let Some(action) = state.action_mut(owner) {
                action.descendants.push((exec_id, argv));
            }
            return;
        }

        state.remember_member(exec_id.clone(), seq);
        state.live_pids.insert(pid, seq);
        state.tally(session).observed += 1;
        state.actions.push(Action {
            seq,
            session_id: session.to_owned(),
            agent,
            process,
            workload,
            record_id,
            time_ns,
            exec_id,
            argv,
            descendants: Vec::new(),
            trace_context,
            exited_ns: None,
            observed_at: now_ns,
        });
        self.stats.actions += 1;
    }

    fn on_exit(&mut self, agent_id: &Arc<str>, has_exec_id: bool, pid: Option<u32>, time_ns: u64) {
        let Some(state) = self.agents.get_mut(agent_id) else { return };
        if let Some(seq) = pid.and_then(|pid| state.live_pids.remove(&pid)) {
            if let Some(action) = state.action_mut(seq) {
                action.exited_ns = Some(time_ns);
            }
        }
        let is_root = pid.is_some() && pid == state.root_pid && has_exec_id;
        if is_root {
            state.root_exited_ns = Some(time_ns);
            let sessions: Vec<String> = state.sessions.iter().map(|(_, s)| s.clone()).collect();
            for session in sessions {
                state.tally(&session).ended.get_or_insert((time_ns, "agent_exit"));
            }
        }
    }

    /// Takes one report received at `now_ns` (the caller's clock).
    pub fn report(&mut self, report: Report, now_ns: u64) {
        self.stats.reports += 1;
        let seq = self.seq();
        let pending = Pending { seq, report, received_ns: now_ns, binding: "" };
        if let Some(pending) = self.bind(pending) {
            self.unbound.push(pending);
        }
    }

    /// Finds the report's agent and files the report there; returns it when
    /// no agent is known yet.
    fn bind(&mut self, mut pending: Pending) -> Option<Pending> {
        let report = &pending.report;
        let live_pid = |pid: Option<u32>| {
            let entry = self.by_pid.get(&pid?)?;
            let fresh = entry.exited_ns.is_none_or(|exited| report.start_ns <= exited.saturating_add(self.grace_ns()));
            fresh.then(|| entry.agent.clone())
        };
        let found = live_pid(report.sender_pid)
            .map(|a| (a, "socket_peer"))
            .or_else(|| live_pid(report.pid).map(|a| (a, "process_pid")))
            .or_else(|| report.service_instance_id.as_ref().and_then(|i| self.by_instance.get(i)).map(|a| (a.clone(), "service_instance_id")))
            .or_else(|| report.session_id.as_ref().and_then(|s| self.by_session.get(s)).map(|a| (a.clone(), "session_id")))
            .or_else(|| report.file.as_ref().and_then(|f| self.by_file.get(f)).map(|a| (a.clone(), "file_writer")));
        let Some((agent_id, binding)) = found else { return Some(pending) };

        pending.binding = binding;
        if let Some(instance) = &report.service_instance_id {
            self.by_instance.entry(instance.clone()).or_insert_with(|| agent_id.clone());
        }
        if let Some(session) = &report.session_id {
            self.by_session.entry(session.clone()).or_insert_with(|| agent_id.clone());
        }

        let state = self.agents.entry(agent_id).or_default();
        let session = state.session_at(pending.report.start_ns).unwrap_or("").to_owned();
        state.tally(&session).telemetry += 1;
        if pending.report.operation != Operation::ExecuteTool || pending.report.declined {
            return None;
        }
        // Decision and result events of one call are one claim.
        if let Some(call_id) = pending.report.call_id.clone() {
            if state.decided_calls.contains(&call_id) {
                self.stats.duplicate_reports += 1;
                return None;
            }
            if let Some(existing) = state.reports.iter_mut().find(|p| p.report.call_id.as_deref() == Some(call_id.as_str())) {
                merge(&mut existing.report, pending.report);
                self.stats.duplicate_reports += 1;
                return None;
            }
        }
        self.stats.tool_calls += 1;
        state.tally(&session).tool_calls += 1;
        state.reports.push(pending);
        None
    }

    fn is_process_tool(&self, report: &Report) -> bool {
        report.command.is_some()
            || report.tool_name.as_deref().is_some_and(|name| self.config.shell_tools.iter().any(|t| t.eq_ignore_ascii_case(name)))
    }

    fn window(&self, report: &Report) -> (u64, u64) {
        if report.point_in_time {
            let around = self.config.point_window_ms.saturating_mul(1_000_000);
            (report.start_ns.saturating_sub(around), report.end_ns.saturating_add(around))
        } else {
            (
                report.start_ns.saturating_sub(self.config.window_before_ms.saturating_mul(1_000_000)),
                report.end_ns.saturating_add(self.config.window_after_ms.saturating_mul(1_000_000)),
            )
        }
    }

    fn basis(&self, report: &Report, action: &Action) -> Option<Basis> {
        if let (Some((trace, span)), Some(report_span)) = (&action.trace_context, &report.span_id)
            && span == report_span
            && report.trace_id.as_ref().is_none_or(|t| t == trace)
        {
            return Some(Basis::TraceContext);
        }
        let (from, to) = self.window(report);
        if action.time_ns < from || action.time_ns > to {
            return None;
        }
        let argvs = std::iter::once(&action.argv).chain(action.descendants.iter().map(|(_, argv)| argv));
        if let Some(reported) = &report.command {
            return argvs.filter_map(|argv| command::compare(reported, argv)).max().map(|agreement| match agreement {
                Agreement::Command => Basis::Command,
                Agreement::Program => Basis::Program,
            });
        }
        let tool = report.tool_name.as_deref().unwrap_or("");
        let named = !tool.is_empty()
            && argvs.into_iter().any(|argv| argv.first().is_some_and(|a| a.rsplit('/').next() == Some(tool)));
        Some(if named { Basis::ToolName } else { Basis::TimeWindow })
    }

    fn action_deadline(&self, action: &Action) -> u64 {
        let running = self.config.running_timeout_secs.saturating_mul(1_000_000_000);
        let base = action.exited_ns.map_or(action.observed_at.saturating_add(running), |e| e.max(action.observed_at));
        base.saturating_add(self.grace_ns())
    }

    /// Decides what is due at `now_ns`: matches, findings and summaries.
    pub fn tick(&mut self, now_ns: u64) -> Vec<Output> {
        self.decide(now_ns, false)
    }

    /// Decides everything still pending, as at the end of the input or at
    /// shutdown, and writes a summary for every session.
    pub fn finish(&mut self, now_ns: u64) -> Vec<Output> {
        self.decide(now_ns, true)
    }

    fn decide(&mut self, now_ns: u64, all: bool) -> Vec<Output> {
        let mut outputs = Vec::new();
        // Reports whose agent was unknown may be placeable now.
        let unbound = std::mem::take(&mut self.unbound);
        for pending in unbound {
            if let Some(pending) = self.bind(pending) {
                if all || now_ns >= pending.received_ns.saturating_add(self.grace_ns()) {
                    self.stats.unattributed_reports += 1;
                    log::info!(
                        "reconcile: no agent for a {} report (tool {:?}, pid {:?}, sender pid {:?}, session {:?})",
                        serde_json::to_value(pending.report.source).unwrap_or_default(),
                        pending.report.tool_name,
                        pending.report.pid,
                        pending.report.sender_pid,
                        pending.report.session_id
                    );
                } else {
                    self.unbound.push(pending);
                }
            }
        }
        let mut ids: Vec<Arc<str>> = self.agents.keys().cloned().collect();
        ids.sort();
        for id in ids {
            self.decide_agent(&id, now_ns, all, &mut outputs);
        }
        self.forget_finished(now_ns);
        outputs
    }

    /// Drops agents whose process exited and whose every action, report
    /// and summary is decided, with the ways reports were tied to them, so
    /// a long-running daemon does not keep them without bound.
    fn forget_finished(&mut self, now_ns: u64) {
        let linger = self.grace_ns().saturating_mul(2);
        let finished: Vec<Arc<str>> = self
            .agents
            .iter()
            .filter(|(_, state)| {
                state.root_exited_ns.is_some_and(|exited| now_ns >= exited.saturating_add(linger))
                    && state.actions.is_empty()
                    && state.reports.is_empty()
                    && state.tallies.values().all(|t| t.summarized)
            })
            .map(|(id, _)| id.clone())
            .collect();
        if finished.is_empty() {
            return;
        }
        for id in &finished {
            self.agents.remove(id);
        }
        let is_finished = |agent: &Arc<str>| finished.contains(agent);
        self.by_pid.retain(|_, entry| !is_finished(&entry.agent));
        self.by_instance.retain(|_, agent| !is_finished(agent));
        self.by_session.retain(|_, agent| !is_finished(agent));
        self.by_file.retain(|_, agent| !is_finished(agent));
    }

    fn decide_agent(&mut self, id: &Arc<str>, now_ns: u64, all: bool, outputs: &mut Vec<Output>) {
        let grace = self.grace_ns();
        let Some(state) = self.agents.get(id) else { return };
        let overflow = state.actions.len().saturating_sub(self.config.max_pending);
        let due = all
            || overflow > 0
            || state.actions.iter().any(|a| now_ns >= self.action_deadline(a))
            || state.reports.iter().any(|r| now_ns >= r.received_ns.saturating_add(grace));
        if due {
            self.match_agent(id, now_ns, all, overflow, outputs);
        }
        self.summarize(id, now_ns, all, outputs);
    }

    fn match_agent(&mut self, id: &Arc<str>, now_ns: u64, all: bool, overflow: usize, outputs: &mut Vec<Output>) {
        let grace = self.grace_ns();
        let Some(state) = self.agents.get(id) else { return };
        let mut pairs = Vec::new();
        for (ri, pending) in state.reports.iter().enumerate() {
            for (ai, action) in state.actions.iter().enumerate() {
                if let Some(basis) = self.basis(&pending.report, action) {
                    let distance = action.time_ns.abs_diff(pending.report.start_ns);
                    pairs.push((basis, distance, action.seq, pending.seq, ri, ai));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.score().cmp(&a.0.score()).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)).then(a.3.cmp(&b.3)));
        let mut report_taken = vec![false; state.reports.len()];
        let mut action_taken = vec![false; state.actions.len()];
        let mut matched = Vec::new();
        for (basis, _, _, _, ri, ai) in pairs {
            if !report_taken[ri] && !action_taken[ai] {
                report_taken[ri] = true;
                action_taken[ai] = true;
                matched.push((basis, ri, ai));
            }
        }
        let action_deadlines: Vec<u64> = state.actions.iter().map(|a| self.action_deadline(a)).collect();
        let process_tools: Vec<bool> = state.reports.iter().map(|p| self.is_process_tool(&p.report)).collect();
        let windows: Vec<(u64, u64)> = state.reports.iter().map(|p| self.window(&p.report)).collect();

        let Some(state) = self.agents.get_mut(id) else { return };
        let mut actions: Vec<Option<Action>> = std::mem::take(&mut state.actions).into_iter().map(Some).collect();
        let mut reports: Vec<Option<Pending>> = std::mem::take(&mut state.reports).into_iter().map(Some).collect();
        for (basis, ri, ai) in matched {
            let (Some(action), Some(pending)) = (actions[ai].take(), reports[ri].take()) else { continue };
            self.stats.matched += 1;
            let entry = json!({
                "exec_id": action.exec_id,
                "argv": action.argv,
                "tool_name": pending.report.tool_name,
                "call_id": pending.report.call_id,
                "span_id": pending.report.span_id,
                "basis": basis.name(),
            });
            if let Some(call_id) = &pending.report.call_id {
                state.remember_call(call_id);
            }
            let tally = state.tally(&action.session_id);
            tally.reported += 1;
            *tally.by_basis.entry(basis.name()).or_default() += 1;
            if tally.matches.len() < SUMMARY_MATCHES {
                tally.matches.push(entry.clone());
            }
            push_recent(&mut state.recent_actions, json!({ "exec_id": action.exec_id, "argv": action.argv, "time": rfc3339(action.time_ns), "time_unix_nano": action.time_ns, "matched": entry }));
            push_recent(&mut state.recent_reports, json!({ "report": pending.report, "matched": entry }));
        }
        // Unmatched actions: due ones (and the oldest beyond the bound)
        // become findings, the rest wait.
        let mut forced = overflow;
        for (ai, slot) in actions.iter_mut().enumerate() {
            if slot.is_none() {
                continue;
            }
            let due = all || now_ns >= action_deadlines[ai];
            if !due && forced == 0 {
                continue;
            }
            if !due {
                // Beyond `max_pending` the oldest are decided early rather
                // than kept without bound.
                self.stats.pending_dropped += 1;
            }
            forced = forced.saturating_sub(1);
            let Some(action) = slot.take() else { continue };
            self.stats.unreported_actions += 1;
            state.tally(&action.session_id).unreported += 1;
            outputs.push(unreported_finding(state, &action, &windows, &reports, now_ns));
            push_recent(&mut state.recent_actions, json!({ "exec_id": action.exec_id, "argv": action.argv, "time": rfc3339(action.time_ns), "time_unix_nano": action.time_ns, "matched": null }));
        }
        for (ri, slot) in reports.iter_mut().enumerate() {
            let Some(pending) = slot.as_ref() else { continue };
            if !(all || now_ns >= pending.received_ns.saturating_add(grace)) {
                continue;
            }
            let Some(pending) = slot.take() else { continue };
            if let Some(call_id) = &pending.report.call_id {
                state.remember_call(call_id);
            }
            let session = state.session_at(pending.report.start_ns).unwrap_or("").to_owned();
            if process_tools[ri] {
                self.stats.unobserved_claims += 1;
                state.tally(&session).unobserved_claims += 1;
                outputs.push(unobserved_finding(state, &pending, windows[ri], &actions, now_ns));
            } else {
                state.tally(&session).calls_without_process += 1;
            }
            push_recent(&mut state.recent_reports, json!({ "report": pending.report, "matched": null }));
        }
        state.actions = actions.into_iter().flatten().collect();
        let pending = &state.actions;
        state.live_pids.retain(|_, seq| pending.binary_search_by_key(seq, |a| a.seq).is_ok());
        state.reports = reports.into_iter().flatten().collect();
    }

    fn summarize(&mut self, id: &Arc<str>, now_ns: u64, all: bool, outputs: &mut Vec<Output>) {
        let grace = self.grace_ns();
        let Some(state) = self.agents.get_mut(id) else { return };
        // The busy sessions matter only to a session that has ended, and
        // listing them copies a session id per pending action.
        let ended = state.tallies.values().any(|t| !t.summarized && t.ended.is_some());
        let busy: HashSet<String> = if all || !ended {
            HashSet::new()
        } else {
            state
                .actions
                .iter()
                .map(|a| a.session_id.clone())
                .chain(state.reports.iter().filter_map(|p| state.session_at(p.report.start_ns).map(str::to_owned)))
                .collect()
        };
        let agent_id = id.to_string();
        for (session, tally) in state.tallies.iter_mut() {
            if tally.summarized || (tally.observed == 0 && tally.tool_calls == 0 && tally.telemetry == 0) {
                continue;
            }
            let ready = match tally.ended {
                _ if all => true,
                Some((ended, _)) => now_ns >= ended.saturating_add(grace) && !busy.contains(session),
                None => false,
            };
            if !ready {
                continue;
            }
            tally.summarized = true;
            let ended_by = tally.ended.map_or("end_of_input", |(_, by)| by);
            let mut agent = tally.agent.clone();
            if let Some(object) = agent.as_object_mut() {
                object.insert("agent_id".into(), json!(agent_id));
                object.insert("session_id".into(), json!(session));
            }
            let mut sections = Map::new();
            sections.insert("agent".into(), agent);
            sections.insert(
                "reconcile".into(),
                json!({
                    "session_id": session,
                    "observed_actions": tally.observed,
                    "reported_actions": tally.reported,
                    "unreported_actions": tally.unreported,
                    "text": format!("{} of {} observed actions reported", tally.reported, tally.observed),
                    "tool_calls_reported": tally.tool_calls,
                    "unobserved_claims": tally.unobserved_claims,
                    "tool_calls_without_process": tally.calls_without_process,
                    "telemetry_items": tally.telemetry,
                    "matched_by": tally.by_basis,
                    "matches": tally.matches,
                    "ended_by": ended_by,
                }),
            );
            outputs.push(Output { kind: "reconcile.summary", time_ns: now_ns, sections });
        }
    }
}

fn push_recent(list: &mut VecDeque<Value>, value: Value) {
    list.push_back(value);
    while list.len() > RECENT {
        list.pop_front();
    }
}

/// Folds a later event of the same tool call into the first.
fn merge(into: &mut Report, from: Report) {
    into.start_ns = into.start_ns.min(from.start_ns);
    into.end_ns = into.end_ns.max(from.end_ns);
    into.point_in_time &= from.point_in_time;
    into.command = into.command.take().or(from.command);
    into.arguments = into.arguments.take().or(from.arguments);
    into.span_id = into.span_id.take().or(from.span_id);
    into.trace_id = into.trace_id.take().or(from.trace_id);
    into.tool_name = into.tool_name.take().or(from.tool_name);
}

fn report_brief(report: &Report) -> Value {
    json!({
        "source": report.source,
        "tool_name": report.tool_name,
        "call_id": report.call_id,
        "command": report.command,
        "span_id": report.span_id,
        "start": rfc3339(report.start_ns),
        "end": rfc3339(report.end_ns),
    })
}

fn unreported_finding(state: &AgentState, action: &Action, windows: &[(u64, u64)], reports: &[Option<Pending>], now_ns: u64) -> Output {
    let nearby: Vec<Value> = reports
        .iter()
        .zip(windows)
        .filter_map(|(pending, (from, to))| {
            let pending = pending.as_ref()?;
            let in_window = (*from..=*to).contains(&action.time_ns);
            in_window.then(|| report_brief(&pending.report))
        })
        .chain(state.recent_reports.iter().rev().filter(|r| !r["matched"].is_null()).take(NEARBY).cloned())
        .take(NEARBY)
        .collect();
    let tally = state.tallies.get(&action.session_id);
    let process = action.process.unpack();
    let mut observed = json!({
        "kind": "tool.spawn",
        "record_id": action.record_id,
        "exec_id": action.exec_id,
        "time": rfc3339(action.time_ns),
        "argv": action.argv,
        "exe": process.get("exe"),
        "parent": process.get("parent"),
        "ancestry": process.get("ancestry"),
        "descendants": action.descendants.iter().map(|(id, argv)| json!({ "exec_id": id, "argv": argv })).collect::<Vec<_>>(),
    });
    if let Some(exited) = action.exited_ns {
        observed["exit_time"] = json!(rfc3339(exited));
    }
    if let Some((trace, span)) = &action.trace_context {
        observed["trace_context"] = json!({ "trace_id": trace, "parent_span_id": span });
    }
    let mut sections = Map::new();
    sections.insert("process".into(), process);
    if let Some(workload) = &action.workload {
        sections.insert("workload".into(), workload.unpack());
    }
    sections.insert("agent".into(), action.agent.unpack());
    sections.insert(
        "finding".into(),
        json!({
            "severity": "medium",
            "title": "action not reported by the agent",
            "description": "The kernel saw this tool process start in the agent's session, and none of the tool calls the agent reported matches it.",
            "evidence": {
                "observed": observed,
                "reported": {
                    "telemetry_received": tally.is_some_and(|t| t.telemetry > 0),
                    "tool_calls_in_session": tally.map_or(0, |t| t.tool_calls),
                    "tool_calls_nearby": nearby,
                },
            },
        }),
    );
    Output { kind: "finding.unreported_action", time_ns: now_ns, sections }
}

fn unobserved_finding(state: &AgentState, pending: &Pending, window: (u64, u64), actions: &[Option<Action>], now_ns: u64) -> Output {
    let in_window = |time: u64| (window.0..=window.1).contains(&time);
    let spawns: Vec<Value> = actions
        .iter()
        .flatten()
        .filter(|a| in_window(a.time_ns))
        .map(|a| json!({ "exec_id": a.exec_id, "argv": a.argv, "time": rfc3339(a.time_ns), "matched": null }))
        .chain(state.recent_actions.iter().filter(|a| a["time_unix_nano"].as_u64().is_some_and(in_window)).cloned())
        .take(NEARBY)
        .collect();
    let mut sections = Map::new();
    if let Some(process) = &state.root_process {
        sections.insert("process".into(), process.clone());
    }
    if let Some(workload) = &state.root_workload {
        sections.insert("workload".into(), workload.clone());
    }
    let mut agent = state.agent.clone();
    if let (Some(object), Some(session)) = (agent.as_object_mut(), state.session_at(pending.report.start_ns)) {
        object.insert("session_id".into(), json!(session));
    }
    sections.insert("agent".into(), agent);
    sections.insert(
        "finding".into(),
        json!({
            "severity": "high",
            "title": "reported tool call never observed",
            "description": "The agent reported running a process-running tool, and the kernel saw no matching process start in the agent's tree inside the report's time window.",
            "evidence": {
                "reported": pending.report,
                "attributed_by": pending.binding,
                "observed": {
                    "window": { "from": rfc3339(window.0), "to": rfc3339(window.1) },
                    "tool_spawns_nearby": spawns,
                },
            },
        }),
    );
    Output { kind: "finding.unobserved_claim", time_ns: now_ns, sections }
}
