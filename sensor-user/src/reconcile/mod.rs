//! Pipeline stage 8 (second half): reports in, matched against observed
//! agent actions; `finding.unreported_action`, `finding.unobserved_claim`
//! and `reconcile.summary` records out.
//!
//! Reports come from the ingest stage (OTLP spans and logs, JSON-lines
//! files, MCP `tools/call` messages) and are normalised in `report.rs`.
//! Observed actions are the evidence records the daemon writes about
//! agents: `agent.detected`, `tool.spawn`, `process.exit`,
//! `agent.session_end` and file writes. The engine (`engine.rs`) reads each
//! as an `Observation` (`observation.rs`): `agent-sensor reconcile`
//! (`offline.rs`) reads it from an evidence line, the daemon from the
//! record it wrote, and both give the same. `live.rs` connects the engine
//! to the daemon.
//!
//! A report is tied to one agent. The pid owning the socket it came in on
//! decides first, then its resource's `process.pid`. Without either, a
//! `service.instance.id` or session id seen earlier with one of them
//! decides, and last the agent that wrote the JSON-lines file.

pub mod command;
pub mod engine;
mod live;
pub mod observation;
pub mod offline;
pub mod report;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use engine::{Output, Reconciler};
pub use live::{trace_context, Live};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// Match reports against observed actions and record findings.
    pub enabled: bool,
    /// Milliseconds to wait for the other side before a finding: after a
    /// tool process exits for its report, and after a report arrives for
    /// its process.
    pub grace_ms: u64,
    /// Seconds after which a tool process whose exit was not seen is
    /// decided as if it had exited.
    pub running_timeout_secs: u64,
    /// Milliseconds before a reported tool call's start in which its
    /// process may start (clock skew and instrumentation order).
    pub window_before_ms: u64,
    /// Milliseconds after a reported tool call's end in which its process
    /// may start.
    pub window_after_ms: u64,
    /// Milliseconds on either side of a report that gives only one time
    /// (log events, JSON-lines entries), in which its process may start.
    pub point_window_ms: u64,
    /// Tool names that run processes even when their arguments carry no
    /// command; an unmatched report of one is a `finding.unobserved_claim`.
    /// Compared without regard to case.
    pub shell_tools: Vec<String>,
    /// Unmatched actions kept per agent; beyond it the oldest are decided
    /// at once and counted in `pending_dropped`.
    pub max_pending: usize,
    /// How often pending matches are decided, in milliseconds.
    pub tick_ms: u64,
    /// Have the kernel copy `TRACEPARENT` from a tool process's environment
    /// at exec, so the process matches the span that started it.
    pub read_trace_context: bool,
    /// Bytes of a tool process's environment searched at most for it.
    pub environ_max_bytes: usize,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            grace_ms: 30_000,
            running_timeout_secs: 600,
            window_before_ms: 2_000,
            window_after_ms: 2_000,
            point_window_ms: 60_000,
            shell_tools: [
                "bash",
                "shell",
                "sh",
                "run_shell_command",
                "execute_command",
                "run_command",
                "exec",
                "terminal",
                "run_terminal_cmd",
                "local_shell",
                "execute_bash",
            ]
            .into_iter()
            .map(str::to_owned)
            .collect(),
            max_pending: 10_000,
            tick_ms: 500,
            read_trace_context: true,
            environ_max_bytes: 32 << 10,
        }
    }
}

/// Errors of the offline `reconcile` command.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("cannot read {path}: {source}; check the path and its permissions")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: {reason}")]
    Line { path: std::path::PathBuf, line: usize, reason: String },
}

/// Checks `[reconcile]` values that parse but cannot work; `check` records
/// a problem under `section.key` when its condition is false.
pub fn validate(config: &ReconcileConfig, check: &mut dyn FnMut(&str, &str, bool, String)) {
    check(
        "reconcile",
        "grace_ms",
        (1..=3_600_000).contains(&config.grace_ms),
        format!("{} is outside 1..=3600000", config.grace_ms),
    );
    check(
        "reconcile",
        "tick_ms",
        (10..=60_000).contains(&config.tick_ms),
        format!("{} is outside 10..=60000", config.tick_ms),
    );
    check("reconcile", "max_pending", config.max_pending > 0, "must be greater than 0".to_owned());
    check(
        "reconcile",
        "running_timeout_secs",
        config.running_timeout_secs > 0,
        "must be greater than 0".to_owned(),
    );
    check(
        "reconcile",
        "environ_max_bytes",
        config.environ_max_bytes <= 1 << 20,
        format!("{} is above the maximum of 1048576", config.environ_max_bytes),
    );
}
