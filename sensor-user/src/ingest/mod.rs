//! Pipeline stage 8 (first half): agents' own telemetry in, [`Report`]s out
//! to the daemon loop, and the same telemetry out to an upstream collector.
//!
//! - `http.rs`: an OTLP/HTTP receiver on loopback for `/v1/traces` and
//!   `/v1/logs`, protobuf and JSON, bounded in body size and connections.
//!   Every rejected request gets its HTTP status and is counted.
//! - `otlp.rs`: request bodies to the generated messages of
//!   `opentelemetry-proto`, with a lenient reader for OTLP JSON.
//! - `peer.rs`: which process sent a request, from the client's TCP port
//!   (`/proc/net/tcp` gives the socket inode, `/proc/PID/fd` its owner).
//! - `forward.rs`: each accepted body, unchanged, to `ingest.upstream`.
//! - `jsonl.rs`: JSON-lines files that agents write, tailed.
//!
//! Everything runs as tasks on the daemon's tokio runtime; `/proc` scans
//! and file reads run on its blocking pool so the event loop never waits
//! on them. Reports reach the loop through a bounded channel.

pub mod forward;
pub mod http;
pub mod jsonl;
pub mod otlp;
pub mod peer;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::reconcile::report::{FieldMap, Report};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Run the OTLP/HTTP receiver and the JSON-lines tailers.
    pub enabled: bool,
    /// Loopback address and port of the OTLP/HTTP receiver; port 0 picks a
    /// free port, reported in `sensor.start` as `ingest.listen`.
    pub listen: String,
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// Connections served at once; more are closed at accept and counted.
    pub max_connections: usize,
    /// Milliseconds a client has to send a request's headers and body.
    pub request_timeout_ms: u64,
    /// Batches of reports waiting for the daemon loop; when full, OTLP
    /// requests get 503 so the exporter retries.
    pub queue_capacity: usize,
    /// Find the pid that sent each OTLP connection from its TCP port.
    pub peer_pid: bool,
    /// Processes whose open files are searched at most per connection when
    /// the sender's claimed `process.pid` does not own the socket.
    pub peer_scan_max_processes: usize,
    /// Upstream OTLP/HTTP endpoint (`http://HOST:PORT`, optionally with a
    /// path prefix) that every accepted request is forwarded to unchanged;
    /// empty disables forwarding.
    pub upstream: String,
    /// Requests waiting to be forwarded; beyond it they are dropped and
    /// counted in `forward_dropped`.
    pub upstream_queue: usize,
    /// Milliseconds to connect to the upstream and receive its response.
    pub upstream_timeout_ms: u64,
    /// JSON-lines files that agents write, with their field mapping.
    pub jsonl: Vec<JsonlSource>,
    /// How often the JSON-lines files are checked for new lines, in
    /// milliseconds.
    pub jsonl_poll_ms: u64,
    /// Longest JSON line read; longer lines are skipped and counted.
    pub max_line_bytes: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:4318".into(),
            max_body_bytes: 4 << 20,
            max_connections: 64,
            request_timeout_ms: 10_000,
            queue_capacity: 1024,
            peer_pid: true,
            peer_scan_max_processes: 8192,
            upstream: String::new(),
            upstream_queue: 256,
            upstream_timeout_ms: 5_000,
            jsonl: Vec::new(),
            jsonl_poll_ms: 500,
            max_line_bytes: 1 << 20,
        }
    }
}

/// One JSON-lines file an agent writes.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JsonlSource {
    pub path: PathBuf,
    /// Read a file that exists at start-up from its beginning; by default
    /// only lines appended after start-up are read. A file created later
    /// is always read from its beginning.
    #[serde(default)]
    pub from_start: bool,
    /// Paths of the report fields in a line (dotted, into nested objects).
    #[serde(default)]
    pub fields: FieldMap,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("ingest.listen {listen:?} is not an IP address and port such as 127.0.0.1:4318")]
    Listen { listen: String },
    #[error("cannot listen for OTLP on {addr}: {source}; free the port or change ingest.listen (port 0 picks a free one)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("ingest.upstream {url:?} is not an http://HOST:PORT URL; only plain HTTP upstreams are supported")]
    Upstream { url: String },
}

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Counters of the ingest stage, written into `sensor.stop`.
        #[derive(Debug, Default)]
        pub struct IngestStats {
            $(pub $name: AtomicU64,)*
        }

        impl IngestStats {
            pub fn to_json(&self) -> serde_json::Value {
                serde_json::json!({ $(stringify!($name): self.$name.load(Ordering::Relaxed),)* })
            }
        }
    };
}

counters!(
    requests_accepted,
    rejected_bad_request,
    rejected_too_large,
    rejected_unsupported_media_type,
    rejected_not_found,
    rejected_method_not_allowed,
    rejected_queue_full,
    rejected_timeout,
    connections_rejected,
    spans,
    log_records,
    reports,
    peer_pid_found,
    peer_pid_unknown,
    forwarded,
    forward_dropped,
    forward_failed,
    forward_rejected,
    jsonl_lines,
    jsonl_invalid,
    jsonl_too_long,
    reports_dropped,
);

impl IngestStats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The running ingest stage.
pub struct Ingest {
    /// Reports for the daemon loop.
    pub reports: mpsc::Receiver<Vec<Report>>,
    pub stats: Arc<IngestStats>,
    /// Address the OTLP receiver listens on, once bound.
    pub listen: Option<SocketAddr>,
}

/// Starts the receiver, the forwarder and the tailers on the current
/// runtime. Problems that leave part of the stage off are returned with
/// the running rest, for the daemon to report as degraded.
pub async fn start(config: &IngestConfig, procfs: PathBuf) -> (Ingest, Vec<IngestError>) {
    let stats = Arc::new(IngestStats::default());
    let (sender, reports) = mpsc::channel(config.queue_capacity.max(1));
    let mut problems = Vec::new();
    let forwarder = if config.upstream.is_empty() {
        None
    } else {
        match forward::Upstream::parse(&config.upstream) {
            Some(upstream) => Some(forward::start(upstream, config, stats.clone())),
            None => {
                problems.push(IngestError::Upstream { url: config.upstream.clone() });
                None
            }
        }
    };
    let mut listen = None;
    match config.listen.parse::<SocketAddr>() {
        Err(_) => problems.push(IngestError::Listen { listen: config.listen.clone() }),
        Ok(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                listen = listener.local_addr().ok();
                let shared = http::Shared { config: config.clone(), procfs: procfs.clone(), stats: stats.clone(), reports: sender.clone(), forwarder };
                tokio::spawn(http::serve(listener, Arc::new(shared)));
            }
            Err(source) => problems.push(IngestError::Bind { addr, source }),
        },
    }
    if !config.jsonl.is_empty() {
        tokio::spawn(jsonl::run(config.clone(), stats.clone(), sender));
    }
    (Ingest { reports, stats, listen }, problems)
}

/// Wall-clock Unix nanoseconds, for reports that carry no time.
pub fn unix_now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Checks `[ingest]` values that parse but cannot work; `check` records a
/// problem under `section.key` when its condition is false.
pub fn validate(config: &IngestConfig, check: &mut dyn FnMut(&str, &str, bool, String)) {
    let listen = config.listen.parse::<SocketAddr>();
    check(
        "ingest",
        "listen",
        listen.as_ref().is_ok_and(|addr| addr.ip().is_loopback()),
        match &listen {
            Ok(addr) => format!("{addr} is not a loopback address; the receiver trusts only local senders (use 127.0.0.1 or [::1])"),
            Err(_) => format!("{:?} is not an IP address and port such as 127.0.0.1:4318", config.listen),
        },
    );
    check(
        "ingest",
        "max_body_bytes",
        (1024..=64 << 20).contains(&config.max_body_bytes),
        format!("{} is outside 1024..=67108864", config.max_body_bytes),
    );
    check("ingest", "max_connections", config.max_connections > 0, "must be greater than 0".to_owned());
    check("ingest", "queue_capacity", config.queue_capacity > 0, "must be greater than 0".to_owned());
    check("ingest", "upstream_queue", config.upstream_queue > 0, "must be greater than 0".to_owned());
    check("ingest", "request_timeout_ms", config.request_timeout_ms > 0, "must be greater than 0".to_owned());
    check("ingest", "upstream_timeout_ms", config.upstream_timeout_ms > 0, "must be greater than 0".to_owned());
    check(
        "ingest",
        "upstream",
        config.upstream.is_empty() || forward::Upstream::parse(&config.upstream).is_some(),
        format!("{:?} is not an http://HOST:PORT URL; only plain HTTP upstreams are supported", config.upstream),
    );
    check(
        "ingest",
        "jsonl_poll_ms",
        (10..=60_000).contains(&config.jsonl_poll_ms),
        format!("{} is outside 10..=60000", config.jsonl_poll_ms),
    );
    check("ingest", "max_line_bytes", config.max_line_bytes >= 256, format!("{} is below the minimum of 256", config.max_line_bytes));
    for source in &config.jsonl {
        check(
            "ingest",
            "jsonl",
            source.path.is_absolute(),
            format!("path {} is not absolute", source.path.display()),
        );
    }
}
