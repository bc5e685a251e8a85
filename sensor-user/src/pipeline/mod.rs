//! Per-event work of the daemon: each decoded kernel event passes through
//! the process table, the network and LLM stages and the agents stage, and
//! leaves as one or more records.
//!
//! Handlers live by concern: `network.rs` (connects, first bytes, DNS),
//! `activity.rs` (agents, tool spawns, files, LLM calls). This file contains
//! the state, the dispatch and the record emitters.

mod activity;
mod network;
mod policy;

use anyhow::Context as _;
use aya::maps::{HashMap as BpfHashMap, MapData, RingBuf};
use sensor_common::{TrackedProcess, EVENT_KIND_COUNT, EXIT_FLAG_LEADER_ONLY, FORK_FLAG_THREAD, FORK_FLAG_TRACKED};
use serde_json::json;

use crate::{
    agents::{Agent, Agents},
    evidence::{view_cache::ViewCache, Clock, ExitView, ProcessView, Record, Stamper},
    idmap::IdMap,
    llm::{LlmStreams, StreamKey},
    net::{catalog::Catalog, dns::DnsCache, PendingConnect, PendingConnects},
    probes::{
        self,
        decode::{decode, KernelEvent},
        uprobes::UprobeManager,
        Probes,
    },
    process::{ProcKey, ProcessTable},
    sinks::Sinks,
};

pub use network::Connection;
pub use policy::complete_reconcile_finding;

/// A pending connect with no handshake outcome after this long is reported
/// with an unknown outcome; TCP gives up on a SYN well before (about 127 s
/// with the default `tcp_syn_retries` of 6, counted from the first SYN).
const PENDING_CONNECT_TIMEOUT_NS: u64 = 180 * 1_000_000_000;

pub struct Pipeline {
    pub table: ProcessTable,
    pub pending: PendingConnects,
    pub stamper: Stamper,
    pub sinks: Sinks,
    /// Workload identity (stage 3); `None` when `identity.enabled` is off.
    pub identity: Option<crate::identity::Identity>,
    pub agents: Agents,
    pub catalog: Catalog,
    pub dns: DnsCache,
    pub llm: LlmStreams,
    pub uprobes: UprobeManager,
    /// The kernel's map of agent-tree processes, when it could be opened.
    pub tracked: Option<BpfHashMap<MapData, u32, TrackedProcess>>,
    /// The kernel's map of TLS streams whose reads it passes over.
    pub tls_skip: Option<BpfHashMap<MapData, [u64; 2], u32>>,
    /// The last skip written there, so each response is requested once.
    pub last_tls_skip: Option<(StreamKey, u32)>,
    /// An agent was marked in the kernel since the file hooks were last
    /// checked, so they must be attached.
    pub tracking_started: bool,
    /// Connections by process and connect id, for the records that follow
    /// a connect (ClientHello, plaintext).
    pub connections: IdMap<(u32, u64), Connection>,
    /// Latest connect id per process and socket fd.
    pub connection_fds: IdMap<(u32, i32), u64>,
    /// Processes whose memory map was checked for TLS libraries since their
    /// last exec.
    pub tls_scanned: IdMap<ProcKey, ()>,
    pub received: [u64; EVENT_KIND_COUNT as usize],
    pub decode_errors: u64,
    /// Read-only opens left out by `agents.ignore_read_prefixes`.
    pub ignored_file_reads: u64,
    /// TLS plaintext bytes the kernel did not copy because the ring buffer
    /// was more than half full (`TLS_FLAG_YIELDED`).
    pub tls_yielded_bytes: u64,
    pub reported_losses: [u64; EVENT_KIND_COUNT as usize],
    /// Reconciliation with agents' telemetry (stage 8); `None` when
    /// `reconcile.enabled` is off.
    pub reconcile: Option<crate::reconcile::Live>,
    /// The policy in force (stage 7).
    pub policy: crate::policy::engine::PolicyEngine,
    /// Forks inside agent trees whose `process.fork` is held back, with
    /// their times: a child that execs soon after is recorded once, by its
    /// `tool.spawn`.
    pub deferred_forks: Vec<(ProcKey, u64)>,
    /// Serialised process sections, reused while they stay true.
    pub views: ViewCache,
}

/// Forks held back at most; beyond it a fork is written at once.
const DEFERRED_FORKS_MAX: usize = 256;

/// How long a fork is held back for its exec, in nanoseconds. By estimate
/// a tool's exec follows its fork within a few milliseconds, and a fork
/// read at the end of a batch may see its exec only in the next one.
const FORK_HOLD_NS: u64 = 50_000_000;

impl Pipeline {
    /// Handles up to `limit` records; returns how many were read.
    pub fn drain(&mut self, ring: &mut RingBuf<MapData>, probes: &mut Probes, limit: usize) -> anyhow::Result<usize> {
        let mut count = 0;
        while count < limit {
            let Some(item) = ring.next() else { break };
            count += 1;
            match decode(&item) {
                Ok(event) => self.handle(event, probes)?,
                Err(error) => {
                    self.decode_errors += 1;
                    log::debug!("undecodable ring buffer record: {error}");
                }
            }
        }
        // A read cut short by `limit` leaves events unread, the held forks'
        // execs perhaps among them: they wait for the next read.
        if !self.deferred_forks.is_empty() && count < limit {
            self.write_deferred_forks(Clock::boot_now_ns().saturating_sub(FORK_HOLD_NS))?;
        }
        Ok(count)
    }

    /// Writes the held-back `process.fork` records of forks before
    /// `before_ns` (boot time); `u64::MAX` writes them all.
    pub fn write_deferred_forks(&mut self, before_ns: u64) -> anyhow::Result<()> {
        let mut index = 0;
        while index < self.deferred_forks.len() {
            let (key, time_ns) = self.deferred_forks[index];
            if time_ns < before_ns {
                self.deferred_forks.remove(index);
                // Its exit would have written it first; a missing entry
                // is a bug to log, not a reason to stop recording.
                if self.table.get(&key).is_none() {
                    log::warn!("a held-back fork of pid {} left the process table unrecorded", key.pid);
                    continue;
                }
                self.emit(key, "process.fork", time_ns, None, |_| {})?;
            } else {
                index += 1;
            }
        }
        Ok(())
    }

    /// Stops holding back the fork of `key`, if it is held, and writes its
    /// record when `write` is set.
    fn release_fork(&mut self, key: ProcKey, write: bool) -> anyhow::Result<()> {
        let Some(index) = self.deferred_forks.iter().position(|(deferred, _)| *deferred == key) else { return Ok(()) };
        let (_, time_ns) = self.deferred_forks.remove(index);
        if write {
            self.emit(key, "process.fork", time_ns, None, |_| {})?;
        }
        Ok(())
    }

    /// Writes the held-back forks of the children of `parent`.
    fn release_children_of(&mut self, parent: ProcKey) -> anyhow::Result<()> {
        let children: Vec<ProcKey> = self
            .deferred_forks
            .iter()
            .map(|(child, _)| *child)
            .filter(|child| self.table.get(child).is_some_and(|process| process.parent == Some(parent)))
            .collect();
        for child in children {
            self.release_fork(child, true)?;
        }
        Ok(())
    }

    fn handle(&mut self, event: KernelEvent<'_>, probes: &mut Probes) -> anyhow::Result<()> {
        let header = *event.header();
        if let Some(slot) = self.received.get_mut(header.kind as usize) {
            *slot += 1;
        }
        let key = self.table.key(header.pid, header.start_time_ns);
        // A held-back fork is written before any other record about its
        // process, unless that record is the exec that replaces it.
        if !self.deferred_forks.is_empty() {
            self.release_fork(key, !matches!(event, KernelEvent::Exec(_)))?;
        }
        match event {
            KernelEvent::Exec(exec) => {
                // A held fork shows its parent as the table has it when the
                // record is written, so the children's forks go before the
                // exec that replaces the parent.
                if !self.deferred_forks.is_empty() {
                    self.release_children_of(key)?;
                }
                let key = self.table.on_exec(&exec);
                self.tls_scanned.remove(&key);
                if self.uprobes.note_executable(key.pid, exec.exe_dev, exec.exe_inode) {
                    self.tls_scanned.insert(key, ());
                }
                // Inside an agent's tree the exec is recorded once, as the
                // tool spawn it is: a `process.exec` beside it would repeat
                // every byte of it.
                let tool_root = self.agents.tool_spawn_root(&key);
                if tool_root.is_none() {
                    self.emit(key, "process.exec", header.time_ns, None, |_| {})?;
                }
                self.after_exec(key, header.time_ns, tool_root, exec.trace_context, probes)?;
            }
            // A new thread (`probes.report_threads`) changes no process: its
            // record names the process and the new thread.
            KernelEvent::Fork(fork) if header.flags & FORK_FLAG_THREAD != 0 => {
                if !self.deferred_forks.is_empty() {
                    self.release_fork(key, true)?;
                }
                self.emit(key, "process.thread", header.time_ns, Some(fork.child_tid), |_| {})?;
            }
            KernelEvent::Fork(fork) => {
                let parent = self.table.key(fork.parent_pid, fork.parent_start_time_ns);
                // The child's records name the parent's exec id from before
                // any exec, which only the parent's fork record states.
                if !self.deferred_forks.is_empty() {
                    self.release_fork(parent, true)?;
                }
                let pid_ns = (fork.ns_pid != 0).then_some((fork.ns_pid, fork.pid_ns_inum));
                self.table.on_fork(key, parent, header.start_time_ns, fork.cgroup_id, pid_ns);
                self.agents.on_fork(key, parent);
                if header.flags & FORK_FLAG_TRACKED == 0 {
                    self.track_new_member(key);
                }
                // An agent's tool is a fork and an exec a moment apart. The
                // `tool.spawn` states all a fork record would (pid, parent,
                // start time), so the fork waits to see if the exec follows.
                if self.agents.tool_spawn_root(&key).is_some() && self.deferred_forks.len() < DEFERRED_FORKS_MAX {
                    self.deferred_forks.push((key, header.time_ns));
                } else {
                    self.emit(key, "process.fork", header.time_ns, None, |_| {})?;
                }
            }
            KernelEvent::Exit(exit) => {
                self.table.on_exit(key, header.time_ns);
                let mut view = ExitView::from_status(exit.exit_code);
                if header.flags & EXIT_FLAG_LEADER_ONLY != 0 {
                    view.core_dumped = false;
                }
                self.emit(key, "process.exit", header.time_ns, Some(header.tid), |record| record.exit = Some(view))?;
                // A client may stop reading at the provider's end-of-stream
                // event and exit without the final chunk; what was parsed
                // still makes a record, marked as cut where it was.
                let unfinished = self.llm.close_process(header.pid);
                self.on_llm_events(key, unfinished, None)?;
                self.uprobes.forget(header.pid);
                self.views.forget(&key);
            }
            KernelEvent::Connect(connect) => self.on_connect(key, &connect, probes)?,
            KernelEvent::ConnectResult(result) => self.on_connect_result(key, &result)?,
            KernelEvent::Payload(payload) => self.on_payload(key, &payload)?,
            KernelEvent::File(file) => self.on_file(key, &file)?,
            KernelEvent::Tls(tls) => self.on_tls(key, &tls)?,
        }
        Ok(())
    }

    /// Writes one record about process `key`: its process view, its agent
    /// when it belongs to one, and whatever `fill` adds.
    pub fn emit(
        &mut self,
        key: ProcKey,
        kind: &'static str,
        time_ns: u64,
        tid: Option<u32>,
        fill: impl FnOnce(&mut Record<'_>),
    ) -> anyhow::Result<()> {
        self.table.lookup(key);
        let Pipeline { table, stamper, sinks, agents, identity, reconcile, policy, views, .. } = self;
        let process = table.get(&key).context("process vanished from the table")?;
        let clock = stamper.clock;
        let mut view = ProcessView::new(table, process, tid, &clock, table.start_ns(key));
        views.attach(table, process, &mut view);
        let agent = agents.agent_of(&key);
        let mut record = Record::new(stamper.head(kind, time_ns));
        record.workload = identity
            .as_mut()
            .map(|identity| identity.resolve(process.cgroup_id, process.cgroup_path.as_deref(), process.uid, time_ns));
        record.process = Some(view);
        record.agent = agent.map(Agent::view);
        fill(&mut record);
        let outcome = policy::evaluate(policy, kind, process, agent, &record);
        if let Some(outcome) = &outcome {
            record.sections.insert("policy".into(), outcome.to_json());
        }
        sinks.write_record(&record)?;
        if let Some(reconcile) = reconcile {
            reconcile.observe(&record);
        }
        let Some(outcome) = outcome.filter(|o| !o.alerts().is_empty()) else { return Ok(()) };
        let cause = policy::Cause { record_id: record.head.id.clone(), seq: record.head.seq, kind };
        let workload = record.workload.take();
        drop(record);
        let (finding_kind, sections) = policy::finding(&outcome, &cause);
        let mut finding = Record::new(stamper.head(finding_kind, time_ns));
        let mut view = ProcessView::new(table, process, tid, &clock, table.start_ns(key));
        views.attach(table, process, &mut view);
        finding.process = Some(view);
        finding.workload = workload;
        finding.agent = agent.map(Agent::view);
        finding.sections = sections;
        sinks.write_record(&finding)?;
        Ok(())
    }

    /// Writes a record about the sensor itself.
    pub fn emit_sensor(&mut self, kind: &'static str, sensor: serde_json::Value) -> anyhow::Result<()> {
        let head = self.stamper.head(kind, Clock::boot_now_ns());
        self.sinks.write_record(&Record { sensor: Some(sensor), ..Record::new(head) })?;
        Ok(())
    }

    /// Turns growth in the kernel's loss counters into `sensor.loss` records.
    pub fn report_losses(&mut self, probes: &Probes) -> anyhow::Result<()> {
        let totals = probes.losses();
        for (index, &total) in totals.iter().enumerate() {
            let lost = total.saturating_sub(self.reported_losses[index]);
            if lost == 0 {
                continue;
            }
            self.reported_losses[index] = total;
            let kind = probes::loss_kind_name(index);
            log::error!("the kernel dropped {lost} {kind} events: the ring buffer was full");
            self.emit_sensor(
                "sensor.loss",
                json!({
                    "stage": "kernel",
                    "event_kind": kind,
                    "lost": lost,
                    "lost_total": total,
                    "reason": "ring buffer full",
                }),
            )?;
        }
        Ok(())
    }

    pub fn collect_garbage(&mut self) -> anyhow::Result<()> {
        let now = Clock::boot_now_ns();
        if let Some(identity) = &mut self.identity {
            identity.collect_garbage(now);
        }
        for key in self.table.collect_garbage(now) {
            self.views.forget(&key);
            self.agents.forget(&key);
            self.policy.forget(&key);
            self.tls_scanned.remove(&key);
        }
        let live = |pid: &u32, table: &ProcessTable| table.latest(*pid).is_some();
        let table = &self.table;
        self.connections.retain(|(pid, _), _| live(pid, table));
        self.connection_fds.retain(|(pid, _), _| live(pid, table));
        let expired = self.pending.expire(now.saturating_sub(PENDING_CONNECT_TIMEOUT_NS));
        self.emit_unknown_outcomes(expired)?;
        let ended = self.agents.end_idle_sessions(now);
        for (root, session) in ended {
            self.emit_session_end(root, session, now)?;
        }
        Ok(())
    }

    fn emit_unknown_outcomes(&mut self, expired: Vec<PendingConnect>) -> anyhow::Result<()> {
        for pending in expired {
            let key = self.table.key(pending.pid, pending.start_time_ns);
            let network = crate::evidence::NetworkView {
                protocol: pending.protocol,
                destination: pending.destination,
                result: crate::net::result_name(pending.syscall_result),
                errno: Some(crate::net::user_errno(pending.syscall_result)),
                outcome: Some("unknown"),
                connect_id: None,
                fd: None,
                seen_at: None,
            };
            self.emit(key, "net.connect_result", Clock::boot_now_ns(), None, |record| record.network = Some(network))?;
        }
        Ok(())
    }
}
