//! The Linux capabilities the sensor runs with, read from the `CapEff` line
//! of `/proc/self/status`.
//!
//! The kernel reports a missing capability as a bare EPERM, which says
//! nothing about what to grant. This module names the capability instead:
//! at start it reports the capabilities that are absent and what each
//! absence costs, and it turns an EPERM from a BPF load, an attach or a
//! mount into a message that names the capability the call needed.
//!
//! The set a deployment grants, and why each member is in it, is listed in
//! `deploy/README.md`: CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE. Kernels
//! before 5.8 have no CAP_BPF or CAP_PERFMON and check CAP_SYS_ADMIN
//! instead, which also satisfies both checks here.

use std::{error::Error, fmt, io, path::Path, sync::OnceLock};

use super::Degraded;

/// One capability: its number in `include/uapi/linux/capability.h` and its
/// name as `capsh` and the manifests spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    pub number: u32,
    pub name: &'static str,
}

pub const CAP_DAC_OVERRIDE: Capability = Capability { number: 1, name: "CAP_DAC_OVERRIDE" };
pub const CAP_DAC_READ_SEARCH: Capability = Capability { number: 2, name: "CAP_DAC_READ_SEARCH" };
pub const CAP_SYS_PTRACE: Capability = Capability { number: 19, name: "CAP_SYS_PTRACE" };
pub const CAP_SYS_ADMIN: Capability = Capability { number: 21, name: "CAP_SYS_ADMIN" };
pub const CAP_PERFMON: Capability = Capability { number: 38, name: "CAP_PERFMON" };
pub const CAP_BPF: Capability = Capability { number: 39, name: "CAP_BPF" };

/// Capabilities the sensor uses, in the order they are reported.
const KNOWN: &[Capability] = &[CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH, CAP_SYS_ADMIN];

/// A capability bit mask, such as the effective set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapSet(pub u64);

impl CapSet {
    /// Parses the `CapEff:` line of a `/proc/PID/status` text.
    pub fn parse_effective(status: &str) -> Option<CapSet> {
        let hex = status.lines().find_map(|line| line.strip_prefix("CapEff:"))?.trim();
        u64::from_str_radix(hex, 16).ok().map(CapSet)
    }

    pub fn has(self, capability: Capability) -> bool {
        self.0 & (1u64 << capability.number) != 0
    }

    /// Checks the kernel's `bpf_capable()` rule: CAP_BPF, or CAP_SYS_ADMIN on kernels
    /// before 5.8 and as a superset on later ones.
    pub fn bpf_capable(self) -> bool {
        self.has(CAP_BPF) || self.has(CAP_SYS_ADMIN)
    }

    /// Checks the kernel's `perfmon_capable()` rule, with the same CAP_SYS_ADMIN rule.
    pub fn perfmon_capable(self) -> bool {
        self.has(CAP_PERFMON) || self.has(CAP_SYS_ADMIN)
    }
}

impl fmt::Display for CapSet {
    /// Lists the capabilities of [`KNOWN`] that the set contains.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = KNOWN.iter().filter(|c| self.has(**c)).map(|c| c.name).collect();
        if names.is_empty() {
            write!(f, "none of {}", KNOWN.iter().map(|c| c.name).collect::<Vec<_>>().join(", "))
        } else {
            write!(f, "{}", names.join(", "))
        }
    }
}

/// Returns the daemon's effective set, read once: capabilities do not grow while
/// it runs. `None` when `/proc/self/status` is unreadable or has no
/// `CapEff` line, in which case no capability is blamed.
pub fn effective() -> Option<CapSet> {
    static EFFECTIVE: OnceLock<Option<CapSet>> = OnceLock::new();
    *EFFECTIVE.get_or_init(|| read_effective(Path::new("/proc/self/status")))
}

fn read_effective(status_path: &Path) -> Option<CapSet> {
    match std::fs::read_to_string(status_path) {
        Ok(text) => CapSet::parse_effective(&text),
        Err(error) => {
            log::warn!("cannot read {}: {error}; missing capabilities will not be named", status_path.display());
            None
        }
    }
}

/// Lists the capabilities absent from `effective` that cost visibility without
/// stopping the sensor, each as a `sensor.degraded` entry. CAP_BPF and
/// CAP_PERFMON are left out: without them the load fails and
/// [`missing_for_bpf`] names them in the error.
pub fn start_report(effective: CapSet) -> Vec<Degraded> {
    let mut degraded = Vec::new();
    if !effective.has(CAP_SYS_PTRACE) && !effective.has(CAP_SYS_ADMIN) {
        degraded.push(Degraded {
            hook: format!("capability.{}", CAP_SYS_PTRACE.name),
            reason: format!(
                "{} is not in the effective set, so /proc/PID/exe, environ, fd and root of processes owned by \
                 other users cannot be read: their exe and exe_sha256 may be unknown, TLS libraries inside \
                 their mount namespaces are not hooked and OTLP senders are not matched to a pid; grant {}",
                CAP_SYS_PTRACE.name, CAP_SYS_PTRACE.name
            ),
        });
    }
    degraded
}

/// Names the capability a BPF map creation or program load lacks, for an
/// error that came back EPERM. `None` when both are present or the set is
/// unknown, because then the EPERM has another cause (a LSM policy, or
/// `kernel.unprivileged_bpf_disabled` in a user namespace).
pub fn missing_for_bpf(effective: Option<CapSet>) -> Option<String> {
    let effective = effective?;
    let missing: Vec<&str> = [
        (!effective.bpf_capable()).then_some(CAP_BPF.name),
        (!effective.perfmon_capable()).then_some(CAP_PERFMON.name),
    ]
    .into_iter()
    .flatten()
    .collect();
    if missing.is_empty() {
        return None;
    }
    Some(format!(
        "missing capability {}: the kernel needs CAP_BPF to create BPF maps and load programs, and CAP_PERFMON \
         to load and attach tracing programs; grant both (effective now: {effective})",
        missing.join(" and ")
    ))
}

/// Returns the capability hint for a failed mount of tracefs or bpffs,
/// empty unless the mount failed with EPERM for lack of CAP_SYS_ADMIN.
pub fn mount_hint(error: &(dyn Error + 'static), path: &Path) -> String {
    let lacks_admin = effective().is_some_and(|set| !set.has(CAP_SYS_ADMIN));
    if !is_permission_error(error) || !lacks_admin {
        return String::new();
    }
    format!(
        " (mounting needs {}, which is deliberately not granted: mount it on the host, or bind-mount the \
         host's {} into the container)",
        CAP_SYS_ADMIN.name,
        path.display()
    )
}

/// Returns the capability hint for a `/proc/PID/...` file that could not be
/// opened, empty unless the denial comes from a missing CAP_SYS_PTRACE.
pub fn proc_denied_hint(error: &io::Error) -> String {
    let denied = matches!(error.raw_os_error(), Some(libc::EACCES | libc::EPERM));
    let lacks_ptrace = effective().is_some_and(|set| !set.has(CAP_SYS_PTRACE) && !set.has(CAP_SYS_ADMIN));
    if denied && lacks_ptrace {
        format!(" (another user's process: reading it needs {})", CAP_SYS_PTRACE.name)
    } else {
        String::new()
    }
}

/// Returns the capability hint for a tracefs file a non-root sensor could
/// not read, empty when the reason lies elsewhere. tracefs is mode 0700 and
/// owned by root, so another uid needs CAP_DAC_READ_SEARCH to read it; aya
/// then reports the attach failure as "tracefs not found".
pub fn tracefs_hint(reason: &str) -> String {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let can_search = effective().is_none_or(|set| set.has(CAP_DAC_READ_SEARCH) || set.has(CAP_DAC_OVERRIDE));
    let unreadable = reason.contains("tracefs not found") || reason.contains("Permission denied");
    if root || can_search || !unreadable {
        return String::new();
    }
    format!(" (tracefs is readable by root only: a sensor running as another user needs {})", CAP_DAC_READ_SEARCH.name)
}

/// Checks whether any error in the chain is an EPERM or EACCES from the
/// kernel.
pub fn is_permission_error(error: &(dyn Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(cause) = current {
        if let Some(io_error) = cause.downcast_ref::<io::Error>()
            && matches!(io_error.raw_os_error(), Some(libc::EPERM | libc::EACCES))
        {
            return true;
        }
        current = cause.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tagent-sensor\nCapInh:\t0000000000000000\nCapPrm:\t000000c000080000\n\
                          CapEff:\t000000c000080000\nCapBnd:\t000000c000080000\n";

    #[test]
    fn effective_set_parsed() {
        let set = CapSet::parse_effective(STATUS).unwrap();
        assert!(set.has(CAP_BPF));
        assert!(set.has(CAP_PERFMON));
        assert!(set.has(CAP_SYS_PTRACE));
        assert!(!set.has(CAP_SYS_ADMIN));
        assert_eq!(set.to_string(), "CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE");
    }

    #[test]
    fn garbage_status_gives_none() {
        assert_eq!(CapSet::parse_effective("CapEff:\tzz\n"), None);
        assert_eq!(CapSet::parse_effective(""), None);
    }

    #[test]
    fn missing_perfmon_named() {
        let set = CapSet((1 << CAP_BPF.number) | (1 << CAP_SYS_PTRACE.number));
        let message = missing_for_bpf(Some(set)).unwrap();
        assert!(message.starts_with("missing capability CAP_PERFMON:"), "{message}");
        assert!(!message.contains("CAP_BPF and"), "{message}");
    }

    #[test]
    fn sys_admin_satisfies_bpf_checks() {
        let set = CapSet(1 << CAP_SYS_ADMIN.number);
        assert_eq!(missing_for_bpf(Some(set)), None);
        assert!(start_report(set).is_empty());
    }

    #[test]
    fn unknown_set_blames_nothing() {
        assert_eq!(missing_for_bpf(None), None);
    }

    #[test]
    fn missing_ptrace_degrades() {
        let set = CapSet((1 << CAP_BPF.number) | (1 << CAP_PERFMON.number));
        let degraded = start_report(set);
        assert_eq!(degraded.len(), 1);
        assert_eq!(degraded[0].hook, "capability.CAP_SYS_PTRACE");
    }

    #[test]
    fn permission_error_found_in_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] io::Error);
        assert!(is_permission_error(&Outer(io::Error::from_raw_os_error(libc::EPERM))));
        assert!(!is_permission_error(&Outer(io::Error::from_raw_os_error(libc::ENOENT))));
    }
}
