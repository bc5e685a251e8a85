//! Pipeline stage 1: kernel programs in, typed kernel events out.
//!
//! Mounts tracefs and bpffs when they are absent, resolves struct offsets
//! from the kernel's BTF, loads the embedded programs and attaches each hook
//! on its own: a hook the kernel refuses is reported as degraded with the
//! kernel's reason and the others keep running. Only failures that leave no
//! useful sensor (no BTF, no permission to load BPF at all) are fatal.
//! Records are decoded in [`decode`]; the ring buffer is drained by the
//! daemon loop.

pub mod btf;
pub mod caps;
pub mod decode;
pub mod mounts;
pub mod offsets;
pub mod uprobes;

use std::path::PathBuf;

use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{ProgramError, RawTracePoint, TracePoint, UProbe},
    Ebpf, EbpfLoader,
};
use sensor_common::{EventKind, ProgramConfig, SyscallNumbers, EVENT_KIND_COUNT};

use crate::config::{FileHooks, ProbesConfig, SocketHooks};

/// The kernel programs, embedded at build time when available.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sensor-ebpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "this agent-sensor binary was built without its kernel programs; build it with `cargo xtask build`"
    )]
    ObjectMissing,
    #[error("cannot read kernel BTF from {path} (agent-sensor needs a kernel built with CONFIG_DEBUG_INFO_BTF=y)")]
    Btf {
        path: PathBuf,
        #[source]
        source: btf::BtfError,
    },
    #[error(transparent)]
    Offsets(#[from] offsets::TaskOffsetsMissing),
    #[error("the kernel refused to load the eBPF programs{hint}")]
    Load {
        hint: String,
        #[source]
        source: aya::EbpfError,
    },
    #[error("no hook could be loaded: {0}")]
    MissingCapability(String),
    #[error("eBPF map {name} is missing from the object or has the wrong type")]
    Map {
        name: &'static str,
        #[source]
        source: Option<aya::maps::MapError>,
    },
}

/// A hook or capability that is not running, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Degraded {
    pub hook: String,
    pub reason: String,
}

/// Start-up outcome: hooks attached, hooks degraded, file systems mounted.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StartReport {
    pub attached: Vec<String>,
    pub degraded: Vec<Degraded>,
    pub mounted: Vec<String>,
    /// Hooks loaded but attached only when needed, and when that is.
    pub deferred: Vec<Degraded>,
}

/// Loaded and attached kernel programs. Dropping this detaches them.
pub struct Probes {
    /// The loaded object: keeps programs and links alive, and lets the TLS
    /// stage attach uprobes later.
    pub ebpf: Ebpf,
    /// Taken by the daemon loop, which owns the reading side.
    pub events: Option<RingBuf<MapData>>,
    /// The map of agent-tree processes; taken by the pipeline.
    pub tracked: Option<aya::maps::HashMap<MapData, u32, sensor_common::TrackedProcess>>,
    /// The map of TLS streams whose reads the kernel passes over, keyed by
    /// `[tgid, SSL *]`. The pipeline takes it.
    pub tls_skip: Option<aya::maps::HashMap<MapData, [u64; 2], u32>>,
    losses: PerCpuArray<MapData, u64>,
    pub report: StartReport,
    /// `tracepoints` or `syscalls`: which hooks see connects and sends.
    pub socket_mode: &'static str,
    /// Links of the file-operation hooks while they are attached.
    file_links: Vec<(&'static str, LinkId)>,
    file_hooks_always: bool,
    disabled_hooks: Vec<String>,
}

enum Hook {
    TracePoint { category: &'static str, name: &'static str },
    Raw { name: &'static str },
}

const fn syscall(name: &'static str) -> Hook {
    Hook::TracePoint { category: "syscalls", name }
}

/// Program name in the object, and every place it attaches. A program
/// whose targets all fail is degraded; one that attaches to some targets
/// reports the others as degraded one by one.
type HookGroup = &'static [(&'static str, &'static [Hook])];

const PROCESS_HOOKS: HookGroup = &[
    ("sched_process_exec", &[Hook::TracePoint { category: "sched", name: "sched_process_exec" }]),
    ("sched_process_fork", &[Hook::Raw { name: "sched_process_fork" }]),
    ("sched_process_exit", &[Hook::TracePoint { category: "sched", name: "sched_process_exit" }]),
];

/// Connects, first writes and DNS from socket-layer tracepoints: no
/// syscall tracepoint, so the rest of the host's syscalls keep their fast
/// path. All four or none: they share the connect bookkeeping.
const SOCKET_TRACEPOINT_HOOKS: HookGroup = &[
    ("tcp_state_change", &[Hook::Raw { name: "inet_sock_set_state" }]),
    ("sock_send_length", &[Hook::Raw { name: "sock_send_length" }]),
    ("sock_recv_length", &[Hook::Raw { name: "sock_recv_length" }]),
    ("signal_deliver", &[Hook::Raw { name: "signal_deliver" }]),
];

/// The same from syscall tracepoints: exact syscall results, including
/// connects that fail before a packet is sent, at the price of the slow
/// syscall path for every process on the host.
const SOCKET_SYSCALL_HOOKS: HookGroup = &[
    ("sys_enter_connect", &[syscall("sys_enter_connect")]),
    ("sys_exit_connect", &[syscall("sys_exit_connect")]),
    ("inet_sock_set_state", &[Hook::TracePoint { category: "sock", name: "inet_sock_set_state" }]),
    (
        "sys_enter_send",
        &[
            syscall("sys_enter_write"),
            syscall("sys_enter_sendto"),
            syscall("sys_enter_sendmsg"),
            syscall("sys_enter_sendmmsg"),
            syscall("sys_enter_writev"),
        ],
    ),
    ("sys_enter_recvfrom", &[syscall("sys_enter_recvfrom")]),
    ("sys_exit_recvfrom", &[syscall("sys_exit_recvfrom")]),
];

/// File operations of agent trees. Kernels without BPF LSM or fentry have
/// no other hook for them, so they are syscall tracepoints, attached only
/// while an agent is followed unless `probes.file_hooks` is `always`.
const FILE_HOOKS: HookGroup = &[
    (
        "sys_enter_file",
        &[
            syscall("sys_enter_openat"),
            syscall("sys_enter_openat2"),
            syscall("sys_enter_unlinkat"),
            syscall("sys_enter_renameat2"),
            #[cfg(target_arch = "x86_64")]
            syscall("sys_enter_open"),
            #[cfg(target_arch = "x86_64")]
            syscall("sys_enter_unlink"),
            #[cfg(target_arch = "x86_64")]
            syscall("sys_enter_rename"),
            #[cfg(target_arch = "x86_64")]
            syscall("sys_enter_renameat"),
        ],
    ),
    (
        "sys_exit_file",
        &[
            syscall("sys_exit_openat"),
            syscall("sys_exit_openat2"),
            syscall("sys_exit_unlinkat"),
            syscall("sys_exit_renameat2"),
            #[cfg(target_arch = "x86_64")]
            syscall("sys_exit_open"),
            #[cfg(target_arch = "x86_64")]
            syscall("sys_exit_unlink"),
            #[cfg(target_arch = "x86_64")]
            syscall("sys_exit_rename"),
            #[cfg(target_arch = "x86_64")]
            syscall("sys_exit_renameat"),
        ],
    ),
];

const ALL_GROUPS: [HookGroup; 4] = [PROCESS_HOOKS, SOCKET_TRACEPOINT_HOOKS, SOCKET_SYSCALL_HOOKS, FILE_HOOKS];

impl Hook {
    fn describe(&self) -> String {
        match self {
            Hook::TracePoint { category, name } => format!("{category}/{name}"),
            Hook::Raw { name } => format!("raw_tp/{name}"),
        }
    }
}

impl Probes {
    /// Loads and attaches every hook this kernel allows.
    /// `trace_context_max_bytes` bounds the search of a tool process's
    /// environment for its trace context at exec; 0 turns it off.
    pub fn start(config: &ProbesConfig, trace_context_max_bytes: u32) -> Result<Probes, ProbeError> {
        if EBPF_OBJECT.is_empty() {
            return Err(ProbeError::ObjectMissing);
        }
        let mut report = StartReport::default();
        let effective = caps::effective();
        if let Some(set) = effective {
            log::info!("effective capabilities: {set}");
            report.degraded.extend(caps::start_report(set));
        }
        raise_memlock_limit();
        // aya finds a tracefs mounted elsewhere by itself, so a failed mount
        // is reported only if tracepoints then fail to attach.
        let tracefs_error = match mounts::ensure_tracefs(&config.tracefs_path) {
            Ok(Some(note)) => {
                report.mounted.push(note);
                None
            }
            Ok(None) => None,
            Err(error) => {
                let message = format!("{}{}", error_chain(&error), caps::mount_hint(&error, &config.tracefs_path));
                log::warn!("{message}");
                Some(message)
            }
        };
        match mounts::ensure_bpffs(&config.bpffs_path) {
            Ok(Some(note)) => report.mounted.push(note),
            Ok(None) => {}
            Err(error) => report.degraded.push(Degraded {
                hook: "bpffs".to_owned(),
                reason: format!("{}{}", error_chain(&error), caps::mount_hint(&error, &config.bpffs_path)),
            }),
        }

        // The parsed BTF takes about 15 MB. It is dropped before the object
        // is loaded, so the two do not add up to the start-up peak.
        let (mut kernel_offsets, missing) = {
            let btf = btf::Btf::from_file(&config.btf_path)
                .map_err(|source| ProbeError::Btf { path: config.btf_path.clone(), source })?;
            offsets::resolve(&btf)?
        };
        for group in missing {
            report.degraded.push(Degraded { hook: group.capability.to_owned(), reason: group.reason });
        }
        let exit_format = config.tracefs_path.join("events/sched/sched_process_exit/format");
        match std::fs::read_to_string(&exit_format) {
            Ok(text) => match offsets::tracepoint_field_offset(&text, "group_dead") {
                Some(offset) => kernel_offsets.exit_group_dead = offset,
                None => report.degraded.push(Degraded {
                    hook: "process.exit_group_dead".to_owned(),
                    reason: "sched_process_exit has no group_dead field on this kernel, so exits are reported when the thread-group leader exits".to_owned(),
                }),
            },
            Err(error) => report.degraded.push(Degraded {
                hook: "process.exit_group_dead".to_owned(),
                reason: format!(
                    "cannot read {}: {error}{}, so exits are reported when the thread-group leader exits",
                    exit_format.display(),
                    caps::tracefs_hint(&error.to_string())
                ),
            }),
        }

        let program_config = ProgramConfig {
            argv_max_bytes: config.argv_max_bytes,
            report_threads: u32::from(config.report_threads),
            wakeup_bytes: config.wakeup_bytes,
            tls_max_bytes: config.tls_max_bytes,
            tls_yield_bytes: config.ring_buffer_bytes / 2,
            trace_context_max_bytes,
            syscalls: syscall_numbers(),
        };
        let mut ebpf = EbpfLoader::new()
            // The programs carry no CO-RE relocations (offsets come from
            // OFFSETS), so aya need not parse the kernel's BTF a second time.
            .btf(None)
            .override_global("OFFSETS", &kernel_offsets, true)
            .override_global("CONFIG", &program_config, true)
            .map_max_entries("EVENTS", config.ring_buffer_bytes)
            .load(EBPF_OBJECT)
            .map_err(|source| ProbeError::Load { hint: load_hint(&source), source })?;

        for unknown in config.disabled_hooks.iter().filter(|name| !is_hook_name(name)) {
            log::warn!("probes.disabled_hooks names {unknown}, which is not a hook of this sensor");
        }
        attach_group(&mut ebpf, config, PROCESS_HOOKS, &mut report);
        let socket_mode = start_socket_hooks(&mut ebpf, config, kernel_offsets.regs_ok == 1, &mut report);
        let mut file_links = Vec::new();
        let file_hooks_loaded = FILE_HOOKS.iter().all(|(program, targets)| {
            is_disabled(&config.disabled_hooks, program) || load(&mut ebpf, program, &targets[0]).is_ok()
        });
        if config.file_hooks == FileHooks::Always || !file_hooks_loaded {
            // A program that fails to load is reported degraded here, once.
            file_links = attach_group(&mut ebpf, config, FILE_HOOKS, &mut report);
        } else {
            report.deferred.push(Degraded {
                hook: "sys_enter_file, sys_exit_file".to_owned(),
                reason: "attached while an agent is followed (probes.file_hooks = \"agents\"): they are syscall tracepoints, which slow every syscall on the host".to_owned(),
            });
        }
        // Every hook refused for lack of a capability leaves a sensor that
        // records nothing, so that is an error rather than a degradation.
        if report.attached.is_empty()
            && let Some(message) = caps::missing_for_bpf(effective)
        {
            return Err(ProbeError::MissingCapability(message));
        }
        if let Some(error) = tracefs_error {
            let tracepoint_failed = report.degraded.iter().any(|d| d.reason.contains("attach"));
            let consequence = if tracepoint_failed {
                "tracepoint hooks cannot attach"
            } else {
                "tracepoints attached through a tracefs mounted elsewhere, but reading tracepoint formats from this path failed"
            };
            report.degraded.push(Degraded { hook: "tracefs".to_owned(), reason: format!("{error}; {consequence}") });
        }
        for program in UPROBE_PROGRAMS {
            let loaded = match ebpf.program_mut(program) {
                Some(prog) => <&mut UProbe>::try_from(prog).map_err(|e| e.to_string()).and_then(|p| p.load().map_err(|e| error_chain(&e))),
                None => Err("program missing from the eBPF object".to_owned()),
            };
            if let Err(reason) = loaded {
                log::warn!("TLS plaintext probe {program} is not available: {reason}");
                report.degraded.push(Degraded { hook: (*program).to_owned(), reason });
            }
        }

        let events = ebpf
            .take_map("EVENTS")
            .ok_or(ProbeError::Map { name: "EVENTS", source: None })
            .and_then(|map| {
                RingBuf::try_from(map).map_err(|e| ProbeError::Map { name: "EVENTS", source: Some(e) })
            })?;
        let losses = ebpf
            .take_map("LOSSES")
            .ok_or(ProbeError::Map { name: "LOSSES", source: None })
            .and_then(|map| {
                PerCpuArray::try_from(map).map_err(|e| ProbeError::Map { name: "LOSSES", source: Some(e) })
            })?;
        let tracked = take_hash_map(&mut ebpf, "TRACKED", "agents.kernel_tracking", &mut report);
        // Without TLS_SKIP, the plaintext of ignored responses is copied in full.
        let tls_skip = take_hash_map(&mut ebpf, "TLS_SKIP", "tls.skip_ignored_responses", &mut report);
        Ok(Probes {
            ebpf,
            events: Some(events),
            tracked,
            tls_skip,
            losses,
            report,
            socket_mode,
            file_links,
            file_hooks_always: config.file_hooks == FileHooks::Always,
            disabled_hooks: config.disabled_hooks.clone(),
        })
    }

    /// Returns whether the file-operation hooks are attached now.
    pub fn file_hooks_attached(&self) -> bool {
        !self.file_links.is_empty()
    }

    /// Returns whether `probes.file_hooks` is `always`, so the file hooks
    /// stay attached whether or not an agent is followed.
    pub fn file_hooks_always(&self) -> bool {
        self.file_hooks_always
    }

    /// Attaches the file-operation hooks for the agents now followed;
    /// returns the targets attached, or why none could be.
    pub fn attach_file_hooks(&mut self) -> Result<Vec<String>, String> {
        if self.file_hooks_attached() || self.file_hooks_always {
            return Ok(Vec::new());
        }
        let mut attached = Vec::new();
        for (program, targets) in FILE_HOOKS {
            if is_disabled(&self.disabled_hooks, program) {
                continue;
            }
            for target in targets.iter() {
                match attach(&mut self.ebpf, program, target) {
                    Ok(link) => {
                        self.file_links.push((program, link));
                        attached.push(format!("{program}:{}", target.describe()));
                    }
                    Err(reason) => {
                        self.detach_file_hooks();
                        return Err(format!("{program} at {}: {reason}", target.describe()));
                    }
                }
            }
        }
        Ok(attached)
    }

    /// Detaches the file-operation hooks once no agent is followed, so the
    /// host's syscalls get their fast path back.
    pub fn detach_file_hooks(&mut self) {
        if self.file_hooks_always {
            return;
        }
        for (program, link) in std::mem::take(&mut self.file_links) {
            if let Err(reason) = detach(&mut self.ebpf, program, link) {
                log::warn!("cannot detach {program}: {reason}");
            }
        }
    }

    /// Reads the kernel's cumulative reservation failures per event kind.
    pub fn losses(&self) -> [u64; EVENT_KIND_COUNT as usize] {
        let mut totals = [0u64; EVENT_KIND_COUNT as usize];
        for (index, total) in totals.iter_mut().enumerate() {
            if let Ok(values) = self.losses.get(&(index as u32), 0) {
                *total = values.iter().sum();
            }
        }
        totals
    }
}

/// Names of the loss counters, in index order.
pub fn loss_kind_name(index: usize) -> &'static str {
    EventKind::from_u32(index as u32).map_or("unknown", EventKind::name)
}

/// Uprobe programs, loaded at start and attached per library by the TLS
/// stage as processes map OpenSSL.
pub const UPROBE_PROGRAMS: &[&str] = &["ssl_call_enter", "ssl_call_ex_enter", "ssl_write_exit", "ssl_read_exit"];

pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Loads `program` into the kernel. A program loaded before (the file
/// hooks are loaded early to learn whether they can be deferred) is fine.
fn load(ebpf: &mut Ebpf, program: &str, kind: &Hook) -> Result<(), String> {
    let Some(prog) = ebpf.program_mut(program) else {
        return Err("program missing from the eBPF object".to_owned());
    };
    let result = match kind {
        Hook::TracePoint { .. } => {
            let tp: &mut TracePoint = prog.try_into().map_err(|e| error_chain(&e))?;
            tp.load()
        }
        Hook::Raw { .. } => {
            let tp: &mut RawTracePoint = prog.try_into().map_err(|e| error_chain(&e))?;
            tp.load()
        }
    };
    match result {
        Ok(()) | Err(ProgramError::AlreadyLoaded) => Ok(()),
        Err(error) => Err(format!("load: {}", error_chain(&error))),
    }
}

/// A link of an attached program, kept to detach it later.
#[derive(Debug)]
enum LinkId {
    TracePoint(aya::programs::trace_point::TracePointLinkId),
    Raw(aya::programs::raw_trace_point::RawTracePointLinkId),
}

/// Takes a hash map that the daemon writes, or reports `feature` as
/// degraded when the map cannot be opened.
fn take_hash_map<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &str,
    feature: &str,
    report: &mut StartReport,
) -> Option<aya::maps::HashMap<MapData, K, V>> {
    let reason = match ebpf.take_map(name).map(aya::maps::HashMap::try_from) {
        Some(Ok(map)) => return Some(map),
        Some(Err(error)) => error_chain(&error),
        None => "map missing from the eBPF object".to_owned(),
    };
    report.degraded.push(Degraded { hook: feature.to_owned(), reason });
    None
}

fn attach(ebpf: &mut Ebpf, program: &str, hook: &Hook) -> Result<LinkId, String> {
    let Some(prog) = ebpf.program_mut(program) else {
        return Err("program missing from the eBPF object".to_owned());
    };
    match hook {
        Hook::TracePoint { category, name } => {
            let tp: &mut TracePoint = prog.try_into().map_err(|e| error_chain(&e))?;
            tp.attach(category, name).map(LinkId::TracePoint).map_err(|e| format!("attach: {}", error_chain(&e)))
        }
        Hook::Raw { name } => {
            let tp: &mut RawTracePoint = prog.try_into().map_err(|e| error_chain(&e))?;
            tp.attach(name).map(LinkId::Raw).map_err(|e| format!("attach: {}", error_chain(&e)))
        }
    }
}

fn detach(ebpf: &mut Ebpf, program: &str, link: LinkId) -> Result<(), String> {
    let Some(prog) = ebpf.program_mut(program) else {
        return Err("program missing from the eBPF object".to_owned());
    };
    match link {
        LinkId::TracePoint(link) => {
            let tp: &mut TracePoint = prog.try_into().map_err(|e| error_chain(&e))?;
            tp.detach(link).map_err(|e| error_chain(&e))
        }
        LinkId::Raw(link) => {
            let tp: &mut RawTracePoint = prog.try_into().map_err(|e| error_chain(&e))?;
            tp.detach(link).map_err(|e| error_chain(&e))
        }
    }
}

fn is_disabled(disabled_hooks: &[String], program: &str) -> bool {
    disabled_hooks.iter().any(|name| name == program)
}

fn is_hook_name(name: &str) -> bool {
    ALL_GROUPS.iter().any(|group| group.iter().any(|(program, _)| *program == name))
}

/// Loads and attaches every program of a group that is not disabled. A
/// program or target that fails is reported degraded, and the rest go on.
fn attach_group(ebpf: &mut Ebpf, config: &ProbesConfig, group: HookGroup, report: &mut StartReport) -> Vec<(&'static str, LinkId)> {
    let mut links = Vec::new();
    for (program, targets) in group {
        if is_disabled(&config.disabled_hooks, program) {
            report.degraded.push(Degraded { hook: (*program).to_owned(), reason: "disabled by probes.disabled_hooks".to_owned() });
            continue;
        }
        if let Err(reason) = load(ebpf, program, &targets[0]) {
            log::warn!("hook {program} is not running: {reason}");
            report.degraded.push(Degraded { hook: (*program).to_owned(), reason });
            continue;
        }
        for target in targets.iter() {
            match attach(ebpf, program, target) {
                Ok(link) => {
                    report.attached.push(format!("{program}:{}", target.describe()));
                    links.push((*program, link));
                }
                Err(reason) => {
                    let reason = format!("{reason}{}", caps::tracefs_hint(&reason));
                    log::warn!("hook {program} at {} is not running: {reason}", target.describe());
                    report.degraded.push(Degraded { hook: format!("{program}:{}", target.describe()), reason });
                }
            }
        }
    }
    links
}

/// Attaches the socket tracepoints, or the syscall hooks when the
/// configuration selects them or the kernel rejects one of the tracepoints.
/// Returns the name of the set that runs.
fn start_socket_hooks(ebpf: &mut Ebpf, config: &ProbesConfig, registers_known: bool, report: &mut StartReport) -> &'static str {
    if config.socket_hooks == SocketHooks::Syscalls {
        attach_group(ebpf, config, SOCKET_SYSCALL_HOOKS, report);
        return "syscalls";
    }
    let mut attached = Vec::new();
    let mut failure = (!registers_known)
        .then(|| "the syscall register offsets are missing from BTF (see net.socket_tracepoints)".to_owned());
    for (program, targets) in SOCKET_TRACEPOINT_HOOKS {
        if failure.is_some() {
            break;
        }
        if is_disabled(&config.disabled_hooks, program) {
            report.degraded.push(Degraded { hook: (*program).to_owned(), reason: "disabled by probes.disabled_hooks".to_owned() });
            continue;
        }
        let result = load(ebpf, program, &targets[0]).and_then(|()| attach(ebpf, program, &targets[0]));
        match result {
            Ok(link) => attached.push((*program, format!("{program}:{}", targets[0].describe()), link)),
            Err(reason) => failure = Some(format!("{program}: {reason}")),
        }
    }
    let Some(reason) = failure else {
        report.attached.extend(attached.into_iter().map(|(_, name, _)| name));
        return "tracepoints";
    };
    for (program, _, link) in attached {
        if let Err(error) = detach(ebpf, program, link) {
            log::warn!("cannot detach {program}: {error}");
        }
    }
    let reason = format!(
        "{reason}; connects, first writes and DNS come from syscall tracepoints instead, which slow every syscall on the host"
    );
    log::warn!("socket tracepoints are not running: {reason}");
    report.degraded.push(Degraded { hook: "net.socket_tracepoints".to_owned(), reason });
    attach_group(ebpf, config, SOCKET_SYSCALL_HOOKS, report);
    "syscalls"
}

/// This architecture's numbers for the syscalls the shared programs tell
/// apart.
fn syscall_numbers() -> SyscallNumbers {
    let number = |n: libc::c_long| n as u32;
    #[allow(unused_mut)]
    let mut numbers = SyscallNumbers {
        write: number(libc::SYS_write),
        read: number(libc::SYS_read),
        connect: number(libc::SYS_connect),
        recvfrom: number(libc::SYS_recvfrom),
        recvmsg: number(libc::SYS_recvmsg),
        sendto: number(libc::SYS_sendto),
        sendmsg: number(libc::SYS_sendmsg),
        sendmmsg: number(libc::SYS_sendmmsg),
        writev: number(libc::SYS_writev),
        openat: number(libc::SYS_openat),
        openat2: number(libc::SYS_openat2),
        unlinkat: number(libc::SYS_unlinkat),
        renameat2: number(libc::SYS_renameat2),
        ..SyscallNumbers::NONE
    };
    #[cfg(target_arch = "x86_64")]
    {
        numbers.open = number(libc::SYS_open);
        numbers.unlink = number(libc::SYS_unlink);
        numbers.rename = number(libc::SYS_rename);
        numbers.renameat = number(libc::SYS_renameat);
    }
    numbers
}

fn load_hint(error: &aya::EbpfError) -> String {
    let denied = caps::is_permission_error(error) || error_chain(error).contains("Operation not permitted");
    if let Some(message) = caps::missing_for_bpf(caps::effective()).filter(|_| denied) {
        return format!(" ({message})");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        " (run as root, or grant CAP_BPF and CAP_PERFMON)".to_owned()
    } else {
        String::new()
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones ignore
/// it, so a failure here is only logged.
fn raise_memlock_limit() {
    let limit = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit reads the struct passed by reference.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        log::debug!("cannot raise RLIMIT_MEMLOCK: {}", std::io::Error::last_os_error());
    }
}
