//! The identity stage end to end on fixture trees: a directory tree replaces
//! the cgroup2 mount (the index reads only directory names and inode
//! numbers), beside runtime roots and a passwd file.

use std::{os::unix::fs::MetadataExt as _, path::PathBuf};

use serde_json::{json, Value};

use super::*;
use crate::config::IdentityConfig;

const ID: &str = "4f9c2a1b7e3d5c6a8b0e1f2d3c4b5a69788766554433221100ffeeddccbbaa99";
const UID: &str = "1b2c3d4e-5f60-4718-8a9b-0c1d2e3f4a5b";

struct Fixture {
    dir: PathBuf,
    config: IdentityConfig,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("agent-sensor-identity-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("cgroup")).unwrap();
        std::fs::write(dir.join("passwd"), "root:x:0:0::/root:/bin/sh\nsvc:x:4711:4711::/srv:/bin/sh\n").unwrap();
        let config = IdentityConfig {
            cgroup_root: dir.join("cgroup"),
            containerd_task_roots: vec![dir.join("containerd")],
            containers_storage_roots: vec![dir.join("storage")],
            docker_roots: vec![dir.join("docker")],
            container_logs_root: dir.join("log/containers"),
            pod_logs_root: dir.join("log/pods"),
            passwd_path: dir.join("passwd"),
            ..Default::default()
        };
        Fixture { dir, config }
    }

    /// Creates a cgroup directory and returns its id.
    fn cgroup(&self, path: &str) -> u64 {
        let full = self.dir.join("cgroup").join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&full).unwrap();
        std::fs::metadata(&full).unwrap().ino()
    }

    fn write_json(&self, relative: &str, value: &Value) {
        let path = self.dir.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, serde_json::to_vec(value).unwrap()).unwrap();
    }

    fn identity(&self, pods: Arc<PodDirectory>) -> Identity {
        Identity::new(&self.config, Some(self.config.cgroup_root.clone()), pods)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn view_json(view: &WorkloadView) -> Value {
    serde_json::to_value(view).unwrap()
}

fn cri_annotations() -> Value {
    json!({"annotations": {
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.sandbox-name": "web-0",
        "io.kubernetes.cri.sandbox-namespace": "shop",
        "io.kubernetes.cri.sandbox-uid": UID,
        "io.kubernetes.cri.container-name": "agent",
        "io.kubernetes.cri.image-name": "registry.example/agent:1.2"
    }})
}

fn kube_pod_path() -> String {
    format!(
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{ID}.scope",
        UID.replace('-', "_")
    )
}

#[test]
fn containerd_pod_from_bundle() {
    let fixture = Fixture::new("containerd");
    let id = fixture.cgroup(&kube_pod_path());
    fixture.write_json(&format!("containerd/k8s.io/{ID}/config.json"), &cri_annotations());
    let mut identity = fixture.identity(PodDirectory::new(kube::ApiState::Disabled));

    let view = identity.resolve(Some(id), None, Some(0), 1);
    let json = view_json(&view);
    assert_eq!(json["kind"], "container");
    assert_eq!(json["runtime"], "containerd");
    assert_eq!(json["container_id"], ID);
    assert_eq!(json["pod"], "web-0");
    assert_eq!(json["namespace"], "shop");
    assert_eq!(json["pod_uid"], UID);
    assert_eq!(json["container"], "agent");
    assert_eq!(json["image"], "registry.example/agent:1.2");
    assert_eq!(json["qos"], "besteffort");
    assert_eq!(json["service_account"], Value::Null);
    assert_eq!(json["unknown"]["service_account"], "kube_api_disabled");
    assert_eq!(json["identity_complete"], false);
    assert_eq!(json.get("user"), None, "host user names do not apply inside containers");
    assert_eq!(json["sources"], json!(["cgroup_path", "containerd_bundle"]));

    // The second lookup shares the cached workload.
    let again = identity.resolve(Some(id), None, Some(0), 2);
    assert!(Arc::ptr_eq(&view.workload, &again.workload));
}

#[test]
fn removed_cgroup_still_resolves() {
    let fixture = Fixture::new("removed");
    let path = kube_pod_path();
    let id = fixture.cgroup(&path);
    fixture.write_json(&format!("containerd/k8s.io/{ID}/config.json"), &cri_annotations());
    let mut identity = fixture.identity(PodDirectory::new(kube::ApiState::Disabled));
    assert_eq!(view_json(&identity.resolve(Some(id), None, None, 1))["container_id"], ID);

    std::fs::remove_dir(fixture.dir.join("cgroup").join(path.trim_start_matches('/'))).unwrap();
    identity.collect_garbage(1_000);
    let json = view_json(&identity.resolve(Some(id), None, None, 2_000));
    assert_eq!(json["container_id"], ID, "kept for the retention after removal");

    let retention = fixture.config.removed_retention_secs * 1_000_000_000;
    identity.collect_garbage(1_000 + retention);
    let json = view_json(&identity.resolve(Some(id), None, None, 2_000 + retention));
    assert_eq!(json["kind"], "unknown");
    assert_eq!(json["unknown"]["kind"], "cgroup_not_found");
}

#[test]
fn crio_bundle_and_pod_log_fallback() {
    let fixture = Fixture::new("crio");
    let path = format!("/kubepods/burstable/pod{UID}/crio-{ID}");
    let id = fixture.cgroup(&path);
    fixture.write_json(
        &format!("storage/overlay-containers/{ID}/userdata/config.json"),
        &json!({"annotations": {
            "io.kubernetes.cri-o.ContainerType": "container",
            "io.kubernetes.container.name": "db",
            "io.kubernetes.cri-o.ImageName": "postgres:16"
        }}),
    );
    std::fs::create_dir_all(fixture.dir.join(format!("log/pods/data_db-0_{UID}/db"))).unwrap();
    let mut identity = fixture.identity(PodDirectory::new(kube::ApiState::Disabled));
    let json = view_json(&identity.resolve(Some(id), None, None, 1));
    assert_eq!(json["runtime"], "cri-o");
    assert_eq!(json["container"], "db");
    assert_eq!(json["image"], "postgres:16");
    assert_eq!(json["pod"], "db-0", "from the pod log directory");
    assert_eq!(json["namespace"], "data");
    assert_eq!(json["pod_uid"], UID, "from the cgroup path");
    assert_eq!(json["sources"], json!(["cgroup_path", "crio_bundle", "pod_logs"]));
}

#[test]
fn container_without_metadata_is_explicit() {
    let fixture = Fixture::new("nometa");
    let id = fixture.cgroup(&format!("/system.slice/docker-{ID}.scope"));
    let mut identity = fixture.identity(PodDirectory::new(kube::ApiState::Disabled));
    let json = view_json(&identity.resolve(Some(id), None, None, 1));
    assert_eq!(json["kind"], "container");
    assert_eq!(json["runtime"], "docker");
    assert_eq!(json["container_id"], ID);
    assert_eq!(json["container"], Value::Null);
    assert_eq!(json["unknown"]["container"], "no_runtime_metadata");
    assert_eq!(json["unknown"]["image"], "no_runtime_metadata");
    assert_eq!(json.get("pod"), None, "pod fields do not apply outside Kubernetes");

    // Metadata that appears later is picked up after the retry interval.
    fixture.write_json(
        &format!("docker/containers/{ID}/config.v2.json"),
        &json!({"Name": "/cache", "Config": {"Image": "redis:7", "Labels": {}}}),
    );
    let json = view_json(&identity.resolve(Some(id), None, None, 2));
    assert_eq!(json["container"], Value::Null, "not looked for again at once");
    let json = view_json(&identity.resolve(Some(id), None, None, 2 + RETRY_MISSING_NS));
    assert_eq!(json["container"], "cache");
    assert_eq!(json["image"], "redis:7");
    assert_eq!(json["identity_complete"], true);
}

#[test]
fn host_service_unit_and_user() {
    let fixture = Fixture::new("host");
    let id = fixture.cgroup("/system.slice/run-u42.service");
    let mut identity = fixture.identity(PodDirectory::new(kube::ApiState::Disabled));
    let json = view_json(&identity.resolve(Some(id), None, Some(4711), 1));
    assert_eq!(json["kind"], "host");
    assert_eq!(json["unit"], "run-u42.service");
    assert_eq!(json["slice"], "system.slice");
    assert_eq!(json["user"], "svc");
    assert_eq!(json["identity_complete"], true);
    assert_eq!(json.get("unknown"), None);

    let json = view_json(&identity.resolve(Some(id), None, Some(5000), 2));
    assert_eq!(json["user"], Value::Null);
    assert_eq!(json["unknown"]["user"], "no_passwd_entry");
    assert_eq!(json["identity_complete"], false);
}

#[test]
fn reused_workload_section_matches() {
    let fixture = Fixture::new("reused");
    let id = fixture.cgroup("/system.slice/run-u42.service");
    let mut identity = fixture.identity(PodDirectory::new(kube::ApiState::Disabled));
    let first = identity.resolve(Some(id), None, Some(4711), 1);
    let again = identity.resolve(Some(id), None, Some(4711), 2);
    let reused = again.json.as_ref().expect("the second record reuses the section");
    assert!(Arc::ptr_eq(first.json.as_ref().unwrap(), reused));
    let fresh = serde_json::to_string(&WorkloadView { json: None, ..again.clone() }).unwrap();
    assert_eq!(reused.get(), fresh);
    // Another user of the same cgroup has a section of its own.
    let other = identity.resolve(Some(id), None, Some(5000), 3);
    assert_eq!(view_json(&other)["unknown"]["user"], "no_passwd_entry");
    assert_eq!(view_json(&identity.resolve(Some(id), None, Some(4711), 4))["user"], "svc");
}

#[test]
fn session_by_path_from_procfs() {
    let fixture = Fixture::new("session");
    fixture.cgroup("/user.slice/user-4711.slice/session-7.scope");
    let mut identity = fixture.identity(PodDirectory::new(kube::ApiState::Disabled));
    let json = view_json(&identity.resolve(None, Some("/user.slice/user-4711.slice/session-7.scope"), Some(4711), 1));
    assert_eq!(json["unit"], "session-7.scope");
    assert_eq!(json["session"], "7");
    assert_eq!(json["user"], "svc");
}

#[test]
fn root_cgroup_and_no_cgroup() {
    let fixture = Fixture::new("root");
    let root_id = fixture.cgroup("/");
    let mut identity = fixture.identity(PodDirectory::new(kube::ApiState::Disabled));
    let json = view_json(&identity.resolve(Some(root_id), None, Some(0), 1));
    assert_eq!(json["kind"], "host");
    assert_eq!(json["cgroup"], "/");
    assert_eq!(json["unit"], Value::Null);
    assert_eq!(json["unknown"]["unit"], "no_unit_in_cgroup");

    let json = view_json(&identity.resolve(None, None, None, 1));
    assert_eq!(json["kind"], "unknown");
    assert_eq!(json["unknown"]["kind"], "no_cgroup");
    assert_eq!(json["unknown"]["user"], "uid_unknown");
}

#[test]
fn no_cgroup_mount() {
    let fixture = Fixture::new("nomount");
    let mut identity = Identity::new(&fixture.config, None, PodDirectory::new(kube::ApiState::Disabled));
    let json = view_json(&identity.resolve(Some(42), None, Some(0), 1));
    assert_eq!(json["unknown"]["kind"], "no_cgroup2_mount");
}

#[test]
fn kube_api_adds_service_account_and_labels() {
    let fixture = Fixture::new("kube");
    let id = fixture.cgroup(&kube_pod_path());
    fixture.write_json(&format!("containerd/k8s.io/{ID}/config.json"), &cri_annotations());
    let pods = PodDirectory::new(kube::ApiState::Connecting);
    let mut identity = fixture.identity(pods.clone());

    let json = view_json(&identity.resolve(Some(id), None, None, 1));
    assert_eq!(json["unknown"]["service_account"], "api_unreachable");
    assert_eq!(json["pod"], "web-0", "local metadata stays when the API is unreachable");

    let pod = kube::PodInfo::from_json(&json!({
        "metadata": {"name": "web-0", "namespace": "shop", "uid": UID, "labels": {"app": "web"}},
        "spec": {"serviceAccountName": "web-sa", "containers": [{"name": "agent", "image": "registry.example/agent:1.2"}]}
    }))
    .unwrap();
    pods.replace_all(vec![pod]);
    let json = view_json(&identity.resolve(Some(id), None, None, 2));
    assert_eq!(json["service_account"], "web-sa");
    assert_eq!(json["labels"], json!({"app": "web"}));
    assert_eq!(json["identity_complete"], true, "{json}");
    assert_eq!(json["sources"], json!(["cgroup_path", "containerd_bundle", "kube_api"]));

    pods.set_unreachable("timed out".into());
    let json = view_json(&identity.resolve(Some(id), None, None, 3));
    assert_eq!(json["service_account"], "web-sa", "pods listed before the loss keep their facts");
}

#[test]
fn cache_is_bounded() {
    let fixture = Fixture::new("bound");
    let mut config = fixture.config.clone();
    config.max_cgroups = 4;
    let mut identity = Identity::new(&config, Some(config.cgroup_root.clone()), PodDirectory::new(kube::ApiState::Disabled));
    for n in 0..10 {
        let id = fixture.cgroup(&format!("/system.slice/unit-{n}.service"));
        identity.resolve(Some(id), None, Some(0), n);
    }
    assert!(identity.workloads.len() <= 4);
    assert!(identity.index.len() <= 4);
}
