//! Incremental server-sent events and newline-delimited JSON, with gaps.
//!
//! Both parsers take a decoded body in pieces of any size and keep only the
//! current line and event between calls. After a gap they drop the damaged
//! event and carry on with the next one, so a response that lost a few
//! kilobytes in the middle still yields the events after the loss.

use super::wipe;

/// Maximum length of an event name; longer names are cut.
const MAX_EVENT_NAME_BYTES: usize = 128;

/// A `text/event-stream` parser following the WHATWG HTML "server-sent
/// events" interpretation rules: lines end with CR, LF or CRLF, `data`
/// lines are joined with LF, `event` names the event, a blank line
/// dispatches it, and lines starting with a colon are comments. `id` and
/// `retry` are ignored because nothing here reconnects.
pub(super) struct SseParser {
    /// The current line when it spans pieces.
    line: Vec<u8>,
    /// Bytes of the current line when it is being skipped and not stored.
    skipped_line_bytes: usize,
    data: Vec<u8>,
    has_data: bool,
    event: String,
    /// The last piece ended with CR, so a leading LF in the next one
    /// belongs to the same line ending.
    after_cr: bool,
    mode: Mode,
    limit: usize,
    /// An event was dropped because it was larger than the limit.
    pub(super) overflowed: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Normal,
    /// Bytes were lost, so the current line starts at an unknown place.
    AfterGap,
    /// Drop lines until the blank line that ends the damaged event.
    SkipEvent,
}

impl SseParser {
    /// Creates a parser that buffers at most `limit` bytes of line and
    /// event data.
    pub(super) fn new(limit: usize) -> Self {
        SseParser {
            line: Vec::new(),
            skipped_line_bytes: 0,
            data: Vec::new(),
            has_data: false,
            event: String::new(),
            after_cr: false,
            mode: Mode::Normal,
            limit,
            overflowed: false,
        }
    }

    /// Parses the next piece of the body, calling `on_event` with the name
    /// (empty when the event had none) and data of each complete event.
    pub(super) fn feed(&mut self, mut bytes: &[u8], on_event: &mut dyn FnMut(&str, &[u8])) {
        while !bytes.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if bytes[0] == b'\n' {
                    bytes = &bytes[1..];
                    continue;
                }
            }
            let Some(end) = bytes.iter().position(|&byte| byte == b'\n' || byte == b'\r') else {
                self.store_partial_line(bytes);
                return;
            };
            self.after_cr = bytes[end] == b'\r';
            if self.line.is_empty() && self.skipped_line_bytes == 0 {
                self.process_line(&bytes[..end], on_event);
            } else {
                self.store_partial_line(&bytes[..end]);
                let line = std::mem::take(&mut self.line);
                let skipped = std::mem::take(&mut self.skipped_line_bytes);
                if skipped > 0 {
                    // Only whether the line was blank matters when skipping.
                    self.process_line(if line.is_empty() { b"-" } else { &line }, on_event);
                } else {
                    self.process_line(&line, on_event);
                }
                self.line = line;
                wipe(&mut self.line);
            }
            bytes = &bytes[end + 1..];
        }
    }

    pub(super) fn buffered(&self) -> usize {
        self.line.len() + self.data.len()
    }

    /// Notes that bytes of the body were lost after the last piece.
    pub(super) fn gap(&mut self) {
        wipe(&mut self.line);
        self.skipped_line_bytes = 0;
        self.reset_event();
        self.after_cr = false;
        self.mode = Mode::AfterGap;
    }

    fn store_partial_line(&mut self, bytes: &[u8]) {
        if self.mode == Mode::SkipEvent {
            self.skipped_line_bytes += bytes.len();
            return;
        }
        if self.line.len() + self.data.len() + bytes.len() > self.limit {
            self.overflow();
            self.skipped_line_bytes += bytes.len().max(1);
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn overflow(&mut self) {
        self.overflowed = true;
        wipe(&mut self.line);
        self.reset_event();
        self.mode = Mode::SkipEvent;
    }

    fn process_line(&mut self, line: &[u8], on_event: &mut dyn FnMut(&str, &[u8])) {
        match self.mode {
            Mode::SkipEvent => {
                if line.is_empty() {
                    self.mode = Mode::Normal;
                }
                return;
            }
            Mode::AfterGap => {
                // The first line after a gap is whole only if the gap ended on
                // a line boundary. A blank line or a field name followed by a
                // colon shows that it did. Anything else is the tail of a cut
                // line.
                if line.is_empty() || starts_with_field(line) {
                    self.mode = Mode::Normal;
                } else {
                    self.mode = Mode::SkipEvent;
                    return;
                }
            }
            Mode::Normal => {}
        }
        if line.is_empty() {
            if self.has_data {
                on_event(&self.event, &self.data);
            }
            self.reset_event();
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&byte| byte == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.line.len() + self.data.len() + value.len() + 1 > self.limit {
                    self.overflow();
                    return;
                }
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => {
                let name = &value[..value.len().min(MAX_EVENT_NAME_BYTES)];
                self.event = String::from_utf8_lossy(name).into_owned();
            }
            _ => {}
        }
    }

    fn reset_event(&mut self) {
        wipe(&mut self.data);
        self.has_data = false;
        self.event.clear();
    }
}

fn starts_with_field(line: &[u8]) -> bool {
    [&b"data:"[..], b"event:", b"id:", b"retry:"].iter().any(|field| line.starts_with(field))
}

/// Splits newline-delimited JSON (`application/x-ndjson`) into lines.
pub(super) struct LineSplitter {
    line: Vec<u8>,
    /// Dropping the rest of a line that was cut by a gap or the limit.
    skipping: bool,
    limit: usize,
    /// A line was dropped because it was larger than the limit.
    pub(super) overflowed: bool,
}

impl LineSplitter {
    pub(super) fn new(limit: usize) -> Self {
        LineSplitter { line: Vec::new(), skipping: false, limit, overflowed: false }
    }

    /// Parses the next piece, calling `on_line` with each complete non-blank
    /// line, without its line ending.
    pub(super) fn feed(&mut self, mut bytes: &[u8], on_line: &mut dyn FnMut(&[u8])) {
        while !bytes.is_empty() {
            let Some(end) = bytes.iter().position(|&byte| byte == b'\n') else {
                self.store(bytes);
                return;
            };
            if self.skipping {
                self.skipping = false;
            } else if self.line.is_empty() {
                emit_line(&bytes[..end], on_line);
            } else {
                self.store(&bytes[..end]);
                if !self.skipping {
                    emit_line(&self.line, on_line);
                }
                self.skipping = false;
                wipe(&mut self.line);
            }
            bytes = &bytes[end + 1..];
        }
    }

    pub(super) fn buffered(&self) -> usize {
        self.line.len()
    }

    /// Notes that bytes were lost after the last piece. The next line is
    /// still parsed: if the gap cut it, it is not valid JSON and is ignored.
    pub(super) fn gap(&mut self) {
        wipe(&mut self.line);
        self.skipping = false;
    }

    fn store(&mut self, bytes: &[u8]) {
        if self.skipping {
            return;
        }
        if self.line.len() + bytes.len() > self.limit {
            self.overflowed = true;
            self.skipping = true;
            wipe(&mut self.line);
            return;
        }
        self.line.extend_from_slice(bytes);
    }
}

fn emit_line(line: &[u8], on_line: &mut dyn FnMut(&[u8])) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if !line.iter().all(u8::is_ascii_whitespace) {
        on_line(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(parser: &mut SseParser, pieces: &[&[u8]]) -> Vec<(String, String)> {
        let mut found = Vec::new();
        for piece in pieces {
            parser.feed(piece, &mut |name, data| found.push((name.to_owned(), String::from_utf8_lossy(data).into_owned())));
        }
        found
    }

    fn pair(name: &str, data: &str) -> (String, String) {
        (name.to_owned(), data.to_owned())
    }

    #[test]
    fn events_across_pieces() {
        let stream = b"event: a\ndata: {\"x\":1}\n\n: comment\r\ndata: line1\r\ndata: line2\r\n\r\ndata: [DONE]\r\r";
        let mut whole = SseParser::new(1024);
        let expected = vec![pair("a", "{\"x\":1}"), pair("", "line1\nline2"), pair("", "[DONE]")];
        assert_eq!(events(&mut whole, &[stream]), expected);
        // Every split point, including between CR and LF.
        for cut in 0..stream.len() {
            let mut parser = SseParser::new(1024);
            assert_eq!(events(&mut parser, &[&stream[..cut], &stream[cut..]]), expected, "cut at {cut}");
        }
    }

    #[test]
    fn gap_mid_line_skips_damaged_event() {
        let mut parser = SseParser::new(1024);
        let mut found = events(&mut parser, &[b"data: {\"first\":1}\n\ndata: {\"sec"]);
        parser.gap();
        found.extend(events(&mut parser, &[b"ond\":2}\ndata: more\n\ndata: {\"third\":3}\n\n"]));
        assert_eq!(found, vec![pair("", "{\"first\":1}"), pair("", "{\"third\":3}")]);
    }

    #[test]
    fn gap_on_event_boundary_keeps_next_event() {
        let mut parser = SseParser::new(1024);
        let mut found = events(&mut parser, &[b"event: one\ndata: 1\n\nevent: two\nda"]);
        parser.gap();
        found.extend(events(&mut parser, &[b"event: three\ndata: 3\n\n"]));
        assert_eq!(found, vec![pair("one", "1"), pair("three", "3")]);
    }

    #[test]
    fn gap_ending_at_blank_line() {
        let mut parser = SseParser::new(1024);
        events(&mut parser, &[b"data: cut"]);
        parser.gap();
        let found = events(&mut parser, &[b"\ndata: next\n\n"]);
        assert_eq!(found, vec![pair("", "next")]);
    }

    #[test]
    fn oversized_event_is_dropped() {
        let mut parser = SseParser::new(16);
        let found = events(&mut parser, &[b"data: 0123456789", b"0123456789\n\ndata: ok\n\n"]);
        assert_eq!(found, vec![pair("", "ok")]);
        assert!(parser.overflowed);
    }

    #[test]
    fn ndjson_lines() {
        let stream = b"{\"a\":1}\n\n{\"b\":2}\r\n{\"c\":3}\n";
        for cut in 0..stream.len() {
            let mut splitter = LineSplitter::new(1024);
            let mut found = Vec::new();
            splitter.feed(&stream[..cut], &mut |line| found.push(line.to_vec()));
            splitter.feed(&stream[cut..], &mut |line| found.push(line.to_vec()));
            assert_eq!(found, vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec(), b"{\"c\":3}".to_vec()], "cut at {cut}");
        }
    }

    #[test]
    fn ndjson_gap_and_overflow() {
        let mut splitter = LineSplitter::new(8);
        let mut found = Vec::new();
        splitter.feed(b"{\"a\":1}\n{\"lo", &mut |line| found.push(line.to_vec()));
        splitter.gap();
        splitter.feed(b"ng\":2}\n{\"toolo", &mut |line| found.push(line.to_vec()));
        splitter.feed(b"ng\":1}\n{}\n", &mut |line| found.push(line.to_vec()));
        assert_eq!(found, vec![b"{\"a\":1}".to_vec(), b"ng\":2}".to_vec(), b"{}".to_vec()]);
        assert!(splitter.overflowed);
    }
}
