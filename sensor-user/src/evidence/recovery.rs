//! Resuming the hash chain at start-up, and the evidence files' names.
//!
//! The chain continues across restarts: the sensor reads the newest
//! evidence file backwards to its last intact record (one whose hash
//! matches its content) and continues from its sequence number and hash.
//! Bytes after that record are a torn write from a crash. They stay in the
//! file as evidence, and the first record of the new run,
//! `sensor.chain_recovered`, names their offset, length and sha256 so that
//! `verify` can tell them from an edit.
//!
//! Rotated files are named `<stem>-<UTC time>-<first seq>.<extension>`, for
//! example `evidence-20250102T030405Z-00000000000000012345.jsonl`: the time
//! of rotation, then the sequence number of the file's first record as 20
//! digits. The newest rotated file is the one with the highest first seq,
//! so a clock that steps back cannot reorder them.

use std::{
    fs::File,
    io::{self, Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{
    chain::{hex_string, ChainHead, Hash, SealedLine, GENESIS},
    checkpoint::Reason,
};

/// Kind of the record that reports a resumed chain.
pub const KIND_RECOVERED: &str = "sensor.chain_recovered";
/// Kind of checkpoint records.
pub const KIND_CHECKPOINT: &str = "evidence.checkpoint";

/// First window read from the end of a file when looking for intact
/// records; grows fourfold until it finds them or covers the file.
const FIRST_WINDOW: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("cannot read evidence file {path} to resume its hash chain")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot resume the evidence chain: {path} {reason}; move the evidence files aside to start a new chain, \
         and keep them for review"
    )]
    CannotResume { path: PathBuf, reason: String },
}

/// The chain at start-up: its last intact record, torn bytes after it, and
/// the range the next checkpoint covers.
#[derive(Debug, Default)]
pub struct Resume {
    /// The last intact record; `None` starts a new chain.
    pub head: Option<ChainHead>,
    /// The file holding `head`.
    pub head_file: Option<PathBuf>,
    /// Bytes after the last intact record, kept and reported.
    pub torn: Option<TornRegion>,
    /// The active file is not empty and does not end with a newline, so one
    /// must be written before the next record.
    pub needs_newline: bool,
    /// The last intact record is a shutdown checkpoint.
    pub clean_stop: bool,
    /// `from_seq` of the next checkpoint: the last checkpoint's seq, or the
    /// chain's first seq.
    pub range_start: u64,
    /// Sequence number of the first intact record in the active file.
    pub active_first_seq: Option<u64>,
}

/// Bytes after the last intact record.
#[derive(Debug, Clone, PartialEq)]
pub struct TornRegion {
    pub file: PathBuf,
    pub offset: u64,
    pub length: u64,
    pub sha256: Hash,
    /// True when the region is in the active file, where the recovery
    /// record follows it. Otherwise it ends a rotated file, and the
    /// recovery record starts the active one.
    pub in_active: bool,
}

/// The `sensor` section of a `sensor.chain_recovered` record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoveredView {
    /// `torn_tail` when bytes were torn, `unclean_stop` when the previous
    /// run ended on a whole record other than its shutdown checkpoint.
    pub reason: String,
    /// `None` when no intact record was found and a new chain starts.
    pub resumed_after_seq: Option<u64>,
    pub previous_file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torn: Option<TornView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TornView {
    /// The file as named when the sensor started; rotation renames it later.
    pub file: String,
    pub offset: u64,
    pub length: u64,
    pub sha256: String,
    /// A newline was written after the torn bytes so that this record
    /// starts a line of its own; it is not part of `length`.
    pub newline_added: bool,
}

impl RecoveredView {
    /// Builds the record to write; `None` when the previous run stopped
    /// cleanly.
    pub fn from_resume(resume: &Resume) -> Option<RecoveredView> {
        if resume.torn.is_none() && (resume.head.is_none() || resume.clean_stop) {
            return None;
        }
        let torn = resume.torn.as_ref().map(|torn| TornView {
            file: torn.file.display().to_string(),
            offset: torn.offset,
            length: torn.length,
            sha256: hex_string(&torn.sha256),
            newline_added: torn.in_active && resume.needs_newline,
        });
        Some(RecoveredView {
            reason: if torn.is_some() { "torn_tail" } else { "unclean_stop" }.to_owned(),
            resumed_after_seq: resume.head.map(|head| head.seq),
            previous_file: resume.head_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            torn,
        })
    }
}

/// Returns the name a rotated file gets.
pub fn rotated_name(active: &Path, time: SystemTime, first_seq: u64) -> PathBuf {
    let (stem, extension) = split_name(active);
    let stamp: String = humantime::format_rfc3339_seconds(time)
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    active.with_file_name(format!("{stem}-{stamp}-{first_seq:020}{extension}"))
}

/// Lists the rotated files of `active`, oldest first by their first seq.
pub fn rotated_files(active: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let (stem, extension) = split_name(active);
    let dir = match active.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(middle) = name.strip_prefix(&format!("{stem}-")).and_then(|rest| rest.strip_suffix(&extension)) else {
            continue;
        };
        // `<16-character time>-<20 digits>`
        let Some((stamp, seq)) = middle.split_once('-') else { continue };
        if stamp.len() != 16 || seq.len() != 20 {
            continue;
        }
        if let Ok(seq) = seq.parse::<u64>() {
            files.push((seq, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

fn split_name(path: &Path) -> (String, String) {
    let stem = path.file_stem().map_or_else(|| "evidence".to_owned(), |s| s.to_string_lossy().into_owned());
    let extension = path.extension().map_or_else(String::new, |e| format!(".{}", e.to_string_lossy()));
    (stem, extension)
}

/// Finds the chain's last intact record and any torn bytes after it, in the
/// active file or its rotated files.
pub fn scan(active: &Path) -> Result<Resume, RecoveryError> {
    let read_error = |path: &Path| {
        let path = path.to_owned();
        move |source| RecoveryError::Read { path, source }
    };
    let active_len = match std::fs::metadata(active) {
        Ok(metadata) => metadata.len(),
        Err(error) if error.kind() == io::ErrorKind::NotFound => 0,
        Err(error) => return Err(read_error(active)(error)),
    };
    let mut candidates: Vec<PathBuf> = Vec::new();
    if active_len > 0 {
        candidates.push(active.to_owned());
    }
    let rotated = rotated_files(active).map_err(read_error(active))?;
    candidates.extend(rotated.into_iter().rev().map(|(_, path)| path));
    let Some(newest) = candidates.first() else {
        return Ok(Resume::default());
    };
    let in_active = active_len > 0;
    let tail = scan_tail(newest)?;
    let mut resume = Resume { needs_newline: in_active && tail.last_byte != Some(b'\n'), ..Resume::default() };

    let (head_line, head_file) = match &tail.last_good {
        Some(good) => (good.clone(), newest.clone()),
        None => match candidates.get(1) {
            // The whole newest file is torn: resume from the file before it,
            // which must end on an intact record.
            Some(previous) => {
                let previous_tail = scan_tail(previous)?;
                match previous_tail.last_good {
                    Some(good) if good.end == previous_tail.len => (good, previous.clone()),
                    _ => {
                        return Err(RecoveryError::CannotResume {
                            path: previous.clone(),
                            reason: format!("does not end on an intact record, and {} has none", newest.display()),
                        });
                    }
                }
            }
            None => {
                // No intact record anywhere: the bytes are kept and reported,
                // and a new chain starts after them.
                resume.torn = Some(torn_region(newest, 0, tail.len, in_active)?);
                return Ok(resume);
            }
        },
    };
    let torn_start = if tail.last_good.is_some() { head_line.end } else { 0 };
    if torn_start < tail.len {
        resume.torn = Some(torn_region(newest, torn_start, tail.len, in_active)?);
    }
    resume.head = Some(ChainHead { seq: head_line.seq, hash: head_line.hash });
    resume.clean_stop = head_line.checkpoint_reason == Some(Reason::Shutdown);
    resume.range_start = range_start(&candidates, &head_file, &tail, &head_line)?;
    resume.head_file = Some(head_file);
    if in_active && tail.last_good.is_some() {
        resume.active_first_seq = first_good_seq(active)?;
    }
    Ok(resume)
}

/// Finds the `from_seq` of the next checkpoint: the seq of the last
/// checkpoint at or before the head, else the chain's first record.
fn range_start(candidates: &[PathBuf], head_file: &Path, tail: &Tail, head: &GoodLine) -> Result<u64, RecoveryError> {
    if head.checkpoint_reason.is_some() {
        return Ok(head.seq);
    }
    if let Some(seq) = tail.last_checkpoint.filter(|_| tail.last_good.is_some()) {
        return Ok(seq);
    }

    let position = candidates.iter().position(|p| p == head_file).unwrap_or(0);
    let full = scan_tail_for_checkpoint(head_file)?;
    if let Some(seq) = full.last_checkpoint {
        return Ok(seq);
    }
    if let Some(first) = full.first_good.as_ref().filter(|first| first.prev_hash == GENESIS) {
        return Ok(first.seq);
    }
    // A file after a rotation starts right after the rotation checkpoint
    // that ends the file before it.
    if let Some(previous) = candidates.get(position + 1) {
        let previous_tail = scan_tail(previous)?;
        if let Some(good) = previous_tail.last_good.filter(|good| good.checkpoint_reason.is_some()) {
            return Ok(good.seq);
        }
    }

    let guess = full.first_good.map_or(head.seq, |first| first.seq);
    log::warn!(
        "no checkpoint found before seq {} in {}: the next checkpoint's from_seq is {guess}, the file's first \
         record, which verify checks only when it has the files before",
        head.seq,
        head_file.display()
    );
    Ok(guess)
}

#[derive(Debug, Clone)]
struct GoodLine {
    seq: u64,
    hash: Hash,
    prev_hash: Hash,
    /// Offset just past the line's newline, or the file length when it has
    /// none.
    end: u64,
    checkpoint_reason: Option<Reason>,
}

#[derive(Debug, Default)]
struct Tail {
    len: u64,
    last_byte: Option<u8>,
    last_good: Option<GoodLine>,
    /// Seq of the last checkpoint at or before `last_good`.
    last_checkpoint: Option<u64>,
    first_good: Option<GoodLine>,
}

/// Reads `path` backwards in growing windows until it finds the last intact
/// record and the last checkpoint before it, or has read the whole file.
fn scan_tail(path: &Path) -> Result<Tail, RecoveryError> {
    scan_backwards(path, false)
}

/// Like [`scan_tail`], but reads the whole file when no checkpoint is found
/// and also records the first intact record.
fn scan_tail_for_checkpoint(path: &Path) -> Result<Tail, RecoveryError> {
    scan_backwards(path, true)
}

fn scan_backwards(path: &Path, want_first: bool) -> Result<Tail, RecoveryError> {
    let error = |source| RecoveryError::Read { path: path.to_owned(), source };
    let mut file = File::open(path).map_err(error)?;
    let len = file.metadata().map_err(error)?.len();
    let mut window = FIRST_WINDOW.min(len);
    loop {
        let start = len - window;
        let mut buffer = vec![0; window as usize];
        file.seek(SeekFrom::Start(start)).map_err(error)?;
        file.read_exact(&mut buffer).map_err(error)?;
        let tail = scan_buffer(&buffer, start, len, want_first);
        let done = tail.last_good.is_some() && tail.last_checkpoint.is_some();
        if done || window == len {
            return Ok(tail);
        }
        window = (window * 4).min(len);
    }
}

/// Scans the bytes `buffer`, which sit at `start` in a file of `len` bytes.
fn scan_buffer(buffer: &[u8], start: u64, len: u64, want_first: bool) -> Tail {
    let mut tail = Tail { len, last_byte: buffer.last().copied(), ..Tail::default() };
    let mut lines = Vec::new();
    let mut line_start = 0;
    for (index, &byte) in buffer.iter().enumerate() {
        if byte == b'\n' {
            lines.push((line_start, index, index + 1));
            line_start = index + 1;
        }
    }
    if line_start < buffer.len() {
        lines.push((line_start, buffer.len(), buffer.len()));
    }
    // The first line of a window that starts mid-file may be cut.
    let skip = usize::from(start > 0);
    for &(from, to, end) in lines.iter().skip(skip).rev() {
        let Some(good) = good_line(&buffer[from..to], start + end as u64) else { continue };
        if tail.last_good.is_none() {
            tail.last_good = Some(good.clone());
        }
        if good.checkpoint_reason.is_some() && tail.last_checkpoint.is_none() && !want_first {
            tail.last_checkpoint = Some(good.seq);
            break;
        }
        if good.checkpoint_reason.is_some() && tail.last_checkpoint.is_none() {
            tail.last_checkpoint = Some(good.seq);
        }
        if want_first {
            tail.first_good = Some(good);
        }
    }
    tail
}

fn good_line(line: &[u8], end: u64) -> Option<GoodLine> {
    let sealed = SealedLine::parse(line)?;
    if !sealed.is_self_consistent() {
        return None;
    }
    let meta = sealed.meta().ok()?;
    let checkpoint_reason = if meta.kind == KIND_CHECKPOINT {
        #[derive(Deserialize)]
        struct Inner {
            reason: Reason,
        }
        Some(sealed.parse_section::<Inner>("checkpoint").ok()?.reason)
    } else {
        None
    };
    Some(GoodLine { seq: meta.seq, hash: sealed.hash, prev_hash: sealed.prev_hash, end, checkpoint_reason })
}

/// Reads the file line by line from its start, because the first intact
/// record is normally the first line and the file can be large.
fn first_good_seq(path: &Path) -> Result<Option<u64>, RecoveryError> {
    use io::BufRead as _;

    let error = |source| RecoveryError::Read { path: path.to_owned(), source };
    let mut reader = io::BufReader::new(File::open(path).map_err(error)?);
    let mut line = Vec::new();
    let mut offset = 0;
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line).map_err(error)?;
        if read == 0 {
            return Ok(None);
        }
        offset += read as u64;
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        // `end` counts the newline, as the whole-file scan does, also for a
        // last line that lacks one.
        let end = offset + u64::from(text.len() == line.len());
        if let Some(good) = good_line(text, end) {
            return Ok(Some(good.seq));
        }
    }
}

fn torn_region(path: &Path, offset: u64, end: u64, in_active: bool) -> Result<TornRegion, RecoveryError> {
    let error = |source| RecoveryError::Read { path: path.to_owned(), source };
    let mut file = File::open(path).map_err(error)?;
    file.seek(SeekFrom::Start(offset)).map_err(error)?;
    let mut hasher = Sha256::new();
    let copied = io::copy(&mut file.take(end - offset), &mut HashWriter(&mut hasher)).map_err(error)?;
    Ok(TornRegion { file: path.to_owned(), offset, length: copied, sha256: hasher.finalize().into(), in_active })
}

struct HashWriter<'a>(&'a mut Sha256);

impl io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_names_sort_and_parse() {
        let dir = std::env::temp_dir().join(format!("agent-sensor-rotated-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let active = dir.join("evidence.jsonl");
        let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_735_787_045);
        let name = rotated_name(&active, time, 12_345);
        assert_eq!(name.file_name().unwrap(), "evidence-20250102T030405Z-00000000000000012345.jsonl");
        for (seq, later) in [(12_345, 0), (99, 10)] {
            let path = rotated_name(&active, time + std::time::Duration::from_secs(later), seq);
            std::fs::write(path, b"").unwrap();
        }
        std::fs::write(dir.join("evidence-notes.jsonl"), b"").unwrap();
        std::fs::write(&active, b"").unwrap();
        let seqs: Vec<u64> = rotated_files(&active).unwrap().into_iter().map(|(seq, _)| seq).collect();
        assert_eq!(seqs, [99, 12_345]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
