//! A minimal OTLP/HTTP logs receiver for the export tests: HTTP/1.1 with
//! keep-alive on 127.0.0.1, `POST /v1/logs` bodies decoded as protobuf
//! `ExportLogsServiceRequest`s, every log record kept in arrival order.
//!
//! It can be stopped and started again on the same port, which closes
//! open connections too, so a client sees the collector go away.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::logs::v1::ExportLogsServiceRequest,
    common::v1::{any_value::Value as Any, AnyValue},
};
use prost::Message as _;

/// One log record as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub seq: Option<i64>,
    pub hash: Option<String>,
    pub body: String,
}

#[derive(Default)]
struct State {
    records: Mutex<Vec<Received>>,
    requests: Mutex<u64>,
    errors: Mutex<Vec<String>>,
    connections: Mutex<Vec<TcpStream>>,
}

pub struct OtlpReceiver {
    pub port: u16,
    state: Arc<State>,
    running: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

fn text(value: &Option<AnyValue>) -> Option<String> {
    match value.as_ref()?.value.as_ref()? {
        Any::StringValue(text) => Some(text.clone()),
        _ => None,
    }
}

impl OtlpReceiver {
    /// Starts on a free port.
    pub fn start() -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the OTLP receiver");
        let port = listener.local_addr().unwrap().port();
        let mut receiver = OtlpReceiver { port, state: Arc::default(), running: None };
        receiver.serve(listener);
        receiver
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/v1/logs", self.port)
    }

    fn serve(&mut self, listener: TcpListener) {
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (state, flag) = (self.state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        state.connections.lock().unwrap().push(stream.try_clone().unwrap());
                        let state = state.clone();
                        std::thread::spawn(move || connection(stream, &state));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        self.running = Some((stop, thread));
    }

    /// Closes the listener and every open connection.
    pub fn stop(&mut self) {
        if let Some((stop, thread)) = self.running.take() {
            stop.store(true, Ordering::Relaxed);
            thread.join().unwrap();
        }
        for stream in self.state.connections.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Listens again on the same port.
    pub fn restart(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("binding the OTLP receiver again");
        self.serve(listener);
    }

    pub fn records(&self) -> Vec<Received> {
        self.state.records.lock().unwrap().clone()
    }

    pub fn requests(&self) -> u64 {
        *self.state.requests.lock().unwrap()
    }

    /// Requests that were not valid OTLP logs, with the reason.
    pub fn errors(&self) -> Vec<String> {
        self.state.errors.lock().unwrap().clone()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serves requests on one kept-alive connection until the client closes it.
fn connection(stream: TcpStream, state: &State) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        // A batch counts as received only once its 2xx is on the wire, as
        // with a collector that commits before it answers.
        let (status, batch) = match ExportLogsServiceRequest::decode(body.as_slice()) {
            Ok(_) if !request_line.starts_with("POST /v1/logs ") => {
                state.errors.lock().unwrap().push(format!("unexpected request line {request_line:?}"));
                ("404 Not Found", Vec::new())
            }
            Ok(request) => {
                let mut batch = Vec::new();
                for log in request.resource_logs.iter().flat_map(|r| &r.scope_logs).flat_map(|s| &s.log_records) {
                    let attribute = |key: &str| log.attributes.iter().find(|a| a.key == key).map(|a| a.value.clone());
                    let seq = attribute("agent_sensor.seq").flatten().and_then(|v| match v.value? {
                        Any::IntValue(seq) => Some(seq),
                        _ => None,
                    });
                    batch.push(Received {
                        seq,
                        hash: attribute("agent_sensor.hash").and_then(|v| text(&v)),
                        body: text(&log.body).unwrap_or_default(),
                    });
                }
                ("200 OK", batch)
            }
            Err(error) => {
                state.errors.lock().unwrap().push(format!("undecodable body: {error}"));
                ("400 Bad Request", Vec::new())
            }
        };
        let mut records = state.records.lock().unwrap();
        let response = format!("HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n");
        if writer.write_all(response.as_bytes()).and_then(|()| writer.flush()).is_err() {
            return;
        }
        if status.starts_with("200") {
            records.extend(batch);
            *state.requests.lock().unwrap() += 1;
        }
    }
}
