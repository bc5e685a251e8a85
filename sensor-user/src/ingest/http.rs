//! The OTLP/HTTP receiver: `POST /v1/traces` and `POST /v1/logs`, in
//! protobuf or JSON, on hyper's HTTP/1 server.
//!
//! Every request gets a response, and every rejection is counted by reason:
//! 404 for another path, 405 for another method, 415 for another content
//! type or a compressed body, 413 for a body over `ingest.max_body_bytes`,
//! 400 for a body that does not decode, 503 when the daemon loop is
//! behind (OTLP exporters retry on it), 408 when the client is too slow.
//! Error bodies are the `google.rpc.Status` message OTLP specifies, in the
//! request's encoding.

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    body::{Bytes, Incoming},
    header::{HeaderValue, ALLOW, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prost::Message as _;
use tokio::sync::{mpsc, Semaphore};

use super::{
    forward::{Forwarded, Forwarder},
    otlp::{self, Encoding},
    peer, unix_now_ns, IngestConfig, IngestStats,
};
use crate::reconcile::report::{self, Report};

/// State shared by every connection task.
pub struct Shared {
    pub config: IngestConfig,
    pub procfs: PathBuf,
    pub stats: Arc<IngestStats>,
    pub reports: mpsc::Sender<Vec<Report>>,
    pub forwarder: Option<Forwarder>,
}

/// `google.rpc.Status`, the error body OTLP/HTTP specifies. The OTLP
/// crates do not ship it.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// The sender of one connection, as far as it is known.
#[derive(Debug, Default)]
struct PeerState {
    inode: Option<u64>,
    inode_looked_up: bool,
    pid: Option<u32>,
    /// Claimed pids already checked without success, so a connection is
    /// searched once per claim.
    tried: Vec<u32>,
    scanned: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Traces,
    Logs,
}

/// Accepts connections until the runtime stops.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let limit = Arc::new(Semaphore::new(shared.config.max_connections.max(1)));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors and similar: wait instead of spinning.
                log::warn!("ingest: accepting an OTLP connection failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            IngestStats::bump(&shared.stats.connections_rejected);
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let local = stream.local_addr().ok();
            let state = Arc::new(Mutex::new(PeerState::default()));
            let timeout = Duration::from_millis(shared.config.request_timeout_ms);
            let service = service_fn(move |request| handle(request, shared.clone(), peer, local, state.clone()));
            // Half-closing clients (shutdown of their write side after the
            // body) still get their response.
            let connection = http1::Builder::new()
                .half_close(true)
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                log::debug!("ingest: OTLP connection from {peer}: {error}");
            }
            drop(permit);
        });
    }
}

fn status_response(status: StatusCode, encoding: Option<Encoding>, message: &str) -> Response<Full<Bytes>> {
    // gRPC codes: INVALID_ARGUMENT 3, RESOURCE_EXHAUSTED 8, UNAVAILABLE 14,
    // UNIMPLEMENTED 12, NOT_FOUND 5, DEADLINE_EXCEEDED 4.
    let code = match status {
        StatusCode::BAD_REQUEST => 3,
        StatusCode::PAYLOAD_TOO_LARGE => 8,
        StatusCode::SERVICE_UNAVAILABLE => 14,
        StatusCode::NOT_FOUND => 5,
        StatusCode::REQUEST_TIMEOUT => 4,
        _ => 12,
    };
    let rpc = RpcStatus { code, message: message.to_owned() };
    let (body, content_type) = match encoding {
        Some(Encoding::Protobuf) => (rpc.encode_to_vec(), "application/x-protobuf"),
        _ => (serde_json::json!({ "code": code, "message": message }).to_string().into_bytes(), "application/json"),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn handle(
    request: Request<Incoming>,
    shared: Arc<Shared>,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    state: Arc<Mutex<PeerState>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let stats = &shared.stats;
    let signal = match request.uri().path() {
        "/v1/traces" => Signal::Traces,
        "/v1/logs" => Signal::Logs,
        other => {
            IngestStats::bump(&stats.rejected_not_found);
            return Ok(status_response(StatusCode::NOT_FOUND, None, &format!("no OTLP signal at {other}; use /v1/traces or /v1/logs")));
        }
    };
    if request.method() != Method::POST {
        IngestStats::bump(&stats.rejected_method_not_allowed);
        let mut response = status_response(StatusCode::METHOD_NOT_ALLOWED, None, "OTLP export requests are POST");
        response.headers_mut().insert(ALLOW, HeaderValue::from_static("POST"));
        return Ok(response);
    }
    let content_type = request.headers().get(CONTENT_TYPE).cloned();
    let Some(encoding) = content_type.as_ref().and_then(|v| v.to_str().ok()).and_then(Encoding::from_content_type) else {
        IngestStats::bump(&stats.rejected_unsupported_media_type);
        return Ok(status_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
            "unsupported content type; send application/x-protobuf or application/json",
        ));
    };
    let compressed = request.headers().get(CONTENT_ENCODING).and_then(|v| v.to_str().ok()).is_some_and(|v| !v.eq_ignore_ascii_case("identity"));
    if compressed {
        IngestStats::bump(&stats.rejected_unsupported_media_type);
        return Ok(status_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some(encoding),
            "compressed bodies are not supported; set the exporter's compression to none",
        ));
    }
    let max = shared.config.max_body_bytes;
    let declared = request.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max as u64) {
        IngestStats::bump(&stats.rejected_too_large);
        return Ok(status_response(StatusCode::PAYLOAD_TOO_LARGE, Some(encoding), &format!("body exceeds {max} bytes (ingest.max_body_bytes)")));
    }
    let timeout = Duration::from_millis(shared.config.request_timeout_ms);
    let body = match tokio::time::timeout(timeout, Limited::new(request.into_body(), max).collect()).await {
        Err(_) => {
            IngestStats::bump(&stats.rejected_timeout);
            return Ok(status_response(StatusCode::REQUEST_TIMEOUT, Some(encoding), "the body did not arrive in time"));
        }
        Ok(Err(error)) if error.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            IngestStats::bump(&stats.rejected_too_large);
            return Ok(status_response(StatusCode::PAYLOAD_TOO_LARGE, Some(encoding), &format!("body exceeds {max} bytes (ingest.max_body_bytes)")));
        }
        Ok(Err(error)) => {
            IngestStats::bump(&stats.rejected_bad_request);
            return Ok(status_response(StatusCode::BAD_REQUEST, Some(encoding), &format!("reading the body failed: {error}")));
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };

    let now = unix_now_ns();
    let decoded = match signal {
        Signal::Traces => otlp::decode_traces(&body, encoding).map(|request| {
            let spans: usize = request.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
            stats.spans.fetch_add(spans as u64, std::sync::atomic::Ordering::Relaxed);
            report::from_traces(&request)
        }),
        Signal::Logs => otlp::decode_logs(&body, encoding).map(|request| {
            let records: usize = request.resource_logs.iter().flat_map(|r| &r.scope_logs).map(|s| s.log_records.len()).sum();
            stats.log_records.fetch_add(records as u64, std::sync::atomic::Ordering::Relaxed);
            report::from_logs(&request, now)
        }),
    };
    let mut reports = match decoded {
        Ok(reports) => reports,
        Err(error) => {
            IngestStats::bump(&stats.rejected_bad_request);
            log::debug!("ingest: rejected an OTLP body from {peer}: {error}");
            return Ok(status_response(StatusCode::BAD_REQUEST, Some(encoding), &error.to_string()));
        }
    };

    if shared.config.peer_pid
        && !reports.is_empty()
        && let Some(local) = local
    {
        let sender = sender_pid(&shared, &state, peer, local, &reports).await;
        match sender {
            Some(_) => IngestStats::bump(&stats.peer_pid_found),
            None => IngestStats::bump(&stats.peer_pid_unknown),
        }
        for report in &mut reports {
            report.sender_pid = sender;
        }
    }
    if !reports.is_empty() {
        let count = reports.len() as u64;
        if shared.reports.try_send(reports).is_err() {
            IngestStats::bump(&stats.rejected_queue_full);
            return Ok(status_response(StatusCode::SERVICE_UNAVAILABLE, Some(encoding), "the sensor is behind; retry later"));
        }
        stats.reports.fetch_add(count, std::sync::atomic::Ordering::Relaxed);
    }
    if let (Some(forwarder), Some(content_type)) = (&shared.forwarder, content_type) {
        let path = if signal == Signal::Traces { "/v1/traces" } else { "/v1/logs" };
        forwarder.send(Forwarded { path, content_type, body });
    }
    IngestStats::bump(&stats.requests_accepted);
    // An empty export response encodes as zero protobuf bytes or `{}`.
    let (body, content_type) = match encoding {
        Encoding::Protobuf => (Bytes::new(), "application/x-protobuf"),
        Encoding::Json => (Bytes::from_static(b"{}"), "application/json"),
    };
    let mut response = Response::new(Full::new(body));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(response)
}

/// Finds the pid behind the connection, once per connection and claim.
async fn sender_pid(shared: &Shared, state: &Mutex<PeerState>, peer: SocketAddr, local: SocketAddr, reports: &[Report]) -> Option<u32> {
    let mut claimed: Vec<u32> = reports.iter().filter_map(|r| r.pid).collect();
    claimed.sort_unstable();
    claimed.dedup();
    let (inode, looked_up, scanned) = {
        let state = state.lock().ok()?;
        if state.pid.is_some() {
            return state.pid;
        }
        claimed.retain(|pid| !state.tried.contains(pid));
        (state.inode, state.inode_looked_up, state.scanned)
    };
    if looked_up && inode.is_none() || (scanned && claimed.is_empty()) {
        return None;
    }

    let procfs = shared.procfs.clone();
    let max = shared.config.peer_scan_max_processes;
    let search = claimed.clone();
    let found = tokio::task::spawn_blocking(move || {
        let inode = inode.or_else(|| peer::socket_inode(&procfs, peer, local));
        let pid = inode.and_then(|inode| peer::owner(&procfs, inode, &search, if scanned { 0 } else { max }));
        (inode, pid)
    })
    .await
    .ok();

    let mut state = state.lock().ok()?;
    state.inode_looked_up = true;
    if let Some((inode, pid)) = found {
        state.inode = inode;
        state.pid = pid;
    }
    state.tried.extend(claimed);
    state.scanned = true;
    state.pid
}
