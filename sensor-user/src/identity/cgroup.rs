//! Parses a cgroup v2 path into the container, pod and systemd unit it
//! names.
//!
//! Runtimes and kubelets name cgroups in a handful of ways, and the parser
//! recognises each one by the shape of a single path component:
//!
//! | who | systemd driver | cgroupfs driver |
//! |---|---|---|
//! | containerd (CRI) | `cri-containerd-ID.scope` | `ID` under a pod |
//! | CRI-O | `crio-ID.scope` (`crio-conmon-ID.scope` for its monitor) | `crio-ID` |
//! | Docker | `docker-ID.scope` | `/docker/ID` |
//! | Podman | `libpod-ID.scope` (`libpod-conmon-ID.scope`) | `/libpod_parent/libpod-ID` |
//! | kubelet pods | `kubepods[-QOS]-podUID.slice` | `/kubepods[/QOS]/podUID` |
//!
//! A kubelet whose systemd driver is configured but whose runtime is not
//! leaves the runtime's `SLICE:PREFIX:ID` cgroup name as one literal
//! component, which is recognised too. Layouts nest (a kind node is a
//! Docker container whose kubelet runs pods inside it), so the innermost
//! container wins and the pod is the one that encloses it.
//!
//! Container ids are 64 lowercase hex digits. Pod UIDs are RFC 4122 UUIDs,
//! written with `_` for `-` in systemd slice names. A static pod's UID is
//! the 32 hex digits of its config hash.

use std::fmt;

use serde::Serialize;

/// The container runtime a cgroup or bundle belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Containerd,
    #[serde(rename = "cri-o")]
    CriO,
    Docker,
    Podman,
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
        })
    }
}

/// A container named by a cgroup path component.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerRef {
    /// `None` for a bare id under a cgroupfs-driver pod, which containerd
    /// and Docker both use; the runtime's metadata settles it.
    pub runtime: Option<Runtime>,
    pub id: String,
}

/// The kubelet's quality-of-service class, from the pod's parent cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// The workload facts a cgroup path encodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupFacts {
    /// The innermost container.
    pub container: Option<ContainerRef>,
    /// The container that encloses `container`, for nested layouts such as
    /// a kind node.
    pub outer_container: Option<ContainerRef>,
    /// A runtime's monitor process (conmon) for this container: it runs on
    /// the host beside the container, not inside it.
    pub monitor_of: Option<ContainerRef>,
    /// The UID of the pod enclosing `container`, with dashes.
    pub pod_uid: Option<String>,
    pub qos: Option<QosClass>,
    /// The innermost systemd unit (`.service` or `.scope`) outside any
    /// container.
    pub unit: Option<String>,
    /// The innermost systemd slice outside any container.
    pub slice: Option<String>,
    /// The unit inside a user's service manager (`user@UID.service`).
    pub user_unit: Option<String>,
    /// The uid that owns `user-UID.slice` or `user@UID.service`.
    pub owner_uid: Option<u32>,
    /// The login session id from `session-ID.scope`.
    pub session: Option<String>,
}

impl CgroupFacts {
    /// True when the path places the process inside a container or pod.
    pub fn is_container(&self) -> bool {
        self.container.is_some() || self.pod_uid.is_some()
    }
}

/// Parses a cgroup v2 path such as `/system.slice/docker-ID.scope`, as it
/// appears in `/proc/PID/cgroup` or relative to the cgroup2 mount.
pub fn parse_cgroup_path(path: &str) -> CgroupFacts {
    let mut facts = CgroupFacts::default();
    // Set once a container component is seen: later components are the
    // container's own sub-cgroups, and earlier systemd units belong to the
    // host, so they are kept only for host processes.
    let mut host_unit: Option<String> = None;
    let mut host_slice: Option<String> = None;
    let mut in_user_manager = false;
    let mut after_docker_dir = false;
    let mut after_libpod_parent = false;
    let mut in_kubepods = false;

    for component in path.split('/').filter(|c| !c.is_empty()) {
        // `SLICE:PREFIX:ID`, a systemd-style name taken literally.
        if let Some((slice, prefix, id)) = split_systemd_triple(component) {
            if let Some(uid) = pod_uid_from_slice(slice) {
                facts.pod_uid = Some(uid);
                in_kubepods = true;
            }
            if let Some(runtime) = runtime_from_prefix(prefix).filter(|_| is_container_id(id)) {
                set_container(&mut facts, ContainerRef { runtime: Some(runtime), id: id.to_owned() });
                continue;
            }
        }

        if let Some(monitored) = parse_monitor(component) {
            facts.monitor_of = Some(monitored);
            host_unit = Some(component.to_owned());
            continue;
        }
        if let Some(container) = parse_container_component(component) {
            set_container(&mut facts, container);
            after_docker_dir = false;
            after_libpod_parent = false;
            continue;
        }
        if is_container_id(component) {
            // A bare id: Docker's cgroupfs layout, Podman's, or a
            // cgroupfs-driver pod's container.
            let runtime = if after_docker_dir {
                Some(Runtime::Docker)
            } else if after_libpod_parent {
                Some(Runtime::Podman)
            } else {
                None
            };
            if runtime.is_some() || facts.pod_uid.is_some() {
                set_container(&mut facts, ContainerRef { runtime, id: component.to_owned() });
                after_docker_dir = false;
                continue;
            }
        }
        after_docker_dir = component == "docker";
        after_libpod_parent = component == "libpod_parent";

        if facts.container.is_some() {
            // A sub-cgroup inside a container, or a nested kubelet's tree.
            if component.starts_with("kubepods") || component.contains("-kubepods") {
                in_kubepods = true;
            }
            if !in_kubepods {
                continue;
            }
        }

        // Kubelet pod hierarchy.
        if component == "kubepods" || component == "kubepods.slice" || component.ends_with("-kubepods.slice") {
            in_kubepods = true;
            facts.qos = Some(QosClass::Guaranteed);
            continue;
        }
        if in_kubepods {
            if let Some(qos) = qos_from_component(component) {
                facts.qos = Some(qos);
            }
            if let Some(uid) = pod_uid_from_slice(component).or_else(|| pod_uid_from_dir(component)) {
                facts.pod_uid = Some(uid);
                continue;
            }
            if qos_from_component(component).is_some() {
                continue;
            }
        }

        // systemd units and slices, host side only.
        if facts.container.is_some() {
            continue;
        }
        if let Some(uid) = component.strip_prefix("user@").and_then(|rest| rest.strip_suffix(".service")) {
            facts.owner_uid = uid.parse().ok();
            host_unit = Some(component.to_owned());
            in_user_manager = true;
            continue;
        }
        if in_user_manager {
            if is_unit(component) {
                facts.user_unit = Some(component.to_owned());
            }
            continue;
        }
        if let Some(uid) = component.strip_prefix("user-").and_then(|rest| rest.strip_suffix(".slice")) {
            facts.owner_uid = uid.parse().ok();
        }
        if let Some(session) = component.strip_prefix("session-").and_then(|rest| rest.strip_suffix(".scope")) {
            facts.session = Some(session.to_owned());
        }
        if component.ends_with(".slice") {
            host_slice = Some(component.to_owned());
        } else if is_unit(component) {
            host_unit = Some(component.to_owned());
        }
    }

    if facts.container.is_none() {
        facts.unit = host_unit;
        facts.slice = host_slice;
    }
    facts
}

fn set_container(facts: &mut CgroupFacts, container: ContainerRef) {
    if let Some(previous) = facts.container.take() {
        // The enclosing container's pod, if any, does not enclose this one
        // unless the nested tree names a pod again.
        facts.outer_container = Some(previous);
    }
    facts.container = Some(container);
}

fn is_unit(component: &str) -> bool {
    component.ends_with(".service") || component.ends_with(".scope")
}

/// True for a 64-digit lowercase hex container id.
pub fn is_container_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn runtime_from_prefix(prefix: &str) -> Option<Runtime> {
    match prefix {
        "cri-containerd" => Some(Runtime::Containerd),
        "crio" => Some(Runtime::CriO),
        "docker" => Some(Runtime::Docker),
        "libpod" => Some(Runtime::Podman),
        _ => None,
    }
}

/// `PREFIX-ID.scope` or `PREFIX-ID` for a known runtime prefix.
fn parse_container_component(component: &str) -> Option<ContainerRef> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    let (prefix, id) = name.rsplit_once('-')?;
    let runtime = runtime_from_prefix(prefix)?;
    is_container_id(id).then(|| ContainerRef { runtime: Some(runtime), id: id.to_owned() })
}

/// `crio-conmon-ID.scope` and `libpod-conmon-ID.scope`: the monitor process
/// of a container, which lives on the host.
fn parse_monitor(component: &str) -> Option<ContainerRef> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    let (runtime, id) = if let Some(id) = name.strip_prefix("crio-conmon-") {
        (Runtime::CriO, id)
    } else if let Some(id) = name.strip_prefix("libpod-conmon-") {
        (Runtime::Podman, id)
    } else {
        return None;
    };
    is_container_id(id).then(|| ContainerRef { runtime: Some(runtime), id: id.to_owned() })
}

/// Splits `SLICE:PREFIX:ID`, the systemd cgroup name runtimes are given.
fn split_systemd_triple(component: &str) -> Option<(&str, &str, &str)> {
    let mut parts = component.splitn(3, ':');
    let slice = parts.next()?;
    let prefix = parts.next()?;
    let id = parts.next()?;
    slice.ends_with(".slice").then_some((slice, prefix, id))
}

fn qos_from_component(component: &str) -> Option<QosClass> {
    let name = component.strip_suffix(".slice").unwrap_or(component);
    if name == "besteffort" || name.ends_with("kubepods-besteffort") {
        Some(QosClass::BestEffort)
    } else if name == "burstable" || name.ends_with("kubepods-burstable") {
        Some(QosClass::Burstable)
    } else {
        None
    }
}

/// `kubepods-besteffort-pod1b2c_..._ff.slice` (systemd driver).
fn pod_uid_from_slice(component: &str) -> Option<String> {
    let name = component.strip_suffix(".slice")?;
    let (before, uid) = name.rsplit_once("-pod")?;
    if !before.contains("kubepods") {
        return None;
    }
    normalize_pod_uid(uid)
}

/// `pod1b2c3d4e-...` (cgroupfs driver).
fn pod_uid_from_dir(component: &str) -> Option<String> {
    normalize_pod_uid(component.strip_prefix("pod")?)
}

/// Returns the UID with dashes, or `None` when `raw` is neither a UUID
/// (dashes or underscores) nor a static pod's 32 hex digits.
pub fn normalize_pod_uid(raw: &str) -> Option<String> {
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    if raw.len() == 32 && hex(raw) {
        return Some(raw.to_owned());
    }
    let uid = raw.replace('_', "-");
    let groups: Vec<&str> = uid.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    (lengths == [8, 4, 4, 4, 12] && groups.iter().all(|g| hex(g))).then_some(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f9c2a1b7e3d5c6a8b0e1f2d3c4b5a69788766554433221100ffeeddccbbaa99";
    const OUTER: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "1b2c3d4e-5f60-4718-8a9b-0c1d2e3f4a5b";
    const UID_UNDERSCORE: &str = "1b2c3d4e_5f60_4718_8a9b_0c1d2e3f4a5b";
    const STATIC_UID: &str = "6a1c55cd2d5d0b6d1b5f1b3a5e7d8c9f";

    fn container(runtime: Option<Runtime>, id: &str) -> Option<ContainerRef> {
        Some(ContainerRef { runtime, id: id.to_owned() })
    }

    /// Checks the container, pod, QoS class and unit of one path.
    fn check(path: &str, runtime: Option<Runtime>, id: Option<&str>, pod: Option<&str>, qos: Option<QosClass>) -> CgroupFacts {
        let facts = parse_cgroup_path(path);
        assert_eq!(facts.container, id.and_then(|id| container(runtime, id)), "container of {path}");
        assert_eq!(facts.pod_uid.as_deref(), pod, "pod of {path}");
        assert_eq!(facts.qos, qos, "qos of {path}");
        facts
    }

    #[test]
    fn containerd_systemd_besteffort() {
        let path = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_UNDERSCORE}.slice/cri-containerd-{ID}.scope"
        );
        let facts = check(&path, Some(Runtime::Containerd), Some(ID), Some(UID), Some(QosClass::BestEffort));
        assert_eq!(facts.unit, None, "a container has no host unit");
    }

    #[test]
    fn containerd_systemd_guaranteed() {
        let path = format!("/kubepods.slice/kubepods-pod{UID_UNDERSCORE}.slice/cri-containerd-{ID}.scope");
        check(&path, Some(Runtime::Containerd), Some(ID), Some(UID), Some(QosClass::Guaranteed));
    }

    #[test]
    fn containerd_cgroupfs_burstable() {
        let path = format!("/kubepods/burstable/pod{UID}/{ID}");
        check(&path, None, Some(ID), Some(UID), Some(QosClass::Burstable));
    }

    #[test]
    fn cgroupfs_guaranteed_static_pod() {
        let path = format!("/kubepods/pod{STATIC_UID}/{ID}");
        check(&path, None, Some(ID), Some(STATIC_UID), Some(QosClass::Guaranteed));
    }

    #[test]
    fn systemd_static_pod() {
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_UID}.slice/cri-containerd-{ID}.scope"
        );
        check(&path, Some(Runtime::Containerd), Some(ID), Some(STATIC_UID), Some(QosClass::Burstable));
    }

    #[test]
    fn crio_systemd() {
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_UNDERSCORE}.slice/crio-{ID}.scope"
        );
        check(&path, Some(Runtime::CriO), Some(ID), Some(UID), Some(QosClass::Burstable));
    }

    #[test]
    fn crio_systemd_nested_container_subgroup() {
        // CRI-O with systemd inside the container adds `container` below.
        let path = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_UNDERSCORE}.slice/crio-{ID}.scope/container"
        );
        check(&path, Some(Runtime::CriO), Some(ID), Some(UID), Some(QosClass::BestEffort));
    }

    #[test]
    fn crio_conmon_is_host_side() {
        let path = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_UNDERSCORE}.slice/crio-conmon-{ID}.scope"
        );
        let facts = check(&path, None, None, Some(UID), Some(QosClass::BestEffort));
        assert_eq!(facts.monitor_of, container(Some(Runtime::CriO), ID));
    }

    #[test]
    fn crio_cgroupfs() {
        let path = format!("/kubepods/besteffort/pod{UID}/crio-{ID}");
        check(&path, Some(Runtime::CriO), Some(ID), Some(UID), Some(QosClass::BestEffort));
    }

    #[test]
    fn docker_systemd() {
        let facts = check(&format!("/system.slice/docker-{ID}.scope"), Some(Runtime::Docker), Some(ID), None, None);
        assert_eq!(facts.unit, None);
        assert_eq!(facts.slice, None);
    }

    #[test]
    fn docker_cgroupfs() {
        check(&format!("/docker/{ID}"), Some(Runtime::Docker), Some(ID), None, None);
    }

    #[test]
    fn docker_in_docker() {
        let facts = check(&format!("/docker/{OUTER}/docker/{ID}"), Some(Runtime::Docker), Some(ID), None, None);
        assert_eq!(facts.outer_container, container(Some(Runtime::Docker), OUTER));
    }

    #[test]
    fn kubelet_dockershim_systemd() {
        let path = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_UNDERSCORE}.slice/docker-{ID}.scope"
        );
        check(&path, Some(Runtime::Docker), Some(ID), Some(UID), Some(QosClass::BestEffort));
    }

    #[test]
    fn kind_node_cgroupfs_nested() {
        // A kind node: a Docker container running a kubelet with cgroupfs.
        let path = format!("/docker/{OUTER}/kubepods/besteffort/pod{UID}/{ID}");
        let facts = check(&path, None, Some(ID), Some(UID), Some(QosClass::BestEffort));
        assert_eq!(facts.outer_container, container(Some(Runtime::Docker), OUTER));
    }

    #[test]
    fn kind_node_systemd_nested() {
        let path = format!(
            "/system.slice/docker-{OUTER}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_UNDERSCORE}.slice/cri-containerd-{ID}.scope"
        );
        let facts = check(&path, Some(Runtime::Containerd), Some(ID), Some(UID), Some(QosClass::BestEffort));
        assert_eq!(facts.outer_container, container(Some(Runtime::Docker), OUTER));
    }

    #[test]
    fn kubelet_systemd_without_runtime_systemd() {
        // The runtime was given `SLICE:PREFIX:ID` but used cgroupfs.
        let path = format!(
            "/system.slice/containerd.service/kubepods-burstable-pod{UID_UNDERSCORE}.slice:cri-containerd:{ID}"
        );
        check(&path, Some(Runtime::Containerd), Some(ID), Some(UID), None);
    }

    #[test]
    fn podman_rootful_systemd() {
        check(&format!("/machine.slice/libpod-{ID}.scope"), Some(Runtime::Podman), Some(ID), None, None);
    }

    #[test]
    fn podman_pod_and_split_cgroup() {
        let path = format!("/machine.slice/machine-libpod_pod_{OUTER}.slice/libpod-{ID}.scope/container");
        check(&path, Some(Runtime::Podman), Some(ID), None, None);
    }

    #[test]
    fn podman_conmon() {
        let facts = check(&format!("/machine.slice/libpod-conmon-{ID}.scope"), None, None, None, None);
        assert_eq!(facts.monitor_of, container(Some(Runtime::Podman), ID));
        assert_eq!(facts.unit.as_deref(), Some(format!("libpod-conmon-{ID}.scope").as_str()));
    }

    #[test]
    fn podman_rootless() {
        let path = format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope");
        let facts = check(&path, Some(Runtime::Podman), Some(ID), None, None);
        assert_eq!(facts.unit, None, "a container's host units are not its own");
    }

    #[test]
    fn podman_cgroupfs() {
        check(&format!("/libpod_parent/libpod-{ID}"), Some(Runtime::Podman), Some(ID), None, None);
        check(&format!("/libpod_parent/{ID}"), Some(Runtime::Podman), Some(ID), None, None);
    }

    #[test]
    fn pod_sandbox_level_cgroup() {
        let path = format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_UNDERSCORE}.slice");
        let facts = check(&path, None, None, Some(UID), Some(QosClass::BestEffort));
        assert!(facts.is_container());
    }

    #[test]
    fn systemd_service() {
        let facts = check("/system.slice/ssh.service", None, None, None, None);
        assert_eq!(facts.unit.as_deref(), Some("ssh.service"));
        assert_eq!(facts.slice.as_deref(), Some("system.slice"));
        assert!(!facts.is_container());
    }

    #[test]
    fn systemd_template_instance_and_transient() {
        let facts = parse_cgroup_path("/system.slice/system-getty.slice/getty@tty1.service");
        assert_eq!(facts.unit.as_deref(), Some("getty@tty1.service"));
        assert_eq!(facts.slice.as_deref(), Some("system-getty.slice"));
        assert_eq!(parse_cgroup_path("/system.slice/run-u42.service").unit.as_deref(), Some("run-u42.service"));
        assert_eq!(
            parse_cgroup_path("/system.slice/run-r2b6c9e1f0a7d4e3b8c5f.scope").unit.as_deref(),
            Some("run-r2b6c9e1f0a7d4e3b8c5f.scope")
        );
    }

    #[test]
    fn login_session() {
        let facts = parse_cgroup_path("/user.slice/user-1000.slice/session-3.scope");
        assert_eq!(facts.unit.as_deref(), Some("session-3.scope"));
        assert_eq!(facts.session.as_deref(), Some("3"));
        assert_eq!(facts.owner_uid, Some(1000));
        assert_eq!(facts.slice.as_deref(), Some("user-1000.slice"));
    }

    #[test]
    fn user_manager_unit() {
        let facts = parse_cgroup_path("/user.slice/user-1000.slice/user@1000.service/app.slice/app-org.gnome.Terminal.slice/vte-spawn-5c1f.scope");
        assert_eq!(facts.unit.as_deref(), Some("user@1000.service"));
        assert_eq!(facts.user_unit.as_deref(), Some("vte-spawn-5c1f.scope"));
        assert_eq!(facts.owner_uid, Some(1000));
        assert_eq!(facts.session, None);
    }

    #[test]
    fn root_and_init_scope() {
        let root = parse_cgroup_path("/");
        assert_eq!(root, CgroupFacts::default());
        assert_eq!(parse_cgroup_path("/init.scope").unit.as_deref(), Some("init.scope"));
    }

    #[test]
    fn lookalikes_are_not_containers() {
        // Not 64 hex digits, or an unknown prefix.
        assert_eq!(parse_cgroup_path("/system.slice/docker-compose.scope").container, None);
        assert_eq!(parse_cgroup_path("/system.slice/docker.service").container, None);
        assert_eq!(parse_cgroup_path(&format!("/system.slice/foo-{ID}.scope")).container, None);
        assert_eq!(parse_cgroup_path(&format!("/{}", ID.to_uppercase())).container, None);
        // A bare id outside any pod or runtime directory names nothing.
        assert_eq!(parse_cgroup_path(&format!("/mygroup/{ID}")).container, None);
        assert_eq!(parse_cgroup_path("/kubepods/besteffort/podnot-a-uid").pod_uid, None);
    }

    #[test]
    fn pod_uid_forms() {
        assert_eq!(normalize_pod_uid(UID_UNDERSCORE).as_deref(), Some(UID));
        assert_eq!(normalize_pod_uid(UID).as_deref(), Some(UID));
        assert_eq!(normalize_pod_uid(STATIC_UID).as_deref(), Some(STATIC_UID));
        assert_eq!(normalize_pod_uid("1234"), None);
        assert_eq!(normalize_pod_uid("zb2c3d4e-5f60-4718-8a9b-0c1d2e3f4a5b"), None);
    }
}
