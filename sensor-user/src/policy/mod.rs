//! Pipeline stage 7: the policy. A YAML file (`policy.path`) in; checks
//! with their evidence, verdicts and findings out.
//!
//! The file lists the registered agents with selectors on the executable,
//! the user, the cgroup or systemd unit, and pod fields. For each agent it
//! lists the tools it may run, where it may connect, which LLM providers
//! and models it may use, and which paths are sensitive. `defaults` applies to
//! agents that match no entry. The daemon checks every tool spawn, every
//! connect and file operation of an agent's tree, and every LLM request,
//! and writes the checks into the record (`check.rs`); failures with the
//! `alert` action become findings that carry references to the risk
//! frameworks (`references.rs`).
//!
//! A policy is all-or-nothing: parsing (`yaml.rs`) and validation
//! (`parse.rs`) report every problem with its key path and line, and a
//! policy with any problem is not used. The daemon keeps the last good one
//! on a failed reload (`engine.rs`).
//!
//! Not handled: a process's rules are those of the agent it belongs to;
//! processes outside any agent's tree are not checked, except their LLM
//! requests, which make them agents.

mod check;
pub mod engine;
mod matchers;
mod parse;
pub mod references;
#[cfg(test)]
mod tests;
mod yaml;

use std::{
    collections::BTreeMap,
    fmt,
    io::Read as _,
    path::{Path, PathBuf},
};

use regex::Regex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use check::{CheckResult, Identity, Outcome};
pub use matchers::{Cidr, HostPattern, PathPattern, PortRange, Wildcard};

/// Largest policy file read; a policy is a few kilobytes.
const MAX_POLICY_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// The policy file (YAML, see docs/policy.md). Unset: no policy, and
    /// every record's `policy_sha256` is `none`.
    pub path: Option<PathBuf>,
}

/// The consequence of a failed check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Write a finding after the record.
    #[default]
    Alert,
    /// Only the checks in the record.
    Record,
}

#[derive(Debug, Default)]
pub struct Policy {
    pub agents: Vec<AgentEntry>,
    /// Rules for agents that match no entry.
    pub defaults: Rules,
    /// Sensitive paths for every agent, besides each entry's own.
    pub sensitive_paths: Vec<SensitivePath>,
}

#[derive(Debug)]
pub struct AgentEntry {
    pub name: String,
    pub selector: Selector,
    pub rules: Rules,
}

/// Selectors of a registered agent; every one given must match.
#[derive(Debug, Default)]
pub struct Selector {
    pub exe: Option<Wildcard>,
    pub exe_sha256: Option<String>,
    pub user: Option<String>,
    pub uid: Option<u32>,
    /// Prefix of the cgroup v2 path, at a path-component boundary.
    pub cgroup: Option<String>,
    pub unit: Option<Wildcard>,
    pub pod: Option<PodSelector>,
}

#[derive(Debug, Default)]
pub struct PodSelector {
    pub namespace: Option<Wildcard>,
    /// Every label given must be on the pod with this value.
    pub labels: BTreeMap<String, String>,
    pub service_account: Option<String>,
    pub image: Option<Wildcard>,
}

/// The rules of one agent entry or of `defaults`. A rule that is `None`
/// was not given and its checks are `not_applicable`; an empty list
/// allows nothing.
#[derive(Debug, Default)]
pub struct Rules {
    pub action: Action,
    pub tools: Option<Vec<ToolRule>>,
    pub egress: Option<Vec<EgressRule>>,
    pub llm: LlmRules,
    pub sensitive_paths: Vec<SensitivePath>,
}

#[derive(Debug)]
pub struct ToolRule {
    /// A pattern with `/` is matched against the executable's path, one
    /// without against its file name.
    pub exe: Wildcard,
    /// Matched against the arguments after `argv[0]`, joined by spaces.
    pub args: Option<Wildcard>,
    pub args_regex: Option<Regex>,
    /// The entry as written, for the checks' `allowed`.
    pub raw: serde_json::Value,
}

#[derive(Debug)]
pub struct EgressRule {
    pub host: Option<HostPattern>,
    pub cidr: Option<Cidr>,
    pub ports: Option<Vec<PortRange>>,
    pub raw: serde_json::Value,
}

#[derive(Debug, Default)]
pub struct LlmRules {
    /// Provider names as the catalog spells them, lowercase.
    pub providers: Option<Vec<String>>,
    pub models: Option<Vec<Wildcard>>,
}

#[derive(Debug)]
pub struct SensitivePath {
    pub pattern: PathPattern,
    pub action: Action,
    pub raw: serde_json::Value,
}

/// One problem in a policy file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    /// Key path such as `agents[1].egress[0].port`; empty for the file.
    pub key: String,
    /// 1-based line.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.key.is_empty()) {
            (Some(line), false) => write!(f, "line {line}: {}: {}", self.key, self.message),
            (Some(line), true) => write!(f, "line {line}: {}", self.message),
            (None, false) => write!(f, "{}: {}", self.key, self.message),
            (None, true) => write!(f, "{}", self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("policy file {path} is larger than {MAX_POLICY_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("invalid policy file {path}: {} problem(s)", .problems.len())]
    Invalid { path: PathBuf, sha256: String, problems: Vec<Problem> },
}

impl PolicyError {
    /// Lists the problems, one per line, for an operator.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            PolicyError::Invalid { problems, .. } => problems.clone(),
            other => vec![Problem { key: String::new(), line: None, message: other.to_string() }],
        }
    }

    /// Returns the sha256 of the file that was read, when it could be read.
    pub fn sha256(&self) -> Option<&str> {
        match self {
            PolicyError::Invalid { sha256, .. } => Some(sha256),
            _ => None,
        }
    }
}

/// A policy and the sha256 of the bytes it was parsed from.
#[derive(Debug)]
pub struct Loaded {
    pub policy: Policy,
    pub sha256: String,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a policy file's bytes, at most `MAX_POLICY_BYTES`.
pub fn read(path: &Path) -> Result<Vec<u8>, PolicyError> {
    let file = std::fs::File::open(path).map_err(|source| PolicyError::Read { path: path.to_owned(), source })?;
    let mut bytes = Vec::new();
    file.take(MAX_POLICY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| PolicyError::Read { path: path.to_owned(), source })?;
    if bytes.len() as u64 > MAX_POLICY_BYTES {
        return Err(PolicyError::TooLarge { path: path.to_owned() });
    }
    Ok(bytes)
}

/// Parses a policy file's bytes.
pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Loaded, PolicyError> {
    let sha256 = sha256_hex(bytes);
    let invalid = |problems| PolicyError::Invalid { path: path.to_owned(), sha256: sha256.clone(), problems };
    let text = std::str::from_utf8(bytes).map_err(|error| {
        invalid(vec![Problem { key: String::new(), line: None, message: format!("the file is not UTF-8: {error}") }])
    })?;
    let policy = parse::parse(text).map_err(invalid)?;
    Ok(Loaded { policy, sha256 })
}

/// Reads and validates a policy file.
pub fn load(path: &Path) -> Result<Loaded, PolicyError> {
    from_bytes(path, &read(path)?)
}

impl Policy {
    /// Counts the rules given, for `policy.reload`.
    pub fn rule_count(&self) -> usize {
        let count = |rules: &Rules| {
            rules.tools.as_ref().map_or(0, Vec::len)
                + rules.egress.as_ref().map_or(0, Vec::len)
                + rules.llm.providers.as_ref().map_or(0, Vec::len)
                + rules.llm.models.as_ref().map_or(0, Vec::len)
                + rules.sensitive_paths.len()
        };
        self.agents.iter().map(|a| count(&a.rules)).sum::<usize>() + count(&self.defaults) + self.sensitive_paths.len()
    }
}
