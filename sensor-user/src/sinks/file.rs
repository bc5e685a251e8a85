//! The evidence file on disk: appends, rotation and syncing.
//!
//! Files are created 0600 because records name users, commands and hosts.
//! Rotation renames the active file to the name `recovery::rotated_name`
//! gives it and creates a new one at the configured path, so readers and
//! the sensor after a restart always find the newest records there.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write as _},
    os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use super::SinkError;
use crate::evidence::recovery::rotated_name;

const BUFFER_BYTES: usize = 256 * 1024;

pub struct EvidenceFile {
    path: PathBuf,
    writer: BufWriter<File>,
    /// Bytes in the file, buffered ones included.
    len: u64,
    /// Seq of the file's first record, which its rotated name carries.
    first_seq: Option<u64>,
    /// When the file was created, for rotation by age.
    created: SystemTime,
}

impl EvidenceFile {
    /// Opens `path` for appending, creating it and its directory as needed.
    /// `first_seq` is the seq of the first record already in it.
    pub fn open(path: &Path, first_seq: Option<u64>) -> Result<Self, SinkError> {
        let error = |source| SinkError::Open { path: path.to_owned(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(error)?;
        }
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(path).map_err(error)?;
        let metadata = file.metadata().map_err(error)?;
        // Not every file system records a creation time; the sensor then
        // counts the age from now.
        let created = metadata.created().unwrap_or_else(|_| SystemTime::now());
        Ok(EvidenceFile {
            path: path.to_owned(),
            writer: BufWriter::with_capacity(BUFFER_BYTES, file),
            len: metadata.len(),
            first_seq,
            created,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.created).unwrap_or_default()
    }

    /// Appends bytes that are not a record, such as the newline that ends a
    /// torn line.
    pub fn append_raw(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        self.writer.write_all(bytes).map_err(|source| self.write_error(source))?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Appends one sealed record line.
    pub fn append(&mut self, line: &[u8], seq: u64) -> Result<(), SinkError> {
        self.first_seq.get_or_insert(seq);
        self.append_raw(line)
    }

    pub fn flush(&mut self) -> Result<(), SinkError> {
        self.writer.flush().map_err(|source| self.write_error(source))
    }

    /// Flushes and forces the file's data to disk.
    pub fn sync_data(&mut self) -> Result<(), SinkError> {
        self.flush()?;
        self.writer.get_ref().sync_data().map_err(|source| SinkError::Sync { path: self.path.clone(), source })
    }

    /// Like [`EvidenceFile::sync_data`], and also the file's metadata.
    pub fn sync_all(&mut self) -> Result<(), SinkError> {
        self.flush()?;
        self.writer.get_ref().sync_all().map_err(|source| SinkError::Sync { path: self.path.clone(), source })
    }

    /// Renames the file to its rotated name and starts a new one at the
    /// configured path; returns the rotated name. With `sync`, the old file
    /// and the directory entry of the rename reach the disk first.
    pub fn rotate(&mut self, now: SystemTime, sync: bool) -> Result<PathBuf, SinkError> {
        if sync {
            self.sync_data()?;
        } else {
            self.flush()?;
        }
        let first_seq = self.first_seq.unwrap_or(0);
        let rotated = rotated_name(&self.path, now, first_seq);
        std::fs::rename(&self.path, &rotated).map_err(|source| SinkError::Rotate {
            from: self.path.clone(),
            to: rotated.clone(),
            source,
        })?;
        if sync {
            sync_dir(&self.path)?;
        }
        *self = EvidenceFile::open(&self.path, None)?;
        self.created = now;
        Ok(rotated)
    }

    fn write_error(&self, source: io::Error) -> SinkError {
        SinkError::Write { sink: "evidence file", source }
    }
}

/// An exclusive lock on `<evidence file>.lock`, held while the sinks are
/// open. Two sensors appending to one file would interleave two chains, so
/// the second one fails to start instead. The kernel drops the lock when
/// the process exits, however it exits.
pub struct WriterLock {
    _file: File,
}

impl WriterLock {
    pub fn acquire(evidence: &Path) -> Result<WriterLock, SinkError> {
        let mut name = evidence.file_name().unwrap_or_default().to_owned();
        name.push(".lock");
        let lock = evidence.with_file_name(name);
        let error = |source| SinkError::Open { path: lock.clone(), source };
        if let Some(dir) = lock.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(error)?;
        }
        let file = OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&lock).map_err(error)?;
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let source = io::Error::last_os_error();
            if source.kind() == io::ErrorKind::WouldBlock {
                return Err(SinkError::Locked { path: evidence.to_owned(), lock });
            }
            return Err(error(source));
        }
        Ok(WriterLock { _file: file })
    }
}

fn sync_dir(path: &Path) -> Result<(), SinkError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).map_err(|source| SinkError::Sync { path: dir.to_owned(), source })
}
