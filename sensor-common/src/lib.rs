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
}

/// Number of [`EventKind`] values, and so the length of the loss counter map.
pub const EVENT_KIND_COUNT: u32 = 5;

impl EventKind {
    /// Converts a raw kind read from the ring buffer, `None` for an unknown one.
    pub fn from_u32(value: u32) -> Option<Self> {
        match value {
            0 => Some(Self::Exec),
            1 => Some(Self::Fork),
            2 => Some(Self::Exit),
            3 => Some(Self::Connect),
            4 => Some(Self::ConnectResult),
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
    /// Bytes of `argv` sent.
    pub argv_len: u32,
    /// Bytes of the whole argv region in the process, which may exceed
    /// `argv_len`.
    pub argv_total_len: u32,
    pub filename_len: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
    pub exe_name: [u8; EXE_NAME_CAPACITY],
    pub filename: [u8; FILENAME_CAPACITY],
    /// NUL-separated arguments, as laid out by the kernel in the new image.
    pub argv: [u8; ARGV_CAPACITY],
}

/// The child shares its parent's thread group: a thread, not a process.
pub const FORK_FLAG_THREAD: u32 = 1 << 0;

/// A new task from `sched_process_fork`. Threads are dropped in the kernel
/// unless the configuration asks for them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ForkEvent {
    /// `pid` and `start_time_ns` name the child process.
    pub header: EventHeader,
    pub parent_pid: u32,
    pub child_tid: u32,
    pub parent_start_time_ns: u64,
    pub cgroup_id: u64,
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
/// was still running, so `async_result` already holds the outcome.
pub const CONNECT_FLAG_ASYNC_DONE: u32 = 1 << 2;

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
    pub _pad: u32,
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
    pub _pad: u32,
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
    /// 1 when `result` holds the handshake's outcome.
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
const _: () = assert!(core::mem::size_of::<ExecEvent>() == 104 + 16 + 64 + 256 + ARGV_CAPACITY);
const _: () = assert!(core::mem::size_of::<ForkEvent>() == 56);
const _: () = assert!(core::mem::size_of::<ExitEvent>() == 40);
const _: () = assert!(core::mem::size_of::<ConnectEvent>() == 88);
const _: () = assert!(core::mem::size_of::<ConnectResultEvent>() == 48);
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 38 * 4);
const _: () = assert!(core::mem::size_of::<ConnectArgs>() == 64);
const _: () = assert!(ARGV_CAPACITY.is_power_of_two());

#[cfg(feature = "user")]
mod user {
    // SAFETY: each type is #[repr(C)], Copy, made only of integers and byte
    // arrays with explicit padding fields, so every bit pattern is valid.
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProgramConfig {}
}
