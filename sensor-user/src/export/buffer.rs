//! The export stage's on-disk buffer: evidence lines waiting for the
//! collector's acknowledgement, in segment files under
//! `export.otlp.buffer_dir`.
//!
//! Segments are numbered in the order they were created
//! (`00000000000000000042.seg`) and hold frames `SEQ LINE\n`, where LINE is
//! the evidence line exactly as written to the evidence file. The `ack` file
//! names the segment and byte offset up to which the collector has
//! acknowledged, and is replaced atomically (write, then rename) after each
//! acknowledged batch; segments wholly before it are deleted. A restarted
//! sensor resumes at the `ack` position, so records acknowledged before the
//! restart are not sent again, and records buffered but not acknowledged
//! are.
//!
//! LIMITATION: a crash between the collector's 2xx and the `ack` rename
//! sends that batch again after the restart; the seq attribute lets the
//! receiving side drop the duplicates.

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, BufRead, BufReader, BufWriter, Read as _, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
};

/// One buffered record, read back for sending.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub seq: u64,
    /// The evidence line without its newline.
    pub line: Vec<u8>,
}

/// A position in the buffer: a segment's number and a byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("creating the export buffer directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{action} export buffer file {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BufferError + 'a {
    move |source| BufferError::Io { action, path: path.to_owned(), source }
}

#[derive(Debug)]
struct Segment {
    id: u64,
    len: u64,
}

/// Outcome of `Buffer::push`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Stored,
    /// The buffer already contains `max_bytes` of unacknowledged frames.
    Full,
}

pub struct Buffer {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    segments: VecDeque<Segment>,
    next_id: u64,
    writer: Option<BufWriter<File>>,
    ack: Position,
    /// Unacknowledged frames and their bytes.
    pending_frames: u64,
    pending_bytes: u64,
    /// Frames skipped at start-up or when reading because they were torn
    /// or unreadable.
    pub corrupt_frames: u64,
}

impl Buffer {
    /// Opens the buffer in `dir`, resuming at its `ack` file.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Buffer, BufferError> {
        fs::create_dir_all(dir).map_err(|source| BufferError::CreateDir { path: dir.to_owned(), source })?;
        let mut ids: Vec<u64> = fs::read_dir(dir)
            .map_err(io_error("listing", dir))?
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| entry.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
            .collect();
        ids.sort_unstable();
        let ack = read_ack(dir);
        let mut buffer = Buffer {
            dir: dir.to_owned(),
            max_bytes,
            // Space is freed a segment at a time, so a segment is a small
            // part of the limit.
            segment_bytes: (max_bytes / 8).clamp(4096, 4 << 20),
            segments: VecDeque::new(),
            // Past the acknowledged segment too: a new segment numbered at
            // or below it would be taken for acknowledged after a restart.
            next_id: ids.last().copied().max(ack.map(|ack| ack.segment)).map_or(1, |last| last + 1),
            writer: None,
            ack: Position::default(),
            pending_frames: 0,
            pending_bytes: 0,
            corrupt_frames: 0,
        };
        for id in ids.iter().copied() {
            let path = buffer.segment_path(id);
            if ack.is_some_and(|ack| id < ack.segment) {
                fs::remove_file(&path).map_err(io_error("removing acknowledged", &path))?;
                continue;
            }
            let start = match ack {
                Some(ack) if ack.segment == id => ack.offset,
                _ => 0,
            };
            let (frames, intact_len) = count_frames(&path, start)?;
            let len = fs::metadata(&path).map_err(io_error("reading the size of", &path))?.len();
            if intact_len < len {
                // A crash cut the last frame short; it never reached the
                // collector, and the evidence file still has the record.
                log::warn!("export buffer {}: dropping {} torn bytes at its end", path.display(), len - intact_len);
                let file = OpenOptions::new().write(true).open(&path).map_err(io_error("opening", &path))?;
                file.set_len(intact_len).map_err(io_error("truncating", &path))?;
                buffer.corrupt_frames += 1;
            }
            buffer.pending_frames += frames;
            buffer.pending_bytes += intact_len.saturating_sub(start);
            buffer.segments.push_back(Segment { id, len: intact_len });
        }
        buffer.ack = match (ack, buffer.segments.front()) {
            (Some(ack), Some(first)) if ack.segment == first.id => ack,
            (_, Some(first)) => Position { segment: first.id, offset: 0 },
            (_, None) => Position::default(),
        };
        Ok(buffer)
    }

    fn segment_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:020}.seg"))
    }

    pub fn pending_frames(&self) -> u64 {
        self.pending_frames
    }

    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// Appends one frame unless that would take the unacknowledged bytes
    /// over the limit. `line` ends with its newline.
    pub fn push(&mut self, seq: u64, line: &[u8]) -> Result<Pushed, BufferError> {
        let mut prefix = itoa(seq);
        prefix.push(b' ');
        let size = (prefix.len() + line.len()) as u64;
        if self.pending_bytes + size > self.max_bytes {
            return Ok(Pushed::Full);
        }
        let roll = match self.segments.back() {
            None => true,
            Some(last) => last.len >= self.segment_bytes || self.writer.is_none() && last.len > 0,
        };
        if roll {
            self.flush()?;
            let id = self.next_id;
            self.next_id += 1;
            let path = self.segment_path(id);
            let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io_error("creating", &path))?;
            self.writer = Some(BufWriter::with_capacity(64 << 10, file));
            if self.segments.is_empty() {
                self.ack = Position { segment: id, offset: 0 };
            }
            self.segments.push_back(Segment { id, len: 0 });
        }
        let Some(last) = self.segments.back_mut() else { return Ok(Pushed::Full) };
        let path = self.dir.join(format!("{:020}.seg", last.id));
        let writer = self.writer.as_mut().ok_or_else(|| BufferError::Io {
            action: "appending to",
            path: path.clone(),
            source: io::Error::other("no open segment"),
        })?;
        writer.write_all(&prefix).and_then(|()| writer.write_all(line)).map_err(io_error("appending to", &path))?;
        last.len += size;
        self.pending_frames += 1;
        self.pending_bytes += size;
        Ok(Pushed::Stored)
    }

    /// Hands buffered frames to the kernel so reads see them.
    pub fn flush(&mut self) -> Result<(), BufferError> {
        let path = self.segment_path(self.segments.back().map_or(0, |s| s.id));
        if let Some(writer) = &mut self.writer {
            writer.flush().map_err(io_error("writing", &path))?;
        }
        Ok(())
    }

    /// Reads up to `max` unacknowledged frames from the ack position on,
    /// and returns them with the position just after the last one.
    pub fn read_batch(&mut self, max: usize) -> Result<(Vec<Frame>, Position), BufferError> {
        self.flush()?;
        let mut frames = Vec::new();
        let mut position = self.ack;
        let firsts: Vec<(u64, u64)> = self.segments.iter().map(|s| (s.id, s.len)).collect();
        for (id, len) in firsts {
            if id < position.segment {
                continue;
            }
            let start = if id == position.segment { position.offset } else { 0 };
            if start >= len {
                position = Position { segment: id, offset: len };
                continue;
            }
            let path = self.segment_path(id);
            let mut file = File::open(&path).map_err(io_error("opening", &path))?;
            file.seek(SeekFrom::Start(start)).map_err(io_error("seeking in", &path))?;
            let mut reader = BufReader::new(file.take(len - start));
            let mut offset = start;
            let mut raw = Vec::new();
            while frames.len() < max {
                raw.clear();
                let read = reader.read_until(b'\n', &mut raw).map_err(io_error("reading", &path))?;
                if read == 0 {
                    break;
                }
                offset += read as u64;
                match parse_frame(&raw) {
                    Some(frame) => frames.push(frame),
                    None => {
                        self.corrupt_frames += 1;
                        log::warn!("export buffer {}: skipping an unreadable frame at offset {}", path.display(), offset - read as u64);
                    }
                }
            }
            position = Position { segment: id, offset };
            if frames.len() >= max {
                break;
            }
        }
        Ok((frames, position))
    }

    /// Marks everything before `position` acknowledged, deletes segments
    /// wholly before it and records it in the `ack` file.
    pub fn acknowledge(&mut self, position: Position, frames: u64) -> Result<(), BufferError> {
        let mut released = 0;
        for segment in &self.segments {
            if segment.id > position.segment {
                break;
            }
            let from = if segment.id == self.ack.segment { self.ack.offset } else { 0 };
            let to = if segment.id == position.segment { position.offset } else { segment.len };
            released += to.saturating_sub(from);
        }
        self.pending_bytes = self.pending_bytes.saturating_sub(released);
        self.pending_frames = self.pending_frames.saturating_sub(frames);
        self.ack = position;
        // A fully sent active segment is closed too, so the next frame
        // starts a new one and the old one can go.
        while let Some(first) = self.segments.front() {
            let done = first.id < position.segment || (first.id == position.segment && position.offset >= first.len);
            if !done {
                break;
            }
            let last = self.segments.len() == 1;
            if last {
                self.writer = None;
            }
            let path = self.segment_path(first.id);
            fs::remove_file(&path).map_err(io_error("removing acknowledged", &path))?;
            self.segments.pop_front();
        }
        if let Some(first) = self.segments.front() {
            if first.id != self.ack.segment {
                self.ack = Position { segment: first.id, offset: 0 };
            }
        }
        self.write_ack()
    }

    fn write_ack(&self) -> Result<(), BufferError> {
        let path = self.dir.join("ack");
        let temporary = self.dir.join("ack.tmp");
        let text = format!("{} {}\n", self.ack.segment, self.ack.offset);
        fs::write(&temporary, text).map_err(io_error("writing", &temporary))?;
        fs::rename(&temporary, &path).map_err(io_error("renaming", &path))
    }
}

fn read_ack(dir: &Path) -> Option<Position> {
    let text = fs::read_to_string(dir.join("ack")).ok()?;
    let (segment, offset) = text.trim().split_once(' ')?;
    Some(Position { segment: segment.parse().ok()?, offset: offset.parse().ok()? })
}

/// Counts whole frames from `start` and returns the length of the file up
/// to the end of the last whole one.
fn count_frames(path: &Path, start: u64) -> Result<(u64, u64), BufferError> {
    let mut file = File::open(path).map_err(io_error("opening", path))?;
    let len = file.metadata().map_err(io_error("reading the size of", path))?.len();
    if start > len {
        return Ok((0, len));
    }
    file.seek(SeekFrom::Start(start)).map_err(io_error("seeking in", path))?;
    let mut reader = BufReader::new(file);
    let (mut frames, mut intact, mut raw) = (0, start, Vec::new());
    loop {
        raw.clear();
        let read = reader.read_until(b'\n', &mut raw).map_err(io_error("reading", path))?;
        if read == 0 || raw.last() != Some(&b'\n') {
            return Ok((frames, intact));
        }
        frames += 1;
        intact += read as u64;
    }
}

fn parse_frame(raw: &[u8]) -> Option<Frame> {
    let raw = raw.strip_suffix(b"\n")?;
    let space = raw.iter().position(|&b| b == b' ')?;
    let seq = std::str::from_utf8(&raw[..space]).ok()?.parse().ok()?;
    let line = raw[space + 1..].to_vec();
    (line.first() == Some(&b'{')).then_some(Frame { seq, line })
}

fn itoa(value: u64) -> Vec<u8> {
    value.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("agent-sensor-export-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn line(seq: u64) -> Vec<u8> {
        format!("{{\"seq\":{seq},\"pad\":\"{}\"}}\n", "x".repeat(40)).into_bytes()
    }

    #[test]
    fn resumes_after_acknowledged_position() {
        let path = dir("resume");
        let mut buffer = Buffer::open(&path, 1 << 20).unwrap();
        for seq in 1..=10 {
            assert_eq!(buffer.push(seq, &line(seq)).unwrap(), Pushed::Stored);
        }
        let (frames, position) = buffer.read_batch(4).unwrap();
        assert_eq!(frames.iter().map(|f| f.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(frames[0].line, line(1).strip_suffix(b"\n").unwrap());
        buffer.acknowledge(position, 4).unwrap();
        assert_eq!(buffer.pending_frames(), 6);
        drop(buffer);

        let mut buffer = Buffer::open(&path, 1 << 20).unwrap();
        assert_eq!(buffer.pending_frames(), 6);
        let (frames, _) = buffer.read_batch(100).unwrap();
        assert_eq!(frames.iter().map(|f| f.seq).collect::<Vec<_>>(), (5..=10).collect::<Vec<_>>());
        fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn new_segment_after_full_ack_survives_restart() {
        let path = dir("renumber");
        let mut buffer = Buffer::open(&path, 1 << 20).unwrap();
        buffer.push(1, &line(1)).unwrap();
        buffer.push(2, &line(2)).unwrap();
        let (_, position) = buffer.read_batch(10).unwrap();
        buffer.acknowledge(position, 2).unwrap();
        drop(buffer);

        let mut buffer = Buffer::open(&path, 1 << 20).unwrap();
        assert_eq!(buffer.pending_frames(), 0);
        buffer.push(3, &line(3)).unwrap();
        buffer.flush().unwrap();
        drop(buffer);

        let mut buffer = Buffer::open(&path, 1 << 20).unwrap();
        assert_eq!(buffer.pending_frames(), 1, "the unacknowledged frame was dropped at restart");
        let (frames, _) = buffer.read_batch(10).unwrap();
        assert_eq!(frames.iter().map(|f| f.seq).collect::<Vec<_>>(), [3]);
        fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn full_buffer_refuses_and_frees_on_ack() {
        let path = dir("full");
        let size = 3 + line(100).len() as u64 + 1;
        let mut buffer = Buffer::open(&path, size * 20).unwrap();
        let mut stored = 0;
        for seq in 100..200 {
            if buffer.push(seq, &line(seq)).unwrap() == Pushed::Stored {
                stored += 1;
            }
        }
        assert_eq!(stored, 20);
        assert_eq!(buffer.push(200, &line(200)).unwrap(), Pushed::Full);
        let (frames, position) = buffer.read_batch(100).unwrap();
        assert_eq!(frames.len(), 20);
        buffer.acknowledge(position, 20).unwrap();
        assert_eq!((buffer.pending_frames(), buffer.pending_bytes()), (0, 0));
        assert_eq!(buffer.push(201, &line(201)).unwrap(), Pushed::Stored);
        let segments = fs::read_dir(&path).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "seg")).count();
        assert_eq!(segments, 1, "acknowledged segments are deleted");
        fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn torn_and_garbage_frames_are_skipped() {
        let path = dir("torn");
        let mut buffer = Buffer::open(&path, 1 << 20).unwrap();
        buffer.push(1, &line(1)).unwrap();
        buffer.push(2, &line(2)).unwrap();
        buffer.flush().unwrap();
        drop(buffer);
        let segment = path.join(format!("{:020}.seg", 1));
        let mut file = OpenOptions::new().append(true).open(&segment).unwrap();
        file.write_all(b"garbage without a seq\n3 {\"seq\":3").unwrap();
        drop(file);
        let mut buffer = Buffer::open(&path, 1 << 20).unwrap();
        assert_eq!(buffer.corrupt_frames, 1, "the torn tail is counted");
        let (frames, _) = buffer.read_batch(10).unwrap();
        assert_eq!(frames.iter().map(|f| f.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(buffer.corrupt_frames, 2, "the garbage line is counted");
        fs::remove_dir_all(&path).unwrap();
    }
}
