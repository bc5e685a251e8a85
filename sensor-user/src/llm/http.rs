//! Incremental HTTP/1.1 message framing over captured plaintext with gaps.
//!
//! One `HttpReader` follows one direction of a connection: requests on the
//! write side, responses on the read side. It finds each message head,
//! parses it with `httparse`, and passes the body to a `Sink` after
//! removing the chunked transfer coding. Only the unparsed tail of the
//! input is kept between calls, so no byte is parsed twice except the few
//! bytes of a partial line.
//!
//! A gap (bytes the capture did not copy) is absorbed where the framing
//! allows: inside a Content-Length body or a chunk the lost length is simply
//! skipped. Elsewhere the reader resynchronises, first on the next chunk-size
//! line of the current chunked body, else on the next request or status line.

use thiserror::Error;
use zeroize::Zeroize;

use super::wipe;

/// Maximum length of a request or status line found when resynchronising.
pub(super) const MAX_START_LINE: usize = 8 * 1024;
/// Maximum length of a chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 1024;
/// Maximum number of header fields in one head.
const MAX_HEADERS: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MessageKind {
    Request,
    Response,
}

/// An error that makes bytes unreadable as HTTP/1.1.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub(super) enum HttpError {
    #[error("invalid message head: {0}")]
    InvalidHead(httparse::Error),
    #[error("message head ended before its blank line")]
    IncompleteHead,
    #[error("message head is longer than the {limit}-byte buffer")]
    HeadTooLarge { limit: usize },
    #[error("invalid or conflicting Content-Length")]
    InvalidContentLength,
    #[error("request with a Transfer-Encoding other than chunked")]
    UnsupportedTransferEncoding,
    #[error("invalid chunk-size line")]
    InvalidChunk,
    #[error("no chunk boundary found within the buffer limit after a gap")]
    ChunkResyncFailed,
    #[error("the connection speaks HTTP/2, which is not parsed")]
    Http2,
}

/// The cause of skipped bytes between messages or of a skipped head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Loss {
    /// The capture lost bytes there.
    Gap,
    /// The bytes were not valid HTTP/1.1.
    Invalid(HttpError),
}

/// A parsed request or response head.
pub(super) struct Head<'a> {
    pub method: Option<&'a str>,
    pub target: Option<&'a str>,
    pub status: Option<u16>,
    pub headers: &'a [httparse::Header<'a>],
}

impl<'a> Head<'a> {
    /// Returns the value of the first header field called `name`.
    pub(super) fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers.iter().find(|header| header.name.eq_ignore_ascii_case(name)).map(|header| header.value)
    }
}

/// The delimitation of a message body (RFC 9112, section 6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// The body ends when the connection closes.
    UntilClose,
}

/// The sink's decision about a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HeadAction {
    /// A message with this body framing follows the head.
    Body(Framing),
    /// A 1xx interim response: no body, and the final response follows.
    Interim,
    /// The connection switched protocols (101) and is no longer HTTP/1.1.
    Upgrade,
}

/// Receives the messages of one direction.
pub(super) trait Sink {
    /// Starts a message. `framing` comes from the headers, and the sink may
    /// override it, for example for the response to a HEAD request.
    fn head(&mut self, head: &Head<'_>, framing: Framing) -> HeadAction;
    /// Receives the next decoded body bytes. Returns true when the sink saw
    /// the body's last event, which ends a body read until close.
    fn body(&mut self, data: &[u8]) -> bool;
    /// Notes that body bytes were lost; `lost` is their count when known.
    fn gap(&mut self, lost: Option<u64>);
    /// Ends the current message.
    fn end(&mut self);
    /// Notes bytes skipped outside a message, or an unreadable head.
    fn lost(&mut self, loss: Loss);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nothing read yet: an HTTP/2 preface or a start line may come.
    Start,
    /// Reading a head; `scanned` bytes of it were searched for its end.
    Head {
        scanned: usize,
    },
    Length {
        remaining: u64,
    },
    ChunkSize,
    ChunkData {
        remaining: u64,
    },
    /// The CRLF after a chunk's data.
    ChunkDataEnd,
    Trailers,
    /// Searching for the next chunk-size line after a gap in a chunked body.
    /// `at_start`: the search is at the first byte after the gap, where a
    /// size line may start without a preceding CRLF.
    ChunkResync {
        at_start: bool,
        scanned: usize,
    },
    UntilClose,
    /// Searching for the next start line.
    Resync,
    /// HTTP/2 or a switched protocol: ignore everything.
    Unsupported,
}

/// Frames the HTTP/1.1 messages of one direction of a connection.
pub(super) struct HttpReader {
    kind: MessageKind,
    state: State,
    /// Input not yet consumed: a partial head or line.
    pending: Vec<u8>,
    /// Maximum bytes held in `pending` and searched when resynchronising.
    limit: usize,
}

impl HttpReader {
    pub(super) fn new(kind: MessageKind, limit: usize) -> Self {
        HttpReader { kind, state: State::Start, pending: Vec::new(), limit }
    }

    /// Reads one captured call: `data`, then `missing` bytes that were not
    /// copied.
    pub(super) fn feed(&mut self, data: &[u8], missing: u64, sink: &mut impl Sink) {
        if !data.is_empty() {
            if self.pending.is_empty() {
                let used = self.process(data, sink);
                self.pending.extend_from_slice(&data[used..]);
            } else {
                let mut buffer = std::mem::take(&mut self.pending);
                buffer.extend_from_slice(data);
                let used = self.process(&buffer, sink);
                drain_front(&mut buffer, used);
                self.pending = buffer;
            }
        }
        if missing > 0 {
            self.apply_gap(missing, sink);
        }
    }

    /// Ends the stream: a body read until close is complete, any other
    /// unfinished message is cut.
    pub(super) fn close(&mut self, sink: &mut impl Sink) {
        match self.state {
            // Trailers follow the last chunk, so the body itself is whole.
            State::UntilClose | State::Trailers => sink.end(),
            State::Length { .. }
            | State::ChunkSize
            | State::ChunkData { .. }
            | State::ChunkDataEnd
            | State::ChunkResync { .. } => {
                sink.gap(None);
                sink.end();
            }
            State::Start | State::Head { .. } | State::Resync | State::Unsupported => {}
        }
        wipe(&mut self.pending);
        self.state = State::Start;
    }

    /// Stops parsing this direction for good.
    pub(super) fn set_unsupported(&mut self) {
        wipe(&mut self.pending);
        self.state = State::Unsupported;
    }

    /// Returns the bytes left of a body framed by Content-Length, `None`
    /// outside such a body.
    pub(super) fn length_body_left(&self) -> Option<u64> {
        match self.state {
            State::Length { remaining } => Some(remaining),
            _ => None,
        }
    }

    pub(super) fn is_unsupported(&self) -> bool {
        self.state == State::Unsupported
    }

    /// Bytes held between calls.
    pub(super) fn buffered(&self) -> usize {
        self.pending.len()
    }

    /// Runs the state machine over `input` and returns how many bytes it
    /// consumed. The rest is a partial line or head, kept for the next call.
    fn process(&mut self, input: &[u8], sink: &mut impl Sink) -> usize {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            match self.state {
                State::Unsupported => return input.len(),
                State::Start => {
                    const PREFACE: &[u8] = b"PRI * HTTP/2";
                    if rest.len() < PREFACE.len() && PREFACE.starts_with(rest) {
                        return pos;
                    }
                    if rest.starts_with(PREFACE) {
                        sink.lost(Loss::Invalid(HttpError::Http2));
                        self.state = State::Unsupported;
                        return input.len();
                    }
                    // A stream seen from its first byte starts with a start
                    // line; one seen from the middle needs resynchronising.
                    match match_start_line(rest, self.kind, false) {
                        Match::Yes => self.state = State::Head { scanned: 0 },
                        Match::NeedMore => return pos,
                        Match::No => self.state = State::Resync,
                    }
                }
                State::Resync => match find_start_line(rest, self.kind) {
                    Search::Found(offset) => {
                        pos += offset;
                        self.state = State::Head { scanned: 0 };
                    }
                    Search::NeedMore(offset) => return pos + offset,
                    Search::NotFound => return input.len(),
                },
                State::Head { scanned } => {
                    if scanned == 0 {
                        // Servers ignore empty lines before a request line
                        // (RFC 9112, section 2.2), so this reader does too.
                        let blank = rest.iter().take_while(|&&byte| byte == b'\r' || byte == b'\n').count();
                        if blank > 0 {
                            pos += blank;
                            continue;
                        }
                    }
                    match find_head_end(rest, scanned) {
                        Ok(end) => {
                            self.read_head(&rest[..end], sink);
                            pos += end;
                        }
                        Err(_) if rest.len() > self.limit => {
                            sink.lost(Loss::Invalid(HttpError::HeadTooLarge { limit: self.limit }));
                            self.state = State::Resync;
                            return input.len();
                        }
                        Err(next) => {
                            self.state = State::Head { scanned: next };
                            return pos;
                        }
                    }
                }
                State::Length { remaining } => {
                    let take = bounded_take(remaining, rest.len());
                    if take > 0 {
                        sink.body(&rest[..take]);
                    }
                    pos += take;
                    let remaining = remaining - take as u64;
                    if remaining > 0 {
                        self.state = State::Length { remaining };
                        return pos;
                    }
                    sink.end();
                    self.state = State::Head { scanned: 0 };
                }
                State::ChunkSize => match read_line(rest, MAX_CHUNK_LINE) {
                    Line::Complete { line, next } => match parse_chunk_size(line) {
                        Some(0) => {
                            pos += next;
                            self.state = State::Trailers;
                        }
                        Some(size) => {
                            pos += next;
                            self.state = State::ChunkData { remaining: size };
                        }
                        None => {
                            sink.gap(None);
                            self.state = State::ChunkResync { at_start: false, scanned: 0 };
                        }
                    },
                    Line::NeedMore => return pos,
                    Line::TooLong => {
                        sink.gap(None);
                        self.state = State::ChunkResync { at_start: false, scanned: 0 };
                    }
                },
                State::ChunkData { remaining } => {
                    let take = bounded_take(remaining, rest.len());
                    if take > 0 {
                        sink.body(&rest[..take]);
                    }
                    pos += take;
                    let remaining = remaining - take as u64;
                    if remaining > 0 {
                        self.state = State::ChunkData { remaining };
                        return pos;
                    }
                    self.state = State::ChunkDataEnd;
                }
                State::ChunkDataEnd => {
                    if rest.starts_with(b"\r\n") {
                        pos += 2;
                        self.state = State::ChunkSize;
                    } else if rest.starts_with(b"\n") {
                        pos += 1;
                        self.state = State::ChunkSize;
                    } else if rest.is_empty() || rest == b"\r" {
                        return pos;
                    } else {
                        sink.gap(None);
                        self.state = State::ChunkResync { at_start: false, scanned: 0 };
                    }
                }
                State::Trailers => match read_line(rest, MAX_START_LINE) {
                    Line::Complete { line, next } => {
                        pos += next;
                        if line.is_empty() {
                            sink.end();
                            self.state = State::Head { scanned: 0 };
                        }
                    }
                    Line::NeedMore => return pos,
                    Line::TooLong => {
                        sink.end();
                        sink.lost(Loss::Invalid(HttpError::InvalidChunk));
                        self.state = State::Resync;
                    }
                },
                State::ChunkResync { at_start, scanned } => {
                    match find_chunk_boundary(rest, at_start, self.kind) {
                        Boundary::Chunk { offset, size } => {
                            pos += offset;
                            self.state = if size == 0 { State::Trailers } else { State::ChunkData { remaining: size } };
                        }
                        Boundary::Message(offset) => {
                            // The next message started, so the damaged one
                            // ended somewhere in the skipped bytes.
                            sink.end();
                            pos += offset;
                            self.state = State::Head { scanned: 0 };
                        }
                        Boundary::NeedMore(offset) => {
                            let scanned = scanned + offset;
                            if scanned > self.limit {
                                return self.give_up_chunks(input.len(), sink);
                            }
                            self.state = State::ChunkResync { at_start: at_start && offset == 0, scanned };
                            return pos + offset;
                        }
                    }
                }
                State::UntilClose => {
                    if rest.is_empty() {
                        return pos;
                    }
                    if sink.body(rest) {
                        // The stream's last event arrived; whatever follows
                        // belongs to a later connection reusing this stream key.
                        sink.end();
                        self.state = State::Head { scanned: 0 };
                    }
                    return input.len();
                }
            }
        }
    }

    fn give_up_chunks(&mut self, consumed: usize, sink: &mut impl Sink) -> usize {
        sink.end();
        sink.lost(Loss::Invalid(HttpError::ChunkResyncFailed));
        self.state = State::Resync;
        consumed
    }

    /// Parses a complete head and moves to its body.
    fn read_head(&mut self, bytes: &[u8], sink: &mut impl Sink) {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let parsed = match self.kind {
            MessageKind::Request => {
                let mut request = httparse::Request::new(&mut headers);
                match request.parse(bytes) {
                    Ok(httparse::Status::Complete(_)) => request_framing(request.headers).map(|framing| {
                        let head = Head { method: request.method, target: request.path, status: None, headers: request.headers };
                        sink.head(&head, framing)
                    }),
                    Ok(httparse::Status::Partial) => Err(HttpError::IncompleteHead),
                    Err(error) => Err(HttpError::InvalidHead(error)),
                }
            }
            MessageKind::Response => {
                let mut response = httparse::Response::new(&mut headers);
                match response.parse(bytes) {
                    Ok(httparse::Status::Complete(_)) => {
                        let status = response.code.unwrap_or(0);
                        response_framing(status, response.headers).map(|framing| {
                            let head = Head { method: None, target: None, status: Some(status), headers: response.headers };
                            sink.head(&head, framing)
                        })
                    }
                    Ok(httparse::Status::Partial) => Err(HttpError::IncompleteHead),
                    Err(error) => Err(HttpError::InvalidHead(error)),
                }
            }
        };
        self.state = match parsed {
            Ok(HeadAction::Body(Framing::Empty | Framing::Length(0))) => {
                sink.end();
                State::Head { scanned: 0 }
            }
            Ok(HeadAction::Body(Framing::Length(length))) => State::Length { remaining: length },
            Ok(HeadAction::Body(Framing::Chunked)) => State::ChunkSize,
            Ok(HeadAction::Body(Framing::UntilClose)) => State::UntilClose,
            Ok(HeadAction::Interim) => State::Head { scanned: 0 },
            Ok(HeadAction::Upgrade) => State::Unsupported,
            Err(error) => {
                sink.lost(Loss::Invalid(error));
                State::Resync
            }
        };
    }

    /// Accounts for `missing` bytes lost right after the input read so far.
    fn apply_gap(&mut self, missing: u64, sink: &mut impl Sink) {
        match self.state {
            State::Unsupported => {}
            State::Start | State::Head { .. } | State::Resync => {
                wipe(&mut self.pending);
                sink.lost(Loss::Gap);
                self.state = State::Resync;
            }
            State::Length { remaining } => {
                sink.gap(Some(missing.min(remaining)));
                if missing < remaining {
                    self.state = State::Length { remaining: remaining - missing };
                } else {
                    sink.end();
                    if missing == remaining {
                        self.state = State::Head { scanned: 0 };
                    } else {
                        sink.lost(Loss::Gap);
                        self.state = State::Resync;
                    }
                }
            }
            State::ChunkData { remaining } => {
                sink.gap(Some(missing.min(remaining)));
                if missing < remaining {
                    self.state = State::ChunkData { remaining: remaining - missing };
                } else if missing == remaining {
                    self.state = State::ChunkDataEnd;
                } else {
                    // The rest of the gap hid chunk framing and perhaps more
                    // data of unknown length.
                    sink.gap(None);
                    self.state = State::ChunkResync { at_start: true, scanned: 0 };
                }
            }
            State::ChunkSize | State::ChunkDataEnd | State::ChunkResync { .. } => {
                wipe(&mut self.pending);
                sink.gap(None);
                self.state = State::ChunkResync { at_start: true, scanned: 0 };
            }
            State::Trailers => {
                // The body itself was complete; only trailers, which are not
                // read, and perhaps the next message's start were lost.
                wipe(&mut self.pending);
                sink.end();
                sink.lost(Loss::Gap);
                self.state = State::Resync;
            }
            State::UntilClose => sink.gap(Some(missing)),
        }
    }
}

/// Returns how many of `available` bytes a body with `remaining` bytes left
/// takes.
fn bounded_take(remaining: u64, available: usize) -> usize {
    usize::try_from(remaining).map_or(available, |remaining| remaining.min(available))
}

/// Removes the first `count` bytes, zeroing the bytes the shift leaves
/// behind so no plaintext stays in the spare capacity.
fn drain_front(buffer: &mut Vec<u8>, count: usize) {
    let count = count.min(buffer.len());
    if count == 0 {
        return;
    }
    let kept = buffer.len() - count;
    buffer.copy_within(count.., 0);
    buffer[kept..].zeroize();
    buffer.truncate(kept);
}

/// Finds the end of a head: the index just past its blank line. On failure
/// returns where the next search can resume.
fn find_head_end(bytes: &[u8], from: usize) -> Result<usize, usize> {
    let mut i = from.min(bytes.len());
    while let Some(offset) = bytes[i..].iter().position(|&byte| byte == b'\n') {
        let newline = i + offset;
        match (bytes.get(newline + 1), bytes.get(newline + 2)) {
            (Some(b'\n'), _) => return Ok(newline + 2),
            (Some(b'\r'), Some(b'\n')) => return Ok(newline + 3),
            (None, _) | (Some(b'\r'), None) => return Err(newline),
            _ => i = newline + 1,
        }
    }
    Err(bytes.len())
}

fn request_framing(headers: &[httparse::Header<'_>]) -> Result<Framing, HttpError> {
    if let Some(chunked) = transfer_encoding_chunked(headers) {
        // A request body must be delimited; only chunked does that.
        return if chunked { Ok(Framing::Chunked) } else { Err(HttpError::UnsupportedTransferEncoding) };
    }
    Ok(content_length(headers)?.map_or(Framing::Empty, Framing::Length))
}

fn response_framing(status: u16, headers: &[httparse::Header<'_>]) -> Result<Framing, HttpError> {
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Framing::Empty);
    }
    if let Some(chunked) = transfer_encoding_chunked(headers) {
        return Ok(if chunked { Framing::Chunked } else { Framing::UntilClose });
    }
    Ok(content_length(headers)?.map_or(Framing::UntilClose, Framing::Length))
}

/// Returns whether the final transfer coding is chunked, or None without a
/// Transfer-Encoding field.
fn transfer_encoding_chunked(headers: &[httparse::Header<'_>]) -> Option<bool> {
    let mut last_coding = None;
    for header in headers.iter().filter(|header| header.name.eq_ignore_ascii_case("transfer-encoding")) {
        for coding in header.value.split(|&byte| byte == b',') {
            let coding = coding.trim_ascii();
            if !coding.is_empty() {
                last_coding = Some(coding);
            }
        }
    }
    last_coding.map(|coding| coding.eq_ignore_ascii_case(b"chunked"))
}

/// Returns the Content-Length, rejecting values that are not decimal or that
/// disagree (RFC 9110, section 8.6).
fn content_length(headers: &[httparse::Header<'_>]) -> Result<Option<u64>, HttpError> {
    let mut length = None;
    for header in headers.iter().filter(|header| header.name.eq_ignore_ascii_case("content-length")) {
        for value in header.value.split(|&byte| byte == b',') {
            let value = value.trim_ascii();
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                return Err(HttpError::InvalidContentLength);
            }
            let parsed: u64 =
                std::str::from_utf8(value).ok().and_then(|text| text.parse().ok()).ok_or(HttpError::InvalidContentLength)?;
            if length.is_some_and(|known| known != parsed) {
                return Err(HttpError::InvalidContentLength);
            }
            length = Some(parsed);
        }
    }
    Ok(length)
}

enum Line<'a> {
    Complete { line: &'a [u8], next: usize },
    NeedMore,
    TooLong,
}

/// Reads one line ending in LF (CR before it removed) of at most `max` bytes.
fn read_line(bytes: &[u8], max: usize) -> Line<'_> {
    let window = &bytes[..bytes.len().min(max)];
    match window.iter().position(|&byte| byte == b'\n') {
        Some(newline) => {
            let line = &bytes[..newline];
            Line::Complete { line: line.strip_suffix(b"\r").unwrap_or(line), next: newline + 1 }
        }
        None if bytes.len() < max => Line::NeedMore,
        None => Line::TooLong,
    }
}

/// Parses a chunk-size line: hex digits, then optional extensions.
fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|byte| byte.is_ascii_hexdigit()).count();
    // 16 hex digits fill a u64.
    if digits == 0 || digits > 16 {
        return None;
    }
    let after = line[digits..].trim_ascii_start();
    if !after.is_empty() && after[0] != b';' {
        return None;
    }
    let text = std::str::from_utf8(&line[..digits]).ok()?;
    u64::from_str_radix(text, 16).ok()
}

#[derive(Debug, PartialEq, Eq)]
enum Search {
    Found(usize),
    /// A candidate starts at this offset but its line is not complete.
    NeedMore(usize),
    NotFound,
}

#[derive(Debug, PartialEq, Eq)]
enum Match {
    Yes,
    No,
    NeedMore,
}

/// Finds the first start line of `kind` in `bytes`.
fn find_start_line(bytes: &[u8], kind: MessageKind) -> Search {
    for start in 0..bytes.len() {
        if !could_start(bytes[start], kind) {
            continue;
        }
        match match_start_line(&bytes[start..], kind, true) {
            Match::Yes => return Search::Found(start),
            Match::NeedMore => return Search::NeedMore(start),
            Match::No => {}
        }
    }
    Search::NotFound
}

fn could_start(byte: u8, kind: MessageKind) -> bool {
    match kind {
        MessageKind::Request => matches!(byte, b'G' | b'P' | b'D' | b'H' | b'O'),
        MessageKind::Response => byte == b'H',
    }
}

/// Methods accepted when resynchronising on a request line.
const METHODS: [&[u8]; 7] = [b"GET ", b"POST ", b"PUT ", b"PATCH ", b"DELETE ", b"HEAD ", b"OPTIONS "];

/// Checks whether `bytes` starts with a whole request or status line.
///
/// When resynchronising inside arbitrary bytes, `strict` also requires a
/// header field name after the line. Body text such as a JSON string
/// `"HTTP/1.1 200 OK"` at the end of a server-sent event line then does not
/// pass, because a blank line or more JSON follows it, never `Name:`.
fn match_start_line(bytes: &[u8], kind: MessageKind, strict: bool) -> Match {
    let prefix = match kind {
        MessageKind::Request => {
            let mut result = Match::No;
            for method in METHODS {
                match match_pattern(bytes, method) {
                    Match::Yes => {
                        result = Match::Yes;
                        break;
                    }
                    Match::NeedMore => result = Match::NeedMore,
                    Match::No => {}
                }
            }
            result
        }
        MessageKind::Response => match_pattern(bytes, b"HTTP/1.# ###"),
    };
    if prefix != Match::Yes {
        return prefix;
    }
    let window = &bytes[..bytes.len().min(MAX_START_LINE)];
    let Some(newline) = window.iter().position(|&byte| byte == b'\n') else {
        return if bytes.len() < MAX_START_LINE { Match::NeedMore } else { Match::No };
    };
    let line = &bytes[..newline];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let valid = match kind {
        MessageKind::Request => is_request_line(line),
        MessageKind::Response => {
            (line.len() == 12 || line.get(12) == Some(&b' ')) && !line.iter().any(|byte| b"\"\\{}".contains(byte))
        }
    };
    if !valid {
        return Match::No;
    }
    if strict { match_field_name(&bytes[newline + 1..]) } else { Match::Yes }
}

/// Maximum length of a header field name when resynchronising.
const MAX_FIELD_NAME: usize = 256;

/// Checks whether `bytes` starts with a header field name and its colon.
fn match_field_name(bytes: &[u8]) -> Match {
    for (index, &byte) in bytes.iter().enumerate().take(MAX_FIELD_NAME) {
        if byte == b':' {
            return if index > 0 { Match::Yes } else { Match::No };
        }
        // Field names are tokens (RFC 9110, section 5.6.2).
        if !(byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)) {
            return Match::No;
        }
    }
    if bytes.len() < MAX_FIELD_NAME { Match::NeedMore } else { Match::No }
}

/// Compares `bytes` with `pattern`, where `#` in the pattern is any digit.
fn match_pattern(bytes: &[u8], pattern: &[u8]) -> Match {
    for (index, expected) in pattern.iter().enumerate() {
        let Some(&byte) = bytes.get(index) else {
            return Match::NeedMore;
        };
        let matches = if *expected == b'#' { byte.is_ascii_digit() } else { byte == *expected };
        if !matches {
            return Match::No;
        }
    }
    Match::Yes
}

fn is_request_line(line: &[u8]) -> bool {
    let mut parts = line.split(|&byte| byte == b' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let target_ok = !target.is_empty()
        && (target[0] == b'/' || target.starts_with(b"http://") || target.starts_with(b"https://") || target == b"*")
        && target.iter().all(|byte| byte.is_ascii_graphic() && !b"\"\\{}".contains(byte));
    METHODS.iter().any(|known| known.strip_suffix(b" ") == Some(method))
        && target_ok
        && matches!(version, b"HTTP/1.0" | b"HTTP/1.1")
}

#[derive(Debug, PartialEq, Eq)]
enum Boundary {
    /// A chunk-size line ends at `offset`; its chunk has `size` bytes.
    Chunk { offset: usize, size: u64 },
    /// The next message's start line begins at this offset.
    Message(usize),
    /// Nothing found before this offset; the rest may hold a partial match.
    NeedMore(usize),
}

/// Searches a damaged chunked body for the next chunk-size line or the next
/// message. A size line is only accepted after a CRLF (the end of the
/// previous chunk's data) and must itself end in CRLF, unless it sits at
/// the first byte after a gap.
fn find_chunk_boundary(bytes: &[u8], at_start: bool, kind: MessageKind) -> Boundary {
    if at_start {
        match match_chunk_line(bytes) {
            ChunkLine::Yes { length, size } => return Boundary::Chunk { offset: length, size },
            ChunkLine::NeedMore => return Boundary::NeedMore(0),
            ChunkLine::No => {}
        }
    }
    let mut start = 0;
    while start < bytes.len() {
        let byte = bytes[start];
        if byte == b'\r' {
            match bytes.get(start + 1) {
                None => return Boundary::NeedMore(start),
                Some(b'\n') => match match_chunk_line(&bytes[start + 2..]) {
                    ChunkLine::Yes { length, size } => return Boundary::Chunk { offset: start + 2 + length, size },
                    ChunkLine::NeedMore => return Boundary::NeedMore(start),
                    ChunkLine::No => {}
                },
                Some(_) => {}
            }
        } else if could_start(byte, kind) {
            match match_start_line(&bytes[start..], kind, true) {
                Match::Yes => return Boundary::Message(start),
                Match::NeedMore if bytes.len() - start < MAX_CHUNK_LINE => return Boundary::NeedMore(start),
                Match::NeedMore | Match::No => {}
            }
        }
        start += 1;
    }
    Boundary::NeedMore(bytes.len())
}

enum ChunkLine {
    Yes { length: usize, size: u64 },
    No,
    NeedMore,
}

fn match_chunk_line(bytes: &[u8]) -> ChunkLine {
    let window = &bytes[..bytes.len().min(MAX_CHUNK_LINE)];
    let Some(newline) = window.iter().position(|&byte| byte == b'\n') else {
        let digits = window.iter().take_while(|byte| byte.is_ascii_hexdigit()).count();
        // Only wait for more bytes while they can still form a size line.
        let plausible = digits > 0 && digits <= 16 && bytes.len() < MAX_CHUNK_LINE;
        return if plausible { ChunkLine::NeedMore } else { ChunkLine::No };
    };
    let Some(line) = bytes[..newline].strip_suffix(b"\r") else {
        return ChunkLine::No;
    };
    match parse_chunk_size(line) {
        Some(size) => ChunkLine::Yes { length: newline + 1, size },
        None => ChunkLine::No,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what the reader passes to its sink.
    #[derive(Default)]
    struct Recorder {
        events: Vec<String>,
        body: Vec<u8>,
        head_only: bool,
    }

    impl Sink for Recorder {
        fn head(&mut self, head: &Head<'_>, framing: Framing) -> HeadAction {
            match (head.method, head.target, head.status) {
                (Some(method), Some(target), _) => self.events.push(format!("head {method} {target} {framing:?}")),
                (_, _, Some(status)) => self.events.push(format!("head {status} {framing:?}")),
                _ => self.events.push("head ?".to_owned()),
            }
            match head.status {
                Some(101) => HeadAction::Upgrade,
                Some(100..=199) => HeadAction::Interim,
                _ if self.head_only => HeadAction::Body(Framing::Empty),
                _ => HeadAction::Body(framing),
            }
        }

        fn body(&mut self, data: &[u8]) -> bool {
            self.body.extend_from_slice(data);
            false
        }

        fn gap(&mut self, lost: Option<u64>) {
            self.events.push(format!("gap {lost:?}"));
        }

        fn end(&mut self) {
            let body = String::from_utf8_lossy(&self.body).into_owned();
            self.events.push(format!("end {body}"));
            self.body.clear();
        }

        fn lost(&mut self, loss: Loss) {
            self.events.push(format!("lost {loss:?}"));
        }
    }

    fn read(kind: MessageKind, pieces: &[(&[u8], u64)]) -> Vec<String> {
        let mut reader = HttpReader::new(kind, 4096);
        let mut recorder = Recorder::default();
        for (data, missing) in pieces {
            reader.feed(data, *missing, &mut recorder);
        }
        recorder.events
    }

    #[test]
    fn keep_alive_requests_at_every_split() {
        let stream = b"POST /v1/a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /v1/b HTTP/1.1\r\nHost: x\r\n\r\n\
            POST /v1/c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: 1\r\n\r\n";
        let expected = vec![
            "head POST /v1/a Length(5)",
            "end hello",
            "head GET /v1/b Empty",
            "end ",
            "head POST /v1/c Chunked",
            "end abcde",
        ];
        for cut in 0..stream.len() {
            let events = read(MessageKind::Request, &[(&stream[..cut], 0), (&stream[cut..], 0)]);
            assert_eq!(events, expected, "cut at {cut}");
        }
        let bytewise: Vec<(&[u8], u64)> = stream.chunks(1).map(|byte| (byte, 0)).collect();
        assert_eq!(read(MessageKind::Request, &bytewise), expected);
    }

    #[test]
    fn responses_interim_and_no_body() {
        let stream =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let events = read(MessageKind::Response, &[(stream, 0)]);
        assert_eq!(events, ["head 100 Empty", "head 204 Empty", "end ", "head 200 Length(2)", "end ok"]);
    }

    #[test]
    fn gap_inside_content_length_body() {
        let events = read(
            MessageKind::Response,
            &[
                (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 4),
                (b"xyz", 0),
                (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz", 0),
            ],
        );
        assert_eq!(events, ["head 200 Length(10)", "gap Some(4)", "end abcxyz", "head 200 Length(1)", "end z"]);
    }

    #[test]
    fn gap_past_message_end_resyncs() {
        let events = read(
            MessageKind::Response,
            &[
                (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab", 10),
                (b"garbage HTTP/1.1 200 in text\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nz", 0),
            ],
        );
        assert_eq!(events, ["head 200 Length(4)", "gap Some(2)", "end ab", "lost Gap", "head 201 Length(1)", "end z"]);
    }

    #[test]
    fn gap_inside_chunk_is_skipped_exactly() {
        let events = read(
            MessageKind::Response,
            &[(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123", 3), (b"789\r\n2\r\nzz\r\n0\r\n\r\n", 0)],
        );
        assert_eq!(events, ["head 200 Chunked", "gap Some(3)", "end 0123789zz"]);
    }

    #[test]
    fn gap_across_chunk_boundary_finds_next_chunk() {
        // The gap hides the end of the first chunk, its CRLF and the start
        // of the second chunk. The reader finds the third chunk's size line.
        let events = read(
            MessageKind::Response,
            &[(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab", 12), (b"ost\r\n3\r\nxyz\r\n0\r\n\r\n", 0)],
        );
        assert_eq!(events, ["head 200 Chunked", "gap Some(2)", "gap None", "end abxyz"]);
    }

    #[test]
    fn gap_ending_at_size_line() {
        let events = read(
            MessageKind::Response,
            &[(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab", 6), (b"3\r\nxyz\r\n0\r\n\r\n", 0)],
        );
        assert_eq!(events, ["head 200 Chunked", "gap Some(2)", "gap None", "end abxyz"]);
    }

    #[test]
    fn chunked_resync_on_next_message() {
        let events = read(
            MessageKind::Response,
            &[
                (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab", 9),
                (b"tail of lost chunk HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nq", 0),
            ],
        );
        assert_eq!(events, ["head 200 Chunked", "gap Some(2)", "gap None", "end ab", "head 200 Length(1)", "end q"]);
    }

    #[test]
    fn invalid_heads_are_skipped() {
        let events = read(
            MessageKind::Request,
            &[(b"POST /a HTTP/1.1\r\nContent-Length: x\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 1\r\n\r\n!", 0)],
        );
        assert_eq!(events, ["lost Invalid(InvalidContentLength)", "head POST /b Length(1)", "end !"]);
    }

    #[test]
    fn head_too_large() {
        let mut reader = HttpReader::new(MessageKind::Request, 64);
        let mut recorder = Recorder::default();
        reader.feed(b"POST /a HTTP/1.1\r\n", 0, &mut recorder);
        reader.feed(&[b'x'; 100], 0, &mut recorder);
        assert_eq!(recorder.events, ["lost Invalid(HeadTooLarge { limit: 64 })"]);
        assert_eq!(reader.buffered(), 0);
    }

    #[test]
    fn http2_and_upgrade_stop_parsing() {
        let events = read(MessageKind::Request, &[(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nGET / HTTP/1.1\r\n\r\n", 0)]);
        assert_eq!(events, ["lost Invalid(Http2)"]);
        let events = read(MessageKind::Response, &[(b"HTTP/1.1 101 Switching Protocols\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", 0)]);
        assert_eq!(events, ["head 101 Empty"]);
    }

    #[test]
    fn head_response_has_no_body() {
        let mut reader = HttpReader::new(MessageKind::Response, 4096);
        let mut recorder = Recorder { head_only: true, ..Recorder::default() };
        reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", 0, &mut recorder);
        assert_eq!(recorder.events, ["head 200 Length(50)", "end ", "head 200 UntilClose", "end "]);
    }

    #[test]
    fn until_close_and_close() {
        let mut reader = HttpReader::new(MessageKind::Response, 4096);
        let mut recorder = Recorder::default();
        reader.feed(b"HTTP/1.0 200 OK\r\nServer: test\r\n\r\nstream", 0, &mut recorder);
        reader.feed(b" data", 5, &mut recorder);
        reader.close(&mut recorder);
        assert_eq!(recorder.events, ["head 200 UntilClose", "gap Some(5)", "end stream data"]);
    }

    #[test]
    fn start_line_matching() {
        let response = MessageKind::Response;
        let request = MessageKind::Request;
        assert_eq!(match_start_line(b"HTTP/1.1 200 OK\r\n", response, false), Match::Yes);
        assert_eq!(match_start_line(b"HTTP/1.1 200\r\n", response, false), Match::Yes);
        assert_eq!(match_start_line(b"HTTP/1.1 2", response, false), Match::NeedMore);
        assert_eq!(match_start_line(b"HTTP/2 200\r\n", response, false), Match::No);
        assert_eq!(match_start_line(b"HTTP/1.1 200 OK\"}\n", response, false), Match::No);
        assert_eq!(match_start_line(b"HTTP/1.1 200 OK\r\n", response, true), Match::NeedMore);
        assert_eq!(match_start_line(b"HTTP/1.1 200 OK\r\nDate: x\r\n", response, true), Match::Yes);
        assert_eq!(match_start_line(b"HTTP/1.1 200 OK and more text\n\n", response, true), Match::No);
        assert_eq!(match_start_line(b"POST /v1/x HTTP/1.1\r\n", request, false), Match::Yes);
        assert_eq!(match_start_line(b"POST /v1/x HTTP/1.1 extra\r\n", request, false), Match::No);
        assert_eq!(match_start_line(b"POST /{x} HTTP/1.1\r\n", request, false), Match::No);
        assert_eq!(match_start_line(b"POS", request, false), Match::NeedMore);
        assert_eq!(match_start_line(b"POSTER /x HTTP/1.1\r\n", request, false), Match::No);
        assert_eq!(find_start_line(b"xxHTTP/1.1 404 Not Found\r\nServer: y\r\n", response), Search::Found(2));
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1a"), Some(26));
        assert_eq!(parse_chunk_size(b"0; name=value"), Some(0));
        assert_eq!(parse_chunk_size(b"ffffffffffffffff"), Some(u64::MAX));
        assert_eq!(parse_chunk_size(b"10000000000000000"), None);
        assert_eq!(parse_chunk_size(b""), None);
        assert_eq!(parse_chunk_size(b"1 x"), None);
    }

    #[test]
    fn huge_content_length_does_not_overflow() {
        let events =
            read(MessageKind::Response, &[(b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\nab", u64::MAX)]);
        assert_eq!(events, ["head 200 Length(18446744073709551615)", "gap Some(18446744073709551613)", "end ab", "lost Gap"]);
    }
}
