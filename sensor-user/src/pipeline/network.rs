//! Connect, first-bytes and DNS handling: destinations named by DNS and TLS
//! server names, matched against the provider catalog, and agents detected
//! from those matches.

use sensor_common::{
    ConnectEvent, ConnectResultEvent, CONNECT_FLAG_ASYNC_DONE, CONNECT_FLAG_FIRST_SEND, CONNECT_FLAG_NO_SOCKET, CONNECT_FLAG_PENDING,
    PAYLOAD_DATAGRAM_IN, PAYLOAD_DATAGRAM_OUT, PAYLOAD_STREAM_START, WATCHED_MAX_WRITES,
};
use serde_json::json;

use super::Pipeline;
use crate::{
    agents::Detection,
    evidence::NetworkView,
    llm::{Direction, StreamKey},
    net::{
        self,
        dns,
        tls::{self, HelloParse},
        Endpoint, PendingConnect,
    },
    probes::{decode::Payload, Probes},
    process::ProcKey,
};

/// Connections kept per host before the oldest are dropped.
const MAX_CONNECTIONS: usize = 65536;
/// Largest ClientHello reassembled from several writes.
const MAX_HELLO_BYTES: usize = 16384;
const QUIC_PORT: u16 = 443;

/// The sensor's facts about one connection, for the records after connect.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    pub fd: i32,
    pub destination: Option<Endpoint>,
    pub protocol: &'static str,
    pub dns_name: Option<String>,
    pub sni: Option<String>,
    pub provider: Option<String>,
    pub time_ns: u64,
    hello: Vec<u8>,
    hello_done: bool,
    /// The first bytes were an HTTP request, so later writes go to the LLM
    /// parser as plaintext.
    pub plain_http: bool,
}

impl Pipeline {
    pub(super) fn on_connect(&mut self, key: ProcKey, connect: &ConnectEvent, probes: &mut Probes) -> anyhow::Result<()> {
        let header = connect.header;
        let destination = net::parse_sockaddr(connect.family, &connect.sockaddr);
        let protocol = if header.flags & CONNECT_FLAG_NO_SOCKET != 0 {
            "unknown"
        } else {
            net::protocol_name(connect.sock_type)
        };
        let outcome = if header.flags & CONNECT_FLAG_ASYNC_DONE != 0 {
            Some(if connect.async_result == 0 { "established" } else { net::result_name(connect.async_result) })
        } else if header.flags & CONNECT_FLAG_PENDING != 0 {
            let pending = PendingConnect {
                syscall_result: connect.result,
                pid: header.pid,
                start_time_ns: header.start_time_ns,
                destination: destination.clone(),
                protocol,
                since_ns: header.time_ns,
            };
            let expired = self.pending.insert(connect.connect_id, pending);
            self.emit_unknown_outcomes(expired)?;
            Some("pending")
        } else {
            None
        };
        let dns_name = destination.as_ref().and_then(|d| self.dns.name_of(connect.netns, &d.address)).map(str::to_owned);
        let by_name = dns_name.as_deref().and_then(|name| self.catalog.match_host(name));
        let by_address = destination.as_ref().and_then(|d| self.catalog.match_address(&d.address, d.port));
        let provider = by_name.clone().or_else(|| by_address.clone().filter(|m| m.matched_by == "address"));
        let quic = protocol == "udp" && destination.as_ref().is_some_and(|d| d.port == QUIC_PORT);

        let succeeded = connect.result == 0 || outcome.is_some();
        let replaced = match succeeded {
            true => self.remember_connection(connect, destination.clone(), protocol, dns_name.clone(), provider.as_ref().map(|p| p.provider.clone())),
            false => None,
        };
        let network = NetworkView {
            protocol,
            destination: destination.clone(),
            result: net::result_name(connect.result),
            errno: (connect.result < 0).then_some(net::user_errno(connect.result)),
            outcome,
            connect_id: outcome.map(|_| connect.connect_id),
            fd: Some(connect.fd),
            seen_at: (header.flags & CONNECT_FLAG_FIRST_SEND != 0).then_some("first_send"),
        };
        // The socket that had this fd before was closed. Its plaintext
        // parse ends like a closed stream: a response read until close is
        // complete, anything else is reported as cut.
        if let Some(old) = replaced {
            let unfinished = self.llm.close_stream(StreamKey { pid: header.pid, stream: old });
            self.on_llm_events(key, unfinished, None)?;
        }
        let candidate = by_address.filter(|m| m.matched_by == "port");
        self.emit(key, "net.connect", header.time_ns, Some(header.tid), |record| {
            record.network = Some(network);
            if let Some(name) = &dns_name {
                record.sections.insert("dns_name".into(), json!(name));
            }
            if let Some(provider) = &provider {
                record.sections.insert("provider".into(), json!(provider));
            } else if let Some(candidate) = &candidate {
                record.sections.insert("provider_candidate".into(), json!(candidate));
            }
            if quic {
                record.sections.insert(
                    "quic".into(),
                    json!({ "readable": false, "reason": "UDP to port 443 is likely QUIC, whose TLS handshake is encrypted inside QUIC packets and not parsed" }),
                );
            }
        })?;

        if let (Some(provider), true) = (provider, succeeded) {
            let signal = if provider.matched_by == "host" { "dns" } else { "address" };
            let value = match signal {
                "dns" => dns_name.clone().unwrap_or_default(),
                _ => destination.as_ref().map(|d| format!("{}:{}", d.address, d.port)).unwrap_or_default(),
            };
            self.detect_agent(key, Detection { signal, value, provider: Some(provider.provider) }, header.time_ns)?;
        } else if let Some(root) = self.agents.agent_of(&key).map(|a| a.key) {
            self.agents.activity(root, header.time_ns, |session| session.connections += 1);
        }
        if protocol == "tcp" && succeeded && !self.tls_scanned.contains_key(&key) {
            self.tls_scanned.insert(key, ());
            self.scan_tls_libraries(key, probes)?;
        }
        Ok(())
    }

    /// Keeps what later records of the connection need. Returns the
    /// connect id of the connection this one replaced on the same fd.
    fn remember_connection(
        &mut self,
        connect: &ConnectEvent,
        destination: Option<Endpoint>,
        protocol: &'static str,
        dns_name: Option<String>,
        provider: Option<String>,
    ) -> Option<u64> {
        let pid = connect.header.pid;
        // A new connect on a known fd means the process closed the old
        // socket, so its entry goes. Otherwise a client that opens a
        // connection per request would fill the table with dead ones.
        let replaced = self
            .connection_fds
            .insert((pid, connect.fd), connect.connect_id)
            .filter(|&old| old != connect.connect_id);
        if let Some(old) = replaced {
            self.connections.remove(&(pid, old));
        }
        if self.connections.len() >= MAX_CONNECTIONS {
            let oldest = self.connections.iter().min_by_key(|(_, c)| c.time_ns).map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                self.connections.remove(&oldest);
            }
        }
        self.connections.insert(
            (pid, connect.connect_id),
            Connection {
                fd: connect.fd,
                destination,
                protocol,
                dns_name,
                provider,
                time_ns: connect.header.time_ns,
                ..Default::default()
            },
        );
        replaced
    }

    pub(super) fn on_connect_result(&mut self, key: ProcKey, result: &ConnectResultEvent) -> anyhow::Result<()> {
        let pending = self.pending.take(result.header.pid, result.connect_id);
        let syscall_result = pending.as_ref().map_or(-115, |p| p.syscall_result);
        let network = NetworkView {
            protocol: pending.as_ref().map_or("tcp", |p| p.protocol),
            destination: pending.and_then(|p| p.destination),
            result: net::result_name(syscall_result),
            errno: Some(net::user_errno(syscall_result)),
            outcome: Some(if result.result == 0 { "established" } else { net::result_name(result.result) }),
            connect_id: Some(result.connect_id),
            fd: None,
            seen_at: None,
        };
        self.emit(key, "net.connect_result", result.header.time_ns, Some(result.header.tid), |record| {
            record.network = Some(network)
        })
    }

    pub(super) fn on_payload(&mut self, key: ProcKey, payload: &Payload<'_>) -> anyhow::Result<()> {
        match payload.direction {
            PAYLOAD_STREAM_START => self.on_stream_start(key, payload),
            PAYLOAD_DATAGRAM_IN => self.on_dns_answer(key, payload),
            PAYLOAD_DATAGRAM_OUT => Ok(()),
            other => {
                log::debug!("payload with unknown direction {other}");
                Ok(())
            }
        }
    }

    fn on_stream_start(&mut self, key: ProcKey, payload: &Payload<'_>) -> anyhow::Result<()> {
        let pid = payload.header.pid;
        let conn_key = (pid, payload.connect_id);
        let Some(connection) = self.connections.get_mut(&conn_key) else {
            return Ok(());
        };
        if connection.plain_http {
            let stream = StreamKey { pid, stream: payload.connect_id };
            let missing = (payload.total as usize).saturating_sub(payload.data.len());
            let events = self.llm.feed(stream, Direction::Write, payload.data, missing, payload.header.time_ns);
            return self.on_llm_events(key, events, Some(conn_key));
        }
        if connection.hello_done {
            return Ok(());
        }
        if payload.index == 0 && !tls::looks_like_tls(payload.data) && looks_like_http(payload.data) {
            connection.plain_http = true;
            connection.hello_done = true;
            let stream = StreamKey { pid, stream: payload.connect_id };
            let missing = (payload.total as usize).saturating_sub(payload.data.len());
            let events = self.llm.feed(stream, Direction::Write, payload.data, missing, payload.header.time_ns);
            return self.on_llm_events(key, events, Some(conn_key));
        }
        let cut = payload.data.len() < payload.total as usize;
        if connection.hello.len() + payload.data.len() <= MAX_HELLO_BYTES {
            connection.hello.extend_from_slice(payload.data);
        }
        let parsed = tls::parse_client_hello(&connection.hello);
        let last_write = payload.index + 1 >= WATCHED_MAX_WRITES;
        let (hello, partial) = match parsed {
            HelloParse::Complete(mut hello) => {
                hello.reassembled = payload.index > 0;
                (Some(hello), None)
            }
            HelloParse::NeedMore if cut => (None, Some("the ClientHello was larger than the per-write capture bound")),
            HelloParse::NeedMore if last_write => (None, Some("the ClientHello did not complete within the writes the kernel copies")),
            HelloParse::NeedMore => return Ok(()),
            HelloParse::NotTls => {
                connection.hello_done = true;
                return Ok(());
            }
            HelloParse::Malformed(_) => (None, Some("the handshake record did not parse as a ClientHello")),
        };
        connection.hello_done = true;
        connection.hello = Vec::new();
        if let Some(hello) = &hello {
            connection.sni = hello.sni.clone();
        }
        let connection = connection.clone();
        let matched = hello.as_ref().and_then(|h| h.sni.as_deref()).and_then(|sni| self.catalog.match_host(sni));
        if let Some(found) = &matched {
            if let Some(c) = self.connections.get_mut(&conn_key) {
                c.provider = Some(found.provider.clone());
            }
        }
        let plaintext = match self.uprobes.plaintext_unavailable(pid) {
            None => json!({ "available": true }),
            Some(reason) => json!({ "available": false, "reason": reason }),
        };
        let time_ns = payload.header.time_ns;
        self.emit(key, "tls.hello", time_ns, Some(payload.header.tid), |record| {
            record.network = Some(NetworkView {
                protocol: "tcp",
                destination: connection.destination.clone(),
                result: "ok",
                errno: None,
                outcome: None,
                connect_id: Some(payload.connect_id),
                fd: Some(connection.fd),
                seen_at: None,
            });
            let mut tls = json!({ "plaintext": plaintext });
            if let Some(hello) = &hello {
                tls = json!({ "sni": hello.sni, "alpn": hello.alpn, "ech": hello.ech, "reassembled": hello.reassembled, "plaintext": plaintext });
            }
            if let Some(reason) = partial {
                tls["partial"] = json!(true);
                tls["partial_reason"] = json!(reason);
            }
            record.sections.insert("tls".into(), tls);
            if let Some(name) = &connection.dns_name {
                record.sections.insert("dns_name".into(), json!(name));
            }
            if let Some(found) = &matched {
                record.sections.insert("provider".into(), json!(found));
            }
        })?;
        if let (Some(found), Some(sni)) = (matched, hello.and_then(|h| h.sni)) {
            self.detect_agent(key, Detection { signal: "sni", value: sni, provider: Some(found.provider) }, time_ns)?;
        }
        Ok(())
    }

    fn on_dns_answer(&mut self, key: ProcKey, payload: &Payload<'_>) -> anyhow::Result<()> {
        let Some(message) = dns::parse(payload.data) else {
            log::debug!("undecodable DNS answer of {} bytes from pid {}", payload.data.len(), payload.header.pid);
            return Ok(());
        };
        if !message.is_response {
            return Ok(());
        }
        let Some(question) = message.question.clone() else { return Ok(()) };
        for address in &message.addresses {
            self.dns.insert(payload.netns, *address, question.clone(), payload.header.time_ns);
        }
        let provider = self.catalog.match_host(&question);
        self.emit(key, "net.dns", payload.header.time_ns, Some(payload.header.tid), |record| {
            let mut dns = json!({
                "query": question,
                "answers": message.addresses,
                "rcode": message.rcode,
            });
            if !message.cnames.is_empty() {
                dns["cnames"] = json!(message.cnames);
            }
            record.sections.insert("dns".into(), dns);
            if let Some(provider) = &provider {
                record.sections.insert("provider".into(), json!(provider));
            }
        })
    }

    pub(super) fn scan_tls_libraries(&mut self, key: ProcKey, probes: &mut Probes) -> anyhow::Result<()> {
        for hooked in self.uprobes.scan_process(&mut probes.ebpf, key.pid) {
            self.emit_sensor("sensor.tls_hooked", json!(hooked))?;
        }
        Ok(())
    }
}

/// Returns whether bytes start with an HTTP/1.x request line.
fn looks_like_http(bytes: &[u8]) -> bool {
    const METHODS: &[&[u8]] = &[b"GET ", b"POST ", b"PUT ", b"DELETE ", b"PATCH ", b"HEAD ", b"OPTIONS "];
    METHODS.iter().any(|m| bytes.starts_with(m))
}
