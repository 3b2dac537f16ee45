//! Where the lab kubelet's supervisors keep a pod's status, whatever holds
//! the cluster: the lab's own store (the embedded control plane: under the
//! lab lock, then the lab's EndpointSlice controller runs) or a
//! kube-apiserver (the `pods/status` subresource, as a kubelet writes it;
//! the real EndpointSlice controller follows from there).
//!
//! A change is a function of the pod (pure, in [`crate::supervisor`]); a
//! store only reads, applies and writes it, and says when the pod is no
//! longer the supervisor's (deleted, or another pod of the same name). It
//! must not decide anything about containers.

use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::PostParams;
use kube::Api;
use weft_store::Store;

use crate::endpointslices;
use crate::layout::Layout;
use crate::objects::now;
use crate::supervisor::Container;

/// A change to a pod's status; whether it changed anything.
pub type Change<'a> = &'a mut dyn FnMut(&mut Pod, Time) -> bool;

/// Where a supervisor reads and writes its pod's status.
pub trait PodStatusStore: Send + Sync {
    /// Applies `change` to the pod; false when the pod is no longer this
    /// supervisor's (nothing was written).
    fn update(&self, change: Change<'_>) -> Result<bool>;
}

/// The lab's store (the embedded control plane).
pub struct LabStore {
    pub container: Container,
}

impl PodStatusStore for LabStore {
    /// Nothing happens if the lab is being taken down, either.
    fn update(&self, change: Change<'_>) -> Result<bool> {
        let container = &self.container;
        let layout = Layout::new(&container.lab)?;
        let Ok(_lock) = layout.lock() else {
            return Ok(false);
        };
        let store = Store::open_existing(&layout.store())?;
        let Some(mut pod) = store.get_typed::<Pod>(&container.namespace, &container.pod)? else {
            return Ok(false);
        };
        if pod.metadata.uid.as_deref() != Some(container.uid.as_str()) {
            return Ok(false);
        }
        if change(&mut pod, now()) {
            store.put_typed(&pod)?;
            endpointslices::sync(&store).context("updating EndpointSlices")?;
        }
        Ok(true)
    }
}

/// A kube-apiserver, with the node's credentials.
pub struct ApiServer {
    container: Container,
    pods: Api<Pod>,
    /// The supervisor and its probe thread both write; one at a time.
    runtime: Mutex<tokio::runtime::Runtime>,
}

/// How often a write that lost a race with another writer is tried again.
const CONFLICT_RETRIES: usize = 5;
/// How long after a container starts its pod's first status may take.
const KUBELET_REPORTS_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

fn has_status_of(pod: &Pod, container: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|all| all.iter().any(|c| c.name == container))
}

impl ApiServer {
    /// Connects with the kubeconfig at `path`.
    pub fn connect(container: Container, path: &Path) -> Result<ApiServer> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = runtime.block_on(async {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .with_context(|| format!("the kubeconfig {}", path.display()))?;
            kube::Client::try_from(config).context("creating the API client")
        })?;
        let pods = Api::namespaced(client, &container.namespace);
        Ok(ApiServer {
            container,
            pods,
            runtime: Mutex::new(runtime),
        })
    }
}

impl PodStatusStore for ApiServer {
    /// Read, change, write with the read's resourceVersion: a write that
    /// lost a race (409) is done again on the newer pod.
    fn update(&self, change: Change<'_>) -> Result<bool> {
        let runtime = self.runtime.lock().unwrap_or_else(|e| e.into_inner());
        let name = &self.container.pod;
        runtime.block_on(async {
            let reported_by = tokio::time::Instant::now() + KUBELET_REPORTS_WITHIN;
            let mut conflicts = 0;
            while conflicts < CONFLICT_RETRIES {
                let Some(mut pod) = self.pods.get_opt(name).await? else {
                    return Ok(false);
                };
                if pod.metadata.uid.as_deref() != Some(self.container.uid.as_str()) {
                    return Ok(false);
                }
                // The kubelet writes the pod's first status once all its
                // containers started; a change made before that would be
                // lost under it, so it waits for it.
                if !has_status_of(&pod, &self.container.name) {
                    if tokio::time::Instant::now() > reported_by {
                        anyhow::bail!("pod {name} has no status of container {} {KUBELET_REPORTS_WITHIN:?} after it started", self.container.name);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
                if !change(&mut pod, now()) {
                    return Ok(true);
                }
                match self.pods.replace_status(name, &PostParams::default(), &pod).await {
                    Ok(_) => return Ok(true),
                    Err(kube::Error::Api(status)) if status.is_conflict() => conflicts += 1,
                    Err(kube::Error::Api(status)) if status.is_not_found() => return Ok(false),
                    Err(e) => {
                        return Err(e).with_context(|| format!("writing pod {name}'s status"))
                    }
                }
            }
            anyhow::bail!("pod {name}'s status kept changing under {CONFLICT_RETRIES} writes in a row; retried at its next change")
        })
    }
}
