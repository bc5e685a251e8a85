//! Pipeline stage 10: records in, JSON lines out to standard output and to
//! the evidence file.
//!
//! Records are serialised once into a reused buffer, sealed into the hash
//! chain (`evidence::chain`) and written through buffered writers, the same
//! line to every sink. The daemon flushes after each drained batch and on a
//! timer, so a quiet sensor never holds records back for long. The sinks
//! also write the chain's own records: a `sensor.chain_recovered` record
//! when the previous run did not stop cleanly, and `evidence.checkpoint`
//! records after every `evidence.checkpoint_every_records` records, on the
//! daemon's timer, before each rotation and at shutdown.
//!
//! Each sink writes `native` records or OCSF events (`ocsf.rs`), chosen per
//! sink. Sinks of one format share one chain. When standard output and the
//! file differ, each has a chain of its own with the same seq numbers and
//! its own signed checkpoints, so either verifies alone.

pub mod file;
pub mod ocsf;

use std::{
    io::{self, BufWriter, Stdout, Write},
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;

use crate::{
    config::{EvidenceConfig, FsyncPolicy, OutputConfig, OutputFormat},
    evidence::{
        chain::{self, ChainError, Hash, GENESIS},
        checkpoint::{self, CheckpointView, KeyError, Reason, Signer},
        recovery::{self, RecoveredView, RecoveryError, Resume, KIND_CHECKPOINT, KIND_RECOVERED},
        Clock, Head, Record, Stamper,
    },
};
use file::{EvidenceFile, WriterLock};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot open evidence file {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing to {sink} failed")]
    Write {
        sink: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("forcing {path} to disk failed")]
    Sync {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("rotating evidence file {from} to {to} failed")]
    Rotate {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "another agent-sensor is writing {path} (it holds {lock}); stop it, or give this one another \
         output.evidence_path"
    )]
    Locked { path: PathBuf, lock: PathBuf },
    #[error("serialising a record failed")]
    Serialize(#[source] serde_json::Error),
    #[error("sealing a record into the hash chain failed")]
    Chain(#[from] ChainError),
    #[error("loading the checkpoint signing key failed")]
    Key(#[from] KeyError),
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
}

#[derive(Serialize)]
struct CheckpointRecord<'a, 'h> {
    #[serde(flatten)]
    head: &'a Head<'h>,
    checkpoint: CheckpointView,
}

#[derive(Serialize)]
struct RecoveredRecord<'a> {
    #[serde(flatten)]
    head: Head<'a>,
    sensor: RecoveredView,
}

/// One hash chain and the sinks its lines go to.
struct Chain {
    format: OutputFormat,
    /// Hash of the last record written to this chain.
    prev_hash: Hash,
    to_file: bool,
    to_stdout: bool,
}

pub struct Sinks {
    stdout: Option<BufWriter<Stdout>>,
    file: Option<EvidenceFile>,
    _lock: Option<WriterLock>,
    stamper: Stamper,
    signer: Signer,
    settings: EvidenceConfig,
    /// One chain, or two when standard output and the file differ in format.
    chains: Vec<Chain>,
    last_seq: Option<u64>,
    /// `from_seq` of the next checkpoint.
    range_start: u64,
    /// Records written since the last checkpoint.
    since_checkpoint: u64,
    last_checkpoint: Instant,
    /// The native record being written.
    line: Vec<u8>,
    /// The record in a chain's format, sealed.
    rendered: Vec<u8>,
    pub records_written: u64,
    pub checkpoints_written: u64,
    /// Lines were written since the last flush.
    unflushed: bool,
    /// The export stage's channel (`[export.otlp]`), fed every sealed line.
    export: Option<crate::export::ExportQueue>,
}

impl Sinks {
    /// Opens the sinks and resumes the evidence file's chain. `stamper`
    /// must share its sequence with the pipeline's; it is moved to the seq
    /// after the chain's last record.
    #[cfg_attr(not(test), allow(dead_code, reason = "the daemon opens them with export; tests without"))]
    pub fn open(output: &OutputConfig, evidence: &EvidenceConfig, stamper: Stamper) -> Result<Sinks, SinkError> {
        Self::open_with_export(output, evidence, stamper, None)
    }

    /// Like [`Sinks::open`], and hands every line written, from the first
    /// on, to the export stage.
    pub fn open_with_export(
        output: &OutputConfig,
        evidence: &EvidenceConfig,
        stamper: Stamper,
        export: Option<crate::export::ExportQueue>,
    ) -> Result<Sinks, SinkError> {
        let signer = match evidence.signing_key() {
            Some(path) => {
                let signer = Signer::load(path)?;
                log::info!(
                    "signing evidence checkpoints with {} (public key sha256 {})",
                    path.display(),
                    signer.key_sha256().unwrap_or_default()
                );
                signer
            }
            None => {
                log::warn!("evidence checkpoints are unsigned: set evidence.signing_key_path to sign them");
                Signer::unsigned()
            }
        };
        let (resume, file, lock) = match output.evidence_file() {
            Some(path) => {
                let lock = WriterLock::acquire(path)?;
                let resume = recovery::scan(path)?;
                let file = EvidenceFile::open(path, resume.active_first_seq)?;
                (resume, Some(file), Some(lock))
            }
            None => (Resume::default(), None, None),
        };
        if let Some(head) = resume.head {
            stamper.resume_at(head.seq + 1);
        }
        let chains = chains_for(output, file.is_some(), resume.head.map_or(GENESIS, |head| head.hash));
        let mut sinks = Sinks {
            stdout: output.stdout.then(|| BufWriter::with_capacity(256 * 1024, io::stdout())),
            file,
            _lock: lock,
            stamper,
            signer,
            settings: evidence.clone(),
            chains,
            last_seq: resume.head.map(|head| head.seq),
            range_start: resume.range_start,
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            line: Vec::with_capacity(4096),
            rendered: Vec::with_capacity(4096),
            records_written: 0,
            unflushed: false,
            checkpoints_written: 0,
            export,
        };
        sinks.report_resume(&resume)?;
        Ok(sinks)
    }

    /// Logs how the chain continues and writes `sensor.chain_recovered`
    /// when the previous run did not stop cleanly.
    fn report_resume(&mut self, resume: &Resume) -> Result<(), SinkError> {
        match (&self.file, resume.head) {
            (None, _) => log::info!("no evidence file: a new hash chain starts on standard output"),
            (Some(file), None) => log::info!("new evidence hash chain in {}", file.path().display()),
            (Some(file), Some(head)) => log::info!(
                "evidence hash chain in {} continues after seq {} from {}",
                file.path().display(),
                head.seq,
                resume.head_file.as_ref().map_or_else(String::new, |p| p.display().to_string())
            ),
        }
        if let Some(torn) = &resume.torn {
            log::warn!(
                "{} has {} torn bytes at offset {} after the last intact record, left by a crash; they are kept \
                 and reported in a {KIND_RECOVERED} record",
                torn.file.display(),
                torn.length,
                torn.offset
            );
        }
        if let (true, Some(file)) = (resume.needs_newline, &mut self.file) {
            file.append_raw(b"\n")?;
        }
        let Some(view) = RecoveredView::from_resume(resume) else { return Ok(()) };
        let Sinks { stamper, line, .. } = self;
        let head = stamper.head(KIND_RECOVERED, Clock::boot_now_ns());
        line.clear();
        serde_json::to_writer(&mut *line, &RecoveredRecord { head, sensor: view }).map_err(SinkError::Serialize)?;
        self.append_sealed()?;
        self.flush()
    }

    /// Serialises any record through serde, seals it into the chain and
    /// writes it as a JSON line to every sink, for tests of the sinks.
    #[cfg(test)]
    pub fn write<T: Serialize>(&mut self, record: &T) -> Result<(), SinkError> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, record).map_err(SinkError::Serialize)?;
        self.seal_line()
    }

    /// Writes a pipeline record: serialises it with `Record::write_json`,
    /// seals it into every chain and writes it; checkpoints and rotates
    /// when due.
    pub fn write_record(&mut self, record: &Record<'_>) -> Result<(), SinkError> {
        self.line.clear();
        record.write_json(&mut self.line).map_err(SinkError::Serialize)?;
        self.seal_line()
    }

    /// Seals the record in `self.line`, then checkpoints and rotates when due.
    fn seal_line(&mut self) -> Result<(), SinkError> {
        self.append_sealed()?;
        if self.since_checkpoint >= self.settings.checkpoint_every_records {
            self.checkpoint(Reason::Count)?;
        }
        let rotate_size = self.settings.rotate_size_bytes;
        if rotate_size > 0 && self.file.as_ref().is_some_and(|file| file.len() >= rotate_size) {
            self.rotate()?;
        }
        Ok(())
    }

    /// Seals the record in `self.line` into every chain and writes it.
    /// The record's seq is the last one the stamper handed out.
    fn append_sealed(&mut self) -> Result<(), SinkError> {
        let seq = self.stamper.next_seq().saturating_sub(1);
        for index in 0..self.chains.len() {
            self.append_to_chain(index, seq, None)?;
        }
        self.last_seq = Some(seq);
        self.records_written += 1;
        self.since_checkpoint += 1;
        Ok(())
    }

    /// Renders the native record in `self.line` in the chain's format,
    /// signs it when `signer` is given (a checkpoint), seals it and writes
    /// it to the chain's sinks.
    fn append_to_chain(&mut self, index: usize, seq: u64, signer: Option<&Signer>) -> Result<(), SinkError> {
        let Sinks { chains, line, rendered, file, stdout, export, unflushed, .. } = self;
        let chain = &mut chains[index];

        rendered.clear();
        let hash = match chain.format {
            OutputFormat::Native => {
                rendered.extend_from_slice(line);
                if let Some(signer) = signer {
                    checkpoint::sign_record(rendered, signer);
                }
                chain::seal(&chain.prev_hash, rendered)?
            }
            OutputFormat::Ocsf => {
                ocsf::render(line, rendered).map_err(SinkError::Serialize)?;
                if let Some(signer) = signer {
                    checkpoint::sign_record(rendered, signer);
                }
                chain::seal_nested(&chain.prev_hash, rendered)?
            }
        };
        rendered.push(b'\n');
        *unflushed = true;

        if let (true, Some(file)) = (chain.to_file, file.as_mut()) {
            file.append(rendered, seq)?;
        }
        if let (true, Some(stdout)) = (chain.to_stdout, stdout.as_mut()) {
            stdout.write_all(rendered).map_err(|source| SinkError::Write { sink: "stdout", source })?;
        }
        // The first chain is the evidence file's when there is one, so the
        // export carries the lines a remote store can check against it.
        if let (0, Some(export)) = (index, export.as_mut()) {
            export.offer(seq, rendered);
        }
        chain.prev_hash = hash;
        Ok(())
    }

    /// Writes a checkpoint covering the records since the previous one.
    fn checkpoint(&mut self, reason: Reason) -> Result<(), SinkError> {
        let Some(to_seq) = self.last_seq else { return Ok(()) };
        let mut stamper = self.stamper.clone();
        let head = stamper.head(KIND_CHECKPOINT, Clock::boot_now_ns());
        let seq = head.seq;
        // Each chain commits to its own last hash, and the signature covers
        // every byte of the record as that chain writes it, so no field of
        // the newest checkpoint can change unnoticed, though nothing links
        // to it yet.
        let signer = std::mem::replace(&mut self.signer, Signer::unsigned());
        let mut result = Ok(());
        for index in 0..self.chains.len() {
            let view = CheckpointView::new(reason, self.range_start, to_seq, &self.chains[index].prev_hash, &signer);
            self.line.clear();
            result = serde_json::to_writer(&mut self.line, &CheckpointRecord { head: &head, checkpoint: view })
                .map_err(SinkError::Serialize)
                .and_then(|()| self.append_to_chain(index, seq, Some(&signer)));
            if result.is_err() {
                break;
            }
        }
        self.signer = signer;
        result?;
        self.last_seq = Some(seq);
        self.records_written += 1;
        self.range_start = seq;
        self.checkpoints_written += 1;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        if let (true, Some(file)) = (self.settings.fsync != FsyncPolicy::Never, &mut self.file) {
            file.sync_data()?;
        }
        Ok(())
    }

    /// Ends the active file with a checkpoint and renames it.
    fn rotate(&mut self) -> Result<(), SinkError> {
        if self.file.is_none() {
            return Ok(());
        }
        self.checkpoint(Reason::Rotation)?;
        let sync = self.settings.fsync != FsyncPolicy::Never;
        if let Some(file) = &mut self.file {
            let rotated = file.rotate(SystemTime::now(), sync)?;
            log::info!("rotated the evidence file to {}", rotated.display());
        }
        Ok(())
    }

    /// Runs the time-based work: a checkpoint when uncovered records have
    /// waited `evidence.checkpoint_interval_secs`, rotation by age. The
    /// daemon calls it about once a second.
    pub fn tick(&mut self) -> Result<(), SinkError> {
        let interval = Duration::from_secs(self.settings.checkpoint_interval_secs);
        let mut wrote = false;
        if self.since_checkpoint > 0 && self.last_checkpoint.elapsed() >= interval {
            self.checkpoint(Reason::Interval)?;
            wrote = true;
        }
        let max_age = Duration::from_secs(self.settings.rotate_age_secs);
        let now = SystemTime::now();
        let old = self.file.as_ref().is_some_and(|file| file.len() > 0 && file.age(now) >= max_age);
        if self.settings.rotate_age_secs > 0 && old {
            self.rotate()?;
            wrote = true;
        }
        if wrote { self.flush() } else { Ok(()) }
    }

    pub fn flush(&mut self) -> Result<(), SinkError> {
        self.unflushed = false;
        if let Some(file) = &mut self.file {
            if self.settings.fsync == FsyncPolicy::Batch {
                file.sync_data()?;
            } else {
                file.flush()?;
            }
        }
        if let Some(stdout) = &mut self.stdout {
            stdout.flush().map_err(|source| SinkError::Write { sink: "stdout", source })?;
        }
        Ok(())
    }

    /// Returns true when lines were written since the last flush.
    pub fn has_unflushed(&self) -> bool {
        self.unflushed
    }

    /// Ends a batch of records: flushes when `evidence.fsync` is `batch`,
    /// which promises each batch on disk. Otherwise records wait for the
    /// flush timer (`output.flush_interval_ms`) or a full buffer, which
    /// saves a write per batch when an agent's requests each wake the
    /// daemon.
    pub fn end_batch(&mut self) -> Result<(), SinkError> {
        if self.settings.fsync == FsyncPolicy::Batch { self.flush() } else { Ok(()) }
    }

    /// Returns the export stage's channel, when export is on.
    pub fn export(&self) -> Option<&crate::export::ExportQueue> {
        self.export.as_ref()
    }

    /// Returns the export stage's channel for changes, when export is on.
    pub fn export_mut(&mut self) -> Option<&mut crate::export::ExportQueue> {
        self.export.as_mut()
    }

    /// Simulates a crash for tests: buffered records are lost, nothing is
    /// closed cleanly, and the writer lock goes as it would with the process.
    #[cfg(test)]
    pub(crate) fn crash(mut self) {
        self._lock = None;
        std::mem::forget(self);
    }

    /// Ends the run: writes the shutdown checkpoint, flushes, and forces
    /// the evidence file to disk whatever `evidence.fsync` is set to.
    pub fn close(&mut self) -> Result<(), SinkError> {
        self.checkpoint(Reason::Shutdown)?;
        // Closing the channel ends the export task once it has drained.
        self.export = None;
        self.flush()?;
        if let Some(file) = &mut self.file {
            file.sync_all()?;
        }
        Ok(())
    }
}

/// Lays out the chains: one when both sinks write the same format (or only
/// one sink is on), else one per sink. A separate chain for standard output
/// starts from the file's last hash, as the shared chain would, so a
/// capture of it verifies as a chain that began before it.
fn chains_for(output: &OutputConfig, has_file: bool, prev_hash: Hash) -> Vec<Chain> {
    let chain = |format, to_file, to_stdout| Chain { format, prev_hash, to_file, to_stdout };
    match (has_file, output.stdout) {
        (true, true) if output.stdout_format == output.evidence_format => {
            vec![chain(output.evidence_format, true, true)]
        }
        (true, true) => vec![chain(output.evidence_format, true, false), chain(output.stdout_format, false, true)],
        (true, false) => vec![chain(output.evidence_format, true, false)],
        (false, true) => vec![chain(output.stdout_format, false, true)],
        (false, false) => vec![chain(OutputFormat::Native, false, false)],
    }
}

#[cfg(test)]
pub(crate) mod tests;
