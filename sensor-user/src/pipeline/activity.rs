//! Agent activity: detection, tool spawns, file operations and LLM calls.

use sensor_common::{TrackedProcess, FILE_FLAG_PATH_TRUNCATED, FILE_OP_OPEN, FILE_OP_RENAME, FILE_OP_UNLINK, TLS_FLAG_SKIPPED, TLS_FLAG_YIELDED, TLS_READ};
use serde_json::json;

use super::Pipeline;
use crate::{
    agents::{Changes, Detection, Session},
    llm::{Direction, LlmEvent, StreamKey},
    probes::{
        decode::{File, Tls},
        Probes,
    },
    process::ProcKey,
};

const AT_FDCWD: i32 = -100;

/// The smallest rest of an ignored response worth a map update to skip:
/// about two full TLS records.
const SKIP_MIN_BYTES: u64 = 32 * 1024;

impl Pipeline {
    /// Feeds a detection signal to the agents stage and records what changed.
    pub(super) fn detect_agent(&mut self, key: ProcKey, detection: Detection, time_ns: u64) -> anyhow::Result<()> {
        self.table.lookup(key);
        let evidence = json!(detection);
        let entry = self.policy_entry_of(key, time_ns);
        let Some(process) = self.table.get(&key) else { return Ok(()) };
        let (root, changes) = self.agents.detect_as(process, detection, time_ns, entry);
        self.record_changes(root, changes, time_ns, Some(evidence))
    }

    fn record_changes(&mut self, root: ProcKey, changes: Changes, time_ns: u64, evidence: Option<serde_json::Value>) -> anyhow::Result<()> {
        if let Some(session) = changes.session_ended {
            self.emit_session_end(root, session, time_ns)?;
        }
        let mut detected = None;
        if changes.detected {
            self.track_in_kernel(root);
            self.emit(root, "agent.detected", time_ns, None, |record| {
                if let Some(evidence) = &evidence {
                    record.sections.insert("detection".into(), evidence.clone());
                }
                detected = Some(super::policy::Cause { record_id: record.head.id.clone(), seq: record.head.seq, kind: "agent.detected" });
            })?;
        }
        if changes.shadow_finding {
            let identity = self.table.get(&root).map(|p| {
                json!({
                    "exe": p.exe.path,
                    "exe_sha256": p.exe.sha256,
                    "uid": p.uid,
                    "cgroup": p.cgroup_path,
                })
            });
            let lineage = self.table.ancestry(root);
            let detected_by = self.agents.agent_of(&root).map(|a| json!(a.detected_by)).unwrap_or_default();
            let endpoints = self.agents.agent_of(&root).map(|a| json!(a.endpoints)).unwrap_or_default();
            let finding = json!({
                "severity": "high",
                "title": "unregistered AI agent",
                "description": "A process talks to an LLM endpoint but matches no entry of the registered-agent inventory (the policy's agents and agents.registered).",
                "evidence": {
                    "detected_by": detected_by,
                    "endpoints": endpoints,
                    "identity": identity,
                    "lineage": lineage,
                },
            });
            let sections = self.shadow_sections(root, time_ns, detected.as_ref(), finding);
            self.emit(root, "finding.shadow_agent", time_ns, None, |record| record.sections.extend(sections))?;
        }
        Ok(())
    }

    /// Tells the kernel to follow the agent's tree (file operations of its
    /// descendants). Failure loses only that enrichment, so it is logged.
    fn track_in_kernel(&mut self, root: ProcKey) {
        let Some(session) = self.agents.agent_of(&root).map(|a| a.session.number) else { return };
        let value = TrackedProcess { session_id: session, root_pid: root.pid, _pad: 0 };
        self.insert_tracked(root.pid, value);
    }

    /// Attaches the file-operation hooks once an agent is followed. They
    /// are syscall tracepoints, which slow every syscall on the host, so
    /// they run only while there is an agent tree to watch.
    ///
    /// NOTE: file operations between the agent's marking and the attach
    /// (the end of the current batch of records) are not recorded.
    pub fn sync_file_hooks(&mut self, probes: &mut Probes) -> anyhow::Result<()> {
        if !std::mem::take(&mut self.tracking_started) || probes.file_hooks_attached() {
            return Ok(());
        }
        match probes.attach_file_hooks() {
            Ok(hooks) if hooks.is_empty() => Ok(()),
            Ok(hooks) => self.emit_sensor("sensor.file_hooks", json!({ "attached": hooks, "reason": "an agent is followed" })),
            Err(reason) => {
                log::warn!("file hooks for the agents followed are not running: {reason}");
                self.emit_sensor("sensor.degraded", json!({ "hook": "sys_enter_file", "reason": reason }))
            }
        }
    }

    /// Detaches the file-operation hooks when no process of any agent tree
    /// is left in the kernel's map.
    pub fn release_file_hooks(&mut self, probes: &mut Probes) -> anyhow::Result<()> {
        if !probes.file_hooks_attached() || probes.file_hooks_always() || self.tracking_started {
            return Ok(());
        }
        self.prune_tracked();
        let followed = self.tracked.as_ref().is_some_and(|map| map.keys().next().is_some());
        if followed {
            return Ok(());
        }
        probes.detach_file_hooks();
        self.emit_sensor("sensor.file_hooks", json!({ "attached": [], "reason": "no agent is followed" }))
    }

    /// Marks a new member of an agent tree in the kernel when the kernel's
    /// own inheritance at fork missed it: the fork happened before the
    /// daemon marked the agent.
    ///
    /// NOTE: file operations between such a fork and this call are not
    /// recorded; the window is the daemon's reaction time.
    pub(super) fn track_new_member(&mut self, key: ProcKey) {
        let Some(agent) = self.agents.agent_of(&key) else { return };
        // An exited child's pid may already name another process.
        if self.table.get(&key).is_none_or(|p| p.exited_ns.is_some()) {
            return;
        }
        let value = TrackedProcess { session_id: agent.session.number, root_pid: agent.key.pid, _pad: 0 };
        if self.tracked.as_ref().is_some_and(|tracked| tracked.get(&key.pid, 0).is_err()) {
            self.insert_tracked(key.pid, value);
        }
    }

    /// Adds `pid` to the kernel's agent map. The kernel removes a pid only
    /// when its process exits, and the daemon reads records late, so a pid
    /// added after that exit would stay and keep the file hooks attached.
    /// Such a pid is removed again at once.
    fn insert_tracked(&mut self, pid: u32, value: TrackedProcess) {
        let Some(tracked) = &mut self.tracked else { return };
        if let Err(error) = tracked.insert(pid, value, 0) {
            log::warn!("cannot add pid {pid} to the kernel's agent map: {error}");
            return;
        }
        if self.table.is_running(pid) {
            self.tracking_started = true;
        } else {
            let _ = tracked.remove(&pid);
        }
    }

    /// Removes the entries of processes that are gone from the kernel's
    /// agent map, whatever left them there.
    fn prune_tracked(&mut self) {
        let Some(tracked) = &mut self.tracked else { return };
        let table = &self.table;
        let exited: Vec<u32> = tracked.keys().filter_map(Result::ok).filter(|pid| !table.is_running(*pid)).collect();
        for pid in exited {
            log::debug!("removing pid {pid}, which has exited, from the kernel's agent map");
            let _ = tracked.remove(&pid);
        }
    }

    pub(super) fn emit_session_end(&mut self, root: ProcKey, session: Session, time_ns: u64) -> anyhow::Result<()> {
        let duration_ms = session.last_activity_ns.saturating_sub(session.started_ns) / 1_000_000;
        self.emit(root, "agent.session_end", time_ns, None, |record| {
            let mut view = json!(session);
            view["active_ms"] = json!(duration_ms);
            record.sections.insert("session".into(), view);
        })
    }

    /// Does the agent work after an exec: known agent programs, tool spawns,
    /// and executables that carry their own TLS stack. `tool_root` names the
    /// agent whose tree the process is in, and `trace_context` is the exec
    /// record's `TRACEPARENT=...` entry.
    pub(super) fn after_exec(
        &mut self,
        key: ProcKey,
        time_ns: u64,
        tool_root: Option<ProcKey>,
        trace_context: &[u8],
        probes: &mut Probes,
    ) -> anyhow::Result<()> {
        if let Some(root) = tool_root {
            let changes = self.agents.activity(root, time_ns, |session| session.tool_spawns += 1);
            self.record_changes(root, changes, time_ns, None)?;
            let trace_context = match self.reconcile {
                Some(_) => crate::reconcile::trace_context(trace_context),
                None => None,
            };
            self.emit(key, "tool.spawn", time_ns, None, |record| {
                if let Some(trace_context) = trace_context {
                    record.sections.insert("trace_context".into(), trace_context);
                }
            })?;
        } else if let Some(program) = self.table.get(&key).and_then(|p| self.agents.known_program(p)) {
            self.detect_agent(key, Detection { signal: "known_program", value: program, provider: None }, time_ns)?;
        }
        // An executable that links a TLS stack statically (Node.js) is
        // checked at exec, before it can make its first request.
        let statically_linked = self
            .table
            .get(&key)
            .and_then(|p| p.exe.path.as_deref())
            .is_some_and(crate::probes::uprobes::carries_own_tls);
        if statically_linked && !self.tls_scanned.contains_key(&key) {
            self.tls_scanned.insert(key, ());
            self.scan_tls_libraries(key, probes)?;
        }
        Ok(())
    }

    pub(super) fn on_file(&mut self, key: ProcKey, file: &File<'_>) -> anyhow::Result<()> {
        let kind = match file.op {
            FILE_OP_OPEN => "file.open",
            FILE_OP_UNLINK => "file.unlink",
            FILE_OP_RENAME => "file.rename",
            other => {
                log::debug!("file record with unknown operation {other}");
                return Ok(());
            }
        };
        if let Some(root) = self.agents.agent_of(&key).map(|a| a.key) {
            self.agents.activity(root, file.header.time_ns, |_| {});
        }
        let path = self.resolve_path(file.header.pid, file.dirfd, file.path);
        let read_only = file.op == FILE_OP_OPEN && file.flags & 3 == 0 && file.flags & libc::O_CREAT as u32 == 0;
        if read_only && self.agents.ignores_read(&path.0) {
            self.ignored_file_reads += 1;
            return Ok(());
        }
        let path2 = (!file.path2.is_empty()).then(|| self.resolve_path(file.header.pid, file.dirfd, file.path2));
        let mut view = json!({
            "path": path.0,
            "result": if file.result >= 0 { "ok" } else { crate::net::errno_name(-file.result) },
        });
        if !path.1 {
            view["path_relative_to"] = json!(if file.dirfd == AT_FDCWD { "cwd (unreadable)" } else { "a directory fd" });
        }
        if let Some((new_path, _)) = path2 {
            view["new_path"] = json!(new_path);
        }
        if file.op == FILE_OP_OPEN {
            view["access"] = json!(open_access(file.flags));
            view["flags"] = json!(open_flag_names(file.flags));
        }
        if file.header.flags & FILE_FLAG_PATH_TRUNCATED != 0 {
            view["path_truncated"] = json!(true);
        }
        if file.result < 0 {
            view["errno"] = json!(-file.result);
        }
        self.emit(key, kind, file.header.time_ns, Some(file.header.tid), |record| {
            record.sections.insert("file".into(), view);
        })
    }

    /// Makes a path absolute where it can: relative paths against the
    /// process's current directory, read now.
    ///
    /// NOTE: the directory is read when the record is built, so a process
    /// that changed directory in between is resolved against the new one.
    fn resolve_path(&self, pid: u32, dirfd: i32, raw: &[u8]) -> (String, bool) {
        let text = String::from_utf8_lossy(raw).into_owned();
        if text.starts_with('/') {
            return (text, true);
        }
        let base = if dirfd == AT_FDCWD {
            std::fs::read_link(format!("/proc/{pid}/cwd"))
        } else {
            std::fs::read_link(format!("/proc/{pid}/fd/{dirfd}"))
        };
        match base {
            Ok(base) => (base.join(&text).display().to_string(), true),
            Err(_) => (text, false),
        }
    }

    pub(super) fn on_tls(&mut self, key: ProcKey, tls: &Tls<'_>) -> anyhow::Result<()> {
        let direction = if tls.direction == TLS_READ { Direction::Read } else { Direction::Write };
        let stream = StreamKey { pid: tls.header.pid, stream: tls.stream };
        let events = if tls.header.flags & TLS_FLAG_SKIPPED != 0 {
            self.llm.skip(stream, direction, tls.total as usize, tls.header.time_ns)
        } else {
            if tls.header.flags & TLS_FLAG_YIELDED != 0 {
                self.tls_yielded_bytes += u64::from(tls.total);
            }
            // A yielded call is a gap: the messages it cuts are marked
            // truncated.
            let missing = (tls.total as usize).saturating_sub(tls.data.len());
            let events = self.llm.feed(stream, direction, tls.data, missing, tls.header.time_ns);
            if direction == Direction::Read && tls.fd >= 0 {
                self.skip_ignored_response(stream, tls.writes);
            }
            events
        };
        let connection = self
            .connection_fds
            .get(&(tls.header.pid, tls.fd))
            .map(|connect_id| (tls.header.pid, *connect_id));
        self.on_llm_events(key, events, connection)
    }

    /// Asks the kernel to pass over the rest of the response `stream` is
    /// reading when nothing in it can be reported and much of it is left,
    /// as in a file download. `writes` is the stream's count of `SSL_write`
    /// calls that the read's event carried: the kernel's skip lasts until
    /// the count changes, so it ends at the next request.
    ///
    /// NOTE: streams this stage cannot read at all (HTTP/2, WebSocket,
    /// other protocols) are still copied in full. Skipping them for good
    /// would need a check that the `SSL *` still belongs to the same
    /// connection, because a closed connection's address is reused.
    fn skip_ignored_response(&mut self, stream: StreamKey, writes: u32) {
        let Some(map) = &mut self.tls_skip else { return };
        let worth_it = self.llm.ignored_response_left(stream).is_some_and(|left| left >= SKIP_MIN_BYTES);
        if !worth_it || self.last_tls_skip == Some((stream, writes)) {
            return;
        }
        self.last_tls_skip = Some((stream, writes));
        if let Err(error) = map.insert([u64::from(stream.pid), stream.stream], writes, 0) {
            log::warn!("failed to update TLS_SKIP for pid {}, so the kernel copies the rest of an ignored response: {error}", stream.pid);
        }
    }

    /// Records LLM calls, and makes their process an agent by API shape.
    pub(super) fn on_llm_events(&mut self, key: ProcKey, events: Vec<LlmEvent>, connection: Option<(u32, u64)>) -> anyhow::Result<()> {
        for event in events {
            let connection = connection.and_then(|c| self.connections.get(&c)).cloned();
            let (kind, time_ns, api, provider) = match &event {
                LlmEvent::Request(request) => ("llm.request", request.time_ns, request.api, request.provider),
                LlmEvent::Response(response) => ("llm.response", response.time_ns, response.api, None),
            };
            let provider = provider
                .map(str::to_owned)
                .or_else(|| connection.as_ref().and_then(|c| c.provider.clone()));
            if kind == "llm.request" && api != "unknown" {
                let value = match &event {
                    LlmEvent::Request(request) => format!("{} {}", request.method, request.path),
                    LlmEvent::Response(_) => String::new(),
                };
                self.detect_agent(key, Detection { signal: "api_shape", value, provider: provider.clone() }, time_ns)?;
                if let Some(root) = self.agents.agent_of(&key).map(|a| a.key) {
                    let changes = self.agents.activity(root, time_ns, |session| session.llm_requests += 1);
                    self.record_changes(root, changes, time_ns, None)?;
                }
            }
            self.emit(key, kind, time_ns, None, |record| {
                record.llm = Some(event);
                if let Some(provider) = &provider {
                    record.sections.insert("provider".into(), json!({ "provider": provider }));
                }
                if let Some(connection) = &connection {
                    let mut network = json!({ "destination": connection.destination, "protocol": connection.protocol });
                    if let Some(sni) = &connection.sni {
                        network["sni"] = json!(sni);
                    }
                    if let Some(name) = &connection.dns_name {
                        network["dns_name"] = json!(name);
                    }
                    record.sections.insert("connection".into(), network);
                }
            })?;
        }
        Ok(())
    }
}

fn open_access(flags: u32) -> &'static str {
    match flags & 3 {
        0 => "read",
        1 => "write",
        2 => "read_write",
        _ => "unknown",
    }
}

/// Names the open flags that matter to evidence: creation, truncation,
/// appending, and opening a directory or a path only.
fn open_flag_names(flags: u32) -> Vec<&'static str> {
    let table: [(u32, &str); 6] = [
        (libc::O_CREAT as u32, "create"),
        (libc::O_TRUNC as u32, "truncate"),
        (libc::O_APPEND as u32, "append"),
        (libc::O_EXCL as u32, "exclusive"),
        (libc::O_DIRECTORY as u32, "directory"),
        (libc::O_PATH as u32, "path"),
    ];
    table.iter().filter(|(bit, _)| flags & bit != 0).map(|(_, name)| *name).collect()
}
