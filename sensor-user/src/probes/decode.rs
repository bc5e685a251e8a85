//! Decodes ring buffer records into typed kernel events.
//!
//! Records are read field by field with unaligned copies, so a short or
//! malformed record yields a [`DecodeError`] instead of reading past its end.
//! Variable parts (argv, names) borrow from the ring buffer item; nothing is
//! allocated here.

use core::mem::{offset_of, size_of};

use sensor_common::{
    ConnectEvent, ConnectResultEvent, EventHeader, EventKind, ExecEvent, ExitEvent, FileEvent, ForkEvent,
    PayloadEvent, TlsEvent, COMM_LEN, EXE_NAME_CAPACITY, EXE_PATH_COMPONENT, EXE_PATH_MAX_COMPONENTS, FILENAME_CAPACITY, PATH_CAPACITY, TRACE_CONTEXT_CAPACITY,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than the {needed} bytes its kind needs")]
    Short { len: usize, needed: usize },
    #[error("record has unknown kind {0}")]
    UnknownKind(u32),
    #[error("exec record claims {claimed} argv bytes but carries {carried}")]
    ArgvLength { claimed: usize, carried: usize },
    #[error("record claims {claimed} data bytes but carries {carried}")]
    DataLength { claimed: usize, carried: usize },
}

/// An exec record: fixed fields copied, variable ones borrowed.
#[derive(Debug, Clone)]
pub struct Exec<'a> {
    pub header: EventHeader,
    pub ppid: u32,
    pub parent_start_time_ns: u64,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub ns_pid: u32,
    pub pid_ns_inum: u32,
    pub exe_inode: u64,
    pub exe_dev: u32,
    /// Size and modification time (seconds, nanoseconds) of the
    /// executable's inode, when the kernel could read them.
    pub exe_meta: Option<(u64, i64, u32)>,
    pub argv_total_len: u32,
    /// Path components from the kernel's dentry walk, leaf first.
    pub exe_path: &'a [u8],
    pub comm: &'a [u8],
    pub exe_name: &'a [u8],
    pub filename: &'a [u8],
    /// The `TRACEPARENT=...` environment entry of a process in an agent's
    /// tree, empty when there is none.
    pub trace_context: &'a [u8],
    pub argv: &'a [u8],
}

/// First bytes of a TCP connection, or a DNS datagram.
#[derive(Debug, Clone)]
pub struct Payload<'a> {
    pub header: EventHeader,
    pub connect_id: u64,
    pub direction: u32,
    /// Bytes the syscall wrote or read in full, of which `data` is a prefix.
    pub total: u32,
    pub index: u32,
    /// Network namespace inode of the writer, 0 when unknown.
    pub netns: u32,
    pub data: &'a [u8],
}

/// A file operation in an agent tree.
#[derive(Debug, Clone)]
pub struct File<'a> {
    pub header: EventHeader,
    pub op: u32,
    pub flags: u32,
    pub dirfd: i32,
    pub result: i32,
    pub path: &'a [u8],
    pub path2: &'a [u8],
}

/// TLS plaintext from an `SSL_*` probe.
#[derive(Debug, Clone)]
pub struct Tls<'a> {
    pub header: EventHeader,
    pub stream: u64,
    pub fd: i32,
    pub direction: u32,
    pub total: u32,
    pub writes: u32,
    pub data: &'a [u8],
}

#[derive(Debug, Clone)]
pub enum KernelEvent<'a> {
    Exec(Exec<'a>),
    Fork(ForkEvent),
    Exit(ExitEvent),
    Connect(ConnectEvent),
    ConnectResult(ConnectResultEvent),
    Payload(Payload<'a>),
    File(File<'a>),
    Tls(Tls<'a>),
}

impl KernelEvent<'_> {
    pub fn header(&self) -> &EventHeader {
        match self {
            KernelEvent::Exec(e) => &e.header,
            KernelEvent::Fork(e) => &e.header,
            KernelEvent::Exit(e) => &e.header,
            KernelEvent::Connect(e) => &e.header,
            KernelEvent::ConnectResult(e) => &e.header,
            KernelEvent::Payload(e) => &e.header,
            KernelEvent::File(e) => &e.header,
            KernelEvent::Tls(e) => &e.header,
        }
    }
}

/// Copies a plain-data value out of `bytes` at `offset`.
fn read<T: Copy>(bytes: &[u8], offset: usize) -> Result<T, DecodeError> {
    let needed = offset + size_of::<T>();
    if bytes.len() < needed {
        return Err(DecodeError::Short { len: bytes.len(), needed });
    }
    // SAFETY: the range was bounds-checked above, and T is only instantiated
    // with sensor_common's #[repr(C)] integer-only types, for which every
    // bit pattern is valid; read_unaligned has no alignment requirement.
    Ok(unsafe { core::ptr::read_unaligned(bytes.as_ptr().add(offset).cast::<T>()) })
}

/// Cuts a fixed-size C string field at its first NUL.
fn c_str(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

/// Joins the kernel's leaf-first path component slots into an absolute
/// path.
pub fn join_exe_path(slots: &[u8]) -> Option<String> {
    let parts: Vec<&[u8]> = slots.chunks(EXE_PATH_COMPONENT).map(c_str).filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return None;
    }
    let mut path = String::new();
    for part in parts.iter().rev() {
        path.push('/');
        path.push_str(&String::from_utf8_lossy(part));
    }
    Some(path)
}

/// Decodes one ring buffer record.
pub fn decode(bytes: &[u8]) -> Result<KernelEvent<'_>, DecodeError> {
    let header: EventHeader = read(bytes, 0)?;
    let kind = EventKind::from_u32(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?;
    Ok(match kind {
        EventKind::Exec => KernelEvent::Exec(decode_exec(bytes)?),
        EventKind::Fork => KernelEvent::Fork(read(bytes, 0)?),
        EventKind::Exit => KernelEvent::Exit(read(bytes, 0)?),
        EventKind::Connect => KernelEvent::Connect(read(bytes, 0)?),
        EventKind::ConnectResult => KernelEvent::ConnectResult(read(bytes, 0)?),
        EventKind::Payload => KernelEvent::Payload(decode_payload(bytes)?),
        EventKind::File => KernelEvent::File(decode_file(bytes)?),
        EventKind::Tls => KernelEvent::Tls(decode_tls(bytes)?),
    })
}

/// Returns the `len` bytes after the fixed part at `data_at`, checking that
/// the record carries them.
fn trailing(bytes: &[u8], data_at: usize, len: usize) -> Result<&[u8], DecodeError> {
    if bytes.len() < data_at {
        return Err(DecodeError::Short { len: bytes.len(), needed: data_at });
    }
    let carried = bytes.len() - data_at;
    if len > carried {
        return Err(DecodeError::DataLength { claimed: len, carried });
    }
    Ok(&bytes[data_at..data_at + len])
}

fn decode_payload(bytes: &[u8]) -> Result<Payload<'_>, DecodeError> {
    let len = read::<u32>(bytes, offset_of!(PayloadEvent, len))? as usize;
    Ok(Payload {
        header: read(bytes, 0)?,
        connect_id: read(bytes, offset_of!(PayloadEvent, connect_id))?,
        direction: read(bytes, offset_of!(PayloadEvent, direction))?,
        total: read(bytes, offset_of!(PayloadEvent, total))?,
        index: read(bytes, offset_of!(PayloadEvent, index))?,
        netns: read(bytes, offset_of!(PayloadEvent, netns))?,
        data: trailing(bytes, offset_of!(PayloadEvent, data), len)?,
    })
}

fn decode_file(bytes: &[u8]) -> Result<File<'_>, DecodeError> {
    let needed = size_of::<FileEvent>();
    if bytes.len() < needed {
        return Err(DecodeError::Short { len: bytes.len(), needed });
    }
    let path_at = offset_of!(FileEvent, path);
    let path2_at = offset_of!(FileEvent, path2);
    Ok(File {
        header: read(bytes, 0)?,
        op: read(bytes, offset_of!(FileEvent, op))?,
        flags: read(bytes, offset_of!(FileEvent, flags))?,
        dirfd: read(bytes, offset_of!(FileEvent, dirfd))?,
        result: read(bytes, offset_of!(FileEvent, result))?,
        path: c_str(&bytes[path_at..path_at + PATH_CAPACITY]),
        path2: c_str(&bytes[path2_at..path2_at + PATH_CAPACITY]),
    })
}

fn decode_tls(bytes: &[u8]) -> Result<Tls<'_>, DecodeError> {
    let len = read::<u32>(bytes, offset_of!(TlsEvent, len))? as usize;
    Ok(Tls {
        header: read(bytes, 0)?,
        stream: read(bytes, offset_of!(TlsEvent, stream))?,
        fd: read(bytes, offset_of!(TlsEvent, fd))?,
        direction: read(bytes, offset_of!(TlsEvent, direction))?,
        total: read(bytes, offset_of!(TlsEvent, total))?,
        writes: read(bytes, offset_of!(TlsEvent, writes))?,
        data: trailing(bytes, offset_of!(TlsEvent, data), len)?,
    })
}

fn decode_exec(bytes: &[u8]) -> Result<Exec<'_>, DecodeError> {
    let argv_at = offset_of!(ExecEvent, argv);
    if bytes.len() < argv_at {
        return Err(DecodeError::Short { len: bytes.len(), needed: argv_at });
    }
    let argv_len = read::<u32>(bytes, offset_of!(ExecEvent, argv_len))? as usize;
    let carried = bytes.len() - argv_at;
    if argv_len > carried {
        return Err(DecodeError::ArgvLength { claimed: argv_len, carried });
    }
    let filename_len = (read::<u32>(bytes, offset_of!(ExecEvent, filename_len))? as usize).min(FILENAME_CAPACITY);
    let field = |offset: usize, len: usize| &bytes[offset..offset + len];
    Ok(Exec {
        header: read(bytes, 0)?,
        ppid: read(bytes, offset_of!(ExecEvent, ppid))?,
        parent_start_time_ns: read(bytes, offset_of!(ExecEvent, parent_start_time_ns))?,
        uid: read(bytes, offset_of!(ExecEvent, uid))?,
        gid: read(bytes, offset_of!(ExecEvent, gid))?,
        cgroup_id: read(bytes, offset_of!(ExecEvent, cgroup_id))?,
        ns_pid: read(bytes, offset_of!(ExecEvent, ns_pid))?,
        pid_ns_inum: read(bytes, offset_of!(ExecEvent, pid_ns_inum))?,
        exe_inode: read(bytes, offset_of!(ExecEvent, exe_inode))?,
        exe_dev: read(bytes, offset_of!(ExecEvent, exe_dev))?,
        exe_meta: match read::<u32>(bytes, offset_of!(ExecEvent, exe_meta_ok))? {
            0 => None,
            _ => Some((
                read(bytes, offset_of!(ExecEvent, exe_size))?,
                read(bytes, offset_of!(ExecEvent, exe_mtime_sec))?,
                read(bytes, offset_of!(ExecEvent, exe_mtime_nsec))?,
            )),
        },
        argv_total_len: read(bytes, offset_of!(ExecEvent, argv_total_len))?,
        exe_path: {
            let slots = (read::<u32>(bytes, offset_of!(ExecEvent, exe_path_len))? as usize).min(EXE_PATH_MAX_COMPONENTS);
            field(offset_of!(ExecEvent, exe_path), slots * EXE_PATH_COMPONENT)
        },
        comm: c_str(field(offset_of!(ExecEvent, comm), COMM_LEN)),
        exe_name: c_str(field(offset_of!(ExecEvent, exe_name), EXE_NAME_CAPACITY)),
        filename: c_str(field(offset_of!(ExecEvent, filename), filename_len)),
        trace_context: {
            let len = (read::<u32>(bytes, offset_of!(ExecEvent, trace_context_len))? as usize).min(TRACE_CONTEXT_CAPACITY);
            field(offset_of!(ExecEvent, trace_context), len)
        },
        argv: &bytes[argv_at..argv_at + argv_len],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sensor_common::{ARGV_CAPACITY, EXEC_FLAG_ARGV_TRUNCATED};

    fn bytes_of<T>(value: &T) -> Vec<u8> {
        // SAFETY: test values are #[repr(C)] plain data; reading their bytes
        // (padding included, zeroed by construction) is sound.
        unsafe { core::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn exec_record(argv: &[u8]) -> Vec<u8> {
        // SAFETY: ExecEvent is integer-only plain data; all-zero is valid.
        let mut event: ExecEvent = unsafe { core::mem::zeroed() };
        event.header.kind = EventKind::Exec as u32;
        event.header.pid = 42;
        event.header.flags = EXEC_FLAG_ARGV_TRUNCATED;
        event.ppid = 7;
        event.argv_len = argv.len() as u32;
        event.argv_total_len = 20000;
        event.argv[..argv.len()].copy_from_slice(argv);
        event.comm[..2].copy_from_slice(b"ls");
        event.filename[..7].copy_from_slice(b"/bin/ls");
        event.filename_len = 7;
        let mut bytes = bytes_of(&event);
        bytes.truncate(offset_of!(ExecEvent, argv) + argv.len());
        bytes
    }

    #[test]
    fn exec_round_trip() {
        let bytes = exec_record(b"ls\0/\0");
        let KernelEvent::Exec(exec) = decode(&bytes).unwrap() else { panic!("not an exec") };
        assert_eq!(exec.header.pid, 42);
        assert_eq!(exec.ppid, 7);
        assert_eq!(exec.argv, b"ls\0/\0");
        assert_eq!(exec.comm, b"ls");
        assert_eq!(exec.filename, b"/bin/ls");
        assert_eq!(exec.argv_total_len, 20000);
        assert_eq!(exec.header.flags, EXEC_FLAG_ARGV_TRUNCATED);
    }

    #[test]
    fn exec_argv_longer_than_record_rejected() {
        let mut bytes = exec_record(b"ls\0/\0");
        bytes.truncate(bytes.len() - 2);
        assert_eq!(decode(&bytes).unwrap_err(), DecodeError::ArgvLength { claimed: 5, carried: 3 });
    }

    #[test]
    fn fork_and_short_records() {
        let fork = ForkEvent {
            header: EventHeader { kind: EventKind::Fork as u32, pid: 9, ..Default::default() },
            parent_pid: 3,
            ..Default::default()
        };
        let bytes = bytes_of(&fork);
        let KernelEvent::Fork(decoded) = decode(&bytes).unwrap() else { panic!("not a fork") };
        assert_eq!(decoded.parent_pid, 3);
        assert!(matches!(decode(&bytes[..bytes.len() - 1]), Err(DecodeError::Short { .. })));
        assert!(matches!(decode(&bytes[..4]), Err(DecodeError::Short { .. })));
    }

    #[test]
    fn exe_path_components_join() {
        let mut slots = vec![0u8; 3 * EXE_PATH_COMPONENT];
        for (i, name) in ["true", "bin", "usr"].iter().enumerate() {
            slots[i * EXE_PATH_COMPONENT..][..name.len()].copy_from_slice(name.as_bytes());
        }
        assert_eq!(join_exe_path(&slots).as_deref(), Some("/usr/bin/true"));
        assert_eq!(join_exe_path(&slots[..EXE_PATH_COMPONENT]).as_deref(), Some("/true"));
        assert_eq!(join_exe_path(b""), None);
    }

    #[test]
    fn unknown_kind_rejected() {
        let header = EventHeader { kind: 999, ..Default::default() };
        assert_eq!(decode(&bytes_of(&header)).unwrap_err(), DecodeError::UnknownKind(999));
    }

    #[test]
    fn every_prefix_of_garbage_decodes_or_errors() {
        let mut bytes = exec_record(&[b'a'; 64]);
        bytes.resize(offset_of!(ExecEvent, argv) + ARGV_CAPACITY, 0xff);
        for len in 0..bytes.len() {
            let _ = decode(&bytes[..len]);
        }
    }
}
