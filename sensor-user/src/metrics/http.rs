//! The HTTP side of the metrics endpoint: `GET /metrics`, `/healthz` and
//! `/readyz` on hyper's HTTP/1 server, each answered by the daemon loop.

use std::{convert::Infallible, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::{HeaderValue, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Method, Request as HttpRequest, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{Query, Request, LOOP_TIMEOUT};

/// Scrapers served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 8;

/// Accepts connections until the runtime stops.
pub async fn serve(listener: tokio::net::TcpListener, loop_requests: mpsc::Sender<Request>) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                log::warn!("metrics: accepting a connection failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else { continue };
        let loop_requests = loop_requests.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(request, loop_requests.clone()));
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                log::debug!("metrics: connection ended: {error}");
            }
            drop(permit);
        });
    }
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn handle(request: HttpRequest<Incoming>, loop_requests: mpsc::Sender<Request>) -> Result<Response<Full<Bytes>>, Infallible> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    let query = match request.uri().path() {
        "/metrics" => Query::Metrics,
        "/healthz" => Query::Health,
        "/readyz" => Query::Ready,
        _ => return Ok(text(StatusCode::NOT_FOUND, "not found: try /metrics, /healthz or /readyz\n".to_owned(), PLAIN)),
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".to_owned(), PLAIN));
    }
    let (reply, answer) = oneshot::channel();
    let asked = loop_requests.try_send(Request { query, reply }).is_ok();
    let answer = match asked {
        true => tokio::time::timeout(LOOP_TIMEOUT, answer).await.ok().and_then(Result::ok),
        false => None,
    };
    Ok(match answer {
        Some((true, body)) if query == Query::Metrics => text(StatusCode::OK, body, "text/plain; version=0.0.4; charset=utf-8"),
        Some((true, body)) => text(StatusCode::OK, body, PLAIN),
        Some((false, body)) => text(StatusCode::SERVICE_UNAVAILABLE, body, PLAIN),
        None => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the daemon loop did not answer within {} s\n", LOOP_TIMEOUT.as_secs()),
            PLAIN,
        ),
    })
}
