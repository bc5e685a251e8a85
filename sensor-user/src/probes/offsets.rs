//! Resolves the kernel struct offsets the programs read, from BTF.
//!
//! Offsets are grouped by the capability they serve. A group that cannot be
//! resolved is switched off in the programs and reported as degraded, except
//! the task group, without which no record can name its process.

use sensor_common::KernelOffsets;

use super::btf::{Btf, BtfError};

/// A capability whose offsets could not be resolved, with the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct MissingGroup {
    pub capability: &'static str,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
#[error("required kernel struct offsets are missing from BTF: {0}")]
pub struct TaskOffsetsMissing(#[source] pub BtfError);

/// Resolves every group; returns the offsets and the groups left off.
pub fn resolve(btf: &Btf) -> Result<(KernelOffsets, Vec<MissingGroup>), TaskOffsetsMissing> {
    let mut offsets = KernelOffsets::default();
    let mut missing = Vec::new();

    resolve_task(btf, &mut offsets).map_err(TaskOffsetsMissing)?;
    offsets.task_ok = 1;

    let groups: [(&'static str, fn(&Btf, &mut KernelOffsets) -> Result<(), BtfError>, fn(&mut KernelOffsets)); 4] = [
        ("exec.argv_and_exe", resolve_mm, |o| o.mm_ok = 1),
        ("exec.exe_path", resolve_path_walk, |o| o.path_ok = 1),
        ("process.pid_namespace", resolve_pidns, |o| o.pidns_ok = 1),
        ("net.socket_type", resolve_socket, |o| o.socket_ok = 1),
    ];
    for (capability, resolve_group, enable) in groups {
        match resolve_group(btf, &mut offsets) {
            Ok(()) => enable(&mut offsets),
            Err(error) => missing.push(MissingGroup { capability, reason: error.to_string() }),
        }
    }
    // Optional: without it the daemon opens each new executable to learn
    // its version, which costs time but loses nothing.
    if offsets.mm_ok == 1 {
        match resolve_exe_meta(btf, &mut offsets) {
            Ok(()) => offsets.exe_meta_ok = 1,
            Err(error) => missing.push(MissingGroup { capability: "exec.exe_version", reason: error.to_string() }),
        }
    }
    // Optional: without it tool spawns carry no trace context.
    if offsets.mm_ok == 1 {
        match resolve_env(btf, &mut offsets) {
            Ok(()) => offsets.mm_env_ok = 1,
            Err(error) => missing.push(MissingGroup { capability: "exec.trace_context", reason: error.to_string() }),
        }
    }
    match resolve_netns(btf, &mut offsets) {
        Ok(()) => offsets.netns_ok = 1,
        Err(error) => missing.push(MissingGroup { capability: "net.namespace", reason: error.to_string() }),
    }
    // Optional: without it the daemon hooks the socket syscalls instead.
    if offsets.socket_ok == 1 {
        match resolve_syscall_registers(btf, &mut offsets) {
            Ok(()) => offsets.regs_ok = 1,
            Err(error) => missing.push(MissingGroup { capability: "net.socket_tracepoints", reason: error.to_string() }),
        }
    }
    Ok((offsets, missing))
}

/// Resolves where the registers saved at syscall entry keep the syscall
/// number and arguments (x86-64: `orig_ax` and di, si, dx, r10, r8, r9; arm64:
/// `syscallno` and x0 to x5), plus the socket, file and signal fields the
/// socket tracepoint programs read.
fn resolve_syscall_registers(btf: &Btf, o: &mut KernelOffsets) -> Result<(), BtfError> {
    match btf.member_offset("pt_regs", "orig_ax") {
        Ok(nr) => {
            o.regs_nr = nr;
            for (slot, name) in o.regs_args.iter_mut().zip(["di", "si", "dx", "r10", "r8", "r9"]) {
                *slot = btf.member_offset("pt_regs", name)?;
            }
        }
        Err(x86_error) => {
            o.regs_nr = btf.member_offset("pt_regs", "syscallno").map_err(|_| x86_error)?;
            let base = btf.member_offset("pt_regs", "regs")?;
            for (index, slot) in o.regs_args.iter_mut().enumerate() {
                *slot = base + 8 * index as u32;
            }
        }
    }
    o.file_f_flags = btf.member_offset("file", "f_flags")?;
    o.sock_family = btf.member_offset("sock", "__sk_common.skc_family")?;
    o.sock_dport = btf.member_offset("sock", "__sk_common.skc_dport")?;
    o.sock_daddr = btf.member_offset("sock", "__sk_common.skc_daddr")?;
    o.sock_v6_daddr = btf.member_offset("sock", "__sk_common.skc_v6_daddr")?;
    o.sock_type = btf.member_offset("sock", "sk_type")?;
    o.sock_sndtimeo = btf.member_offset("sock", "sk_sndtimeo")?;
    o.sigaction_handler = btf.member_offset("k_sigaction", "sa.sa_handler")?;
    o.sigaction_flags = btf.member_offset("k_sigaction", "sa.sa_flags")?;
    Ok(())
}

fn resolve_netns(btf: &Btf, o: &mut KernelOffsets) -> Result<(), BtfError> {
    o.task_nsproxy = btf.member_offset("task_struct", "nsproxy")?;
    o.nsproxy_net_ns = btf.member_offset("nsproxy", "net_ns")?;
    o.net_ns_inum = btf.member_offset("net", "ns.inum")?;
    Ok(())
}

fn resolve_task(btf: &Btf, o: &mut KernelOffsets) -> Result<(), BtfError> {
    o.task_pid = btf.member_offset("task_struct", "pid")?;
    o.task_tgid = btf.member_offset("task_struct", "tgid")?;
    o.task_real_parent = btf.member_offset("task_struct", "real_parent")?;
    o.task_group_leader = btf.member_offset("task_struct", "group_leader")?;
    o.task_start_boottime = btf.member_offset("task_struct", "start_boottime")?;
    o.task_mm = btf.member_offset("task_struct", "mm")?;
    o.task_exit_code = btf.member_offset("task_struct", "exit_code")?;
    Ok(())
}

fn resolve_mm(btf: &Btf, o: &mut KernelOffsets) -> Result<(), BtfError> {
    o.mm_arg_start = btf.member_offset("mm_struct", "arg_start")?;
    o.mm_arg_end = btf.member_offset("mm_struct", "arg_end")?;
    o.mm_exe_file = btf.member_offset("mm_struct", "exe_file")?;
    o.file_inode = btf.member_offset("file", "f_inode")?;
    o.file_dentry = btf.member_offset("file", "f_path.dentry")?;
    o.dentry_name = btf.member_offset("dentry", "d_name.name")?;
    o.inode_ino = btf.member_offset("inode", "i_ino")?;
    o.inode_sb = btf.member_offset("inode", "i_sb")?;
    o.inode_nlink = btf.member_offset("inode", "__i_nlink")?;
    o.sb_dev = btf.member_offset("super_block", "s_dev")?;
    Ok(())
}

fn resolve_env(btf: &Btf, o: &mut KernelOffsets) -> Result<(), BtfError> {
    o.mm_env_start = btf.member_offset("mm_struct", "env_start")?;
    o.mm_env_end = btf.member_offset("mm_struct", "env_end")?;
    Ok(())
}

/// The inode's size and modification time. Linux 6.11 split the time into
/// `i_mtime_sec` and `i_mtime_nsec`; 6.6 to 6.10 call the timespec
/// `__i_mtime`, older kernels `i_mtime`.
fn resolve_exe_meta(btf: &Btf, o: &mut KernelOffsets) -> Result<(), BtfError> {
    o.inode_size = btf.member_offset("inode", "i_size")?;
    let split = btf.member_offset("inode", "i_mtime_sec").and_then(|sec| Ok((sec, btf.member_offset("inode", "i_mtime_nsec")?)));
    let (sec, nsec) = match split {
        Ok(pair) => pair,
        Err(first) => ["__i_mtime", "i_mtime"]
            .iter()
            .find_map(|name| {
                let sec = btf.member_offset("inode", &format!("{name}.tv_sec")).ok()?;
                let nsec = btf.member_offset("inode", &format!("{name}.tv_nsec")).ok()?;
                Some((sec, nsec))
            })
            .ok_or(first)?,
    };
    o.inode_mtime_sec = sec;
    o.inode_mtime_nsec = nsec;
    Ok(())
}

fn resolve_path_walk(btf: &Btf, o: &mut KernelOffsets) -> Result<(), BtfError> {
    o.file_vfsmount = btf.member_offset("file", "f_path.mnt")?;
    o.vfsmount_root = btf.member_offset("vfsmount", "mnt_root")?;
    o.mount_mnt = btf.member_offset("mount", "mnt")?;
    o.mount_parent = btf.member_offset("mount", "mnt_parent")?;
    o.mount_mountpoint = btf.member_offset("mount", "mnt_mountpoint")?;
    o.dentry_parent = btf.member_offset("dentry", "d_parent")?;
    Ok(())
}

fn resolve_pidns(btf: &Btf, o: &mut KernelOffsets) -> Result<(), BtfError> {
    o.task_thread_pid = btf.member_offset("task_struct", "thread_pid")?;
    o.pid_level = btf.member_offset("pid", "level")?;
    o.pid_numbers = btf.member_offset("pid", "numbers")?;
    o.upid_size = btf.struct_size("upid")?;
    o.upid_nr = btf.member_offset("upid", "nr")?;
    o.upid_ns = btf.member_offset("upid", "ns")?;
    o.pidns_inum = btf.member_offset("pid_namespace", "ns.inum")?;
    Ok(())
}

fn resolve_socket(btf: &Btf, o: &mut KernelOffsets) -> Result<(), BtfError> {
    o.task_files = btf.member_offset("task_struct", "files")?;
    o.files_fdt = btf.member_offset("files_struct", "fdt")?;
    o.fdtable_max_fds = btf.member_offset("fdtable", "max_fds")?;
    o.fdtable_fd = btf.member_offset("fdtable", "fd")?;
    o.file_private_data = btf.member_offset("file", "private_data")?;
    o.socket_type = btf.member_offset("socket", "type")?;
    o.socket_sk = btf.member_offset("socket", "sk")?;
    o.sock_err = btf.member_offset("sock", "sk_err")?;
    Ok(())
}

/// Finds a field's offset in a tracepoint's `format` file, `None` when the
/// field is absent (older kernels lack `group_dead` in `sched_process_exit`).
pub fn tracepoint_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';');
        let declaration = parts.next()?.trim().strip_prefix("field:")?;
        let name = declaration.split_whitespace().last()?;
        if name.trim_start_matches('*') != field {
            return None;
        }
        parts.find_map(|part| part.trim().strip_prefix("offset:")?.parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracepoint_format_offset() {
        let format = "name: sched_process_exit\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;\n";
        assert_eq!(tracepoint_field_offset(format, "group_dead"), Some(32));
        assert_eq!(tracepoint_field_offset(format, "prio"), None);
    }

    #[test]
    fn live_kernel_offsets_resolve() {
        let path = std::path::Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            eprintln!("skipped: {} is absent, so this kernel has no BTF", path.display());
            return;
        }
        let btf = Btf::from_file(path).unwrap();
        let (offsets, missing) = resolve(&btf).unwrap();
        assert_eq!(missing, vec![], "every capability resolves on a BTF kernel");
        assert!(offsets.task_tgid > 0 && offsets.task_start_boottime > 0);
        assert_eq!(offsets.upid_size, 16);
    }
}
