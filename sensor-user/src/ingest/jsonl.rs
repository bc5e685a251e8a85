//! Tailing of JSON-lines files that agents write (`ingest.jsonl`).
//!
//! Each file is polled every `ingest.jsonl_poll_ms`: new complete lines are
//! read from the last offset, and each becomes a report when it is an MCP
//! `tools/call` request or names a tool through the field map. A file that
//! is replaced (new inode) or truncated is read again from its start. The
//! reads run on the runtime's blocking pool.

use std::{
    io::{Read as _, Seek as _, SeekFrom},
    os::unix::fs::MetadataExt as _,
    sync::Arc,
    time::Duration,
};

use tokio::sync::mpsc;

use super::{unix_now_ns, IngestConfig, IngestStats, JsonlSource};
use crate::reconcile::report::{self, Report};

/// Bytes read from one file per poll; a faster writer is caught up over
/// several polls.
const MAX_READ_PER_POLL: u64 = 4 << 20;

struct Tail {
    source: JsonlSource,
    path_text: String,
    inode: Option<u64>,
    offset: u64,
    /// The start of a line whose end has not been written yet.
    partial: Vec<u8>,
    /// The current line is over `max_line_bytes` and is being skipped.
    skipping: bool,
    /// The file existed at start-up, so it starts at its end unless
    /// `from_start` is set.
    first_poll: bool,
}

impl Tail {
    fn new(source: JsonlSource) -> Tail {
        let path_text = source.path.display().to_string();
        Tail { source, path_text, inode: None, offset: 0, partial: Vec::new(), skipping: false, first_poll: true }
    }

    fn poll(&mut self, max_line: usize, stats: &IngestStats, reports: &mut Vec<Report>) {
        let first_poll = std::mem::replace(&mut self.first_poll, false);
        let Ok(metadata) = std::fs::metadata(&self.source.path) else {
            self.inode = None;
            return;
        };
        if self.inode != Some(metadata.ino()) || metadata.len() < self.offset {
            self.inode = Some(metadata.ino());
            self.offset = if first_poll && !self.source.from_start { metadata.len() } else { 0 };
            self.partial.clear();
            self.skipping = false;
        }
        if metadata.len() <= self.offset {
            return;
        }

        let Ok(mut file) = std::fs::File::open(&self.source.path) else { return };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut chunk = Vec::new();
        let Ok(read) = file.take(MAX_READ_PER_POLL).read_to_end(&mut chunk) else { return };
        self.offset += read as u64;

        let now = unix_now_ns();
        let mut rest = &chunk[..];
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            let (piece, tail) = rest.split_at(end);
            rest = &tail[1..];
            if self.skipping {
                self.skipping = false;
                self.partial.clear();
                continue;
            }
            self.partial.extend_from_slice(piece);
            let line = std::mem::take(&mut self.partial);
            if line.len() > max_line {
                IngestStats::bump(&stats.jsonl_too_long);
                continue;
            }
            self.line(&line, now, stats, reports);
        }
        if !self.skipping {
            self.partial.extend_from_slice(rest);
            if self.partial.len() > max_line {
                IngestStats::bump(&stats.jsonl_too_long);
                self.partial.clear();
                self.skipping = true;
            }
        }
    }

    fn line(&self, line: &[u8], now: u64, stats: &IngestStats, reports: &mut Vec<Report>) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        IngestStats::bump(&stats.jsonl_lines);
        match serde_json::from_slice::<serde_json::Value>(line) {
            Ok(value) => reports.extend(report::from_json_line(&value, &self.source.fields, &self.path_text, now)),
            Err(_) => IngestStats::bump(&stats.jsonl_invalid),
        }
    }
}

pub async fn run(config: IngestConfig, stats: Arc<IngestStats>, sender: mpsc::Sender<Vec<Report>>) {
    let mut tails: Vec<Tail> = config.jsonl.iter().cloned().map(Tail::new).collect();
    let mut interval = tokio::time::interval(Duration::from_millis(config.jsonl_poll_ms.max(10)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let max_line = config.max_line_bytes;
    loop {
        interval.tick().await;
        let poll_stats = stats.clone();
        let polled = tokio::task::spawn_blocking(move || {
            let mut reports = Vec::new();
            for tail in &mut tails {
                tail.poll(max_line, &poll_stats, &mut reports);
            }
            (tails, reports)
        })
        .await;
        let Ok((returned, reports)) = polled else {
            log::error!("ingest: the JSON-lines reader stopped after a panic");
            return;
        };
        tails = returned;
        if reports.is_empty() {
            continue;
        }
        let count = reports.len() as u64;
        // Waiting here only delays the next poll; lines are not lost.
        if sender.send(reports).await.is_err() {
            return;
        }
        stats.reports.fetch_add(count, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::report::FieldMap;

    fn source(path: std::path::PathBuf, from_start: bool) -> JsonlSource {
        JsonlSource { path, from_start, fields: FieldMap::default() }
    }

    #[test]
    fn tail_reads_appended_lines_and_partial_ends() {
        let dir = std::env::temp_dir().join(format!("agent-sensor-jsonl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tools.jsonl");
        std::fs::write(&path, "{\"tool_name\":\"old\"}\n").unwrap();
        let stats = IngestStats::default();
        let mut tail = Tail::new(source(path.clone(), false));
        let mut reports = Vec::new();
        tail.poll(1024, &stats, &mut reports);
        assert!(reports.is_empty(), "lines present at start-up are skipped");

        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        write!(file, "{{\"tool_name\":\"bash\",\"command\":\"ls\"}}\nnot json\n{{\"tool_na").unwrap();
        tail.poll(1024, &stats, &mut reports);
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].command.as_deref(), Some("ls"));
        assert_eq!(stats.jsonl_invalid.load(std::sync::atomic::Ordering::Relaxed), 1);
        write!(file, "me\":\"grep\"}}\n").unwrap();
        tail.poll(1024, &stats, &mut reports);
        assert_eq!(reports.len(), 2);
        assert_eq!(reports[1].tool_name.as_deref(), Some("grep"));

        // Truncation starts over from the beginning.
        std::fs::write(&path, "{\"tool_name\":\"again\"}\n").unwrap();
        tail.poll(1024, &stats, &mut reports);
        assert_eq!(reports.last().and_then(|r| r.tool_name.as_deref()), Some("again"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn overlong_line_is_skipped() {
        let dir = std::env::temp_dir().join(format!("agent-sensor-jsonl-long-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tools.jsonl");
        let long = format!("{{\"tool_name\":\"{}\"}}\n{{\"tool_name\":\"short\"}}\n", "x".repeat(200));
        std::fs::write(&path, long).unwrap();
        let stats = IngestStats::default();
        let mut tail = Tail::new(source(path, true));
        let mut reports = Vec::new();
        tail.poll(64, &stats, &mut reports);
        let names: Vec<_> = reports.iter().filter_map(|r| r.tool_name.clone()).collect();
        assert_eq!(names, ["short"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
