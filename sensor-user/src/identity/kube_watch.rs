//! Fills the [`PodDirectory`] from a list and watch of this node's pods,
//! with the kube crate (cargo feature `kube-api`).
//!
//! The watcher lists the pods whose `spec.nodeName` is this node, then
//! watches them, re-listing after a lost watch and backing off after
//! errors. Any error marks the directory unreachable, so records of pods
//! it has not listed carry `api_unreachable`. The watcher runs as its own
//! task, and the event loop only reads the directory it fills.

use std::{path::PathBuf, sync::Arc};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    config::{AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext},
    runtime::{watcher, WatchStreamExt as _},
    Api, Client,
};

use super::kube::{ApiState, PodDirectory, PodInfo};
use crate::config::IdentityConfig;

/// Time between attempts to build a client, in seconds, when the
/// configuration itself failed (missing CA file, bad URL).
const CLIENT_RETRY_SECS: u64 = 10;

#[derive(Debug, thiserror::Error)]
pub enum KubeWatchError {
    #[error("no API server URL: identity.kube_api_url is empty and KUBERNETES_SERVICE_HOST is not set")]
    NoServer,
    #[error("invalid Kubernetes client configuration for {url}")]
    Config {
        url: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("cannot create the Kubernetes client for {url}")]
    Client {
        url: String,
        #[source]
        source: kube::Error,
    },
}

/// The API server and credentials the watcher uses.
#[derive(Debug, Clone)]
struct Target {
    url: String,
    token_path: PathBuf,
    ca_path: PathBuf,
    node: String,
}

impl Target {
    fn from_config(config: &IdentityConfig) -> Result<Target, KubeWatchError> {
        let url = if config.kube_api_url.is_empty() {
            let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| KubeWatchError::NoServer)?;
            let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".to_owned());
            // An IPv6 service address needs brackets in a URL.
            if host.contains(':') { format!("https://[{host}]:{port}") } else { format!("https://{host}:{port}") }
        } else {
            config.kube_api_url.clone()
        };
        let node = if !config.kube_node_name.is_empty() {
            config.kube_node_name.clone()
        } else {
            std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()).unwrap_or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default()
            })
        };
        Ok(Target { url, token_path: config.kube_token_path.clone(), ca_path: config.kube_ca_path.clone(), node })
    }

    /// Builds a client from a kubeconfig that names the CA file and the
    /// token file, so a rotated service account token is read again.
    async fn client(&self) -> Result<Client, KubeWatchError> {
        let name = "agent-sensor".to_owned();
        let kubeconfig = Kubeconfig {
            clusters: vec![NamedCluster {
                name: name.clone(),
                cluster: Some(Cluster {
                    server: Some(self.url.clone()),
                    certificate_authority: Some(self.ca_path.display().to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            auth_infos: vec![NamedAuthInfo {
                name: name.clone(),
                auth_info: Some(AuthInfo { token_file: Some(self.token_path.display().to_string()), ..Default::default() }),
                ..Default::default()
            }],
            contexts: vec![NamedContext {
                name: name.clone(),
                context: Some(Context { cluster: name.clone(), user: Some(name.clone()), ..Default::default() }),
                ..Default::default()
            }],
            current_context: Some(name),
            ..Default::default()
        };
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|source| KubeWatchError::Config { url: self.url.clone(), source })?;
        Client::try_from(config).map_err(|source| KubeWatchError::Client { url: self.url.clone(), source })
    }
}

/// Converts a typed pod into the directory's form, through its JSON so one
/// parser serves both.
fn pod_info(pod: &Pod) -> Option<PodInfo> {
    serde_json::to_value(pod).ok().and_then(|value| PodInfo::from_json(&value))
}

/// Starts the watcher task on the current tokio runtime.
pub fn spawn(config: &IdentityConfig, directory: Arc<PodDirectory>) {
    let target = match Target::from_config(config) {
        Ok(target) => target,
        Err(error) => {
            log::error!("Kubernetes API disabled: {error}");
            directory.set_unreachable(error.to_string());
            return;
        }
    };
    log::info!("watching pods on node {:?} at {}", target.node, target.url);
    tokio::spawn(run(target, directory));
}

async fn run(target: Target, directory: Arc<PodDirectory>) {
    loop {
        let client = match target.client().await {
            Ok(client) => client,
            Err(error) => {
                log::warn!("Kubernetes API unreachable: {error}; retrying in {CLIENT_RETRY_SECS} s");
                directory.set_unreachable(error.to_string());
                tokio::time::sleep(std::time::Duration::from_secs(CLIENT_RETRY_SECS)).await;
                continue;
            }
        };
        watch(client, &target, &directory).await;
    }
}

/// Applies watch events to the directory until the stream ends.
async fn watch(client: Client, target: &Target, directory: &PodDirectory) {
    let pods: Api<Pod> = Api::all(client);
    let selector = format!("spec.nodeName={}", target.node);
    let mut stream = watcher(pods, watcher::Config::default().fields(&selector)).default_backoff().boxed();
    // Pods of a (re-)list, applied at once when the list completes.
    let mut listing: Vec<PodInfo> = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(watcher::Event::Init) => listing.clear(),
            Ok(watcher::Event::InitApply(pod)) => listing.extend(pod_info(&pod)),
            Ok(watcher::Event::InitDone) => {
                let count = listing.len();
                directory.replace_all(std::mem::take(&mut listing));
                log::info!("Kubernetes API synced: {count} pods on node {:?}", target.node);
            }
            Ok(watcher::Event::Apply(pod)) => {
                if let Some(info) = pod_info(&pod) {
                    directory.upsert(info);
                }
            }
            Ok(watcher::Event::Delete(pod)) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    directory.remove(uid);
                }
            }
            Err(error) => {
                if directory.api_state() != ApiState::Unreachable {
                    log::warn!("Kubernetes API unreachable at {}: {error}; identities are partial until it answers", target.url);
                }
                directory.set_unreachable(error.to_string());
            }
        }
    }
}
