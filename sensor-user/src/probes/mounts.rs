//! Mounts tracefs and bpffs when the host has not.
//!
//! Tracepoint attachment looks up event ids under tracefs, and many minimal
//! hosts and VMs boot without it mounted.

use std::{ffi::CString, io, path::Path};

const TRACEFS_MAGIC: i64 = 0x7472_6163;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
#[error("mounting {fs_type} at {path} failed")]
pub struct MountError {
    fs_type: &'static str,
    path: String,
    #[source]
    source: io::Error,
}

/// Mounts tracefs at `path` unless a tracefs is there; returns a note when
/// it mounted one.
pub fn ensure_tracefs(path: &Path) -> Result<Option<String>, MountError> {
    ensure(path, "tracefs", TRACEFS_MAGIC)
}

/// Mounts bpffs at `path` unless a bpffs is there.
pub fn ensure_bpffs(path: &Path) -> Result<Option<String>, MountError> {
    ensure(path, "bpf", BPF_FS_MAGIC)
}

fn ensure(path: &Path, fs_type: &'static str, magic: i64) -> Result<Option<String>, MountError> {
    if fs_magic(path) == Some(magic) {
        return Ok(None);
    }
    let error = |source| MountError { fs_type, path: path.display().to_string(), source };
    std::fs::create_dir_all(path).map_err(error)?;
    let target = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| error(e.into()))?;
    let kind = CString::new(fs_type).map_err(|e| error(e.into()))?;
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the
    // call; a null data argument is allowed for these file systems.
    let ret = unsafe { libc::mount(kind.as_ptr(), target.as_ptr(), kind.as_ptr(), 0, std::ptr::null()) };
    if ret != 0 {
        return Err(error(io::Error::last_os_error()));
    }
    let note = format!("{fs_type} at {}", path.display());
    log::info!("mounted {note}, which was not mounted");
    Ok(Some(note))
}

fn fs_magic(path: &Path) -> Option<i64> {
    let target = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statfs fills the zeroed struct passed by pointer.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `target` is a valid C string and `stat` a valid out pointer.
    let ret = unsafe { libc::statfs(target.as_ptr(), &mut stat) };
    (ret == 0).then_some(stat.f_type as i64)
}
