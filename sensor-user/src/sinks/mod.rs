//! Pipeline stage 10: records in, JSON lines out to standard output and to
//! the evidence file.
//!
//! Records are serialised once into a reused buffer and written through
//! buffered writers; the daemon flushes after each drained batch and on a
//! timer, so a quiet sensor never holds records back for long. The evidence
//! file is created 0600 because records name users, commands and hosts.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Stdout, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use serde::Serialize;

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
    #[error("serialising a record failed")]
    Serialize(#[source] serde_json::Error),
}

pub struct Sinks {
    stdout: Option<BufWriter<Stdout>>,
    file: Option<BufWriter<File>>,
    line: Vec<u8>,
    pub records_written: u64,
}

impl Sinks {
    pub fn open(stdout: bool, evidence: Option<&Path>) -> Result<Sinks, SinkError> {
        let file = match evidence {
            Some(path) => Some(BufWriter::with_capacity(256 * 1024, open_evidence(path)?)),
            None => None,
        };
        Ok(Sinks {
            stdout: stdout.then(|| BufWriter::with_capacity(256 * 1024, io::stdout())),
            file,
            line: Vec::with_capacity(4096),
            records_written: 0,
        })
    }

    /// Serialises one record as a JSON line to every sink.
    pub fn write<T: Serialize>(&mut self, record: &T) -> Result<(), SinkError> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, record).map_err(SinkError::Serialize)?;
        self.line.push(b'\n');
        if let Some(file) = &mut self.file {
            file.write_all(&self.line).map_err(|source| SinkError::Write { sink: "evidence file", source })?;
        }
        if let Some(stdout) = &mut self.stdout {
            stdout.write_all(&self.line).map_err(|source| SinkError::Write { sink: "stdout", source })?;
        }
        self.records_written += 1;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), SinkError> {
        if let Some(file) = &mut self.file {
            file.flush().map_err(|source| SinkError::Write { sink: "evidence file", source })?;
        }
        if let Some(stdout) = &mut self.stdout {
            stdout.flush().map_err(|source| SinkError::Write { sink: "stdout", source })?;
        }
        Ok(())
    }

    /// Flushes and forces the evidence file to disk, for shutdown.
    pub fn sync(&mut self) -> Result<(), SinkError> {
        self.flush()?;
        if let Some(file) = &mut self.file {
            file.get_ref().sync_all().map_err(|source| SinkError::Write { sink: "evidence file", source })?;
        }
        Ok(())
    }
}

fn open_evidence(path: &Path) -> Result<File, SinkError> {
    let error = |source| SinkError::Open { path: path.to_owned(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(error)?;
    }
    OpenOptions::new().create(true).append(true).mode(0o600).open(path).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn evidence_file_is_private_and_appended() {
        let dir = std::env::temp_dir().join(format!("agent-sensor-sinks-{}", std::process::id()));
        let path = dir.join("nested/evidence.jsonl");
        for value in [1, 2] {
            let mut sinks = Sinks::open(false, Some(&path)).unwrap();
            sinks.write(&serde_json::json!({ "n": value })).unwrap();
            sinks.sync().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"n\":1}\n{\"n\":2}\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
