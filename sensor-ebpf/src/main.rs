//! agent-sensor's kernel programs.
//!
//! Each program copies the few fields it needs into one ring buffer record
//! and returns; all interpretation happens in the daemon. Struct offsets come
//! from [`OFFSETS`], which the daemon fills from the running kernel's BTF, so
//! nothing here assumes a kernel layout. A failed ring buffer reservation
//! bumps the per-CPU loss counter of the record's kind, and the daemon turns
//! those counts into `sensor.loss` records.

#![no_std]
#![no_main]

use core::ptr::read_volatile;

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel_str_bytes, bpf_probe_read_user_str_bytes,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_task, bpf_get_current_task_btf,
            bpf_jiffies64, bpf_ktime_get_boot_ns, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user, bpf_probe_read_user_str,
            bpf_ringbuf_output, bpf_ringbuf_query, bpf_task_pt_regs,
        },
    },
    macros::{map, raw_tracepoint, tracepoint, uprobe, uretprobe},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RawTracePointContext, RetProbeContext, TracePointContext},
    EbpfContext,
};
use sensor_common::*;

/// Filled by the daemon before load; zero means "not resolved".
#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = unsafe { core::mem::zeroed() };

#[unsafe(no_mangle)]
static CONFIG: ProgramConfig = ProgramConfig {
    argv_max_bytes: 4095,
    report_threads: 0,
    wakeup_bytes: 0,
    tls_max_bytes: 4095,
    tls_yield_bytes: 0,
    trace_context_max_bytes: 0,
    syscalls: SyscallNumbers::NONE,
};

/// The daemon resizes this map from its configuration before load.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Reservation failures per [`EventKind`].
#[map]
static LOSSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_KIND_COUNT, 0);

/// Exec records are too large for the 512-byte BPF stack, so they are built
/// here and sent with `bpf_ringbuf_output` at their used length.
#[map]
static EXEC_SCRATCH: PerCpuArray<ExecEvent> = PerCpuArray::with_max_entries(1, 0);

/// Connect arguments from syscall entry to exit, keyed by pid_tgid.
#[map]
static CONNECT_ARGS: HashMap<u64, ConnectArgs> = HashMap::with_max_entries(16384, 0);

/// TCP connects whose handshake may outlive the syscall, keyed by the
/// socket's kernel address. LRU, because a socket closed in a way that never
/// passes through the tracked state change would otherwise leak its entry.
#[map]
static PENDING_CONNECTS: LruHashMap<u64, PendingConnect> = LruHashMap::with_max_entries(16384, 0);

/// Sockets whose first writes are copied, keyed by `tgid << 32 | fd`. LRU,
/// because a socket closed before its first write never removes its entry.
#[map]
static WATCHED: LruHashMap<u64, WatchedSocket> = LruHashMap::with_max_entries(16384, 0);

/// Blocking TCP connects between the SYN and the handshake's end, keyed by
/// the socket's kernel address: the record waits here for its result.
#[map]
static BLOCKED_CONNECTS: LruHashMap<u64, ConnectEvent> = LruHashMap::with_max_entries(16384, 0);

/// The socket each thread is blocked connecting, keyed by pid_tgid, so
/// `signal_deliver` can tell which signal interrupts a connect.
#[map]
static BLOCKED_THREADS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

/// Connected datagram sockets already reported, keyed by the socket's
/// kernel address and its inode number (addresses are reused, inodes are
/// not while the host is up). The value is the destination reported: port,
/// then the address's two halves, so a socket connected again elsewhere is
/// reported again.
#[map]
static DATAGRAM_SEEN: LruHashMap<[u64; 2], [u64; 3]> = LruHashMap::with_max_entries(16384, 0);

/// The jiffy at which SO_SNDTIMEO ends a blocked connect, keyed by socket,
/// for connects on sockets with a send timeout.
#[map]
static BLOCKED_DEADLINES: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

/// Processes in agent trees, keyed by tgid: filled by the daemon when it
/// recognises an agent, inherited at fork, removed at exit.
#[map]
static TRACKED: HashMap<u32, TrackedProcess> = HashMap::with_max_entries(16384, 0);

#[map]
static PAYLOAD_SCRATCH: PerCpuArray<PayloadEvent> = PerCpuArray::with_max_entries(1, 0);

#[map]
static FILE_SCRATCH: PerCpuArray<FileEvent> = PerCpuArray::with_max_entries(1, 0);

/// File syscall arguments from entry to exit, keyed by pid_tgid.
#[map]
static FILE_ARGS: HashMap<u64, FileEvent> = HashMap::with_max_entries(4096, 0);

/// The user pointers of a file syscall's paths, read at exit: by then the
/// kernel has faulted the pages in, which a read at entry cannot do.
#[map]
static FILE_PATHS: HashMap<u64, [u64; 2]> = HashMap::with_max_entries(4096, 0);

/// recvfrom buffers on DNS sockets from entry to exit, keyed by pid_tgid;
/// the value is the buffer address and the fd.
#[map]
static RECV_ARGS: HashMap<u64, [u64; 2]> = HashMap::with_max_entries(4096, 0);

#[map]
static TLS_SCRATCH: PerCpuArray<TlsEvent> = PerCpuArray::with_max_entries(1, 0);

/// Sockets whose DNS answers `sock_recv_length` copies, keyed by the
/// `struct sock` address the tracepoint passes. That program runs on every
/// receive on the host. Checking this map before reading the syscall's
/// registers took its average run time from 333 to 131 ns in the HTTPS
/// loop bench (`kernel.bpf_stats_enabled`). A key that outlives its socket
/// only sends a receive down the full check. An entry is evicted only after
/// 16384 newer DNS sockets, by when the socket's `WATCHED` entry is gone too.
#[map]
static DNS_SOCKETS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16384, 0);

/// Stream sockets whose first writes are copied, keyed by the `struct
/// sock` address. `sock_send_length` checks it before it reads the
/// syscall's registers, so other sends on the host cost two lookups. An
/// entry is added with the socket's `WATCHED` entry and removed by the send
/// that ends or misses that entry. The map is larger than `WATCHED`, so an
/// entry is evicted only long after its watch has ended.
#[map]
static STREAM_SOCKETS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(32768, 0);

/// The last `SSL_*` call of each thread, keyed by pid_tgid. `stream` is 0
/// once the call has returned. The thread's next call writes over the entry
/// in place, which costs less than an insert at each entry and a delete at
/// each return. LRU, so the entries of exited threads make room.
#[map]
static TLS_CALLS: LruHashMap<u64, TlsCall> = LruHashMap::with_max_entries(32768, 0);

/// The socket fd each `SSL *` writes to, keyed by `[tgid, ssl]`, learnt from
/// the write syscall made inside `SSL_write`.
#[map]
static TLS_FDS: LruHashMap<[u64; 2], TlsStream> = LruHashMap::with_max_entries(16384, 0);

/// Streams whose reads are passed over without copying, keyed like
/// `TLS_FDS` and written by the daemon when a response it does not read
/// (the answer to a request that is not an LLM call) has a large body left.
/// The value is the stream's `TlsStream::writes` when the daemon saw the
/// response: reads are passed over while it is unchanged, so the next
/// request, and a command that arrives after it, end the skip.
#[map]
static TLS_SKIP: LruHashMap<[u64; 2], u32> = LruHashMap::with_max_entries(4096, 0);

const EINPROGRESS: i32 = 115;
const EINTR: i32 = 4;
const ECONNABORTED: i32 = 103;
/// Kernel-internal restart codes (ERESTARTSYS to ERESTART_RESTARTBLOCK)
/// that a syscall exit tracepoint sees when a signal interrupts connect;
/// the caller sees EINTR or a restarted call.
const ERESTART_FIRST: i32 = 512;
const ERESTART_LAST: i32 = 516;

/// Returns whether a connect's TCP handshake goes on after the syscall
/// returned `result`: in progress, or interrupted by a signal.
#[inline(always)]
fn handshake_continues(result: i32) -> bool {
    result == -EINPROGRESS || result == -EINTR || (-ERESTART_LAST..=-ERESTART_FIRST).contains(&result)
}
const AT_FDCWD: i32 = -100;
const DNS_PORT: u16 = 53;
/// Datagrams copied per DNS socket before the kernel stops watching it.
const DNS_MAX_PACKETS: u32 = 32;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;
const O_NONBLOCK: u32 = 0o4000;
const SA_RESTART: u64 = 0x1000_0000;
const SIG_IGN: u64 = 1;
const SOCK_STREAM: u16 = 1;
const SOCK_DGRAM: u16 = 2;

/// Returns the offsets by reference, so no program copies all of them
/// onto its 512-byte stack.
#[inline(always)]
fn offsets() -> &'static KernelOffsets {
    let pointer: *const KernelOffsets = &OFFSETS;
    // SAFETY: the volatile read of the pointer hides its target from the
    // compiler, which would otherwise fold in the zero initialiser that the
    // loader replaces; the pointer itself is a valid static's address.
    unsafe { &*read_volatile(&pointer) }
}

#[inline(always)]
fn config() -> &'static ProgramConfig {
    let pointer: *const ProgramConfig = &CONFIG;
    // SAFETY: as for `offsets`.
    unsafe { &*read_volatile(&pointer) }
}

#[inline(always)]
fn count_loss(kind: EventKind) {
    if let Some(counter) = LOSSES.get_ptr_mut(kind as u32) {
        // SAFETY: the pointer is this CPU's slot of a per-CPU array, and
        // programs on one CPU do not run concurrently with each other here.
        unsafe { *counter += 1 };
    }
}

/// Reads a value at `base + offset` from kernel memory, 0 on failure.
#[inline(always)]
fn read_kernel<T: Default>(base: u64, offset: u32) -> T {
    if base == 0 {
        return T::default();
    }
    let mut value = T::default();
    // SAFETY: bpf_probe_read_kernel checks the source address and fails
    // cleanly on an invalid one; the destination is a local of size T.
    let ret = unsafe {
        bpf_probe_read_kernel(
            (&mut value as *mut T).cast(),
            core::mem::size_of::<T>() as u32,
            (base + offset as u64) as *const core::ffi::c_void,
        )
    };
    if ret < 0 { T::default() } else { value }
}

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Waking the reader for every record costs a context switch per event on
/// exec storms, so records are queued silently until the unread data passes
/// the configured threshold; the daemon also drains on a short timer.
#[inline(always)]
fn wakeup_flag() -> u64 {
    // SAFETY: the map pointer is this program's ring buffer.
    let unread = unsafe { bpf_ringbuf_query(EVENTS_PTR(), BPF_RB_AVAIL_DATA) };
    if unread >= config().wakeup_bytes as u64 { BPF_RB_FORCE_WAKEUP } else { BPF_RB_NO_WAKEUP }
}

/// Sends `len` bytes starting at `data` as one record, counting a failure.
#[inline(always)]
fn output_bytes(kind: EventKind, data: *const u8, len: u64) {
    output_bytes_with(kind, data, len, wakeup_flag());
}

#[inline(always)]
fn output_bytes_with(kind: EventKind, data: *const u8, len: u64, flags: u64) {
    // SAFETY: callers pass a pointer into a map value at least `len` bytes long.
    let ret = unsafe { bpf_ringbuf_output(EVENTS_PTR(), data as *mut _, len, flags) };
    if ret < 0 {
        count_loss(kind);
    }
}

#[allow(non_snake_case)]
#[inline(always)]
fn EVENTS_PTR() -> *mut core::ffi::c_void {
    &EVENTS as *const RingBuf as *mut core::ffi::c_void
}

/// Sends a fixed-size record through the ring buffer.
#[inline(always)]
fn output<T>(kind: EventKind, record: &T) {
    output_bytes(kind, (record as *const T).cast(), core::mem::size_of::<T>() as u64);
}

fn current_header(kind: EventKind, task: u64, off: &KernelOffsets) -> EventHeader {
    let pid_tgid = bpf_get_current_pid_tgid();
    let leader: u64 = read_kernel(task, off.task_group_leader);
    EventHeader {
        kind: kind as u32,
        flags: 0,
        // SAFETY: the helper has no preconditions.
        time_ns: unsafe { bpf_ktime_get_boot_ns() },
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        start_time_ns: read_kernel(leader, off.task_start_boottime),
    }
}

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let _ = try_exec(&ctx);
    0
}

fn try_exec(ctx: &TracePointContext) -> Result<(), i64> {
    let event_ptr = EXEC_SCRATCH.get_ptr_mut(0).ok_or(0i64)?;
    // SAFETY: the scratch slot belongs to this CPU for the program's run.
    let event = unsafe { &mut *event_ptr };
    let off = offsets();
    let cfg = config();
    // SAFETY: the helper has no preconditions.
    let task = unsafe { bpf_get_current_task() };

    event.header = current_header(EventKind::Exec, task, &off);
    // SAFETY: offset 16 is `old_pid` in the tracepoint's record format.
    event.old_tid = unsafe { ctx.read_at::<i32>(16) }.unwrap_or(0) as u32;
    let parent: u64 = read_kernel(task, off.task_real_parent);
    event.ppid = read_kernel::<i32>(parent, off.task_tgid) as u32;
    let parent_leader: u64 = read_kernel(parent, off.task_group_leader);
    event.parent_start_time_ns = read_kernel(parent_leader, off.task_start_boottime);
    let uid_gid = bpf_get_current_uid_gid();
    event.uid = uid_gid as u32;
    event.gid = (uid_gid >> 32) as u32;
    // SAFETY: the helper has no preconditions.
    event.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    event.comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);

    // `filename` is a __data_loc field: the low 16 bits hold its offset in
    // the record and the high 16 bits its length.
    // SAFETY: offset 8 is `filename`'s data location in the record format.
    let data_loc = unsafe { ctx.read_at::<u32>(8) }.unwrap_or(0);
    let name_ptr = ctx.as_ptr() as u64 + (data_loc & 0xffff) as u64;
    // SAFETY: the helper validates the source; the destination is the
    // scratch buffer's field.
    let copied = unsafe { bpf_probe_read_kernel_str_bytes(name_ptr as *const u8, &mut event.filename) }
        .map(|s| s.len())
        .unwrap_or(0);
    event.filename_len = copied as u32;
    if (data_loc >> 16) as usize > FILENAME_CAPACITY {
        event.header.flags |= EXEC_FLAG_FILENAME_TRUNCATED;
    }

    // SAFETY: the value is copied out at once.
    event.session_id = unsafe { TRACKED.get(&event.header.pid) }.map_or(0, |t| t.session_id);
    read_exe_and_argv(event, task, &off, &cfg);
    read_pid_namespace(event, task, &off);
    read_trace_context(event, task, &off, &cfg);

    let len = core::mem::offset_of!(ExecEvent, argv) as u64
        + (event.argv_len as u64 & (ARGV_CAPACITY as u64 - 1));
    output_bytes(EventKind::Exec, event_ptr as *const u8, len);
    Ok(())
}

/// Copies a tool process's `TRACEPARENT=...` environment entry into its
/// exec record. Read at exec, it is there even when the process exits or
/// rewrites its environment before the daemon looks. Only processes of an
/// agent's tree pay for the search.
fn read_trace_context(event: &mut ExecEvent, task: u64, off: &KernelOffsets, cfg: &ProgramConfig) {
    event.trace_context_len = 0;
    if event.session_id == 0 || cfg.trace_context_max_bytes == 0 || off.mm_ok == 0 || off.mm_env_ok == 0 {
        return;
    }
    if !find_trace_context(event, task, off, cfg) {
        // The buffer contains the last entry read, which may be a secret,
        // so it must not travel to the daemon in the record.
        event.trace_context = [0; TRACE_CONTEXT_CAPACITY];
    }
}

/// Returns true with the entry and its length in the record when found.
#[inline(always)]
fn find_trace_context(event: &mut ExecEvent, task: u64, off: &KernelOffsets, cfg: &ProgramConfig) -> bool {
    let mm: u64 = read_kernel(task, off.task_mm);
    let start: u64 = read_kernel(mm, off.mm_env_start);
    let end: u64 = read_kernel(mm, off.mm_env_end);
    let limit = start.saturating_add(end.saturating_sub(start).min(cfg.trace_context_max_bytes as u64));

    let mut at = start;
    // 1 while reading the rest of an entry longer than the buffer, whose
    // bytes must not be taken for the start of an entry. Kept as a number
    // and updated without branches: two paths per read would double the
    // verifier's states at every turn of the loop.
    let mut inside = 0u64;
    for _ in 0..TRACE_CONTEXT_MAX_READS {
        if at >= limit {
            return false;
        }
        // SAFETY: the buffer is TRACE_CONTEXT_CAPACITY bytes long; the
        // helper validates the user address and fails without faulting.
        let copied = unsafe {
            bpf_probe_read_user_str(event.trace_context.as_mut_ptr().cast(), TRACE_CONTEXT_CAPACITY as u32, at as *const _)
        };
        if copied <= 0 {
            return false;
        }
        let copied = (copied as u64) & (2 * TRACE_CONTEXT_CAPACITY as u64 - 1);

        if inside == 0 && is_traceparent_entry(&event.trace_context) {
            // The helper leaves the bytes past the terminator as they were,
            // so they may contain the tail of an earlier, longer entry (a
            // secret, perhaps). Read the entry again into a cleared buffer.
            event.trace_context = [0; TRACE_CONTEXT_CAPACITY];
            // SAFETY: as above.
            let again = unsafe {
                bpf_probe_read_user_str(event.trace_context.as_mut_ptr().cast(), TRACE_CONTEXT_CAPACITY as u32, at as *const _)
            };
            event.trace_context_len = (again.max(1) as u32 - 1) & (TRACE_CONTEXT_CAPACITY as u32 - 1);
            return true;
        }

        // A full buffer means the entry may go on past it: the next read
        // starts at its terminator or its remaining bytes.
        inside = copied / TRACE_CONTEXT_CAPACITY as u64;
        at += copied - inside;
    }
    false
}

#[inline(always)]
fn is_traceparent_entry(entry: &[u8; TRACE_CONTEXT_CAPACITY]) -> bool {
    const UPPER: (u64, u32) = (u64::from_le_bytes(*b"TRACEPAR"), u32::from_le_bytes(*b"ENT="));
    const LOWER: (u64, u32) = (u64::from_le_bytes(*b"tracepar"), u32::from_le_bytes(*b"ent="));
    // SAFETY: both reads are inside the 128-byte buffer.
    let entry = unsafe {
        (
            core::ptr::read_unaligned(entry.as_ptr().cast::<u64>()),
            core::ptr::read_unaligned(entry.as_ptr().add(8).cast::<u32>()),
        )
    };
    entry == UPPER || entry == LOWER
}

fn read_exe_and_argv(event: &mut ExecEvent, task: u64, off: &KernelOffsets, cfg: &ProgramConfig) {
    event.argv_len = 0;
    event.argv_total_len = 0;
    event.exe_inode = 0;
    event.exe_dev = 0;
    event.exe_nlink = 0;
    event.exe_meta_ok = 0;
    event.exe_size = 0;
    event.exe_mtime_sec = 0;
    event.exe_mtime_nsec = 0;
    event.exe_name[0] = 0;
    if off.mm_ok == 0 {
        event.header.flags |= EXEC_FLAG_ARGV_UNREADABLE;
        return;
    }
    let mm: u64 = read_kernel(task, off.task_mm);
    let arg_start: u64 = read_kernel(mm, off.mm_arg_start);
    let arg_end: u64 = read_kernel(mm, off.mm_arg_end);
    let total = arg_end.saturating_sub(arg_start);
    event.argv_total_len = total as u32;
    let mut want = total;
    if want > cfg.argv_max_bytes as u64 {
        want = cfg.argv_max_bytes as u64;
    }
    if want > ARGV_CAPACITY as u64 - 1 {
        want = ARGV_CAPACITY as u64 - 1;
    }
    // The mask repeats the bound in a form the verifier tracks.
    let want = want & (ARGV_CAPACITY as u64 - 1);
    if want > 0 {
        // SAFETY: `want` is below the buffer's length; the helper validates
        // the user address and fails without faulting.
        let ret = unsafe {
            bpf_probe_read_user(event.argv.as_mut_ptr().cast(), want as u32, arg_start as *const _)
        };
        if ret < 0 {
            event.header.flags |= EXEC_FLAG_ARGV_UNREADABLE;
        } else {
            event.argv_len = want as u32;
        }
    }
    if total > want {
        event.header.flags |= EXEC_FLAG_ARGV_TRUNCATED;
    }

    let exe_file: u64 = read_kernel(mm, off.mm_exe_file);
    let inode: u64 = read_kernel(exe_file, off.file_inode);
    event.exe_inode = read_kernel(inode, off.inode_ino);
    event.exe_nlink = read_kernel(inode, off.inode_nlink);
    let sb: u64 = read_kernel(inode, off.inode_sb);
    event.exe_dev = read_kernel(sb, off.sb_dev);
    if inode != 0 && event.exe_nlink == 0 {
        event.header.flags |= EXEC_FLAG_EXE_UNLINKED;
    }
    if inode != 0 && off.exe_meta_ok != 0 {
        event.exe_size = read_kernel(inode, off.inode_size);
        event.exe_mtime_sec = read_kernel(inode, off.inode_mtime_sec);
        event.exe_mtime_nsec = read_kernel(inode, off.inode_mtime_nsec);
        event.exe_meta_ok = 1;
    }
    let dentry: u64 = read_kernel(exe_file, off.file_dentry);
    let name: u64 = read_kernel(dentry, off.dentry_name);
    if name != 0 {
        // SAFETY: the helper validates the source address.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut event.exe_name) };
    }
    event.exe_path_len = 0;
    if off.path_ok != 0 && dentry != 0 {
        walk_exe_path(event, exe_file, dentry, off);
    }
}

/// Builds the executable's path from its dentry chain, crossing mount
/// points, because a process that exits at once leaves no /proc/PID/exe for
/// the daemon to read.
fn walk_exe_path(event: &mut ExecEvent, exe_file: u64, dentry: u64, off: &KernelOffsets) {
    let vfsmount: u64 = read_kernel(exe_file, off.file_vfsmount);
    let mut mount = vfsmount.wrapping_sub(off.mount_mnt as u64);
    let mut dentry = dentry;
    let mut slots = 0u32;
    let mut complete = false;
    for slot in 0..EXE_PATH_MAX_COMPONENTS {
        let mount_root: u64 = read_kernel(mount + off.mount_mnt as u64, off.vfsmount_root);
        if dentry == mount_root {
            // The top of this mount: continue from where it is mounted, or
            // stop at the root of the mount tree.
            let parent_mount: u64 = read_kernel(mount, off.mount_parent);
            if parent_mount == mount || parent_mount == 0 {
                complete = true;
                break;
            }
            dentry = read_kernel(mount, off.mount_mountpoint);
            mount = parent_mount;
        }
        let parent: u64 = read_kernel(dentry, off.dentry_parent);
        let name: u64 = read_kernel(dentry, off.dentry_name);
        // SAFETY: each slot is a fixed, in-bounds range of the buffer; the
        // helper validates the source and bounds the copy to the slot.
        let copied = unsafe {
            aya_ebpf::helpers::generated::bpf_probe_read_kernel_str(
                event.exe_path.as_mut_ptr().add(slot * EXE_PATH_COMPONENT).cast(),
                EXE_PATH_COMPONENT as u32,
                name as *const _,
            )
        };
        if copied <= 0 {
            break;
        }
        if copied as usize >= EXE_PATH_COMPONENT {
            event.header.flags |= EXEC_FLAG_EXE_PATH_TRUNCATED;
        }
        slots += 1;
        // A disconnected dentry (a memfd or other pseudo file) is its own
        // parent: its name, as /proc/PID/exe shows it, is the whole path.
        if parent == dentry {
            complete = true;
            break;
        }
        dentry = parent;
    }
    event.exe_path_len = slots;
    if slots > 0 {
        event.header.flags |= if complete { EXEC_FLAG_EXE_PATH } else { EXEC_FLAG_EXE_PATH_TRUNCATED };
    }
}

fn read_pid_namespace(event: &mut ExecEvent, task: u64, off: &KernelOffsets) {
    let (ns_pid, inum) = pid_in_namespace(task, off);
    event.ns_pid = ns_pid;
    event.pid_ns_inum = inum;
    if ns_pid == 0 {
        event.header.flags |= EXEC_FLAG_NO_PIDNS;
    }
}

/// Returns a task's pid in its own pid namespace and that namespace's
/// inode number, zeros when unreadable.
fn pid_in_namespace(task: u64, off: &KernelOffsets) -> (u32, u32) {
    if off.pidns_ok == 0 {
        return (0, 0);
    }
    let pid: u64 = read_kernel(task, off.task_thread_pid);
    if pid == 0 {
        return (0, 0);
    }
    let level: u32 = read_kernel(pid, off.pid_level);
    // Nesting is capped at 32 levels by the kernel.
    let level = (level & 63) as u64;
    let upid = pid + off.pid_numbers as u64 + level * off.upid_size as u64;
    let ns_pid = read_kernel::<i32>(upid, off.upid_nr) as u32;
    let ns: u64 = read_kernel(upid, off.upid_ns);
    (ns_pid, read_kernel(ns, off.pidns_inum))
}

#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    try_fork(&ctx);
    0
}

fn try_fork(ctx: &RawTracePointContext) {
    let off = offsets();
    let parent: u64 = ctx.arg(0);
    let child: u64 = ctx.arg(1);
    let child_tid: i32 = read_kernel(child, off.task_pid);
    let child_tgid: i32 = read_kernel(child, off.task_tgid);
    let is_thread = child_tid != child_tgid;
    if is_thread && config().report_threads == 0 {
        return;
    }
    let child_leader: u64 = read_kernel(child, off.task_group_leader);
    let parent_leader: u64 = read_kernel(parent, off.task_group_leader);
    let (ns_pid, pid_ns_inum) = pid_in_namespace(child, &off);
    let mut event = ForkEvent {
        header: EventHeader {
            kind: EventKind::Fork as u32,
            flags: if is_thread { FORK_FLAG_THREAD } else { 0 },
            // SAFETY: the helper has no preconditions.
            time_ns: unsafe { bpf_ktime_get_boot_ns() },
            pid: child_tgid as u32,
            tid: child_tid as u32,
            start_time_ns: read_kernel(child_leader, off.task_start_boottime),
        },
        parent_pid: read_kernel::<i32>(parent, off.task_tgid) as u32,
        child_tid: child_tid as u32,
        parent_start_time_ns: read_kernel(parent_leader, off.task_start_boottime),
        // SAFETY: the helper has no preconditions; the child inherits the
        // parent's cgroup, and the parent is the current task here.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        ns_pid,
        pid_ns_inum,
    };
    if !is_thread {
        let parent_tgid = event.parent_pid;
        // SAFETY: the value is copied before the insert below.
        if let Some(tracked) = unsafe { TRACKED.get(&parent_tgid) }.copied()
            && TRACKED.insert(&(child_tgid as u32), &tracked, 0).is_ok()
        {
            event.header.flags |= FORK_FLAG_TRACKED;
        }
    }
    output(EventKind::Fork, &event);
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    try_exit(&ctx);
    0
}

fn try_exit(ctx: &TracePointContext) {
    let off = offsets();
    let pid_tgid = bpf_get_current_pid_tgid();
    let mut flags = 0;
    if off.exit_group_dead != 0 {
        // SAFETY: the daemon found `group_dead` at this offset in the
        // tracepoint's format file.
        let group_dead = unsafe { ctx.read_at::<u8>(off.exit_group_dead as usize) }.unwrap_or(0);
        if group_dead == 0 {
            return;
        }
    } else {
        if (pid_tgid >> 32) as u32 != pid_tgid as u32 {
            return;
        }
        flags |= EXIT_FLAG_LEADER_ONLY;
    }
    // SAFETY: the helper has no preconditions.
    let task = unsafe { bpf_get_current_task() };
    let mut header = current_header(EventKind::Exit, task, &off);
    header.flags = flags;
    let _ = TRACKED.remove(&header.pid);
    let event = ExitEvent {
        header,
        exit_code: read_kernel::<i32>(task, off.task_exit_code) as u32,
        _pad: 0,
    };
    output(EventKind::Exit, &event);
}

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    try_enter_connect(&ctx);
    0
}

fn try_enter_connect(ctx: &TracePointContext) {
    // SAFETY: offsets 16, 24 and 32 are fd, uservaddr and addrlen in the
    // syscall tracepoint's record format.
    let (fd, uaddr, addr_len) = unsafe {
        (
            ctx.read_at::<u64>(16).unwrap_or(0) as i32,
            ctx.read_at::<u64>(24).unwrap_or(0),
            ctx.read_at::<u64>(32).unwrap_or(0) as u32,
        )
    };
    if uaddr == 0 || addr_len < 16 {
        return;
    }
    let mut args = ConnectArgs {
        sock: 0,
        connect_id: 0,
        fd,
        sock_type: 0,
        family: 0,
        addr_len,
        flags: 0,
        sockaddr: [0; SOCKADDR_CAPACITY],
        _pad: 0,
    };
    // Only IPv4 and IPv6 are reported; reading the 16-byte prefix first
    // avoids touching past a short sockaddr_in.
    // SAFETY: the helper validates the user address.
    if unsafe { bpf_probe_read_user(args.sockaddr.as_mut_ptr().cast(), 16, uaddr as *const _) } < 0 {
        return;
    }
    args.family = u16::from_ne_bytes([args.sockaddr[0], args.sockaddr[1]]);
    if args.family == AF_INET6 {
        // The kernel accepts a 24-byte sockaddr_in6 without sin6_scope_id
        // (the RFC 2133 layout), so only those 24 bytes may be read.
        if addr_len < 24 {
            return;
        }
        // SAFETY: as above; addr_len shows the caller passed at least 24 bytes.
        unsafe { bpf_probe_read_user(args.sockaddr.as_mut_ptr().cast(), 24, uaddr as *const _) };
    } else if args.family != AF_INET {
        return;
    }

    let off = offsets();
    // SAFETY: the helper has no preconditions.
    let task = unsafe { bpf_get_current_task() };
    // SAFETY: the helper has no preconditions.
    args.connect_id = unsafe { bpf_ktime_get_ns() };
    if off.socket_ok != 0 {
        args.sock = socket_of_fd(task, fd, &off, &mut args.sock_type);
    }
    if args.sock == 0 {
        args.flags |= CONNECT_FLAG_NO_SOCKET;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if args.sock != 0 && args.sock_type == SOCK_STREAM {
        let header = current_header(EventKind::Connect, task, &off);
        let pending = PendingConnect {
            pid: header.pid,
            tid: header.tid,
            start_time_ns: header.start_time_ns,
            connect_id: args.connect_id,
            state: PENDING_IN_SYSCALL,
            done: 0,
            result: 0,
            _pad: 0,
        };
        let _ = PENDING_CONNECTS.insert(&args.sock, &pending, 0);
    }
    let _ = CONNECT_ARGS.insert(&pid_tgid, &args, 0);
}

/// Returns the `struct sock` behind a file descriptor and stores the
/// socket's type, or 0 when the descriptor is out of range.
fn socket_of_fd(task: u64, fd: i32, off: &KernelOffsets, sock_type: &mut u16) -> u64 {
    let file = file_of_fd(task, fd, off);
    let socket: u64 = read_kernel(file, off.file_private_data);
    *sock_type = read_kernel(socket, off.socket_type);
    read_kernel(socket, off.socket_sk)
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    try_exit_connect(&ctx);
    0
}

fn try_exit_connect(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let Some(args) = (unsafe { CONNECT_ARGS.get(&pid_tgid) }).copied() else {
        return;
    };
    let _ = CONNECT_ARGS.remove(&pid_tgid);
    // SAFETY: offset 16 is `ret` in the syscall exit record format.
    let result = unsafe { ctx.read_at::<i64>(16) }.unwrap_or(0) as i32;

    let off = offsets();
    // SAFETY: the helper has no preconditions.
    let task = unsafe { bpf_get_current_task() };
    let mut event = ConnectEvent {
        header: current_header(EventKind::Connect, task, &off),
        result,
        async_result: 0,
        fd: args.fd,
        sock_type: args.sock_type,
        family: args.family,
        connect_id: args.connect_id,
        sockaddr: args.sockaddr,
        addr_len: args.addr_len,
        netns: net_namespace(task, &off),
        _pad: 0,
    };
    event.header.flags = args.flags;

    if args.sock != 0 && args.sock_type == SOCK_STREAM {
        if handshake_continues(result) {
            if let Some(pending) = PENDING_CONNECTS.get_ptr_mut(&args.sock) {
                // SAFETY: the pointer is to a live map value; a concurrent
                // handshake update races only on plain integer fields.
                let pending = unsafe { &mut *pending };
                if pending.done != 0 {
                    event.header.flags |= CONNECT_FLAG_ASYNC_DONE;
                    event.async_result = pending.result;
                    let _ = PENDING_CONNECTS.remove(&args.sock);
                } else {
                    pending.state = PENDING_AWAITING_HANDSHAKE;
                    event.header.flags |= CONNECT_FLAG_PENDING;
                }
            } else {
                event.header.flags |= CONNECT_FLAG_PENDING;
            }
        } else {
            let _ = PENDING_CONNECTS.remove(&args.sock);
        }
    }
    if result == 0 || handshake_continues(result) {
        watch_socket(pid_tgid, &args);
    }
    output(EventKind::Connect, &event);
}

/// Starts copying the first writes of a new TCP connection (for the TLS
/// ClientHello or HTTP request line) or the datagrams of a DNS socket.
fn watch_socket(pid_tgid: u64, args: &ConnectArgs) {
    let port = u16::from_be_bytes([args.sockaddr[2], args.sockaddr[3]]);
    let kind = match args.sock_type {
        SOCK_STREAM => PAYLOAD_STREAM_START,
        SOCK_DGRAM if port == DNS_PORT => PAYLOAD_DATAGRAM_OUT,
        _ => return,
    };
    let key = (pid_tgid & 0xffff_ffff_0000_0000) | (args.fd as u32 as u64);
    let watched = WatchedSocket { connect_id: args.connect_id, kind, writes: 0, bytes: 0, port, _pad: 0 };
    let _ = WATCHED.insert(&key, &watched, 0);
    if kind == PAYLOAD_STREAM_START && args.sock != 0 {
        let _ = STREAM_SOCKETS.insert(&args.sock, &1, 0);
    }
}

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    try_sock_state(&ctx);
    0
}

fn try_sock_state(ctx: &TracePointContext) {
    // SAFETY: offsets 8, 16 and 20 are skaddr, oldstate and newstate in the
    // tracepoint's record format.
    let (sock, old_state, new_state) = unsafe {
        (
            ctx.read_at::<u64>(8).unwrap_or(0),
            ctx.read_at::<i32>(16).unwrap_or(0),
            ctx.read_at::<i32>(20).unwrap_or(0),
        )
    };
    if old_state != TCP_SYN_SENT || new_state == TCP_SYN_SENT {
        return;
    }
    let result = if new_state == TCP_ESTABLISHED {
        0
    } else {
        let err: i32 = read_kernel(sock, offsets().sock_err);
        if err > 0 { -err } else { -1 }
    };
    try_sock_state_result(sock, result);
}

/// Hands a handshake's outcome to the connect that waits for it: kept for
/// the syscall exit while the connect call runs, sent as its own record
/// after the call returned.
fn try_sock_state_result(sock: u64, result: i32) {
    let Some(pending) = PENDING_CONNECTS.get_ptr_mut(&sock) else {
        return;
    };
    // SAFETY: the pointer is to a live map value.
    let pending = unsafe { &mut *pending };
    if pending.state == PENDING_IN_SYSCALL {
        pending.result = result;
        pending.done = 1;
        return;
    }
    let event = ConnectResultEvent {
        header: EventHeader {
            kind: EventKind::ConnectResult as u32,
            flags: 0,
            // SAFETY: the helper has no preconditions.
            time_ns: unsafe { bpf_ktime_get_boot_ns() },
            pid: pending.pid,
            tid: pending.tid,
            start_time_ns: pending.start_time_ns,
        },
        connect_id: pending.connect_id,
        result,
        _pad: 0,
    };
    let _ = PENDING_CONNECTS.remove(&sock);
    output(EventKind::ConnectResult, &event);
}

#[inline(always)]
fn masked(len: u64, max: u64, capacity: u64) -> u64 {
    let mut n = len;
    if n > max {
        n = max;
    }
    if n > capacity - 1 {
        n = capacity - 1;
    }
    n & (capacity - 1)
}

/// Handles write, sendto, sendmsg, writev and sendmmsg entries: the
/// syscall number selects the argument layout.
#[tracepoint]
pub fn sys_enter_send(ctx: TracePointContext) -> u32 {
    try_send(&ctx);
    0
}

fn try_send(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let nr = config().syscalls;
    // SAFETY: offsets 8, 16, 24 and 32 are __syscall_nr and the first three
    // arguments in every syscall entry record.
    let (syscall, fd, arg1, arg2) = unsafe {
        (
            ctx.read_at::<i32>(8).unwrap_or(-1) as u32,
            ctx.read_at::<u64>(16).unwrap_or(0) as i32,
            ctx.read_at::<u64>(24).unwrap_or(0),
            ctx.read_at::<u64>(32).unwrap_or(0),
        )
    };
    note_tls_fd(pid_tgid, active_tls_call(pid_tgid), fd);

    if syscall == nr.sendto {
        // SAFETY: offsets 48 and 56 are addr and addr_len in sendto's record.
        let (addr, addr_len) = unsafe { (ctx.read_at::<u64>(48).unwrap_or(0), ctx.read_at::<u64>(56).unwrap_or(0)) };
        if addr != 0 && addr_len >= 16 && sendto_dns(pid_tgid, fd, addr, arg1, arg2) {
            return;
        }
    }
    // Most writes are to files, pipes and sockets past their first bytes:
    // they stop here, before any user memory is read.
    let key = (pid_tgid & 0xffff_ffff_0000_0000) | (fd as u32 as u64);
    if WATCHED.get_ptr_mut(&key).is_none() {
        return;
    }
    let (buffer, len) = if syscall == nr.sendmsg {
        first_iovec_of_msghdr(arg1)
    } else if syscall == nr.sendmmsg {
        // The first message's header starts the mmsghdr array.
        first_iovec_of_msghdr(arg1)
    } else if syscall == nr.writev {
        first_iovec(arg1)
    } else {
        (arg1, arg2)
    };
    capture_write(pid_tgid, fd, buffer, len);
}

/// Returns the first iovec's base and length of a `struct user_msghdr`.
#[inline(always)]
fn first_iovec_of_msghdr(msghdr: u64) -> (u64, u64) {
    // `msg_iov` follows msg_name (8 bytes) and msg_namelen (4, padded to 8).
    let mut iov: u64 = 0;
    // SAFETY: the helper validates the user address.
    unsafe { bpf_probe_read_user((&mut iov as *mut u64).cast(), 8, (msghdr + 16) as *const _) };
    first_iovec(iov)
}

#[inline(always)]
fn first_iovec(iov: u64) -> (u64, u64) {
    if iov == 0 {
        return (0, 0);
    }
    let mut pair = [0u64; 2];
    // SAFETY: the helper validates the user address; an iovec is two words.
    let ret = unsafe { bpf_probe_read_user(pair.as_mut_ptr().cast(), 16, iov as *const _) };
    if ret < 0 { (0, 0) } else { (pair[0], pair[1]) }
}

/// Copies an unconnected sendto to port 53 as a DNS query and watches the
/// socket for its answer; returns whether it was one.
fn sendto_dns(pid_tgid: u64, fd: i32, addr: u64, buffer: u64, len: u64) -> bool {
    let mut sockaddr = [0u8; 4];
    // SAFETY: the helper validates the user address.
    if unsafe { bpf_probe_read_user(sockaddr.as_mut_ptr().cast(), 4, addr as *const _) } < 0 {
        return false;
    }
    let family = u16::from_ne_bytes([sockaddr[0], sockaddr[1]]);
    let port = u16::from_be_bytes([sockaddr[2], sockaddr[3]]);
    if (family != AF_INET && family != AF_INET6) || port != DNS_PORT {
        return false;
    }
    let key = (pid_tgid & 0xffff_ffff_0000_0000) | (fd as u32 as u64);
    // SAFETY: the helper has no preconditions.
    let connect_id = unsafe { bpf_ktime_get_ns() };
    if WATCHED.get_ptr_mut(&key).is_none() {
        let watched = WatchedSocket { connect_id, kind: PAYLOAD_DATAGRAM_OUT, writes: 0, bytes: 0, port, _pad: 0 };
        let _ = WATCHED.insert(&key, &watched, 0);
    }
    capture_write(pid_tgid, fd, buffer, len);
    true
}

/// Copies one write of a watched socket; returns whether the socket is
/// still watched afterwards.
fn capture_write(pid_tgid: u64, fd: i32, buffer: u64, len: u64) -> bool {
    let key = (pid_tgid & 0xffff_ffff_0000_0000) | (fd as u32 as u64);
    let Some(watched) = WATCHED.get_ptr_mut(&key) else {
        return false;
    };
    // SAFETY: a live map value of this program's map.
    let watched = unsafe { &mut *watched };
    let max_writes = if watched.kind == PAYLOAD_STREAM_START { WATCHED_MAX_WRITES } else { DNS_MAX_PACKETS };
    if watched.writes >= max_writes || buffer == 0 {
        let _ = WATCHED.remove(&key);
        return false;
    }
    let index = watched.writes;
    watched.writes += 1;
    watched.bytes = watched.bytes.saturating_add(len as u32);
    let (connect_id, direction, port) = (watched.connect_id, watched.kind, watched.port);
    let still_watched = watched.writes < max_writes;
    if !still_watched {
        let _ = WATCHED.remove(&key);
    }
    send_payload(pid_tgid, fd, connect_id, direction, port, index, buffer, len);
    still_watched
}

/// Returns the inode number of the task's network namespace, 0 when the
/// offsets are missing or the task has already released its namespaces.
#[inline(always)]
fn net_namespace(task: u64, off: &KernelOffsets) -> u32 {
    if off.netns_ok == 0 {
        return 0;
    }
    let nsproxy: u64 = read_kernel(task, off.task_nsproxy);
    let net: u64 = read_kernel(nsproxy, off.nsproxy_net_ns);
    read_kernel(net, off.net_ns_inum)
}

// Inlined because BPF calls take at most five arguments.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn send_payload(pid_tgid: u64, fd: i32, connect_id: u64, direction: u32, port: u16, index: u32, buffer: u64, len: u64) {
    let Some(event_ptr) = PAYLOAD_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the scratch slot belongs to this CPU for the program's run.
    let event = unsafe { &mut *event_ptr };
    let off = offsets();
    // SAFETY: the helper has no preconditions.
    let task = unsafe { bpf_get_current_task() };
    event.header = current_header(EventKind::Payload, task, &off);
    event.header.tid = pid_tgid as u32;
    event.connect_id = connect_id;
    event.fd = fd;
    event.direction = direction;
    event.total = len as u32;
    event.index = index;
    event.port = port;
    event.netns = net_namespace(task, &off);
    let n = masked(len, PAYLOAD_CAPACITY as u64 - 1, PAYLOAD_CAPACITY as u64);
    event.len = 0;
    if n > 0 {
        // SAFETY: `n` is below the buffer's length; the helper validates
        // the user address.
        let ret = unsafe { bpf_probe_read_user(event.data.as_mut_ptr().cast(), n as u32, buffer as *const _) };
        if ret == 0 {
            event.len = n as u32;
        }
    }
    let size = core::mem::offset_of!(PayloadEvent, data) as u64 + (event.len as u64 & (PAYLOAD_CAPACITY as u64 - 1));
    // A connection's first bytes can make its process an agent, and the
    // daemon must mark the agent's tree before the agent forks its tools,
    // so these few records wake the daemon at once. A tree already marked
    // has nothing to race, so its records wait for the drain timer. That
    // spares the daemon a wakeup per request of a followed agent.
    // SAFETY: a lookup in this program's map.
    let flags = if unsafe { TRACKED.get(&event.header.pid) }.is_some() { wakeup_flag() } else { BPF_RB_FORCE_WAKEUP };
    output_bytes_with(EventKind::Payload, event_ptr as *const u8, size, flags);
}

#[tracepoint]
pub fn sys_enter_recvfrom(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: offsets 16 and 24 are fd and ubuf in recvfrom's record.
    let (fd, buffer) = unsafe { (ctx.read_at::<u64>(16).unwrap_or(0), ctx.read_at::<u64>(24).unwrap_or(0)) };
    let key = (pid_tgid & 0xffff_ffff_0000_0000) | (fd as u32 as u64);
    // SAFETY: the value is only tested.
    if let Some(watched) = unsafe { WATCHED.get(&key) } {
        if watched.kind == PAYLOAD_DATAGRAM_OUT {
            let _ = RECV_ARGS.insert(&pid_tgid, &[buffer, fd], 0);
        }
    }
    0
}

#[tracepoint]
pub fn sys_exit_recvfrom(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before removal.
    let Some([buffer, fd]) = (unsafe { RECV_ARGS.get(&pid_tgid) }).copied() else {
        return 0;
    };
    let _ = RECV_ARGS.remove(&pid_tgid);
    // SAFETY: offset 16 is `ret` in the syscall exit record.
    let ret = unsafe { ctx.read_at::<i64>(16) }.unwrap_or(-1);
    if ret > 0 {
        let key = (pid_tgid & 0xffff_ffff_0000_0000) | (fd as u32 as u64);
        // SAFETY: the value is copied out at once.
        let connect_id = unsafe { WATCHED.get(&key) }.map_or(0, |w| w.connect_id);
        send_payload(pid_tgid, fd as i32, connect_id, PAYLOAD_DATAGRAM_IN, DNS_PORT, 0, buffer, ret as u64);
    }
    0
}

/// Handles open, openat, openat2, unlink, unlinkat, rename, renameat and
/// renameat2 entries for processes in agent trees.
#[tracepoint]
pub fn sys_enter_file(ctx: TracePointContext) -> u32 {
    try_enter_file(&ctx);
    0
}

fn try_enter_file(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: the value is copied out at once.
    let Some(tracked) = (unsafe { TRACKED.get(&tgid) }).copied() else {
        return;
    };
    let Some(event_ptr) = FILE_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the scratch slot belongs to this CPU for the program's run.
    let event = unsafe { &mut *event_ptr };
    let nr = config().syscalls;
    // SAFETY: offset 8 is __syscall_nr and 16..48 the first arguments in
    // every syscall entry record; which ones are read depends on the call.
    let arg = |offset: usize| unsafe { ctx.read_at::<u64>(offset) }.unwrap_or(0);
    let syscall = arg(8) as u32;
    event.session_id = tracked.session_id;
    event.result = 0;
    event.mode = 0;
    event.flags = 0;
    event.dirfd = AT_FDCWD;
    event.path[0] = 0;
    event.path2[0] = 0;
    let (path, path2) = if syscall == nr.openat {
        event.op = FILE_OP_OPEN;
        event.dirfd = arg(16) as i32;
        event.flags = arg(32) as u32;
        event.mode = arg(40) as u32;
        (arg(24), 0)
    } else if syscall == nr.openat2 {
        event.op = FILE_OP_OPEN;
        event.dirfd = arg(16) as i32;
        let how = arg(32);
        let mut flags: u64 = 0;
        // SAFETY: the helper validates the user address; `open_how` starts
        // with the u64 flags.
        unsafe { bpf_probe_read_user((&mut flags as *mut u64).cast(), 8, how as *const _) };
        event.flags = flags as u32;
        (arg(24), 0)
    } else if syscall == nr.open {
        event.op = FILE_OP_OPEN;
        event.flags = arg(24) as u32;
        event.mode = arg(32) as u32;
        (arg(16), 0)
    } else if syscall == nr.unlinkat {
        event.op = FILE_OP_UNLINK;
        event.dirfd = arg(16) as i32;
        event.flags = arg(32) as u32;
        (arg(24), 0)
    } else if syscall == nr.unlink {
        event.op = FILE_OP_UNLINK;
        (arg(16), 0)
    } else if syscall == nr.renameat || syscall == nr.renameat2 {
        event.op = FILE_OP_RENAME;
        event.dirfd = arg(16) as i32;
        if syscall == nr.renameat2 {
            event.flags = arg(48) as u32;
        }
        (arg(24), arg(40))
    } else if syscall == nr.rename {
        event.op = FILE_OP_RENAME;
        (arg(16), arg(24))
    } else {
        return;
    };
    let off = offsets();
    // SAFETY: the helper has no preconditions.
    let task = unsafe { bpf_get_current_task() };
    event.header = current_header(EventKind::File, task, &off);
    let _ = FILE_PATHS.insert(&pid_tgid, &[path, path2], 0);
    let _ = FILE_ARGS.insert(&pid_tgid, event, 0);
}

/// Handles the exits of the file syscalls: adds the result and sends.
#[tracepoint]
pub fn sys_exit_file(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(event) = FILE_ARGS.get_ptr_mut(&pid_tgid) else {
        return 0;
    };
    // SAFETY: the pointer is a live map value of this program's map.
    let event = unsafe { &mut *event };
    // SAFETY: offset 16 is `ret` in the syscall exit record.
    event.result = unsafe { ctx.read_at::<i64>(16) }.unwrap_or(0) as i32;
    // SAFETY: the value is copied out at once.
    let [path, path2] = unsafe { FILE_PATHS.get(&pid_tgid) }.copied().unwrap_or([0, 0]);
    let mut truncated = false;
    if path != 0 {
        // SAFETY: the helper validates the user address and bounds the copy.
        let n = unsafe { bpf_probe_read_user_str_bytes(path as *const u8, &mut event.path) }.map_or(0, |s| s.len());
        truncated |= n >= PATH_CAPACITY - 1;
    }
    if path2 != 0 {
        // SAFETY: as above.
        let n = unsafe { bpf_probe_read_user_str_bytes(path2 as *const u8, &mut event.path2) }.map_or(0, |s| s.len());
        truncated |= n >= PATH_CAPACITY - 1;
    }
    if truncated {
        event.header.flags |= FILE_FLAG_PATH_TRUNCATED;
    }
    output(EventKind::File, event);
    let _ = FILE_ARGS.remove(&pid_tgid);
    let _ = FILE_PATHS.remove(&pid_tgid);
    0
}

// Socket tracepoints. A syscall tracepoint, once attached, sends every
// syscall of every process on the host through the kernel's slow syscall
// path (about 55 ns more per call on the reference VM), whether or not its
// program cares about that call. The programs below hook the socket layer
// instead and read the arguments of the syscall they fire inside from the
// user registers saved at its entry, so hosts without agents run no
// syscall tracepoint at all. The syscall programs above stay as the
// fallback for kernels where these cannot load.

/// Returns the user registers saved at the current syscall's entry, or 0
/// when the offsets are missing. Work that is not a syscall (io_uring,
/// kernel sockets) has a number the callers do not match.
#[inline(always)]
fn syscall_registers(off: &KernelOffsets) -> u64 {
    if off.regs_ok == 0 {
        return 0;
    }
    // SAFETY: both helpers take the current task, which is always valid.
    unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) as u64 }
}

#[inline(always)]
fn syscall_number(regs: u64, off: &KernelOffsets) -> u32 {
    // u32::MAX, a number no syscall has, when the read fails.
    if regs == 0 {
        return u32::MAX;
    }
    let mut nr: u32 = u32::MAX;
    // SAFETY: the helper checks the kernel address.
    unsafe { bpf_probe_read_kernel((&mut nr as *mut u32).cast(), 4, (regs + off.regs_nr as u64) as *const _) };
    nr
}

#[inline(always)]
fn syscall_arg(regs: u64, off: &KernelOffsets, index: usize) -> u64 {
    let offset = match off.regs_args.get(index) {
        Some(offset) => *offset,
        None => return 0,
    };
    read_kernel(regs, offset)
}

/// `sock_send_length(sk, ret, flags)`: after every send on a socket, in the
/// sender's context. Copies the first writes of watched sockets, the DNS
/// queries, and reports a connected datagram socket's first send.
#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send_length(ctx: RawTracePointContext) -> i32 {
    try_sock_send(&ctx);
    0
}

fn try_sock_send(ctx: &RawTracePointContext) {
    // SAFETY: the tracepoint's arguments are (struct sock *, int, int).
    let (sk, sent) = unsafe {
        let args = ctx.as_ptr() as *const u64;
        (*args, *args.add(1) as i32)
    };
    if sent <= 0 {
        return;
    }
    let off = offsets();
    let pid_tgid = bpf_get_current_pid_tgid();
    let datagram = read_kernel::<u16>(sk, off.sock_type) == SOCK_DGRAM;
    // Most sends on a host are on stream sockets past their first writes
    // and outside `SSL_*` calls. Two lookups end their run before the
    // syscall's registers are read.
    // SAFETY: only the presence of the key is read.
    let watched_stream = !datagram && unsafe { STREAM_SOCKETS.get(&sk) }.is_some();
    let tls_stream = active_tls_call(pid_tgid);
    if !datagram && !watched_stream && tls_stream.is_none() {
        return;
    }
    let regs = syscall_registers(&off);
    let syscall = syscall_number(regs, &off);
    let nr = config().syscalls;
    if syscall != nr.write && syscall != nr.sendto && syscall != nr.sendmsg && syscall != nr.sendmmsg && syscall != nr.writev {
        return;
    }
    let fd = syscall_arg(regs, &off, 0) as i32;
    let arg1 = syscall_arg(regs, &off, 1);
    let arg2 = syscall_arg(regs, &off, 2);
    note_tls_fd(pid_tgid, tls_stream, fd);

    if datagram {
        if syscall == nr.sendto {
            let addr = syscall_arg(regs, &off, 4);
            let addr_len = syscall_arg(regs, &off, 5);
            if addr != 0 && addr_len >= 16 {
                if sendto_dns(pid_tgid, fd, addr, arg1, arg2.min(sent as u64)) {
                    let _ = DNS_SOCKETS.insert(&sk, &1, 0);
                }
                return;
            }
        }
        first_datagram(pid_tgid, sk, fd, &off);
    }
    if !datagram && !watched_stream {
        return;
    }
    let key = (pid_tgid & 0xffff_ffff_0000_0000) | (fd as u32 as u64);
    if WATCHED.get_ptr_mut(&key).is_none() {
        // The watch ended elsewhere, was evicted, or belongs to another
        // process that shares the socket.
        if watched_stream {
            let _ = STREAM_SOCKETS.remove(&sk);
        }
        return;
    }
    let (buffer, len) = if syscall == nr.sendmsg || syscall == nr.sendmmsg {
        first_iovec_of_msghdr(arg1)
    } else if syscall == nr.writev {
        first_iovec(arg1)
    } else {
        (arg1, arg2)
    };
    // Only what the kernel took was sent.
    if !capture_write(pid_tgid, fd, buffer, len.min(sent as u64)) && watched_stream {
        let _ = STREAM_SOCKETS.remove(&sk);
    }
}

/// Reports the first send on a connected datagram socket as its connect,
/// and starts copying it when it is a DNS socket.
fn first_datagram(pid_tgid: u64, sk: u64, fd: i32, off: &KernelOffsets) {
    // Few locals here: this function's stack adds to its caller's, and the
    // verifier caps the sum at 512 bytes.
    let Some((family, destination)) = socket_peer(sk, off) else {
        return;
    };
    if destination[0] == 0 {
        return;
    }
    // SAFETY: the helper has no preconditions.
    let task = unsafe { bpf_get_current_task() };
    let inode: u64 = read_kernel(file_of_fd(task, fd, off), off.file_inode);
    let key = [sk, read_kernel(inode, off.inode_ino)];
    // SAFETY: the value is copied out at once.
    if unsafe { DATAGRAM_SEEN.get(&key) }.copied() == Some(destination) {
        return;
    }
    let _ = DATAGRAM_SEEN.insert(&key, &destination, 0);

    let mut event = ConnectEvent {
        header: current_header(EventKind::Connect, task, off),
        result: 0,
        async_result: 0,
        fd,
        sock_type: SOCK_DGRAM,
        family,
        // SAFETY: the helper has no preconditions.
        connect_id: unsafe { bpf_ktime_get_ns() },
        sockaddr: [0; SOCKADDR_CAPACITY],
        addr_len: 16,
        netns: net_namespace(task, off),
        _pad: 0,
    };
    event.header.flags |= CONNECT_FLAG_FIRST_SEND;
    set_peer(&mut event, &destination);

    if u16::from_be(destination[0] as u16) == DNS_PORT {
        let key = (pid_tgid & 0xffff_ffff_0000_0000) | (fd as u32 as u64);
        let watched = WatchedSocket {
            connect_id: event.connect_id,
            kind: PAYLOAD_DATAGRAM_OUT,
            writes: 0,
            bytes: 0,
            port: DNS_PORT,
            _pad: 0,
        };
        let _ = WATCHED.insert(&key, &watched, 0);
        let _ = DNS_SOCKETS.insert(&sk, &1, 0);
    }
    output(EventKind::Connect, &event);
}

/// Returns the peer a connected IPv4 or IPv6 socket holds: its family and
/// the destination as [port in network order, address words], with the
/// IPv4 address in the first word.
#[inline(always)]
fn socket_peer(sk: u64, off: &KernelOffsets) -> Option<(u16, [u64; 3])> {
    let family: u16 = read_kernel(sk, off.sock_family);
    let mut destination = [read_kernel::<u16>(sk, off.sock_dport) as u64, 0, 0];
    if family == AF_INET {
        destination[1] = read_kernel::<u32>(sk, off.sock_daddr) as u64;
    } else if family == AF_INET6 {
        let halves: [u64; 2] = read_kernel(sk, off.sock_v6_daddr);
        destination[1] = halves[0];
        destination[2] = halves[1];
    } else {
        return None;
    }
    Some((family, destination))
}

/// Writes a peer from [`socket_peer`] into a connect record as the
/// `sockaddr_in` or `sockaddr_in6` a connect call would have passed.
#[inline(always)]
fn set_peer(event: &mut ConnectEvent, destination: &[u64; 3]) {
    event.sockaddr[0..2].copy_from_slice(&event.family.to_ne_bytes());
    event.sockaddr[2..4].copy_from_slice(&(destination[0] as u16).to_ne_bytes());
    if event.family == AF_INET {
        event.sockaddr[4..8].copy_from_slice(&(destination[1] as u32).to_ne_bytes());
        event.addr_len = 16;
    } else {
        event.sockaddr[8..16].copy_from_slice(&destination[1].to_ne_bytes());
        event.sockaddr[16..24].copy_from_slice(&destination[2].to_ne_bytes());
        event.addr_len = 28;
    }
}

/// Returns the `struct file` behind `fd` in the task's table, 0 when the
/// descriptor is out of range.
#[inline(always)]
fn file_of_fd(task: u64, fd: i32, off: &KernelOffsets) -> u64 {
    if fd < 0 {
        return 0;
    }
    let files: u64 = read_kernel(task, off.task_files);
    let fdt: u64 = read_kernel(files, off.files_fdt);
    let max_fds: u32 = read_kernel(fdt, off.fdtable_max_fds);
    if fd as u32 >= max_fds {
        return 0;
    }
    let fd_array: u64 = read_kernel(fdt, off.fdtable_fd);
    read_kernel(fd_array, fd as u32 * 8)
}

/// `sock_recv_length(sk, ret, flags)`: after every receive on a socket.
/// Copies the answers read from DNS sockets.
#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv_length(ctx: RawTracePointContext) -> i32 {
    // SAFETY: the tracepoint's arguments are (struct sock *, int, int).
    let (sk, received) = unsafe {
        let args = ctx.as_ptr() as *const u64;
        (*args, *args.add(1) as i32)
    };
    if received <= 0 {
        return 0;
    }
    // SAFETY: only the presence of the key is read.
    if unsafe { DNS_SOCKETS.get(&sk) }.is_none() {
        return 0;
    }
    let off = offsets();
    let regs = syscall_registers(&off);
    let syscall = syscall_number(regs, &off);
    let nr = config().syscalls;
    if syscall != nr.recvfrom && syscall != nr.read && syscall != nr.recvmsg {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let fd = syscall_arg(regs, &off, 0) as i32;
    let key = (pid_tgid & 0xffff_ffff_0000_0000) | (fd as u32 as u64);
    // SAFETY: the value is copied out at once.
    let Some(watched) = (unsafe { WATCHED.get(&key) }).copied() else {
        return 0;
    };
    if watched.kind != PAYLOAD_DATAGRAM_OUT {
        return 0;
    }
    let arg1 = syscall_arg(regs, &off, 1);
    let (buffer, len) = if syscall == nr.recvmsg { first_iovec_of_msghdr(arg1) } else { (arg1, received as u64) };
    send_payload(pid_tgid, fd, watched.connect_id, PAYLOAD_DATAGRAM_IN, DNS_PORT, 0, buffer, len.min(received as u64));
    0
}

/// `inet_sock_set_state(sk, oldstate, newstate)`: TCP connects seen from
/// the socket's state. CLOSE to SYN_SENT happens inside the connect call,
/// so the saved registers hold its arguments. The end of SYN_SENT is the
/// handshake's outcome, and so a blocking connect's result.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn tcp_state_change(ctx: RawTracePointContext) -> i32 {
    // SAFETY: the tracepoint's arguments are (struct sock *, int, int).
    let (sk, old_state, new_state) = unsafe {
        let args = ctx.as_ptr() as *const u64;
        (*args, *args.add(1) as i32, *args.add(2) as i32)
    };
    if old_state == TCP_CLOSE && new_state == TCP_SYN_SENT {
        connect_started(sk);
    } else if old_state == TCP_SYN_SENT && new_state != TCP_SYN_SENT {
        handshake_ended(sk, new_state);
    }
    0
}

fn connect_started(sk: u64) {
    let off = offsets();
    let regs = syscall_registers(&off);
    let syscall = syscall_number(regs, &off);
    let nr = config().syscalls;
    if syscall != nr.connect {
        // TCP Fast Open (MSG_FASTOPEN) connects inside sendto or sendmsg.
        if syscall == nr.sendto || syscall == nr.sendmsg {
            fast_open_started(sk, regs, &off);
        }
        return;
    }
    connect_call_started(sk, regs, &off);
}

/// Builds the connect record of a connect call from its arguments.
fn connect_call_started(sk: u64, regs: u64, off: &KernelOffsets) {
    let fd = syscall_arg(regs, off, 0) as i32;
    let uaddr = syscall_arg(regs, off, 1);
    let addr_len = syscall_arg(regs, off, 2) as u32;
    let mut event = ConnectEvent {
        // SAFETY: the helper has no preconditions.
        header: current_header(EventKind::Connect, unsafe { bpf_get_current_task() }, off),
        result: 0,
        async_result: 0,
        fd,
        sock_type: SOCK_STREAM,
        family: 0,
        // SAFETY: the helper has no preconditions.
        connect_id: unsafe { bpf_ktime_get_ns() },
        sockaddr: [0; SOCKADDR_CAPACITY],
        addr_len,
        netns: 0,
        _pad: 0,
    };
    // The kernel accepted this sockaddr, so its first 16 bytes (24 for
    // IPv6, the shortest sockaddr_in6 the kernel takes) are readable.
    // SAFETY: the helper validates the user address.
    if unsafe { bpf_probe_read_user(event.sockaddr.as_mut_ptr().cast(), 16, uaddr as *const _) } < 0 {
        return;
    }
    event.family = u16::from_ne_bytes([event.sockaddr[0], event.sockaddr[1]]);
    if event.family == AF_INET6 {
        // SAFETY: as above.
        unsafe { bpf_probe_read_user(event.sockaddr.as_mut_ptr().cast(), 24, uaddr as *const _) };
    }

    connect_recorded(sk, &mut event, off);
}

/// Builds the connect record of a TCP Fast Open connect, whose
/// destination the kernel has already stored in the socket.
fn fast_open_started(sk: u64, regs: u64, off: &KernelOffsets) {
    let Some((family, destination)) = socket_peer(sk, off) else {
        return;
    };
    let mut event = ConnectEvent {
        // SAFETY: the helper has no preconditions.
        header: current_header(EventKind::Connect, unsafe { bpf_get_current_task() }, off),
        result: 0,
        async_result: 0,
        fd: syscall_arg(regs, off, 0) as i32,
        sock_type: SOCK_STREAM,
        family,
        // SAFETY: the helper has no preconditions.
        connect_id: unsafe { bpf_ktime_get_ns() },
        sockaddr: [0; SOCKADDR_CAPACITY],
        addr_len: 16,
        netns: 0,
        _pad: 0,
    };
    set_peer(&mut event, &destination);
    connect_recorded(sk, &mut event, off);
}

/// Watches a new connect's socket and reports it: at once when it does
/// not block, else when its handshake ends or a signal interrupts it.
#[inline(always)]
fn connect_recorded(sk: u64, event: &mut ConnectEvent, off: &KernelOffsets) {
    let fd = event.fd;
    let addr_len = event.addr_len;
    // SAFETY: the helper has no preconditions.
    let task = unsafe { bpf_get_current_task() };
    event.netns = net_namespace(task, off);
    let file_flags: u32 = read_kernel(file_of_fd(task, fd, off), off.file_f_flags);
    let pid_tgid = bpf_get_current_pid_tgid();
    let args = ConnectArgs {
        sock: sk,
        connect_id: event.connect_id,
        fd,
        sock_type: SOCK_STREAM,
        family: event.family,
        addr_len,
        flags: 0,
        sockaddr: event.sockaddr,
        _pad: 0,
    };
    watch_socket(pid_tgid, &args);
    if file_flags & O_NONBLOCK != 0 {
        event.result = -EINPROGRESS;
        event.header.flags |= CONNECT_FLAG_PENDING;
        await_handshake(sk, event);
        output(EventKind::Connect, &*event);
    } else {
        // MAX_SCHEDULE_TIMEOUT (LONG_MAX) unless SO_SNDTIMEO is set.
        let timeout: i64 = read_kernel(sk, off.sock_sndtimeo);
        if timeout > 0 && timeout != i64::MAX {
            // NOTE: the kernel starts its wait in this jiffy or a later
            // one, so a handshake that ends within a jiffy of the deadline
            // may be reported as EINPROGRESS though the connect saw it end.
            // SAFETY: the helper has no preconditions.
            let deadline = unsafe { bpf_jiffies64() } + timeout as u64;
            let _ = BLOCKED_DEADLINES.insert(&sk, &deadline, 0);
        } else {
            let _ = BLOCKED_DEADLINES.remove(&sk);
        }
        let _ = BLOCKED_CONNECTS.insert(&sk, &*event, 0);
        let _ = BLOCKED_THREADS.insert(&pid_tgid, &sk, 0);
    }
}

/// Keeps the caller's identity for the record of the handshake's end.
#[inline(always)]
fn await_handshake(sk: u64, event: &ConnectEvent) {
    let pending = PendingConnect {
        pid: event.header.pid,
        tid: event.header.tid,
        start_time_ns: event.header.start_time_ns,
        connect_id: event.connect_id,
        state: PENDING_AWAITING_HANDSHAKE,
        done: 0,
        result: 0,
        _pad: 0,
    };
    let _ = PENDING_CONNECTS.insert(&sk, &pending, 0);
}

fn handshake_ended(sk: u64, new_state: i32) {
    let result = if new_state == TCP_ESTABLISHED {
        0
    } else {
        let err: i32 = read_kernel(sk, offsets().sock_err);
        // Closed without an error: the caller gave up (closed the socket
        // or exited) before the handshake ended.
        if err > 0 { -err } else { -ECONNABORTED }
    };
    if let Some(blocked) = BLOCKED_CONNECTS.get_ptr_mut(&sk) {
        // SAFETY: a live map value of this program's map.
        let event = unsafe { &mut *blocked };
        // SAFETY: the value is copied out at once.
        let deadline = unsafe { BLOCKED_DEADLINES.get(&sk) }.copied();
        // SAFETY: the helper has no preconditions.
        if deadline.is_some_and(|deadline| unsafe { bpf_jiffies64() } >= deadline) {
            // The send timeout ended the connect with EINPROGRESS before
            // the handshake did, so this is the outcome of that connect.
            event.result = -EINPROGRESS;
            event.async_result = result;
            event.header.flags |= CONNECT_FLAG_ASYNC_DONE;
        } else {
            event.result = result;
        }
        let _ = BLOCKED_DEADLINES.remove(&sk);
        // SAFETY: the helper has no preconditions.
        event.header.time_ns = unsafe { bpf_ktime_get_boot_ns() };
        let thread = ((event.header.pid as u64) << 32) | event.header.tid as u64;
        output(EventKind::Connect, event);
        let _ = BLOCKED_THREADS.remove(&thread);
        let _ = BLOCKED_CONNECTS.remove(&sk);
        return;
    }
    try_sock_state_result(sk, result);
}

/// `signal_deliver(sig, info, ka)`: a handled signal without SA_RESTART
/// makes a blocked connect return EINTR while the handshake goes on.
#[raw_tracepoint(tracepoint = "signal_deliver")]
pub fn signal_deliver(ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out at once.
    let Some(sk) = (unsafe { BLOCKED_THREADS.get(&pid_tgid) }).copied() else {
        return 0;
    };
    let off = offsets();
    let Some(blocked) = BLOCKED_CONNECTS.get_ptr_mut(&sk) else {
        let _ = BLOCKED_THREADS.remove(&pid_tgid);
        return 0;
    };
    // SAFETY: a live map value of this program's map.
    let event = unsafe { &mut *blocked };

    // A connect that SO_SNDTIMEO ended left its entry behind: the signal
    // then interrupts some later syscall of the thread.
    let regs = syscall_registers(&off);
    let syscall = syscall_number(regs, &off);
    let nr = config().syscalls;
    let connecting = syscall == nr.connect || syscall == nr.sendto || syscall == nr.sendmsg;
    if !connecting || syscall_arg(regs, &off, 0) as i32 != event.fd {
        let _ = BLOCKED_THREADS.remove(&pid_tgid);
        return 0;
    }

    // SAFETY: the tracepoint's arguments are (int, struct kernel_siginfo *,
    // struct k_sigaction *).
    let action = unsafe { *(ctx.as_ptr() as *const u64).add(2) };
    let handler: u64 = read_kernel(action, off.sigaction_handler);
    let flags: u64 = read_kernel(action, off.sigaction_flags);
    // With a send timeout the kernel returns EINTR, not ERESTARTSYS, so
    // SA_RESTART does not restart the connect (sock_intr_errno).
    // SAFETY: the value is only tested.
    let restarts = flags & SA_RESTART != 0 && unsafe { BLOCKED_DEADLINES.get(&sk) }.is_none();
    // SIG_DFL here is a fatal signal: the connect never returns.
    if action == 0 || handler == 0 || handler == SIG_IGN || restarts {
        return 0;
    }

    let _ = BLOCKED_THREADS.remove(&pid_tgid);
    let _ = BLOCKED_DEADLINES.remove(&sk);
    event.result = -EINTR;
    event.header.flags |= CONNECT_FLAG_PENDING;
    // SAFETY: the helper has no preconditions.
    event.header.time_ns = unsafe { bpf_ktime_get_boot_ns() };
    await_handshake(sk, event);
    output(EventKind::Connect, event);
    let _ = BLOCKED_CONNECTS.remove(&sk);
    0
}

/// Records which socket an `SSL *` writes to when a write syscall happens
/// inside an `SSL_*` call on this thread. `stream` is that call's `SSL *`,
/// from [`active_tls_call`].
#[inline(always)]
fn note_tls_fd(pid_tgid: u64, stream: Option<u64>, fd: i32) {
    let Some(stream) = stream else {
        return;
    };
    let key = [pid_tgid >> 32, stream];
    // Every send of an `SSL_*` call comes here, and the fd rarely changes,
    // so a write in place replaces most LRU inserts.
    if let Some(known) = TLS_FDS.get_ptr_mut(&key) {
        // SAFETY: a live map value of this program's map.
        unsafe { (*known).fd = fd };
    } else {
        // A new count of writes must not meet a skip made for the old one.
        let _ = TLS_SKIP.remove(&key);
        let _ = TLS_FDS.insert(&key, &TlsStream { fd, writes: 0 }, 0);
    }
}

/// Returns the `SSL *` of the call this thread is inside, if any.
#[inline(always)]
fn active_tls_call(pid_tgid: u64) -> Option<u64> {
    // SAFETY: the value is copied out at once.
    let stream = unsafe { TLS_CALLS.get(&pid_tgid) }.map_or(0, |call| call.stream);
    (stream != 0).then_some(stream)
}

fn tls_enter(ctx: &ProbeContext, length_out_arg: Option<usize>) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let call = TlsCall {
        stream: ctx.arg::<u64>(0).unwrap_or(0),
        buffer: ctx.arg::<u64>(1).unwrap_or(0),
        length_out: length_out_arg.and_then(|n| ctx.arg::<u64>(n)).unwrap_or(0),
    };
    match TLS_CALLS.get_ptr_mut(&pid_tgid) {
        // SAFETY: a live map value of this program's map, written only by
        // this thread.
        Some(slot) => unsafe { *slot = call },
        None => {
            let _ = TLS_CALLS.insert(&pid_tgid, &call, 0);
        }
    }
}

fn tls_exit(ctx: &RetProbeContext, direction: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(slot) = TLS_CALLS.get_ptr_mut(&pid_tgid) else {
        return;
    };
    // SAFETY: a live map value of this program's map, written only by this
    // thread.
    let call = unsafe { *slot };
    if call.stream == 0 {
        return;
    }
    // SAFETY: as above.
    unsafe { (*slot).stream = 0 };
    // Every hooked function returns an `int`: read as 64 bits, -1 is
    // 4294967295, which the non-`_ex` calls would take for a byte count.
    let ret = i64::from(ctx.ret::<i32>());
    let len = if call.length_out != 0 {
        if ret != 1 {
            return;
        }
        let mut done: u64 = 0;
        // SAFETY: the helper validates the user address of the out-parameter.
        unsafe { bpf_probe_read_user((&mut done as *mut u64).cast(), 8, call.length_out as *const _) };
        done
    } else if ret > 0 {
        ret as u64
    } else {
        return;
    };
    let Some(event_ptr) = TLS_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the scratch slot belongs to this CPU for the program's run.
    let event = unsafe { &mut *event_ptr };
    let off = offsets();
    // SAFETY: the helper has no preconditions.
    let task = unsafe { bpf_get_current_task() };
    event.header = current_header(EventKind::Tls, task, &off);
    event.stream = call.stream;
    let key = [pid_tgid >> 32, call.stream];
    (event.fd, event.writes) = match TLS_FDS.get_ptr_mut(&key) {
        Some(stream) => {
            // SAFETY: a live map value of this program's map.
            let stream = unsafe { &mut *stream };
            if direction == TLS_WRITE {
                stream.writes = stream.writes.wrapping_add(1);
            }
            (stream.fd, stream.writes)
        }
        None => (-1, 0),
    };
    event.direction = direction;
    event.total = len as u32;
    event.len = 0;
    event._pad = 0;
    if direction == TLS_READ && event.fd >= 0 {
        // SAFETY: the value is copied out at once.
        if let Some(until) = unsafe { TLS_SKIP.get(&key) }.copied() {
            if until == event.writes {
                event.header.flags |= TLS_FLAG_SKIPPED;
                output_bytes(EventKind::Tls, event_ptr as *const u8, core::mem::offset_of!(TlsEvent, data) as u64);
                return;
            }
            let _ = TLS_SKIP.remove(&key);
        }
    }
    let mut n = masked(len, config().tls_max_bytes as u64, TLS_CAPACITY as u64);
    if len > n {
        event.header.flags |= TLS_FLAG_TRUNCATED;
    }
    // A bulk transfer the daemon cannot skip (another protocol, a memory
    // BIO, the reads before the daemon's request) fills the ring buffer
    // faster than the daemon drains it. Past half of it, calls are sent
    // without plaintext, so the records a reader of the evidence needs
    // keep their room and the daemon still learns each call's length.
    // SAFETY: the map pointer is this program's ring buffer.
    if n > 0 && unsafe { bpf_ringbuf_query(EVENTS_PTR(), BPF_RB_AVAIL_DATA) } > config().tls_yield_bytes as u64 {
        event.header.flags |= TLS_FLAG_YIELDED;
        n = 0;
    }
    if n > 0 {
        // SAFETY: `n` is below the buffer's length; the helper validates
        // the user address.
        if unsafe { bpf_probe_read_user(event.data.as_mut_ptr().cast(), n as u32, call.buffer as *const _) } == 0 {
            event.len = n as u32;
        }
    }
    let size = core::mem::offset_of!(TlsEvent, data) as u64 + (event.len as u64 & (TLS_CAPACITY as u64 - 1));
    output_bytes(EventKind::Tls, event_ptr as *const u8, size);
}

/// `SSL_write(ssl, buf, num)` and `SSL_read(ssl, buf, num)`.
#[uprobe]
pub fn ssl_call_enter(ctx: ProbeContext) -> u32 {
    tls_enter(&ctx, None);
    0
}

/// `SSL_write_ex(ssl, buf, num, written)` and `SSL_read_ex(ssl, buf, num, readbytes)`.
#[uprobe]
pub fn ssl_call_ex_enter(ctx: ProbeContext) -> u32 {
    tls_enter(&ctx, Some(3));
    0
}

#[uretprobe]
pub fn ssl_write_exit(ctx: RetProbeContext) -> u32 {
    tls_exit(&ctx, TLS_WRITE);
    0
}

#[uretprobe]
pub fn ssl_read_exit(ctx: RetProbeContext) -> u32 {
    tls_exit(&ctx, TLS_READ);
    0
}

/// Any panic path left in the program is an unbounded loop, which the
/// verifier rejects, so a reachable panic fails the load instead of running.
#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
