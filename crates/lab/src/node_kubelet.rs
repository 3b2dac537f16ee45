//! The kubelet process of a lab node whose control plane is Kubernetes
//! (`weft lab kubelet`, started by the lab in the node's namespace): it
//! authenticates with the node's own certificate, registers the Node and
//! renews its Lease ([`crate::node_registration`]), watches the Pods bound
//! to the node and runs them with the lab's [`Kubelet`] (CNI ADD through
//! weft-cni, containers under supervisors that report to the API server),
//! writes their status through `pods/status`, and on deletion stops them,
//! runs CNI DEL and removes the object (grace period 0, as the kubelet
//! does once the containers are gone).
//!
//! What to do is decided by [`plan`] (pure: the pods bound here against
//! the pods running here); this module only carries it out. It must not
//! schedule pods or touch other nodes' pods.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateWaiting, ContainerStatus, Pod, PodCondition, PodStatus,
};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::Notify;

use crate::kubelet::Kubelet;
use crate::layout::{LabState, Layout, NodeRecord};
use crate::objects::key;
use crate::{kube_control_plane, node_registration, procs};

/// How often the Lease is renewed (the kubelet's default).
const RENEW_EVERY: Duration = Duration::from_secs(10);
/// How often the Node's status is posted again.
const STATUS_EVERY: Duration = Duration::from_secs(60);
/// How often the pods are reconciled without a change to them.
const RESYNC_EVERY: Duration = Duration::from_secs(2);
/// How long containers get after SIGTERM when the pod says nothing.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

pub fn owner(layout: &Layout, node: &str) -> String {
    format!("{}/kubelet/{node}", layout.lab)
}

/// Starts `weft lab kubelet` for `node` in its namespace, detached.
pub fn start(
    layout: &Layout,
    weft: &std::path::Path,
    node: &str,
    ns: &weft_datapath::NetNs,
) -> std::io::Result<u32> {
    let args: Vec<String> = ["lab", "kubelet", "--lab", &layout.lab, "--node", node]
        .iter()
        .map(|s| s.to_string())
        .collect();
    procs::spawn(
        Some(ns),
        weft,
        &args,
        &owner(layout, node),
        &layout.node_dir(node).join("kubelet.log"),
    )
}

/// What the kubelet does next to one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Run it here.
    Start(Pod),
    /// Stop it here; `remove_object`: then delete it from the API (it was
    /// being deleted), else it is already gone from there.
    Stop { pod: Pod, remove_object: bool },
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

/// The actions that bring `running` (pods running here, by UID) to
/// `bound` (the pods the API server binds to this node): new pods start,
/// pods being deleted stop and are removed, pods gone from the API stop.
/// Pods that finished (Succeeded, Failed) are not run again.
pub fn plan(bound: &[Pod], running: &BTreeMap<String, Pod>) -> Vec<Action> {
    let mut actions = Vec::new();
    for pod in bound {
        let here = running.contains_key(&uid(pod));
        if pod.metadata.deletion_timestamp.is_some() {
            actions.push(Action::Stop {
                pod: pod.clone(),
                remove_object: true,
            });
        } else if !here && !finished(pod) {
            actions.push(Action::Start(pod.clone()));
        }
    }
    for (id, pod) in running {
        if !bound.iter().any(|p| uid(p) == *id) {
            actions.push(Action::Stop {
                pod: pod.clone(),
                remove_object: false,
            });
        }
    }
    actions
}

fn finished(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed"))
}

/// How long a deleted pod's containers get to stop.
fn grace_of(pod: &Pod) -> Duration {
    let seconds = pod.metadata.deletion_grace_period_seconds.or(pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds));
    seconds.map_or(DEFAULT_GRACE, |s| Duration::from_secs(s.max(0) as u64))
}

/// The kubelet of `node` in lab `lab`, until the process is ended.
pub fn run(lab: &str, node: &str, weft: PathBuf, plugin: PathBuf) -> Result<()> {
    let layout = Layout::new(lab)?;
    let state = layout.load()?;
    let record = state
        .node(node)
        .cloned()
        .with_context(|| format!("node {node} is not part of lab {lab}"))?;
    let kubeconfig = kube_control_plane::node_kubeconfig(&layout, &state, node)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = kube_control_plane::client_of(&kubeconfig).await?;
        register(&client, &record).await;
        tokio::spawn(keep_alive(client.clone(), record.clone()));
        let node = NodeKubelet {
            client,
            layout,
            state,
            record,
            weft,
            plugin,
            kubeconfig,
        };
        node.serve().await
    })
}

/// Registers the Node, trying again until the API server answers (it
/// starts beside the kubelets); says so every 5 s while it waits.
async fn register(client: &Client, node: &NodeRecord) {
    const PAUSE: Duration = Duration::from_millis(200);
    for attempt in 0u32.. {
        match node_registration::register(client, &node.name, node.ip).await {
            Ok(()) => {
                tracing::info!(node = %node.name, attempt, "registered the Node");
                return;
            }
            Err(e) if attempt % 25 == 0 => {
                tracing::info!(error = %e, "waiting for the API server to register the Node")
            }
            Err(_) => {}
        }
        tokio::time::sleep(PAUSE).await;
    }
}

/// Renews the Lease every [`RENEW_EVERY`] and posts the status every
/// [`STATUS_EVERY`].
async fn keep_alive(client: Client, node: NodeRecord) {
    let mut since_status = Duration::ZERO;
    loop {
        if let Err(e) = node_registration::renew(&client, &node.name).await {
            tracing::warn!(error = %e, "renewing the node's Lease failed");
        }
        tokio::time::sleep(RENEW_EVERY).await;
        since_status += RENEW_EVERY;
        if since_status >= STATUS_EVERY {
            since_status = Duration::ZERO;
            if let Err(e) = node_registration::register(&client, &node.name, node.ip).await {
                tracing::warn!(error = %e, "posting the node's status failed");
            }
        }
    }
}

/// What became of an action.
enum Done {
    Started(String, Box<Pod>),
    Stopped(String),
    /// The pod (by UID) could not start; its status says why.
    StartFailed(String),
    Failed,
}

/// Pods whose start failed wait before the next try, as the kubelet's
/// back-off: 10 s doubling to 5 min.
#[derive(Default)]
struct BackOffs(BTreeMap<String, (u32, Instant)>);

impl BackOffs {
    fn waits(&self, uid: &str, now: Instant) -> bool {
        self.0.get(uid).is_some_and(|(_, until)| now < *until)
    }

    fn failed(&mut self, uid: String, now: Instant) {
        let streak = self.0.get(&uid).map_or(0, |(streak, _)| *streak) + 1;
        self.0
            .insert(uid, (streak, now + crate::supervisor::back_off(streak)));
    }

    fn forget(&mut self, uid: &str) {
        self.0.remove(uid);
    }

    /// Drops the back-offs of pods no longer bound here (deleted while
    /// they could not start), so the map does not grow for good.
    fn keep_only(&mut self, bound: &[Pod]) {
        self.0.retain(|id, _| bound.iter().any(|p| uid(p) == *id));
    }
}

/// The status of a pod whose sandbox or containers could not start: Pending,
/// every container waiting with the kubelet's reason and `error`.
pub fn start_failed(pod: &Pod, error: &str) -> PodStatus {
    let containers = pod.spec.iter().flat_map(|s| &s.containers);
    PodStatus {
        phase: Some("Pending".into()),
        container_statuses: Some(
            containers
                .map(|c| ContainerStatus {
                    name: c.name.clone(),
                    image: c.image.clone().unwrap_or_default(),
                    state: Some(ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some(CREATE_ERROR.into()),
                            message: Some(error.into()),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        ),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: "False".into(),
            reason: Some("ContainersNotReady".into()),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// The waiting reason of a container that could not be created.
pub const CREATE_ERROR: &str = "CreateContainerError";

struct NodeKubelet {
    client: Client,
    layout: Layout,
    state: LabState,
    record: NodeRecord,
    weft: PathBuf,
    plugin: PathBuf,
    kubeconfig: PathBuf,
}

impl NodeKubelet {
    fn kubelet(&self) -> Kubelet<'_> {
        Kubelet {
            layout: &self.layout,
            weft: self.weft.clone(),
            plugin: self.plugin.clone(),
            kubeconfig: Some(self.kubeconfig.clone()),
        }
    }

    /// Watches the pods bound here and reconciles at every change (and
    /// every [`RESYNC_EVERY`]), one pass at a time.
    async fn serve(self) -> Result<()> {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let selector = format!("spec.nodeName={}", self.record.name);
        let (reader, writer) = reflector::store();
        let changed = Arc::new(Notify::new());
        let notify = changed.clone();
        let stream = reflector(
            writer,
            watcher(pods, watcher::Config::default().fields(&selector)),
        )
        .default_backoff();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                if let Err(e) = event {
                    tracing::warn!(error = %e, "watching this node's pods failed; retrying");
                }
                notify.notify_one();
            }
        });
        reader.wait_until_ready().await?;
        let this = Arc::new(self);
        let mut running = this.adopt(&reader.state());
        let mut backing_off = BackOffs::default();
        loop {
            let bound: Vec<Pod> = reader.state().iter().map(|p| (**p).clone()).collect();
            backing_off.keep_only(&bound);
            let now = Instant::now();
            let passes = plan(&bound, &running)
                .into_iter()
                .filter(|action| match action {
                    Action::Start(pod) => !backing_off.waits(&uid(pod), now),
                    Action::Stop { .. } => true,
                })
                .map(|action| this.clone().carry_out(action));
            for done in futures::future::join_all(passes).await {
                match done {
                    Done::Started(id, pod) => {
                        backing_off.forget(&id);
                        running.insert(id, *pod);
                    }
                    Done::Stopped(id) => {
                        backing_off.forget(&id);
                        running.remove(&id);
                    }
                    Done::StartFailed(id) => backing_off.failed(id, now),
                    Done::Failed => {}
                }
            }
            let _ = tokio::time::timeout(RESYNC_EVERY, changed.notified()).await;
        }
    }

    /// Pods bound here whose containers already run (a kubelet that was
    /// restarted): they are kept, not started again.
    fn adopt(&self, bound: &[Arc<Pod>]) -> BTreeMap<String, Pod> {
        bound
            .iter()
            .filter(|p| {
                let (namespace, name) = key(p.as_ref());
                !procs::owned_by(&crate::kubelet::pod_owner_prefix(
                    &self.layout,
                    &namespace,
                    &name,
                ))
                .is_empty()
            })
            .map(|p| (uid(p), (**p).clone()))
            .collect()
    }

    /// Carries out `action` on a blocking thread (pods start and stop
    /// side by side); a failure is logged and tried again at the next pass.
    async fn carry_out(self: Arc<Self>, action: Action) -> Done {
        let what = match &action {
            Action::Start(pod) => format!("starting pod {:?}", key(pod)),
            Action::Stop { pod, .. } => format!("stopping pod {:?}", key(pod)),
        };
        match tokio::task::spawn_blocking(move || self.blocking(action)).await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "{what} failed");
                Done::Failed
            }
            Err(e) => {
                tracing::warn!(error = %e, "{what} panicked");
                Done::Failed
            }
        }
    }

    /// Runs one action; a started pod comes back to be recorded.
    fn blocking(&self, action: Action) -> Result<Done> {
        let handle = tokio::runtime::Handle::current();
        match action {
            Action::Start(pod) => {
                let id = uid(&pod);
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), &key(&pod).0);
                let write = |status: &Option<PodStatus>| {
                    let status = json!({"status": status});
                    let name = key(&pod).1;
                    handle
                        .block_on(pods.patch_status(
                            &name,
                            &PatchParams::default(),
                            &Patch::Merge(&status),
                        ))
                        .map(drop)
                        .context("writing the pod's status")
                };
                match self
                    .kubelet()
                    .run(&self.record, pod.clone(), |started| write(&started.status))
                {
                    Ok(started) => Ok(Done::Started(id, Box::new(started))),
                    Err(e) => {
                        let error = format!("{e:#}");
                        tracing::warn!(pod = ?key(&pod), %error, "the pod could not start; backing off");
                        write(&Some(start_failed(&pod, &error)))?;
                        Ok(Done::StartFailed(id))
                    }
                }
            }
            Action::Stop { pod, remove_object } => {
                self.kubelet().stop(&self.state, &pod, grace_of(&pod))?;
                if remove_object {
                    let (namespace, name) = key(&pod);
                    let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
                    let params = DeleteParams {
                        grace_period_seconds: Some(0),
                        preconditions: Some(Preconditions {
                            uid: pod.metadata.uid.clone(),
                            resource_version: None,
                        }),
                        ..DeleteParams::default()
                    };
                    match handle.block_on(pods.delete(&name, &params)) {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => {}
                        Err(e) => return Err(e).context("removing the deleted pod"),
                    }
                }
                Ok(Done::Stopped(uid(&pod)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(uid: &str, extra: serde_json::Value) -> Pod {
        let mut value = json!({
            "metadata": {"name": format!("p-{uid}"), "namespace": "default", "uid": uid},
            "spec": {"containers": [{"name": "c"}], "nodeName": "node-1"},
        });
        if let (Some(base), Some(more)) = (value.as_object_mut(), extra.as_object()) {
            for (k, v) in more {
                base.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(value).unwrap()
    }

    fn running(pods: &[&Pod]) -> BTreeMap<String, Pod> {
        pods.iter().map(|p| (uid(p), (*p).clone())).collect()
    }

    #[test]
    fn new_pods_start_and_running_ones_are_left_alone() {
        let (a, b) = (pod("a", json!({})), pod("b", json!({})));
        let actions = plan(&[a.clone(), b.clone()], &running(&[&a]));
        assert_eq!(actions, vec![Action::Start(b)]);
    }

    #[test]
    fn pods_being_deleted_stop_and_are_removed_and_pods_gone_stop() {
        let deleting = pod(
            "a",
            json!({"metadata": {"name": "p-a", "namespace": "default", "uid": "a",
                "deletionTimestamp": "2026-12-01T00:00:00Z", "deletionGracePeriodSeconds": 5}}),
        );
        let gone = pod("b", json!({}));
        let actions = plan(
            std::slice::from_ref(&deleting),
            &running(&[&deleting, &gone]),
        );
        assert_eq!(
            actions,
            vec![
                Action::Stop {
                    pod: deleting.clone(),
                    remove_object: true
                },
                Action::Stop {
                    pod: gone,
                    remove_object: false
                },
            ]
        );
        assert_eq!(grace_of(&deleting), Duration::from_secs(5));
    }

    #[test]
    fn finished_pods_are_not_run_again() {
        let done = pod("a", json!({"status": {"phase": "Succeeded"}}));
        assert!(plan(&[done], &BTreeMap::new()).is_empty());
    }

    #[test]
    fn a_pod_that_cannot_start_waits_with_the_reason_and_backs_off() {
        let status = start_failed(&pod("a", json!({})), "sleepy not found in PATH");
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        let waiting = status.container_statuses.unwrap()[0]
            .state
            .clone()
            .unwrap()
            .waiting
            .unwrap();
        assert_eq!(waiting.reason.as_deref(), Some(CREATE_ERROR));
        assert_eq!(waiting.message.as_deref(), Some("sleepy not found in PATH"));
        let mut offs = BackOffs::default();
        let now = Instant::now();
        offs.failed("a".into(), now);
        assert!(offs.waits("a", now + Duration::from_secs(9)));
        assert!(!offs.waits("a", now + Duration::from_secs(10)));
        offs.failed("a".into(), now);
        assert!(offs.waits("a", now + Duration::from_secs(19)));
        offs.forget("a");
        assert!(!offs.waits("a", now));
        offs.failed("a".into(), now);
        offs.failed("gone".into(), now);
        offs.keep_only(&[pod("a", json!({}))]);
        assert!(offs.waits("a", now) && !offs.waits("gone", now));
    }

    #[test]
    fn the_grace_period_is_the_deletions_else_the_pods_else_30s() {
        let own = pod(
            "a",
            json!({"spec": {"containers": [{"name": "c"}], "terminationGracePeriodSeconds": 7}}),
        );
        assert_eq!(grace_of(&own), Duration::from_secs(7));
        assert_eq!(grace_of(&pod("b", json!({}))), DEFAULT_GRACE);
    }
}
