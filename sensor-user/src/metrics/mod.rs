//! The sensor's own telemetry: a Prometheus text endpoint (`/metrics`) and
//! health and readiness endpoints for probes, on `[metrics] listen`.
//!
//! The counters are the plain integers the single-threaded pipeline keeps
//! anyway (events received, records written, table sizes); nothing is
//! updated per event for the endpoint's sake. A request is passed to the
//! daemon loop over a small channel, and the loop renders a snapshot
//! between batches. So `/healthz` answering proves the loop is turning:
//! when it does not answer within [`LOOP_TIMEOUT`], the endpoint says 503.
//! Counters kept outside the loop (the export task's, the policy reloads)
//! are atomics read at the same time.
//!
//! Every label takes values from a fixed set (event kinds, stages, table
//! names); none carries a pid, path or pod.

mod http;

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::{
    export::ExportQueue,
    ingest::Ingest,
    pipeline::Pipeline,
    probes::{self, Probes},
};

pub use http::serve;

/// How long an endpoint waits for the daemon loop before it returns 503.
pub const LOOP_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics`, `/healthz` and `/readyz`.
    pub enabled: bool,
    /// Address and port to listen on. The default is loopback; a
    /// Prometheus on another host needs the node's address here, and then
    /// anyone who can reach that port can read the counters.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { enabled: true, listen: "127.0.0.1:9464".to_owned() }
    }
}

pub fn validate(config: &MetricsConfig, check: &mut dyn FnMut(&str, &str, bool, String)) {
    check(
        "metrics",
        "listen",
        config.listen.parse::<SocketAddr>().is_ok(),
        format!("{:?} is not an IP address and port such as 127.0.0.1:9464", config.listen),
    );
}

static POLICY_RELOADS_OK: AtomicU64 = AtomicU64::new(0);
static POLICY_RELOADS_FAILED: AtomicU64 = AtomicU64::new(0);

/// Counts a policy reload; `ok` is false when the new policy was refused
/// and the old one kept.
pub fn policy_reloaded(ok: bool) {
    let counter = if ok { &POLICY_RELOADS_OK } else { &POLICY_RELOADS_FAILED };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The question an HTTP request passes to the daemon loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    Metrics,
    Health,
    Ready,
}

/// One question to the daemon loop and where its answer goes.
pub struct Request {
    pub query: Query,
    /// Whether the answer is good (for health and readiness) and its text.
    pub reply: oneshot::Sender<(bool, String)>,
}

/// The loop's end of the metrics channel.
pub type Requests = mpsc::Receiver<Request>;

/// Answers one request from the loop's state.
pub fn answer(request: Request, pipeline: &Pipeline, probes: &Probes, ingest: Option<&Ingest>) {
    let reply = match request.query {
        Query::Health => (true, "ok: the daemon loop is running\n".to_owned()),
        Query::Ready => {
            // The loop runs only after the sinks opened; probes are ready
            // when at least one hook is attached.
            let attached = probes.report.attached.len();
            let degraded = probes.report.degraded.len();
            (attached > 0, format!("hooks attached: {attached}, degraded: {degraded}; evidence sinks open\n"))
        }
        Query::Metrics => (true, render(pipeline, probes, ingest)),
    };
    let _ = request.reply.send(reply);
}

struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (index, (key, label)) in labels.iter().enumerate() {
                if index > 0 {
                    self.0.push(',');
                }
                // Label values come from fixed sets of plain names, so
                // nothing needs escaping.
                let _ = write!(self.0, "{key}=\"{label}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// Renders every metric in the Prometheus text format.
pub fn render(pipeline: &Pipeline, probes: &Probes, ingest: Option<&Ingest>) -> String {
    let mut out = Text(String::with_capacity(8192));
    out.family("agent_sensor_events_total", "counter", "Kernel events received, by kind.");
    for (index, count) in pipeline.received.iter().enumerate() {
        out.sample("agent_sensor_events_total", &[("kind", probes::loss_kind_name(index))], count);
    }
    out.family(
        "agent_sensor_tls_uncopied_bytes_total",
        "counter",
        "TLS plaintext bytes the kernel did not copy, by reason.",
    );
    out.sample("agent_sensor_tls_uncopied_bytes_total", &[("reason", "ignored_response")], pipeline.llm.stats().skipped_bytes);
    out.sample("agent_sensor_tls_uncopied_bytes_total", &[("reason", "ring_buffer_half_full")], pipeline.tls_yielded_bytes);
    out.single(
        "agent_sensor_decode_errors_total",
        "counter",
        "Ring buffer records that did not decode.",
        pipeline.decode_errors,
    );

    out.family(
        "agent_sensor_lost_total",
        "counter",
        "Events or records lost, by pipeline stage, event kind and reason.",
    );
    for (index, lost) in probes.losses().iter().enumerate() {
        let kind = probes::loss_kind_name(index);
        out.sample("agent_sensor_lost_total", &[("stage", "kernel"), ("kind", kind), ("reason", "ring_buffer_full")], lost);
    }
    // A failed evidence write stops the daemon instead of dropping a
    // record, so the sink stage has nothing to count yet.
    out.sample("agent_sensor_lost_total", &[("stage", "sink"), ("kind", "record"), ("reason", "write_failed")], 0);
    let export = pipeline.sinks.export();
    let export_losses = export.map(ExportQueue::losses).unwrap_or([
        ("queue", "queue_full", 0),
        ("export", "buffer_full", 0),
        ("export", "rejected", 0),
        ("export", "corrupt", 0),
    ]);
    for (stage, reason, lost) in export_losses {
        out.sample("agent_sensor_lost_total", &[("stage", stage), ("kind", "record"), ("reason", reason)], lost);
    }

    out.single(
        "agent_sensor_records_written_total",
        "counter",
        "Evidence records written, checkpoints included.",
        pipeline.sinks.records_written,
    );
    out.single(
        "agent_sensor_checkpoints_written_total",
        "counter",
        "Evidence checkpoints written.",
        pipeline.sinks.checkpoints_written,
    );
    out.family("agent_sensor_policy_reloads_total", "counter", "Policy reloads, by result.");
    out.sample("agent_sensor_policy_reloads_total", &[("result", "ok")], POLICY_RELOADS_OK.load(Ordering::Relaxed));
    out.sample("agent_sensor_policy_reloads_total", &[("result", "failed")], POLICY_RELOADS_FAILED.load(Ordering::Relaxed));

    out.family("agent_sensor_queue_depth", "gauge", "Items waiting in the sensor's internal queues.");
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    out.sample("agent_sensor_queue_depth", &[("queue", "export_channel")], export.map_or(0, ExportQueue::depth));
    out.sample("agent_sensor_queue_depth", &[("queue", "export_buffer")], export.map_or(0, |e| load(&e.stats.buffer_records)));
    let ingest_depth = ingest.map_or(0, |i| i.reports.len());
    out.sample("agent_sensor_queue_depth", &[("queue", "ingest_reports")], ingest_depth);
    out.single(
        "agent_sensor_export_buffer_bytes",
        "gauge",
        "Unacknowledged bytes in the export buffer on disk.",
        export.map_or(0, |e| load(&e.stats.buffer_bytes)),
    );
    out.single(
        "agent_sensor_export_records_total",
        "counter",
        "Evidence records the collector acknowledged.",
        export.map_or(0, |e| load(&e.stats.records_sent)),
    );
    out.family("agent_sensor_export_requests_total", "counter", "Export requests, by result.");
    for (result, value) in [
        ("ok", export.map_or(0, |e| load(&e.stats.requests_ok))),
        ("retried", export.map_or(0, |e| load(&e.stats.requests_failed))),
        ("rejected", export.map_or(0, |e| load(&e.stats.requests_rejected))),
    ] {
        out.sample("agent_sensor_export_requests_total", &[("result", result)], value);
    }

    out.family("agent_sensor_table_entries", "gauge", "Entries in the sensor's in-memory tables and caches.");
    for (table, entries) in [
        ("processes", pipeline.table.len()),
        ("exe_hashes", pipeline.table.exe_cache_len()),
        ("dns_names", pipeline.dns.len()),
        ("connections", pipeline.connections.len()),
        ("pending_connects", pipeline.pending.len()),
        ("llm_streams", pipeline.llm.len()),
    ] {
        out.sample("agent_sensor_table_entries", &[("table", table)], entries);
    }
    if let Some(ingest) = ingest {
        out.family("agent_sensor_ingest_total", "counter", "The OTLP receiver's counters, by name.");
        if let serde_json::Value::Object(counters) = ingest.stats.to_json() {
            for (name, value) in &counters {
                out.sample("agent_sensor_ingest_total", &[("counter", name)], value);
            }
        }
    }

    let usage = ProcessUsage::read();
    out.single("process_cpu_seconds_total", "counter", "CPU time of the sensor process, user plus system, in seconds.", usage.cpu_seconds);
    out.single("process_resident_memory_bytes", "gauge", "Resident memory of the sensor process (VmRSS).", usage.rss_bytes);
    out.single(
        "agent_sensor_resident_memory_peak_bytes",
        "gauge",
        "Peak resident memory of the sensor process (VmHWM).",
        usage.hwm_bytes,
    );
    out.family("agent_sensor_build_info", "gauge", "The sensor's version.");
    out.sample("agent_sensor_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);
    out.0
}

/// The sensor's CPU time and memory, from `/proc/self`.
#[derive(Debug, Default, PartialEq)]
pub struct ProcessUsage {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub hwm_bytes: u64,
}

impl ProcessUsage {
    pub fn read() -> ProcessUsage {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Self::parse(&stat, &status, ticks)
    }

    fn parse(stat: &str, status: &str, ticks_per_second: f64) -> ProcessUsage {
        // The command name in parentheses may hold spaces; fields are
        // counted after its closing parenthesis, where utime and stime are
        // the 12th and 13th.
        let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
        let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
        let kib = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|value| value.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        ProcessUsage { cpu_seconds: ticks / ticks_per_second, rss_bytes: kib("VmRSS:"), hwm_bytes: kib("VmHWM:") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_usage_from_proc_text() {
        let stat = "42 (agent sensor) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 1000 1000 200";
        let status = "Name:\tagent-sensor\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        let usage = ProcessUsage::parse(stat, status, 100.0);
        assert_eq!(usage, ProcessUsage { cpu_seconds: 3.0, rss_bytes: 10 << 20, hwm_bytes: 20 << 20 });
        assert_eq!(ProcessUsage::parse("garbage", "", 100.0), ProcessUsage::default());
    }

    #[test]
    fn policy_reloads_count_by_result() {
        let before = (POLICY_RELOADS_OK.load(Ordering::Relaxed), POLICY_RELOADS_FAILED.load(Ordering::Relaxed));
        policy_reloaded(true);
        policy_reloaded(false);
        policy_reloaded(true);
        let after = (POLICY_RELOADS_OK.load(Ordering::Relaxed), POLICY_RELOADS_FAILED.load(Ordering::Relaxed));
        assert_eq!((after.0 - before.0, after.1 - before.1), (2, 1));
    }

    #[test]
    fn listen_must_be_an_address() {
        let mut problems = Vec::new();
        let mut check = |section: &str, key: &str, ok: bool, message: String| {
            if !ok {
                problems.push(format!("{section}.{key}: {message}"));
            }
        };
        validate(&MetricsConfig { enabled: true, listen: "localhost".into() }, &mut check);
        validate(&MetricsConfig::default(), &mut check);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("metrics.listen"));
    }
}
