//! Pipeline stage 11: evidence lines in, OTLP logs out to a collector
//! (`[export.otlp]`).
//!
//! The sinks hand every sealed line, checkpoints included, to a bounded
//! channel and never wait on it: a full channel drops the line for export
//! and counts it (stage `queue`). A task on the daemon's runtime appends
//! what arrives to the on-disk buffer (`buffer.rs`), and sends it in
//! batches as OTLP/HTTP protobuf `ExportLogsServiceRequest`s over the
//! ingest stage's HTTP/1 client. A batch leaves the buffer only after a 2xx;
//! failures are retried with a doubling backoff. When the buffer holds
//! `buffer_max_bytes` of unacknowledged lines, new lines are dropped and
//! counted (stage `export`). The daemon turns both counts into
//! `sensor.loss` records, which the evidence file keeps whatever happens
//! to the export.
//!
//! Each log record's body is the evidence line exactly as written, and its
//! attributes carry the seq and the chain hash, so a remote store can check
//! the hash chain and the signed checkpoints with `agent-sensor verify`
//! semantics. `docs/export.md` describes the format.

pub mod buffer;

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use http_body_util::Full;
use hyper::{body::Bytes, client::conn::http1::SendRequest, header::HeaderValue};
use opentelemetry_proto::tonic::{
    collector::logs::v1::ExportLogsServiceRequest,
    common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    resource::v1::Resource,
};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::{sync::mpsc, task::JoinHandle, time::Instant};

use crate::{
    evidence::chain,
    ingest::forward::{self, Forwarded, Upstream},
    pipeline::Pipeline,
};
use buffer::{Buffer, BufferError, Frame, Pushed};

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    pub otlp: OtlpExportConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpExportConfig {
    /// OTLP/HTTP logs endpoint, such as `http://127.0.0.1:4318/v1/logs`;
    /// `/v1/logs` is used when the URL has no path. Empty disables export.
    /// Only plain `http://` is supported: send to a collector on this node.
    pub endpoint: String,
    /// Maximum records in one request.
    pub batch_max_records: usize,
    /// Maximum time in milliseconds a record waits in the buffer before a
    /// request with fewer than `batch_max_records` is sent. Retries are
    /// also checked at this interval.
    pub flush_interval_ms: u64,
    /// Directory of the on-disk buffer; it survives restarts.
    pub buffer_dir: PathBuf,
    /// Maximum unacknowledged bytes in the buffer. Beyond it, new records
    /// are dropped for export and counted. Disk use can exceed it by one
    /// segment: an eighth of it, at least 4 KiB and at most 4 MiB.
    pub buffer_max_bytes: u64,
    /// First wait after a failed request, in milliseconds; doubled after
    /// each further failure up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Milliseconds to connect and get a response before the request
    /// counts as failed.
    pub timeout_ms: u64,
    /// Records waiting between the pipeline and the export task; beyond it
    /// they are dropped for export and counted (stage `queue`).
    pub queue_capacity: usize,
}

impl Default for OtlpExportConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            batch_max_records: 512,
            flush_interval_ms: 1000,
            buffer_dir: PathBuf::from("/var/lib/agent-sensor/export"),
            buffer_max_bytes: 256 << 20,
            retry_initial_ms: 1000,
            retry_max_ms: 30_000,
            timeout_ms: 5000,
            queue_capacity: 8192,
        }
    }
}

/// Smallest `export.otlp.buffer_max_bytes`: a few large records.
pub const BUFFER_MIN_BYTES: u64 = 16 << 10;

impl OtlpExportConfig {
    pub fn enabled(&self) -> bool {
        !self.endpoint.is_empty()
    }

    fn upstream(&self) -> Option<Upstream> {
        let mut upstream = Upstream::parse(&self.endpoint)?;
        if upstream.prefix.is_empty() {
            "/v1/logs".clone_into(&mut upstream.prefix);
        }
        Some(upstream)
    }
}

pub fn validate(config: &ExportConfig, check: &mut dyn FnMut(&str, &str, bool, String)) {
    let otlp = &config.otlp;
    const SECTION: &str = "export.otlp";
    check(
        SECTION,
        "endpoint",
        !otlp.enabled() || otlp.upstream().is_some(),
        format!("{:?} is not an http://HOST:PORT[/PATH] URL", otlp.endpoint),
    );
    check(SECTION, "batch_max_records", otlp.batch_max_records > 0, "must be greater than 0".to_owned());
    check(SECTION, "flush_interval_ms", otlp.flush_interval_ms > 0, "must be greater than 0".to_owned());
    check(SECTION, "queue_capacity", otlp.queue_capacity > 0, "must be greater than 0".to_owned());
    check(SECTION, "timeout_ms", otlp.timeout_ms > 0, "must be greater than 0".to_owned());
    check(
        SECTION,
        "buffer_max_bytes",
        otlp.buffer_max_bytes >= BUFFER_MIN_BYTES,
        format!("{} is below the minimum of {BUFFER_MIN_BYTES}", otlp.buffer_max_bytes),
    );
    check(
        SECTION,
        "retry_initial_ms",
        (1..=otlp.retry_max_ms).contains(&otlp.retry_initial_ms),
        format!("{} is outside 1..=retry_max_ms ({})", otlp.retry_initial_ms, otlp.retry_max_ms),
    );
    check(
        SECTION,
        "buffer_dir",
        !otlp.enabled() || !otlp.buffer_dir.as_os_str().is_empty(),
        "export needs a buffer directory".to_owned(),
    );
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("export.otlp.endpoint {0:?} is not an http://HOST:PORT[/PATH] URL")]
    Endpoint(String),
    #[error("opening the export buffer")]
    Buffer(#[from] BufferError),
}

/// Counters the export task keeps; the daemon and the metrics endpoint
/// read them.
#[derive(Debug, Default)]
pub struct ExportStats {
    pub records_sent: AtomicU64,
    pub requests_ok: AtomicU64,
    /// Requests that failed or got a retryable status; the batch stays.
    pub requests_failed: AtomicU64,
    /// Requests refused with a status that retrying cannot fix.
    pub requests_rejected: AtomicU64,
    pub lost_buffer_full: AtomicU64,
    pub lost_rejected: AtomicU64,
    pub lost_corrupt: AtomicU64,
    pub buffer_records: AtomicU64,
    pub buffer_bytes: AtomicU64,
}

fn add(counter: &AtomicU64, value: u64) {
    counter.fetch_add(value, Ordering::Relaxed);
}

/// One sealed evidence line on its way to the export task.
struct Entry {
    seq: u64,
    /// The line with its newline.
    line: Vec<u8>,
}

/// The pipeline's end of the export channel, owned by the sinks.
pub struct ExportQueue {
    sender: mpsc::Sender<Entry>,
    capacity: usize,
    /// Lines dropped because the channel was full.
    pub dropped: u64,
    pub stats: Arc<ExportStats>,
    /// Totals already reported in `sensor.loss` records.
    reported: [u64; 4],
}

impl ExportQueue {
    /// Hands a sealed line to the export task without waiting.
    pub fn offer(&mut self, seq: u64, line: &[u8]) {
        if self.sender.try_send(Entry { seq, line: line.to_vec() }).is_err() {
            self.dropped += 1;
        }
    }

    /// Lines waiting in the channel.
    pub fn depth(&self) -> usize {
        self.capacity - self.sender.capacity()
    }

    /// Loss totals by cause: (stage, reason, total).
    pub fn losses(&self) -> [(&'static str, &'static str, u64); 4] {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        [
            ("queue", "queue_full", self.dropped),
            ("export", "buffer_full", load(&self.stats.lost_buffer_full)),
            ("export", "rejected", load(&self.stats.lost_rejected)),
            ("export", "corrupt", load(&self.stats.lost_corrupt)),
        ]
    }
}

/// The export stage's running parts.
pub struct Export {
    pub queue: ExportQueue,
    pub task: JoinHandle<()>,
}

/// Opens the buffer and starts the export task on the current runtime.
pub fn start(config: &OtlpExportConfig, host_name: &str) -> Result<Export, ExportError> {
    let upstream = config.upstream().ok_or_else(|| ExportError::Endpoint(config.endpoint.clone()))?;
    let buffer = Buffer::open(&config.buffer_dir, config.buffer_max_bytes)?;
    if buffer.pending_frames() > 0 {
        log::info!(
            "export: {} records from an earlier run wait in {} and are sent first",
            buffer.pending_frames(),
            config.buffer_dir.display()
        );
    }
    let stats = Arc::new(ExportStats::default());
    let (sender, receiver) = mpsc::channel(config.queue_capacity);
    let exporter = Exporter {
        resource: resource(host_name),
        upstream,
        config: config.clone(),
        buffer,
        client: None,
        stats: stats.clone(),
        backoff: Duration::from_millis(config.retry_initial_ms),
        retry_at: None,
        failing: false,
        reported_corrupt: 0,
    };
    let task = tokio::spawn(exporter.run(receiver));
    Ok(Export { queue: ExportQueue { sender, capacity: config.queue_capacity, dropped: 0, stats, reported: [0; 4] }, task })
}

fn string_value(value: String) -> Option<AnyValue> {
    Some(AnyValue { value: Some(any_value::Value::StringValue(value)) })
}

fn attribute(key: &str, value: Option<AnyValue>) -> KeyValue {
    KeyValue { key: key.to_owned(), value, ..Default::default() }
}

fn resource(host_name: &str) -> Resource {
    Resource {
        attributes: vec![
            attribute("service.name", string_value("agent-sensor".to_owned())),
            attribute("service.version", string_value(env!("CARGO_PKG_VERSION").to_owned())),
            attribute("host.name", string_value(host_name.to_owned())),
        ],
        ..Default::default()
    }
}

/// Finds a member's raw value among the first bytes of a line, where the
/// record head puts `seq`, `time_unix_nano` and `kind`.
fn head_value<'a>(line: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let head = &line[..line.len().min(512)];
    let key = format!("\"{name}\":");
    let start = head.windows(key.len()).position(|w| w == key.as_bytes())? + key.len();
    let rest = &head[start..];
    if let Some(text) = rest.strip_prefix(b"\"") {
        return Some(&text[..text.iter().position(|&b| b == b'"')?]);
    }
    Some(&rest[..rest.iter().position(|b| !b.is_ascii_digit())?])
}

/// Builds one log record: the line as the body, seq, hash and kind as
/// attributes.
fn log_record(frame: Frame, now_ns: u64) -> LogRecord {
    // The chain suffix has a fixed layout: the hash's 64 digits end three
    // bytes before the line does.
    // NOTE: true of native lines only. An OCSF evidence file nests the
    // integrity object in `unmapped`, so its exported logs carry no hash or
    // kind attribute. The body is still the exact line, which verifies.
    let hash = frame
        .line
        .len()
        .checked_sub(3 + 64)
        .and_then(|start| chain::parse_hex(&frame.line[start..start + 64]))
        .map(|hash| chain::hex_string(&hash));
    let kind = head_value(&frame.line, "kind").map(|kind| String::from_utf8_lossy(kind).into_owned());
    let time = head_value(&frame.line, "time_unix_nano").and_then(|t| std::str::from_utf8(t).ok()?.parse().ok());
    let mut attributes = vec![attribute("agent_sensor.seq", Some(AnyValue { value: Some(any_value::Value::IntValue(frame.seq as i64)) }))];
    if let Some(hash) = hash {
        attributes.push(attribute("agent_sensor.hash", string_value(hash)));
    }
    if let Some(kind) = &kind {
        attributes.push(attribute("agent_sensor.kind", string_value(kind.clone())));
    }
    LogRecord {
        time_unix_nano: time.unwrap_or(0),
        observed_time_unix_nano: now_ns,
        event_name: kind.unwrap_or_default(),
        // Evidence lines are serde_json output, so always UTF-8.
        body: string_value(String::from_utf8_lossy(&frame.line).into_owned()),
        attributes,
        ..Default::default()
    }
}

/// What a request's outcome means for its batch.
enum Outcome {
    Acknowledged,
    Retry(String),
    Rejected(String),
}

struct Exporter {
    resource: Resource,
    upstream: Upstream,
    config: OtlpExportConfig,
    buffer: Buffer,
    client: Option<SendRequest<Full<Bytes>>>,
    stats: Arc<ExportStats>,
    backoff: Duration,
    retry_at: Option<Instant>,
    /// Failures are logged once per run of failures.
    failing: bool,
    reported_corrupt: u64,
}

impl Exporter {
    async fn run(mut self, mut receiver: mpsc::Receiver<Entry>) {
        let mut ticker = tokio::time::interval(Duration::from_millis(self.config.flush_interval_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                entry = receiver.recv() => {
                    let Some(entry) = entry else { break };
                    self.store(entry);
                    while let Ok(entry) = receiver.try_recv() {
                        self.store(entry);
                    }
                    if self.buffer.pending_frames() >= self.config.batch_max_records as u64 {
                        self.send_due().await;
                    }
                }
                _ = ticker.tick() => self.send_due().await,
            }
        }
        // The channel closes at shutdown: whatever is still buffered stays
        // on disk for the next run, after one last attempt.
        self.send_due().await;
        if let Err(error) = self.buffer.flush() {
            log::error!("export: {}; records still in the channel are lost for export", crate::probes::error_chain(&error));
        }
    }

    fn store(&mut self, entry: Entry) {
        match self.buffer.push(entry.seq, &entry.line) {
            Ok(Pushed::Stored) => {}
            Ok(Pushed::Full) => add(&self.stats.lost_buffer_full, 1),
            Err(error) => {
                add(&self.stats.lost_buffer_full, 1);
                log::error!("export: {}; the record is lost for export", crate::probes::error_chain(&error));
            }
        }
        self.publish();
    }

    fn publish(&mut self) {
        self.stats.buffer_records.store(self.buffer.pending_frames(), Ordering::Relaxed);
        self.stats.buffer_bytes.store(self.buffer.pending_bytes(), Ordering::Relaxed);
        let corrupt = self.buffer.corrupt_frames;
        add(&self.stats.lost_corrupt, corrupt - self.reported_corrupt);
        self.reported_corrupt = corrupt;
    }

    /// Sends batches until the buffer is empty or a request fails, unless
    /// a backoff is running.
    async fn send_due(&mut self) {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        while self.buffer.pending_frames() > 0 {
            let (frames, position) = match self.buffer.read_batch(self.config.batch_max_records) {
                Ok(batch) => batch,
                Err(error) => {
                    log::error!("export: {}", crate::probes::error_chain(&error));
                    self.fail();
                    break;
                }
            };
            let count = frames.len() as u64;
            if count == 0 {
                // Only unreadable frames were left: step over them.
                if let Err(error) = self.buffer.acknowledge(position, self.buffer.pending_frames()) {
                    log::error!("export: {}", crate::probes::error_chain(&error));
                }
                break;
            }
            match self.post(frames).await {
                Outcome::Acknowledged => {
                    add(&self.stats.requests_ok, 1);
                    add(&self.stats.records_sent, count);
                    if self.failing {
                        log::info!("export: the collector accepts records again");
                    }
                    self.failing = false;
                    self.retry_at = None;
                    self.backoff = Duration::from_millis(self.config.retry_initial_ms);
                }
                Outcome::Rejected(reason) => {
                    add(&self.stats.requests_rejected, 1);
                    add(&self.stats.lost_rejected, count);
                    log::error!("export: {reason}; {count} records are dropped for export");
                }
                Outcome::Retry(reason) => {
                    add(&self.stats.requests_failed, 1);
                    if !self.failing {
                        log::warn!("export: {reason}; records stay buffered and the request is retried");
                    }
                    self.fail();
                    break;
                }
            }
            if let Err(error) = self.buffer.acknowledge(position, count) {
                log::error!("export: {}", crate::probes::error_chain(&error));
                self.fail();
                break;
            }
            self.publish();
        }
        self.publish();
    }

    fn fail(&mut self) {
        self.failing = true;
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(Duration::from_millis(self.config.retry_max_ms));
    }

    async fn post(&mut self, frames: Vec<Frame>) -> Outcome {
        let now_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(self.resource.clone()),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "agent-sensor".to_owned(),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                        ..Default::default()
                    }),
                    log_records: frames.into_iter().map(|frame| log_record(frame, now_ns)).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let body = Forwarded {
            path: "",
            content_type: HeaderValue::from_static("application/x-protobuf"),
            body: Bytes::from(request.encode_to_vec()),
        };
        let timeout = Duration::from_millis(self.config.timeout_ms);
        match forward::forward_one(&self.upstream, &mut self.client, body, timeout).await {
            Ok(status) if status.is_success() => Outcome::Acknowledged,
            // OTLP/HTTP: these are the statuses a client retries.
            Ok(status) if matches!(status.as_u16(), 408 | 429 | 502 | 503 | 504) => {
                Outcome::Retry(format!("the collector responded {status}"))
            }
            Ok(status) => Outcome::Rejected(format!("the collector refused a request with {status}")),
            Err(error) => Outcome::Retry(error.to_string()),
        }
    }
}

/// Turns growth in the export loss counters into `sensor.loss` records.
pub fn report_losses(pipeline: &mut Pipeline) -> anyhow::Result<()> {
    let Some(queue) = pipeline.sinks.export_mut() else { return Ok(()) };
    let mut new = Vec::new();
    for (index, (stage, reason, total)) in queue.losses().into_iter().enumerate() {
        let lost = total.saturating_sub(queue.reported[index]);
        if lost > 0 {
            queue.reported[index] = total;
            new.push((stage, reason, lost, total));
        }
    }
    for (stage, reason, lost, total) in new {
        log::error!("export: {lost} evidence records were not exported ({stage}: {reason}); the evidence file has them");
        pipeline.emit_sensor("sensor.loss", json!({ "stage": stage, "reason": reason, "lost": lost, "lost_total": total }))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_record_carries_line_seq_and_hash() {
        let hash = "ab".repeat(32);
        let line = format!(
            "{{\"schema\":\"agent-sensor/0.1\",\"id\":\"x\",\"seq\":7,\"time\":\"t\",\"time_unix_nano\":123,\"kind\":\"process.exec\",\
             \"integrity\":{{\"prev_hash\":\"{}\",\"hash\":\"{hash}\"}}}}",
            "0".repeat(64)
        );
        let record = log_record(Frame { seq: 7, line: line.clone().into_bytes() }, 5);
        assert_eq!(record.body, string_value(line));
        assert_eq!(record.time_unix_nano, 123);
        assert_eq!(record.event_name, "process.exec");
        let find = |key: &str| record.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.clone());
        assert_eq!(find("agent_sensor.seq"), Some(AnyValue { value: Some(any_value::Value::IntValue(7)) }));
        assert_eq!(find("agent_sensor.hash"), string_value(hash));
    }

    #[test]
    fn endpoint_without_path_gets_logs_path() {
        let config = OtlpExportConfig { endpoint: "http://127.0.0.1:4318".into(), ..Default::default() };
        assert_eq!(config.upstream().unwrap().prefix, "/v1/logs");
        let config = OtlpExportConfig { endpoint: "https://collector".into(), ..Default::default() };
        assert!(config.upstream().is_none());
    }
}
