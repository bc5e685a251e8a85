//! Pipeline stage 3: a process's cgroup and uid in, its workload out.
//!
//! Takes the cgroup v2 id the kernel reported at exec or fork (or the
//! cgroup path read from `/proc` for processes found at start-up) and the
//! process's uid. Produces a shared [`Workload`]: for a container its
//! runtime, container id, name and image and, in Kubernetes, its pod,
//! namespace, pod UID, service account and labels; for a host process its
//! systemd unit, slice, login session and user name. Every field that
//! applies but could not be found is listed in `unknown` with a reason code.
//!
//! It assumes cgroup v2 (on hybrid hosts, the `unified` hierarchy), that
//! container runtimes name cgroups as described in [`cgroup`], and that the
//! runtime's bundle files or the kubelet's log directories are readable at
//! the configured roots. The Kubernetes API is optional ([`kube`]).
//!
//! It does not handle cgroup v1-only hosts (every process is then
//! `unknown` with reason `no_cgroup2_mount`), processes moved to another
//! cgroup after their exec (the exec's cgroup is kept), user names from
//! directory services (only the passwd file is read), or user names inside
//! containers. A cgroup created and removed between two drains of the ring
//! buffer is named only if the inotify watch ([`discover`]) saw it created;
//! otherwise its processes are reported `cgroup_not_found`.
//!
//! Work is cached per cgroup id, so an event costs one hash lookup and two
//! reference-count increments; files are read once per cgroup and again
//! only while metadata is missing.

pub mod cgroup;
pub mod discover;
pub mod index;
pub mod kube;
#[cfg(feature = "kube-api")]
mod kube_watch;
pub mod runtime;
pub mod systemd;

use std::{collections::{BTreeMap, HashMap}, path::PathBuf, sync::Arc};

use serde::{ser::SerializeMap as _, Serialize};
use serde_json::value::RawValue;

use crate::config::IdentityConfig;
use crate::idmap::IdMap;
use cgroup::{CgroupFacts, QosClass, Runtime};
use index::{CgroupIndex, Lookup};
use kube::{PodDirectory, PodLookup};
use runtime::{ContainerMetadata, ContainerType, RuntimeRoots};
use systemd::Users;

/// Metadata that was missing is looked for again after this long, in
/// nanoseconds: a runtime writes its bundle before it starts the container,
/// but the kubelet's log files can appear later.
const RETRY_MISSING_NS: u64 = 2_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    Container,
    Host,
    Unknown,
}

/// The workload of one cgroup, shared by every record of its processes.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    pub kind: WorkloadKind,
    /// The cgroup v2 path, relative to the mount.
    pub cgroup: Option<Arc<str>>,
    pub runtime: Option<Runtime>,
    pub container_id: Option<String>,
    /// The container that encloses this one (a kind node, Docker in Docker).
    pub outer_container_id: Option<String>,
    /// True for a container in a Kubernetes pod: the pod fields apply.
    pub in_pod: bool,
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub pod_uid: Option<String>,
    pub container: Option<String>,
    pub image: Option<String>,
    pub service_account: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub qos: Option<QosClass>,
    /// True for the pod's sandbox (pause) container.
    pub sandbox: bool,
    pub unit: Option<String>,
    pub slice: Option<String>,
    pub user_unit: Option<String>,
    pub session: Option<String>,
    /// Sources of the facts, such as `cgroup_path`, `containerd_bundle` or
    /// `kube_api`.
    pub sources: Vec<&'static str>,
    /// Field name to reason code, for fields that apply but are unknown.
    pub unknown: Vec<(&'static str, &'static str)>,
}

impl Workload {
    /// Builds a workload of unknown kind, for the reason given.
    pub(crate) fn unknown(reason: &'static str) -> Workload {
        Workload { unknown: vec![("kind", reason)], ..Workload::empty(WorkloadKind::Unknown) }
    }

    fn empty(kind: WorkloadKind) -> Workload {
        Workload {
            kind,
            cgroup: None,
            runtime: None,
            container_id: None,
            outer_container_id: None,
            in_pod: false,
            pod: None,
            namespace: None,
            pod_uid: None,
            container: None,
            image: None,
            service_account: None,
            labels: None,
            qos: None,
            sandbox: false,
            unit: None,
            slice: None,
            user_unit: None,
            session: None,
            sources: Vec::new(),
            unknown: Vec::new(),
        }
    }

    fn mark_unknown(&mut self, field: &'static str, reason: &'static str) {
        if !self.unknown.iter().any(|(known, _)| *known == field) {
            self.unknown.push((field, reason));
        }
    }

    fn forget_unknown(&mut self, field: &'static str) {
        self.unknown.retain(|(known, _)| *known != field);
    }
}

/// The user of a host process: a name, or why there is none.
#[derive(Debug, Clone, PartialEq)]
pub enum UserName {
    Known(Arc<str>),
    Unknown(&'static str),
    /// Containers: the host's passwd file does not name their users.
    NotApplicable,
}

/// The `workload` section of a record: the cgroup's shared facts plus the
/// process's user.
#[derive(Debug, Clone)]
pub struct WorkloadView {
    pub workload: Arc<Workload>,
    pub user: UserName,
    /// The section as serialised for an earlier record of the same workload
    /// and user (see `Sections`).
    pub json: Option<Arc<RawValue>>,
}

impl Serialize for WorkloadView {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if let Some(json) = &self.json {
            return json.serialize(serializer);
        }
        let w = &*self.workload;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("kind", &w.kind)?;
        if let Some(cgroup) = &w.cgroup {
            map.serialize_entry("cgroup", cgroup)?;
        }
        match w.kind {
            WorkloadKind::Container => {
                map.serialize_entry("runtime", &w.runtime)?;
                map.serialize_entry("container_id", &w.container_id)?;
                if let Some(outer) = &w.outer_container_id {
                    map.serialize_entry("outer_container_id", outer)?;
                }
                map.serialize_entry("container", &w.container)?;
                map.serialize_entry("image", &w.image)?;
                if w.sandbox {
                    map.serialize_entry("sandbox", &true)?;
                }
                if w.in_pod {
                    map.serialize_entry("pod", &w.pod)?;
                    map.serialize_entry("namespace", &w.namespace)?;
                    map.serialize_entry("pod_uid", &w.pod_uid)?;
                    map.serialize_entry("service_account", &w.service_account)?;
                    map.serialize_entry("labels", &w.labels)?;
                    if let Some(qos) = &w.qos {
                        map.serialize_entry("qos", qos)?;
                    }
                } else if let Some(labels) = w.labels.as_ref().filter(|l| !l.is_empty()) {
                    map.serialize_entry("labels", labels)?;
                }
            }
            WorkloadKind::Host => {
                map.serialize_entry("unit", &w.unit)?;
                for (key, value) in [("slice", &w.slice), ("user_unit", &w.user_unit), ("session", &w.session)] {
                    if let Some(value) = value {
                        map.serialize_entry(key, value)?;
                    }
                }
            }
            WorkloadKind::Unknown => {}
        }
        let user_reason = match &self.user {
            UserName::Known(name) => {
                map.serialize_entry("user", &**name)?;
                None
            }
            UserName::Unknown(reason) => {
                map.serialize_entry("user", &None::<&str>)?;
                Some(*reason)
            }
            UserName::NotApplicable => None,
        };
        map.serialize_entry("identity_complete", &(w.unknown.is_empty() && user_reason.is_none()))?;
        if !w.sources.is_empty() {
            map.serialize_entry("sources", &w.sources)?;
        }
        if !w.unknown.is_empty() || user_reason.is_some() {
            map.serialize_entry("unknown", &UnknownMap { fields: &w.unknown, user: user_reason })?;
        }
        map.end()
    }
}

struct UnknownMap<'a> {
    fields: &'a [(&'static str, &'static str)],
    user: Option<&'static str>,
}

impl Serialize for UnknownMap<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (field, reason) in self.fields {
            map.serialize_entry(field, reason)?;
        }
        if let Some(reason) = self.user {
            map.serialize_entry("user", reason)?;
        }
        map.end()
    }
}

/// Serialised `workload` sections of one workload, by user.
///
/// Each record about a process carries its workload, and serialising it
/// anew took about a twentieth of the daemon's instructions under an
/// agent's load (callgrind). A workload is replaced, never changed, when
/// its facts change, and its sections are dropped with it.
#[derive(Default)]
struct Sections {
    by_user: Vec<(UserName, Arc<RawValue>)>,
}

impl Sections {
    /// Users kept per workload. A cgroup whose processes run as more users
    /// has the section serialised anew for the others each time.
    const MAX_USERS: usize = 8;

    fn attach(&mut self, view: &mut WorkloadView) {
        if let Some((_, json)) = self.by_user.iter().find(|(user, _)| *user == view.user) {
            view.json = Some(json.clone());
            return;
        }
        // A section that cannot be serialised fails again, with its error,
        // in the sink that writes the record.
        let Ok(json) = serde_json::value::to_raw_value(&*view) else { return };
        let json: Arc<RawValue> = Arc::from(json);
        if self.by_user.len() < Self::MAX_USERS {
            self.by_user.push((view.user.clone(), json.clone()));
        }
        view.json = Some(json);
    }
}

/// A cgroup's workload as resolved from local files, before the API's
/// facts are merged in.
struct Cached {
    local: Workload,
    merged: Arc<Workload>,
    /// The pod directory's generation `merged` was built from.
    generation: u64,
    /// When to look for missing metadata again.
    retry_at_ns: Option<u64>,
    last_used_ns: u64,
    /// The serialised sections of `merged`.
    sections: Sections,
}

pub struct Identity {
    index: CgroupIndex,
    roots: RuntimeRoots,
    users: Users,
    pods: Arc<PodDirectory>,
    workloads: IdMap<u64, Cached>,
    /// Cgroup ids of paths read from `/proc`, for processes found at start-up.
    ids_by_path: HashMap<Arc<str>, u64>,
    capacity: usize,
    no_cgroup: Arc<Workload>,
    no_cgroup_sections: Sections,
}

/// Returns the configured cgroup2 mount, or else the one mountinfo lists.
pub fn detect_cgroup_root(config: &IdentityConfig) -> Result<PathBuf, index::CgroupIndexError> {
    if !config.cgroup_root.as_os_str().is_empty() {
        return Ok(config.cgroup_root.clone());
    }
    index::find_cgroup2_mount(&config.mountinfo_path)
}

impl Identity {
    /// Builds the stage from the configuration: finds the cgroup2 mount and,
    /// when configured, starts watching the Kubernetes API. Problems are
    /// logged and leave the affected fields unknown; they never stop the
    /// daemon.
    pub fn start(config: &IdentityConfig) -> Identity {
        let cgroup_root = match detect_cgroup_root(config) {
            Ok(root) if index::is_cgroup2(&root) => Some(root),
            Ok(root) => {
                log::warn!("{} is not a cgroup2 mount; workloads will be unknown (no_cgroup2_mount)", root.display());
                None
            }
            Err(error) => {
                log::warn!("workloads will be unknown: {error}");
                None
            }
        };
        let discovered = cgroup_root.as_deref().and_then(|root| match discover::start(root, config.max_cgroups) {
            Ok(discovered) => Some(discovered),
            Err(error) => {
                log::warn!("containers that exit within one drain interval may be unknown (cgroup_not_found): {error}");
                None
            }
        });
        let pods = kube::start_watch(config);
        let mut identity = Identity::new(config, cgroup_root, pods);
        if let Some(discovered) = discovered {
            identity.index.set_discovered(discovered);
        }
        identity
    }

    /// Returns the stage's settings and state, for the `sensor.start` record.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "cgroup_root": self.index.root(),
            "kube_api": self.pods.api_state(),
            "kube_api_error": self.pods.last_error(),
        })
    }

    /// Builds the stage. `cgroup_root` is the cgroup2 mount (`None` when
    /// there is none) and `pods` the Kubernetes API's view of this node.
    pub fn new(config: &IdentityConfig, cgroup_root: Option<PathBuf>, pods: Arc<PodDirectory>) -> Identity {
        let roots = RuntimeRoots {
            containerd: config.containerd_task_roots.clone(),
            containers_storage: config.containers_storage_roots.clone(),
            docker: config.docker_roots.clone(),
            container_logs: config.container_logs_root.clone(),
            pod_logs: config.pod_logs_root.clone(),
        };
        Identity {
            index: CgroupIndex::new(cgroup_root, config.max_cgroups, config.removed_retention_secs.saturating_mul(1_000_000_000)),
            roots,
            users: Users::new(&config.passwd_path),
            pods,
            workloads: IdMap::default(),
            ids_by_path: HashMap::new(),
            capacity: config.max_cgroups.max(1),
            no_cgroup: Arc::new(Workload::unknown("no_cgroup")),
            no_cgroup_sections: Sections::default(),
        }
    }

    /// Returns the workload of a process from its cgroup id, or its cgroup
    /// path when the id is unknown, and its uid.
    pub fn resolve(&mut self, cgroup_id: Option<u64>, cgroup_path: Option<&str>, uid: Option<u32>, now_ns: u64) -> WorkloadView {
        let id = cgroup_id.filter(|&id| id != 0).or_else(|| cgroup_path.and_then(|path| self.id_of_path(path, now_ns)));
        let workload = match id {
            Some(id) => self.workload_of(id, now_ns),
            None => self.no_cgroup.clone(),
        };
        let user = match workload.kind {
            WorkloadKind::Container => UserName::NotApplicable,
            WorkloadKind::Host | WorkloadKind::Unknown => match uid {
                None => UserName::Unknown("uid_unknown"),
                Some(uid) => match self.users.name(uid, now_ns) {
                    Some(name) => UserName::Known(name),
                    None if self.users.load_error.is_some() => UserName::Unknown("passwd_unreadable"),
                    None => UserName::Unknown("no_passwd_entry"),
                },
            },
        };
        let mut view = WorkloadView { workload, user, json: None };
        // `workload_of` has just cached the workload under `id`.
        let sections = match id {
            Some(id) => self
                .workloads
                .get_mut(&id)
                .filter(|cached| Arc::ptr_eq(&cached.merged, &view.workload))
                .map(|cached| &mut cached.sections),
            None => Some(&mut self.no_cgroup_sections),
        };
        if let Some(sections) = sections {
            sections.attach(&mut view);
        }
        view
    }

    fn id_of_path(&mut self, path: &str, now_ns: u64) -> Option<u64> {
        if let Some(&id) = self.ids_by_path.get(path) {
            return Some(id);
        }
        let id = self.index.id_of_path(path, now_ns)?;
        if self.ids_by_path.len() >= self.capacity {
            self.ids_by_path.clear();
        }
        self.ids_by_path.insert(path.into(), id);
        Some(id)
    }

    fn workload_of(&mut self, id: u64, now_ns: u64) -> Arc<Workload> {
        let generation = self.pods.generation();
        if let Some(cached) = self.workloads.get_mut(&id) {
            cached.last_used_ns = now_ns;
            let stale = cached.retry_at_ns.is_some_and(|at| now_ns >= at);
            if !stale {
                if cached.generation != generation && cached.local.in_pod {
                    cached.merged = Arc::new(merge_pod_api(cached.local.clone(), &self.pods));
                    cached.generation = generation;
                    cached.sections = Sections::default();
                }
                return cached.merged.clone();
            }
        }
        let local = self.resolve_local(id, now_ns);
        let missing = local.unknown.iter().any(|(_, reason)| {
            matches!(*reason, "no_runtime_metadata" | "not_in_runtime_metadata" | "cgroup_not_found")
        });
        let merged = Arc::new(if local.in_pod { merge_pod_api(local.clone(), &self.pods) } else { local.clone() });
        if self.workloads.len() >= self.capacity && !self.workloads.contains_key(&id) {
            self.evict_one();
        }
        self.workloads.insert(
            id,
            Cached {
                local,
                merged: merged.clone(),
                generation,
                retry_at_ns: missing.then_some(now_ns + RETRY_MISSING_NS),
                last_used_ns: now_ns,
                sections: Sections::default(),
            },
        );
        merged
    }

    fn evict_one(&mut self) {
        let victim = self.workloads.iter().min_by_key(|(_, c)| c.last_used_ns).map(|(&id, _)| id);
        if let Some(id) = victim {
            self.workloads.remove(&id);
        }
    }

    /// Resolves a cgroup from the cgroup path and the node's files.
    fn resolve_local(&mut self, id: u64, now_ns: u64) -> Workload {
        let path = match self.index.lookup(id, now_ns) {
            Lookup::Found(path) => path,
            Lookup::NotFound => return Workload::unknown("cgroup_not_found"),
            Lookup::NoMount => return Workload::unknown("no_cgroup2_mount"),
        };
        let facts = cgroup::parse_cgroup_path(&path);
        let mut workload = from_cgroup_facts(&facts, path);
        if let Some(container) = &facts.container {
            match runtime::find_container(&self.roots, container) {
                Ok(Some(metadata)) => apply_container_metadata(&mut workload, &metadata),
                Ok(None) => {}
                Err(error) => {
                    log::warn!("cgroup {id}: container {} metadata unusable: {error}", container.id);
                    workload.mark_unknown("container", "runtime_metadata_unreadable");
                }
            }
        }
        if workload.in_pod && (workload.pod.is_none() || workload.namespace.is_none()) {
            if let Some(facts) = workload.pod_uid.as_deref().and_then(|uid| runtime::find_pod_log(&self.roots.pod_logs, uid)) {
                workload.pod.get_or_insert(facts.pod);
                workload.namespace.get_or_insert(facts.namespace);
                workload.sources.push("pod_logs");
            }
        }
        mark_missing_fields(&mut workload);
        workload
    }

    /// Drops cached workloads of cgroups removed longer than the retention.
    pub fn collect_garbage(&mut self, now_ns: u64) {
        self.index.collect_garbage(now_ns);
        let index = &mut self.index;
        // A workload outlives its index entry only by the one lookup that
        // would recreate it, so entries the index forgot are dropped.
        self.workloads.retain(|&id, _| index.contains(id));
        self.ids_by_path.retain(|_, id| index.contains(*id));
    }
}

fn from_cgroup_facts(facts: &CgroupFacts, path: Arc<str>) -> Workload {
    let mut workload = Workload::empty(WorkloadKind::Host);
    workload.cgroup = Some(path);
    workload.sources.push("cgroup_path");
    if facts.is_container() {
        workload.kind = WorkloadKind::Container;
        workload.runtime = facts.container.as_ref().and_then(|c| c.runtime);
        workload.container_id = facts.container.as_ref().map(|c| c.id.clone());
        workload.outer_container_id = facts.outer_container.as_ref().map(|c| c.id.clone());
        workload.in_pod = facts.pod_uid.is_some();
        workload.pod_uid = facts.pod_uid.clone();
        workload.qos = facts.qos;
        if facts.container.is_none() {
            workload.mark_unknown("container_id", "pod_cgroup_without_container");
        }
    } else {
        workload.unit = facts.unit.clone();
        workload.slice = facts.slice.clone();
        workload.user_unit = facts.user_unit.clone();
        workload.session = facts.session.clone();
        if workload.unit.is_none() {
            workload.mark_unknown("unit", "no_unit_in_cgroup");
        }
    }
    workload
}

fn apply_container_metadata(workload: &mut Workload, metadata: &ContainerMetadata) {
    workload.sources.push(metadata.source);
    if workload.runtime.is_none() {
        workload.runtime = metadata.runtime;
    }
    if metadata.has_pod() {
        workload.in_pod = true;
    }
    workload.pod = metadata.pod.clone();
    workload.namespace = metadata.namespace.clone();
    if workload.pod_uid.is_none() {
        workload.pod_uid = metadata.pod_uid.clone();
    }
    workload.container = metadata.container.clone();
    workload.image = metadata.image.clone();
    workload.sandbox = metadata.container_type == Some(ContainerType::Sandbox);
    if !metadata.labels.is_empty() {
        workload.labels = Some(metadata.labels.clone());
    }
    if !metadata.has_facts() {
        // The bundle exists but carries no names (a plain runc bundle).
        workload.mark_unknown("container", "not_in_runtime_metadata");
    }
}

/// Lists the fields of the workload's kind that are still unknown.
fn mark_missing_fields(workload: &mut Workload) {
    if workload.kind != WorkloadKind::Container {
        return;
    }
    let metadata_found = workload.sources.len() > 1;
    let reason = if metadata_found { "not_in_runtime_metadata" } else { "no_runtime_metadata" };
    if workload.runtime.is_none() {
        workload.mark_unknown("runtime", reason);
    }
    if workload.container.is_none() {
        workload.mark_unknown("container", if workload.sandbox { "pod_sandbox" } else { reason });
    }
    if workload.image.is_none() {
        workload.mark_unknown("image", reason);
    }
    if workload.in_pod {
        if workload.pod.is_none() {
            workload.mark_unknown("pod", reason);
        }
        if workload.namespace.is_none() {
            workload.mark_unknown("namespace", reason);
        }
        if workload.pod_uid.is_none() {
            workload.mark_unknown("pod_uid", reason);
        }
    }
}

/// Merges the Kubernetes API's facts about the workload's pod: service
/// account and labels, and names the node's files lacked.
fn merge_pod_api(mut workload: Workload, pods: &PodDirectory) -> Workload {
    let lookup = match (workload.pod_uid.as_deref(), workload.namespace.as_deref(), workload.pod.as_deref()) {
        (Some(uid), _, _) => pods.by_uid(uid),
        (None, Some(namespace), Some(name)) => pods.by_name(namespace, name),
        _ => pods.by_uid(""),
    };
    let reason = match lookup {
        PodLookup::Found(pod) => {
            workload.sources.push("kube_api");
            for (field, value, api) in [
                ("pod", &mut workload.pod, Some(&pod.name)),
                ("namespace", &mut workload.namespace, Some(&pod.namespace)),
                ("pod_uid", &mut workload.pod_uid, Some(&pod.uid)),
            ] {
                if value.is_none() {
                    *value = api.cloned();
                    workload.unknown.retain(|(known, _)| *known != field);
                }
            }
            if workload.image.is_none() {
                if let Some(image) = workload.container.as_ref().and_then(|name| pod.images.get(name)) {
                    workload.image = Some(image.clone());
                    workload.forget_unknown("image");
                }
            }
            workload.service_account = pod.service_account.clone();
            workload.labels = Some(pod.labels.clone());
            if workload.service_account.is_none() {
                workload.mark_unknown("service_account", "not_in_api");
            }
            return workload;
        }
        PodLookup::NotInApi => "pod_not_in_api",
        PodLookup::Unreachable => "api_unreachable",
        PodLookup::Disabled => "kube_api_disabled",
    };
    workload.mark_unknown("service_account", reason);
    if workload.labels.is_none() {
        workload.mark_unknown("labels", reason);
    }
    workload
}

#[cfg(test)]
mod tests;
