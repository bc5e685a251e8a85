//! One connection: its two HTTP readers and the exchanges between them.
//!
//! The write side's requests wait in a queue until the read side's next
//! final response head takes one. HTTP/1.1 clients that do not pipeline,
//! which include the supported SDKs, send a request only after reading the
//! previous response. So the response belongs to the most recent request,
//! and older ones in the queue lost their responses to a gap.

use std::collections::VecDeque;

use sha2::{Digest, Sha256};

use super::{
    coding::Coding,
    Credential, Direction, LlmEvent, LlmRequest, LlmResponse, LlmStats, StreamKey,
    fingerprint::{Fingerprinter, finish_hex},
    http::{Framing, Head, HeadAction, HttpReader, Loss, MessageKind, Sink},
    json::{self, ScanEnd},
    providers::{self, Api, bounded},
    request,
    response::ResponseFields,
    sse::{LineSplitter, SseParser},
    tree::Json,
    wipe,
};

/// Maximum number of requests waiting for a response. More means that
/// responses were lost.
const MAX_UNANSWERED: usize = 16;
/// Maximum length of a request path; longer paths are cut.
const MAX_PATH_BYTES: usize = 1024;
/// Maximum length of a Host or Content-Encoding value.
const MAX_HEADER_VALUE_BYTES: usize = 256;

/// Settings and keys shared by all streams.
pub(super) struct Context {
    pub fingerprinter: Fingerprinter,
    /// Maximum bytes buffered per direction, for a head, a JSON body or an
    /// event.
    pub limit: usize,
}

/// One captured call, as `LlmStreams::feed` receives it.
pub(super) struct Call<'a> {
    pub direction: Direction,
    pub data: &'a [u8],
    pub missing: usize,
    pub time_ns: u64,
}

/// The state of one stream.
pub(super) struct Stream {
    writer: HttpReader,
    reader: HttpReader,
    exchanges: Exchanges,
    /// Position in the streams' recency order.
    pub(super) tick: u64,
    last_time_ns: u64,
}

impl Stream {
    pub(super) fn new(key: StreamKey, limit: usize, tick: u64) -> Self {
        Stream {
            writer: HttpReader::new(MessageKind::Request, limit),
            reader: HttpReader::new(MessageKind::Response, limit),
            exchanges: Exchanges {
                key,
                unanswered: VecDeque::new(),
                next_sequence: 0,
                request: None,
                response: None,
                switched_protocols: false,
            },
            tick,
            last_time_ns: 0,
        }
    }

    pub(super) fn feed(&mut self, call: Call<'_>, context: &Context, stats: &mut LlmStats, out: &mut Vec<LlmEvent>) {
        self.last_time_ns = call.time_ns;
        let missing = u64::try_from(call.missing).unwrap_or(u64::MAX);
        let mut sink = ExchangeSink { exchanges: &mut self.exchanges, context, stats: &mut *stats, time_ns: call.time_ns, out };
        match call.direction {
            Direction::Write => self.writer.feed(call.data, missing, &mut RequestSink(&mut sink)),
            Direction::Read => self.reader.feed(call.data, missing, &mut ResponseSink(&mut sink)),
        }
        let stopped = self.writer.is_unsupported() || self.reader.is_unsupported() || self.exchanges.switched_protocols;
        if stopped && !(self.writer.is_unsupported() && self.reader.is_unsupported()) {
            // HTTP/2 or an upgrade (WebSocket) on either side ends HTTP/1.1
            // on both. Messages in progress are dropped without a record.
            stats.unsupported_streams += 1;
            self.writer.set_unsupported();
            self.reader.set_unsupported();
            self.exchanges.request = None;
            self.exchanges.response = None;
            self.exchanges.unanswered.clear();
        }
    }

    /// Returns the bytes left of the response being read when nothing in
    /// them can be reported: the answer to a request that is not an LLM
    /// call, with a Content-Length body.
    pub(super) fn ignored_response_left(&self) -> Option<u64> {
        let ignored = self.exchanges.response.as_ref().is_some_and(|response| response.ignored);
        if ignored { self.reader.length_body_left() } else { None }
    }

    /// Returns the bytes held for the write and the read direction: partial
    /// heads and lines, JSON bodies and partial events.
    pub(super) fn buffered(&self) -> [usize; 2] {
        let request = self.exchanges.request.as_ref().map_or(0, |request| request.body.buffered());
        let response = self.exchanges.response.as_ref().map_or(0, |response| {
            let parser = match &response.format {
                Format::Sse(parser) => parser.buffered(),
                Format::Ndjson(lines) => lines.buffered(),
                Format::Json | Format::CompressedJson(_) | Format::Opaque => 0,
            };
            response.body.buffered() + parser
        });
        [self.writer.buffered() + request, self.reader.buffered() + response]
    }

    /// Ends both directions, reporting what was in progress.
    pub(super) fn close(&mut self, context: &Context, stats: &mut LlmStats, out: &mut Vec<LlmEvent>) {
        let mut sink = ExchangeSink { exchanges: &mut self.exchanges, context, stats, time_ns: self.last_time_ns, out };
        self.writer.close(&mut RequestSink(&mut sink));
        self.reader.close(&mut ResponseSink(&mut sink));
    }
}

struct Exchanges {
    key: StreamKey,
    unanswered: VecDeque<Unanswered>,
    next_sequence: u64,
    request: Option<RequestInProgress>,
    response: Option<ResponseInProgress>,
    switched_protocols: bool,
}

/// A request waiting for its response.
struct Unanswered {
    sequence: u64,
    api: Api,
    provider: Option<&'static str>,
    method_is_head: bool,
    /// Whether the request is an LLM call, so its response is reported.
    report: bool,
}

/// The body of one message: counted and, when it may be an LLM call's,
/// hashed as it passes, and kept up to the buffer limit when it is JSON to
/// be read at the end.
struct Body {
    hasher: Sha256,
    hashed: bool,
    /// Decoded length, including lost bytes whose count is known.
    bytes: u64,
    /// No bytes were lost, so the hash covers the whole body.
    whole: bool,
    buffer: Option<Vec<u8>>,
    /// The buffer stopped growing at a gap or at the limit.
    buffer_cut: bool,
    /// The body was larger than the buffer limit.
    overflowed: bool,
    limit: usize,
}

impl Body {
    fn new(hashed: bool, buffered: bool, limit: usize) -> Self {
        Body {
            hasher: Sha256::new(),
            hashed,
            bytes: 0,
            whole: true,
            buffer: buffered.then(Vec::new),
            buffer_cut: false,
            overflowed: false,
            limit,
        }
    }

    fn push(&mut self, data: &[u8]) {
        if self.hashed {
            self.hasher.update(data);
        }
        self.bytes = self.bytes.saturating_add(data.len() as u64);
        if self.buffer_cut {
            return;
        }
        if let Some(buffer) = &mut self.buffer {
            let room = self.limit.saturating_sub(buffer.len());
            if data.len() > room {
                buffer.extend_from_slice(&data[..room]);
                self.buffer_cut = true;
                self.overflowed = true;
            } else {
                buffer.extend_from_slice(data);
            }
        }
    }

    fn gap(&mut self, lost: Option<u64>) {
        self.whole = false;
        self.buffer_cut = true;
        if let Some(lost) = lost {
            self.bytes = self.bytes.saturating_add(lost);
        }
    }

    /// Returns the SHA-256 of a non-empty body received whole.
    fn sha256(&mut self) -> Option<String> {
        let hasher = std::mem::take(&mut self.hasher);
        (self.hashed && self.whole && self.bytes > 0).then(|| finish_hex(hasher))
    }

    fn len(&self) -> usize {
        usize::try_from(self.bytes).unwrap_or(usize::MAX)
    }

    fn buffered(&self) -> usize {
        self.buffer.as_ref().map_or(0, Vec::len)
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        if let Some(buffer) = &mut self.buffer {
            wipe(buffer);
        }
    }
}

struct RequestInProgress {
    sequence: u64,
    time_ns: u64,
    api: Api,
    provider: Option<&'static str>,
    method: String,
    path: String,
    host: Option<String>,
    path_model: Option<String>,
    path_stream: Option<bool>,
    credential: Option<Credential>,
    content_encoding: Option<String>,
    body: Body,
    truncated: bool,
}

enum Format {
    /// One JSON document, read when the body ends.
    Json,
    /// One gzip- or deflate-coded JSON document, decoded and read when the
    /// body ends.
    CompressedJson(Coding),
    Sse(SseParser),
    Ndjson(LineSplitter),
    /// Compressed or not JSON: hashed and counted only.
    Opaque,
}

struct ResponseInProgress {
    time_ns: u64,
    status: u16,
    provider: Option<&'static str>,
    /// The request was an LLM call.
    requested_by_llm_call: bool,
    /// The request was captured and was not an LLM call, so the body is
    /// neither parsed nor hashed.
    ignored: bool,
    streaming: bool,
    format: Format,
    content_encoding: Option<String>,
    body: Body,
    fields: ResponseFields,
    truncated: bool,
}

/// The state both sinks share during one call.
struct ExchangeSink<'a> {
    exchanges: &'a mut Exchanges,
    context: &'a Context,
    stats: &'a mut LlmStats,
    time_ns: u64,
    out: &'a mut Vec<LlmEvent>,
}

impl ExchangeSink<'_> {
    fn note_loss(&mut self, direction: &str, loss: Loss) {
        match loss {
            Loss::Gap => self.stats.resyncs += 1,
            Loss::Invalid(error) => {
                self.stats.invalid_messages += 1;
                let key = self.exchanges.key;
                log::debug!("llm: pid {} stream {:#x}: skipped unreadable {direction} bytes: {error}", key.pid, key.stream);
            }
        }
    }

    fn finish_request(&mut self, mut request: RequestInProgress) {
        let fields = match &request.body.buffer {
            Some(buffer) if request.content_encoding.is_none() => request::extract(buffer),
            _ => request::RequestFields::default(),
        };
        let api = request.api;
        let truncated = request.truncated || request.body.overflowed;
        let default_stream = (fields.complete && api != Api::Unknown).then(|| api.streams_by_default());
        let report = api != Api::Unknown || request.provider.is_some() || fields.looks_like_llm_call;
        if let Some(waiting) = self.exchanges.unanswered.iter_mut().find(|waiting| waiting.sequence == request.sequence) {
            waiting.report = report;
        }
        if !report {
            return;
        }
        if truncated {
            self.stats.truncated_messages += 1;
        }
        self.out.push(LlmEvent::Request(LlmRequest {
            key: self.exchanges.key,
            time_ns: request.time_ns,
            end_time_ns: self.time_ns,
            api: api.as_str(),
            provider: request.provider,
            method: std::mem::take(&mut request.method),
            path: std::mem::take(&mut request.path),
            host: request.host.take(),
            model: fields.model.or(request.path_model.take()),
            stream: request.path_stream.or(fields.stream).or(default_stream),
            tools_offered: fields.tools,
            prompt_sha256: request.body.sha256(),
            body_bytes: request.body.len(),
            credential: request.credential.take(),
            content_encoding: request.content_encoding.take(),
            truncated,
        }));
    }

    fn finish_response(&mut self, mut response: ResponseInProgress) {
        let mut undecoded = None;
        match (&response.format, &response.body.buffer) {
            (Format::Json, Some(buffer)) => {
                if response.body.buffer_cut {
                    read_json_prefix(buffer, &mut response.fields);
                } else {
                    response.fields.on_json(buffer);
                }
            }
            (Format::CompressedJson(coding), Some(buffer)) => {
                match coding.decode(buffer, self.context.limit) {
                    Ok(decoded) if decoded.cut || response.body.buffer_cut => {
                        response.truncated = true;
                        read_json_prefix(&decoded.bytes, &mut response.fields);
                    }
                    Ok(decoded) => response.fields.on_json(&decoded.bytes),
                    Err(error) => undecoded = Some(error),
                }
            }
            _ => {}
        }
        let truncated = response.truncated || response.body.overflowed || response.fields.tool_calls_cut;
        let fields = &mut response.fields;
        if response.ignored || (!response.requested_by_llm_call && fields.api == Api::Unknown) {
            return;
        }
        if truncated {
            self.stats.truncated_messages += 1;
        }
        self.out.push(LlmEvent::Response(LlmResponse {
            key: self.exchanges.key,
            time_ns: response.time_ns,
            end_time_ns: self.time_ns,
            api: fields.api.as_str(),
            provider: response.provider,
            status: response.status,
            model: fields.model.take(),
            streaming: response.streaming,
            tool_calls: fields.take_tool_calls(),
            input_tokens: fields.input_tokens,
            output_tokens: fields.output_tokens,
            finish_reason: fields.finish_reason.take(),
            error_type: fields.error_type.take(),
            response_sha256: response.body.sha256(),
            body_bytes: response.body.len(),
            content_encoding: response.content_encoding.take(),
            decode_error: undecoded,
            truncated,
        }));
    }
}

/// Reads the complete members (or array elements) before the cut of a JSON
/// body that did not arrive whole.
fn read_json_prefix(buffer: &[u8], fields: &mut ResponseFields) {
    match buffer.trim_ascii_start().first() {
        Some(b'{') => {
            let mut members = Vec::new();
            let end = json::for_each_member(buffer, |key, value| {
                if let Some(Ok(value)) = value.map(Json::parse) {
                    members.push((key.to_owned().into(), value));
                }
            });
            if end != ScanEnd::Invalid || !members.is_empty() {
                fields.on_value(None, &Json::Object(members));
            }
        }
        Some(b'[') => {
            json::for_each_element(buffer, |element| fields.on_json(element));
        }
        _ => {}
    }
}

/// Returns the Content-Encoding unless it is absent or `identity`.
fn content_encoding(head: &Head<'_>) -> Option<String> {
    let value = std::str::from_utf8(head.header("content-encoding")?).ok()?.trim();
    (!value.is_empty() && !value.eq_ignore_ascii_case("identity")).then(|| bounded(value, MAX_HEADER_VALUE_BYTES))
}

fn content_type(head: &Head<'_>) -> String {
    head.header("content-type")
        .map(|value| String::from_utf8_lossy(&value[..value.len().min(MAX_HEADER_VALUE_BYTES)]).to_ascii_lowercase())
        .unwrap_or_default()
}

struct RequestSink<'s, 'a>(&'s mut ExchangeSink<'a>);

impl Sink for RequestSink<'_, '_> {
    fn head(&mut self, head: &Head<'_>, framing: Framing) -> HeadAction {
        let sink = &mut *self.0;
        if let Some(previous) = sink.exchanges.request.take() {
            sink.finish_request(previous);
        }
        let target = head.target.unwrap_or("");
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (target, None),
        };
        let path = bounded(path, MAX_PATH_BYTES);
        let host = head
            .header("host")
            .and_then(|value| std::str::from_utf8(value).ok())
            .map(|value| bounded(value.trim(), MAX_HEADER_VALUE_BYTES));
        let info = providers::classify_path(&path);
        let provider = providers::provider(host.as_deref(), &path, info.api);
        let credential = sink.context.fingerprinter.credential(head.headers, query.map(str::as_bytes));
        let content_encoding = content_encoding(head);
        let content_type = content_type(head);
        let buffered = content_encoding.is_none() && (content_type.is_empty() || content_type.contains("json"));
        // Non-JSON bodies to unknown endpoints (downloads, uploads) are not
        // LLM calls, so they are not worth hashing.
        let hashed = buffered || info.api != Api::Unknown || provider.is_some();
        let method = head.method.unwrap_or("").to_owned();

        let exchanges = &mut *sink.exchanges;
        let sequence = exchanges.next_sequence;
        exchanges.next_sequence += 1;
        exchanges.unanswered.push_back(Unanswered {
            sequence,
            api: info.api,
            provider,
            method_is_head: method == "HEAD",
            report: info.api != Api::Unknown || provider.is_some(),
        });
        if exchanges.unanswered.len() > MAX_UNANSWERED {
            exchanges.unanswered.pop_front();
            sink.stats.unanswered_requests += 1;
        }
        exchanges.request = Some(RequestInProgress {
            sequence,
            time_ns: sink.time_ns,
            api: info.api,
            provider,
            method,
            path,
            host,
            path_model: info.model,
            path_stream: info.stream,
            credential,
            content_encoding,
            body: Body::new(hashed, buffered, sink.context.limit),
            truncated: false,
        });
        HeadAction::Body(framing)
    }

    fn body(&mut self, data: &[u8]) -> bool {
        if let Some(request) = &mut self.0.exchanges.request {
            request.body.push(data);
        }
        false
    }

    fn gap(&mut self, lost: Option<u64>) {
        if let Some(request) = &mut self.0.exchanges.request {
            request.body.gap(lost);
            request.truncated = true;
        }
    }

    fn end(&mut self) {
        if let Some(request) = self.0.exchanges.request.take() {
            self.0.finish_request(request);
        }
    }

    fn lost(&mut self, loss: Loss) {
        self.0.note_loss("request", loss);
    }
}

struct ResponseSink<'s, 'a>(&'s mut ExchangeSink<'a>);

impl Sink for ResponseSink<'_, '_> {
    fn head(&mut self, head: &Head<'_>, framing: Framing) -> HeadAction {
        let sink = &mut *self.0;
        let status = head.status.unwrap_or(0);
        if status == 101 {
            sink.exchanges.switched_protocols = true;
            return HeadAction::Upgrade;
        }
        if (100..200).contains(&status) {
            return HeadAction::Interim;
        }
        if let Some(previous) = sink.exchanges.response.take() {
            sink.finish_response(previous);
        }
        let request = sink.exchanges.unanswered.pop_back();
        sink.stats.unanswered_requests += sink.exchanges.unanswered.len() as u64;
        sink.exchanges.unanswered.clear();

        let api = request.as_ref().map_or(Api::Unknown, |request| request.api);
        let ignored = request.as_ref().is_some_and(|request| !request.report);
        let content_encoding = content_encoding(head);
        let content_type = content_type(head);
        let limit = sink.context.limit;
        let json = content_type.is_empty() || content_type.contains("json");
        // SDKs send `Accept-Encoding: gzip`, and providers may compress a
        // whole JSON answer. Compressed streams are rare and stay opaque.
        let format = if ignored {
            Format::Opaque
        } else if let Some(encoding) = &content_encoding {
            match Coding::parse(encoding) {
                Some(coding) if json && !content_type.starts_with("text/event-stream") => Format::CompressedJson(coding),
                _ => Format::Opaque,
            }
        } else if content_type.starts_with("text/event-stream") {
            Format::Sse(SseParser::new(limit))
        } else if content_type.contains("ndjson") || content_type.contains("jsonl") {
            Format::Ndjson(LineSplitter::new(limit))
        } else if content_type.is_empty() || content_type.contains("json") {
            Format::Json
        } else {
            Format::Opaque
        };
        let streaming = matches!(format, Format::Sse(_) | Format::Ndjson(_)) || api == Api::GeminiStreamGenerateContent;
        let framing = if request.as_ref().is_some_and(|request| request.method_is_head) { Framing::Empty } else { framing };
        sink.exchanges.response = Some(ResponseInProgress {
            time_ns: sink.time_ns,
            status,
            provider: request.as_ref().and_then(|request| request.provider),
            requested_by_llm_call: request.as_ref().is_some_and(|request| request.report),
            ignored,
            streaming,
            body: Body::new(!ignored, matches!(format, Format::Json | Format::CompressedJson(_)), limit),
            format,
            content_encoding,
            fields: ResponseFields::new(api, streaming),
            truncated: false,
        });
        HeadAction::Body(framing)
    }

    fn body(&mut self, data: &[u8]) -> bool {
        let Some(response) = &mut self.0.exchanges.response else {
            return false;
        };
        if response.ignored {
            return false;
        }
        response.body.push(data);
        let fields = &mut response.fields;
        match &mut response.format {
            Format::Sse(parser) => {
                parser.feed(data, &mut |name, event| fields.on_event(name, event));
                response.truncated |= parser.overflowed;
            }
            Format::Ndjson(lines) => {
                lines.feed(data, &mut |line| fields.on_json(line));
                response.truncated |= lines.overflowed;
            }
            Format::Json | Format::CompressedJson(_) | Format::Opaque => {}
        }
        fields.done
    }

    fn gap(&mut self, lost: Option<u64>) {
        let Some(response) = &mut self.0.exchanges.response else {
            return;
        };
        response.truncated = true;
        response.body.gap(lost);
        response.fields.on_gap();
        match &mut response.format {
            Format::Sse(parser) => parser.gap(),
            Format::Ndjson(lines) => lines.gap(),
            Format::Json | Format::CompressedJson(_) | Format::Opaque => {}
        }
    }

    fn end(&mut self) {
        if let Some(response) = self.0.exchanges.response.take() {
            self.0.finish_response(response);
        }
    }

    fn lost(&mut self, loss: Loss) {
        self.0.note_loss("response", loss);
    }
}
