//! Reads container and pod metadata that runtimes leave on the node, so pods
//! are named without the Kubernetes API.
//!
//! Sources, in the order tried:
//!
//! 1. The OCI bundle's `config.json`, whose annotations the CRI plugins fill
//!    with the pod and container names: containerd under
//!    `TASK_ROOT/NAMESPACE/ID/` (`/run/containerd/io.containerd.runtime.v2.task`,
//!    namespace `k8s.io` for Kubernetes and `moby` for Docker), CRI-O and
//!    Podman under `STORAGE/overlay-containers/ID/userdata/`.
//! 2. Docker's own `containers/ID/config.v2.json` (name, image, labels).
//! 3. The kubelet's log layout: `/var/log/containers/POD_NAMESPACE_CONTAINER-ID.log`
//!    names a container's pod, and `/var/log/pods/NAMESPACE_POD_UID/` a
//!    pod's. Neither gives the image.
//!
//! Every root is configurable, because a DaemonSet mounts the host's
//! directories wherever its manifest puts them.

use std::{
    collections::BTreeMap,
    io::Read as _,
    path::{Path, PathBuf},
};

use serde_json::Value;

use super::cgroup::{ContainerRef, Runtime};

/// Bundle files larger than this are not parsed; an OCI `config.json` is
/// typically 5 to 50 KiB.
const MAX_CONFIG_BYTES: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeMetadataError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: PathBuf },
}

/// The directories where each runtime keeps its per-container files.
#[derive(Debug, Clone, Default)]
pub struct RuntimeRoots {
    /// containerd task roots, each holding `NAMESPACE/ID/config.json`.
    pub containerd: Vec<PathBuf>,
    /// containers/storage roots (CRI-O, Podman), each holding
    /// `overlay-containers/ID/userdata/config.json`.
    pub containers_storage: Vec<PathBuf>,
    /// Docker data roots, each holding `containers/ID/config.v2.json`.
    pub docker: Vec<PathBuf>,
    /// The kubelet's `/var/log/containers`; empty to skip.
    pub container_logs: PathBuf,
    /// The kubelet's `/var/log/pods`; empty to skip.
    pub pod_logs: PathBuf,
}

/// Whether a CRI container is an application container or the pod's sandbox
/// (pause) container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerType {
    Container,
    Sandbox,
}

/// One container's facts from the node's files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerMetadata {
    pub runtime: Option<Runtime>,
    /// The file the facts came from, as a short tag for `workload.sources`.
    pub source: &'static str,
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub pod_uid: Option<String>,
    pub container: Option<String>,
    pub image: Option<String>,
    pub container_type: Option<ContainerType>,
    pub labels: BTreeMap<String, String>,
}

/// Pod facts from the kubelet's pod log directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLogFacts {
    pub namespace: String,
    pub pod: String,
}

/// Finds the metadata of `container`, trying the runtime the cgroup named
/// first. Returns `Ok(None)` when no source names the id, and an error
/// naming the file when one exists but cannot be parsed.
pub fn find_container(roots: &RuntimeRoots, container: &ContainerRef) -> Result<Option<ContainerMetadata>, RuntimeMetadataError> {
    let id = container.id.as_str();
    let order: &[Runtime] = match container.runtime {
        Some(Runtime::Containerd) | None => &[Runtime::Containerd, Runtime::CriO, Runtime::Docker],
        Some(Runtime::CriO) | Some(Runtime::Podman) => &[Runtime::CriO, Runtime::Containerd],
        Some(Runtime::Docker) => &[Runtime::Docker, Runtime::Containerd],
    };
    for runtime in order {
        let found = match runtime {
            Runtime::Containerd => find_containerd_bundle(&roots.containerd, id)?,
            Runtime::CriO | Runtime::Podman => find_storage_bundle(&roots.containers_storage, id, container.runtime)?,
            Runtime::Docker => find_docker_config(&roots.docker, id)?,
        };
        if let Some(metadata) = found {
            return Ok(Some(metadata));
        }
    }
    Ok(find_container_log(&roots.container_logs, id).map(|(pod, namespace, name)| ContainerMetadata {
        runtime: container.runtime,
        source: "container_logs",
        pod: Some(pod),
        namespace: Some(namespace),
        container: Some(name),
        container_type: Some(ContainerType::Container),
        ..Default::default()
    }))
}

fn find_containerd_bundle(task_roots: &[PathBuf], id: &str) -> Result<Option<ContainerMetadata>, RuntimeMetadataError> {
    for root in task_roots {
        // One directory per containerd namespace (k8s.io, moby, default).
        let Ok(namespaces) = std::fs::read_dir(root) else { continue };
        for namespace in namespaces.flatten() {
            let config = namespace.path().join(id).join("config.json");
            if let Some(value) = read_json(&config)? {
                let mut metadata = metadata_from_bundle(&value, "containerd_bundle");
                let namespace_name = namespace.file_name();
                metadata.runtime.get_or_insert(if namespace_name == "moby" { Runtime::Docker } else { Runtime::Containerd });
                return Ok(Some(metadata));
            }
        }
    }
    Ok(None)
}

fn find_storage_bundle(
    storage_roots: &[PathBuf],
    id: &str,
    hint: Option<Runtime>,
) -> Result<Option<ContainerMetadata>, RuntimeMetadataError> {
    for root in storage_roots {
        let config = root.join("overlay-containers").join(id).join("userdata/config.json");
        if let Some(value) = read_json(&config)? {
            let mut metadata = metadata_from_bundle(&value, "crio_bundle");
            if metadata.runtime.is_none() {
                // No CRI-O annotations: a Podman container, unless the
                // cgroup path named another runtime.
                metadata.runtime = Some(hint.unwrap_or(Runtime::Podman));
            }
            if metadata.runtime == Some(Runtime::Podman) {
                metadata.source = "podman_bundle";
            }
            return Ok(Some(metadata));
        }
    }
    Ok(None)
}

fn find_docker_config(docker_roots: &[PathBuf], id: &str) -> Result<Option<ContainerMetadata>, RuntimeMetadataError> {
    for root in docker_roots {
        let path = root.join("containers").join(id).join("config.v2.json");
        if let Some(value) = read_json(&path)? {
            return Ok(Some(metadata_from_docker(&value)));
        }
    }
    Ok(None)
}

/// Reads a JSON file; `Ok(None)` when it does not exist.
fn read_json(path: &Path) -> Result<Option<Value>, RuntimeMetadataError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(RuntimeMetadataError::Read { path: path.to_owned(), source }),
    };
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| RuntimeMetadataError::Read { path: path.to_owned(), source })?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(RuntimeMetadataError::TooLarge { path: path.to_owned() });
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| RuntimeMetadataError::Json { path: path.to_owned(), source })
}

/// Extracts pod and container facts from an OCI config's annotations, as
/// written by containerd's CRI plugin (`io.kubernetes.cri.*`) or CRI-O
/// (`io.kubernetes.pod.*`, `io.kubernetes.cri-o.*`).
pub fn metadata_from_bundle(config: &Value, source: &'static str) -> ContainerMetadata {
    let annotations = &config["annotations"];
    let get = |key: &str| annotations[key].as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    let mut metadata = ContainerMetadata { source, ..Default::default() };

    if let Some(kind) = get("io.kubernetes.cri.container-type") {
        metadata.runtime = Some(Runtime::Containerd);
        metadata.container_type = container_type(&kind);
        metadata.pod = get("io.kubernetes.cri.sandbox-name");
        metadata.namespace = get("io.kubernetes.cri.sandbox-namespace");
        metadata.pod_uid = get("io.kubernetes.cri.sandbox-uid");
        metadata.container = get("io.kubernetes.cri.container-name");
        metadata.image = get("io.kubernetes.cri.image-name");
    } else if annotations.get("io.kubernetes.cri-o.ContainerType").is_some() || get("io.kubernetes.pod.name").is_some() {
        metadata.runtime = Some(Runtime::CriO);
        metadata.container_type = get("io.kubernetes.cri-o.ContainerType").and_then(|kind| container_type(&kind));
        metadata.pod = get("io.kubernetes.pod.name");
        metadata.namespace = get("io.kubernetes.pod.namespace");
        metadata.pod_uid = get("io.kubernetes.pod.uid");
        metadata.container = get("io.kubernetes.container.name");
        metadata.image = get("io.kubernetes.cri-o.ImageName").or_else(|| get("io.kubernetes.cri-o.Image"));
        // CRI-O copies the pod's labels into its sandbox's annotations.
        if metadata.container_type == Some(ContainerType::Sandbox) {
            metadata.labels = embedded_labels(get("io.kubernetes.cri-o.Labels").as_deref());
        }
    }
    if metadata.container_type == Some(ContainerType::Sandbox) {
        metadata.container = None;
    }
    metadata
}

/// Extracts the pod labels from CRI-O's `io.kubernetes.cri-o.Labels` JSON string,
/// without the kubelet's own `io.kubernetes.*` bookkeeping labels.
fn embedded_labels(text: Option<&str>) -> BTreeMap<String, String> {
    let Some(Ok(Value::Object(map))) = text.map(serde_json::from_str::<Value>) else { return BTreeMap::new() };
    map.into_iter()
        .filter(|(key, _)| !key.starts_with("io.kubernetes."))
        .filter_map(|(key, value)| value.as_str().map(|v| (key, v.to_owned())))
        .collect()
}

fn container_type(kind: &str) -> Option<ContainerType> {
    match kind {
        "container" => Some(ContainerType::Container),
        "sandbox" => Some(ContainerType::Sandbox),
        _ => None,
    }
}

/// Extracts facts from Docker's `config.v2.json`. Containers that the
/// kubelet ran through Docker carry `io.kubernetes.*` labels.
pub fn metadata_from_docker(config: &Value) -> ContainerMetadata {
    let labels = &config["Config"]["Labels"];
    let label = |key: &str| labels[key].as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    let name = config["Name"].as_str().map(|name| name.trim_start_matches('/').to_owned()).filter(|n| !n.is_empty());
    let in_pod = label("io.kubernetes.pod.name").is_some();
    let container_type = match label("io.kubernetes.docker.type").as_deref() {
        Some("podsandbox") => Some(ContainerType::Sandbox),
        _ => Some(ContainerType::Container),
    };
    ContainerMetadata {
        runtime: Some(Runtime::Docker),
        source: "docker_config",
        pod: label("io.kubernetes.pod.name"),
        namespace: label("io.kubernetes.pod.namespace"),
        pod_uid: label("io.kubernetes.pod.uid"),
        container: if in_pod { label("io.kubernetes.container.name") } else { name },
        image: config["Config"]["Image"].as_str().map(str::to_owned),
        container_type,
        labels: if in_pod {
            BTreeMap::new()
        } else {
            labels
                .as_object()
                .map(|map| map.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned()))).collect())
                .unwrap_or_default()
        },
    }
}

/// Finds `POD_NAMESPACE_CONTAINER-ID.log` in the kubelet's container log
/// directory and returns (pod, namespace, container). Pod, namespace and
/// container names never contain `_`, so the split is unambiguous.
pub fn find_container_log(dir: &Path, id: &str) -> Option<(String, String, String)> {
    if dir.as_os_str().is_empty() {
        return None;
    }
    let suffix = format!("-{id}.log");
    let entries = std::fs::read_dir(dir).ok()?;
    entries.flatten().find_map(|entry| {
        let name = entry.file_name();
        let stem = name.to_str()?.strip_suffix(&suffix)?;
        let mut parts = stem.splitn(3, '_');
        let (pod, namespace, container) = (parts.next()?, parts.next()?, parts.next()?);
        Some((pod.to_owned(), namespace.to_owned(), container.to_owned()))
    })
}

/// Finds `NAMESPACE_POD_UID` in the kubelet's pod log directory.
pub fn find_pod_log(dir: &Path, pod_uid: &str) -> Option<PodLogFacts> {
    if dir.as_os_str().is_empty() {
        return None;
    }
    let suffix = format!("_{pod_uid}");
    let entries = std::fs::read_dir(dir).ok()?;
    entries.flatten().find_map(|entry| {
        let name = entry.file_name();
        let stem = name.to_str()?.strip_suffix(&suffix)?;
        let (namespace, pod) = stem.split_once('_')?;
        Some(PodLogFacts { namespace: namespace.to_owned(), pod: pod.to_owned() })
    })
}

impl ContainerMetadata {
    /// True when the container belongs to a Kubernetes pod.
    pub fn has_pod(&self) -> bool {
        self.pod.is_some() || self.namespace.is_some() || self.pod_uid.is_some()
    }

    /// True when any name or the image is known.
    pub fn has_facts(&self) -> bool {
        self.pod.is_some() || self.namespace.is_some() || self.container.is_some() || self.image.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ID: &str = "4f9c2a1b7e3d5c6a8b0e1f2d3c4b5a69788766554433221100ffeeddccbbaa99";

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("agent-sensor-rt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write_json(path: &Path, value: &Value) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, serde_json::to_vec(value).unwrap()).unwrap();
    }

    fn containerd_config() -> Value {
        json!({"ociVersion": "1.1.0", "annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-name": "web-7d4b9c-x2k8p",
            "io.kubernetes.cri.sandbox-namespace": "shop",
            "io.kubernetes.cri.sandbox-uid": "1b2c3d4e-5f60-4718-8a9b-0c1d2e3f4a5b",
            "io.kubernetes.cri.container-name": "agent",
            "io.kubernetes.cri.image-name": "registry.example/agent:1.2",
            "io.kubernetes.cri.sandbox-id": "aa"
        }})
    }

    #[test]
    fn containerd_annotations() {
        let metadata = metadata_from_bundle(&containerd_config(), "containerd_bundle");
        assert_eq!(metadata.runtime, Some(Runtime::Containerd));
        assert_eq!(metadata.pod.as_deref(), Some("web-7d4b9c-x2k8p"));
        assert_eq!(metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(metadata.pod_uid.as_deref(), Some("1b2c3d4e-5f60-4718-8a9b-0c1d2e3f4a5b"));
        assert_eq!(metadata.container.as_deref(), Some("agent"));
        assert_eq!(metadata.image.as_deref(), Some("registry.example/agent:1.2"));
        assert_eq!(metadata.container_type, Some(ContainerType::Container));
    }

    #[test]
    fn crio_annotations_and_sandbox_labels() {
        let config = json!({"annotations": {
            "io.kubernetes.cri-o.ContainerType": "container",
            "io.kubernetes.pod.name": "db-0",
            "io.kubernetes.pod.namespace": "data",
            "io.kubernetes.pod.uid": "u1",
            "io.kubernetes.container.name": "postgres",
            "io.kubernetes.cri-o.ImageName": "docker.io/library/postgres:16"
        }});
        let metadata = metadata_from_bundle(&config, "crio_bundle");
        assert_eq!(metadata.runtime, Some(Runtime::CriO));
        assert_eq!(metadata.pod.as_deref(), Some("db-0"));
        assert_eq!(metadata.container.as_deref(), Some("postgres"));
        assert_eq!(metadata.image.as_deref(), Some("docker.io/library/postgres:16"));

        let sandbox = json!({"annotations": {
            "io.kubernetes.cri-o.ContainerType": "sandbox",
            "io.kubernetes.pod.name": "db-0",
            "io.kubernetes.container.name": "POD",
            "io.kubernetes.cri-o.Labels": "{\"app\":\"db\",\"io.kubernetes.pod.name\":\"db-0\"}"
        }});
        let metadata = metadata_from_bundle(&sandbox, "crio_bundle");
        assert_eq!(metadata.container_type, Some(ContainerType::Sandbox));
        assert_eq!(metadata.container, None, "the sandbox has no container name");
        assert_eq!(metadata.labels, BTreeMap::from([("app".to_owned(), "db".to_owned())]));
    }

    #[test]
    fn plain_oci_config_has_no_facts() {
        let metadata = metadata_from_bundle(&json!({"ociVersion": "1.0.2"}), "containerd_bundle");
        assert!(!metadata.has_facts());
        assert_eq!(metadata.runtime, None);
    }

    #[test]
    fn docker_config() {
        let plain = json!({"Name": "/redis-cache", "Config": {"Image": "redis:7", "Labels": {"team": "a"}}});
        let metadata = metadata_from_docker(&plain);
        assert_eq!(metadata.container.as_deref(), Some("redis-cache"));
        assert_eq!(metadata.image.as_deref(), Some("redis:7"));
        assert!(!metadata.has_pod());
        assert_eq!(metadata.labels.get("team").map(String::as_str), Some("a"));

        let kube = json!({"Name": "/k8s_app_web_shop_u1_0", "Config": {"Image": "sha256:abc", "Labels": {
            "io.kubernetes.pod.name": "web", "io.kubernetes.pod.namespace": "shop",
            "io.kubernetes.container.name": "app", "io.kubernetes.docker.type": "container"}}});
        let metadata = metadata_from_docker(&kube);
        assert_eq!(metadata.pod.as_deref(), Some("web"));
        assert_eq!(metadata.container.as_deref(), Some("app"));
    }

    #[test]
    fn finds_bundles_under_each_root() {
        let dir = scratch("roots");
        let containerd = dir.join("containerd");
        write_json(&containerd.join("k8s.io").join(ID).join("config.json"), &containerd_config());
        let roots = RuntimeRoots { containerd: vec![dir.join("absent"), containerd], ..Default::default() };
        let found = find_container(&roots, &ContainerRef { runtime: None, id: ID.to_owned() }).unwrap().unwrap();
        assert_eq!(found.container.as_deref(), Some("agent"));
        assert_eq!(found.source, "containerd_bundle");

        let storage = dir.join("storage");
        write_json(&storage.join("overlay-containers").join(ID).join("userdata/config.json"), &json!({"annotations": {}}));
        let roots = RuntimeRoots { containers_storage: vec![storage], ..Default::default() };
        let podman = find_container(&roots, &ContainerRef { runtime: Some(Runtime::Podman), id: ID.to_owned() }).unwrap().unwrap();
        assert_eq!(podman.runtime, Some(Runtime::Podman));
        assert_eq!(podman.source, "podman_bundle");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unknown_id_and_broken_file() {
        let dir = scratch("broken");
        let roots = RuntimeRoots { containerd: vec![dir.clone()], ..Default::default() };
        let container = ContainerRef { runtime: Some(Runtime::Containerd), id: ID.to_owned() };
        assert_eq!(find_container(&roots, &container).unwrap(), None);

        let path = dir.join("k8s.io").join(ID).join("config.json");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"{not json").unwrap();
        let error = find_container(&roots, &container).unwrap_err();
        assert!(error.to_string().contains(&path.display().to_string()), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn kubelet_log_fallbacks() {
        let dir = scratch("logs");
        let containers = dir.join("containers");
        let pods = dir.join("pods");
        std::fs::create_dir_all(&containers).unwrap();
        std::fs::create_dir_all(pods.join("shop_web-7d4b9c-x2k8p_1b2c3d4e-5f60-4718-8a9b-0c1d2e3f4a5b/agent")).unwrap();
        std::fs::write(containers.join(format!("web-7d4b9c-x2k8p_shop_agent-{ID}.log")), b"").unwrap();
        std::fs::write(containers.join("other_shop_agent-0000.log"), b"").unwrap();

        let roots = RuntimeRoots { container_logs: containers.clone(), ..Default::default() };
        let found = find_container(&roots, &ContainerRef { runtime: None, id: ID.to_owned() }).unwrap().unwrap();
        assert_eq!(found.source, "container_logs");
        assert_eq!(found.pod.as_deref(), Some("web-7d4b9c-x2k8p"));
        assert_eq!(found.namespace.as_deref(), Some("shop"));
        assert_eq!(found.container.as_deref(), Some("agent"));
        assert_eq!(found.image, None);

        let pod = find_pod_log(&pods, "1b2c3d4e-5f60-4718-8a9b-0c1d2e3f4a5b").unwrap();
        assert_eq!(pod, PodLogFacts { namespace: "shop".into(), pod: "web-7d4b9c-x2k8p".into() });
        assert_eq!(find_pod_log(&pods, "ffffffff-5f60-4718-8a9b-0c1d2e3f4a5b"), None);
        assert_eq!(find_pod_log(Path::new(""), "x"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
