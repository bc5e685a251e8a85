//! Forwarding of accepted OTLP requests, unchanged, to `ingest.upstream`.
//!
//! The body, content type and signal path are sent as received, so the
//! sensor can sit in front of an existing collector. One task drains a
//! bounded queue over one kept-alive HTTP/1 connection. A request that
//! finds the queue full is dropped (`forward_dropped`); one the upstream
//! fails or rejects is not retried (`forward_failed`, `forward_rejected`).
//! Only plain `http://` upstreams are supported.

use std::{sync::Arc, time::Duration};

use http_body_util::{BodyExt as _, Full};
use hyper::{
    body::Bytes,
    client::conn::http1::{self, SendRequest},
    header::{HeaderValue, CONTENT_TYPE, HOST},
    Method, Request,
};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use super::{IngestConfig, IngestStats};

/// One request to forward.
pub struct Forwarded {
    pub path: &'static str,
    pub content_type: HeaderValue,
    pub body: Bytes,
}

/// An `http://HOST:PORT[/PREFIX]` upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash; `/v1/traces` is appended.
    pub prefix: String,
}

impl Upstream {
    pub fn parse(url: &str) -> Option<Upstream> {
        let rest = url.strip_prefix("http://")?;
        let (authority, prefix) = match rest.find('/') {
            Some(slash) => (&rest[..slash], rest[slash..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return None;
        }
        // A bracketed IPv6 literal keeps its colons inside the brackets.
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => (host, port.parse().ok()?),
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        (!host.is_empty()).then(|| Upstream { host: host.to_owned(), port, prefix: prefix.to_owned() })
    }
}

/// The sending side of the forwarding queue.
pub struct Forwarder {
    queue: mpsc::Sender<Forwarded>,
    stats: Arc<IngestStats>,
}

impl Forwarder {
    /// Queues a request, or counts it lost when the queue is full.
    pub fn send(&self, request: Forwarded) {
        if self.queue.try_send(request).is_err() {
            IngestStats::bump(&self.stats.forward_dropped);
        }
    }
}

pub fn start(upstream: Upstream, config: &IngestConfig, stats: Arc<IngestStats>) -> Forwarder {
    let (queue, receiver) = mpsc::channel(config.upstream_queue.max(1));
    let timeout = Duration::from_millis(config.upstream_timeout_ms);
    tokio::spawn(run(upstream, receiver, stats.clone(), timeout));
    Forwarder { queue, stats }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    #[error("connecting to the upstream {0} timed out")]
    ConnectTimeout(String),
    #[error("connecting to the upstream {0} failed: {1}")]
    Connect(String, std::io::Error),
    #[error("HTTP with the upstream {0} failed: {1}")]
    Http(String, hyper::Error),
    #[error("the upstream {0} timed out")]
    Timeout(String),
}

async fn connect(upstream: &Upstream, timeout: Duration) -> Result<SendRequest<Full<Bytes>>, ForwardError> {
    let name = format!("{}:{}", upstream.host, upstream.port);
    let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect((upstream.host.as_str(), upstream.port)))
        .await
        .map_err(|_| ForwardError::ConnectTimeout(name.clone()))?
        .map_err(|error| ForwardError::Connect(name.clone(), error))?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.map_err(|e| ForwardError::Http(name.clone(), e))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            log::debug!("ingest: upstream connection to {name} ended: {error}");
        }
    });
    Ok(sender)
}

/// Sends one request and returns the upstream's status; the export stage
/// uses it too.
pub(crate) async fn forward_one(
    upstream: &Upstream,
    sender: &mut Option<SendRequest<Full<Bytes>>>,
    request: Forwarded,
    timeout: Duration,
) -> Result<hyper::StatusCode, ForwardError> {
    let name = format!("{}:{}", upstream.host, upstream.port);
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        *sender = Some(connect(upstream, timeout).await?);
    }
    let Some(client) = sender.as_mut() else { return Err(ForwardError::ConnectTimeout(name)) };
    let mut http_request = Request::new(Full::new(request.body));
    *http_request.method_mut() = Method::POST;
    *http_request.uri_mut() = format!("{}{}", upstream.prefix, request.path).parse().unwrap_or_else(|_| hyper::Uri::from_static("/"));
    let headers = http_request.headers_mut();
    headers.insert(CONTENT_TYPE, request.content_type);
    if let Ok(host) = HeaderValue::from_str(&name) {
        headers.insert(HOST, host);
    }
    let exchange = async {
        client.ready().await?;
        let response = client.send_request(http_request).await?;
        let status = response.status();
        // Drain the response so the connection can carry the next request.
        response.into_body().collect().await?;
        Ok::<_, hyper::Error>(status)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => {
            *sender = None;
            Err(ForwardError::Timeout(name))
        }
        Ok(Err(error)) => {
            *sender = None;
            Err(ForwardError::Http(name, error))
        }
        Ok(Ok(status)) => Ok(status),
    }
}

async fn run(upstream: Upstream, mut queue: mpsc::Receiver<Forwarded>, stats: Arc<IngestStats>, timeout: Duration) {
    let mut sender = None;
    // Failures are logged once per run of failures, not per request.
    let mut failing = false;
    while let Some(request) = queue.recv().await {
        match forward_one(&upstream, &mut sender, request, timeout).await {
            Ok(status) if status.is_success() => {
                IngestStats::bump(&stats.forwarded);
                failing = false;
            }
            Ok(status) => {
                IngestStats::bump(&stats.forward_rejected);
                log::warn!("ingest: the upstream {}:{} responded {status}; the request is dropped", upstream.host, upstream.port);
            }
            Err(error) => {
                IngestStats::bump(&stats.forward_failed);
                if !failing {
                    log::warn!("ingest: {error}; requests are dropped until it recovers");
                }
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls() {
        let parsed = Upstream::parse("http://127.0.0.1:4319").unwrap();
        assert_eq!((parsed.host.as_str(), parsed.port, parsed.prefix.as_str()), ("127.0.0.1", 4319, ""));
        let parsed = Upstream::parse("http://collector/otlp/").unwrap();
        assert_eq!((parsed.host.as_str(), parsed.port, parsed.prefix.as_str()), ("collector", 80, "/otlp"));
        let parsed = Upstream::parse("http://[::1]:4319").unwrap();
        assert_eq!((parsed.host.as_str(), parsed.port), ("::1", 4319));
        assert_eq!(Upstream::parse("https://collector:4318"), None);
        assert_eq!(Upstream::parse("http://"), None);
        assert_eq!(Upstream::parse("http://host:notaport"), None);
    }
}
