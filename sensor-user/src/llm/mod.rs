//! Pipeline stage 5: captured TLS plaintext in, LLM call metadata out.
//!
//! Takes the plaintext of each `SSL_write` (requests) and `SSL_read`
//! (responses) call, per connection and in call order, as the uprobes
//! deliver it: possibly cut by the capture bound, with the count of bytes
//! not copied. Produces one `LlmRequest` per request and one `LlmResponse`
//! per response of an LLM call. They give the API, a provider guess, the
//! model, streaming, the offered tools, the requested tool calls with
//! hashed arguments, token counts, the finish reason, a keyed fingerprint
//! of the credential and SHA-256 hashes of the bodies. Secrets, prompt
//! text and response text never leave this module, and it does not log
//! them.
//!
//! It assumes HTTP/1.1 without pipelining, and that a stream key names one
//! connection until `close_stream`, `close_process` or `forget_process`.
//! An exchange is reported when its path is a known LLM API, its Host is a
//! known provider, or its JSON body has a `model` and a prompt member (or
//! Gemini's `contents`). A response whose request was not captured is
//! reported when its body has a known API's shape. Other traffic yields no
//! events. It does not read HTTP/2 or WebSocket. JSON responses in gzip or
//! deflate are decoded up to the capture bound (`coding.rs`). Other codings
//! (br, zstd) and compressed event streams are reported with their hash,
//! length and `content_encoding`, but without fields from the body.
//!
//! Memory is bounded. Each direction of a stream buffers at most
//! `max_buffer_bytes` of head, JSON body or event data, plus up to about
//! 8 KiB of a partial start or chunk-size line. At most `max_streams`
//! streams are kept, and the least recently fed is evicted first. Bytes
//! lost to the capture bound or to a buffer limit mark the message
//! `truncated`, and parsing resumes at the next boundary the framing
//! allows (see `http.rs`).

#![expect(dead_code, reason = "parts of the API are not wired into the daemon yet")]

mod coding;
mod exchange;
mod fingerprint;
mod http;
mod json;
mod providers;
mod request;
mod response;
mod sse;
mod tree;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::Serialize;
use zeroize::Zeroize;

use exchange::{Call, Context, Stream};
use fingerprint::Fingerprinter;

use crate::idmap::IdMap;

/// One connection of one process: `stream` is the capture's connection id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub pid: u32,
    pub stream: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client to server: requests.
    Write,
    /// Server to client: responses.
    Read,
}

pub struct LlmConfig {
    /// Maximum bytes buffered per stream and direction, for a message head
    /// or a JSON body read when it ends (1 MiB is typical).
    pub max_buffer_bytes: usize,
    /// Maximum streams kept; the least recently fed is evicted first.
    pub max_streams: usize,
}

/// Counters for the sensor's own metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LlmStats {
    /// Captured calls with bytes not copied (`missing > 0`).
    pub gaps: u64,
    /// Events reported with `truncated: true`.
    pub truncated_messages: u64,
    /// Times parsing lost its place and searched for the next message.
    pub resyncs: u64,
    /// Heads or chunk framing that were not valid HTTP/1.1.
    pub invalid_messages: u64,
    /// Streams that switched to HTTP/2 or upgraded (WebSocket).
    pub unsupported_streams: u64,
    /// Requests whose response was never matched.
    pub unanswered_requests: u64,
    /// Streams evicted to stay within `max_streams`.
    pub evicted_streams: u64,
    /// Calls the kernel passed over without copying, at the daemon's
    /// request (see `ignored_response_left`), and their bytes.
    pub skipped_calls: u64,
    pub skipped_bytes: u64,
}

/// The LLM calls seen on the streams of all processes.
pub struct LlmStreams {
    context: Context,
    max_streams: usize,
    streams: IdMap<StreamKey, Stream>,
    /// Streams by the tick of their last feed, oldest first.
    recency: BTreeMap<u64, StreamKey>,
    streams_per_pid: IdMap<u32, usize>,
    next_tick: u64,
    stats: LlmStats,
}

impl std::fmt::Debug for LlmStreams {
    // Written by hand so the fingerprint key can never be printed.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("LlmStreams")
            .field("streams", &self.streams.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl LlmStreams {
    /// Creates the stage. `fingerprint_key` keys the credential HMAC: keep it
    /// secret and stable, since fingerprints are comparable only under the
    /// same key.
    pub fn new(config: LlmConfig, mut fingerprint_key: [u8; 32]) -> Self {
        let fingerprinter = Fingerprinter::new(&fingerprint_key);
        fingerprint_key.zeroize();
        LlmStreams {
            context: Context { fingerprinter, limit: config.max_buffer_bytes },
            max_streams: config.max_streams.max(1),
            streams: IdMap::default(),
            recency: BTreeMap::new(),
            streams_per_pid: IdMap::default(),
            next_tick: 0,
            stats: LlmStats::default(),
        }
    }

    /// Feeds one captured call's plaintext. `missing` is how many bytes of
    /// this call the kernel did not copy (the call wrote/read `data.len() +
    /// missing` bytes), so the stream has a gap right after `data`.
    ///
    /// Returns the requests and responses this call completed. When a new
    /// stream evicts an old one, the old stream's unfinished messages are
    /// returned too.
    pub fn feed(&mut self, key: StreamKey, direction: Direction, data: &[u8], missing: usize, time_ns: u64) -> Vec<LlmEvent> {
        if missing > 0 {
            self.stats.gaps += 1;
        }
        self.feed_call(key, Call { direction, data, missing, time_ns })
    }

    /// Takes a call whose plaintext the kernel did not copy because the
    /// daemon requested a pass over an ignored response: the stream moves
    /// past `bytes` as past a gap, without counting one.
    pub fn skip(&mut self, key: StreamKey, direction: Direction, bytes: usize, time_ns: u64) -> Vec<LlmEvent> {
        self.stats.skipped_calls += 1;
        self.stats.skipped_bytes += bytes as u64;
        self.feed_call(key, Call { direction, data: &[], missing: bytes, time_ns })
    }

    /// Returns how many bytes are left of the response `key` is reading
    /// when none of them can be reported (see `Stream::ignored_response_left`).
    pub fn ignored_response_left(&self, key: StreamKey) -> Option<u64> {
        self.streams.get(&key).and_then(Stream::ignored_response_left)
    }

    /// Passes `call` to its stream, which is created when new, after the
    /// least recently fed streams are evicted to make room.
    fn feed_call(&mut self, key: StreamKey, call: Call<'_>) -> Vec<LlmEvent> {
        let mut events = Vec::new();
        let tick = self.next_tick;
        self.next_tick += 1;
        if let Some(stream) = self.streams.get_mut(&key) {
            self.recency.remove(&stream.tick);
            stream.tick = tick;
        } else {
            while self.streams.len() >= self.max_streams {
                let Some((_, oldest)) = self.recency.pop_first() else {
                    break;
                };
                self.stats.evicted_streams += 1;
                self.remove_stream(oldest, Some(&mut events));
            }
            self.streams.insert(key, Stream::new(key, self.context.limit, tick));
            *self.streams_per_pid.entry(key.pid).or_default() += 1;
        }
        self.recency.insert(tick, key);
        if let Some(stream) = self.streams.get_mut(&key) {
            stream.feed(call, &self.context, &mut self.stats, &mut events);
        }
        events
    }

    /// Ends a stream (its connection closed): a response read until close
    /// is complete, anything else in progress is reported as truncated.
    pub fn close_stream(&mut self, key: StreamKey) -> Vec<LlmEvent> {
        let mut events = Vec::new();
        self.remove_stream(key, Some(&mut events));
        events
    }

    /// Drops all state of a process (it exited).
    pub fn forget_process(&mut self, pid: u32) {
        for key in self.keys_of(pid) {
            self.remove_stream(key, None);
        }
    }

    /// Ends all streams of a process that exited, reporting what was in
    /// progress as `close_stream` does.
    pub fn close_process(&mut self, pid: u32) -> Vec<LlmEvent> {
        let mut events = Vec::new();
        for key in self.keys_of(pid) {
            self.remove_stream(key, Some(&mut events));
        }
        events
    }

    /// Number of streams held (for metrics/tests).
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    pub fn stats(&self) -> &LlmStats {
        &self.stats
    }

    fn keys_of(&self, pid: u32) -> Vec<StreamKey> {
        if !self.streams_per_pid.contains_key(&pid) {
            return Vec::new();
        }
        self.streams.keys().filter(|key| key.pid == pid).copied().collect()
    }

    /// Removes a stream; with `events`, first ends what it had in progress.
    fn remove_stream(&mut self, key: StreamKey, events: Option<&mut Vec<LlmEvent>>) {
        let Some(mut stream) = self.streams.remove(&key) else {
            return;
        };
        self.recency.remove(&stream.tick);
        if let Some(count) = self.streams_per_pid.get_mut(&key.pid) {
            *count -= 1;
            if *count == 0 {
                self.streams_per_pid.remove(&key.pid);
            }
        }
        if let Some(events) = events {
            stream.close(&self.context, &mut self.stats, events);
        }
    }
}

/// A request or response of an LLM call.
#[derive(Clone, Debug, PartialEq)]
pub enum LlmEvent {
    Request(LlmRequest),
    Response(LlmResponse),
}

impl LlmEvent {
    /// Returns the record kind: `llm.request` or `llm.response`.
    pub fn kind(&self) -> &'static str {
        match self {
            LlmEvent::Request(_) => "llm.request",
            LlmEvent::Response(_) => "llm.response",
        }
    }

    pub fn key(&self) -> StreamKey {
        match self {
            LlmEvent::Request(request) => request.key,
            LlmEvent::Response(response) => response.key,
        }
    }
}

/// Written as the request or response alone: the record's kind already
/// shows which.
impl Serialize for LlmEvent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            LlmEvent::Request(request) => request.serialize(s),
            LlmEvent::Response(response) => response.serialize(s),
        }
    }
}

/// An LLM API request, serialised as the record's `llm` section. Unknown
/// fields are None and left out.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LlmRequest {
    #[serde(skip)]
    pub key: StreamKey,
    /// Time of the call that completed the head, in the capture's clock.
    #[serde(skip)]
    pub time_ns: u64,
    /// Time of the call that completed the body.
    #[serde(skip)]
    pub end_time_ns: u64,
    /// `openai.chat_completions`, `openai.responses`, `openai.completions`,
    /// `openai.embeddings`, `anthropic.messages`, `gemini.generate_content`,
    /// `gemini.stream_generate_content`, `ollama.chat`, `ollama.generate`
    /// or `unknown`.
    pub api: &'static str,
    /// Guessed from the Host header and the path: `openai`, `anthropic`,
    /// `google_gemini`, `ollama`, `azure_openai`, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<&'static str>,
    pub method: String,
    /// The request path without the query string, which can hold a key.
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Whether a streamed response was requested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Names of the tools offered to the model, at most 256.
    pub tools_offered: Vec<String>,
    /// SHA-256 of the body bytes (the prompt), present only when the whole
    /// non-empty body was captured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_sha256: Option<String>,
    /// Body length after chunked decoding, counting lost bytes where their
    /// number is known; a lower bound when `truncated`.
    pub body_bytes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<Credential>,
    /// Content-Encoding of a compressed body, whose fields were not read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    /// Bytes of the message were lost to the capture bound or the buffer
    /// limit, so fields after the loss may be missing.
    pub truncated: bool,
}

/// A credential reduced to a keyed fingerprint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Credential {
    /// `authorization_bearer`, `x-api-key`, `x-goog-api-key`, `api-key` or
    /// `query_key`.
    pub kind: &'static str,
    /// Hex of HMAC-SHA256(key, secret) cut to 16 bytes.
    pub fingerprint: String,
}

/// An LLM API response, serialised as the record's `llm` section.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LlmResponse {
    #[serde(skip)]
    pub key: StreamKey,
    /// Time of the call that completed the head.
    #[serde(skip)]
    pub time_ns: u64,
    /// Time of the call that completed the body.
    #[serde(skip)]
    pub end_time_ns: u64,
    /// The request's API, or the one the body's shape shows when the request
    /// was not captured.
    pub api: &'static str,
    /// The request's provider guess.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<&'static str>,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Server-sent events, NDJSON, or a Gemini stream.
    pub streaming: bool,
    /// Tool calls the model asked the client to run, at most 128.
    pub tool_calls: Vec<ToolCall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// The error's type or code from an error body; its message is not kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    /// SHA-256 of the body bytes as received (after chunked decoding,
    /// before any content decoding), present only when the whole non-empty
    /// body was captured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_sha256: Option<String>,
    /// Body length, as for `LlmRequest::body_bytes`.
    pub body_bytes: usize,
    /// Content-Encoding of the body. JSON bodies in gzip or deflate are
    /// decoded, up to the capture bound, before their fields are read.
    /// Other codings and compressed event streams are hashed only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    /// The reason a gzip or deflate body could not be decoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode_error: Option<String>,
    /// Bytes were lost, an event was larger than the buffer limit, or more
    /// than 128 tool calls arrived.
    pub truncated: bool,
}

/// A tool call requested by the model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ToolCall {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    /// SHA-256 of the arguments JSON text as the API sent it. APIs that send
    /// an object (Anthropic without streaming, Gemini, Ollama) are hashed
    /// over `serde_json`'s compact form with sorted keys, so equal
    /// arguments can hash differently across APIs. None when a gap hit the
    /// arguments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments_sha256: Option<String>,
}

/// Empties a buffer after zeroing its bytes, so plaintext does not linger
/// in the allocation kept for reuse.
fn wipe(buffer: &mut Vec<u8>) {
    buffer.as_mut_slice().zeroize();
    buffer.clear();
}
