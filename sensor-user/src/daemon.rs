//! The daemon loop: wires the pipeline stages together on one thread.
//!
//! Data flows one way: ring buffer, decode, process table, network state,
//! record, sinks. Everything runs on a single-threaded tokio runtime, so no
//! lock is taken per event; the ring buffer is drained in batches and the
//! sinks are flushed after each batch.

use std::time::Duration;

use anyhow::Context as _;
use sensor_common::EVENT_KIND_COUNT;
use serde_json::json;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};

use crate::{
    agents::{control, Agents},
    config::Config,
    identity::Identity,
    evidence::{Clock, Host, Record, Stamper},
    llm::{LlmConfig, LlmStreams},
    net::{catalog::Catalog, dns::DnsCache, PendingConnects},
    pipeline::Pipeline,
    policy::engine::PolicyEngine,
    probes::{self, uprobes::UprobeManager, Probes},
    process::{procfs, ProcessTable},
    sinks::Sinks,
};

/// Records handled before the loop yields to timers and signals.
const BATCH: usize = 4096;
/// How often the policy file is reread to see whether its content changed.
const POLICY_POLL_INTERVAL: Duration = Duration::from_secs(2);

pub async fn run(config: Config) -> anyhow::Result<()> {
    let reconcile = &config.reconcile;
    let trace_context_bytes = match reconcile.enabled && reconcile.read_trace_context {
        true => u32::try_from(reconcile.environ_max_bytes).unwrap_or(u32::MAX),
        false => 0,
    };
    let mut probes = Probes::start(&config.probes, trace_context_bytes)?;
    let events = probes.events.take().context("the ring buffer was already taken")?;
    let boot_id = read_boot_id();
    let host_name = hostname();
    let host = Host::new(&host_name, &boot_id);
    let stamper = Stamper::new(host, Clock::from_system());
    // Loaded before the sinks open, so a recovery record already carries
    // the policy's sha256.
    let policy = PolicyEngine::start(&config.policy, config.process.procfs_path.clone(), config.identity.passwd_path.clone())
        .map_err(|error| {
            let problems = error.problems().iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
            anyhow::anyhow!("{error}: {problems}")
        })?;
    stamper.set_policy_sha256(policy.sha256());
    let (export_queue, export_task) = match config.export.otlp.enabled() {
        true => {
            let export = crate::export::start(&config.export.otlp, &host_name).context("starting the OTLP export")?;
            (Some(export.queue), Some(export.task))
        }
        false => (None, None),
    };
    // Shares the stamper's sequence: it resumes the evidence chain's.
    let sinks = Sinks::open_with_export(&config.output, &config.evidence, stamper.clone(), export_queue)?;
    let catalog = Catalog::new(&config.catalog)?;
    let fingerprint_key = load_or_create_key(&config.llm.fingerprint_key_path)?;
    let uprobes_loaded = !probes.report.degraded.iter().any(|d| probes::UPROBE_PROGRAMS.contains(&d.hook.as_str()));
    let boot_prefix: String = boot_id.chars().take(8).collect();
    let argv_capability = !probes.report.degraded.iter().any(|d| d.hook == "exec.argv_and_exe");
    let mut pipeline = Pipeline {
        table: {
            // Redaction placeholders share the LLM stage's key, so an argv's
            // `[REDACTED:...]` matches that stage's credential fingerprints.
            let redactor = crate::redact::Redactor::new(&fingerprint_key);
            let mut table = ProcessTable::new(config.process.clone(), boot_prefix.clone(), redactor);
            table.argv_capability = argv_capability;
            table
        },
        pending: PendingConnects::default(),
        stamper,
        sinks,
        identity: config.identity.enabled.then(|| Identity::start(&config.identity)),
        agents: Agents::new(config.agents.clone(), boot_prefix),
        catalog,
        dns: DnsCache::default(),
        llm: LlmStreams::new(
            LlmConfig { max_buffer_bytes: config.llm.max_buffer_bytes, max_streams: config.llm.max_streams },
            fingerprint_key,
        ),
        uprobes: UprobeManager::new(config.process.procfs_path.clone(), uprobes_loaded, config.probes.tls_plaintext),
        tracked: probes.tracked.take(),
        tls_skip: probes.tls_skip.take(),
        last_tls_skip: None,
        tracking_started: false,
        connections: Default::default(),
        connection_fds: Default::default(),
        tls_scanned: Default::default(),
        received: [0; EVENT_KIND_COUNT as usize],
        decode_errors: 0,
        ignored_file_reads: 0,
        tls_yielded_bytes: 0,
        reported_losses: [0; EVENT_KIND_COUNT as usize],
        reconcile: config
            .reconcile
            .enabled
            .then(|| crate::reconcile::Live::new(config.reconcile.clone())),
        policy,
        deferred_forks: Vec::new(),
        views: Default::default(),
    };
    let (mut ingest, ingest_problems) = match config.ingest.enabled {
        true => {
            let (ingest, problems) = crate::ingest::start(&config.ingest, config.process.procfs_path.clone()).await;
            (Some(ingest), problems)
        }
        false => (None, Vec::new()),
    };

    // The scan runs after attaching, so a process started in between is
    // seen by the scan, by its exec record, or by both.
    let scanned = procfs::scan(&config.process.procfs_path)
        .with_context(|| format!("scanning {}", config.process.procfs_path.display()))?;
    let scanned_count = scanned.len();
    let keys = pipeline.table.seed(scanned);

    // Hooked before `sensor.start` is written, so that a client started once
    // the record appears has its first request captured.
    let mut hooked_at_start: Vec<_> = config
        .probes
        .tls_executables
        .iter()
        .filter_map(|path| pipeline.uprobes.hook_path(&mut probes.ebpf, path))
        .collect();
    for dir in &config.probes.tls_library_dirs {
        hooked_at_start.extend(pipeline.uprobes.hook_library_dir(&mut probes.ebpf, dir));
    }

    // Bound before `sensor.start`, so a client that sees that record can
    // connect; the loop replies once it runs.
    let (mut metrics_requests, metrics_problem) = match config.metrics.enabled {
        true => match start_metrics(&config.metrics.listen).await {
            Ok(requests) => (Some(requests), None),
            Err(reason) => (None, Some(reason)),
        },
        false => (None, None),
    };

    let now = Clock::boot_now_ns();
    let start = pipeline.stamper.head("sensor.start", now);
    pipeline.sinks.write_record(&Record {
        sensor: Some(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "hooks": {
                "attached": probes.report.attached,
                "degraded": probes.report.degraded,
                "deferred": probes.report.deferred,
                "socket_hooks": probes.socket_mode,
            },
            "mounted": probes.report.mounted,
            "processes_scanned": scanned_count,
            "ring_buffer_bytes": config.probes.ring_buffer_bytes,
            "argv_max_bytes": config.probes.argv_max_bytes,
            "evidence_path": config.output.evidence_file(),
            "policy": { "path": config.policy.path, "sha256": pipeline.policy.sha256() },
            "identity": pipeline.identity.as_ref().map(Identity::summary),
            "ingest": ingest.as_ref().map(|i| json!({ "listen": i.listen })),
            "metrics": metrics_requests.as_ref().map(|_| json!({ "listen": config.metrics.listen })),
            "export": config.export.otlp.enabled().then(|| json!({ "endpoint": config.export.otlp.endpoint })),
        })),
        ..Record::new(start)
    })?;
    if let Some(section) = pipeline.policy.start_report() {
        pipeline.emit_policy_reload(section)?;
    }
    for degraded in &probes.report.degraded {
        log::warn!("degraded: {}: {}", degraded.hook, degraded.reason);
        let head = pipeline.stamper.head("sensor.degraded", now);
        pipeline.sinks.write_record(&Record {
            sensor: Some(json!({ "hook": degraded.hook, "reason": degraded.reason })),
            ..Record::new(head)
        })?;
    }
    for problem in &ingest_problems {
        log::warn!("degraded: ingest: {problem}");
        pipeline.emit_sensor("sensor.degraded", json!({ "hook": "ingest", "reason": problem.to_string() }))?;
    }
    if let Some(reason) = metrics_problem {
        log::warn!("degraded: metrics: {reason}");
        pipeline.emit_sensor("sensor.degraded", json!({ "hook": "metrics", "reason": reason }))?;
    }
    for key in &keys {
        pipeline.emit(*key, "process.snapshot", now, None, |_| {})?;
    }
    pipeline.sinks.flush()?;
    for hooked in hooked_at_start {
        pipeline.emit_sensor("sensor.tls_hooked", json!(hooked))?;
    }
    // Libraries mapped by processes already running are hooked once here;
    // later ones are found at connect and exec.
    for key in keys {
        pipeline.tls_scanned.insert(key, ());
        for hooked in pipeline.uprobes.scan_process(&mut probes.ebpf, key.pid) {
            pipeline.emit_sensor("sensor.tls_hooked", json!(hooked))?;
        }
    }
    let control = match control::bind(&config.agents.control_socket, config.agents.control_group) {
        Ok(listener) => Some(listener),
        Err(error) => {
            log::warn!("{error:#}; `agent-sensor agents` will not work");
            pipeline.emit_sensor("sensor.degraded", json!({ "hook": "control_socket", "reason": format!("{error:#}") }))?;
            None
        }
    };
    // Loading parsed the kernel's BTF and the TLS libraries' symbol tables.
    // Returning that freed heap to the kernel makes the resident size show
    // what the sensor keeps, not its start-up peak.
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe { libc::malloc_trim(0) };
    log::info!(
        "agent-sensor started: {} hooks attached, {} degraded, {} processes scanned",
        probes.report.attached.len(),
        probes.report.degraded.len(),
        scanned_count
    );

    // SAFETY: the ring buffer's fd is owned by `events`, which the AsyncFd
    // owns from here on, so it stays open and unchanged while registered.
    let mut ring = unsafe { AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE) }
        .map_err(|error| error.into_parts().1)
        .context("registering the ring buffer with the event loop")?;
    let mut drain = DrainTimer::new(config.probes.drain_interval_ms, config.probes.drain_idle_interval_ms);
    let mut chores = Chores::new(&config);
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;

    let reason = loop {
        let reconcile_idle = pipeline.reconcile.as_ref().is_none_or(|live| live.engine.is_idle());
        let wake = chores.wake_at(drain.deadline, pipeline.sinks.has_unflushed(), !reconcile_idle);
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                let drained = pipeline.drain(guard.get_inner_mut(), &mut probes, BATCH)?;
                if drained < BATCH {
                    guard.clear_ready();
                }
                drain.after(drained);
                pipeline.sync_file_hooks(&mut probes)?;
                pipeline.sinks.end_batch()?;
                chores.run_due(&mut pipeline, &mut probes)?;
            }
            _ = tokio::time::sleep_until(wake) => {
                let mut drained = 0;
                loop {
                    let batch = pipeline.drain(ring.get_mut(), &mut probes, BATCH)?;
                    drained += batch;
                    if batch < BATCH {
                        break;
                    }
                }
                drain.after(drained);
                pipeline.sync_file_hooks(&mut probes)?;
                pipeline.sinks.end_batch()?;
                chores.run_due(&mut pipeline, &mut probes)?;
            }
            Some(request) = next_metrics_request(&mut metrics_requests) => {
                crate::metrics::answer(request, &pipeline, &probes, ingest.as_ref());
            }
            Some(reports) = next_reports(&mut ingest) => pipeline.on_reports(reports),
            accepted = accept(&control) => {
                if let Ok((stream, _)) = accepted {
                    let agents: Vec<_> = pipeline.agents.agents().collect();
                    let snapshot = serde_json::to_vec(&json!({ "agents": agents })).unwrap_or_default();
                    control::reply(stream, snapshot);
                }
            }
            _ = sighup.recv() => pipeline.reload_policy("sighup", true)?,
            _ = sigint.recv() => break "SIGINT",
            _ = sigterm.recv() => break "SIGTERM",
        }
    };

    // Everything the kernel queued before the signal is still recorded.
    while pipeline.drain(ring.get_mut(), &mut probes, usize::MAX)? > 0 {}
    pipeline.write_deferred_forks(u64::MAX)?;
    pipeline.report_losses(&probes)?;
    crate::export::report_losses(&mut pipeline)?;
    while let Some(Ok(reports)) = ingest.as_mut().map(|i| i.reports.try_recv()) {
        pipeline.on_reports(reports);
    }
    pipeline.reconcile_finish()?;
    let kernel_losses = probes.losses();
    let counts = |values: &[u64; EVENT_KIND_COUNT as usize]| {
        (0..EVENT_KIND_COUNT as usize)
            .map(|i| (probes::loss_kind_name(i).to_owned(), json!(values[i])))
            .collect::<serde_json::Map<_, _>>()
    };
    let head = pipeline.stamper.head("sensor.stop", Clock::boot_now_ns());
    let stop = json!({
        "reason": reason,
        "received": counts(&pipeline.received),
        "lost": counts(&kernel_losses),
        "decode_errors": pipeline.decode_errors,
        "file_reads_ignored": pipeline.ignored_file_reads,
        "records_written": pipeline.sinks.records_written + 1,
        "ingest": ingest.as_ref().map(|i| i.stats.to_json()),
        "reconcile": pipeline.reconcile.as_ref().map(|r| json!(r.engine.stats)),
    });
    pipeline.sinks.write_record(&Record { sensor: Some(stop), ..Record::new(head) })?;
    pipeline.sinks.close()?;
    if let Some(task) = export_task {
        // The task writes what is left in its channel to the buffer and
        // makes one last attempt to send it.
        let wait = Duration::from_millis(config.export.otlp.timeout_ms + 1000);
        if tokio::time::timeout(wait, task).await.is_err() {
            log::warn!("export: the export task did not finish within {wait:?}; unbuffered records are lost for export");
        }
    }
    log::info!("agent-sensor stopped on {reason}");
    Ok(())
}

/// Reads the key that credential fingerprints are computed with, creating
/// it (32 random bytes, mode 0600) on first start. A stable key keeps
/// fingerprints comparable across restarts; a lost key only breaks that.
fn load_or_create_key(path: &std::path::Path) -> anyhow::Result<[u8; 32]> {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    match std::fs::read(path) {
        Ok(bytes) => {
            return bytes.as_slice().try_into().with_context(|| {
                format!("fingerprint key {} holds {} bytes, expected 32; delete it to create a new one", path.display(), bytes.len())
            });
        }
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(error).with_context(|| format!("reading fingerprint key {}", path.display()));
        }
        Err(_) => {}
    }
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut key))
        .context("reading /dev/urandom for a new fingerprint key")?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| std::io::Write::write_all(&mut file, &key))
        .with_context(|| format!("writing fingerprint key {}", path.display()))?;
    log::info!("created credential fingerprint key {}", path.display());
    Ok(key)
}

/// Receives the next batch of reports, or waits forever without ingest.
async fn next_reports(ingest: &mut Option<crate::ingest::Ingest>) -> Option<Vec<crate::reconcile::report::Report>> {
    match ingest {
        Some(ingest) => ingest.reports.recv().await,
        None => std::future::pending().await,
    }
}

/// Binds the metrics endpoint and starts serving it; requests reach the
/// loop through the returned channel.
async fn start_metrics(listen: &str) -> Result<crate::metrics::Requests, String> {
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|error| format!("cannot listen on {listen}: {error}"))?;
    let (sender, requests) = tokio::sync::mpsc::channel(16);
    log::info!("metrics: serving /metrics, /healthz and /readyz on {listen}");
    tokio::spawn(crate::metrics::serve(listener, sender));
    Ok(requests)
}

/// Receives the next metrics request, or waits forever without the endpoint.
async fn next_metrics_request(requests: &mut Option<crate::metrics::Requests>) -> Option<crate::metrics::Request> {
    match requests {
        Some(requests) => requests.recv().await,
        None => std::future::pending().await,
    }
}

/// Accepts a control client, or waits forever when there is no socket.
async fn accept(
    listener: &Option<tokio::net::UnixListener>,
) -> std::io::Result<(tokio::net::UnixStream, tokio::net::unix::SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

fn read_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().replace('-', ""))
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// The daemon's periodic work, run when the event loop wakes to drain the
/// ring buffer rather than on timers of its own. By their periods, six
/// timers woke an idle daemon about ten times a second, at an estimated
/// 80 µs each on the development VM (idle CPU over wakeups). Only waiting
/// work (lines to flush, matches to decide) wakes the loop itself, a drain
/// interval after it is due, so on a busy host the drain gets there first.
struct Chores {
    /// How late a waiting chore may run: the busy drain interval.
    slack: Duration,
    losses: Chore,
    flush: Chore,
    collect_garbage: Chore,
    evidence: Chore,
    reconcile: Chore,
    policy: Chore,
}

/// One periodic task: when it is next due.
struct Chore {
    period: Duration,
    due: tokio::time::Instant,
}

impl Chore {
    fn every(period: Duration) -> Chore {
        Chore { period, due: tokio::time::Instant::now() + period }
    }

    /// Returns true, and schedules the next run, when the chore is due.
    fn take_due(&mut self, now: tokio::time::Instant) -> bool {
        if now < self.due {
            return false;
        }
        self.due = now + self.period;
        true
    }
}

impl Chores {
    fn new(config: &Config) -> Chores {
        Chores {
            slack: Duration::from_millis(config.probes.drain_interval_ms),
            losses: Chore::every(Duration::from_millis(config.probes.loss_check_interval_ms)),
            flush: Chore::every(Duration::from_millis(config.output.flush_interval_ms)),
            collect_garbage: Chore::every(Duration::from_secs(5)),
            evidence: Chore::every(Duration::from_secs(1)),
            reconcile: Chore::every(Duration::from_millis(config.reconcile.tick_ms)),
            policy: Chore::every(POLICY_POLL_INTERVAL),
        }
    }

    /// Returns when the event loop must wake: at the drain deadline, or a
    /// little after a waiting flush or reconciler tick is due. The other
    /// chores wait for a wakeup, at most `probes.drain_idle_interval_ms`.
    fn wake_at(&self, drain: tokio::time::Instant, unflushed: bool, reconciling: bool) -> tokio::time::Instant {
        let mut wake = drain;
        if unflushed {
            wake = wake.min(self.flush.due + self.slack);
        }
        if reconciling {
            wake = wake.min(self.reconcile.due + self.slack);
        }
        wake
    }

    fn run_due(&mut self, pipeline: &mut Pipeline, probes: &mut Probes) -> anyhow::Result<()> {
        let now = tokio::time::Instant::now();
        if self.losses.take_due(now) {
            pipeline.report_losses(probes)?;
            crate::export::report_losses(pipeline)?;
        }
        if self.collect_garbage.take_due(now) {
            pipeline.collect_garbage()?;
            pipeline.release_file_hooks(probes)?;
        }
        if self.evidence.take_due(now) {
            pipeline.sinks.tick()?;
        }
        if self.reconcile.take_due(now) {
            pipeline.reconcile_tick()?;
        }
        if self.policy.take_due(now) {
            pipeline.reload_policy("file_changed", false)?;
        }
        // Last, so the records the chores above wrote leave with the rest.
        if self.flush.take_due(now) {
            pipeline.sinks.flush()?;
        }
        Ok(())
    }
}

/// When the daemon next reads the ring buffer without a wakeup. Every
/// empty read doubles the wait, up to `probes.drain_idle_interval_ms`, so a
/// quiet host costs a few wakeups a second instead of ten. Any record
/// read brings the wait back to `probes.drain_interval_ms`. Records that
/// must not wait (a connection's first bytes) wake the daemon from the
/// kernel.
struct DrainTimer {
    busy: Duration,
    idle: Duration,
    period: Duration,
    deadline: tokio::time::Instant,
}

impl DrainTimer {
    fn new(busy_ms: u64, idle_ms: u64) -> DrainTimer {
        let busy = Duration::from_millis(busy_ms);
        let idle = Duration::from_millis(idle_ms).max(busy);
        DrainTimer { busy, idle, period: busy, deadline: tokio::time::Instant::now() + busy }
    }

    fn after(&mut self, drained: usize) {
        self.period = if drained == 0 { (self.period * 2).min(self.idle) } else { self.busy };
        self.deadline = tokio::time::Instant::now() + self.period;
    }
}
