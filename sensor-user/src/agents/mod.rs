//! Pipeline stage 6: endpoint matches, execs and forks in; agents, their
//! sessions, tool spawns and shadow-agent findings out.
//!
//! A process becomes an agent when it reaches an LLM endpoint (by TLS server
//! name, DNS name, address, or the API shape of an HTTP request) or runs a
//! known agent program. Its descendants, from then on, belong to it: their
//! execs are tool spawns of the agent's current session, and the kernel is
//! asked to record their file operations. A session ends after
//! `agents.session_idle_secs` without activity; the next activity starts a
//! new one. An agent that matches no registered-agent selector yields one
//! `finding.shadow_agent` per session.
//!
//! Descendants started before their ancestor became an agent are not
//! members; membership starts at detection.

pub mod control;

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::{Arc, OnceLock},
};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::idmap::IdMap;
use crate::process::{ProcKey, Process};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsConfig {
    /// Seconds without activity (LLM calls, connections, tool spawns) after
    /// which an agent's session ends.
    pub session_idle_secs: u64,
    /// Executable names that make a process an agent as soon as it starts.
    pub known_programs: Vec<String>,
    /// The registered-agent inventory: an agent matching any entry is
    /// registered; others raise shadow-agent findings. The policy file's
    /// `agents` are matched first and carry rules; an agent registered
    /// only here is checked against the policy's `defaults`.
    pub registered: Vec<RegisteredAgent>,
    /// Path prefixes whose read-only opens by agent trees are not recorded:
    /// shared libraries and locale files every program reads. Writes,
    /// creations, renames and unlinks under them are always recorded.
    pub ignore_read_prefixes: Vec<String>,
    /// Unix socket serving `agent-sensor agents`.
    pub control_socket: PathBuf,
    /// Group allowed to read the control socket besides root; unset means
    /// root only.
    pub control_group: Option<u32>,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self {
            session_idle_secs: 300,
            known_programs: ["claude", "codex", "aider", "goose", "opencode", "cursor-agent", "gemini"]
                .into_iter()
                .map(str::to_owned)
                .collect(),
            registered: Vec::new(),
            ignore_read_prefixes: [
                "/lib/",
                "/lib64/",
                "/usr/lib/",
                "/usr/lib64/",
                "/usr/share/locale/",
                "/usr/share/zoneinfo/",
                "/etc/ld.so.cache",
                "/etc/localtime",
                "/proc/self/",
                "/dev/null",
            ]
            .into_iter()
            .map(str::to_owned)
            .collect(),
            control_socket: PathBuf::from("/run/agent-sensor/control.sock"),
            control_group: None,
        }
    }
}

/// Selectors of a registered agent; every selector given must match.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegisteredAgent {
    pub name: String,
    /// Executable path.
    pub exe: Option<String>,
    pub exe_sha256: Option<String>,
    pub uid: Option<u32>,
    /// Prefix of the cgroup v2 path.
    pub cgroup: Option<String>,
}

impl RegisteredAgent {
    fn matches(&self, process: &Process) -> bool {
        let has_selector = self.exe.is_some() || self.exe_sha256.is_some() || self.uid.is_some() || self.cgroup.is_some();
        has_selector
            && self.exe.as_ref().is_none_or(|exe| process.exe.path.as_deref() == Some(exe.as_str()))
            && self.exe_sha256.as_ref().is_none_or(|hash| process.exe.sha256.as_deref() == Some(hash.as_str()))
            && self.uid.is_none_or(|uid| process.uid == Some(uid))
            && self.cgroup.as_ref().is_none_or(|prefix| {
                process.cgroup_path.as_deref().is_some_and(|path| path.starts_with(prefix.as_str()))
            })
    }
}

/// A signal that made a process an agent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    /// `sni`, `dns`, `address`, `api_shape` or `known_program`.
    pub signal: &'static str,
    /// The host name, address, path or program that matched.
    pub value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Session {
    pub id: String,
    #[serde(skip)]
    pub number: u64,
    #[serde(skip)]
    pub started_ns: u64,
    #[serde(skip)]
    pub last_activity_ns: u64,
    pub tool_spawns: u64,
    pub connections: u64,
    pub llm_requests: u64,
    /// The session ended for idleness; the next activity starts a new one.
    #[serde(skip)]
    pub closed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Agent {
    #[serde(skip)]
    pub key: ProcKey,
    pub pid: u32,
    /// The exec id of the process when it became an agent.
    pub agent_id: Arc<str>,
    pub registered: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The policy's agent entry whose rules apply; `None` means the
    /// policy's `defaults`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_entry: Option<Arc<str>>,
    pub detected_by: Vec<Detection>,
    pub session: Session,
    pub endpoints: BTreeSet<String>,
    #[serde(skip)]
    shadow_reported_for: Option<u64>,
    /// The `agent` section as last serialised. Every record of the agent's
    /// tree carries it, and it changes only when a detection is added or a
    /// session begins, which empty it. NOTE: the fields it shows are public;
    /// code that changes one elsewhere must empty it too.
    #[serde(skip)]
    section: OnceLock<Arc<RawValue>>,
}

impl Agent {
    /// Returns the `agent` section of the agent's records, serialised once
    /// until it changes.
    pub fn view(&self) -> AgentView<'_> {
        let mut view = AgentView::from(self);
        // A section that cannot be serialised fails again, with its error,
        // in the sink that writes the record.
        if let Some(json) = self.section.get() {
            view.json = Some(json.clone());
        } else if let Ok(json) = serde_json::value::to_raw_value(&view) {
            view.json = Some(self.section.get_or_init(|| Arc::from(json)).clone());
        }
        view
    }
}

/// The `agent` section of a record.
#[derive(Debug, Clone)]
pub struct AgentView<'a> {
    pub agent_id: &'a str,
    pub session_id: &'a str,
    pub registered: bool,
    pub name: Option<&'a str>,
    pub detected_by: &'a [Detection],
    /// The section as serialised before (`Agent::view`).
    pub json: Option<Arc<RawValue>>,
}

impl Serialize for AgentView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        if let Some(json) = &self.json {
            return json.serialize(serializer);
        }
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("agent_id", self.agent_id)?;
        map.serialize_entry("session_id", self.session_id)?;
        map.serialize_entry("registered", &self.registered)?;
        if let Some(name) = self.name {
            map.serialize_entry("name", name)?;
        }
        map.serialize_entry("detected_by", self.detected_by)?;
        map.end()
    }
}

impl<'a> From<&'a Agent> for AgentView<'a> {
    fn from(agent: &'a Agent) -> Self {
        AgentView {
            agent_id: &agent.agent_id,
            session_id: &agent.session.id,
            registered: agent.registered,
            name: agent.name.as_deref(),
            detected_by: &agent.detected_by,
            json: None,
        }
    }
}

/// Changes a detection or activity made, for the daemon to record.
#[derive(Debug, Default)]
pub struct Changes {
    /// The agent is new: record `agent.detected` and track its tree.
    pub detected: bool,
    /// A session ended and a new one began; the old id is given.
    pub session_ended: Option<Session>,
    /// Record a `finding.shadow_agent` for the current session.
    pub shadow_finding: bool,
}

pub struct Agents {
    config: AgentsConfig,
    by_root: IdMap<ProcKey, Agent>,
    /// Member process to the root of its agent tree.
    member_of: IdMap<ProcKey, ProcKey>,
    next_session: u64,
    boot_prefix: String,
}

impl Agents {
    pub fn new(config: AgentsConfig, boot_prefix: String) -> Self {
        Self { config, by_root: IdMap::default(), member_of: IdMap::default(), next_session: 1, boot_prefix }
    }

    pub fn agents(&self) -> impl Iterator<Item = &Agent> {
        self.by_root.values()
    }

    /// Returns the agent whose tree `key` belongs to.
    pub fn agent_of(&self, key: &ProcKey) -> Option<&Agent> {
        self.member_of.get(key).and_then(|root| self.by_root.get(root))
    }

    fn new_session(&mut self, time_ns: u64) -> Session {
        let number = self.next_session;
        self.next_session += 1;
        Session {
            id: format!("{}-{number}", self.boot_prefix),
            number,
            started_ns: time_ns,
            last_activity_ns: time_ns,
            tool_spawns: 0,
            connections: 0,
            llm_requests: 0,
            closed: false,
        }
    }

    /// Returns whether a read-only open of `path` is left out of the records.
    pub fn ignores_read(&self, path: &str) -> bool {
        self.config.ignore_read_prefixes.iter().any(|prefix| path.starts_with(prefix.as_str()))
    }

    /// Returns whether `key` is a member of an agent tree.
    pub fn is_member(&self, key: &ProcKey) -> bool {
        self.member_of.contains_key(key)
    }

    /// Returns whether `process` runs a known agent program.
    pub fn known_program(&self, process: &Process) -> Option<String> {
        let exe_name = process.exe.path.as_deref().and_then(|p| p.rsplit('/').next());
        let argv0 = process.argv.as_deref().and_then(|a| a.first()).and_then(|a| a.rsplit('/').next());
        [exe_name, argv0]
            .into_iter()
            .flatten()
            .find(|name| self.config.known_programs.iter().any(|known| known == name))
            .map(str::to_owned)
    }

    /// Names of the agents registered in the configuration.
    pub fn registered_names(&self) -> Vec<String> {
        self.config.registered.iter().map(|r| r.name.clone()).collect()
    }

    /// Records a detection signal for `process`, with no policy entry.
    #[cfg(test)]
    pub fn detect(&mut self, process: &Process, detection: Detection, time_ns: u64) -> (ProcKey, Changes) {
        self.detect_as(process, detection, time_ns, None)
    }

    /// Records a detection signal for `process`. The process becomes an
    /// agent unless it already belongs to one, in which case the signal is
    /// activity of that agent. A new agent is registered when it matched
    /// `policy_entry` in the policy, or else an entry of
    /// `agents.registered`.
    pub fn detect_as(&mut self, process: &Process, detection: Detection, time_ns: u64, policy_entry: Option<String>) -> (ProcKey, Changes) {
        if let Some(root) = self.member_of.get(&process.key).copied() {
            let changes = self.activity(root, time_ns, |session| session.connections += 1);
            if let Some(agent) = self.by_root.get_mut(&root) {
                agent.endpoints.insert(detection.value.clone());
                if !agent.detected_by.iter().any(|d| d.signal == detection.signal && d.value == detection.value) {
                    agent.detected_by.push(detection);
                    agent.section.take();
                }
            }
            return (root, changes);
        }
        let policy_entry: Option<Arc<str>> = policy_entry.map(Arc::from);
        let registered = match &policy_entry {
            Some(entry) => Some(entry.to_string()),
            None => self.config.registered.iter().find(|r| r.matches(process)).map(|r| r.name.clone()),
        };
        let session = self.new_session(time_ns);
        let mut endpoints = BTreeSet::new();
        if detection.signal != "known_program" {
            endpoints.insert(detection.value.clone());
        }
        let agent = Agent {
            key: process.key,
            pid: process.key.pid,
            agent_id: process.exec_id.clone(),
            registered: registered.is_some(),
            name: registered,
            policy_entry,
            detected_by: vec![detection],
            session,
            endpoints,
            shadow_reported_for: None,
            section: OnceLock::new(),
        };
        let shadow = !agent.registered;
        let session_number = agent.session.number;
        self.by_root.insert(process.key, agent);
        self.member_of.insert(process.key, process.key);
        if shadow {
            if let Some(agent) = self.by_root.get_mut(&process.key) {
                agent.shadow_reported_for = Some(session_number);
            }
        }
        (process.key, Changes { detected: true, session_ended: None, shadow_finding: shadow })
    }

    /// Counts activity of the agent rooted at `root`, starting a new
    /// session first when the current one has been idle too long.
    pub fn activity(&mut self, root: ProcKey, time_ns: u64, count: impl FnOnce(&mut Session)) -> Changes {
        let idle_ns = self.config.session_idle_secs.saturating_mul(1_000_000_000);
        let (expired, closed) = self.by_root.get(&root).map_or((false, false), |agent| {
            (time_ns.saturating_sub(agent.session.last_activity_ns) > idle_ns, agent.session.closed)
        });
        let mut changes = Changes::default();
        if expired || closed {
            let session = self.new_session(time_ns);
            if let Some(agent) = self.by_root.get_mut(&root) {
                let ended = std::mem::replace(&mut agent.session, session);
                agent.section.take();
                // A closed session was reported when it was closed.
                changes.session_ended = (!closed).then_some(ended);
                if !agent.registered && agent.shadow_reported_for != Some(agent.session.number) {
                    agent.shadow_reported_for = Some(agent.session.number);
                    changes.shadow_finding = true;
                }
            }
        }
        if let Some(agent) = self.by_root.get_mut(&root) {
            agent.session.last_activity_ns = agent.session.last_activity_ns.max(time_ns);
            count(&mut agent.session);
        }
        changes
    }

    /// Closes sessions idle longer than `agents.session_idle_secs` and
    /// returns them, so their end is recorded without waiting for new
    /// activity.
    pub fn end_idle_sessions(&mut self, now_ns: u64) -> Vec<(ProcKey, Session)> {
        let idle_ns = self.config.session_idle_secs.saturating_mul(1_000_000_000);
        let mut ended = Vec::new();
        for agent in self.by_root.values_mut() {
            if !agent.session.closed && now_ns.saturating_sub(agent.session.last_activity_ns) > idle_ns {
                agent.session.closed = true;
                ended.push((agent.key, agent.session.clone()));
            }
        }
        ended
    }

    /// Makes a new child a member of its parent's agent tree.
    pub fn on_fork(&mut self, child: ProcKey, parent: ProcKey) {
        if let Some(root) = self.member_of.get(&parent).copied() {
            self.member_of.insert(child, root);
        }
    }

    /// Returns the root of the agent tree when `key`'s exec is a tool spawn:
    /// a member process other than the agent itself.
    pub fn tool_spawn_root(&self, key: &ProcKey) -> Option<ProcKey> {
        self.member_of.get(key).copied().filter(|root| root != key)
    }

    /// Forgets a process that left the process table. An agent's record
    /// stays while any member lives, so its tools still find it.
    pub fn forget(&mut self, key: &ProcKey) {
        self.member_of.remove(key);
        if self.by_root.contains_key(key) && !self.member_of.values().any(|root| root == key) {
            self.by_root.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{exe::ExeInfo, Origin};

    fn process(pid: u32, exe: &str) -> Process {
        Process {
            key: ProcKey { pid, start_ns: 1 },
            ppid: 1,
            parent: None,
            exec_id: format!("b:{pid}:1:1").into(),
            parent_exec_id: None,
            origin: Origin::Exec,
            ns_pid: None,
            pid_ns: None,
            uid: Some(1000),
            gid: Some(1000),
            comm: String::new(),
            exe: ExeInfo { path: Some(exe.to_owned()), ..Default::default() },
            exe_name: None,
            exec_path: None,
            argv: Some(vec![exe.to_owned()].into()),
            argv_truncated: false,
            argv_bytes: None,
            cgroup_id: None,
            cgroup_path: Some("/user.slice/user-1000.slice".into()),
            fileless: false,
            exited_ns: None,
            unknown: Vec::new(),
            redactions: Vec::new(),
        }
    }

    fn sni(host: &str) -> Detection {
        Detection { signal: "sni", value: host.to_owned(), provider: Some("openai".into()) }
    }

    #[test]
    fn unregistered_agent_gets_one_finding_per_session() {
        let mut agents = Agents::new(AgentsConfig { session_idle_secs: 10, ..Default::default() }, "b".into());
        let python = process(10, "/usr/bin/python3");
        let (root, changes) = agents.detect(&python, sni("api.openai.com"), 0);
        assert!(changes.detected);
        assert!(changes.shadow_finding);
        let (_, again) = agents.detect(&python, sni("api.openai.com"), 1_000_000_000);
        assert!(!again.detected, "a known agent is not detected twice");
        assert!(!again.shadow_finding, "one finding per session");
        let later = agents.activity(root, 30_000_000_000, |s| s.llm_requests += 1);
        assert!(later.session_ended.is_some());
        assert!(later.shadow_finding, "a new session raises a new finding");
    }

    #[test]
    fn registered_agent_has_no_finding() {
        let config = AgentsConfig {
            registered: vec![RegisteredAgent { name: "support-bot".into(), exe: Some("/usr/bin/python3".into()), uid: Some(1000), ..Default::default() }],
            ..Default::default()
        };
        let mut agents = Agents::new(config, "b".into());
        let (_, changes) = agents.detect(&process(10, "/usr/bin/python3"), sni("api.openai.com"), 0);
        assert!(changes.detected);
        assert!(!changes.shadow_finding);
        let agent = agents.agent_of(&ProcKey { pid: 10, start_ns: 1 }).unwrap();
        assert_eq!(agent.name.as_deref(), Some("support-bot"));
    }

    #[test]
    fn empty_selector_registers_nothing() {
        let config = AgentsConfig { registered: vec![RegisteredAgent { name: "any".into(), ..Default::default() }], ..Default::default() };
        let mut agents = Agents::new(config, "b".into());
        let (_, changes) = agents.detect(&process(10, "/x"), sni("api.openai.com"), 0);
        assert!(changes.shadow_finding);
    }

    #[test]
    fn children_are_members_and_tool_spawns() {
        let mut agents = Agents::new(AgentsConfig::default(), "b".into());
        let parent = process(10, "/usr/bin/node");
        let (root, _) = agents.detect(&parent, sni("api.anthropic.com"), 0);
        let child = ProcKey { pid: 11, start_ns: 2 };
        let grandchild = ProcKey { pid: 12, start_ns: 1 };
        agents.on_fork(child, root);
        agents.on_fork(grandchild, child);
        assert_eq!(agents.tool_spawn_root(&grandchild), Some(root));
        assert_eq!(agents.tool_spawn_root(&root), None);
        let (member_root, changes) = agents.detect(&process(12, "/usr/bin/curl"), sni("api.openai.com"), 5);
        assert_eq!(member_root, root, "a member's LLM connection is its agent's activity");
        assert!(!changes.detected);
    }

    #[test]
    fn agent_section_follows_changes() {
        let mut agents = Agents::new(AgentsConfig { session_idle_secs: 10, ..Default::default() }, "b".into());
        let python = process(10, "/usr/bin/python3");
        let (root, _) = agents.detect(&python, sni("api.openai.com"), 0);
        let section = |agents: &Agents| {
            let view = agents.agent_of(&root).unwrap().view();
            let fresh = serde_json::to_string(&AgentView { json: None, ..view.clone() }).unwrap();
            let reused = view.json.expect("the section is kept").get().to_owned();
            assert_eq!(reused, fresh);
            serde_json::from_str::<serde_json::Value>(&reused).unwrap()
        };
        assert_eq!(section(&agents)["detected_by"].as_array().unwrap().len(), 1);
        agents.detect(&python, sni("api.anthropic.com"), 1);
        assert_eq!(section(&agents)["detected_by"][1]["value"], "api.anthropic.com");
        let first_session = section(&agents)["session_id"].clone();
        agents.activity(root, 30_000_000_000, |s| s.llm_requests += 1);
        assert_ne!(section(&agents)["session_id"], first_session);
    }

    #[test]
    fn known_program_by_exe_or_argv0() {
        let agents = Agents::new(AgentsConfig::default(), "b".into());
        assert_eq!(agents.known_program(&process(1, "/usr/local/bin/claude")).as_deref(), Some("claude"));
        assert_eq!(agents.known_program(&process(1, "/usr/bin/ls")), None);
    }
}
