//! `agent-sensor verify`: checks the hash chain and the signed checkpoints
//! of evidence files.
//!
//! Files may be given in any order; they are sorted by the seq of their
//! first intact record and read one at a time. Every line must be an intact
//! record (its hash matches its bytes) that links to the one before it, with
//! a seq one higher. The only exception is a torn region left by a crash,
//! which must be followed by the `sensor.chain_recovered` record that names
//! its offset, length and sha256. Verification stops at the first record
//! that fails, and reports the range verified before it.
//!
//! Exit codes, in order of precedence:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | clean: every record intact, every checkpoint signed and verified, the chain closed |
//! | 1 | tampered: a record was modified, deleted, inserted or reordered |
//! | 2 | invalid command line (from the argument parser) |
//! | 3 | a checkpoint signature does not verify, or is from another key |
//! | 4 | warning only: unsigned or unchecked checkpoints, records after the last signed checkpoint, a chain that starts before the first file or ends open, a torn tail not yet recovered |
//! | 5 | an input or the public key cannot be read |

use std::{
    collections::HashSet,
    fmt::Write as _,
    fs::File,
    io::{self, BufRead as _, BufReader},
    path::{Path, PathBuf},
};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::{
    chain::{hex_string, Hash, SealedLine, GENESIS},
    checkpoint::{self, CheckpointView, PublicKey, Reason},
    recovery::{RecoveredView, KIND_CHECKPOINT, KIND_RECOVERED},
};

pub const EXIT_CLEAN: u8 = 0;
pub const EXIT_TAMPERED: u8 = 1;
pub const EXIT_BAD_SIGNATURE: u8 = 3;
pub const EXIT_WARNING: u8 = 4;
pub const EXIT_UNREADABLE: u8 = 5;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read evidence file {path}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is given more than once")]
    Duplicate { path: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Tampered,
    BadSignature,
    Warning,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// A record's bytes do not match its hash.
    HashMismatch,
    /// A line is not a chained record and no recovery record accounts for it.
    Malformed,
    /// `prev_hash` is not the hash of the record before.
    ChainBreak,
    /// `seq` is not one more than the record before.
    SequenceError,
    /// A checkpoint's range or hash disagrees with the chain.
    BadCheckpoint,
    /// A recovery record names torn bytes that are not there or differ.
    BadRecovery,
    BadSignature,
    /// Signed, but not by the given public key.
    WrongKey,
    Unsigned,
    SignatureUnchecked,
    /// Records after the last signed and verified checkpoint.
    Uncovered,
    /// The last record is not a shutdown or rotation checkpoint.
    OpenEnd,
    /// The first record links to an earlier record not given.
    StartsMidChain,
    /// Bytes after the last intact record with no recovery record yet.
    TornTail,
}

impl ProblemKind {
    pub fn severity(self) -> Severity {
        use ProblemKind::*;
        match self {
            HashMismatch | Malformed | ChainBreak | SequenceError | BadCheckpoint | BadRecovery => Severity::Tampered,
            BadSignature | WrongKey => Severity::BadSignature,
            Unsigned | SignatureUnchecked | Uncovered | OpenEnd | StartsMidChain | TornTail => Severity::Warning,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    pub severity: Severity,
    pub file: String,
    /// 1-based line in `file`.
    pub line: Option<usize>,
    pub seq: Option<u64>,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileSummary {
    pub path: String,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub records: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct SeqRange {
    pub first_seq: u64,
    pub last_seq: u64,
    pub records: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckpointCounts {
    /// Signed, and the signature verified with the given key.
    pub verified: u64,
    pub unsigned: u64,
    /// Signed, but no public key was given.
    pub unchecked: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecoveryNote {
    pub file: String,
    pub line: usize,
    pub seq: u64,
    pub reason: String,
    pub torn_offset: Option<u64>,
    pub torn_length: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    /// The last record is the shutdown checkpoint of a sensor that stopped.
    Shutdown,
    /// The last record is a rotation checkpoint: the chain continues in a
    /// newer file that was not given.
    Rotation,
    /// Anything else: the sensor still runs, crashed, or records were
    /// removed from the end.
    Open,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub result: &'static str,
    pub exit_code: u8,
    pub files: Vec<FileSummary>,
    /// The records verified, up to the first bad one.
    pub verified: Option<SeqRange>,
    pub checkpoints: CheckpointCounts,
    /// The last record vouched for by a verified signature.
    pub covered_through_seq: Option<u64>,
    pub end: Option<End>,
    pub recoveries: Vec<RecoveryNote>,
    pub first_bad: Option<Problem>,
    pub warnings: Vec<Problem>,
}

/// The last intact record verified so far.
#[derive(Debug, Clone, Copy)]
struct Tip {
    seq: u64,
    hash: Hash,
    file: usize,
    line: usize,
}

/// Lines after the last intact record that are not intact records.
#[derive(Debug, Clone)]
struct PendingTorn {
    file: usize,
    line: usize,
    offset: u64,
    /// Line and seq of a line that has a complete integrity member whose
    /// hash does not match: a crash cannot produce one, an edit does.
    complete_record: Option<(usize, Option<u64>)>,
    /// Length and sha256 of the region when it ran to the end of its file.
    to_file_end: Option<(u64, Hash)>,
    /// The region's last line ends with a newline. A crash tears a line
    /// before its newline is written, so an unrecovered tail that ends with
    /// one is a whole line that was changed.
    terminated: bool,
}

struct Verifier<'k> {
    key: Option<&'k PublicKey>,
    names: Vec<String>,
    files: Vec<FileSummary>,
    tip: Option<Tip>,
    first_seq: Option<u64>,
    records: u64,
    /// Seq the next checkpoint's `from_seq` must name, when known.
    range_start: Option<u64>,
    /// The last record, when it is a checkpoint.
    last_checkpoint: Option<(u64, Reason)>,
    covered_through: Option<u64>,
    counts: CheckpointCounts,
    pending: Option<PendingTorn>,
    recoveries: Vec<RecoveryNote>,
    warnings: Vec<Problem>,
    error: Option<Problem>,
}

/// One evidence file's contents, for [`verify_contents`].
#[cfg(test)]
pub struct Contents {
    pub name: String,
    pub data: Vec<u8>,
}

/// Verifies evidence files read from disk, one at a time.
// NOTE: each file is read whole into memory. Rotation bounds that at
// `evidence.rotate_size_bytes` plus a record, but not when it is disabled.
pub fn verify_paths(paths: &[PathBuf], key: Option<&PublicKey>) -> Result<Report, VerifyError> {
    let mut seen = HashSet::new();
    let mut order = Vec::new();
    for (index, path) in paths.iter().enumerate() {
        let unreadable = |source| VerifyError::Unreadable { path: path.clone(), source };
        let canonical = std::fs::canonicalize(path).map_err(unreadable)?;
        if !seen.insert(canonical) {
            return Err(VerifyError::Duplicate { path: path.clone() });
        }
        order.push((first_seq_in_file(path).map_err(unreadable)?, index));
    }
    order.sort_by_key(|&(seq, index)| (seq.is_none(), seq, index));
    let mut verifier = Verifier::new(key, order.iter().map(|&(_, i)| paths[i].display().to_string()).collect());
    for (position, &(_, index)) in order.iter().enumerate() {
        let path = &paths[index];
        let data = std::fs::read(path).map_err(|source| VerifyError::Unreadable { path: path.clone(), source })?;
        if !verifier.file(position, &data) {
            break;
        }
    }
    Ok(verifier.finish())
}

/// Verifies evidence files held in memory, in any order.
#[cfg(test)]
pub fn verify_contents(inputs: &[Contents], key: Option<&PublicKey>) -> Report {
    let mut order: Vec<(Option<u64>, usize)> =
        inputs.iter().enumerate().map(|(i, input)| (first_seq_in(&input.data), i)).collect();
    order.sort_by_key(|&(seq, index)| (seq.is_none(), seq, index));
    let mut verifier = Verifier::new(key, order.iter().map(|&(_, i)| inputs[i].name.clone()).collect());
    for (position, &(_, index)) in order.iter().enumerate() {
        if !verifier.file(position, &inputs[index].data) {
            break;
        }
    }
    verifier.finish()
}

#[cfg(test)]
fn first_seq_in(data: &[u8]) -> Option<u64> {
    data.split(|&b| b == b'\n').find_map(intact_seq)
}

fn first_seq_in_file(path: &Path) -> io::Result<Option<u64>> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(None);
        }
        let trimmed = line.strip_suffix(b"\n").unwrap_or(&line);
        if let Some(seq) = intact_seq(trimmed) {
            return Ok(Some(seq));
        }
    }
}

fn intact_seq(line: &[u8]) -> Option<u64> {
    let sealed = SealedLine::parse(line).filter(SealedLine::is_self_consistent)?;
    sealed.meta().ok().map(|meta| meta.seq)
}

impl<'k> Verifier<'k> {
    fn new(key: Option<&'k PublicKey>, names: Vec<String>) -> Self {
        let files = names
            .iter()
            .map(|name| FileSummary { path: name.clone(), first_seq: None, last_seq: None, records: 0 })
            .collect();
        Verifier {
            key,
            names,
            files,
            tip: None,
            first_seq: None,
            records: 0,
            range_start: None,
            last_checkpoint: None,
            covered_through: None,
            counts: CheckpointCounts::default(),
            pending: None,
            recoveries: Vec::new(),
            warnings: Vec::new(),
            error: None,
        }
    }

    fn problem(&self, kind: ProblemKind, file: usize, line: Option<usize>, seq: Option<u64>, message: String) -> Problem {
        Problem { kind, severity: kind.severity(), file: self.names[file].clone(), line, seq, message }
    }

    fn fail(&mut self, kind: ProblemKind, file: usize, line: Option<usize>, seq: Option<u64>, message: String) {
        if self.error.is_none() {
            self.error = Some(self.problem(kind, file, line, seq, message));
        }
    }

    fn warn(&mut self, kind: ProblemKind, file: usize, line: Option<usize>, seq: Option<u64>, message: String) {
        let problem = self.problem(kind, file, line, seq, message);
        self.warnings.push(problem);
    }

    /// Verifies one file's lines; false once a record failed.
    fn file(&mut self, file: usize, data: &[u8]) -> bool {
        let mut offset = 0usize;
        let mut line_number = 0;
        while offset < data.len() {
            line_number += 1;
            let end = data[offset..].iter().position(|&b| b == b'\n').map_or(data.len(), |i| offset + i);
            let line = &data[offset..end];
            let sealed = SealedLine::parse(line);
            let intact = sealed.filter(SealedLine::is_self_consistent).and_then(|s| s.meta().ok().map(|m| (s, m)));
            match intact {
                Some((sealed, meta)) => {
                    let after_torn = self.pending.is_some();
                    if let Some(pending) = self.pending.take() {
                        self.close_torn(pending, file, line_number, offset, data, &sealed, &meta.kind);
                    }
                    if self.error.is_none() {
                        self.record(file, line_number, &sealed, meta.seq, &meta.kind, after_torn);
                    }
                }
                None => {
                    let pending = self.pending.get_or_insert(PendingTorn {
                        file,
                        line: line_number,
                        offset: offset as u64,
                        complete_record: None,
                        to_file_end: None,
                        terminated: false,
                    });
                    if let (Some(sealed), None) = (sealed, pending.complete_record) {
                        pending.complete_record = Some((line_number, sealed.meta().ok().map(|m| m.seq)));
                    }
                    pending.terminated = end < data.len();
                }
            }
            if self.error.is_some() {
                return false;
            }
            offset = end + 1;
        }
        if let Some(pending) = self.pending.as_mut().filter(|p| p.file == file && p.to_file_end.is_none()) {
            let region = &data[pending.offset as usize..];
            pending.to_file_end = Some((region.len() as u64, Sha256::digest(region).into()));
        }
        true
    }

    /// Checks that the intact record after a torn region is the recovery
    /// record that accounts for exactly those bytes.
    #[allow(clippy::too_many_arguments)]
    fn close_torn(
        &mut self,
        pending: PendingTorn,
        file: usize,
        line: usize,
        offset: usize,
        data: &[u8],
        sealed: &SealedLine<'_>,
        kind: &str,
    ) {
        if let Some((bad_line, seq)) = pending.complete_record {
            let message = "the record's bytes do not match its hash: it was changed after it was written".to_owned();
            return self.fail(ProblemKind::HashMismatch, pending.file, Some(bad_line), seq, message);
        }
        let not_a_record = |what: &str| {
            format!(
                "line {} is not an intact chained record{what}; a crash can leave such bytes only at the end of the \
                 newest file, followed after a restart by a {KIND_RECOVERED} record",
                pending.line
            )
        };
        if kind != KIND_RECOVERED {
            let message = not_a_record(&format!(" and the next intact record, line {line}, is not a recovery record"));
            return self.fail(ProblemKind::Malformed, pending.file, Some(pending.line), None, message);
        }
        let torn = sealed.parse_section::<RecoveredView>("sensor").ok().and_then(|sensor| sensor.torn);
        let Some(torn) = torn else {
            let message = not_a_record(&format!(" and the recovery record on line {line} names no torn bytes"));
            return self.fail(ProblemKind::Malformed, pending.file, Some(pending.line), None, message);
        };
        let (length, sha256) = if pending.file == file {
            let end = offset - usize::from(torn.newline_added);
            let region = &data[pending.offset as usize..end.max(pending.offset as usize)];
            (region.len() as u64, Sha256::digest(region).into())
        } else if offset == 0 && !torn.newline_added {
            pending.to_file_end.unwrap_or((0, GENESIS))
        } else {
            let message = not_a_record(&format!(" and the recovery record on line {line} of the next file is not its first"));
            return self.fail(ProblemKind::Malformed, pending.file, Some(pending.line), None, message);
        };
        if torn.offset != pending.offset || torn.length != length || torn.sha256 != hex_string(&sha256) {
            let message = format!(
                "the torn bytes at offset {} ({} bytes, sha256 {}) differ from those the recovery record on line \
                 {line} names (offset {}, {} bytes, sha256 {}): they were changed after the restart",
                pending.offset,
                length,
                hex_string(&sha256),
                torn.offset,
                torn.length,
                torn.sha256
            );
            self.fail(ProblemKind::BadRecovery, pending.file, Some(pending.line), None, message);
        }
    }

    fn record(&mut self, file: usize, line: usize, sealed: &SealedLine<'_>, seq: u64, kind: &str, after_torn: bool) {
        match self.tip {
            None => {
                if sealed.prev_hash == GENESIS {
                    if seq != 0 {
                        let message = format!("a new chain (prev_hash all zeros) starts at seq 0, not {seq}");
                        return self.fail(ProblemKind::SequenceError, file, Some(line), Some(seq), message);
                    }
                    self.range_start = Some(0);
                } else {
                    let message = format!(
                        "the chain starts before this file: its first record, seq {seq}, links to a record not \
                         given, so records before it were not verified"
                    );
                    self.warn(ProblemKind::StartsMidChain, file, Some(line), Some(seq), message);
                }
            }
            Some(tip) => {
                let at = |tip: &Tip| format!("{} line {}", self.names[tip.file], tip.line);
                if seq != tip.seq + 1 {
                    let message = if seq > tip.seq + 1 {
                        format!(
                            "seq jumps from {} ({}) to {seq}: records {}..={} are missing",
                            tip.seq,
                            at(&tip),
                            tip.seq + 1,
                            seq - 1
                        )
                    } else {
                        format!("seq {seq} follows seq {} ({}): records are duplicated or out of order", tip.seq, at(&tip))
                    };
                    return self.fail(ProblemKind::SequenceError, file, Some(line), Some(seq), message);
                }
                if sealed.prev_hash != tip.hash {
                    let message = format!(
                        "prev_hash is not the hash of seq {} ({}): a record was replaced, inserted or reordered here",
                        tip.seq,
                        at(&tip)
                    );
                    return self.fail(ProblemKind::ChainBreak, file, Some(line), Some(seq), message);
                }
            }
        }

        let previous_hash = sealed.prev_hash;
        if kind == KIND_CHECKPOINT {
            self.checkpoint(file, line, sealed, seq, &previous_hash);
        } else if kind == KIND_RECOVERED {
            self.recovered(file, line, sealed, seq, after_torn);
        }
        if self.error.is_some() {
            return;
        }

        if kind != KIND_CHECKPOINT {
            self.last_checkpoint = None;
        }
        self.tip = Some(Tip { seq, hash: sealed.hash, file, line });
        self.first_seq.get_or_insert(seq);
        self.records += 1;
        let summary = &mut self.files[file];
        summary.first_seq.get_or_insert(seq);
        summary.last_seq = Some(seq);
        summary.records += 1;
    }

    fn checkpoint(&mut self, file: usize, line: usize, sealed: &SealedLine<'_>, seq: u64, previous_hash: &Hash) {
        let view = match sealed.parse_section::<CheckpointView>("checkpoint") {
            Ok(view) => view,
            Err(error) => {
                let message = format!("the checkpoint section is invalid: {error}");
                return self.fail(ProblemKind::BadCheckpoint, file, Some(line), Some(seq), message);
            }
        };
        // A chain never starts with a checkpoint, so `seq` is at least 1 here.
        let to_seq = seq.saturating_sub(1);
        if view.to_seq != to_seq || view.hash != hex_string(previous_hash) {
            let message = format!(
                "the checkpoint commits to seq {} with hash {}, but the record before it is seq {to_seq} with hash {}",
                view.to_seq,
                view.hash,
                hex_string(previous_hash)
            );
            return self.fail(ProblemKind::BadCheckpoint, file, Some(line), Some(seq), message);
        }
        if let Some(start) = self.range_start.filter(|&start| start != view.from_seq) {
            let message = format!(
                "the checkpoint covers records from seq {}, but the previous checkpoint (or the chain's start) is \
                 seq {start}",
                view.from_seq
            );
            return self.fail(ProblemKind::BadCheckpoint, file, Some(line), Some(seq), message);
        }
        self.range_start = Some(seq);
        self.last_checkpoint = Some((seq, view.reason));

        if view.signature.is_none() {
            self.counts.unsigned += 1;
            return;
        }
        let Some(key) = self.key else {
            self.counts.unchecked += 1;
            return;
        };
        if view.public_key_sha256.as_deref() != Some(key.sha256.as_str()) {
            let message = format!(
                "the checkpoint is signed by the key with sha256 {}, not by the given public key (sha256 {})",
                view.public_key_sha256.as_deref().unwrap_or("(none named)"),
                key.sha256
            );
            return self.fail(ProblemKind::WrongKey, file, Some(line), Some(seq), message);
        }

        let record = sealed.record();
        let valid = view.algorithm == checkpoint::ALGORITHM
            && checkpoint::signed_message(&record).is_some_and(|(message, signature)| key.verify(&message, &signature));
        if !valid {
            let message = format!(
                "the {} signature over seq {}..={} does not verify with the given public key",
                view.algorithm, view.from_seq, view.to_seq
            );
            return self.fail(ProblemKind::BadSignature, file, Some(line), Some(seq), message);
        }
        self.counts.verified += 1;
        self.covered_through = Some(seq);
    }

    fn recovered(&mut self, file: usize, line: usize, sealed: &SealedLine<'_>, seq: u64, after_torn: bool) {
        let view = match sealed.parse_section::<RecoveredView>("sensor") {
            Ok(view) => view,
            Err(error) => {
                let message = format!("the recovery record's sensor section is invalid: {error}");
                return self.fail(ProblemKind::BadRecovery, file, Some(line), Some(seq), message);
            }
        };
        // A recovery record that follows torn bytes was checked against them
        // in `close_torn`; one that follows an intact record must name none.
        if view.torn.is_some() && !after_torn {
            let message = "the recovery record names torn bytes, but an intact record precedes it".to_owned();
            return self.fail(ProblemKind::BadRecovery, file, Some(line), Some(seq), message);
        }
        self.recoveries.push(RecoveryNote {
            file: self.names[file].clone(),
            line,
            seq,
            reason: view.reason,
            torn_offset: view.torn.as_ref().map(|t| t.offset),
            torn_length: view.torn.as_ref().map(|t| t.length),
        });
    }

    fn finish(mut self) -> Report {
        if self.error.is_none() {
            self.final_warnings();
        }
        let (result, exit_code) = match (&self.error, self.warnings.is_empty()) {
            (Some(problem), _) if problem.severity == Severity::Tampered => ("tampered", EXIT_TAMPERED),
            (Some(_), _) => ("bad_signature", EXIT_BAD_SIGNATURE),
            (None, true) => ("clean", EXIT_CLEAN),
            (None, false) => ("warning", EXIT_WARNING),
        };
        let verified = self.tip.zip(self.first_seq).map(|(tip, first_seq)| SeqRange {
            first_seq,
            last_seq: tip.seq,
            records: self.records,
        });
        let end = self.tip.map(|_| match self.last_checkpoint {
            Some((_, Reason::Shutdown)) => End::Shutdown,
            Some((_, Reason::Rotation)) if self.tip.is_some_and(|tip| tip.file + 1 == self.files.len()) => {
                End::Rotation
            }
            _ => End::Open,
        });
        Report {
            result,
            exit_code,
            files: self.files,
            verified,
            checkpoints: self.counts,
            covered_through_seq: self.covered_through,
            end: if self.error.is_some() { None } else { end },
            recoveries: self.recoveries,
            first_bad: self.error,
            warnings: self.warnings,
        }
    }

    fn final_warnings(&mut self) {
        if let Some(pending) = self.pending.take() {
            if let Some((line, seq)) = pending.complete_record {
                let message = "the record's bytes do not match its hash: it was changed after it was written".to_owned();
                return self.fail(ProblemKind::HashMismatch, pending.file, Some(line), seq, message);
            }
            if pending.terminated {
                let message = format!(
                    "line {} is a whole line (it ends with a newline) but not an intact chained record: it was \
                     changed, because a crash tears a line before its newline",
                    pending.line
                );
                return self.fail(ProblemKind::Malformed, pending.file, Some(pending.line), None, message);
            }
            let after = self.tip.map_or_else(|| "the start".to_owned(), |tip| format!("seq {}", tip.seq));
            let length = pending.to_file_end.map_or(0, |(length, _)| length);
            let message = format!(
                "{length} bytes after {after}, from line {} on, are not an intact record: a crash left them and the \
                 sensor has not restarted since, or the tail was cut",
                pending.line
            );
            self.warn(ProblemKind::TornTail, pending.file, Some(pending.line), None, message);
        }
        let Some(tip) = self.tip else {
            if self.files.iter().all(|f| f.records == 0) && self.warnings.is_empty() {
                let file = self.files.len().saturating_sub(1);
                self.warn(ProblemKind::OpenEnd, file, None, None, "no records found".to_owned());
            }
            return;
        };
        if self.counts.unsigned > 0 {
            let message = format!(
                "{} checkpoints are unsigned: the sensor had no signing key (evidence.signing_key_path)",
                self.counts.unsigned
            );
            self.warn(ProblemKind::Unsigned, tip.file, None, None, message);
        }
        if self.counts.unchecked > 0 {
            let message =
                format!("{} checkpoint signatures were not checked: pass --public-key", self.counts.unchecked);
            self.warn(ProblemKind::SignatureUnchecked, tip.file, None, None, message);
        }
        let first_uncovered = self.covered_through.map_or(self.first_seq.unwrap_or(0), |seq| seq + 1);
        if first_uncovered <= tip.seq {
            let message = format!(
                "records {first_uncovered}..={} are not covered by a signed checkpoint: they could have been \
                 rewritten without a trace",
                tip.seq
            );
            self.warn(ProblemKind::Uncovered, tip.file, Some(tip.line), Some(first_uncovered), message);
        }
        let closed = match self.last_checkpoint {
            Some((_, Reason::Shutdown)) => true,
            Some((_, Reason::Rotation)) => tip.file + 1 == self.files.len(),
            _ => false,
        };
        if !closed && first_uncovered > tip.seq {
            let message = format!(
                "the chain ends at seq {} without the sensor's shutdown checkpoint: the sensor is still running or \
                 crashed, or records after it were removed",
                tip.seq
            );
            self.warn(ProblemKind::OpenEnd, tip.file, Some(tip.line), Some(tip.seq), message);
        }
    }
}

/// Formats a report for people.
pub fn human(report: &Report) -> String {
    let mut out = String::new();
    let headline = match report.result {
        "clean" => "clean: every record is intact, signed and closed",
        "tampered" => "TAMPERED",
        "bad_signature" => "BAD SIGNATURE",
        _ => "verified with warnings",
    };
    let _ = writeln!(out, "result: {headline} (exit code {})", report.exit_code);
    if let Some(bad) = &report.first_bad {
        let line = bad.line.map_or_else(String::new, |line| format!(" line {line}"));
        let seq = bad.seq.map_or_else(String::new, |seq| format!(", seq {seq}"));
        let _ = writeln!(out, "first bad record: {}{line}{seq}: {}", bad.file, bad.message);
    }

    match &report.verified {
        Some(range) => {
            let before = if report.first_bad.is_some() { " before it" } else { "" };
            let _ = writeln!(
                out,
                "verified{before}: seq {}..={} ({} records)",
                range.first_seq, range.last_seq, range.records
            );
        }
        None => {
            let _ = writeln!(out, "verified: no record");
        }
    }
    for file in &report.files {
        let range = match (file.first_seq, file.last_seq) {
            (Some(first), Some(last)) => format!("seq {first}..={last}, {} records", file.records),
            _ => "no intact record verified".to_owned(),
        };
        let _ = writeln!(out, "  {}: {range}", file.path);
    }

    let counts = &report.checkpoints;
    let _ = writeln!(
        out,
        "checkpoints: {} signed and verified, {} unsigned, {} signatures not checked",
        counts.verified, counts.unsigned, counts.unchecked
    );
    if let Some(seq) = report.covered_through_seq {
        let _ = writeln!(out, "covered by a signed checkpoint: through seq {seq}");
    }
    if let Some(end) = report.end {
        let text = match end {
            End::Shutdown => "the sensor's shutdown checkpoint",
            End::Rotation => "a rotation checkpoint; the chain continues in a newer file",
            End::Open => "open (no shutdown checkpoint)",
        };
        let _ = writeln!(out, "end: {text}");
    }

    for recovery in &report.recoveries {
        let torn = match (recovery.torn_offset, recovery.torn_length) {
            (Some(offset), Some(length)) => format!(": {length} torn bytes at offset {offset} kept"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "restart after a crash: {} line {}, seq {} ({}){torn}",
            recovery.file, recovery.line, recovery.seq, recovery.reason
        );
    }
    for warning in &report.warnings {
        let line = warning.line.map_or_else(String::new, |line| format!(" line {line}"));
        let _ = writeln!(out, "warning: {}{line}: {}", warning.file, warning.message);
    }
    out
}

/// Runs `agent-sensor verify`; returns the exit code.
pub fn run(files: &[PathBuf], public_key: Option<&Path>, json: bool) -> u8 {
    let key = match public_key.map(PublicKey::load).transpose() {
        Ok(key) => key,
        Err(error) => {
            eprintln!("error: {error}");
            return EXIT_UNREADABLE;
        }
    };
    match verify_paths(files, key.as_ref()) {
        Ok(report) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(error) => eprintln!("error: serialising the report failed: {error}"),
                }
            } else {
                print!("{}", human(&report));
            }
            report.exit_code
        }
        Err(error) => {
            let source = std::error::Error::source(&error).map_or_else(String::new, |s| format!(": {s}"));
            eprintln!("error: {error}{source}");
            EXIT_UNREADABLE
        }
    }
}
