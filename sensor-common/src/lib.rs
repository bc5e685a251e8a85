//! Records, map values and constants shared by agent-sensor's kernel programs
//! and its daemon.
//!
//! Every type that crosses the kernel boundary is defined here once, as
//! `#[repr(C)]` with explicit padding, so both sides agree on the layout
//! without a second definition. Each record starts with [`EventHeader`], whose
//! `kind` tells the daemon which struct follows. A size assertion per record
//! catches a layout change at compile time.

#![no_std]

/// Bytes of the command line the kernel can copy per exec. The usable bound
/// is one less, because the programs mask the length with `ARGV_CAPACITY - 1`
/// to prove the copy in bounds to the verifier.
pub const ARGV_CAPACITY: usize = 8192;
/// Bytes of the exec path as passed to execve (`bprm->filename`).
pub const FILENAME_CAPACITY: usize = 256;
/// Bytes of the executable's file name (its dentry name, not a full path).
pub const EXE_NAME_CAPACITY: usize = 64;
/// Bytes per path component slot of [`ExecEvent::exe_path`]; longer names
/// are cut and flagged.
pub const EXE_PATH_COMPONENT: usize = 48;
/// Component slots of [`ExecEvent::exe_path`]: the deepest path the kernel
/// builds. Fixed slots keep the verifier's work linear in the depth.
pub const EXE_PATH_MAX_COMPONENTS: usize = 12;
/// Bytes of the executable's path buffer.
pub const EXE_PATH_CAPACITY: usize = EXE_PATH_COMPONENT * EXE_PATH_MAX_COMPONENTS;
/// Bytes of one environment entry the kernel reads at a time while looking
/// for a tool process's `TRACEPARENT`. It is also the longest entry sent.
pub const TRACE_CONTEXT_CAPACITY: usize = 128;
/// Reads of the environment per exec at most: entries plus the extra reads
/// of entries longer than [`TRACE_CONTEXT_CAPACITY`].
pub const TRACE_CONTEXT_MAX_READS: u32 = 512;
/// Length of `task_struct::comm`.
pub const COMM_LEN: usize = 16;
/// Bytes of a socket address copied from a `connect` call: a `sockaddr_in6`.
pub const SOCKADDR_CAPACITY: usize = 28;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Kind of a kernel record; also the index of its loss counter.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Exec = 0,
    Fork = 1,
    Exit = 2,
    Connect = 3,
    ConnectResult = 4,
    Payload = 5,
    File = 6,
    Tls = 7,
}

/// Number of [`EventKind`] values, and so the length of the loss counter map.
pub const EVENT_KIND_COUNT: u32 = 8;

impl EventKind {
    /// Converts a raw kind read from the ring buffer, `None` for an unknown one.
    pub fn from_u32(value: u32) -> Option<Self> {
        match value {
            0 => Some(Self::Exec),
            1 => Some(Self::Fork),
            2 => Some(Self::Exit),
            3 => Some(Self::Connect),
            4 => Some(Self::ConnectResult),
            5 => Some(Self::Payload),
            6 => Some(Self::File),
            7 => Some(Self::Tls),
            _ => None,
        }
    }

    /// Returns the stable name used in `sensor.loss` records and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Exec => "exec",
            Self::Fork => "fork",
            Self::Exit => "exit",
            Self::Connect => "connect",
            Self::ConnectResult => "connect_result",
            Self::Payload => "payload",
            Self::File => "file",
            Self::Tls => "tls",
        }
    }
}

/// Common prefix of every ring buffer record.
///
/// `pid` is the thread-group id (the process), `tid` the thread that acted.
/// `start_time_ns` is the thread-group leader's `start_boottime`, which with
/// `pid` identifies a process across pid reuse.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    pub kind: u32,
    pub flags: u32,
    /// `bpf_ktime_get_boot_ns()` at the event.
    pub time_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub start_time_ns: u64,
}

/// The exec record's `argv` was cut at the capture bound.
pub const EXEC_FLAG_ARGV_TRUNCATED: u32 = 1 << 0;
/// The argv region could not be read from the new image.
pub const EXEC_FLAG_ARGV_UNREADABLE: u32 = 1 << 1;
/// The executable's inode has no links: a deleted file or a memfd.
pub const EXEC_FLAG_EXE_UNLINKED: u32 = 1 << 2;
/// The pid namespace fields could not be read.
pub const EXEC_FLAG_NO_PIDNS: u32 = 1 << 3;
/// The exec path in `filename` was cut at [`FILENAME_CAPACITY`].
pub const EXEC_FLAG_FILENAME_TRUNCATED: u32 = 1 << 4;
/// `exe_path` contains the executable's full path, from root to leaf.
pub const EXEC_FLAG_EXE_PATH: u32 = 1 << 5;
/// `exe_path` was cut: too deep, too long, or a component too long.
pub const EXEC_FLAG_EXE_PATH_TRUNCATED: u32 = 1 << 6;

/// A successful exec, taken at `sched_process_exec` after the new image is
/// set up, so `argv` is read from the new process's memory and is complete
/// even when the process exits at once.
///
/// Only `argv_len` bytes of `argv` are sent; the record in the ring buffer is
/// `offset_of!(ExecEvent, argv) + argv_len` bytes long.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecEvent {
    pub header: EventHeader,
    pub ppid: u32,
    /// Thread id that called execve; differs from `header.pid` when a
    /// non-leader thread ran exec.
    pub old_tid: u32,
    pub parent_start_time_ns: u64,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    /// Pid in the process's own pid namespace.
    pub ns_pid: u32,
    /// Inode number of that pid namespace.
    pub pid_ns_inum: u32,
    pub exe_inode: u64,
    /// Kernel-internal device number of the executable's file system.
    pub exe_dev: u32,
    pub exe_nlink: u32,
    /// Agent session the process belongs to, 0 outside agent trees.
    pub session_id: u64,
    /// Size and modification time of the executable's inode at exec, valid
    /// when `exe_meta_ok` is 1. With the inode and device they name one
    /// version of the file, so the daemon can reuse a hash it already has
    /// without opening the file again.
    pub exe_size: u64,
    pub exe_mtime_sec: i64,
    pub exe_mtime_nsec: u32,
    pub exe_meta_ok: u32,
    /// Bytes of `argv` sent.
    pub argv_len: u32,
    /// Bytes of the whole argv region in the process, which may exceed
    /// `argv_len`.
    pub argv_total_len: u32,
    pub filename_len: u32,
    /// Component slots of `exe_path` used.
    pub exe_path_len: u32,
    /// Bytes of `trace_context`, 0 when the process is outside an agent's
    /// tree or its environment has no `TRACEPARENT`.
    pub trace_context_len: u32,
    pub _pad2: u32,
    /// The environment entry `TRACEPARENT=...` (or `traceparent=...`) of a
    /// process in an agent's tree, read at exec before the process can
    /// exit or change it.
    pub trace_context: [u8; TRACE_CONTEXT_CAPACITY],
    pub comm: [u8; COMM_LEN],
    pub exe_name: [u8; EXE_NAME_CAPACITY],
    pub filename: [u8; FILENAME_CAPACITY],
    /// The executable's path components from its dentry chain, one per
    /// `EXE_PATH_COMPONENT`-byte slot, each NUL-terminated, leaf first,
    /// crossing mount points up to the process's mount namespace root.
    pub exe_path: [u8; EXE_PATH_CAPACITY],
    /// NUL-separated arguments, as laid out by the kernel in the new image.
    pub argv: [u8; ARGV_CAPACITY],
}

/// The child shares its parent's thread group: a thread, not a process.
pub const FORK_FLAG_THREAD: u32 = 1 << 0;

/// The kernel copied the parent's agent-tree entry to the child at fork,
/// so the daemon has nothing to add to the map for it.
pub const FORK_FLAG_TRACKED: u32 = 1 << 1;

/// A new task from `sched_process_fork`. Threads are dropped in the kernel
/// unless the configuration requests them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ForkEvent {
    /// `pid` and `start_time_ns` name the child process.
    pub header: EventHeader,
    pub parent_pid: u32,
    pub child_tid: u32,
    pub parent_start_time_ns: u64,
    pub cgroup_id: u64,
    /// The child's pid in its own pid namespace, which differs from the
    /// parent's namespace after `clone(CLONE_NEWPID)`; 0 when unreadable.
    pub ns_pid: u32,
    pub pid_ns_inum: u32,
}

/// The kernel's tracepoint carries no group-dead argument, so the record was
/// sent when the thread-group leader exited, which may precede other threads.
pub const EXIT_FLAG_LEADER_ONLY: u32 = 1 << 0;

/// The last thread of a process exited.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ExitEvent {
    pub header: EventHeader,
    /// `task_struct::exit_code`: the wait status, exit status in bits 8-15
    /// and the terminating signal in bits 0-6.
    pub exit_code: u32,
    pub _pad: u32,
}

/// Socket type was not readable, so `sock_type` is 0.
pub const CONNECT_FLAG_NO_SOCKET: u32 = 1 << 0;
/// The connect returned EINPROGRESS; a [`ConnectResultEvent`] with the same
/// `connect_id` follows when the handshake ends.
pub const CONNECT_FLAG_PENDING: u32 = 1 << 1;
/// The connect returned EINPROGRESS but the handshake ended while the call
/// was still running, so `async_result` already contains the outcome.
pub const CONNECT_FLAG_ASYNC_DONE: u32 = 1 << 2;
/// A datagram socket's connect, seen at its first send, because the socket
/// tracepoints have no hook in a datagram connect. `sockaddr` is the peer
/// the kernel holds.
pub const CONNECT_FLAG_FIRST_SEND: u32 = 1 << 3;

/// An IPv4 or IPv6 `connect` call and its return value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectEvent {
    pub header: EventHeader,
    /// Return value of the syscall: 0 or a negative errno.
    pub result: i32,
    /// Outcome of an asynchronous handshake when `CONNECT_FLAG_ASYNC_DONE`
    /// is set: 0 or a negative errno.
    pub async_result: i32,
    pub fd: i32,
    /// `SOCK_STREAM`, `SOCK_DGRAM`, ...; 0 when unknown.
    pub sock_type: u16,
    pub family: u16,
    /// Correlates this record with a later [`ConnectResultEvent`].
    pub connect_id: u64,
    /// The destination as passed to connect, `sockaddr_in` or `sockaddr_in6`.
    pub sockaddr: [u8; SOCKADDR_CAPACITY],
    pub addr_len: u32,
    /// Inode number of the caller's network namespace, 0 when unknown.
    pub netns: u32,
    pub _pad: u32,
}

/// The end of a TCP handshake started by a non-blocking connect.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectResultEvent {
    /// The process that called connect, not the one running when the
    /// handshake ended (often a softirq on another task).
    pub header: EventHeader,
    pub connect_id: u64,
    /// 0 when established, otherwise the socket's negative errno.
    pub result: i32,
    pub _pad: u32,
}

/// Bytes of a socket write copied into a [`PayloadEvent`]. The usable bound
/// is one less, for the same masking reason as [`ARGV_CAPACITY`].
pub const PAYLOAD_CAPACITY: usize = 4096;
/// Bytes of TLS plaintext copied per `SSL_read`/`SSL_write` call.
pub const TLS_CAPACITY: usize = 16384;
/// Bytes of a file path copied per file event.
pub const PATH_CAPACITY: usize = 256;

/// Kinds of [`PayloadEvent`] content.
pub const PAYLOAD_STREAM_START: u32 = 1;
pub const PAYLOAD_DATAGRAM_OUT: u32 = 2;
pub const PAYLOAD_DATAGRAM_IN: u32 = 3;

/// The first bytes written on a newly connected TCP socket (a TLS
/// ClientHello, or an HTTP request line), or a DNS datagram.
///
/// Only `len` bytes of `data` are sent.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PayloadEvent {
    pub header: EventHeader,
    pub connect_id: u64,
    pub fd: i32,
    /// One of the `PAYLOAD_*` values.
    pub direction: u32,
    /// Bytes of `data` sent.
    pub len: u32,
    /// Bytes the syscall was asked to write or returned.
    pub total: u32,
    /// Index of this write on the socket, from 0.
    pub index: u32,
    /// Destination port for a datagram, 0 otherwise.
    pub port: u16,
    pub _pad: u16,
    /// Inode number of the writer's network namespace, 0 when unknown.
    pub netns: u32,
    pub _pad2: u32,
    pub data: [u8; PAYLOAD_CAPACITY],
}

/// Value of the map of sockets whose first writes are copied, keyed by
/// `tgid << 32 | fd`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct WatchedSocket {
    pub connect_id: u64,
    /// `PAYLOAD_STREAM_START` for TCP, `PAYLOAD_DATAGRAM_OUT` for DNS.
    pub kind: u32,
    pub writes: u32,
    pub bytes: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Writes copied per TCP socket before the kernel stops watching it, enough
/// for a ClientHello split across a few writes.
pub const WATCHED_MAX_WRITES: u32 = 4;

/// Value of the map of processes in agent trees, keyed by tgid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TrackedProcess {
    pub session_id: u64,
    /// Process that made the tree an agent tree (the agent's own tgid).
    pub root_pid: u32,
    pub _pad: u32,
}

pub const FILE_OP_OPEN: u32 = 1;
pub const FILE_OP_UNLINK: u32 = 2;
pub const FILE_OP_RENAME: u32 = 3;

/// File paths were cut at [`PATH_CAPACITY`].
pub const FILE_FLAG_PATH_TRUNCATED: u32 = 1 << 0;

/// A file operation by a process in an agent tree.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FileEvent {
    pub header: EventHeader,
    pub session_id: u64,
    /// One of the `FILE_OP_*` values.
    pub op: u32,
    /// `open` flags (`O_WRONLY`, `O_CREAT`, ...), or `unlinkat`/`renameat2` flags.
    pub flags: u32,
    /// Directory fd the path is relative to (`AT_FDCWD` is -100).
    pub dirfd: i32,
    /// Return value: an fd or 0 on success, a negative errno on failure.
    pub result: i32,
    pub mode: u32,
    pub _pad: u32,
    pub path: [u8; PATH_CAPACITY],
    /// The new path of a rename.
    pub path2: [u8; PATH_CAPACITY],
}

pub const TLS_WRITE: u32 = 1;
pub const TLS_READ: u32 = 2;
/// The plaintext was cut at [`TLS_CAPACITY`].
pub const TLS_FLAG_TRUNCATED: u32 = 1 << 0;
/// No plaintext was copied because the daemon asked, through `TLS_SKIP`,
/// to pass over the rest of a response it does not read.
pub const TLS_FLAG_SKIPPED: u32 = 1 << 1;
/// No plaintext was copied because the ring buffer was more than half full
/// (`ProgramConfig::tls_yield_bytes`).
pub const TLS_FLAG_YIELDED: u32 = 1 << 2;

/// Plaintext passed to or returned by an OpenSSL-compatible `SSL_*` call.
///
/// Only `len` bytes of `data` are sent.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsEvent {
    pub header: EventHeader,
    /// The `SSL *` as an opaque stream id within the process.
    pub stream: u64,
    /// Socket fd the stream was last seen writing to, -1 when unknown.
    pub fd: i32,
    /// `TLS_WRITE` or `TLS_READ`.
    pub direction: u32,
    pub len: u32,
    /// Bytes the call wrote or read in full.
    pub total: u32,
    /// `SSL_write` calls that returned data on this stream so far, this one
    /// included; 0 when `fd` is unknown.
    pub writes: u32,
    pub _pad: u32,
    pub data: [u8; TLS_CAPACITY],
}

/// The kernel's record of one `SSL *` of one process, learnt from the send
/// syscalls made inside its `SSL_*` calls.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsStream {
    /// The socket fd the stream last wrote to.
    pub fd: i32,
    /// `SSL_write` calls that returned data since the entry was made.
    pub writes: u32,
}

/// Per-thread state from an `SSL_*` entry probe to its return probe.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsCall {
    pub stream: u64,
    pub buffer: u64,
    /// `size_t *` out-parameter of the `_ex` variants, 0 for the plain ones.
    pub length_out: u64,
}

/// Kernel struct member offsets resolved from the running kernel's BTF by
/// the daemon and written into the programs' read-only data before load.
///
/// A group whose `*_ok` field is 0 could not be resolved; the programs then
/// skip those reads and flag the record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelOffsets {
    pub task_ok: u32,
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_real_parent: u32,
    pub task_group_leader: u32,
    pub task_start_boottime: u32,
    pub task_mm: u32,
    pub task_exit_code: u32,

    pub mm_ok: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    /// 1 when the two offsets below are valid.
    pub mm_env_ok: u32,
    pub mm_env_start: u32,
    pub mm_env_end: u32,
    pub mm_exe_file: u32,
    pub file_inode: u32,
    pub file_dentry: u32,
    pub dentry_name: u32,
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub inode_nlink: u32,
    pub sb_dev: u32,

    pub pidns_ok: u32,
    pub task_thread_pid: u32,
    pub pid_level: u32,
    pub pid_numbers: u32,
    pub upid_size: u32,
    pub upid_nr: u32,
    pub upid_ns: u32,
    pub pidns_inum: u32,

    pub path_ok: u32,
    pub file_vfsmount: u32,
    pub vfsmount_root: u32,
    pub mount_mnt: u32,
    pub mount_parent: u32,
    pub mount_mountpoint: u32,
    pub dentry_parent: u32,

    pub socket_ok: u32,
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    pub file_private_data: u32,
    pub socket_type: u32,
    pub socket_sk: u32,
    pub sock_err: u32,

    /// Offset of `group_dead` in the `sched_process_exit` tracepoint record,
    /// 0 on kernels whose tracepoint lacks it.
    pub exit_group_dead: u32,

    /// The executable inode's size and modification time. Optional: the
    /// daemon then opens the file to learn them, as before.
    pub exe_meta_ok: u32,
    pub inode_size: u32,
    pub inode_mtime_sec: u32,
    /// Read as 32 bits: nanoseconds fit, and on kernels where the field is
    /// a `long` the low half comes first on little-endian machines.
    pub inode_mtime_nsec: u32,

    /// The task's network namespace, which scopes DNS answers. Optional:
    /// without it every namespace shares one name cache.
    pub netns_ok: u32,
    pub task_nsproxy: u32,
    pub nsproxy_net_ns: u32,
    pub net_ns_inum: u32,

    /// Offsets of the syscall number and its six arguments in the user
    /// registers saved at syscall entry. The socket tracepoints read the
    /// arguments of the send, receive or connect they run inside from
    /// there, so no syscall tracepoint is needed.
    pub regs_ok: u32,
    pub regs_nr: u32,
    pub regs_args: [u32; 6],
    /// `file::f_flags`, for O_NONBLOCK on a connecting socket.
    pub file_f_flags: u32,
    /// `struct sock` fields of a connected datagram socket's peer.
    pub sock_family: u32,
    pub sock_dport: u32,
    pub sock_daddr: u32,
    pub sock_v6_daddr: u32,
    pub sock_type: u32,
    /// `k_sigaction` fields: a signal handled without SA_RESTART makes a
    /// blocking connect return EINTR.
    pub sigaction_handler: u32,
    pub sigaction_flags: u32,
    /// `sock::sk_sndtimeo` in jiffies: SO_SNDTIMEO also bounds a blocking
    /// connect, which then returns EINPROGRESS while its handshake goes on.
    pub sock_sndtimeo: u32,
}

/// Settings the daemon writes into the programs' read-only data before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProgramConfig {
    /// Bytes of argv to copy per exec, at most `ARGV_CAPACITY - 1`.
    pub argv_max_bytes: u32,
    /// Send fork records for new threads too, not only new processes.
    pub report_threads: u32,
    /// Unread bytes in the ring buffer above which a record wakes the
    /// daemon; below it the daemon's drain timer picks records up.
    pub wakeup_bytes: u32,
    /// Bytes of plaintext copied per `SSL_*` call, at most `TLS_CAPACITY - 1`.
    pub tls_max_bytes: u32,
    /// Unread bytes in the ring buffer above which `SSL_*` calls are sent
    /// without their plaintext: half the ring buffer. A flood of TLS data
    /// then cannot crowd out process and network records.
    pub tls_yield_bytes: u32,
    /// Bytes of an agent tree's process environment searched for
    /// `TRACEPARENT` at exec; 0 turns the search off.
    pub trace_context_max_bytes: u32,
    /// This architecture's syscall numbers for the calls the shared send
    /// and file programs tell apart; `u32::MAX` where the architecture
    /// lacks the call (arm64 has no `open`, `unlink` or `rename`).
    pub syscalls: SyscallNumbers,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SyscallNumbers {
    pub write: u32,
    pub read: u32,
    pub connect: u32,
    pub recvfrom: u32,
    pub recvmsg: u32,
    pub sendto: u32,
    pub sendmsg: u32,
    pub sendmmsg: u32,
    pub writev: u32,
    pub open: u32,
    pub openat: u32,
    pub openat2: u32,
    pub unlink: u32,
    pub unlinkat: u32,
    pub rename: u32,
    pub renameat: u32,
    pub renameat2: u32,
}

impl Default for SyscallNumbers {
    fn default() -> Self {
        Self::NONE
    }
}

impl SyscallNumbers {
    /// Numbers that match no syscall, for a build that sets none.
    pub const NONE: SyscallNumbers = SyscallNumbers {
        write: u32::MAX,
        read: u32::MAX,
        connect: u32::MAX,
        recvfrom: u32::MAX,
        recvmsg: u32::MAX,
        sendto: u32::MAX,
        sendmsg: u32::MAX,
        sendmmsg: u32::MAX,
        writev: u32::MAX,
        open: u32::MAX,
        openat: u32::MAX,
        openat2: u32::MAX,
        unlink: u32::MAX,
        unlinkat: u32::MAX,
        rename: u32::MAX,
        renameat: u32::MAX,
        renameat2: u32::MAX,
    };
}

/// Value of the in-kernel map of connects in flight, keyed by the socket's
/// kernel address. Used to carry the caller's identity to the handshake's end.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PendingConnect {
    pub pid: u32,
    pub tid: u32,
    pub start_time_ns: u64,
    pub connect_id: u64,
    /// 1 while the connect syscall is running, 2 once it returned EINPROGRESS.
    pub state: u32,
    /// 1 when `result` contains the handshake's outcome.
    pub done: u32,
    pub result: i32,
    pub _pad: u32,
}

pub const PENDING_IN_SYSCALL: u32 = 1;
pub const PENDING_AWAITING_HANDSHAKE: u32 = 2;

/// Value of the per-thread map that carries a connect's arguments from the
/// syscall's entry to its exit.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnectArgs {
    pub sock: u64,
    pub connect_id: u64,
    pub fd: i32,
    pub sock_type: u16,
    pub family: u16,
    pub addr_len: u32,
    pub flags: u32,
    pub sockaddr: [u8; SOCKADDR_CAPACITY],
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<EventHeader>() == 32);
const _: () = assert!(core::mem::size_of::<ExecEvent>() == 144 + TRACE_CONTEXT_CAPACITY + 16 + 64 + 256 + EXE_PATH_CAPACITY + ARGV_CAPACITY);
const _: () = assert!(core::mem::size_of::<ForkEvent>() == 64);
const _: () = assert!(core::mem::size_of::<ExitEvent>() == 40);
const _: () = assert!(core::mem::size_of::<ConnectEvent>() == 96);
const _: () = assert!(core::mem::size_of::<ConnectResultEvent>() == 48);
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 72 * 4);
const _: () = assert!(core::mem::size_of::<ConnectArgs>() == 64);
const _: () = assert!(ARGV_CAPACITY.is_power_of_two());
const _: () = assert!(PAYLOAD_CAPACITY.is_power_of_two());
const _: () = assert!(TLS_CAPACITY.is_power_of_two());
const _: () = assert!(core::mem::size_of::<PayloadEvent>() == 72 + PAYLOAD_CAPACITY);
const _: () = assert!(core::mem::size_of::<FileEvent>() == 64 + 2 * PATH_CAPACITY);
const _: () = assert!(core::mem::size_of::<TlsEvent>() == 64 + TLS_CAPACITY);
const _: () = assert!(core::mem::size_of::<WatchedSocket>() == 24);

#[cfg(feature = "user")]
mod user {
    // SAFETY: each type is #[repr(C)], Copy, made only of integers and byte
    // arrays with explicit padding fields, so every bit pattern is valid.
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProgramConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TrackedProcess {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::WatchedSocket {}
}
