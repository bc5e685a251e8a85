//! The daemon loop: wires the pipeline stages together on one thread.
//!
//! Data flows one way: ring buffer, decode, process table, network state,
//! record, sinks. Everything runs on a single-threaded tokio runtime, so no
//! lock is taken per event; the ring buffer is drained in batches and the
//! sinks are flushed after each batch.

use std::time::Duration;

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use sensor_common::{
    EVENT_KIND_COUNT, CONNECT_FLAG_ASYNC_DONE, CONNECT_FLAG_NO_SOCKET, CONNECT_FLAG_PENDING,
    EXIT_FLAG_LEADER_ONLY,
};
use serde_json::json;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};

use crate::{
    config::Config,
    evidence::{Clock, ExitView, Host, NetworkView, ProcessView, Record, Stamper},
    net::{self, PendingConnect, PendingConnects},
    probes::{
        self,
        decode::{decode, KernelEvent},
        Probes,
    },
    process::{procfs, ProcKey, ProcessTable},
    sinks::Sinks,
};

/// A pending connect with no handshake outcome after this long is reported
/// with an unknown outcome; TCP gives up on a SYN well before (about 127 s
/// with the default `tcp_syn_retries` of 6, counted from the first SYN).
const PENDING_CONNECT_TIMEOUT_NS: u64 = 180 * 1_000_000_000;

/// Records handled before the loop yields to timers and signals.
const BATCH: usize = 4096;

struct Pipeline {
    table: ProcessTable,
    pending: PendingConnects,
    stamper: Stamper,
    sinks: Sinks,
    received: [u64; EVENT_KIND_COUNT as usize],
    decode_errors: u64,
    reported_losses: [u64; EVENT_KIND_COUNT as usize],
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let mut probes = Probes::start(&config.probes)?;
    let events = probes.events.take().context("the ring buffer was already taken")?;
    let boot_id = read_boot_id();
    let host = Host { name: hostname(), boot_id: boot_id.clone() };
    let sinks = Sinks::open(config.output.stdout, config.output.evidence_file())?;
    let mut pipeline = Pipeline {
        table: ProcessTable::new(config.process.clone(), boot_id.chars().take(8).collect()),
        pending: PendingConnects::default(),
        stamper: Stamper::new(host, Clock::from_system()),
        sinks,
        received: [0; EVENT_KIND_COUNT as usize],
        decode_errors: 0,
        reported_losses: [0; EVENT_KIND_COUNT as usize],
    };

    // The scan runs after attaching, so a process started in between is
    // seen by the scan, by its exec record, or by both.
    let scanned = procfs::scan(&config.process.procfs_path)
        .with_context(|| format!("scanning {}", config.process.procfs_path.display()))?;
    let scanned_count = scanned.len();
    let keys = pipeline.table.seed(scanned);

    let now = Clock::boot_now_ns();
    let start = pipeline.stamper.head("sensor.start", now);
    pipeline.sinks.write(&Record {
        head: start,
        process: None,
        network: None,
        exit: None,
        sensor: Some(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "hooks": { "attached": probes.report.attached, "degraded": probes.report.degraded },
            "mounted": probes.report.mounted,
            "processes_scanned": scanned_count,
            "ring_buffer_bytes": config.probes.ring_buffer_bytes,
            "argv_max_bytes": config.probes.argv_max_bytes,
            "evidence_path": config.output.evidence_file(),
        })),
    })?;
    for degraded in &probes.report.degraded {
        log::warn!("degraded: {}: {}", degraded.hook, degraded.reason);
        let head = pipeline.stamper.head("sensor.degraded", now);
        pipeline.sinks.write(&Record {
            head,
            process: None,
            network: None,
            exit: None,
            sensor: Some(json!({ "hook": degraded.hook, "reason": degraded.reason })),
        })?;
    }
    for key in keys {
        pipeline.emit_process(key, "process.snapshot", now, None)?;
    }
    pipeline.sinks.flush()?;
    log::info!(
        "agent-sensor started: {} hooks attached, {} degraded, {} processes scanned",
        probes.report.attached.len(),
        probes.report.degraded.len(),
        scanned_count
    );

    let mut ring = AsyncFd::with_interest(events, tokio::io::Interest::READABLE).context("registering the ring buffer with the event loop")?;
    let mut drain_timer = tokio::time::interval(Duration::from_millis(config.probes.drain_interval_ms));
    drain_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut loss_timer = tokio::time::interval(Duration::from_millis(config.probes.loss_check_interval_ms));
    let mut flush_timer = tokio::time::interval(Duration::from_millis(config.output.flush_interval_ms));
    let mut gc_timer = tokio::time::interval(Duration::from_secs(5));
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;

    let reason = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                let drained = pipeline.drain(guard.get_inner_mut(), BATCH)?;
                if drained < BATCH {
                    guard.clear_ready();
                }
                pipeline.sinks.flush()?;
            }
            _ = drain_timer.tick() => {
                while pipeline.drain(ring.get_mut(), BATCH)? == BATCH {}
                pipeline.sinks.flush()?;
            }
            _ = loss_timer.tick() => pipeline.report_losses(&probes)?,
            _ = flush_timer.tick() => pipeline.sinks.flush()?,
            _ = gc_timer.tick() => pipeline.collect_garbage()?,
            _ = sigint.recv() => break "SIGINT",
            _ = sigterm.recv() => break "SIGTERM",
        }
    };

    // Everything the kernel queued before the signal is still recorded.
    while pipeline.drain(ring.get_mut(), usize::MAX)? > 0 {}
    pipeline.report_losses(&probes)?;
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
        "records_written": pipeline.sinks.records_written + 1,
    });
    pipeline.sinks.write(&Record { head, process: None, network: None, exit: None, sensor: Some(stop) })?;
    pipeline.sinks.sync()?;
    log::info!("agent-sensor stopped on {reason}");
    Ok(())
}

impl Pipeline {
    /// Handles up to `limit` records; returns how many were read.
    fn drain(&mut self, ring: &mut RingBuf<MapData>, limit: usize) -> anyhow::Result<usize> {
        let mut count = 0;
        while count < limit {
            let Some(item) = ring.next() else { break };
            count += 1;
            match decode(&item) {
                Ok(event) => self.handle(event)?,
                Err(error) => {
                    self.decode_errors += 1;
                    log::debug!("undecodable ring buffer record: {error}");
                }
            }
        }
        Ok(count)
    }

    fn handle(&mut self, event: KernelEvent<'_>) -> anyhow::Result<()> {
        let header = *event.header();
        if let Some(slot) = self.received.get_mut(header.kind as usize) {
            *slot += 1;
        }
        let key = self.table.key(header.pid, header.start_time_ns);
        match event {
            KernelEvent::Exec(exec) => {
                let key = self.table.on_exec(&exec);
                self.emit_process(key, "process.exec", header.time_ns, None)?;
            }
            KernelEvent::Fork(fork) => {
                let parent = self.table.key(fork.parent_pid, fork.parent_start_time_ns);
                self.table.on_fork(key, parent, header.start_time_ns, fork.cgroup_id);
                self.emit_process(key, "process.fork", header.time_ns, None)?;
            }
            KernelEvent::Exit(exit) => {
                self.table.on_exit(key, header.time_ns);
                let mut view = ExitView::from_status(exit.exit_code);
                if header.flags & EXIT_FLAG_LEADER_ONLY != 0 {
                    // Other threads may still run; see the flag's doc.
                    view.core_dumped = false;
                }
                self.emit(key, "process.exit", header.time_ns, Some(header.tid), None, Some(view))?;
            }
            KernelEvent::Connect(connect) => {
                let destination = net::parse_sockaddr(connect.family, &connect.sockaddr);
                let protocol = if connect.header.flags & CONNECT_FLAG_NO_SOCKET != 0 {
                    "unknown"
                } else {
                    net::protocol_name(connect.sock_type)
                };
                let outcome = if connect.header.flags & CONNECT_FLAG_ASYNC_DONE != 0 {
                    Some(if connect.async_result == 0 { "established" } else { net::result_name(connect.async_result) })
                } else if connect.header.flags & CONNECT_FLAG_PENDING != 0 {
                    let expired = self.pending.insert(
                        connect.connect_id,
                        PendingConnect {
                            pid: header.pid,
                            start_time_ns: header.start_time_ns,
                            destination: destination.clone(),
                            protocol,
                            since_ns: header.time_ns,
                        },
                    );
                    self.emit_unknown_outcomes(expired)?;
                    Some("pending")
                } else {
                    None
                };
                let network = NetworkView {
                    protocol,
                    destination,
                    result: net::result_name(connect.result),
                    errno: (connect.result < 0).then_some(-connect.result),
                    outcome,
                    connect_id: outcome.map(|_| connect.connect_id),
                    fd: Some(connect.fd),
                };
                self.emit(key, "net.connect", header.time_ns, Some(header.tid), Some(network), None)?;
            }
            // TODO: hand these to the net, llm and agents stages once the
            // hooks that produce them are attached.
            KernelEvent::Payload(_) | KernelEvent::File(_) | KernelEvent::Tls(_) => {}
            KernelEvent::ConnectResult(result) => {
                let pending = self.pending.take(header.pid, result.connect_id);
                let network = NetworkView {
                    protocol: pending.as_ref().map_or("tcp", |p| p.protocol),
                    destination: pending.and_then(|p| p.destination),
                    result: "EINPROGRESS",
                    errno: Some(115),
                    outcome: Some(if result.result == 0 { "established" } else { net::result_name(result.result) }),
                    connect_id: Some(result.connect_id),
                    fd: None,
                };
                self.emit(key, "net.connect_result", header.time_ns, Some(header.tid), Some(network), None)?;
            }
        }
        Ok(())
    }

    fn emit_process(&mut self, key: ProcKey, kind: &'static str, time_ns: u64, tid: Option<u32>) -> anyhow::Result<()> {
        self.emit(key, kind, time_ns, tid, None, None)
    }

    fn emit(
        &mut self,
        key: ProcKey,
        kind: &'static str,
        time_ns: u64,
        tid: Option<u32>,
        network: Option<NetworkView>,
        exit: Option<ExitView>,
    ) -> anyhow::Result<()> {
        self.table.lookup(key);
        let Pipeline { table, stamper, sinks, .. } = self;
        let process = table.get(&key).context("process vanished from the table")?;
        let start_ns = table.start_ns(key);
        let clock = stamper.clock;
        let view = ProcessView::new(table, process, tid, &clock, start_ns);
        let head = stamper.head(kind, time_ns);
        sinks.write(&Record { head, process: Some(view), network, exit, sensor: None })?;
        Ok(())
    }

    fn emit_unknown_outcomes(&mut self, expired: Vec<PendingConnect>) -> anyhow::Result<()> {
        for pending in expired {
            let key = self.table.key(pending.pid, pending.start_time_ns);
            let network = NetworkView {
                protocol: pending.protocol,
                destination: pending.destination,
                result: "EINPROGRESS",
                errno: Some(115),
                outcome: Some("unknown"),
                connect_id: None,
                fd: None,
            };
            self.emit(key, "net.connect_result", Clock::boot_now_ns(), None, Some(network), None)?;
        }
        Ok(())
    }

    /// Turns growth in the kernel's loss counters into `sensor.loss` records.
    fn report_losses(&mut self, probes: &Probes) -> anyhow::Result<()> {
        let totals = probes.losses();
        for (index, &total) in totals.iter().enumerate() {
            let lost = total.saturating_sub(self.reported_losses[index]);
            if lost == 0 {
                continue;
            }
            self.reported_losses[index] = total;
            let kind = probes::loss_kind_name(index);
            log::error!("the kernel dropped {lost} {kind} events: the ring buffer was full");
            let head = self.stamper.head("sensor.loss", Clock::boot_now_ns());
            let sensor = json!({
                "stage": "kernel",
                "event_kind": kind,
                "lost": lost,
                "lost_total": total,
                "reason": "ring buffer full",
            });
            self.sinks.write(&Record { head, process: None, network: None, exit: None, sensor: Some(sensor) })?;
        }
        Ok(())
    }

    fn collect_garbage(&mut self) -> anyhow::Result<()> {
        let now = Clock::boot_now_ns();
        self.table.collect_garbage(now);
        let expired = self.pending.expire(now.saturating_sub(PENDING_CONNECT_TIMEOUT_NS));
        self.emit_unknown_outcomes(expired)
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
