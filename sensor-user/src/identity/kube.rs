//! This node's pods as the Kubernetes API lists them: service accounts and
//! labels, which no file on the node records for every runtime.
//!
//! [`PodDirectory`] is the shared view the identity stage reads. A watcher
//! task (built with the `kube-api` cargo feature) fills it from a list and
//! watch of the pods whose `spec.nodeName` is this node. When the API
//! cannot be reached, the watcher marks the directory unreachable, and
//! lookups of pods it has not listed report `api_unreachable` while the
//! rest of the identity stays intact. Every change bumps a generation
//! counter, so the identity stage merges the new facts into its cached
//! workloads.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use serde_json::Value;

/// One pod's facts from the API.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodInfo {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub service_account: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Container name to image, init containers included.
    pub images: HashMap<String, String>,
}

impl PodInfo {
    /// Reads a Pod object in its JSON form; `None` without name, namespace
    /// or UID.
    pub fn from_json(pod: &Value) -> Option<PodInfo> {
        let metadata = &pod["metadata"];
        let text = |value: &Value| value.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
        let spec = &pod["spec"];
        let labels = metadata["labels"]
            .as_object()
            .map(|map| map.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
            .unwrap_or_default();
        let images = ["containers", "initContainers", "ephemeralContainers"]
            .iter()
            .filter_map(|key| spec[*key].as_array())
            .flatten()
            .filter_map(|container| Some((text(&container["name"])?, text(&container["image"])?)))
            .collect();
        Some(PodInfo {
            name: text(&metadata["name"])?,
            namespace: text(&metadata["namespace"])?,
            uid: text(&metadata["uid"])?,
            // `serviceAccount` is the deprecated spelling older objects carry.
            service_account: text(&spec["serviceAccountName"]).or_else(|| text(&spec["serviceAccount"])),
            labels,
            images,
        })
    }
}

/// The API connection's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiState {
    /// No API configured.
    Disabled,
    /// Configured; the first list has not completed.
    Connecting,
    /// The list completed and the watch is running.
    Synced,
    /// The last request failed; the watcher is retrying.
    Unreachable,
}

/// The result of a pod lookup.
#[derive(Debug, Clone, PartialEq)]
pub enum PodLookup {
    Found(Arc<PodInfo>),
    /// The API is synced and does not list the pod (yet).
    NotInApi,
    /// The API has not responded, so the pod may exist.
    Unreachable,
    Disabled,
}

#[derive(Debug)]
struct DirectoryState {
    api: ApiState,
    by_uid: HashMap<String, Arc<PodInfo>>,
    last_error: Option<String>,
}

/// This node's pods, shared between the watcher task and the identity stage.
#[derive(Debug)]
pub struct PodDirectory {
    state: Mutex<DirectoryState>,
    generation: AtomicU64,
}

impl PodDirectory {
    pub fn new(api: ApiState) -> Arc<PodDirectory> {
        Arc::new(PodDirectory {
            state: Mutex::new(DirectoryState { api, by_uid: HashMap::new(), last_error: None }),
            generation: AtomicU64::new(0),
        })
    }

    /// Returns a counter that increases whenever a lookup result could change.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, DirectoryState> {
        // A panic while holding the lock leaves plain data behind, which is
        // still usable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn api_state(&self) -> ApiState {
        self.state().api
    }

    pub fn last_error(&self) -> Option<String> {
        self.state().last_error.clone()
    }

    pub fn by_uid(&self, uid: &str) -> PodLookup {
        let state = self.state();
        if let Some(pod) = state.by_uid.get(uid) {
            return PodLookup::Found(pod.clone());
        }
        Self::miss(state.api)
    }

    pub fn by_name(&self, namespace: &str, name: &str) -> PodLookup {
        let state = self.state();
        if let Some(pod) = state.by_uid.values().find(|p| p.namespace == namespace && p.name == name) {
            return PodLookup::Found(pod.clone());
        }
        Self::miss(state.api)
    }

    fn miss(api: ApiState) -> PodLookup {
        match api {
            ApiState::Disabled => PodLookup::Disabled,
            ApiState::Synced => PodLookup::NotInApi,
            ApiState::Connecting | ApiState::Unreachable => PodLookup::Unreachable,
        }
    }

    /// Replaces every pod with a fresh list, and marks the API synced.
    pub fn replace_all(&self, pods: Vec<PodInfo>) {
        let mut state = self.state();
        state.by_uid = pods.into_iter().map(|pod| (pod.uid.clone(), Arc::new(pod))).collect();
        state.api = ApiState::Synced;
        state.last_error = None;
        drop(state);
        self.bump();
    }

    /// Adds or replaces one pod.
    pub fn upsert(&self, pod: PodInfo) {
        let mut state = self.state();
        if state.api != ApiState::Unreachable && state.by_uid.get(&pod.uid).is_some_and(|known| **known == pod) {
            return;
        }
        state.by_uid.insert(pod.uid.clone(), Arc::new(pod));
        // An event after a failure means the watch is running again.
        if state.api == ApiState::Unreachable {
            state.api = ApiState::Synced;
            state.last_error = None;
        }
        drop(state);
        self.bump();
    }

    /// Forgets a deleted pod. Cached workloads keep what they had, because
    /// records about the pod's last processes can still arrive.
    pub fn remove(&self, uid: &str) {
        self.state().by_uid.remove(uid);
    }

    /// Marks the API unreachable. Pods already listed stay: a pod's service
    /// account and labels rarely change, and losing them would make records
    /// of running pods worse than they were.
    pub fn set_unreachable(&self, error: String) {
        let mut state = self.state();
        let changed = state.api != ApiState::Unreachable;
        state.api = ApiState::Unreachable;
        state.last_error = Some(error);
        drop(state);
        if changed {
            self.bump();
        }
    }
}

/// Returns the pod directory for `config`, and starts the watcher task
/// that fills it when the API is enabled. Must run inside the tokio runtime.
pub fn start_watch(config: &crate::config::IdentityConfig) -> Arc<PodDirectory> {
    if !config.kube_api {
        return PodDirectory::new(ApiState::Disabled);
    }
    #[cfg(feature = "kube-api")]
    {
        let directory = PodDirectory::new(ApiState::Connecting);
        super::kube_watch::spawn(config, directory.clone());
        directory
    }
    #[cfg(not(feature = "kube-api"))]
    {
        // Configuration validation rejects this combination; a directory
        // that reports the API unreachable is the honest fallback.
        log::error!("identity.kube_api is set but this build has no Kubernetes API support");
        let directory = PodDirectory::new(ApiState::Unreachable);
        directory.set_unreachable("built without the kube-api feature".to_owned());
        directory
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod_json(uid: &str) -> Value {
        json!({
            "metadata": {"name": "web-0", "namespace": "shop", "uid": uid, "labels": {"app": "web", "tier": "front"}},
            "spec": {
                "nodeName": "node-1",
                "serviceAccountName": "web-sa",
                "containers": [{"name": "agent", "image": "registry.example/agent:1.2"}],
                "initContainers": [{"name": "setup", "image": "busybox:1.36"}]
            }
        })
    }

    #[test]
    fn pod_from_json() {
        let pod = PodInfo::from_json(&pod_json("u1")).unwrap();
        assert_eq!(pod.name, "web-0");
        assert_eq!(pod.namespace, "shop");
        assert_eq!(pod.service_account.as_deref(), Some("web-sa"));
        assert_eq!(pod.labels.get("tier").map(String::as_str), Some("front"));
        assert_eq!(pod.images.get("setup").map(String::as_str), Some("busybox:1.36"));
        assert_eq!(PodInfo::from_json(&json!({"metadata": {"name": "x"}})), None);
    }

    #[test]
    fn lookups_follow_api_state() {
        let directory = PodDirectory::new(ApiState::Connecting);
        assert_eq!(directory.by_uid("u1"), PodLookup::Unreachable);
        let before = directory.generation();
        directory.replace_all(vec![PodInfo::from_json(&pod_json("u1")).unwrap()]);
        assert!(directory.generation() > before);
        assert!(matches!(directory.by_uid("u1"), PodLookup::Found(_)));
        assert!(matches!(directory.by_name("shop", "web-0"), PodLookup::Found(_)));
        assert_eq!(directory.by_uid("u2"), PodLookup::NotInApi);

        let generation = directory.generation();
        directory.upsert(PodInfo::from_json(&pod_json("u1")).unwrap());
        assert_eq!(directory.generation(), generation, "an unchanged pod is no change");

        directory.set_unreachable("connection refused".into());
        assert!(matches!(directory.by_uid("u1"), PodLookup::Found(_)), "listed pods survive the loss");
        assert_eq!(directory.by_uid("u2"), PodLookup::Unreachable);
        assert_eq!(directory.last_error().as_deref(), Some("connection refused"));

        directory.upsert(PodInfo::from_json(&pod_json("u1")).unwrap());
        assert_eq!(directory.api_state(), ApiState::Synced, "an event after the loss means the watch runs again");
        assert_eq!(directory.by_uid("u2"), PodLookup::NotInApi);
        assert_eq!(PodDirectory::new(ApiState::Disabled).by_uid("u1"), PodLookup::Disabled);
    }
}
